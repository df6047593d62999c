//! Configuration and command line of `idp-worker`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use idp_ops::config::CommonConfig;
use secrecy::SecretString;

/// `idp-worker`: projections, dispatcher and jobs of idp.
#[derive(Debug, Clone, Parser)]
#[command(name = "idp-worker", version, about)]
pub struct Config {
    /// Settings shared with the API.
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address of the worker's health and metrics listener.
    #[arg(
        long,
        env = "WORKER_ADDR",
        value_name = "WORKER_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub worker_addr: SocketAddr,

    /// Jobs: queues, retries and circuit breakers.
    #[command(flatten)]
    pub jobs: JobsConfig,

    /// Email: where it goes and what it links to.
    #[command(flatten)]
    pub email: EmailConfig,

    /// Provisioning: templates, drivers and their retries.
    #[command(flatten)]
    pub provision: ProvisionConfig,

    /// Seals: signed checkpoints of the whole log.
    #[command(flatten)]
    pub seal: SealConfig,

    /// What to do; without a command the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the projections (the default).
    Run,
    /// Empty a projection's read model and replay the log into it, showing progress.
    Rebuild {
        /// The projection, e.g. `event_type_counts`.
        name: String,
    },
    /// Recompute the hash chain of every stream and every seal, and report the first problem.
    Verify {
        /// Only streams whose id starts with this, e.g. `user-` (seals always cover the log).
        #[arg(long)]
        stream_prefix: Option<String>,
        /// A seal kept outside the database (`GET /v1/admin/audit/seal`) that the log must
        /// still hold: `<seal number>:<seal hash in hex>`.
        #[arg(long, value_name = "NUMBER:HASH")]
        expect_seal: Option<idp_events::seal::Anchor>,
    },
    /// Write the public halves of the keys in `SEAL_KEYS_DIR` to a directory, as `<kid>.pem`
    /// (SPKI), for verifiers that must not hold the private keys (the API, auditors).
    SealPublicKeys {
        /// Where to write them; created if missing. A file there with another key under the
        /// same name is an error; the same key is left as it is.
        out_dir: std::path::PathBuf,
    },
    /// Apply the isolation of `database` steps to every provisioned project database (PUBLIC's
    /// privileges revoked, CONNECT granted to the project's role only, the connection limit,
    /// idp's own database out of reach), printing one line per database; safe to repeat.
    HardenDatabases {
        /// Also set every login's password to the one derived with the current key of
        /// `PROJECT_DATABASE_KEYS` and record that key (a rotation); each owner may then fetch
        /// the new password once.
        #[arg(long)]
        rotate_passwords: bool,
    },
    /// Print a stream's history and the state of its aggregate, now or at a point in the past.
    Replay {
        /// The stream, e.g. `user-<uuid>` or `project-<uuid>`.
        #[arg(long, value_parser = idp_events::replay::parse_stream_id)]
        stream: String,
        /// Stop after the events recorded at or before this RFC 3339 time
        /// (`2026-01-31T12:00:00Z`), or at or before this log position (a whole number).
        #[arg(long)]
        until: Option<idp_events::replay::Until>,
    },
    /// Personal data: re-wrap the data keys under a new key-encryption key, or re-apply the
    /// erasures of the log after a restore (see docs/privacy.md).
    Privacy {
        /// What to do.
        #[command(subcommand)]
        action: PrivacyCommand,
    },
}

/// `idp-worker privacy ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PrivacyCommand {
    /// Re-wrap every data key that is not under the last entry of `PERSONAL_DATA_KEYS`, in
    /// batches, printing progress; afterwards the ring's older entries are no longer needed.
    RotateKek {
        /// Keys per transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
    },
    /// Destroy the data key of every person the log records as erased (`PersonErased`) whose
    /// key is there again (the key table restored from an older backup than the log); safe to
    /// repeat.
    ReapplyErasures,
}

/// RabbitMQ queue type of the job queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    /// Replicated, with a delivery limit enforced by the broker (RabbitMQ 3.8 and later).
    Quorum,
    /// Classic durable queues, for brokers without quorum queues (no delivery limit).
    Classic,
}

