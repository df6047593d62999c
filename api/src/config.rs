//! Configuration of `idp-api`, from the environment (or flags), validated at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use idp_ops::config::CommonConfig;
use secrecy::SecretString;

use crate::auth::plans::{DEFAULT_PLANS, Plans};
use crate::auth::rate_limit::Limit;
use crate::client_address::TrustedProxies;

/// `idp-api`: the idp REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "idp-api", version, about, args_override_self = true)]
pub struct Config {
    /// Settings shared with the worker.
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "API_ADDR",
        value_name = "API_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub api_addr: SocketAddr,

    /// Address of the internal listener: `/metrics`, the detailed `/health/ready` and
    /// `/health/live`. Keep it off the public network (the default is loopback only).
    #[arg(
        long,
        env = "API_INTERNAL_ADDR",
        value_name = "API_INTERNAL_ADDR",
        default_value = "127.0.0.1:9080"
    )]
    pub api_internal_addr: SocketAddr,

    /// Proxies (comma-separated CIDRs) whose `Forwarded`/`X-Forwarded-For` may name the client;
    /// empty: those headers are ignored and the connection's peer is the client.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_name = "TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: TrustedProxies,

    /// Event streams (`GET /v1/projects/{id}/events`) one user may have open at once on one API
    /// process; more are answered 429.
    #[arg(long, env = "SSE_MAX_STREAMS_PER_USER", value_name = "SSE_MAX_STREAMS_PER_USER", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub sse_max_streams_per_user: u32,

    /// Seconds a request may take before it is answered 503.
    #[arg(long, env = "API_REQUEST_TIMEOUT_SECS", value_name = "API_REQUEST_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub request_timeout_secs: u64,

    /// Largest request body accepted, in bytes.
    #[arg(
        long,
        env = "API_BODY_LIMIT_BYTES",
        value_name = "API_BODY_LIMIT_BYTES",
        default_value_t = 65_536
    )]
    pub body_limit_bytes: usize,

    /// Origins allowed to call the API from browsers (comma-separated); empty: no CORS.
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        value_name = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_allowed_origins: Vec<String>,

    /// Send `Strict-Transport-Security` (set when idp is served over HTTPS).
    #[arg(long, env = "HSTS", value_name = "HSTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub hsts: bool,

    /// Settings of sign-in and tokens.
    #[command(flatten)]
    pub identity: IdentityConfig,

    /// Plans and their limits.
    #[command(flatten)]
    pub plans: PlansConfig,

    /// Federated sign-in.
    #[command(flatten)]
    pub federation: FederationConfig,
}

/// Federated sign-in: OpenID Connect issuers and GitHub (`docs/identity.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct FederationConfig {
    /// The identity providers, as a JSON list: `[{"id": "google", "kind": "oidc", "issuer":
    /// "https://accounts.google.com", "client_id": "...", "client_secret": "..."}, ...]`
    /// (fields in docs/identity.md). Holds client secrets: never logged. Empty: passwords only.
    #[arg(long, env = "AUTH_PROVIDERS", value_name = "AUTH_PROVIDERS")]
    pub auth_providers: Option<SecretString>,

    /// A file holding the `AUTH_PROVIDERS` list instead (not both).
    #[arg(long, env = "AUTH_PROVIDERS_FILE", value_name = "AUTH_PROVIDERS_FILE")]
    pub auth_providers_file: Option<PathBuf>,

    /// The public base of idp as browsers reach it (the web front end, which routes `/v1` to
    /// this API): providers redirect to `{PUBLIC_BASE_URL}/v1/auth/oidc/{id}/callback`, and its
    /// origin may be a `return_to` (as may `CORS_ALLOWED_ORIGINS`).
    #[arg(
        long,
        env = "PUBLIC_BASE_URL",
        value_name = "PUBLIC_BASE_URL",
        default_value = "http://localhost:8080"
    )]
    pub public_base_url: url::Url,

    /// Seconds a session started through a provider lasts at most before the person must sign
    /// in there again (so that closing their account there ends their access here).
    #[arg(long, env = "PROVIDER_SESSION_MAX_AGE", value_name = "PROVIDER_SESSION_MAX_AGE", default_value_t = 43_200,
          value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
    pub provider_session_max_age: u64,

    /// Key ring (`id:secret`, comma-separated) that signs the cookie of a federated sign-in in
    /// progress; unset: the development ring `SECRETS_DIR/federation-state.keys`.
    #[arg(
        long,
        env = "FEDERATION_STATE_KEYS",
        value_name = "FEDERATION_STATE_KEYS"
    )]
    pub federation_state_keys: Option<SecretString>,
}

