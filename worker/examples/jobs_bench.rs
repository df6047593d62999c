//! Jobs benchmark: `scripts/bench jobs` runs it against a scratch database and the local broker.
//!
//! idp: events are appended to the log, the dispatcher (a subscription) maps each to a job and
//! publishes it with confirms, and an apalis worker consumes the queue and runs a job that does
//! nothing, acknowledging each message: jobs/s from the first append to the last job handled.
//! Baseline, measured in the same run: raw lapin, publishing the same payloads with confirms
//! (all in flight) and consuming them with acks at the same prefetch, first publish to last ack.
//! Alternating rounds; the table shows each side's median.
//!
//! Options (environment): `DATABASE_URL` (wiped: use a scratch database), `AMQP_URL`,
//! `BENCH_JOBS` (jobs per round, default 20,000), `BENCH_ROUNDS` (default 3),
//! `JOB_CONCURRENCY` (prefetch and concurrency, default 64).

#![allow(clippy::print_stdout, clippy::cast_precision_loss, clippy::unwrap_used)]

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::prelude::{Data, Monitor, WorkerBuilder, WorkerBuilderExt};
use clap::Parser;
use futures::StreamExt;
use idp_events::subscription::{HandlerError, Subscription, SubscriptionOptions};
use idp_events::{Append, EventStore, NewEvent, RecordedEvent};
use idp_ops::config::{AmqpUrl, DatabaseUrl};
use idp_worker::broker::{OutgoingJob, Publisher, QueueBackend, Topology};
use idp_worker::config::Config;
use idp_worker::dispatcher::{Dispatcher, Route};
use idp_worker::jobs::JobError;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const QUEUE: &str = "bench";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    job_id: Uuid,
    cause_id: Uuid,
    n: u64,
}

/// `BenchPinged` events become `bench` jobs.
struct PingRoute;

impl Route for PingRoute {
    fn jobs(&self, event: &RecordedEvent) -> Result<Vec<OutgoingJob>, HandlerError> {
        if event.event_type != "BenchPinged" {
            return Ok(Vec::new());
        }
        let ping = Ping {
            job_id: event.event_id,
            cause_id: event.event_id,
            n: event.data["n"].as_u64().unwrap_or_default(),
        };
        Ok(vec![OutgoingJob {
            queue: QUEUE,
            job_id: ping.job_id,
            kind: "bench",
            cause_id: ping.cause_id,
            correlation_id: None,
            body: serde_json::to_vec(&ping)?,
        }])
    }
}