/// Jobs: queues, retries and circuit breakers.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsConfig {
    /// Prefix of every queue and exchange name, so environments sharing a broker never share
    /// queues.
    #[arg(long, env = "AMQP_PREFIX", value_name = "AMQP_PREFIX", default_value = "idp",
          value_parser = parse_prefix)]
    pub amqp_prefix: String,

    /// Type of the job queues.
    #[arg(long, env = "AMQP_QUEUE_TYPE", value_name = "AMQP_QUEUE_TYPE", value_enum, default_value_t = QueueType::Quorum)]
    pub amqp_queue_type: QueueType,

    /// Deliveries of one message before the broker dead-letters it (a job that keeps killing
    /// its worker); quorum queues only.
    #[arg(long, env = "AMQP_DELIVERY_LIMIT", value_name = "AMQP_DELIVERY_LIMIT", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub amqp_delivery_limit: u32,

    /// Jobs each worker process runs at once per queue (also the broker prefetch).
    #[arg(long, env = "JOB_CONCURRENCY", value_name = "JOB_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub job_concurrency: u16,

    /// Events the dispatcher reads, publishes and checkpoints at once.
    #[arg(long, env = "DISPATCHER_BATCH_SIZE", value_name = "DISPATCHER_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub dispatcher_batch_size: i64,

    /// Attempts of a job before it is dead-lettered.
    #[arg(long, env = "JOB_MAX_ATTEMPTS", value_name = "JOB_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_max_attempts: u32,

    /// First retry delay, in milliseconds; each further retry doubles it (full jitter).
    #[arg(long, env = "JOB_BACKOFF_BASE_MS", value_name = "JOB_BACKOFF_BASE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub job_backoff_base_ms: u64,

    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "JOB_BACKOFF_CAP_MS", value_name = "JOB_BACKOFF_CAP_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub job_backoff_cap_ms: u64,

    /// Consecutive failures that open a circuit breaker.
    #[arg(long, env = "BREAKER_FAILURE_THRESHOLD", value_name = "BREAKER_FAILURE_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_failure_threshold: u32,

    /// How long an open breaker refuses calls before a trial call, in milliseconds.
    #[arg(long, env = "BREAKER_OPEN_MS", value_name = "BREAKER_OPEN_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub breaker_open_ms: u64,

    /// How often projection lag and breaker states are sampled for `/metrics`, in seconds.
    #[arg(long, env = "METRICS_SAMPLE_SECS", value_name = "METRICS_SAMPLE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub metrics_sample_secs: u64,

    /// How long a `POST /v1/projects` `Idempotency-Key` is remembered, in hours; a request
    /// repeating an older key is a new request.
    #[arg(long, env = "IDEMPOTENCY_KEY_TTL_HOURS", value_name = "IDEMPOTENCY_KEY_TTL_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u64).range(1..=8_760))]
    pub idempotency_key_ttl_hours: u64,

    /// How many days client addresses and user agents stay readable in event metadata (and in
    /// the audit view): the key of each older day is destroyed, so its events keep their actor
    /// and lose those details. 0 keeps them for the current day only.
    #[arg(long, env = "PII_METADATA_RETENTION_DAYS", value_name = "PII_METADATA_RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub pii_metadata_retention_days: u32,
}

/// Email: where it goes and what it links to.
#[derive(Debug, Clone, clap::Args)]
pub struct EmailConfig {
    /// Mail server, e.g. `smtp://mail.internal:25`, `smtp://user:pass@host:587?tls=required`,
    /// `smtps://host`. When unset, mail is written as `.eml` files to `EMAIL_OUTBOX_DIR`.
    #[arg(
        long,
        env = "SMTP_URL",
        value_name = "SMTP_URL",
        hide_env_values = true
    )]
    pub smtp_url: Option<SecretString>,

    /// Where mail goes when `SMTP_URL` is unset.
    #[arg(
        long,
        env = "EMAIL_OUTBOX_DIR",
        value_name = "EMAIL_OUTBOX_DIR",
        default_value = "./var/mail"
    )]
    pub email_outbox_dir: PathBuf,

    /// Sender of every email.
    #[arg(
        long,
        env = "EMAIL_FROM",
        value_name = "EMAIL_FROM",
        default_value = "idp <no-reply@idp.localhost>"
    )]
    pub email_from: String,

    /// Timeout of each exchange with the mail server, in seconds.
    #[arg(long, env = "SMTP_TIMEOUT_SECS", value_name = "SMTP_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub smtp_timeout_secs: u64,

    /// Mail server connections kept open for reuse.
    #[arg(long, env = "SMTP_POOL_SIZE", value_name = "SMTP_POOL_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub smtp_pool_size: u16,

    /// Base of the links in emails (the web front end), e.g. `https://idp.example.com`.
    #[arg(
        long,
        env = "PUBLIC_BASE_URL",
        value_name = "PUBLIC_BASE_URL",
        default_value = "http://localhost:8080"
    )]
    pub public_base_url: String,
}

