//! Event log benchmark: `scripts/bench` runs it against a scratch database.
//!
//! Every figure is printed next to a baseline measured in the same run on the same database:
//! plain single-row and 100-row `INSERT`s into a table of the same shape, a plain keyset scan
//! by position, and plain LISTEN/NOTIFY delivery.
//!
//! Arguments: the sections to run, any of `appends`, `batches`, `personal`, `read`, `latency`
//! (default: all). `personal` compares single-event appends whose address, client address and
//! agent are personal fields (sealed under the person's key, metadata under the person's and
//! the day's) with the same appends holding them in the clear, and with plain `INSERT`s.
//!
//! Options (environment): `DATABASE_URL` (it is wiped: use a scratch database), `BENCH_SECONDS`
//! (per round of a throughput scenario; four alternating rounds each, default 5), `BENCH_READ_EVENTS` (log size for the read-all figure,
//! default 1,000,000), `BENCH_LATENCY_SECONDS` (default 10), `BENCH_RATE` (events/s for the
//! latency figure, default 1,000).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use idp_events::privacy::{KeyEncryptionKeys, Personal, SubjectKeys};
use idp_events::subscription::{Handler, HandlerError, Subscription, SubscriptionOptions};
use idp_events::{Append, Cursor, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use idp_ops::config::DatabaseUrl;
use serde_json::json;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Alternating rounds per throughput scenario.
const ROUNDS: u32 = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row3 {
    scenario: String,
    idp: f64,
    baseline: f64,
    unit: &'static str,
    target: String,
    met: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench".into());
    let options = DatabaseUrl::from_str(&url)
        .map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?
        .options();
    let seconds = env_u64("BENCH_SECONDS", 5);
    let read_events = env_u64("BENCH_READ_EVENTS", 1_000_000);
    let latency_seconds = env_u64("BENCH_LATENCY_SECONDS", 10);
    let rate = env_u64("BENCH_RATE", 1_000);
    let sections: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);

    let pool = PgPoolOptions::new()
        .max_connections(48)
        // As the binaries configure their pools (idp_ops::database).
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("while connecting to DATABASE_URL")?;
    reset_schema(&pool).await?;
    let store = EventStore::new(pool.clone());
    let duration = Duration::from_secs(seconds);
    let mut rows = Vec::new();

    for writers in [1_usize, 8, 32].into_iter().filter(|_| wants("appends")) {
        eprintln!("single-event appends, {writers} writers ...");
        // Alternate the two, so checkpoints and autovacuum hit both alike; report the means.
        let (mut idp, mut plain) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            idp += append_single(&store, writers, duration).await? / ROUNDS as f64;
            plain += plain_single(&pool, writers, duration).await? / ROUNDS as f64;
        }
        let target = if writers == 32 { 0.8 } else { 0.0 };
        rows.push(Row3 {
            scenario: format!("append 1 event/call, {writers} writers"),
            idp,
            baseline: plain,
            unit: "events/s",
            target: if target > 0.0 {
                ">= 0.80x".into()
            } else {
                "-".into()
            },
            met: target == 0.0 || idp >= target * plain,
        });
    }
    for writers in [1_usize, 8].into_iter().filter(|_| wants("batches")) {
        eprintln!("100-event appends, {writers} writers ...");
        let (mut idp, mut plain) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            idp += append_batched(&store, writers, duration).await? / ROUNDS as f64;
            plain += plain_batched(&pool, writers, duration).await? / ROUNDS as f64;
        }
        rows.push(Row3 {
            scenario: format!("append 100 events/call, {writers} writers"),
            idp,
            baseline: plain,
            unit: "events/s",
            target: ">= 0.70x".into(),
            met: idp >= 0.7 * plain,
        });
    }

    if wants("personal") {
        let sealing = personal_store(&pool);
        for writers in [1_usize, 8, 32] {
            eprintln!("single-event appends with personal fields, {writers} writers ...");
            let (mut sealed, mut clear, mut plain) = (0.0, 0.0, 0.0);
            for _ in 0..ROUNDS {
                sealed += append_person(&sealing, writers, duration, true).await? / ROUNDS as f64;
                clear += append_person(&store, writers, duration, false).await? / ROUNDS as f64;
                if writers == 32 {
                    plain += plain_single(&pool, writers, duration).await? / ROUNDS as f64;
                }
            }
            rows.push(Row3 {
                scenario: format!("personal vs clear fields, {writers} writers"),
                idp: sealed,
                baseline: clear,
                unit: "events/s",
                target: ">= 0.90x".into(),
                met: sealed >= 0.9 * clear,
            });
            if writers == 32 {
                rows.push(Row3 {
                    scenario: format!("personal vs plain INSERT, {writers} writers"),
                    idp: sealed,
                    baseline: plain,
                    unit: "events/s",
                    target: ">= 0.80x".into(),
                    met: sealed >= 0.8 * plain,
                });
            }
        }
    }

    if wants("read") {
        eprintln!("filling the log to {read_events} events ...");
        fill(&store, read_events).await?;
        eprintln!("reading the whole log ...");
        let (idp_read, n_idp) = read_all(&store).await?;
        let (plain_read, n_plain) = plain_scan(&pool).await?;
        rows.push(Row3 {
            scenario: format!("read all ({n_idp} events; baseline {n_plain})"),
            idp: idp_read,
            baseline: plain_read,
            unit: "events/s",
            target: ">= 200000/s".into(),
            met: idp_read >= 200_000.0,
        });
    }
    if wants("latency") {
        latency(&store, &pool, rate, latency_seconds, &mut rows).await?;
    }
    print_table(&rows);
    Ok(())
}

