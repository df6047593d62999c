//! The worker (in this process or as the real binary) and the API, against a test's own
//! database and its own queue prefix, so tests running at once never share queues.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hmac::{Hmac, Mac};
use idp_events::identity::user::{self, UserEvent};
use idp_events::jobs::{self, JobEvent};
use idp_events::{Append, EventStore, ExpectedVersion, RecordedEvent};
use idp_worker::config::Config;
use idp_worker::startup::Worker;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The key of one-time tokens shared by the test API and worker.
pub const TOKEN_SECRET: &str = "test-token-secret-0123456789abcdef0123456789";
/// The email-token key ring of test apps: one key whose secret is [`TOKEN_SECRET`].
pub const EMAIL_TOKEN_KEYS: &str = "test:test-token-secret-0123456789abcdef0123456789";
/// The secret of the project-database key ring of test apps.
pub const DATABASE_SECRET: &str = "test-database-secret-0123456789abcdef01234567";
/// The project-database key ring of test apps: one key whose secret is [`DATABASE_SECRET`].
pub const PROJECT_DATABASE_KEYS: &str = "test:test-database-secret-0123456789abcdef01234567";
/// The address-digest key ring of test apps.
pub const ADDRESS_DIGEST_KEYS: &str = "test:test-address-digest-secret-0123456789abcdef";

/// The email-token key ring of test apps.
pub fn email_keys() -> idp_events::secret_keys::SecretKeys {
    idp_events::secret_keys::SecretKeys::single("test", TOKEN_SECRET.as_bytes())
}

/// Holds the process's metrics registry for one test. `idp_ops::metrics` installs one recorder
/// per process, shared by every worker and API a test binary starts in process: `cargo test`
/// runs a binary's tests as threads of one process (nextest gives each test a process of its
/// own), and gauges sampled from one test's database (breaker states, dead letters) would be
/// overwritten by another's. A test that reads `/metrics` holds this for its whole run.
pub async fn exclusive_metrics() -> tokio::sync::MutexGuard<'static, ()> {
    static REGISTRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    REGISTRY.lock().await
}

pub fn database_url(conn: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        conn.get_username(),
        conn.get_host(),
        conn.get_port(),
        conn.get_database().unwrap_or("postgres")
    )
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A queue prefix of this test alone.
pub fn unique_prefix() -> String {
    format!("test-{}", Uuid::new_v4().simple())
}

/// Where the workers of the test with queue prefix `prefix` create repositories.
pub fn repo_root(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("idp-test-repos-{prefix}"))
}

/// The seal key directory of the workers of the test with queue prefix `prefix` (the first to
/// start generates a key there).
pub fn seal_keys_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("idp-test-seal-keys-{prefix}"))
}

/// Settings every test worker gets; `extra` flags override them.
fn worker_args(conn: &PgConnectOptions, prefix: &str, smtp_url: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "idp-worker".to_owned(),
        "--database-url".into(),
        database_url(conn),
        "--amqp-url".into(),
        amqp_url(),
        "--worker-addr".into(),
        "127.0.0.1:0".into(),
        "--amqp-prefix".into(),
        prefix.into(),
        "--email-token-keys".into(),
        EMAIL_TOKEN_KEYS.into(),
        "--project-database-keys".into(),
        PROJECT_DATABASE_KEYS.into(),
        "--public-base-url".into(),
        "http://idp.test".into(),
        "--provision-repo-root".into(),
        repo_root(prefix).display().to_string(),
        "--seal-keys-dir".into(),
        seal_keys_dir(prefix).display().to_string(),
    ];
    match smtp_url {
        Some(url) => args.extend(["--smtp-url".into(), url.into()]),
        None => args.extend([
            "--email-outbox-dir".into(),
            std::env::temp_dir()
                .join(format!("idp-test-outbox-{prefix}"))
                .display()
                .to_string(),
        ]),
    }
    args
}

