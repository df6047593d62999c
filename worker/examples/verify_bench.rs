//! Verification benchmark: how fast `idp-worker verify` (and `GET /v1/admin/audit/verify`)
//! rechecks a large log.
//!
//! Wipes the database of `DATABASE_URL` (default `idp_bench_verify` on the local server; its
//! name must contain `bench`), seeds a log (default 1,000,000 events, transactions of 1,000
//! events over many streams of varied length, realistic payloads), seals it, then times the
//! full verification (every stream chain and every seal) against a baseline measured in the
//! same run: reading the same rows with a plain keyset scan in the same batch size, hashing
//! nothing. Rounds alternate the two; the means are reported. Seeding is not measured.
//!
//! `nice -n 10 cargo run --release -p idp-worker --example verify_bench [-- --events N]`

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use idp_events::seal::{self, PublicKeys, SealSigner, VerifyOptions};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, NewEvent};
use idp_ops::config::DatabaseUrl;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

/// Events per seeding transaction.
const SEED_TRANSACTION: u64 = 1_000;

/// Seeding transactions running at once.
const SEEDERS: u64 = 4;

#[derive(Debug, Parser)]
#[command(about = "Throughput of log verification (stream chains and seals)")]
struct Args {
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Alternating rounds of verify and baseline (means are reported).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Events per batch read (verify and baseline alike).
    #[arg(long, default_value_t = seal::DEFAULT_BATCH_SIZE)]
    batch: i64,
    /// Most events per seal.
    #[arg(long, default_value_t = seal::DEFAULT_MAX_EVENTS)]
    seal_max_events: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench_verify".into());
    let options = DatabaseUrl::from_str(&url)
        .map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?
        .options();
    let name = options.get_database().unwrap_or_default().to_owned();
    if !name.contains("bench") {
        bail!("refusing to wipe database {name:?}: its name must contain \"bench\"");
    }
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .with_context(|| format!("while connecting to {name}"))?;
    sqlx::raw_sql("drop schema public cascade; create schema public;")
        .execute(&pool)
        .await
        .context("while wiping the benchmark database")?;
    idp_events::migrations::run(&pool).await?;

    eprintln!("seeding {} events ...", args.events);
    let started = Instant::now();
    let seeded = seed(&pool, args.events).await?;
    eprintln!(
        "seeded {seeded} events in {:.0}s; vacuum analyze ...",
        started.elapsed().as_secs_f64()
    );
    sqlx::raw_sql("vacuum analyze events")
        .execute(&pool)
        .await?;

    let signer = SealSigner::generate("bench")?;
    let mut keys = PublicKeys::default();
    keys.insert(signer.key_id(), signer.verifying_key());
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let seals = seal::seal_pending(&mut conn, &signer, args.seal_max_events).await?;
    drop(conn);
    let seal_secs = started.elapsed().as_secs_f64();
    let sealed: i64 = seals.iter().map(|s| s.fields.event_count).sum();
    ensure!(
        u64::try_from(sealed)? == seeded,
        "sealed {sealed} of {seeded} events"
    );
    eprintln!("sealed into {} seals in {seal_secs:.1}s", seals.len());

    let options = VerifyOptions {
        batch_size: args.batch,
        ..VerifyOptions::default()
    };
    let (mut verify_secs, mut baseline_secs) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let started = Instant::now();
        let rows = baseline(&pool, args.batch).await?;
        baseline_secs.push(started.elapsed().as_secs_f64());
        ensure!(rows == seeded, "the baseline read {rows} of {seeded} rows");

        let report = seal::verify_log(&pool, &keys, &options).await?;
        ensure!(report.is_intact(), "the seeded log failed: {report:?}");
        ensure!(
            report.events == seeded && report.sealed_events == seeded && report.unsealed == 0,
            "verify saw {} events, {} sealed, {} unsealed",
            report.events,
            report.sealed_events,
            report.unsealed
        );
        verify_secs.push(report.duration.as_secs_f64());
        eprintln!(
            "round {round}: verify {:.1}s ({} streams, {} seals), baseline {:.1}s",
            report.duration.as_secs_f64(),
            report.streams,
            report.seals,
            baseline_secs.last().copied().unwrap_or_default()
        );
    }
    pool.close().await;

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (verify, base) = (mean(&verify_secs), mean(&baseline_secs));
    let n = seeded as f64;
    let million_secs = verify * 1_000_000.0 / n;
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>9} {:>7} {:>14} {:>4}",
        "scenario", "idp", "baseline", "unit", "ratio", "target", "met"
    );
    println!("{}", "-".repeat(108));
    let line = |scenario: &str, idp: f64, baseline: f64, unit: &str, target: &str, met: bool| {
        println!(
            "{scenario:<44} {idp:>12.1} {baseline:>12.1} {unit:>9} {:>6.2}x {target:>14} {:>4}",
            if baseline > 0.0 { idp / baseline } else { 0.0 },
            if met { "yes" } else { "NO" }
        );
    };
    line(
        &format!("verify {seeded} events (chains + seals)"),
        verify,
        base,
        "s",
        "< 60 s per 1M",
        million_secs < 60.0,
    );
    line(
        "verify throughput",
        n / verify,
        n / base,
        "events/s",
        ">= 50000",
        n / verify >= 50_000.0,
    );
    line(
        &format!("seal {seeded} events ({} seals)", seals.len()),
        n / seal_secs,
        0.0,
        "events/s",
        "-",
        true,
    );
    println!();
    println!(
        "baseline: the same rows read with a plain keyset scan in stream order, batches of {}, \
         nothing decoded or hashed;",
        args.batch
    );
    println!(
        "verify: every stream chain recomputed and every seal checked (link, hash, signature, \
         and the events in its range), means of {} rounds.",
        args.rounds
    );
    Ok(())
}

