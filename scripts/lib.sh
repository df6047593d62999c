# Helpers shared by the scripts in this directory. Sourced, not executed.
# shellcheck shell=bash

IDP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IDP_DEFAULT_DATABASE_URL='postgres://127.0.0.1:5432/idp'
# Development default (RabbitMQ's built-in guest account).
IDP_DEFAULT_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'

idp_say() { printf '%s\n' "$*"; }
idp_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Loads KEY=VALUE lines from the repository's .env, if there is one, without overriding
# variables that are already set. Values are taken literally (no expansion); one pair of
# surrounding quotes is removed.
idp_load_dotenv() {
    local file="$IDP_ROOT/.env" line key value
    [[ -f $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line="${line#"${line%%[![:space:]]*}"}"
        [[ -z $line || $line == \#* ]] && continue
        line="${line#export }"
        [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        key="${BASH_REMATCH[1]}"
        value="${BASH_REMATCH[2]}"
        value="${value%"${value##*[![:space:]]}"}"
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value="${BASH_REMATCH[1]}"
        fi
        [[ -n ${!key+set} ]] || export "$key=$value"
    done <"$file"
}

# Exports the connection defaults for whatever is not set.
idp_export_connection_defaults() {
    export DATABASE_URL="${DATABASE_URL:-$IDP_DEFAULT_DATABASE_URL}"
    export AMQP_URL="${AMQP_URL:-$IDP_DEFAULT_AMQP_URL}"
    # Like libpq, a URL without a user means the operating-system user. Say so explicitly:
    # some environments (containers, CI) set neither USER nor LOGNAME, and tools that guess
    # the user then fall back to a made-up name.
    export PGUSER="${PGUSER:-$(id -un)}"
}

# idp_apt_install WHY PACKAGE...: installs Debian packages, as root (directly or through
# password-less sudo); where it cannot, stops with the command to run. WHY says what needs them
# ("building idp needs a C compiler"). Each command is checked: callers may run this where
# errexit does not apply.
idp_apt_install() {
    local why="$1"
    shift
    local -a sudo=()
    command -v apt-get >/dev/null ||
        idp_die "$why: install it with this system's package manager (on Debian: apt-get install $*)"
    if [[ $EUID -ne 0 ]]; then
        { command -v sudo >/dev/null && sudo -n true 2>/dev/null; } ||
            idp_die "$why, which only root can install: run  sudo apt-get install $*  and try again"
        sudo=(sudo -n)
    fi
    idp_say "installing $* from Debian packages: $why"
    "${sudo[@]}" apt-get update -qq || idp_die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        idp_die "could not install $*; try:  sudo apt-get install $*"
}

# Makes sure the build has a C toolchain: rustc links through `cc`, and build scripts (ring,
# aws-lc-sys) compile C. No dependency needs pkg-config or cmake.
idp_ensure_build_tools() {
    command -v cc >/dev/null && return 0
    idp_apt_install "building idp needs a C compiler and linker (cc)" gcc libc6-dev
}

# idp_test_python: sets IDP_TEST_PYTHON to a Python interpreter that has the tests' packages
# (scripts/requirements-test.txt): $PYTHON if it has them already, else that of a virtualenv
# under ~/.cache/idp (or IDP_TEST_VENV) made from ${PYTHON:-python3} and kept across runs
# (Debian's Python refuses system-wide pip installs). Installs python3 and python3-venv from
# Debian packages if they are missing.
idp_test_python() {
    local base="${PYTHON:-python3}" requirements="$IDP_ROOT/scripts/requirements-test.txt" venv
    if [[ -n ${PYTHON:-} ]] && "$PYTHON" -c 'import aiosmtpd' 2>/dev/null; then
        IDP_TEST_PYTHON="$PYTHON"
        return 0
    fi
    venv="${IDP_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/idp/test-venv-$(sha256sum "$requirements" | cut -c1-12)}"
    IDP_TEST_PYTHON="$venv/bin/python"
    "$IDP_TEST_PYTHON" -c 'import aiosmtpd' 2>/dev/null && return 0
    if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
        [[ $base == python3 ]] || idp_die "$base cannot make a virtualenv (no venv or ensurepip module)"
        idp_apt_install "the tests' SMTP server needs Python 3 with venv" python3 python3-venv
    fi
    idp_say "installing $(grep -v '^#' "$requirements" | tr '\n' ' ')into $venv"
    rm -rf "$venv"
    "$base" -m venv "$venv" || idp_die "could not make a virtualenv at $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" ||
        idp_die "could not install $requirements into $venv"
}

# idp_test_node: makes sure `node` and `npm` exist (Debian's nodejs and npm if missing) and that
# scripts/oidc-provider/node_modules, the tests' OpenID Connect provider (oidc-provider), is what
# its package-lock.json says: runs `npm ci` there when it is missing or was installed from
# another lockfile (node_modules/.idp-lock-sha256 records the lockfile of the last install).
idp_test_node() {
    local dir="$IDP_ROOT/scripts/oidc-provider" want have=""
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        idp_apt_install "the tests' OpenID Connect provider needs Node.js" nodejs npm
    fi
    [[ -f $dir/package-lock.json ]] || idp_die "$dir/package-lock.json is missing"
    want="$(sha256sum "$dir/package-lock.json")"
    want="${want%% *}"
    [[ -f $dir/node_modules/.idp-lock-sha256 ]] && have="$(<"$dir/node_modules/.idp-lock-sha256")"
    [[ -f $dir/node_modules/.package-lock.json && $have == "$want" ]] && return 0
    idp_say "installing the tests' OpenID Connect provider (npm ci in scripts/oidc-provider)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) ||
        idp_die "npm ci in $dir failed"
    printf '%s\n' "$want" >"$dir/node_modules/.idp-lock-sha256"
}

# Splits a URL (scheme://[user[:password]@]host[:port][/path][?query]) into the globals
# URL_SCHEME, URL_USERINFO, URL_USER, URL_HOST, URL_PORT, URL_PATH and URL_QUERY.
# URL_HOST has no brackets for IPv6 literals; URL_PORT is empty when the URL has none.
# shellcheck disable=SC2034 # the globals are the result
idp_parse_url() {
    local url="$1" rest authority hostport
    URL_SCHEME="${url%%://*}"
    rest="${url#*://}"
    URL_QUERY=""
    if [[ $rest == *\?* ]]; then
        URL_QUERY="${rest#*\?}"
        rest="${rest%%\?*}"
    fi
    authority="${rest%%/*}"
    URL_PATH=""
    [[ $rest == */* ]] && URL_PATH="${rest#*/}"
    URL_USERINFO=""
    hostport="$authority"
    if [[ $authority == *@* ]]; then
        URL_USERINFO="${authority%@*}"
        hostport="${authority##*@}"
    fi
    URL_USER="$(idp_urldecode "${URL_USERINFO%%:*}")"
    if [[ $hostport == \[* ]]; then
        URL_HOST="${hostport#\[}"
        URL_HOST="${URL_HOST%%]*}"
        URL_PORT="${hostport##*]}"
        URL_PORT="${URL_PORT#:}"
    else
        URL_HOST="${hostport%%:*}"
        URL_PORT=""
        [[ $hostport == *:* ]] && URL_PORT="${hostport##*:}"
    fi
    return 0
}

idp_urldecode() {
    local s="${1//+/ }"
    printf '%b' "${s//%/\\x}"
}

# The host part of a URL again, with brackets around IPv6 literals.
idp_url_hostport() {
    local host="$1" port="$2"
    [[ $host == *:* ]] && host="[$host]"
    printf '%s%s' "$host" "${port:+:$port}"
}

# Prints DATABASE_URL-style URL "$1" with its database replaced by "$2". Keeps only the query
# parameters libpq understands, so that psql accepts the result, unless "$3" is "all".
idp_database_url_with() {
    local url="$1" database="$2" param kept=""
    idp_parse_url "$url"
    if [[ ${3:-} == all ]]; then
        kept="$URL_QUERY"
    elif [[ -n $URL_QUERY ]]; then
        local -a params
        IFS='&' read -r -a params <<<"$URL_QUERY"
        for param in "${params[@]}"; do
            case "${param%%=*}" in
                host | hostaddr | port | user | password | sslmode | sslrootcert | sslcert | sslkey | \
                    options | application_name | connect_timeout)
                    kept="${kept:+$kept&}$param"
                    ;;
            esac
        done
    fi
    printf '%s://%s%s/%s%s' "$URL_SCHEME" "${URL_USERINFO:+$URL_USERINFO@}" \
        "$(idp_url_hostport "$URL_HOST" "$URL_PORT")" "$database" "${kept:+?$kept}"
}

# The database named in a DATABASE_URL-style URL (empty if none).
idp_database_name() {
    idp_parse_url "$1"
    idp_urldecode "$URL_PATH"
}

# "12.3s" since the $EPOCHREALTIME value "$1".
idp_elapsed() {
    local start="${1//[!0-9]/}" now="${EPOCHREALTIME//[!0-9]/}"
    local ms=$(((now - start) / 1000))
    printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100))
}
