//! RabbitMQ restarted under load: publishers and consumers reconnect and nothing is lost.
//!
//! This restarts the broker of the whole machine (`rabbitmqctl stop_app` / `start_app`), so the
//! test runner runs it alone (see `.config/nextest.toml`); `cargo test` runs each test binary on
//! its own anyway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::harness::{self, register_user, start_worker};
use idp_testkit::broker::unique_prefix;
use idp_testkit::clock::wait_until;
use idp_testkit::log::count_events;
use idp_testkit::smtp::SmtpSink;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const USERS: usize = 1200;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs (the test restarts the local broker)");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rabbitmq_restart_under_load_loses_no_job_and_repeats_no_email(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let pool = opts
        .max_connections(8)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let worker = start_worker(&conn, &prefix, Some(&sink.url()), &[]).await;

    // A steady stream of registrations while the broker goes away and comes back.
    let writer_store = store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..USERS {
            register_user(&writer_store, &format!("user{i}@example.com")).await;
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    wait_until("emails flowing", Duration::from_secs(60), || async {
        sink.stats().await.accepted >= 100
    })
    .await;
    rabbitmqctl(&["stop_app"]);
    let during_outage = count_events(&pool, "UserRegistered").await;
    // The API side keeps accepting: events are in the log while the broker is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(count_events(&pool, "UserRegistered").await > during_outage);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    writer.await.unwrap();
    let total = i64::try_from(USERS).unwrap();
    wait_until(
        "every email sent after the restart",
        Duration::from_secs(180),
        || async { count_events(&pool, "EmailSent").await >= total },
    )
    .await;
    worker.stop().await;

    assert_eq!(count_events(&pool, "EmailSent").await, total);
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for mail in sink.messages().await {
        *by_id.entry(mail.message_id).or_default() += 1;
    }
    if by_id.len() != USERS {
        let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
            "select stream_id, event_type, data from events where stream_id like 'job-%' order by position",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for (stream, kind, data) in rows {
            let mid = data["message_id"].as_str().unwrap_or_default();
            if !by_id.contains_key(&format!("<{mid}>")) {
                eprintln!("MISSING {stream} {kind} {data}");
            }
        }
    }
    assert_eq!(by_id.len(), USERS, "every email arrived");
    let repeated: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
    harness::delete_queues(&prefix).await;
}
