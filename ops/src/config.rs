//! Configuration both binaries share, read from the environment (or flags) and validated at
//! start. A bad value stops the process with a message naming the variable. A setting both
//! binaries read is declared here once, so its name, default and help text are the same in both.
//!
//! Secrets (key rings, passwords in URLs) are held in types whose `Debug` does not show them:
//! [`SecretString`] or the redacting [`DatabaseUrl`] and [`AmqpUrl`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use idp_events::keys::{KeyError, SecretKeys};
use idp_events::privacy::{KeyEncryptionKeys, SubjectKeys, SubjectKeysError};
use idp_events::project::{Catalogue, CatalogueError};
use idp_events::{EventStore, Upcasters};
use secrecy::SecretString;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// Default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://127.0.0.1:5432/idp";
/// Default `AMQP_URL` (a development default: RabbitMQ's guest account on localhost).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Settings of both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// PostgreSQL holding the event log and read models.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: DatabaseUrl,

    /// RabbitMQ for jobs.
    #[arg(long, env = "AMQP_URL", value_name = "AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: AmqpUrl,

    /// Maximum connections in the database pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", value_name = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Seconds a database operation waits for a pooled connection (including opening a new one)
    /// before it fails. While the database is unreachable, this bounds how long a request
    /// waits before it is answered 503; keep it well below `API_REQUEST_TIMEOUT_SECS`.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_SECS", value_name = "DATABASE_ACQUIRE_TIMEOUT_SECS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub database_acquire_timeout_secs: u64,

    /// Where development key rings (`<purpose>.keys`) are kept when their variable
    /// (`EMAIL_TOKEN_KEYS`, `PROJECT_DATABASE_KEYS`, `ADDRESS_DIGEST_KEYS`) is unset.
    #[arg(
        long,
        env = "SECRETS_DIR",
        value_name = "SECRETS_DIR",
        default_value = "./var/secrets"
    )]
    pub secrets_dir: PathBuf,

    /// Generate a missing development key ring in `SECRETS_DIR` (development; set `false` in
    /// production, where every ring comes from its variable).
    #[arg(long, env = "SECRETS_GENERATE", value_name = "SECRETS_GENERATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub secrets_generate: bool,

    /// Key ring of the one-time tokens in emails (`<key id>:<secret>,...`, secrets of at least
    /// 32 bytes, the last entry makes new tokens); the API and the worker share it. Unset: the
    /// development ring `SECRETS_DIR/email-token.keys`.
    #[arg(
        long,
        env = "EMAIL_TOKEN_KEYS",
        value_name = "EMAIL_TOKEN_KEYS",
        hide_env_values = true
    )]
    pub email_token_keys: Option<SecretString>,

    /// Key ring from which project database passwords are derived (same format); the API and
    /// the worker share it. Unset: the development ring `SECRETS_DIR/project-database.keys`.
    #[arg(
        long,
        env = "PROJECT_DATABASE_KEYS",
        value_name = "PROJECT_DATABASE_KEYS",
        hide_env_values = true
    )]
    pub project_database_keys: Option<SecretString>,

    /// Key ring of the key-encryption keys that wrap each person's data key (same format; the
    /// last entry wraps new keys, every entry unwraps); the API and the worker share it. Losing
    /// it loses every personal value in the log. Unset: the development ring
    /// `SECRETS_DIR/personal-data.keys`.
    #[arg(
        long,
        env = "PERSONAL_DATA_KEYS",
        value_name = "PERSONAL_DATA_KEYS",
        hide_env_values = true
    )]
    pub personal_data_keys: Option<SecretString>,

    /// Directory of the seal keys (`<kid>.pem`, Ed25519), never the access-token keys. The
    /// worker signs with the private key whose name sorts last; the API and `idp-worker verify`
    /// verify with every key in it: SPKI public PEMs in production (`idp-worker
    /// seal-public-keys` writes them), the worker's private PEMs also work, for development.
    /// Read at each round and each verification, so a new key counts at once.
    #[arg(
        long,
        env = "SEAL_KEYS_DIR",
        value_name = "SEAL_KEYS_DIR",
        default_value = "./var/seal-keys"
    )]
    pub seal_keys_dir: PathBuf,

    /// Directory of project template files (`<name>.json`) that add to or replace the built-in
    /// templates; the API and the worker must be given the same one. A file that is not a valid
    /// template stops start-up.
    #[arg(
        long,
        env = "PROJECT_TEMPLATES_DIR",
        value_name = "PROJECT_TEMPLATES_DIR"
    )]
    pub project_templates_dir: Option<PathBuf>,

    /// Log line format: `text` for people, `json` for machines.
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// The key ring `variable` holds (its `value`), or else the development ring
    /// `SECRETS_DIR/<file>.keys` (made when `SECRETS_GENERATE` allows).
    ///
    /// # Errors
    /// When the ring is malformed, or missing and may not be made.
    pub fn key_ring(
        &self,
        variable: &str,
        value: Option<&SecretString>,
        file: &str,
    ) -> Result<SecretKeys, KeyError> {
        SecretKeys::from_env_or_dev_ring(
            variable,
            value,
            &self.secrets_dir,
            file,
            self.secrets_generate,
        )
    }

    /// The ring of `EMAIL_TOKEN_KEYS` (or the development ring `email-token`).
    ///
    /// # Errors
    /// As [`CommonConfig::key_ring`].
    pub fn email_token_ring(&self) -> Result<SecretKeys, KeyError> {
        self.key_ring(
            "EMAIL_TOKEN_KEYS",
            self.email_token_keys.as_ref(),
            "email-token",
        )
    }

    /// The ring of `PROJECT_DATABASE_KEYS` (or the development ring `project-database`).
    ///
    /// # Errors
    /// As [`CommonConfig::key_ring`].
    pub fn project_database_ring(&self) -> Result<SecretKeys, KeyError> {
        self.key_ring(
            "PROJECT_DATABASE_KEYS",
            self.project_database_keys.as_ref(),
            "project-database",
        )
    }

    /// The event store over `pool`, keeping personal values sealed under the data keys that the
    /// `PERSONAL_DATA_KEYS` ring (or the development ring `personal-data`) wraps. Checks that
    /// the ring unwraps the stored keys, so a missing or wrong entry stops start-up here.
    ///
    /// # Errors
    /// When the ring is malformed or missing, or does not unwrap a stored key.
    pub async fn event_store(&self, pool: PgPool) -> Result<EventStore, PersonalDataError> {
        let ring = self.key_ring(
            "PERSONAL_DATA_KEYS",
            self.personal_data_keys.as_ref(),
            "personal-data",
        )?;
        let keys = SubjectKeys::new(pool.clone(), KeyEncryptionKeys::from_ring(&ring));
        keys.check().await?;
        Ok(EventStore::with_personal_data(
            pool,
            Upcasters::default(),
            keys,
        ))
    }

    /// The project templates: the built-in ones, with `PROJECT_TEMPLATES_DIR`'s over them.
    ///
    /// # Errors
    /// When a template file cannot be read or is invalid, naming the setting.
    pub fn catalogue(&self) -> Result<Catalogue, TemplatesError> {
        Ok(Catalogue::load(self.project_templates_dir.as_deref())?)
    }
}