/// Plans, quotas and the rate limits of authenticated routes (`docs/plans.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct PlansConfig {
    /// The plans, as a JSON object by name: `{"free": {"requests_per_minute": 600,
    /// "live_projects": 10, "monthly_spend_cents": 2000}, ...}`. Default: `free` (600 requests
    /// a minute, 10 live projects, 20.00 a month) and `pro` (6000, 100, 500.00).
    #[arg(long, env = "PLANS", value_name = "PLANS", default_value = DEFAULT_PLANS)]
    pub plans: Plans,

    /// The plan of accounts that were put on none (one of `PLANS`).
    #[arg(
        long,
        env = "DEFAULT_PLAN",
        value_name = "DEFAULT_PLAN",
        default_value = "free"
    )]
    pub default_plan: String,

    /// Limit the requests of every authenticated route by plan, per account and per API key
    /// (`false`: no limit and no `RateLimit-*` headers, e.g. behind a gateway that limits).
    #[arg(long, env = "RATE_LIMIT_REQUESTS", value_name = "RATE_LIMIT_REQUESTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub rate_limit_requests: bool,
}

/// Sign-in, tokens and their limits.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentityConfig {
    /// Directory of Ed25519 signing keys (`*.pem`, PKCS#8; the name sorting last signs).
    #[arg(
        long,
        env = "JWT_KEYS_DIR",
        value_name = "JWT_KEYS_DIR",
        default_value = "./var/keys"
    )]
    pub jwt_keys_dir: PathBuf,

    /// Generate and keep a key in `JWT_KEYS_DIR` when it holds none (development).
    #[arg(long, env = "JWT_GENERATE_KEYS", value_name = "JWT_GENERATE_KEYS", default_value_t = true, action = clap::ArgAction::Set)]
    pub jwt_generate_keys: bool,

    /// `iss` of access tokens.
    #[arg(
        long,
        env = "JWT_ISSUER",
        value_name = "JWT_ISSUER",
        default_value = "idp"
    )]
    pub jwt_issuer: String,

    /// `aud` of access tokens.
    #[arg(
        long,
        env = "JWT_AUDIENCE",
        value_name = "JWT_AUDIENCE",
        default_value = "idp"
    )]
    pub jwt_audience: String,

    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", value_name = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(30..=86_400))]
    pub access_token_ttl_secs: u64,

    /// Lifetime of a session (its refresh tokens), in days.
    #[arg(long, env = "SESSION_TTL_DAYS", value_name = "SESSION_TTL_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=365))]
    pub session_ttl_days: u32,

    /// What a session is bound to: `none`; `network` (a refresh from another IPv4 /24 or IPv6
    /// /48 than the sign-in's ends the session); `network+agent` (another user agent ends it
    /// too).
    #[arg(
        long,
        env = "SESSION_BINDING",
        value_name = "SESSION_BINDING",
        value_enum,
        default_value = "none"
    )]
    pub session_binding: SessionBinding,

    /// A sign-in from a device (user agent family and network) the account has not used in
    /// this many days emails its owner, with a link that ends the session; 0 sends none. The
    /// first sign-in of an account sends none (there is nothing to compare it with).
    #[arg(long, env = "NEW_DEVICE_WINDOW_DAYS", value_name = "NEW_DEVICE_WINDOW_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub new_device_window_days: u32,

    /// Key ring of the digest that names the streams of sign-ins to unknown addresses (same
    /// format). Unset: the development ring `SECRETS_DIR/address-digest.keys`.
    #[arg(
        long,
        env = "ADDRESS_DIGEST_KEYS",
        value_name = "ADDRESS_DIGEST_KEYS",
        hide_env_values = true
    )]
    pub address_digest_keys: Option<SecretString>,

    /// Key ring of the blind indexes that stand for personal values in lookup tables (same
    /// format): the one-account-per-address reservation and sign-in lookup (HMAC-SHA256 of the
    /// normalised address), and the keys of rate-limit buckets (of an address or a client
    /// address), each under its own domain. The last entry indexes new values; every entry
    /// is looked up. Unset: the development ring `SECRETS_DIR/email-index.keys`.
    #[arg(
        long,
        env = "EMAIL_INDEX_KEYS",
        value_name = "EMAIL_INDEX_KEYS",
        hide_env_values = true
    )]
    pub email_index_keys: Option<SecretString>,

    /// The purposes a person may consent to, each with the version of the text they are shown:
    /// `<purpose>:<text version>,...` (purpose: 1-64 of `a-z 0-9 _ -`; version: 1-32 of
    /// `A-Z a-z 0-9 . _ -`), e.g. `product_news:2026-11,usage_analytics:3`. Changing a
    /// purpose's version asks everyone again: earlier consents name the older text. Empty: no
    /// purposes (`GET /v1/account/consents` lists only consents recorded earlier).
    #[arg(
        long,
        env = "CONSENT_PURPOSES",
        value_name = "CONSENT_PURPOSES",
        default_value = ""
    )]
    pub consent_purposes: idp_events::identity::consent::Purposes,

    /// The issuer name authenticator apps show beside a second factor enrolled here (the
    /// `issuer` of its `otpauth://` URI).
    #[arg(
        long,
        env = "MFA_ISSUER",
        value_name = "MFA_ISSUER",
        default_value = "idp"
    )]
    pub mfa_issuer: String,

    /// Roles whose holders must enrol a second factor before they can use anything but
    /// enrolment (and signing out), comma-separated, e.g. `admin`. Empty: no one must.
    #[arg(
        long,
        env = "MFA_REQUIRED_ROLES",
        value_name = "MFA_REQUIRED_ROLES",
        default_value = "",
        value_delimiter = ',',
        value_parser = required_role
    )]
    pub mfa_required_roles: Vec<String>,

    /// After this many failed sign-ins within an hour for an account or from a client address,
    /// sign-in, registration and the email requests need a CAPTCHA token (0: always). Only with
    /// `CAPTCHA_VERIFY_URL`.
    #[arg(long, env = "CAPTCHA_AFTER_FAILURES", value_name = "CAPTCHA_AFTER_FAILURES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub captcha_after_failures: u32,

    /// The siteverify endpoint of the CAPTCHA provider (Cloudflare Turnstile:
    /// `https://challenges.cloudflare.com/turnstile/v0/siteverify`; hCaptcha:
    /// `https://api.hcaptcha.com/siteverify`; reCAPTCHA:
    /// `https://www.google.com/recaptcha/api/siteverify`). Unset: no CAPTCHA is ever asked for.
    #[arg(long, env = "CAPTCHA_VERIFY_URL", value_name = "CAPTCHA_VERIFY_URL")]
    pub captcha_verify_url: Option<url::Url>,

    /// idp's secret at the CAPTCHA provider (required with `CAPTCHA_VERIFY_URL`).
    #[arg(
        long,
        env = "CAPTCHA_SECRET",
        value_name = "CAPTCHA_SECRET",
        hide_env_values = true
    )]
    pub captcha_secret: Option<SecretString>,

    /// The first administrator's email, created at start if missing.
    #[arg(long, env = "ADMIN_EMAIL", value_name = "ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// The first administrator's password (only used when the account is created).
    #[arg(
        long,
        env = "ADMIN_PASSWORD",
        value_name = "ADMIN_PASSWORD",
        hide_env_values = true
    )]
    pub admin_password: Option<SecretString>,

    /// argon2id memory in KiB (at least 19456).
    #[arg(
        long,
        env = "ARGON2_MEMORY_KIB",
        value_name = "ARGON2_MEMORY_KIB",
        default_value_t = 19_456
    )]
    pub argon2_memory_kib: u32,

    /// argon2id iterations (at least 2).
    #[arg(
        long,
        env = "ARGON2_ITERATIONS",
        value_name = "ARGON2_ITERATIONS",
        default_value_t = 2
    )]
    pub argon2_iterations: u32,

    /// argon2id lanes (at least 1).
    #[arg(
        long,
        env = "ARGON2_PARALLELISM",
        value_name = "ARGON2_PARALLELISM",
        default_value_t = 1
    )]
    pub argon2_parallelism: u32,

    /// Password computations that may wait for a core (beyond those running); more are
    /// answered 503 with `Retry-After` at once.
    #[arg(long, env = "ARGON2_MAX_QUEUE", value_name = "ARGON2_MAX_QUEUE", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub argon2_max_queue: u32,

    /// Login attempts per client IP.
    #[arg(
        long = "rate-limit-login-per-ip",
        env = "RATE_LIMIT_LOGIN_PER_IP",
        value_name = "RATE_LIMIT_LOGIN_PER_IP",
        default_value = "30/60s"
    )]
    pub login_per_ip: Limit,

    /// Login attempts per account (email).
    #[arg(
        long = "rate-limit-login-per-account",
        env = "RATE_LIMIT_LOGIN_PER_ACCOUNT",
        value_name = "RATE_LIMIT_LOGIN_PER_ACCOUNT",
        default_value = "10/60s"
    )]
    pub login_per_account: Limit,

    /// Registrations, resends and forgotten passwords per client IP.
    #[arg(
        long = "rate-limit-email-per-ip",
        env = "RATE_LIMIT_EMAIL_PER_IP",
        value_name = "RATE_LIMIT_EMAIL_PER_IP",
        default_value = "10/600s"
    )]
    pub email_per_ip: Limit,

    /// Resends and forgotten passwords per account (email).
    #[arg(
        long = "rate-limit-email-per-account",
        env = "RATE_LIMIT_EMAIL_PER_ACCOUNT",
        value_name = "RATE_LIMIT_EMAIL_PER_ACCOUNT",
        default_value = "3/600s"
    )]
    pub email_per_account: Limit,
}

