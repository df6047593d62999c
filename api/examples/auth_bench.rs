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

use std::time::{Duration, Instant};

use idp_api::auth::password::{HashParams, Hasher};
use tokio_util::sync::CancellationToken;

mod support;

use support::{BenchApi, PASSWORD, env_u64, percentile, wrk};

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
    let access = support::signed_in(&pool, &client, &base, email).await?;

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
