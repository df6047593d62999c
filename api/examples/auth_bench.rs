//! Sign-in benchmark: `scripts/bench auth` runs it against a scratch database.
//!
//! Starts the real API in this process, then drives it with `wrk` (HTTP/1.1 keep-alive):
//!
//! - logins under a steady flood, against the argon2 ceiling measured in the same run
//!   (cores / time of one hash), while a probe measures `/health/live` latency;
//! - `GET /v1/auth/me` (JWT check, session check, account read), against `/health/live` served
//!   by the same process as the baseline.
//!
//! Environment: `DATABASE_URL` (wiped: a scratch database), `BENCH_SECONDS` (per scenario,
//! default 10), `BENCH_CONNECTIONS` (for `/me`, default 32).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use idp_api::auth::password::{HashParams, Hasher};
use idp_events::identity::one_time_token::{self, Purpose};
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod support;

use support::{BenchApi, PASSWORD, TOKEN_SECRET as SECRET, env_u64, percentile};

struct Wrk {
    requests_per_sec: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Runs wrk with a Lua script that sets the request and prints percentiles and non-2xx counts.
fn wrk(
    url: &str,
    connections: u64,
    seconds: u64,
    method: &str,
    body: Option<&str>,
    auth: Option<&str>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = support::database_url();
    let seconds = env_u64("BENCH_SECONDS", 10);
    let connections = env_u64("BENCH_CONNECTIONS", 32);
    let pool = support::scratch_database(&url).await?;

    // The argon2 ceiling: cores / the time of one hash, measured here.
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let hasher = Hasher::new(HashParams::default());
    let started = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        hasher
            .verify(PASSWORD, &hasher.hash(PASSWORD).await?)
            .await?;
    }
    let per_hash = started.elapsed().as_secs_f64() / (2 * rounds) as f64;
    let ceiling = cores as f64 / per_hash;
    // For reference: what `cores` hashing tasks alone achieve (cores may not scale perfectly).
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cores {
        let hasher = hasher.clone();
        tasks.spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < deadline {
                let _ = hasher.hash(PASSWORD).await;
                done += 1;
            }
            done
        });
    }
    let mut hashed = 0_u64;
    while let Some(done) = tasks.join_next().await {
        hashed += done.unwrap_or(0);
    }
    let parallel_hashes = hashed as f64 / started.elapsed().as_secs_f64();

    let api = BenchApi::start(&url).await?;
    let base = api.base.clone();
    let client = reqwest::Client::new();

    let email = "bench@example.com";
    client
        .post(format!("{base}/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    let event_id: uuid::Uuid = sqlx::query_scalar(
        "select event_id from events where event_type = 'VerificationRequested'",
    )
    .fetch_one(&pool)
    .await?;
    let token = one_time_token::issue(
        &idp_events::keys::SecretKeys::single("bench", SECRET.as_bytes()),
        Purpose::VerifyEmail,
        event_id,
    );
    client
        .post(format!("{base}/v1/auth/verify-email"))
        .json(&json!({ "token": token }))
        .send()
        .await?;
    let pair: serde_json::Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let access = pair["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();

    // Login flood with a health probe alongside.
    eprintln!("login flood for {seconds}s ...");
    let probe_stop = CancellationToken::new();
    let probe = tokio::spawn({
        let (client, url, stop) = (
            client.clone(),
            format!("{base}/health/live"),
            probe_stop.clone(),
        );
        async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                let t = Instant::now();
                if client.get(&url).send().await.is_ok() {
                    samples.push(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples
        }
    });
    let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
    let login_url = format!("{base}/v1/auth/login");
    let logins = tokio::task::spawn_blocking(move || {
        wrk(
            &login_url,
            2 * cores as u64 + 2,
            seconds,
            "POST",
            Some(&body),
            None,
        )
    })
    .await??;
    probe_stop.cancel();
    let mut probe_samples = probe.await?;
    let health_p99 = percentile(&mut probe_samples, 0.99);

    eprintln!("GET /v1/auth/me for {seconds}s ...");
    let me_url = format!("{base}/v1/auth/me");
    let token = access.clone();
    let me = tokio::task::spawn_blocking(move || {
        wrk(&me_url, connections, seconds, "GET", None, Some(&token))
    })
    .await??;
    let health_url = format!("{base}/health/live");
    let health = tokio::task::spawn_blocking(move || {
        wrk(&health_url, connections, seconds, "GET", None, None)
    })
    .await??;

    api.stop().await?;

    println!();
    println!(
        "{:<40} {:>12} {:>12} {:>8} {:>18} {:>4}",
        "scenario", "idp", "baseline", "ratio", "target", "met"
    );
    println!("{}", "-".repeat(100));
    let row = |name: &str, v: f64, b: f64, target: &str, met: bool| {
        let ratio = if b > 0.0 && b.is_finite() {
            format!("{:.2}x", v / b)
        } else {
            "-".into()
        };
        println!(
            "{name:<40} {v:>12.1} {b:>12.1} {ratio:>8} {target:>18} {:>4}",
            if met { "yes" } else { "NO" }
        );
    };
    row(
        "login throughput (logins/s) vs ceiling",
        logins.requests_per_sec,
        ceiling,
        ">= 0.85x ceiling",
        logins.requests_per_sec >= 0.85 * ceiling,
    );
    row(
        "login throughput vs argon2 in parallel",
        logins.requests_per_sec,
        parallel_hashes,
        ">= 0.90x parallel",
        logins.requests_per_sec >= 0.90 * parallel_hashes,
    );
    row("login p95 (ms)", logins.p95_ms, f64::NAN, "-", true);
    row(
        "login errors (non-2xx)",
        logins.errors as f64,
        f64::NAN,
        "0",
        logins.errors == 0,
    );
    row(
        "/health/live p99 during flood (ms)",
        health_p99,
        f64::NAN,
        "< 10 ms",
        health_p99 < 10.0,
    );
    row(
        "GET /v1/auth/me (req/s) vs /health/live",
        me.requests_per_sec,
        health.requests_per_sec,
        ">= 5000/s",
        me.requests_per_sec >= 5000.0,
    );
    row(
        "GET /v1/auth/me p50 (ms)",
        me.p50_ms,
        health.p50_ms,
        "-",
        true,
    );
    row(
        "GET /v1/auth/me p99 (ms)",
        me.p99_ms,
        health.p99_ms,
        "<= 10 ms",
        me.p99_ms <= 10.0,
    );
    row(
        "GET /v1/auth/me errors (non-2xx)",
        me.errors as f64,
        health.errors as f64,
        "0",
        me.errors == 0,
    );
    println!();
    println!("argon2id alone with {cores} parallel tasks: {parallel_hashes:.1} hashes/s");
    println!(
        "ceiling: {cores} cores / {:.1} ms per argon2id hash (m=19456 KiB, t=2, p=1) = {ceiling:.1}/s",
        per_hash * 1000.0
    );
    println!(
        "wrk: 2 threads; logins with {} connections, /me and /health/live with {connections}",
        2 * cores + 2
    );
    Ok(())
}
