//! Personal-data benchmark: `scripts/bench privacy` runs it against a scratch database.
//!
//! Starts the real API in this process, registers a person and gives them a long history
//! (default 10,000 events: sign-ins with their client details, sealed like every personal
//! value), then times, each next to a baseline measured in the same run:
//!
//! - `GET /v1/account/export` to the last byte; baseline: reading the same streams' stored
//!   JSON with one plain query (no opening, no document);
//! - `DELETE /v1/account`; baseline: the same erasure of a person with a short history.
//!
//! Environment: `DATABASE_URL` (wiped: a scratch database), `BENCH_PERSON_EVENTS` (default
//! 10,000), `BENCH_ROUNDS` (exports timed, default 5; the median is reported).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use idp_api::config::Config;
use idp_api::startup::Application;
use idp_events::identity::login;
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::keys::SecretKeys;
use idp_events::privacy::{KeyEncryptionKeys, SubjectKeys};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, StreamId, Upcasters};
use idp_ops::config::DatabaseUrl;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN_SECRET: &str = "bench-token-secret-0123456789abcdef0123456789";
const KEK: &str = "bench:bench-key-encryption-key-0123456789abcdef";
const PASSWORD: &str = "benchmark passphrase one";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    scenario: String,
    idp_ms: f64,
    baseline_ms: f64,
    target: &'static str,
    met: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench".into());
    let history = env_u64("BENCH_PERSON_EVENTS", 10_000);
    let rounds = env_u64("BENCH_ROUNDS", 5).max(1);
    let db =
        DatabaseUrl::from_str(&url).map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.options())
        .await?;
    sqlx::raw_sql("drop schema if exists public cascade; create schema public;")
        .execute(&pool)
        .await?;

    let keys = std::env::temp_dir().join(format!("idp-bench-keys-{}", Uuid::now_v7()));
    let keys_arg = keys.display().to_string();
    let config = Config::try_parse_from([
        "idp-api",
        "--database-url",
        &url,
        "--api-addr",
        "127.0.0.1:0",
        "--api-internal-addr",
        "127.0.0.1:0",
        "--jwt-keys-dir",
        &keys_arg,
        "--secrets-dir",
        &format!("{keys_arg}/secrets"),
        "--email-token-keys",
        &format!("bench:{TOKEN_SECRET}"),
        "--personal-data-keys",
        KEK,
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
    ])?;
    let app = Application::build(&config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    let client = reqwest::Client::new();
    let ring = SecretKeys::parse("PERSONAL_DATA_KEYS", KEK)?;
    let store = EventStore::with_personal_data(
        pool.clone(),
        Upcasters::default(),
        SubjectKeys::new(pool.clone(), KeyEncryptionKeys::from_ring(&ring)),
    );

    let long = Person::sign_up(&client, &base, &pool, "long.history@example.com").await?;
    let short = Person::sign_up(&client, &base, &pool, "short.history@example.com").await?;
    eprintln!("giving one person a history of {history} events ...");
    let streams = long.lengthen(&store, &pool, history).await?;

    eprintln!("exporting {rounds} times ...");
    let mut exports = Vec::new();
    let mut reads = Vec::new();
    let mut exported_events = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let response = client
            .get(format!("{base}/v1/account/export"))
            .bearer_auth(&long.access)
            .send()
            .await?
            .error_for_status()?;
        let body = response.bytes().await?;
        exports.push(started.elapsed());
        let document: Value = serde_json::from_slice(&body)?;
        exported_events = document["events"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(!body.windows(7).any(|w| w == b"$sealed"), "a sealed value");

        let started = Instant::now();
        let text: Option<String> = sqlx::query_scalar(
            "select string_agg(data::text || metadata::text, ',' order by stream_id, stream_version)
               from events where stream_id = any($1)",
        )
        .bind(&streams)
        .fetch_one(&pool)
        .await?;
        anyhow::ensure!(text.is_some_and(|t| !t.is_empty()), "nothing read");
        reads.push(started.elapsed());
    }
    let export_ms = median(&mut exports);
    let read_ms = median(&mut reads);

    eprintln!("erasing ...");
    let erase_short = short.erase(&client, &base).await?;
    let erase_long = long.erase(&client, &base).await?;

    stop.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&keys);

    let rows = [
        Row {
            scenario: format!("export of a person with {exported_events} events"),
            idp_ms: export_ms,
            baseline_ms: read_ms,
            target: "< 1000 ms",
            met: export_ms < 1000.0,
        },
        Row {
            scenario: format!("erasure of a person with {exported_events} events"),
            idp_ms: erase_long,
            baseline_ms: erase_short,
            target: "< 1000 ms",
            met: erase_long < 1000.0,
        },
    ];
    println!();
    println!(
        "{:<46} {:>10} {:>12} {:>11} {:>4}",
        "scenario", "idp ms", "baseline ms", "target", "met"
    );
    println!("{}", "-".repeat(88));
    for r in &rows {
        println!(
            "{:<46} {:>10.1} {:>12.1} {:>11} {:>4}",
            r.scenario,
            r.idp_ms,
            r.baseline_ms,
            r.target,
            if r.met { "yes" } else { "NO" }
        );
    }
    println!();
    println!("baselines: export = one plain query reading the stored JSON of the same streams;");
    println!("erasure = the same erasure of a person with a short history (a few events).");
    println!("export: median of {rounds} rounds, to the last byte of the document.");
    Ok(())
}

