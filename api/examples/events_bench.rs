//! Audit query benchmark: `GET /v1/admin/events` and its NDJSON export over a large log.
//!
//! Seeds a log (default 1,000,000 events, in 1,000-event appends over many streams of several
//! categories, with varied types, actors and correlation ids), starts the real API in this
//! process, and measures:
//!
//! - **Filtered pages**: p50/p99 of a page of 100 for each kind of filter (type, types, stream,
//!   category prefix, actor, correlation id, time range, combined), over random pages (random
//!   filter values, random starting points). Baseline: the same SQL run directly on a pool.
//! - **Export**: NDJSON (and CSV) events/s over HTTP for the whole log. Baseline: reading the
//!   same rows with a plain keyset scan by position (5,000 rows per query), without encoding.
//!
//! The `plan` column names the indexes the page query uses (from `EXPLAIN`).
//!
//! Options (environment): `DATABASE_URL` (wiped: use a scratch database such as
//! `postgres://127.0.0.1:5432/idp_bench_events`), `BENCH_EVENTS` (default 1,000,000),
//! `BENCH_PAGES` (random pages per filter, default 200), `BENCH_REUSE=1` (keep a log seeded by an
//! earlier run, if it is large enough), `BENCH_KINDS` (comma-separated scenarios to run, by the
//! start of their names, `export` for the export; default all).

#![allow(
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::str::FromStr;
use std::time::Instant;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use clap::Parser;
use idp_events::query::{EventFilter, StreamPrefix};
use idp_events::{Append, Metadata, NewEvent};
use idp_ops::config::DatabaseUrl;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN_SECRET: &str = "bench-token-secret-0123456789abcdef0123456789";
const ADMIN_EMAIL: &str = "bench-admin@idp.test";
const ADMIN_PASSWORD: &str = "a bench admin password that is long";
const BATCH: usize = 1_000;
const WRITERS: u64 = 4;
const ACTORS: usize = 500;