/// The templates of `PROJECT_TEMPLATES_DIR` could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("PROJECT_TEMPLATES_DIR: {0}")]
pub struct TemplatesError(#[from] pub CatalogueError);

/// The key-encryption keys of personal data could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PersonalDataError {
    /// The `PERSONAL_DATA_KEYS` ring is malformed or missing.
    #[error(transparent)]
    Ring(#[from] KeyError),
    /// The ring does not unwrap a stored data key, or the key table cannot be read.
    #[error(transparent)]
    Keys(#[from] SubjectKeysError),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A PostgreSQL URL. Parsed at start; its `Debug` and `Display` hide the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: String,
    options: PgConnectOptions,
}

impl DatabaseUrl {
    /// Connection options for sqlx.
    pub fn options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// The URL as given, password included. Never log it.
    pub fn expose(&self) -> &str {
        &self.raw
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            return Err("expected a postgres:// URL".into());
        }
        let mut options = PgConnectOptions::from_str(raw).map_err(|e| e.to_string())?;
        if !has_userinfo(raw)
            && std::env::var_os("PGUSER").is_none()
            && let Some(user) = os_user_name()
        {
            // Like libpq: no user in the URL means the operating-system user.
            options = options.username(&user);
        }
        Ok(Self {
            raw: raw.to_owned(),
            options,
        })
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.raw))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.raw))
    }
}

