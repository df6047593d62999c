//! Test harness: the real API on a random port against a fresh database.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use clap::Parser;
use idp_api::config::Config;
use idp_api::startup::Application;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

pub const TOKEN_SECRET: &str = "test-token-secret-0123456789abcdef0123456789";

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
    pub keys_dir: PathBuf,
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
    let db = database_url(conn);
    let amqp = amqp_url();
    let keys = keys_dir.display().to_string();
    let mut args = vec![
        "idp-api",
        "--database-url",
        &db,
        "--amqp-url",
        &amqp,
        "--api-addr",
        "127.0.0.1:0",
        "--jwt-keys-dir",
        &keys,
        "--token-secret",
        TOKEN_SECRET,
    ];
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).unwrap();
    let app = Application::build(&config).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    TestApp {
        base,
        keys_dir,
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

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
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

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.keys_dir);
    }
}
