//! Test harness of the API: the real API on a random port against a fresh database, built on
//! `idp_testkit` (databases, keys, settings). [`identity`] holds what sign-in tests share;
//! [`worker`] runs the worker in process for routes whose read models it keeps.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod identity;
pub mod worker;

use std::path::PathBuf;

use clap::Parser;
use idp_api::config::Config;
use idp_api::startup::Application;
use idp_testkit::broker::amqp_url;
use idp_testkit::database::database_url;
use idp_testkit::http::ApiClient;
use idp_testkit::keys::TOKEN_SECRET;
use idp_testkit::server::Running;
use idp_testkit::settings::{api_args, temp_dir};
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

/// The first administrator of apps started with [`ADMIN_ARGS`].
pub const ADMIN_EMAIL: &str = "root@example.com";
/// The password of [`ADMIN_EMAIL`].
pub const ADMIN_PASSWORD: &str = "the admin passphrase";
/// The flags that create the first administrator, [`ADMIN_EMAIL`].
pub const ADMIN_ARGS: [&str; 4] = [
    "--admin-email",
    ADMIN_EMAIL,
    "--admin-password",
    ADMIN_PASSWORD,
];

/// The API running in the test process; its client's calls ([`ApiClient`]: `url`, `post`,
/// `get_auth`, `token`, the `base` and `client` fields) are the app's own.
pub struct TestApp {
    api: ApiClient,
    /// The access-token keys (`JWT_KEYS_DIR`).
    pub keys_dir: PathBuf,
    /// Where the API reads the keys that verify seals (`SEAL_KEYS_DIR`); empty at start.
    pub seal_keys_dir: PathBuf,
    running: Running,
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// Starts the API with `extra` flags added to a test configuration.
pub async fn spawn_app(conn: &PgConnectOptions, extra: &[&str]) -> TestApp {
    spawn(conn, extra, temp_dir("keys"), false).await
}

/// Like [`spawn_app`], with the access-token keys in `keys_dir` (another app's, say).
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
    spawn(conn, extra, temp_dir("keys"), true).await
}

/// Remembers the administrator of `extra` (and of [`ADMIN_ARGS`]) as secrets the logs must
/// not show.
fn remember_admin_secrets(extra: &[&str]) {
    idp_ops::test_logs::remember_secret("password", ADMIN_PASSWORD);
    idp_ops::test_logs::remember_secret("email", ADMIN_EMAIL);
    for pair in extra.windows(2) {
        match pair[0] {
            "--admin-password" => idp_ops::test_logs::remember_secret("password", pair[1]),
            "--admin-email" => idp_ops::test_logs::remember_secret("email", pair[1]),
            _ => {}
        }
    }
}

async fn spawn(
    conn: &PgConnectOptions,
    extra: &[&str],
    keys_dir: PathBuf,
    own_runtime: bool,
) -> TestApp {
    idp_ops::test_logs::init();
    remember_admin_secrets(extra);
    idp_ops::test_logs::remember_secret("token secret", TOKEN_SECRET);
    let seal_keys_dir = temp_dir("seal-keys");
    let mut args = api_args(&database_url(conn), &keys_dir);
    args.extend([
        "--amqp-url".to_owned(),
        amqp_url(),
        "--seal-keys-dir".to_owned(),
        seal_keys_dir.display().to_string(),
    ]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let config = Config::try_parse_from(args).unwrap();
    let (ports, running) = if own_runtime {
        let stop = CancellationToken::new();
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
        (ports, Running::from_parts(stop, handle))
    } else {
        let app = Application::build(&config).await.unwrap();
        let ports = (app.port(), app.internal_port());
        (ports, Running::spawn(|stop| app.run_until_stopped(stop)))
    };
    TestApp {
        api: ApiClient::new(ports.0, ports.1),
        keys_dir,
        seal_keys_dir,
        running,
    }
}

impl TestApp {
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
        let token = identity::latest_token(
            pool,
            "VerificationRequested",
            email,
            identity::Purpose::VerifyEmail,
        )
        .await;
        let verified = self
            .post(
                "/v1/auth/verify-email",
                serde_json::json!({ "token": token }),
            )
            .await;
        assert_eq!(verified.status(), 200);
        self.token(email, password).await
    }

    /// Calls the API; the answer's status and JSON body (`null` when empty, the text when it
    /// is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_with(&[], method, path, token, body).await
    }

    /// As [`TestApp::call`], with `headers` added to the request.
    pub async fn call_with(
        &self,
        headers: &[(&str, &str)],
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, body)
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

    /// Stops the API (it must end cleanly) and removes its key directories.
    pub async fn stop(self) {
        self.running.stop().await;
        let _ = std::fs::remove_dir_all(&self.keys_dir);
        let _ = std::fs::remove_dir_all(&self.seal_keys_dir);
    }
}