/// Provisioning: templates, drivers and their retries.
#[derive(Debug, Clone, clap::Args)]
pub struct ProvisionConfig {
    /// PostgreSQL server on which `database` steps create a database and a login per project,
    /// as a role allowed to create both (default: `DATABASE_URL`).
    #[arg(
        long,
        env = "PROVISION_DATABASE_URL",
        value_name = "PROVISION_DATABASE_URL",
        hide_env_values = true
    )]
    pub provision_database_url: Option<idp_ops::config::DatabaseUrl>,

    /// Connections each project's database login may have open at once (its role's
    /// `CONNECTION LIMIT`), so that one owner cannot take the provisioning server's
    /// connections; applied at the next step run or `idp-worker harden-databases`.
    #[arg(long, env = "PROVISION_DATABASE_CONNECTION_LIMIT", value_name = "PROVISION_DATABASE_CONNECTION_LIMIT",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub provision_database_connection_limit: u32,

    /// Directory under which `repository` steps create the projects' git repositories.
    #[arg(
        long,
        env = "PROVISION_REPO_ROOT",
        value_name = "PROVISION_REPO_ROOT",
        default_value = "./var/repos"
    )]
    pub provision_repo_root: PathBuf,

    /// URL to which `webhook` steps POST the project (signed); when unset, those steps are
    /// skipped with the reason recorded.
    #[arg(
        long,
        env = "PROVISION_WEBHOOK_URL",
        value_name = "PROVISION_WEBHOOK_URL"
    )]
    pub provision_webhook_url: Option<url::Url>,

    /// Key of the webhook's `X-Idp-Signature` (HMAC-SHA256); unsigned when unset.
    #[arg(
        long,
        env = "PROVISION_WEBHOOK_SECRET",
        value_name = "PROVISION_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub provision_webhook_secret: Option<SecretString>,

    /// Attempts per step (and per undone step at deletion) before the project fails.
    #[arg(long, env = "PROVISION_MAX_ATTEMPTS", value_name = "PROVISION_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub provision_max_attempts: u32,

    /// First retry delay ceiling of a step, in ms; it doubles per attempt (full jitter).
    #[arg(long, env = "PROVISION_BACKOFF_BASE_MS", value_name = "PROVISION_BACKOFF_BASE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub provision_backoff_base_ms: u64,

    /// Largest retry delay of a step, in ms.
    #[arg(long, env = "PROVISION_BACKOFF_CAP_MS", value_name = "PROVISION_BACKOFF_CAP_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub provision_backoff_cap_ms: u64,

    /// Time one attempt at a step may take before it counts as a (retryable) failure, in ms.
    #[arg(long, env = "PROVISION_STEP_TIMEOUT_MS", value_name = "PROVISION_STEP_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub provision_step_timeout_ms: u64,

    /// Provisioning jobs one worker process runs at once.
    #[arg(long, env = "PROVISION_CONCURRENCY", value_name = "PROVISION_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub provision_concurrency: u16,
}

/// Seals: signed checkpoints of the whole log (tamper evidence).
#[derive(Debug, Clone, clap::Args)]
pub struct SealConfig {
    /// How often the sealer seals the events committed since the last seal, in seconds.
    #[arg(long, env = "SEAL_INTERVAL_SECS", value_name = "SEAL_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seal_interval_secs: u64,

    /// Most events in one seal; more are sealed in several seals (each keeps 40 bytes per event).
    #[arg(long, env = "SEAL_MAX_EVENTS", value_name = "SEAL_MAX_EVENTS", default_value_t = 100_000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub seal_max_events: i64,

    /// Generate a seal key in `SEAL_KEYS_DIR` at start when it holds no private key
    /// (development); when false, such a start fails.
    #[arg(long, env = "SEAL_GENERATE_KEYS", value_name = "SEAL_GENERATE_KEYS", default_value_t = true, action = clap::ArgAction::Set)]
    pub seal_generate_keys: bool,
}

fn parse_prefix(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("use 1 to 64 characters of a-z, 0-9, '.', '_' and '-'".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_of_the_configuration_holds_no_secret() {
        let config = Config::try_parse_from([
            "idp-worker",
            "--database-url",
            "postgres://idp:db-secret-1@db:5432/idp",
            "--amqp-url",
            "amqp://guest:amqp-secret-2@127.0.0.1:5672/%2f",
            "--email-token-keys",
            "k1:email-ring-secret-0123456789abcdef",
            "--project-database-keys",
            "k2:project-ring-secret-0123456789abcdef",
            "--smtp-url",
            "smtp://mailer:smtp-password-secret@mail.internal:587?tls=required",
            "--provision-database-url",
            "postgres://admin:provision-db-secret@db:5432/postgres",
            "--provision-webhook-secret",
            "webhook-secret-value",
        ])
        .unwrap();
        let debug = format!("{config:?}");
        for secret in [
            "db-secret-1",
            "amqp-secret-2",
            "email-ring-secret",
            "project-ring-secret",
            "smtp-password-secret",
            "provision-db-secret",
            "webhook-secret-value",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("provision_webhook_secret"), "{debug}");
    }
}