/// An AMQP URL. Parsed at start; its `Debug` and `Display` hide the password.
#[derive(Clone)]
pub struct AmqpUrl {
    raw: String,
}

impl AmqpUrl {
    /// The URL as given, password included. Never log it.
    pub fn expose(&self) -> &str {
        &self.raw
    }
}

impl FromStr for AmqpUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        lapin::uri::AMQPUri::from_str(raw)?;
        Ok(Self {
            raw: raw.to_owned(),
        })
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.raw))
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.raw))
    }
}

fn has_userinfo(raw: &str) -> bool {
    let rest = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..authority_end].contains('@')
}

/// The name of the user running this process: `$USER`, `$LOGNAME`, or the passwd entry of the
/// process's uid (containers and CI runners often set neither variable).
pub fn os_user_name() -> Option<String> {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return Some(name);
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid).then(|| name.to_owned())
        })
    }
    #[cfg(not(unix))]
    None
}

/// `scheme://user:secret@host/...` becomes `scheme://user:***@host/...`.
pub fn redact_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let rest = &raw[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return raw.to_owned();
    };
    format!(
        "{}{}:***{}",
        &raw[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_from_debug_output() {
        let url: DatabaseUrl = "postgres://idp:s3cret@db:5432/idp".parse().unwrap();
        assert_eq!(format!("{url:?}"), "postgres://idp:***@db:5432/idp");
        let amqp: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
        assert_eq!(amqp.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
    }

    #[test]
    fn urls_without_passwords_are_unchanged() {
        assert_eq!(
            redact_url("postgres://127.0.0.1/idp"),
            "postgres://127.0.0.1/idp"
        );
        assert_eq!(
            redact_url("postgres://me@host/idp"),
            "postgres://me@host/idp"
        );
    }

    /// A binary whose settings are the common ones.
    #[derive(Debug, clap::Parser)]
    struct Common {
        #[command(flatten)]
        common: CommonConfig,
    }

    #[test]
    fn debug_output_of_the_common_settings_holds_no_secret() {
        use clap::Parser as _;
        let ring = "k1:common-ring-secret-0123456789abcdef";
        let config = Common::try_parse_from([
            "test",
            "--database-url",
            "postgres://idp:db-secret-1@db:5432/idp",
            "--amqp-url",
            "amqp://guest:amqp-secret-2@127.0.0.1:5672/%2f",
            "--email-token-keys",
            ring,
            "--project-database-keys",
            "k2:project-ring-secret-0123456789abcdef",
        ])
        .unwrap();
        let debug = format!("{config:?}");
        for secret in [
            "db-secret-1",
            "amqp-secret-2",
            "common-ring-secret",
            "project-ring-secret",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("seal_keys_dir"), "{debug}");
    }

    #[test]
    fn a_non_postgres_url_is_refused() {
        assert!("mysql://localhost/idp".parse::<DatabaseUrl>().is_err());
        assert!("not a url".parse::<AmqpUrl>().is_err());
    }
}
