//! What the sign-in benchmarks (`auth_bench`, `two_factor_bench`) share: settings from the
//! environment, the scratch database, the API started in process with limits out of the way,
//! and percentiles.

#![allow(dead_code, clippy::cast_precision_loss)]

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use idp_api::config::Config;
use idp_api::startup::Application;
use idp_ops::config::DatabaseUrl;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// The key of one-time email tokens the benchmark's API uses (so it can verify addresses).
pub const TOKEN_SECRET: &str = "bench-token-secret-0123456789abcdef0123456789";
/// The password of every benchmark account.
pub const PASSWORD: &str = "benchmark passphrase one";

/// `name` from the environment as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `DATABASE_URL` (default `idp_bench` on the local server).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench".into())
}

/// A pool on `url`, whose database is wiped first (a scratch database).
pub async fn scratch_database(url: &str) -> anyhow::Result<PgPool> {
    let db =
        DatabaseUrl::from_str(url).map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.options())
        .await?;
    sqlx::raw_sql("drop schema if exists public cascade; create schema public;")
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// The API running in this process on `url`'s database: loopback is a trusted proxy (each
/// request may come from its own client address), rate limits are out of reach.
pub struct BenchApi {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    keys: PathBuf,
}

impl BenchApi {
    pub async fn start(url: &str) -> anyhow::Result<Self> {
        let keys = std::env::temp_dir().join(format!("idp-bench-keys-{}", uuid::Uuid::now_v7()));
        let keys_arg = keys.display().to_string();
        let config = Config::try_parse_from([
            "idp-api",
            "--database-url",
            url,
            "--api-addr",
            "127.0.0.1:0",
            "--api-internal-addr",
            "127.0.0.1:0",
            "--jwt-keys-dir",
            &keys_arg,
            "--secrets-dir",
            &format!("{keys_arg}/secrets"),
            "--trusted-proxies",
            "127.0.0.1/32",
            "--email-token-keys",
            &format!("bench:{TOKEN_SECRET}"),
            "--database-max-connections",
            "20",
            "--rate-limit-login-per-ip",
            "1000000/60s",
            "--rate-limit-login-per-account",
            "1000000/60s",
            "--rate-limit-email-per-ip",
            "1000000/60s",
        ])?;
        let app = Application::build(&config).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(stop.clone()));
        Ok(Self {
            base,
            stop,
            server,
            keys,
        })
    }

    /// Stops the API (it must end cleanly) and removes its keys.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await??;
        let _ = std::fs::remove_dir_all(&self.keys);
        Ok(())
    }
}

/// The `q` quantile of `samples`, in milliseconds (NaN without samples).
pub fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}
