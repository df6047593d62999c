//! Fault drills of the worker: RabbitMQ unreachable while the API takes registrations, the
//! database unreachable while events keep coming, and SIGTERM with jobs in flight. Every drill
//! ends with the same judgement: each verification email asked for was sent exactly once
//! (counted by `Message-ID` at a real SMTP server), and nothing was dead-lettered.
//!
//! The outages happen on a proxy between this test's processes and the machine's servers
//! (`idp_testkit::proxy`), so they touch no other test. `scripts/drills` runs the same drills
//! against the real servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::harness::{self, register_user, spawn_worker_process};
use idp_events::jobs;
use idp_testkit::broker::{amqp_proxy, amqp_url, amqp_url_via, unique_prefix};
use idp_testkit::clock::wait_until;
use idp_testkit::database::database_url;
use idp_testkit::log::count_events;
use idp_testkit::proxy::Proxy;
use idp_testkit::server::Running;
use idp_testkit::settings::{api_args, worker_args};
use idp_testkit::smtp::SmtpSink;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A process under test: the API or the worker, running in this process.
struct Served {
    port: u16,
    /// The API's internal listener (the worker serves everything on `port`).
    internal_port: u16,
    running: Running,
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn internal_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.internal_port)
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// The worker, on `database` and `amqp` (either may be a proxy), mailing `smtp_url`.
async fn start_worker(database: &str, amqp: &str, prefix: &str, smtp_url: &str) -> Served {
    idp_ops::test_logs::init();
    let args = worker_args(database, amqp, prefix, Some(smtp_url));
    let config = idp_worker::config::Config::try_parse_from(args).unwrap();
    let worker = idp_worker::startup::Worker::build(&config).await.unwrap();
    let port = worker.port();
    Served {
        port,
        internal_port: port,
        running: Running::spawn(|stop| worker.run_until_stopped(stop)),
    }
}

/// The API, on `database` and `amqp`, without a limit on registrations per address.
async fn start_api(database: &str, amqp: &str, keys: &Path) -> Served {
    idp_ops::test_logs::init();
    let mut args = api_args(database, keys);
    args.extend(
        [
            "--amqp-url",
            amqp,
            "--rate-limit-email-per-ip",
            "1000000/60s",
        ]
        .map(str::to_owned),
    );
    let config = idp_api::config::Config::try_parse_from(args).unwrap();
    let app = idp_api::startup::Application::build(&config).await.unwrap();
    Served {
        port: app.port(),
        internal_port: app.internal_port(),
        running: Running::spawn(|stop| app.run_until_stopped(stop)),
    }
}

/// When a registration was answered, for which address, and the status (or the error).
type Answer = (Instant, String, Result<u16, String>);

/// Registrations through the API, one after the other, on two clients.
struct Registrations {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Registrations {
    fn start(base: String) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let tasks = (0..2)
            .map(|i| {
                let (base, client, answers, stop) =
                    (base.clone(), client.clone(), answers.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.is_cancelled() {
                        n += 1;
                        let email = format!("drill-{i}-{n}@example.com");
                        let answer = client
                            .post(format!("{base}/v1/auth/register"))
                            .json(&serde_json::json!({
                                "email": email,
                                "password": "a passphrase for the drills",
                            }))
                            .send()
                            .await
                            .map(|r| r.status().as_u16())
                            .map_err(|e| e.to_string());
                        answers
                            .lock()
                            .unwrap()
                            .push((Instant::now(), email, answer));
                    }
                })
            })
            .collect();
        Self {
            answers,
            stop,
            tasks,
        }
    }

    fn accepted_since(&self, since: Instant) -> usize {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _, answer)| *at >= since && *answer == Ok(202))
            .count()
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.answers).unwrap().into_inner().unwrap()
    }
}