/// What a session is bound to (`SESSION_BINDING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SessionBinding {
    /// Nothing: a refresh token works from anywhere.
    None,
    /// The network (IPv4 /24, IPv6 /48) the session started from.
    Network,
    /// The network and the user agent.
    #[value(name = "network+agent")]
    NetworkAndAgent,
}

/// A role of `MFA_REQUIRED_ROLES`, trimmed: one idp knows, or empty (none).
fn required_role(value: &str) -> Result<String, String> {
    let roles = idp_events::identity::user::ROLES;
    let role = value.trim();
    if role.is_empty() || roles.contains(&role) {
        Ok(role.to_owned())
    } else {
        Err(format!(
            "{role:?} is not a role; roles: {}",
            roles.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_of_the_configuration_holds_no_secret() {
        let config = Config::try_parse_from([
            "idp-api",
            "--database-url",
            "postgres://idp:db-secret-1@db:5432/idp",
            "--amqp-url",
            "amqp://guest:amqp-secret-2@127.0.0.1:5672/%2f",
            "--email-token-keys",
            "k1:email-ring-secret-0123456789abcdef",
            "--project-database-keys",
            "k2:project-ring-secret-0123456789abcdef",
            "--address-digest-keys",
            "k3:digest-ring-secret-0123456789abcdef",
            "--admin-email",
            "admin@example.com",
            "--admin-password",
            "admin-password-secret",
            "--captcha-verify-url",
            "https://captcha.example/siteverify",
            "--captcha-secret",
            "captcha-secret-3",
            "--auth-providers",
            r#"[{"id": "g", "kind": "github", "client_id": "c", "client_secret": "provider-secret-4"}]"#,
        ])
        .unwrap();
        let debug = format!("{config:?}");
        for secret in [
            "db-secret-1",
            "amqp-secret-2",
            "email-ring-secret",
            "project-ring-secret",
            "digest-ring-secret",
            "admin-password-secret",
            "captcha-secret-3",
            "provider-secret-4",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("admin_password"), "{debug}");
    }

    #[test]
    fn required_roles_are_trimmed_and_must_be_roles() {
        let parse = |roles: &str| {
            Config::try_parse_from([
                "idp-api",
                "--database-url",
                "postgres://127.0.0.1/idp",
                "--mfa-required-roles",
                roles,
            ])
        };
        let config = parse(" admin , user").unwrap();
        assert_eq!(config.identity.mfa_required_roles, ["admin", "user"]);
        let refused = parse("admin,root").unwrap_err().to_string();
        assert!(refused.contains("\"root\" is not a role"), "{refused}");
    }
}
