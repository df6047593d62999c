//! Projects benchmark: `scripts/bench projects` runs it against a scratch database (wiped) and
//! the local broker, with the API and the worker in this process and a local webhook receiver.
//!
//! - **Request to ready**: projects of a template whose only step is a webhook to a local server
//!   that answers at once, requested at a steady rate (default 50/s for 10 s); latency from the
//!   `ProjectRequested` event to the `ProjectReady` event (both timestamps from the database's
//!   clock). Baseline: the webhook's own round trip, posted directly at the same rate.
//! - **Requests**: `POST /v1/projects` at a steady rate (default 500/s for 10 s), open loop
//!   (each request leaves on schedule, whatever the previous ones do); latency and errors, first
//!   with the API alone (the worker starts afterwards and provisions the backlog), then again
//!   while the worker provisions the projects as they come, on the same two cores. Baseline:
//!   `GET /health/live` at the same rate, the HTTP floor of this machine.
//!
//! Options (environment): `DATABASE_URL` (wiped: use a scratch database), `AMQP_URL`,
//! `BENCH_SECONDS` (per scenario, default 10), `BENCH_POST_RATE` (default 500),
//! `BENCH_READY_RATE` (default 50).

#![allow(
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use idp_ops::config::DatabaseUrl;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN_SECRET: &str = "bench-token-secret-0123456789abcdef0123456789";
const ADMIN_EMAIL: &str = "bench-admin@idp.test";
const ADMIN_PASSWORD: &str = "a bench admin password that is long";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies (ms) and failures of one open-loop run.
#[derive(Debug, Default)]
struct Run {
    latencies: Vec<f64>,
    errors: u64,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }
}

