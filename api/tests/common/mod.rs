//! Test harness: the real API on a random port against a fresh database.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use clap::Parser;
use idp_api::config::Config;
use idp_api::startup::Application;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

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

/// The first administrator of apps started with [`ADMIN_ARGS`].
pub const ADMIN_EMAIL: &str = "root@example.com";
pub const ADMIN_PASSWORD: &str = "the admin passphrase";
pub const ADMIN_ARGS: [&str; 4] = [
    "--admin-email",
    ADMIN_EMAIL,
    "--admin-password",
    ADMIN_PASSWORD,
];

/// Holds the process's metrics registry for one test. `idp_ops::metrics` installs one recorder
/// per process, shared by every app a test binary starts: `cargo test` runs a binary's tests as
/// threads of one process (nextest gives each test a process of its own). A test that reads
/// `/metrics` holds this for its whole run, so that no other app of the process counts or
/// publishes meanwhile, and compares counters with a page fetched before its own requests,
/// since earlier tests of the process have counted too.
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

pub struct TestApp {
    pub base: String,
    /// The internal listener: `/metrics`, the detailed `/health/ready`.
    pub internal: String,
    /// The access-token keys (`JWT_KEYS_DIR`).
    pub keys_dir: PathBuf,
    /// Where the API reads the keys that verify seals (`SEAL_KEYS_DIR`); empty at start.
    pub seal_keys_dir: PathBuf,
    pub client: reqwest::Client,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the API with `extra` flags added to a test configuration.
pub async fn spawn_app(conn: &PgConnectOptions, extra: &[&str]) -> TestApp {
    let keys_dir = std::env::temp_dir().join(format!("idp-test-keys-{}", uuid::Uuid::now_v7()));
    spawn_app_with_keys(conn, extra, keys_dir).await
}

pub async fn spawn_app_with_keys(
    conn: &PgConnectOptions,
    extra: &[&str],
    keys_dir: PathBuf,
) -> TestApp {
    spawn(conn, extra, keys_dir, false).await
}

/// Like [`spawn_app`], but the API runs on a multi-threaded runtime of its own, as the binary
/// does, instead of on the test's one thread: for tests whose own clients would otherwise
/// take turns with the server.
pub async fn spawn_app_on_own_runtime(conn: &PgConnectOptions, extra: &[&str]) -> TestApp {
    let keys_dir = std::env::temp_dir().join(format!("idp-test-keys-{}", uuid::Uuid::now_v7()));
    spawn(conn, extra, keys_dir, true).await
}

async fn spawn(
    conn: &PgConnectOptions,
    extra: &[&str],
    keys_dir: PathBuf,
    own_runtime: bool,
) -> TestApp {
    idp_ops::test_logs::init();
    idp_ops::test_logs::remember_secret("password", ADMIN_PASSWORD);
    idp_ops::test_logs::remember_secret("email", ADMIN_EMAIL);
    idp_ops::test_logs::remember_secret("token secret", TOKEN_SECRET);
    let db = database_url(conn);
    let amqp = amqp_url();
    let keys = keys_dir.display().to_string();
    let seal_keys_dir =
        std::env::temp_dir().join(format!("idp-test-seal-keys-{}", uuid::Uuid::now_v7()));
    let seal_keys = seal_keys_dir.display().to_string();
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).unwrap();
    let stop = CancellationToken::new();
    let (ports, handle) = if own_runtime {
        let (ports_tx, ports_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            let outcome = runtime.block_on(async move {
                let app = Application::build(&config).await?;
                let _ = ports_tx.send((app.port(), app.internal_port()));
                app.run_until_stopped(stopping).await
            });
            let _ = done_tx.send(outcome);
        });
        let ports = ports_rx.await.expect("the API starts");
        let handle = tokio::spawn(async move { done_rx.await? });
        (ports, handle)
    } else {
        let app = Application::build(&config).await.unwrap();
        let ports = (app.port(), app.internal_port());
        (ports, tokio::spawn(app.run_until_stopped(stop.clone())))
    };
    let base = format!("http://127.0.0.1:{}", ports.0);
    let internal = format!("http://127.0.0.1:{}", ports.1);
    TestApp {
        base,
        internal,
        keys_dir,
        seal_keys_dir,
        client: reqwest::Client::builder()
            .user_agent("idp-tests/1.0")
            .build()
            .unwrap(),
        stop,
        handle,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `path` on the internal listener.
    pub fn internal_url(&self, path: &str) -> String {
        format!("{}{path}", self.internal)
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

    pub async fn get_auth(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Signs in; the access token.
    pub async fn token(&self, email: &str, password: &str) -> String {
        let response = self
            .post(
                "/v1/auth/login",
                serde_json::json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(response.status(), 200, "login of {email}");
        let pair: serde_json::Value = response.json().await.unwrap();
        idp_ops::test_logs::remember_secrets_in(&pair);
        pair["access_token"].as_str().unwrap().to_owned()
    }

    /// The token of the administrator of [`ADMIN_ARGS`].
    pub async fn admin_token(&self) -> String {
        self.token(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Registers `email`, verifies it with the token the worker would mail (recomputed from
    /// the log in `pool`) and signs in; the access token.
    pub async fn verified_user(&self, pool: &sqlx::PgPool, email: &str, password: &str) -> String {
        let registered = self
            .post(
                "/v1/auth/register",
                serde_json::json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(registered.status(), 202);
        let event_id: uuid::Uuid = sqlx::query_scalar(
            "select event_id from events where event_type = 'VerificationRequested'
                and data->>'email' = $1 order by position desc limit 1",
        )
        .bind(email)
        .fetch_one(pool)
        .await
        .unwrap();
        let token = idp_events::identity::one_time_token::issue(
            &email_keys(),
            idp_events::identity::one_time_token::Purpose::VerifyEmail,
            event_id,
        );
        idp_ops::test_logs::remember_secret("token", &token);
        let verified = self
            .post(
                "/v1/auth/verify-email",
                serde_json::json!({ "token": token }),
            )
            .await;
        assert_eq!(verified.status(), 200);
        self.token(email, password).await
    }

    /// The OpenAPI document.
    pub async fn openapi(&self) -> serde_json::Value {
        self.client
            .get(self.url("/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.keys_dir);
        let _ = std::fs::remove_dir_all(&self.seal_keys_dir);
    }
}