/// Stream categories: share of the appends, and the event types they hold.
const CATEGORIES: [(&str, u32, &[&str]); 5] = [
    (
        "user",
        30,
        &[
            "UserRegistered",
            "EmailVerified",
            "PasswordChanged",
            "UserLocked",
            "UserUnlocked",
            "RolesChanged",
        ],
    ),
    (
        "session",
        30,
        &["SessionStarted", "SessionRefreshed", "SessionEnded"],
    ),
    (
        "job",
        20,
        &["JobQueued", "EmailSent", "JobFailed", "JobRetryRequested"],
    ),
    (
        "project",
        10,
        &[
            "ProjectRequested",
            "ProvisioningStepStarted",
            "ProvisioningStepSucceeded",
            "ProjectReady",
        ],
    ),
    ("login", 10, &["LoginSucceeded", "LoginFailed"]),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One row of the result table.
struct Row3 {
    scenario: String,
    idp: f64,
    baseline: f64,
    unit: &'static str,
    target: String,
    met: bool,
    plan: String,
}

/// A filter of the query API, as query parameters and as the SQL the handler runs.
#[derive(Debug, Clone, Default)]
struct Filter {
    stream: Option<String>,
    prefix: Option<String>,
    types: Vec<String>,
    actor: Option<String>,
    correlation: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Filter {
    fn query_string(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.stream {
            parts.push(format!("stream={}", enc(s)));
        }
        if let Some(p) = &self.prefix {
            parts.push(format!("stream_prefix={}", enc(p)));
        }
        if !self.types.is_empty() {
            parts.push(format!("type={}", enc(&self.types.join(","))));
        }
        if let Some(a) = &self.actor {
            parts.push(format!("actor={}", enc(a)));
        }
        if let Some(c) = &self.correlation {
            parts.push(format!("correlation_id={c}"));
        }
        if let Some(f) = &self.from {
            parts.push(format!("from={}", enc(&f.to_rfc3339())));
        }
        if let Some(t) = &self.to {
            parts.push(format!("to={}", enc(&t.to_rfc3339())));
        }
        parts.join("&")
    }

    /// The conditions the API writes for this filter: the query engine's own.
    fn push_sql(&self, q: &mut QueryBuilder<'_, Postgres>) {
        EventFilter {
            stream: self.stream.clone(),
            stream_prefix: self.prefix.clone().map(StreamPrefix::new),
            types: self.types.clone(),
            actor: self.actor.clone(),
            correlation_id: self.correlation,
            from: self.from,
            to: self.to,
        }
        .push_conditions(q);
    }

    /// The page query of the handler: after `cursor`, within `first..=last` (the horizon, and
    /// for a time range the positions of its events), 101 rows.
    fn page_sql(
        &self,
        prefix: &str,
        (first, last): (i64, i64),
        cursor: i64,
    ) -> QueryBuilder<'static, Postgres> {
        let mut q = QueryBuilder::new(format!(
            "{prefix} select e.position, e.transaction_id::text::bigint as transaction_id,
                    e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version,
                    e.data, e.metadata, e.recorded_at, e.hash from events e"
        ));
        q.push(" where e.position >= ").push_bind(first);
        q.push(" and e.position <= ").push_bind(last);
        q.push(" and e.position > ").push_bind(cursor);
        self.push_sql(&mut q);
        q.push(" order by e.position limit 101");
        q
    }
}

/// What the random filters are drawn from.
struct Universe {
    actors: Vec<String>,
    max_position: i64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

impl Universe {
    fn random(
        &self,
        kind: &str,
        rng: &mut StdRng,
        streams: &[String],
        correlations: &[Uuid],
    ) -> Filter {
        let (category, _, types) = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
        let pick_type = |rng: &mut StdRng| types[rng.random_range(0..types.len())].to_owned();
        let window = |rng: &mut StdRng| {
            let span = (self.last_at - self.first_at)
                .num_microseconds()
                .unwrap_or(1);
            let width = span / 100;
            let start = rng.random_range(0..(span - width).max(1));
            let from = self.first_at + chrono::Duration::microseconds(start);
            (from, from + chrono::Duration::microseconds(width))
        };
        match kind {
            "type" => Filter {
                types: vec![pick_type(rng)],
                ..Filter::default()
            },
            "types (2)" => {
                let (_, _, other) = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
                Filter {
                    types: vec![
                        pick_type(rng),
                        other[rng.random_range(0..other.len())].to_owned(),
                    ],
                    ..Filter::default()
                }
            }
            "stream" => Filter {
                stream: Some(streams[rng.random_range(0..streams.len())].clone()),
                ..Filter::default()
            },
            "stream prefix" => Filter {
                prefix: Some(format!("{category}-")),
                ..Filter::default()
            },
            "actor" => Filter {
                actor: Some(self.actors[rng.random_range(0..self.actors.len())].clone()),
                ..Filter::default()
            },
            "correlation id" => Filter {
                correlation: Some(correlations[rng.random_range(0..correlations.len())]),
                ..Filter::default()
            },
            "time range (1%)" => {
                let (from, to) = window(rng);
                Filter {
                    from: Some(from),
                    to: Some(to),
                    ..Filter::default()
                }
            }
            _ => {
                let (from, to) = {
                    let span = (self.last_at - self.first_at)
                        .num_microseconds()
                        .unwrap_or(1);
                    let width = span / 4;
                    let start = rng.random_range(0..(span - width).max(1));
                    let from = self.first_at + chrono::Duration::microseconds(start);
                    (from, from + chrono::Duration::microseconds(width))
                };
                Filter {
                    prefix: Some(format!("{category}-")),
                    types: vec![pick_type(rng)],
                    from: Some(from),
                    to: Some(to),
                    ..Filter::default()
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench_events".into());
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let total = env_u64("BENCH_EVENTS", 1_000_000);
    let pages = env_u64("BENCH_PAGES", 200);
    let options = DatabaseUrl::from_str(&url)
        .map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?
        .options();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .context("while connecting to DATABASE_URL")?;
    let have: i64 = sqlx::query_scalar(
        "select coalesce((select count(*) from events), 0) where to_regclass('events') is not null",
    )
    .fetch_optional(&pool)
    .await?
    .unwrap_or(0);
    let seed_secs = if std::env::var("BENCH_REUSE").is_ok_and(|v| v == "1")
        && u64::try_from(have).unwrap_or_default() >= total
    {
        eprintln!("reusing the {have} events already there (BENCH_REUSE=1)");
        idp_events::migrations::run(&pool).await?;
        f64::NAN
    } else {
        sqlx::raw_sql("drop schema if exists public cascade; create schema public;")
            .execute(&pool)
            .await?;
        idp_events::migrations::run(&pool).await?;
        seed(&pool, total).await?
    };
    sqlx::raw_sql("vacuum analyze events")
        .execute(&pool)
        .await?;
    // Filter values to draw from: some streams, correlation ids and actors of the log.
    let streams: Vec<String> = sqlx::query_scalar(
        "select stream_id from events where stream_version = 1 order by random() limit 2000",
    )
    .fetch_all(&pool)
    .await?;
    let correlations: Vec<Uuid> = sqlx::query_scalar(
        "select (metadata->>'correlation_id')::uuid from events
          where stream_version = 1 and metadata ? 'correlation_id' order by random() limit 2000",
    )
    .fetch_all(&pool)
    .await?;
    let actors: Vec<String> = sqlx::query_scalar(
        "select distinct metadata->>'actor' from events where metadata ? 'actor'",
    )
    .fetch_all(&pool)
    .await?;

    // The API, in this process.
    let scratch = std::env::temp_dir().join(format!("idp-bench-events-{}", Uuid::now_v7()));
    let keys = scratch.join("keys").display().to_string();
    let config = idp_api::config::Config::try_parse_from([
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
        // Requests and projects of one benchmark account are not a plan's business here.
        "--plans",
        r#"{"bench":{"requests_per_minute":60000000,"live_projects":100000000,"monthly_spend_cents":100000000000}}"#,
        "--default-plan",
        "bench",
    ])?;
    let api = idp_api::startup::Application::build(&config).await?;
    let base = format!("http://127.0.0.1:{}", api.port());
    let stop = CancellationToken::new();
    let server = tokio::spawn(api.run_until_stopped(stop.clone()));
    let client = reqwest::Client::builder().build()?;
    let login: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    // After the admin's own events: the baseline reads up to the same position as the API.
    let max_position: i64 = sqlx::query_scalar("select max(position) from events")
        .fetch_one(&pool)
        .await?;
    // The seeded events' time span (not the admin's events of this or an earlier run).
    let (first_at, last_at): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "select min(recorded_at), max(recorded_at) from events
          where metadata->>'request_id' like 'seed-%'",
    )
    .fetch_one(&pool)
    .await?;
    let universe = Universe {
        actors,
        max_position,
        first_at,
        last_at,
    };

    let mut rows = Vec::new();
    let mut rng = StdRng::seed_from_u64(42);
    let kinds = [
        "type",
        "types (2)",
        "stream",
        "stream prefix",
        "actor",
        "correlation id",
        "time range (1%)",
        "prefix+type+time (25%)",
    ];
    let only = std::env::var("BENCH_KINDS").unwrap_or_default();
    for kind in kinds {
        if !only.is_empty() && !only.split(',').any(|k| kind.starts_with(k.trim())) {
            continue;
        }
        eprintln!("pages: {kind} ...");
        let mut http = Vec::new();
        let mut sql = Vec::new();
        let mut found = 0_usize;
        let mut plan = String::new();
        for sample in 0..pages {
            let filter = universe.random(kind, &mut rng, &streams, &correlations);
            // A random starting point within the filter's events: the first page half the time.
            let cursor = if sample % 2 == 0 {
                0
            } else {
                let mut bounds = QueryBuilder::new(
                    "select coalesce(min(e.position), 0), coalesce(max(e.position), 0) from events e where true",
                );
                filter.push_sql(&mut bounds);
                let row = bounds.build().persistent(false).fetch_one(&pool).await?;
                let (lo, hi): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                rng.random_range((lo - 1).max(0)..=hi.max(lo))
            };
            let mut url = format!("{base}/v1/admin/events?limit=100&{}", filter.query_string());
            if cursor > 0 {
                url.push_str(&format!(
                    "&cursor={}",
                    URL_SAFE_NO_PAD.encode(format!("f:{cursor}"))
                ));
            }
            let started = Instant::now();
            let response = client.get(&url).bearer_auth(&token).send().await?;
            let status = response.status();
            let page: Value = response.json().await?;
            http.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status.is_success(), "{url}: {status} {page}");
            let items = page["items"].as_array().map(Vec::len).unwrap_or_default();
            found += items;

            // The handler bounds a time range by positions first (sampling, then a BRIN check);
            // the baseline is given the exact bounds for free.
            let extent = if filter.from.is_some() || filter.to.is_some() {
                let mut bounds = QueryBuilder::new(
                    "select coalesce(min(e.position), 0), coalesce(max(e.position), 0) from events e where true",
                );
                let window = Filter {
                    from: filter.from,
                    to: filter.to,
                    ..Filter::default()
                };
                window.push_sql(&mut bounds);
                let row = bounds.build().persistent(false).fetch_one(&pool).await?;
                (
                    row.try_get(0)?,
                    row.try_get::<i64, _>(1)?.min(universe.max_position),
                )
            } else {
                (0, universe.max_position)
            };
            let mut query = filter.page_sql("", extent, cursor);
            let started = Instant::now();
            let direct = query.build().persistent(false).fetch_all(&pool).await?;
            sql.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(
                direct.len().min(100) == items,
                "{url}: {items} items over HTTP, {} directly",
                direct.len()
            );
            if sample == 1 {
                let mut explain = filter.page_sql("explain", extent, cursor);
                let lines: Vec<String> = explain
                    .build_query_scalar::<String>()
                    .persistent(false)
                    .fetch_all(&pool)
                    .await?;
                plan = indexes_used(&lines);
            }
        }
        let p50 = percentile(&http, 50.0);
        let p99 = percentile(&http, 99.0);
        rows.push(Row3 {
            scenario: format!(
                "{kind}: page p50 ({:.0} items)",
                found as f64 / pages as f64
            ),
            idp: p50,
            baseline: percentile(&sql, 50.0),
            unit: "ms",
            target: "-".into(),
            met: true,
            plan: plan.clone(),
        });
        rows.push(Row3 {
            scenario: format!("{kind}: page p99"),
            idp: p99,
            baseline: percentile(&sql, 99.0),
            unit: "ms",
            target: "<= 50 ms".into(),
            met: p99 <= 50.0,
            plan,
        });
    }

    // Export: the whole log over HTTP, against a plain keyset scan of the same rows.
    for format in ["ndjson", "csv"] {
        if !only.is_empty() && !only.split(',').any(|k| k.trim() == "export") {
            continue;
        }
        eprintln!("export: {format} ...");
        let started = Instant::now();
        let mut response = client
            .get(format!("{base}/v1/admin/events/export?format={format}"))
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "export: {}",
            response.status()
        );
        let mut bytes = 0_u64;
        let mut lines = 0_u64;
        while let Some(chunk) = response.chunk().await? {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        // CSV: a header line, and line breaks inside quoted fields (none in this data).
        let events = if format == "csv" { lines - 1 } else { lines };
        anyhow::ensure!(events >= total, "export: {events} events");
        let (scan_events, scan_secs) = keyset_scan(&pool).await?;
        let rate = events as f64 / secs;
        rows.push(Row3 {
            scenario: format!(
                "export {format} ({events} events, {:.0} MiB)",
                bytes as f64 / 1_048_576.0
            ),
            idp: rate,
            baseline: scan_events as f64 / scan_secs,
            unit: "events/s",
            target: if format == "ndjson" {
                ">= 100000/s".into()
            } else {
                "-".into()
            },
            met: format != "ndjson" || rate >= 100_000.0,
            plan: "events_pkey".into(),
        });
    }
    print_table(&rows, total, seed_secs);
    stop.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Appends `total` events in 1,000-event appends from several writers; the seconds it took.
async fn seed(pool: &PgPool, total: u64) -> anyhow::Result<f64> {
    let store = idp_testkit::keys::event_store(pool.clone());
    let actors: Vec<String> = (0..ACTORS)
        .map(|i| match i {
            0 => "system".to_owned(),
            1 => "worker".to_owned(),
            _ => format!("user-{}", Uuid::now_v7()),
        })
        .collect();
    let appends = total.div_ceil(BATCH as u64);
    eprintln!("seeding {total} events in {appends} appends of {BATCH} ...");
    let seeded = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let actors = actors.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(w);
            let mut call = w;
            while call < appends {
                let roll = rng.random_range(0..100);
                let mut acc = 0;
                let (category, _, types) = CATEGORIES
                    .iter()
                    .find(|(_, share, _)| {
                        acc += share;
                        roll < acc
                    })
                    .copied()
                    .unwrap_or(CATEGORIES[0]);
                let events: Vec<NewEvent> = (0..BATCH)
                    .map(|i| {
                        NewEvent::new(
                            types[rng.random_range(0..types.len())],
                            json!({
                                "seq": i,
                                "email": format!("someone{}@example.com", rng.random_range(0..100_000)),
                                "note": "a payload of a typical size for an identity or project event",
                                "attempt": rng.random_range(1..5),
                            }),
                        )
                    })
                    .collect();
                let metadata = Metadata {
                    actor: Some(actors[rng.random_range(0..actors.len())].clone()),
                    correlation_id: Some(Uuid::now_v7()),
                    request_id: Some(format!("seed-{}", Uuid::now_v7())),
                    client_ip: Some("10.0.0.7".into()),
                    ..Metadata::default()
                };
                store
                    .append(
                        Append::to(format!("{category}-{}", Uuid::now_v7()))
                            .events(events)
                            .metadata(metadata),
                    )
                    .await?;
                call += WRITERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let secs = seeded.elapsed().as_secs_f64();
    eprintln!(
        "seeded in {secs:.1} s ({:.0} events/s)",
        total as f64 / secs
    );
    Ok(secs)
}

/// A plain keyset scan by position of the columns the export reads, 5,000 rows per query.
async fn keyset_scan(pool: &PgPool) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut after = 0_i64;
    let mut events = 0_u64;
    loop {
        let rows = sqlx::query(
            "select position, event_id, stream_id, stream_version, event_type, schema_version,
                    data::text, metadata::text, recorded_at, hash
               from events where position > $1 order by position limit 5000",
        )
        .bind(after)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0)?;
        events += rows.len() as u64;
    }
    Ok((events, started.elapsed().as_secs_f64()))
}

/// The index names in an `EXPLAIN` output, in order of appearance.
fn indexes_used(lines: &[String]) -> String {
    let mut names: Vec<String> = Vec::new();
    for line in lines {
        for marker in [" using ", " on "] {
            if let Some(at) = line.find(marker)
                && (line.contains("Index Scan")
                    || line.contains("Index Only Scan")
                    || line.contains("Bitmap Index Scan"))
            {
                let name: String = line[at + marker.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if name.ends_with("_idx") || name.ends_with("_pkey") || name.ends_with("_key") {
                    let short = if line.contains("Bitmap") {
                        format!("{name}(bitmap)")
                    } else {
                        name
                    };
                    if !names.contains(&short) {
                        names.push(short);
                    }
                }
            }
        }
        if line.contains("Seq Scan") {
            names.push("SEQ SCAN".into());
        }
        if line.trim_start().starts_with("-> Sort") || line.trim_start().starts_with("Sort") {
            names.push("sort".into());
        }
    }
    names.join(" + ")
}

fn print_table(rows: &[Row3], total: u64, seed_secs: f64) {
    println!();
    if seed_secs.is_nan() {
        println!("events query and export over a log of {total} events (reused)");
    } else {
        println!(
            "events query and export over a log of {total} events (seeded in {seed_secs:.0} s, {:.0} events/s)",
            total as f64 / seed_secs
        );
    }
    println!(
        "{:<42} {:>11} {:>11} {:>9} {:>7} {:>12} {:>4}  plan",
        "scenario", "idp", "baseline", "unit", "ratio", "target", "met"
    );
    println!("{}", "-".repeat(140));
    for r in rows {
        println!(
            "{:<42} {:>11.1} {:>11.1} {:>9} {:>6.2}x {:>12} {:>4}  {}",
            r.scenario,
            r.idp,
            r.baseline,
            r.unit,
            if r.baseline > 0.0 {
                r.idp / r.baseline
            } else {
                0.0
            },
            r.target,
            if r.met { "yes" } else { "NO" },
            r.plan
        );
    }
    println!();
    println!(
        "pages: HTTP GET /v1/admin/events?limit=100 with a random filter value and start, one client;"
    );
    println!(
        "baseline: the handler's page query run directly on a pool (no auth, no horizon, no JSON;"
    );
    println!("a time range gets the exact position bounds of its events for free).");
    println!(
        "export: the whole log over HTTP; baseline: plain keyset scan of the same columns, 5,000 rows a query."
    );
}