fn median(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// A signed-in person.
struct Person {
    id: Uuid,
    access: String,
}

impl Person {
    /// Registers `email`, verifies it with the token the worker would mail, and signs in.
    async fn sign_up(
        client: &reqwest::Client,
        base: &str,
        pool: &PgPool,
        email: &str,
    ) -> anyhow::Result<Self> {
        client
            .post(format!("{base}/v1/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "display_name": "Bench Person"}))
            .send()
            .await?
            .error_for_status()?;
        let event_id: Uuid = sqlx::query_scalar(
            "select event_id from events where event_type = 'VerificationRequested'
              order by position desc limit 1",
        )
        .fetch_one(pool)
        .await?;
        let token = one_time_token::issue(
            &SecretKeys::single("bench", TOKEN_SECRET.as_bytes()),
            Purpose::VerifyEmail,
            event_id,
        );
        client
            .post(format!("{base}/v1/auth/verify-email"))
            .json(&json!({ "token": token }))
            .send()
            .await?
            .error_for_status()?;
        let pair: Value = client
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let access = pair["access_token"]
            .as_str()
            .context("no access token")?
            .to_owned();
        let me: Value = client
            .get(format!("{base}/v1/auth/me"))
            .bearer_auth(&access)
            .send()
            .await?
            .json()
            .await?;
        let id = me["id"].as_str().context("no id")?.parse()?;
        Ok(Self { id, access })
    }

    /// Adds sign-ins (each with the person's client details) to their sign-in stream until
    /// their streams hold `target` events; the streams.
    async fn lengthen(
        &self,
        store: &EventStore,
        pool: &PgPool,
        target: u64,
    ) -> anyhow::Result<Vec<String>> {
        let streams = vec![
            StreamId::user(self.id).to_string(),
            StreamId::login(self.id).to_string(),
        ];
        let held: i64 = sqlx::query_scalar("select count(*) from events where stream_id = any($1)")
            .bind(&streams)
            .fetch_one(pool)
            .await?;
        let mut missing = target.saturating_sub(u64::try_from(held).unwrap_or_default());
        while missing > 0 {
            let n = missing.min(500);
            let events = (0..n).map(|_| login::succeeded(Uuid::now_v7()));
            store
                .append(
                    Append::to(StreamId::login(self.id))
                        .expecting(ExpectedVersion::Any)
                        .about(self.id)
                        .events(events)
                        .metadata(Metadata {
                            actor: Some(StreamId::user(self.id).to_string()),
                            client_ip: Some("198.51.100.23".into()),
                            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) bench/1".into()),
                            ..Metadata::default()
                        }),
                )
                .await?;
            missing -= n;
        }
        Ok(streams)
    }

    /// Erases the person; how long it took, in ms.
    async fn erase(&self, client: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        client
            .delete(format!("{base}/v1/account"))
            .bearer_auth(&self.access)
            .json(&json!({ "password": PASSWORD }))
            .send()
            .await?
            .error_for_status()?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}