async fn latency(
    store: &EventStore,
    pool: &PgPool,
    rate: u64,
    latency_seconds: u64,
    rows: &mut Vec<Row3>,
) -> anyhow::Result<()> {
    eprintln!("append-to-subscriber latency at {rate} events/s for {latency_seconds}s ...");
    let (p50, p99) = subscriber_latency(store, rate, Duration::from_secs(latency_seconds)).await?;
    let (b50, b99) = notify_latency(pool, rate, Duration::from_secs(latency_seconds)).await?;
    rows.push(Row3 {
        scenario: format!("append->subscriber p50 @ {rate}/s"),
        idp: p50,
        baseline: b50,
        unit: "ms",
        target: "-".into(),
        met: true,
    });
    rows.push(Row3 {
        scenario: format!("append->subscriber p99 @ {rate}/s"),
        idp: p99,
        baseline: b99,
        unit: "ms",
        target: "<= 20 ms".into(),
        met: p99 <= 20.0,
    });
    Ok(())
}

fn print_table(rows: &[Row3]) {
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>9} {:>7} {:>12} {:>4}",
        "scenario", "idp", "baseline", "unit", "ratio", "target", "met"
    );
    println!("{}", "-".repeat(106));
    for r in rows {
        println!(
            "{:<44} {:>12.1} {:>12.1} {:>9} {:>6.2}x {:>12} {:>4}",
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
            if r.met { "yes" } else { "NO" }
        );
    }
    println!();
    println!(
        "baselines: plain INSERT (1 row per transaction, or 100 rows per statement) into a table of"
    );
    println!(
        "the same shape and indexes; plain keyset scan by position; plain NOTIFY -> LISTEN delivery."
    );
}