/// Reads every event row in stream order in keyset batches, decoding nothing: the floor of
/// what verification reads.
async fn baseline(pool: &PgPool, batch: i64) -> anyhow::Result<u64> {
    let mut after = (String::new(), 0_i64);
    let mut rows = 0_u64;
    loop {
        let page = sqlx::query(
            "select position, event_id, stream_id, stream_version, event_type, schema_version,
                    data, metadata, recorded_at, hash
               from events
              where (stream_id, stream_version) > ($1, $2)
              order by stream_id, stream_version
              limit $3",
        )
        .bind(&after.0)
        .bind(after.1)
        .bind(batch)
        .fetch_all(pool)
        .await?;
        rows += page.len() as u64;
        match page.last() {
            Some(last) if i64::try_from(page.len())? == batch => {
                after = (last.try_get(2)?, last.try_get(3)?);
            }
            _ => return Ok(rows),
        }
    }
}

/// A tiny deterministic generator (splitmix64), so every run seeds the same log.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TYPES: [&str; 6] = [
    "UserRegistered",
    "EmailVerified",
    "LoginSucceeded",
    "PasswordChanged",
    "RolesChanged",
    "ProjectRequested",
];

/// Seeds `total` events through the event store: transactions of 1,000 events, each made of
/// appends of 1 to 20 events to new streams or to streams the seeder wrote before.
async fn seed(pool: &PgPool, total: u64) -> anyhow::Result<u64> {
    let transactions = total.div_ceil(SEED_TRANSACTION);
    let per_seeder = transactions.div_ceil(SEEDERS);
    let store = idp_testkit::keys::event_store(pool.clone());
    let counts: Vec<u64> = futures::stream::iter(0..SEEDERS)
        .map(|seeder| {
            let store = store.clone();
            async move {
                let first = seeder * per_seeder;
                let last = ((seeder + 1) * per_seeder).min(transactions);
                seed_range(&store, seeder, first..last, total).await
            }
        })
        .buffer_unordered(usize::try_from(SEEDERS)?)
        .try_collect()
        .await?;
    Ok(counts.iter().sum())
}

async fn seed_range(
    store: &EventStore,
    seeder: u64,
    transactions: std::ops::Range<u64>,
    total: u64,
) -> anyhow::Result<u64> {
    let mut dice = Dice(seeder + 1);
    // Streams this seeder wrote, with their versions; a window of recent ones gets more.
    let mut streams: Vec<(String, u64)> = Vec::new();
    let mut written = 0_u64;
    let started = Instant::now();
    for transaction in transactions {
        let size = SEED_TRANSACTION.min(total.saturating_sub(transaction * SEED_TRANSACTION));
        let mut tx = store.pool().begin().await?;
        let mut in_tx = 0;
        while in_tx < size {
            let n = (1 + dice.below(20)).min(size - in_tx);
            let pick = if streams.is_empty() || dice.below(3) == 0 {
                let id = Uuid::from_u64_pair(dice.next(), dice.next());
                streams.push((format!("user-{id}"), 0));
                streams.len() - 1
            } else {
                let window = streams.len().min(2_000) as u64;
                streams.len() - 1 - usize::try_from(dice.below(window))?
            };
            let (stream, version) = &mut streams[pick];
            let expected = match *version {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v),
            };
            let base = *version;
            let events: Vec<NewEvent> = (0..n)
                .map(|i| {
                    let k = dice.next();
                    NewEvent::new(
                        TYPES[usize::try_from(k % 6).unwrap_or_default()],
                        json!({
                            "email": format!("person{}@example.com", k % 100_000),
                            "display_name": format!("Person {}", k % 100_000),
                            "roles": ["user"],
                            "attempt": base + i + 1,
                            "detail": { "reason": "seeded", "score": k % 1000, "flag": k.is_multiple_of(2) },
                        }),
                    )
                })
                .collect();
            let metadata = Metadata {
                actor: Some(format!("user-{}", Uuid::from_u64_pair(seeder, dice.next()))),
                request_id: Some(Uuid::from_u64_pair(dice.next(), seeder).to_string()),
                correlation_id: Some(Uuid::from_u64_pair(dice.next(), dice.next())),
                causation_id: None,
                client_ip: Some(format!("10.0.{}.{}", dice.below(256), dice.below(256)).into()),
                user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) idp-bench/1.0".into()),
                api_key_id: None,
            };
            store
                .append_in(
                    &mut tx,
                    Append::to(stream.as_str())
                        .expecting(expected)
                        .events(events)
                        .metadata(metadata),
                )
                .await?;
            *version += n;
            in_tx += n;
        }
        tx.commit().await?;
        written += size;
        if seeder == 0 && transaction.is_multiple_of(50) && transaction > 0 {
            let rate = written as f64 / started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "  seeder 0: {written} events ({:.0} events/s per seeder)",
                rate
            );
        }
    }
    Ok(written)
}