/// The `Message-ID` of the email job caused by each `VerificationRequested`.
async fn expected_message_ids(pool: &PgPool) -> BTreeSet<String> {
    let causes: Vec<Uuid> = sqlx::query_scalar(
        "select event_id from events where event_type = 'VerificationRequested'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    causes
        .into_iter()
        .map(|cause| format!("<{}@idp.localhost>", jobs::job_id("send_email", cause)))
        .collect()
}

/// Waits until every verification email asked for is recorded as sent; then checks that each
/// arrived exactly once and nothing was dead-lettered. Returns how many.
async fn assert_every_email_sent_once(pool: &PgPool, sink: &SmtpSink, within: Duration) -> usize {
    let expected = expected_message_ids(pool).await;
    let total = i64::try_from(expected.len()).unwrap();
    wait_until("every verification email sent", within, || async {
        count_events(pool, "EmailSent").await >= total
    })
    .await;
    assert_eq!(
        count_events(pool, "EmailSent").await,
        total,
        "one EmailSent per job"
    );
    assert_eq!(count_events(pool, "JobDeadLettered").await, 0);
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for mail in sink.messages().await {
        *by_id.entry(mail.message_id).or_default() += 1;
    }
    let repeated: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
    let received: BTreeSet<String> = by_id.into_keys().collect();
    let missing: Vec<_> = expected.difference(&received).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(received, expected);
    expected.len()
}

async fn readiness(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits (at most 5 s) until readiness answers 503 with check `name` down; its detail.
async fn wait_down(client: &reqwest::Client, url: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = readiness(client, url).await;
        let check = check(&body, name);
        if status == 503 && check["status"] == "down" {
            return check["detail"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "readiness never named {name}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check<'a>(body: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {body}"))
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rabbitmq_outage_keeps_registrations_coming_and_the_dispatcher_catches_up_losing_nothing(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let pool = opts
        .max_connections(4)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let broker = amqp_proxy().await;
    let amqp = amqp_url_via(&broker);
    let database = database_url(&conn);
    let keys = std::env::temp_dir().join(format!("idp-test-keys-{prefix}"));
    let api = start_api(&database, &amqp, &keys).await;
    let worker = start_worker(&database, &amqp, &prefix, &sink.url()).await;
    let client = reqwest::Client::new();
    let registrations = Registrations::start(api.url(""));
    wait_until("emails flowing", Duration::from_secs(30), || async {
        sink.stats().await.accepted >= 5
    })
    .await;

    broker.refuse().await;
    let down_at = Instant::now();
    let logged_at_cut = count_events(&pool, "UserRegistered").await;
    // The worker says what is missing; the API keeps taking registrations into the log.
    let worker_detail = wait_down(&client, &worker.url("/health/ready"), "broker").await;
    // The API only needs the database: it reports the broker down but stays in rotation.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = readiness(&client, &api.internal_url("/health/ready")).await;
        if check(&body, "broker")["status"] == "down" {
            assert_eq!(
                (status, body["status"].as_str()),
                (200, Some("degraded")),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API never saw the broker go: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(down_at.elapsed())).await;
    let accepted_during = registrations.accepted_since(down_at);
    let logged_during = count_events(&pool, "UserRegistered").await - logged_at_cut;
    broker.restore().await;
    let restored_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = registrations.stop().await;

    let failed: Vec<_> = answers.iter().filter(|(_, _, a)| *a != Ok(202)).collect();
    assert!(failed.is_empty(), "registrations not accepted: {failed:?}");
    assert!(
        accepted_during >= 3,
        "only {accepted_during} registrations during the outage"
    );
    assert!(
        logged_during >= 3,
        "only {logged_during} registrations logged during the outage"
    );
    let sent = assert_every_email_sent_once(&pool, &sink, Duration::from_secs(60)).await;
    let caught_up = restored_at.elapsed();
    // Every accepted registration is one of them.
    let asked: BTreeSet<String> = idp_testkit::log::opened_events(&pool, "VerificationRequested")
        .await
        .iter()
        .filter_map(|e| idp_events::privacy::fields::known_text(&e.data["email"]))
        .map(str::to_owned)
        .collect();
    for (_, email, _) in &answers {
        assert!(
            asked.contains(email),
            "{email} was accepted but no email was asked for"
        );
    }
    assert!(
        broker.accepted() > 2,
        "the worker reconnected through the proxy"
    );
    eprintln!(
        "RabbitMQ unreachable 4 s: {} registrations accepted ({accepted_during} during the \
         outage, {logged_during} logged during it), worker readiness: {worker_detail:?}; all \
         {sent} emails sent exactly once {caught_up:?} after the broker came back, 0 dead letters",
        answers.len(),
    );
    worker.stop().await;
    api.stop().await;
    let _ = std::fs::remove_dir_all(&keys);
    harness::delete_queues(&prefix).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_database_outage_pauses_the_worker_which_then_recovers_by_itself_losing_nothing(
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
    let database = Proxy::to(conn.get_host(), conn.get_port()).await;
    let via_proxy = database_url(&conn.clone().host("127.0.0.1").port(database.port()));
    let worker = start_worker(&via_proxy, &amqp_url(), &prefix, &sink.url()).await;
    let client = reqwest::Client::new();

    // Registrations written straight to the log (the worker's database is what fails here).
    let writing = CancellationToken::new();
    let writer = {
        let (store, writing) = (store.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !writing.is_cancelled() {
                n += 1;
                register_user(&store, &format!("user{n}@example.com")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until("emails flowing", Duration::from_secs(30), || async {
        sink.stats().await.accepted >= 20
    })
    .await;

    database.refuse().await;
    let down_at = Instant::now();
    let detail = wait_down(&client, &worker.url("/health/ready"), "database").await;
    assert!(detail.contains("cannot connect"), "{detail}");
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(down_at.elapsed())).await;
    database.restore().await;
    let restored_at = Instant::now();

    // Recovered: an event appended now reaches its recipient, without any help.
    let (_, cause) = register_user(&store, "after-the-outage@example.com").await;
    let message_id = format!("<{}@idp.localhost>", jobs::job_id("send_email", cause));
    wait_until(
        "an email asked for after the outage",
        Duration::from_secs(10),
        || async {
            sink.messages()
                .await
                .iter()
                .any(|m| m.message_id == message_id)
        },
    )
    .await;
    let recovered = restored_at.elapsed();
    writing.cancel();
    writer.await.unwrap();
    let sent = assert_every_email_sent_once(&pool, &sink, Duration::from_secs(60)).await;
    let report = idp_events::chain::verify_streams(&pool, None)
        .await
        .unwrap();
    assert!(report.is_intact(), "{:?}", report.first_break);
    eprintln!(
        "database unreachable 4 s for the worker: readiness {detail:?}; an email asked for \
         after the outage arrived {recovered:?} after it; all {sent} emails sent exactly once, \
         chains intact"
    );
    worker.stop().await;
    harness::delete_queues(&prefix).await;
}

/// Sends SIGTERM; waits (at most `within`) for the exit; the status and how long it took.
async fn terminate(child: &mut Child, within: Duration) -> (std::process::ExitStatus, Duration) {
    let sent = Instant::now();
    idp_testkit::process::sigterm(child);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        assert!(
            sent.elapsed() < within,
            "still running {within:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn sigterm_with_jobs_in_flight_finishes_them_and_a_restart_sends_the_rest_exactly_once(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    const USERS: usize = 60;
    const CONCURRENCY: u64 = 8;
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let pool = opts
        .max_connections(8)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    for i in 0..USERS {
        register_user(&store, &format!("user{i}@example.com")).await;
    }
    // A slow mail server keeps each job in flight for a while.
    sink.delay(Duration::from_millis(1500)).await;
    let mut worker = spawn_worker_process(
        &conn,
        &prefix,
        Some(&sink.url()),
        &["--job-concurrency", &CONCURRENCY.to_string()],
    );
    wait_until("jobs in flight", Duration::from_secs(60), || async {
        sink.stats().await.data_started >= CONCURRENCY
    })
    .await;
    let at_signal = sink.stats().await;
    let (status, stopped_after) = terminate(&mut worker, Duration::from_secs(40)).await;
    let at_exit = sink.stats().await;

    assert!(status.success(), "exit status {status}");
    assert!(
        at_signal.accepted < u64::try_from(USERS).unwrap(),
        "the signal came while work remained"
    );
    // Every message whose transfer had begun was finished, none cut off, and each is recorded.
    assert!(
        at_exit.accepted >= at_signal.data_started,
        "{at_signal:?} then {at_exit:?}"
    );
    assert_eq!(
        at_exit.accepted, at_exit.data_started,
        "a transfer was cut off"
    );
    assert_eq!(
        count_events(&pool, "EmailSent").await,
        i64::try_from(at_exit.accepted).unwrap(),
        "every email sent before the exit is on the record"
    );

    // The rest was handed back to the queue: a new worker sends it.
    sink.delay(Duration::ZERO).await;
    let mut restarted = spawn_worker_process(&conn, &prefix, Some(&sink.url()), &[]);
    let sent = assert_every_email_sent_once(&pool, &sink, Duration::from_secs(60)).await;
    let (status, _) = terminate(&mut restarted, Duration::from_secs(40)).await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(sent, USERS);
    eprintln!(
        "SIGTERM with {} transfers in flight: stopped after {stopped_after:?}, {} emails \
         finished before the exit, the rest sent after a restart: all {sent} exactly once",
        at_signal.data_started - at_signal.accepted,
        at_exit.accepted,
    );
    harness::delete_queues(&prefix).await;
}