async fn reset_schema(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("drop schema if exists public cascade; create schema public;")
        .execute(pool)
        .await
        .context("while wiping the scratch database")?;
    idp_events::migrations::run(pool).await?;
    sqlx::raw_sql(
        // The log's table as it is now: its columns, defaults, identity, constraints and every
        // index (not its triggers, which only refuse UPDATE and DELETE).
        "create table bench_plain (like events including all);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

fn payload(i: u64) -> serde_json::Value {
    json!({ "project": "payments", "step": "database", "attempt": i % 5, "note": "benchmark event payload" })
}

fn metadata_json() -> serde_json::Value {
    json!({ "actor": "bench", "request_id": "00000000-0000-0000-0000-000000000000" })
}

async fn run_writers<F, Fut>(writers: usize, duration: Duration, work: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let work = work.clone();
        tasks.spawn(async move {
            let mut done = 0_u64;
            let mut call = 0_u64;
            while Instant::now() < deadline {
                done += work(w, call).await?;
                call += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        total += joined??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn append_single(
    store: &EventStore,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let run = Uuid::now_v7();
    let store = store.clone();
    run_writers(writers, duration, move |w, call| {
        let store = store.clone();
        async move {
            let expected = if call == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(call)
            };
            store
                .append(
                    Append::to(format!("bench-{run}-{w}"))
                        .expecting(expected)
                        .event(NewEvent::new("BenchEventRecorded", payload(call))),
                )
                .await?;
            Ok(1)
        }
    })
    .await
}

/// A store that seals personal fields, with a benchmark key-encryption key.
fn personal_store(pool: &PgPool) -> EventStore {
    let ring = idp_events::keys::SecretKeys::parse(
        "PERSONAL_DATA_KEYS",
        "bench:benchmark-key-encryption-key-0000000001",
    )
    .unwrap_or_else(|_| unreachable!("a well-formed ring"));
    let keys = SubjectKeys::new(pool.clone(), KeyEncryptionKeys::from_ring(&ring));
    EventStore::with_personal_data(pool.clone(), idp_events::Upcasters::default(), keys)
}

/// Single-event appends about one person per writer, each carrying an address in its data and
/// a client address and agent in its metadata: as personal fields when `personal`, else as
/// plain values in the data (the store then seals nothing).
async fn append_person(
    store: &EventStore,
    writers: usize,
    duration: Duration,
    personal: bool,
) -> anyhow::Result<f64> {
    let run = Uuid::now_v7();
    let people: Arc<Vec<Uuid>> = Arc::new((0..writers).map(|_| Uuid::now_v7()).collect());
    let store = store.clone();
    run_writers(writers, duration, move |w, call| {
        let (store, people) = (store.clone(), Arc::clone(&people));
        async move {
            let person = people[w];
            let expected = if call == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(call)
            };
            let address = format!("person.{w}@example.com");
            let (ip, agent) = ("192.0.2.7", "Mozilla/5.0 (X11; Linux x86_64) bench/1");
            let mut append = Append::to(format!("user-{run}-{w}")).expecting(expected);
            append = if personal {
                let data = json!({ "email": Personal::Known(address), "attempt": call % 5 });
                append
                    .about(person)
                    .event(NewEvent::new("BenchSignedIn", data))
                    .metadata(Metadata {
                        actor: Some(format!("user-{person}")),
                        client_ip: Some(ip.into()),
                        user_agent: Some(agent.into()),
                        ..Metadata::default()
                    })
            } else {
                let data = json!({ "email": address, "attempt": call % 5,
                                   "client_ip": ip, "user_agent": agent });
                append
                    .event(NewEvent::new("BenchSignedIn", data))
                    .metadata(Metadata::actor(format!("user-{person}")))
            };
            store.append(append).await?;
            Ok(1)
        }
    })
    .await
}

async fn append_batched(
    store: &EventStore,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let run = Uuid::now_v7();
    let store = store.clone();
    run_writers(writers, duration, move |w, call| {
        let store = store.clone();
        async move {
            let events = (0..100).map(|i| NewEvent::new("BenchEventRecorded", payload(i)));
            store
                .append(Append::to(format!("batch-{run}-{w}-{call}")).events(events))
                .await?;
            Ok(100)
        }
    })
    .await
}

async fn plain_single(pool: &PgPool, writers: usize, duration: Duration) -> anyhow::Result<f64> {
    let run = Uuid::now_v7();
    let pool = pool.clone();
    run_writers(writers, duration, move |w, call| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "insert into bench_plain (event_id, stream_id, stream_version, event_type, schema_version,
                                          data, metadata, recorded_at, hash)
                 values ($1, $2, $3, $4, 1, $5, $6, now(), $7)",
            )
            .bind(Uuid::now_v7())
            .bind(format!("bench-{run}-{w}"))
            .bind(i64::try_from(call).unwrap_or_default() + 1)
            .bind("BenchEventRecorded")
            .bind(payload(call))
            .bind(metadata_json())
            .bind(vec![7_u8; 32])
            .execute(&pool)
            .await?;
            Ok(1)
        }
    })
    .await
}