async fn handle_ping(_ping: Ping, handled: Data<Arc<AtomicU64>>) -> Result<(), JobError> {
    handled.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The idp pipeline: the dispatcher and an apalis worker, running until `stop`.
fn start_pipeline(
    store: &EventStore,
    topology: &Topology,
    concurrency: u16,
    handled: Arc<AtomicU64>,
    stop: &CancellationToken,
) {
    let dispatcher = Subscription::new(
        "bench-dispatcher",
        Dispatcher::with_routes(Publisher::new(topology.clone()), vec![Box::new(PingRoute)]),
        store,
    )
    .with_options(SubscriptionOptions {
        batch_size: 1000,
        ..SubscriptionOptions::default()
    });
    let worker_topology = topology.clone();
    let monitor = Monitor::new().register(move |_| {
        WorkerBuilder::new("bench")
            .backend(QueueBackend::<Ping>::new(
                worker_topology.clone(),
                QUEUE,
                concurrency,
            ))
            .concurrency(usize::from(concurrency))
            .data(handled.clone())
            .build(handle_ping)
    });
    let monitor_stop = stop.clone();
    tokio::spawn(async move {
        monitor
            .run_with_signal(async move {
                monitor_stop.cancelled().await;
                Ok(())
            })
            .await
    });
    let dispatcher_stop = stop.clone();
    tokio::spawn(async move { dispatcher.run(dispatcher_stop).await });
}

/// One idp round: appends `jobs` events and waits until every job was handled.
async fn idp_round(
    store: &EventStore,
    handled: &AtomicU64,
    jobs: u64,
    round: u32,
) -> anyhow::Result<f64> {
    let per_call = 100_u64;
    let total = jobs / per_call * per_call;
    let before = handled.load(Ordering::Relaxed);
    let started = Instant::now();
    futures::stream::iter(0..jobs / per_call)
        .map(|call| {
            let store = store.clone();
            async move {
                let events = (0..per_call)
                    .map(|i| NewEvent::new("BenchPinged", json!({ "n": call * per_call + i })));
                store
                    .append(Append::to(format!("bench-{round}-{call}")).events(events))
                    .await
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    while handled.load(Ordering::Relaxed) - before < total {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "jobs stalled at {} of {total}",
            handled.load(Ordering::Relaxed) - before
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// One baseline round: raw lapin, publish with confirms and consume with acks.
async fn raw_round(url: &str, jobs: u64, prefetch: u16) -> anyhow::Result<f64> {
    let queue = format!("bench-raw-{}", Uuid::new_v4().simple());
    let publisher = Connection::connect(url, ConnectionProperties::default()).await?;
    let consumer_conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = publisher.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume_channel = consumer_conn.create_channel().await?;
    consume_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume_channel
        .basic_consume(
            queue.as_str().into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = tokio::spawn(async move {
        let mut seen = 0_u64;
        while seen < jobs {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let _: Ping = serde_json::from_slice(&delivery.data).unwrap();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            seen += 1;
        }
        seen
    });

    let started = Instant::now();
    let mut confirms = Vec::with_capacity(1000);
    for n in 0..jobs {
        let body = serde_json::to_vec(&Ping {
            job_id: Uuid::now_v7(),
            cause_id: Uuid::now_v7(),
            n,
        })?;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        confirms.push(confirm);
        if confirms.len() == 1000 {
            for c in confirms.drain(..) {
                c.await?;
            }
        }
    }
    for c in confirms.drain(..) {
        c.await?;
    }
    let seen = consumed.await?;
    anyhow::ensure!(seen == jobs, "raw consumer saw {seen} of {jobs}");
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(rate)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench".into());
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let jobs = env_u64("BENCH_JOBS", 20_000);
    let rounds = u32::try_from(env_u64("BENCH_ROUNDS", 3)).unwrap_or(3);
    let concurrency = u16::try_from(env_u64("JOB_CONCURRENCY", 64)).unwrap_or(64);

    let options = DatabaseUrl::from_str(&url)
        .map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?
        .options();
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("while connecting to DATABASE_URL")?;
    sqlx::raw_sql("drop schema if exists public cascade; create schema public;")
        .execute(&pool)
        .await?;
    idp_events::migrations::run(&pool).await?;
    let store = idp_testkit::keys::event_store(pool.clone());
    let prefix = format!("bench-{}", Uuid::new_v4().simple());
    let jobs_config = Config::parse_from(["bench", "--amqp-prefix", &prefix]).jobs;
    let amqp_url =
        AmqpUrl::from_str(&amqp).map_err(|e| anyhow::anyhow!("invalid AMQP_URL: {e}"))?;
    let topology = Topology::new(amqp_url, &jobs_config);

    let handled = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    start_pipeline(&store, &topology, concurrency, handled.clone(), &stop);
    tokio::time::sleep(Duration::from_secs(1)).await; // consumers attach

    let mut idp = Vec::new();
    let mut raw = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}: {jobs} jobs through idp ...", round + 1);
        idp.push(idp_round(&store, &handled, jobs, round).await?);
        eprintln!(
            "round {}/{rounds}: {jobs} messages through raw lapin ...",
            round + 1
        );
        raw.push(raw_round(&amqp, jobs, concurrency).await?);
    }
    let (idp, raw) = (median(idp), median(raw));
    stop.cancel();

    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for queue in [
        format!("{prefix}.{QUEUE}"),
        format!("{prefix}.{QUEUE}.dead"),
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }

    println!();
    println!(
        "{:<48} {:>10} {:>10} {:>7} {:>22} {:>4}",
        "scenario", "idp", "raw lapin", "ratio", "target", "met"
    );
    println!("{}", "-".repeat(106));
    let ratio = idp / raw;
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>6.2}x {:>22} {:>4}",
        "jobs/s, event appended -> job handled",
        idp,
        raw,
        ratio,
        ">= 0.5x and >= 5,000/s",
        if ratio >= 0.5 && idp >= 5000.0 {
            "yes"
        } else {
            "NO"
        }
    );
    println!();
    println!(
        "idp: append (100 per call, 8 writers) -> dispatcher -> publish with confirms -> apalis"
    );
    println!(
        "worker (prefetch and concurrency {concurrency}) -> ack. raw lapin: the same payloads"
    );
    println!(
        "published with confirms (1,000 in flight) and consumed with acks, prefetch {concurrency}."
    );
    println!("Medians of {rounds} alternating rounds of {jobs} jobs; quorum queues on both sides.");
    Ok(())
}
