//! What the sign-in benchmarks (`auth_bench`, `two_factor_bench`) share: settings from the
//! environment, the scratch database, the API started in process with limits out of the way,
//! and percentiles.

#![allow(dead_code, clippy::cast_precision_loss)]

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use idp_api::config::Config;
use idp_api::startup::Application;
use idp_events::identity::one_time_token::{self, Purpose};
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
        Self::start_with(url, &[]).await
    }

    /// [`BenchApi::start`] with `extra` flags.
    pub async fn start_with(url: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let keys = std::env::temp_dir().join(format!("idp-bench-keys-{}", uuid::Uuid::now_v7()));
        let keys_arg = keys.display().to_string();
        let secrets_arg = format!("{keys_arg}/secrets");
        let token_arg = format!("bench:{TOKEN_SECRET}");
        let mut args = vec![
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
            &secrets_arg,
            "--trusted-proxies",
            "127.0.0.1/32",
            "--email-token-keys",
            &token_arg,
            "--database-max-connections",
            "20",
            "--rate-limit-login-per-ip",
            "1000000/60s",
            "--rate-limit-login-per-account",
            "1000000/60s",
            "--rate-limit-email-per-ip",
            "1000000/60s",
            // Requests and projects of one benchmark account are not a plan's business here.
            "--plans",
            r#"{"bench":{"requests_per_minute":60000000,"live_projects":100000000,"monthly_spend_cents":100000000000}}"#,
            "--default-plan",
            "bench",
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args)?;
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

    /// Where its signing keys and development secrets are (another API may share them).
    pub fn keys_dir(&self) -> &std::path::Path {
        &self.keys
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

/// What one wrk run measured.
pub struct Wrk {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Runs wrk with a Lua script that sets the request and prints percentiles and non-2xx counts.
pub fn wrk(
    url: &str,
    connections: u64,
    seconds: u64,
    method: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> anyhow::Result<Wrk> {
    wrk_paced(url, connections, seconds, method, body, auth, None)
}

/// [`wrk`], each connection waiting `delay_ms` before each request: `connections` over
/// `delay_ms` paces the load to a rate (e.g. 50 connections, 10 ms: about 5,000 a second).
pub fn wrk_paced(
    url: &str,
    connections: u64,
    seconds: u64,
    method: &str,
    body: Option<&str>,
    auth: Option<&str>,
    delay_ms: Option<u64>,
) -> anyhow::Result<Wrk> {
    let dir = std::env::temp_dir().join(format!("idp-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("bench.lua");
    let mut lua = format!(
        "wrk.method = \"{method}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    if let Some(body) = body {
        lua.push_str(&format!("wrk.body = [[{body}]]\n"));
    }
    if let Some(token) = auth {
        lua.push_str(&format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ));
    }
    if let Some(ms) = delay_ms {
        lua.push_str(&format!("function delay() return {ms} end\n"));
    }
    lua.push_str(
        r#"
-- Sign-ins come from many addresses, as in production (through the trusted loopback proxy):
-- one address has one sign-in at a time.
request = function()
  wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  return wrk.format()
end
bad = 0
function response(status, headers, body)
  if status >= 300 then bad = bad + 1 end
end
function setup(thread) table.insert(threads, thread) end
threads = {}
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %f %f %f %f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, errors))
end
"#,
    );
    std::fs::write(&script, lua)?;
    let output = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .context("while running wrk (install it: apt-get install wrk)")?;
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
        bail!(
            "wrk printed no result: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let f: Vec<f64> = line[7..]
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    anyhow::ensure!(f.len() == 5, "unexpected wrk output {line}");
    Ok(Wrk {
        requests_per_sec: f[0],
        p50_ms: f[1],
        p95_ms: f[2],
        p99_ms: f[3],
        errors: f[4] as u64,
    })
}

/// Registers `email`, verifies it with the token the worker would mail (recomputed from the
/// log) and signs in on the API at `base`: the access token.
pub async fn signed_in(
    pool: &PgPool,
    client: &reqwest::Client,
    base: &str,
    email: &str,
) -> anyhow::Result<String> {
    client
        .post(format!("{base}/v1/auth/register"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    let event_id: uuid::Uuid = sqlx::query_scalar(
        "select event_id from events where event_type = 'VerificationRequested'
          order by position desc limit 1",
    )
    .fetch_one(pool)
    .await?;
    let token = one_time_token::issue(
        &idp_events::keys::SecretKeys::single("bench", TOKEN_SECRET.as_bytes()),
        Purpose::VerifyEmail,
        event_id,
    );
    client
        .post(format!("{base}/v1/auth/verify-email"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await?;
    sign_in(client, base, email).await
}

/// Signs `email` in on the API at `base`: the access token.
pub async fn sign_in(client: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<String> {
    let pair: serde_json::Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    Ok(pair["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned())
}
