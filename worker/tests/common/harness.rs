//! The worker (in this process or as the real binary) and the API, against a test's own
//! database and its own queue prefix, so tests running at once never share queues.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idp_events::StreamId;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use clap::Parser;
use hmac::{Hmac, Mac};
use idp_events::identity::user::UserEvent;
use idp_events::jobs::{self, JobEvent};
use idp_events::{Append, EventStore, ExpectedVersion, RecordedEvent};
use idp_testkit::broker::amqp_url;
use idp_testkit::database::database_url;
use idp_testkit::http::ApiClient;
use idp_testkit::keys::TOKEN_SECRET;
use idp_testkit::server::Running;
use idp_testkit::settings::{api_args, temp_dir};
use idp_worker::config::Config;
use idp_worker::startup::Worker;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

/// Settings every test worker gets (`idp_testkit::settings::worker_args` on the test's
/// database and broker); flags appended later override them.
fn worker_args(conn: &PgConnectOptions, prefix: &str, smtp_url: Option<&str>) -> Vec<String> {
    idp_testkit::settings::worker_args(&database_url(conn), &amqp_url(), prefix, smtp_url)
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
    running: Running,
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
    let running = Running::spawn(|stop| worker.run_until_stopped(stop));
    TestWorker { port, running }
}

impl TestWorker {
    /// Stops the worker; it must end cleanly within 60 s.
    pub async fn stop(self) {
        self.running.stop().await;
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
    idp_testkit::process::sigterm(child);
    assert!(
        child.wait().unwrap().success(),
        "the worker stops cleanly on SIGTERM"
    );
}

/// Deletes the queues of `prefix` (best effort), so test runs leave the broker clean: every
/// job's queue and dead-letter queue, and the jobs benchmark's.
pub async fn delete_queues(prefix: &str) {
    let queues: Vec<&str> = idp_worker::jobs::queues().chain(["bench"]).collect();
    idp_testkit::broker::delete_queues(prefix, &queues).await;
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
        email: email.into(),
        display_name: display_name.map(Into::into),
        roles: vec!["user".into()],
    }
    .to_new_event();
    let verification = UserEvent::VerificationRequested {
        email: email.into(),
    }
    .to_new_event();
    let cause = verification.event_id;
    store
        .append(
            Append::to(StreamId::user(id))
                .about(id)
                .expecting(ExpectedVersion::NoStream)
                .events([registered, verification]),
        )
        .await
        .unwrap();
    (id, cause)
}

/// The events of the email job caused by `cause`.
pub async fn job_events(store: &EventStore, cause: Uuid) -> Vec<(JobEvent, RecordedEvent)> {
    let stream = StreamId::job(jobs::job_id("send_email", cause));
    store
        .read_stream(&stream, 1)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| JobEvent::from_recorded(&e).map(|j| (j, e)))
        .collect()
}

/// The API on a random port, with a first administrator; its client's calls ([`ApiClient`])
/// are its own.
pub struct TestApi {
    api: ApiClient,
    /// The access-token keys (`JWT_KEYS_DIR`).
    pub keys_dir: PathBuf,
    /// Where the API reads the keys that verify seals (`SEAL_KEYS_DIR`).
    pub seal_keys_dir: PathBuf,
    running: Running,
}

impl std::ops::Deref for TestApi {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

pub const ADMIN_EMAIL: &str = "admin@idp.test";
pub const ADMIN_PASSWORD: &str = "an admin password that is long";

pub async fn start_api(conn: &PgConnectOptions) -> TestApi {
    start_api_verifying_seals_with(conn, temp_dir("api-seal-keys")).await
}

/// The API, verifying seals with the keys in `seal_keys_dir` (a worker's
/// `idp_testkit::settings::seal_keys_dir`, say).
pub async fn start_api_verifying_seals_with(
    conn: &PgConnectOptions,
    seal_keys_dir: PathBuf,
) -> TestApi {
    idp_ops::test_logs::init();
    idp_ops::test_logs::remember_secret("password", ADMIN_PASSWORD);
    idp_ops::test_logs::remember_secret("email", ADMIN_EMAIL);
    idp_ops::test_logs::remember_secret("token secret", TOKEN_SECRET);
    let keys_dir = temp_dir("keys");
    let mut args = api_args(&database_url(conn), &keys_dir);
    args.extend(
        [
            "--amqp-url",
            &amqp_url(),
            "--seal-keys-dir",
            &seal_keys_dir.display().to_string(),
            "--admin-email",
            ADMIN_EMAIL,
            "--admin-password",
            ADMIN_PASSWORD,
        ]
        .map(str::to_owned),
    );
    let config = idp_api::config::Config::try_parse_from(args).unwrap();
    let app = idp_api::startup::Application::build(&config).await.unwrap();
    TestApi {
        api: ApiClient::new(app.port(), app.internal_port()),
        keys_dir,
        seal_keys_dir,
        running: Running::spawn(|stop| app.run_until_stopped(stop)),
    }
}

impl TestApi {
    /// Stops the API (it must end cleanly) and removes its access-token keys.
    pub async fn stop(self) {
        self.running.stop().await;
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