/// The configuration of a test worker without SMTP (mail goes to an outbox), with `extra` flags.
pub fn worker_config(
    conn: &PgConnectOptions,
    prefix: &str,
    extra: &[&str],
) -> Result<Config, clap::Error> {
    let mut args = worker_args(conn, prefix, None);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Config::try_parse_from(args)
}

/// A worker running inside the test process.
pub struct TestWorker {
    pub port: u16,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn start_worker(
    conn: &PgConnectOptions,
    prefix: &str,
    smtp_url: Option<&str>,
    extra: &[&str],
) -> TestWorker {
    idp_ops::test_logs::init();
    let mut args = worker_args(conn, prefix, smtp_url);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let config = Config::try_parse_from(args).unwrap();
    let worker = Worker::build(&config).await.unwrap();
    let port = worker.port();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run_until_stopped(stop.clone()));
    TestWorker { port, stop, handle }
}

impl TestWorker {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the worker stops within 60 s")
            .unwrap()
            .unwrap();
    }
}

/// The real `idp-worker` binary, for tests that kill it.
pub fn spawn_worker_process(
    conn: &PgConnectOptions,
    prefix: &str,
    smtp_url: Option<&str>,
    extra: &[&str],
) -> Child {
    let args = worker_args(conn, prefix, smtp_url);
    let mut command = Command::new(env!("CARGO_BIN_EXE_idp-worker"));
    command
        .args(&args[1..])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    idp_ops::test_logs::child(&mut command, "idp-worker");
    command.spawn().unwrap()
}

/// Sends SIGTERM and waits for a clean exit.
pub fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        child.wait().unwrap().success(),
        "the worker stops cleanly on SIGTERM"
    );
}

