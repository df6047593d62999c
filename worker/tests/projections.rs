//! The worker process against a real PostgreSQL: a projection killed with SIGKILL mid-batch
//! resumes from its checkpoint, and `idp-worker rebuild` / `verify` work from the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idp_events::subscription::checkpoint;
use idp_events::{Append, Cursor, NewEvent};
use idp_testkit::database::database_url;
use idp_testkit::log::last_committed;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const EVENTS: i64 = 20_000;
const NAME: &str = "event_type_counts";

/// The test's own queue prefix, from its database's name (which may hold characters a prefix
/// may not, and is longer than one may be).
fn queue_prefix(conn: &PgConnectOptions) -> String {
    let database: String = conn
        .get_database()
        .unwrap_or("x")
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!("test-{}", database.trim_start_matches('_'))
        .chars()
        .take(64)
        .collect()
}

fn worker(conn: &PgConnectOptions, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idp-worker"));
    command
        .args(args)
        .env("DATABASE_URL", database_url(conn))
        .env("PERSONAL_DATA_KEYS", idp_testkit::keys::PERSONAL_DATA_KEYS)
        .env("WORKER_ADDR", "127.0.0.1:0")
        // This test's own queues: the dispatcher runs too.
        .env("AMQP_PREFIX", queue_prefix(conn))
        .env("RUST_LOG", "warn");
    command
}

fn spawn_worker(conn: &PgConnectOptions) -> Child {
    let mut command = worker(conn, &[]);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    idp_ops::test_logs::child(&mut command, "idp-worker");
    command.spawn().unwrap()
}

async fn counts(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("select event_type, events from event_type_counts order by event_type")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn expected_counts(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select event_type, count(*) from events group by event_type order by event_type",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_for_checkpoint(pool: &PgPool, target: Cursor) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(pool, NAME).await.unwrap() != target {
        assert!(
            Instant::now() < deadline,
            "the projection did not catch up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_worker_killed_mid_batch_resumes_from_its_checkpoint_and_equals_a_full_replay(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts
        .max_connections(5)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    for call in 0..EVENTS / 100 {
        let kind =
            ["ThingCreated", "ThingRenamed", "ThingDeleted"][usize::try_from(call % 3).unwrap()];
        let events = (0..100).map(|i| NewEvent::new(kind, json!({ "i": i })));
        store
            .append(Append::to(format!("thing-{call}")).events(events))
            .await
            .unwrap();
    }

    // Kill -9 as soon as the first batches are committed, while later ones are in flight.
    let mut child = spawn_worker(&conn);
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(&pool, NAME).await.unwrap().position == 0 {
        assert!(Instant::now() < deadline, "the worker never made progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let at_kill = checkpoint(&pool, NAME).await.unwrap();
    let covered: i64 = sqlx::query_scalar(
        "select count(*) from events where (transaction_id, position) <= (($1::bigint)::text::xid8, $2)",
    )
    .bind(at_kill.transaction_id)
    .bind(at_kill.position)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        covered > 0 && covered < EVENTS,
        "killed part-way: {covered} of {EVENTS}"
    );
    let applied: i64 = counts(&pool).await.iter().map(|c| c.1).sum();
    assert_eq!(
        applied, covered,
        "the read model holds exactly what its checkpoint covers"
    );

    // A new worker resumes and ends equal to a full replay.
    let mut child = spawn_worker(&conn);
    wait_for_checkpoint(&pool, last_committed(&pool).await).await;
    idp_testkit::process::sigterm(&child);
    assert!(
        child.wait().unwrap().success(),
        "the worker stops cleanly on SIGTERM"
    );
    let resumed = counts(&pool).await;
    assert_eq!(resumed, expected_counts(&pool).await);

    // Rebuilding from zero, twice, changes nothing.
    for _ in 0..2 {
        let output = worker(&conn, &["rebuild", NAME]).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&format!("rebuilt {NAME}: {EVENTS} events replayed")),
            "{stdout}"
        );
        assert_eq!(counts(&pool).await, resumed);
    }
    common::harness::delete_queues(&queue_prefix(&conn)).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn rebuild_refuses_an_unknown_projection_and_names_the_known_ones(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let output = worker(&conn, &["rebuild", "nope"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no projection named \"nope\"") && stderr.contains(NAME),
        "{stderr}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn verify_reports_an_intact_log_and_names_an_edited_event(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts
        .max_connections(2)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    store
        .append(
            Append::to("user-1")
                .events((0..3).map(|i| NewEvent::new("Touched", json!({ "i": i })))),
        )
        .await
        .unwrap();
    let output = worker(&conn, &["verify"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("intact: 1 streams, 3 events"), "{stdout}");

    sqlx::raw_sql(
        "set session_replication_role = replica;
         update events set metadata = '{\"actor\": \"mallory\"}' where stream_id = 'user-1' and stream_version = 2;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let output = worker(&conn, &["verify"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("BROKEN: stream user-1 version 2"),
        "{stdout}"
    );
}