/// Sends `make(n)` at `rate` per second for `seconds`, open loop.
async fn open_loop<F, Fut>(rate: u64, seconds: u64, make: F) -> Run
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let run = Arc::new(Mutex::new(Run::default()));
    let total = rate * seconds;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        tokio::time::sleep_until(started + period * u32::try_from(n).unwrap()).await;
        let request = make(n);
        let run = run.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let ok = request.await;
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            let mut run = run.lock().await;
            run.latencies.push(ms);
            if !ok {
                run.errors += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(run).unwrap().into_inner()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench_projects".into());
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let seconds = env_u64("BENCH_SECONDS", 10);
    let post_rate = env_u64("BENCH_POST_RATE", 500);
    let ready_rate = env_u64("BENCH_READY_RATE", 50);

    let options = DatabaseUrl::from_str(&url)
        .map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?
        .options();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .context("while connecting to DATABASE_URL")?;
    sqlx::raw_sql("drop schema if exists public cascade; create schema public;")
        .execute(&pool)
        .await?;

    // A template whose one step is a webhook, and a receiver that answers at once.
    let scratch = std::env::temp_dir().join(format!("idp-bench-projects-{}", Uuid::now_v7()));
    let templates = scratch.join("templates");
    std::fs::create_dir_all(&templates)?;
    std::fs::write(
        templates.join("instant.json"),
        json!({
            "name": "instant", "version": 1, "description": "One webhook.",
            "steps": [{"name": "webhook", "driver": "webhook"}]
        })
        .to_string(),
    )?;
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", hook.local_addr()?);
    tokio::spawn(async move {
        let app = Router::new().route("/hook", post(|| async { StatusCode::OK }));
        let _ = axum::serve(hook, app).await;
    });

    let keys = scratch.join("keys").display().to_string();
    let templates_dir = templates.display().to_string();
    let api_config = idp_api::config::Config::try_parse_from([
        "idp-api",
        "--database-url",
        &url,
        "--amqp-url",
        &amqp,
        "--api-addr",
        "127.0.0.1:0",
        "--api-internal-addr",
        "127.0.0.1:0",
        "--jwt-keys-dir",
        &keys,
        "--email-token-keys",
        &format!("bench:{TOKEN_SECRET}"),
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
        "--project-templates-dir",
        &templates_dir,
        // Requests and projects of one benchmark account are not a plan's business here.
        "--plans",
        r#"{"bench":{"requests_per_minute":60000000,"live_projects":100000000,"monthly_spend_cents":100000000000}}"#,
        "--default-plan",
        "bench",
    ])?;
    let api = idp_api::startup::Application::build(&api_config).await?;
    let base = format!("http://127.0.0.1:{}", api.port());
    let stop = CancellationToken::new();
    tokio::spawn(api.run_until_stopped(stop.clone()));

    let prefix = format!("bench-{}", Uuid::new_v4().simple());
    let repos = scratch.join("repos").display().to_string();
    let outbox = scratch.join("mail").display().to_string();
    let seal_keys = scratch.join("seal-keys").display().to_string();
    let worker_config = idp_worker::config::Config::try_parse_from([
        "idp-worker",
        "--database-url",
        &url,
        "--amqp-url",
        &amqp,
        "--worker-addr",
        "127.0.0.1:0",
        "--amqp-prefix",
        &prefix,
        "--email-token-keys",
        &format!("bench:{TOKEN_SECRET}"),
        "--project-templates-dir",
        &templates_dir,
        "--provision-webhook-url",
        &hook_url,
        "--provision-repo-root",
        &repos,
        "--email-outbox-dir",
        &outbox,
        "--seal-keys-dir",
        &seal_keys,
    ])?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let login: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .context("the benchmark administrator could not sign in")?
        .to_owned();

    let request = |name: String| {
        let client = client.clone();
        let token = token.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/v1/projects"))
                .bearer_auth(token)
                .json(&json!({ "name": name, "template": "instant" }))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::ACCEPTED)
        }
    };

    // Requests, the API alone: the worker is not running yet.
    eprintln!("POST /v1/projects, API alone: {post_rate}/s for {seconds} s ...");
    let posts_alone = open_loop(post_rate, seconds, |n| request(format!("alone-{n}"))).await;
    eprintln!("GET /health/live: {post_rate}/s for {seconds} s ...");
    let live = {
        let client = client.clone();
        let base = base.clone();
        open_loop(post_rate, seconds, move |_| {
            let client = client.clone();
            let url = format!("{base}/health/live");
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    };

    // The worker provisions that backlog, then everything below runs with it.
    let worker = idp_worker::startup::Worker::build(&worker_config).await?;
    tokio::spawn(worker.run_until_stopped(stop.clone()));
    eprintln!("worker provisioning the backlog ...");
    let mut requested = post_rate * seconds - posts_alone.errors;
    wait_ready(&pool, requested).await?;

    eprintln!(
        "POST /v1/projects with the worker provisioning them: {post_rate}/s for {seconds} s ..."
    );
    let posts_busy = open_loop(post_rate, seconds, |n| request(format!("busy-{n}"))).await;
    requested += post_rate * seconds - posts_busy.errors;
    wait_ready(&pool, requested).await?;

    // Request to ready.
    eprintln!("request to ready: {ready_rate} projects/s for {seconds} s ...");
    let ready_requests = open_loop(ready_rate, seconds, |n| request(format!("ready-{n}"))).await;
    requested += ready_rate * seconds - ready_requests.errors;
    wait_ready(&pool, requested).await?;
    let to_ready: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from (r.recorded_at - q.recorded_at))::float8 * 1000
           from events q join events r on r.stream_id = q.stream_id
          where q.event_type = 'ProjectRequested' and r.event_type = 'ProjectReady'
            and q.data->>'name' like 'ready-%'",
    )
    .fetch_all(&pool)
    .await?;
    let to_ready = Run {
        latencies: to_ready,
        errors: ready_requests.errors,
    };
    let hook_only = {
        let client = client.clone();
        let hook_url = hook_url.clone();
        open_loop(ready_rate, seconds, move |_| {
            let client = client.clone();
            let url = hook_url.clone();
            async move {
                client
                    .post(url)
                    .json(&json!({"event": "project.provisioned"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    };

    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::fs::remove_dir_all(&scratch);
    delete_queues(&amqp, &prefix).await;

    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>7} {:>22} {:>9} {:>9} {:>4}",
        "scenario", "p50 ms", "p99 ms", "errors", "target", "base p50", "base p99", "met"
    );
    println!("{}", "-".repeat(122));
    let row = |name: &str, run: &Run, base: &Run, target: &str, met: Option<bool>| {
        println!(
            "{:<44} {:>9.1} {:>9.1} {:>7} {:>22} {:>9.1} {:>9.1} {:>4}",
            name,
            run.percentile(50.0),
            run.percentile(99.0),
            run.errors,
            target,
            base.percentile(50.0),
            base.percentile(99.0),
            match met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    };
    row(
        &format!("request -> ready at {ready_rate}/s"),
        &to_ready,
        &hook_only,
        "p50 <= 100, p99 <= 500",
        Some(to_ready.percentile(50.0) <= 100.0 && to_ready.percentile(99.0) <= 500.0),
    );
    row(
        &format!("POST /v1/projects at {post_rate}/s, API alone"),
        &posts_alone,
        &live,
        "p99 <= 25, 0 errors",
        Some(posts_alone.percentile(99.0) <= 25.0 && posts_alone.errors == 0),
    );
    row(
        &format!("POST /v1/projects at {post_rate}/s, worker busy"),
        &posts_busy,
        &live,
        "-",
        None,
    );
    println!();
    println!("request -> ready: ProjectRequested to ProjectReady in the log, for projects of a");
    println!("template whose one step is a webhook to a local server; baseline: that webhook");
    println!("posted directly at the same rate. POST: open loop, latency from send to answer;");
    println!("baseline: GET /health/live at the same rate. API, worker, client, PostgreSQL and");
    println!("RabbitMQ share 2 cores.");
    Ok(())
}

/// Waits until `expected` projects are ready.
async fn wait_ready(pool: &sqlx::PgPool, expected: u64) -> anyhow::Result<()> {
    let expected = i64::try_from(expected)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready: i64 =
            sqlx::query_scalar("select count(*) from events where event_type = 'ProjectReady'")
                .fetch_one(pool)
                .await?;
        if ready >= expected {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {ready} of {expected} projects ready after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn delete_queues(amqp: &str, prefix: &str) {
    let Ok(conn) = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        for queue in ["email", "email.dead", "provision", "provision.dead"] {
            let _ = channel
                .queue_delete(
                    format!("{prefix}.{queue}").as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
    }
}