async fn plain_batched(pool: &PgPool, writers: usize, duration: Duration) -> anyhow::Result<f64> {
    let run = Uuid::now_v7();
    let pool = pool.clone();
    run_writers(writers, duration, move |w, call| {
        let pool = pool.clone();
        async move {
            let ids: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
            let versions: Vec<i64> = (1..=100).collect();
            let data: Vec<serde_json::Value> = (0..100).map(payload).collect();
            let hashes: Vec<Vec<u8>> = (0..100).map(|_| vec![7_u8; 32]).collect();
            sqlx::query(
                "insert into bench_plain (event_id, stream_id, stream_version, event_type, schema_version,
                                          data, metadata, recorded_at, hash)
                 select id, $2, v, 'BenchEventRecorded', 1, d, $5, now(), h
                   from unnest($1::uuid[], $3::bigint[], $4::jsonb[], $6::bytea[]) as t(id, v, d, h)",
            )
            .bind(ids)
            .bind(format!("batch-{run}-{w}-{call}"))
            .bind(versions)
            .bind(data)
            .bind(metadata_json())
            .bind(hashes)
            .execute(&pool)
            .await?;
            Ok(100)
        }
    })
    .await
}

async fn fill(store: &EventStore, target: u64) -> anyhow::Result<()> {
    let have: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(store.pool())
        .await?;
    let missing = target.saturating_sub(u64::try_from(have).unwrap_or_default());
    let calls = missing.div_ceil(100);
    let writers = 4_u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.spawn(async move {
            let mut call = w;
            while call < calls {
                let events = (0..100).map(|i| NewEvent::new("BenchEventRecorded", payload(i)));
                store
                    .append(Append::to(format!("fill-{w}-{call}")).events(events))
                    .await?;
                call += writers;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    // Copy the log into the baseline table so both scans read the same rows.
    sqlx::raw_sql(
        "truncate bench_plain;
         insert into bench_plain (event_id, stream_id, stream_version, event_type, schema_version,
                                  data, metadata, recorded_at, hash)
         select event_id, stream_id, stream_version, event_type, schema_version, data, metadata,
                recorded_at, hash from events order by position;",
    )
    .execute(store.pool())
    .await?;
    for table in ["vacuum analyze events", "vacuum analyze bench_plain"] {
        sqlx::raw_sql(table).execute(store.pool()).await?;
    }
    Ok(())
}

async fn read_all(store: &EventStore) -> anyhow::Result<(f64, u64)> {
    let start = Instant::now();
    let mut cursor = Cursor::START;
    let mut n = 0_u64;
    loop {
        let batch = store.read_all(cursor, 5_000).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.cursor();
        n += batch.len() as u64;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

async fn plain_scan(pool: &PgPool) -> anyhow::Result<(f64, u64)> {
    let start = Instant::now();
    let mut after = 0_i64;
    let mut n = 0_u64;
    loop {
        let rows = sqlx::query(
            "select position, transaction_id::text::bigint as transaction_id, event_id, stream_id,
                    stream_version, event_type, schema_version, data, metadata, recorded_at, hash
               from bench_plain where position > $1 order by position limit 5000",
        )
        .bind(after)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            after = RecordedEvent::from_row(row)?.position;
        }
        n += rows.len() as u64;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

/// Records, per event id, when the subscriber saw it.
#[derive(Clone, Default)]
struct Stopwatch {
    sent: Arc<Mutex<HashMap<Uuid, Instant>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
}

impl Handler for Stopwatch {
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let seen = Instant::now();
        let sent = self
            .sent
            .lock()
            .map_err(|_| HandlerError::msg("poisoned"))?
            .remove(&event.event_id);
        if let Some(sent) = sent {
            self.latencies
                .lock()
                .map_err(|_| HandlerError::msg("poisoned"))?
                .push(seen - sent);
        }
        Ok(())
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

/// Paces `rate` operations per second over `duration`, spread across 8 tasks.
async fn paced<F, Fut>(rate: u64, duration: Duration, op: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let tasks_n = 8_u64;
    let per_task = Duration::from_secs_f64(tasks_n as f64 / rate as f64);
    let total = rate * duration.as_secs();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..tasks_n {
        let op = op.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + per_task.mul_f64(t as f64 / tasks_n as f64),
                per_task,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = t;
            while i < total {
                tick.tick().await;
                op(i).await?;
                i += tasks_n;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

async fn subscriber_latency(
    store: &EventStore,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let stopwatch = Stopwatch::default();
    let name = format!("bench-latency-{}", Uuid::now_v7());
    // Start at the head so the subscriber does not replay the filled log.
    let head = store.head().await?.unwrap_or_default();
    sqlx::query(
        "insert into subscription_checkpoints (name, transaction_id, position)
         values ($1, ($2::bigint)::text::xid8, $3)",
    )
    .bind(&name)
    .bind(head.transaction_id)
    .bind(head.position)
    .execute(store.pool())
    .await?;
    let sub = Subscription::new(name, stopwatch.clone(), store)
        .with_options(SubscriptionOptions::default());
    let stop = CancellationToken::new();
    let runner = tokio::spawn({
        let stop = stop.clone();
        async move { sub.run(stop).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent = Arc::clone(&stopwatch.sent);
    let store2 = store.clone();
    paced(rate, duration, move |i| {
        let store = store2.clone();
        let sent = Arc::clone(&sent);
        async move {
            let event = NewEvent::new("BenchLatencyProbed", json!({ "i": i }));
            if let Ok(mut map) = sent.lock() {
                map.insert(event.event_id, Instant::now());
            }
            store
                .append(Append::to(format!("latency-{i}")).event(event))
                .await?;
            Ok(())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    runner.await?;
    let samples = std::mem::take(
        &mut *stopwatch
            .latencies
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    Ok(percentiles(samples))
}

async fn notify_latency(
    pool: &PgPool,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("bench_plain").await?;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let stop = CancellationToken::new();
    let receiver = tokio::spawn({
        let (sent, latencies, stop) = (Arc::clone(&sent), Arc::clone(&latencies), stop.clone());
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    note = listener.recv() => {
                        let Ok(note) = note else { break };
                        let seen = Instant::now();
                        if let Ok(i) = note.payload().parse::<u64>()
                            && let Some(at) = sent.lock().ok().and_then(|mut m| m.remove(&i))
                            && let Ok(mut l) = latencies.lock()
                        {
                            l.push(seen - at);
                        }
                    }
                }
            }
        }
    });
    let pool2 = pool.clone();
    let sent2 = Arc::clone(&sent);
    paced(rate, duration, move |i| {
        let pool = pool2.clone();
        let sent = Arc::clone(&sent2);
        async move {
            if let Ok(mut map) = sent.lock() {
                map.insert(i, Instant::now());
            }
            sqlx::query(
                "with ins as (
                   insert into bench_plain (event_id, stream_id, stream_version, event_type, schema_version,
                                            data, metadata, recorded_at, hash)
                   values ($1, $2, 1, 'BenchLatencyProbed', 1, '{}', '{}', now(), $3) returning position)
                 select pg_notify('bench_plain', $4) from ins",
            )
            .bind(Uuid::now_v7())
            .bind(format!("latency-plain-{i}-{}", Uuid::now_v7()))
            .bind(vec![7_u8; 32])
            .bind(i.to_string())
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    receiver.await?;
    let samples = std::mem::take(&mut *latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(percentiles(samples))
}