/// Deletes the queues of `prefix` (best effort), so test runs leave the broker clean.
pub async fn delete_queues(prefix: &str) {
    let Ok(conn) =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        // Every job's queue and dead-letter queue, and the jobs benchmark's.
        for queue in idp_worker::jobs::queues()
            .chain(["bench"])
            .flat_map(|queue| [queue.to_owned(), format!("{queue}.dead")])
        {
            let _ = channel
                .queue_delete(
                    format!("{prefix}.{queue}").as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = channel
            .exchange_delete(
                format!("{prefix}.dead-letter").as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Registers a user straight in the log (no API), asking for a verification email.
pub async fn register_user(store: &EventStore, email: &str) -> (Uuid, Uuid) {
    register_named_user(store, email, None).await
}

/// Registers a user called `display_name` straight in the log, bypassing whatever the API
/// would refuse, asking for a verification email; (user id, id of the causing event).
pub async fn register_named_user(
    store: &EventStore,
    email: &str,
    display_name: Option<&str>,
) -> (Uuid, Uuid) {
    let id = Uuid::now_v7();
    let registered = UserEvent::UserRegistered {
        email: email.to_owned(),
        display_name: display_name.map(str::to_owned),
        roles: vec!["user".into()],
    }
    .to_new_event();
    let verification = UserEvent::VerificationRequested {
        email: email.to_owned(),
    }
    .to_new_event();
    let cause = verification.event_id;
    store
        .append(
            Append::to(user::stream_id(id))
                .expecting(ExpectedVersion::NoStream)
                .events([registered, verification]),
        )
        .await
        .unwrap();
    (id, cause)
}

/// The events of the email job caused by `cause`.
pub async fn job_events(store: &EventStore, cause: Uuid) -> Vec<(JobEvent, RecordedEvent)> {
    let stream = jobs::stream_id(jobs::job_id("send_email", cause));
    store
        .read_stream(&stream, 1)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| JobEvent::from_recorded(&e).map(|j| (j, e)))
        .collect()
}

/// Waits until `check` holds, polling, for at most `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many `event_type` events the log holds.
pub async fn count_events(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("select count(*) from events where event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The API on a random port, with a first administrator.
pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    /// The access-token keys (`JWT_KEYS_DIR`).
    pub keys_dir: PathBuf,
    /// Where the API reads the keys that verify seals (`SEAL_KEYS_DIR`).
    pub seal_keys_dir: PathBuf,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub const ADMIN_EMAIL: &str = "admin@idp.test";
pub const ADMIN_PASSWORD: &str = "an admin password that is long";

pub async fn start_api(conn: &PgConnectOptions) -> TestApi {
    let seal_keys_dir =
        std::env::temp_dir().join(format!("idp-test-api-seal-keys-{}", Uuid::now_v7()));
    start_api_verifying_seals_with(conn, seal_keys_dir).await
}

/// The API, verifying seals with the keys in `seal_keys_dir` (a worker's
/// [`seal_keys_dir`], say).
pub async fn start_api_verifying_seals_with(
    conn: &PgConnectOptions,
    seal_keys_dir: PathBuf,
) -> TestApi {
    idp_ops::test_logs::init();
    idp_ops::test_logs::remember_secret("password", ADMIN_PASSWORD);
    idp_ops::test_logs::remember_secret("email", ADMIN_EMAIL);
    idp_ops::test_logs::remember_secret("token secret", TOKEN_SECRET);
    let keys_dir = std::env::temp_dir().join(format!("idp-test-keys-{}", Uuid::now_v7()));
    let db = database_url(conn);
    let amqp = amqp_url();
    let keys = keys_dir.display().to_string();
    let seal_keys = seal_keys_dir.display().to_string();
    let args = vec![
        "idp-api",
        "--database-url",
        &db,
        "--amqp-url",
        &amqp,
        "--api-addr",
        "127.0.0.1:0",
        "--api-internal-addr",
        "127.0.0.1:0",
        "--jwt-keys-dir",
        &keys,
        "--seal-keys-dir",
        &seal_keys,
        "--email-token-keys",
        EMAIL_TOKEN_KEYS,
        "--project-database-keys",
        PROJECT_DATABASE_KEYS,
        "--address-digest-keys",
        ADDRESS_DIGEST_KEYS,
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
    ];
    let config = idp_api::config::Config::try_parse_from(args).unwrap();
    let app = idp_api::startup::Application::build(&config).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    TestApi {
        base,
        client: reqwest::Client::new(),
        keys_dir,
        seal_keys_dir,
        stop,
        handle,
    }
}

impl TestApi {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        idp_ops::test_logs::remember_secrets_in(&body);
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Signs in and returns the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .post(
                "/v1/auth/login",
                serde_json::json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(response.status(), 200, "login of {email}");
        let body: serde_json::Value = response.json().await.unwrap();
        idp_ops::test_logs::remember_secrets_in(&body);
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.keys_dir);
    }
}

/// Whether the server's stored SCRAM verifier of `role` accepts `password`.
pub async fn role_has_password(pool: &PgPool, role: &str, password: &str) -> bool {
    let verifier: String =
        sqlx::query_scalar("select rolpassword from pg_authid where rolname = $1")
            .bind(role)
            .fetch_one(pool)
            .await
            .unwrap();
    // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    let rest = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .expect("a SCRAM verifier");
    let (params, keys) = rest.split_once('$').unwrap();
    let (iterations, salt) = params.split_once(':').unwrap();
    let (stored_key, _) = keys.split_once(':').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64.decode(salt).unwrap();
    let iterations: u32 = iterations.parse().unwrap();
    let mac = |key: &[u8], data: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    // PBKDF2-HMAC-SHA256 with one output block.
    let mut u = mac(
        password.as_bytes(),
        &[salt.as_slice(), &1_u32.to_be_bytes()].concat(),
    );
    let mut salted = u.clone();
    for _ in 1..iterations {
        u = mac(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(&u) {
            *s ^= x;
        }
    }
    let client_key = mac(&salted, b"Client Key");
    b64.encode(Sha256::digest(&client_key)) == stored_key
}

/// Removes what a test left on the shared server (databases and roles outlive test databases).
pub async fn drop_project_database(pool: &PgPool, id: Uuid) {
    let name = format!("p_{}", id.simple());
    let _ = sqlx::raw_sql(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(pool)
        .await;
    let _ = sqlx::raw_sql(&format!("drop role if exists \"{name}\""))
        .execute(pool)
        .await;
}
