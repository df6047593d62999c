//! Fault drills of the API under a steady request load: its database stops (or the network to
//! it drops packets) for a few seconds, and the process is sent SIGTERM.
//!
//! The database faults happen on a proxy between this test's API and the machine's PostgreSQL
//! (`idp_testkit::proxy`), so they touch no other test. `scripts/drills` runs the same drills
//! against the real servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestApp, spawn_app};
use idp_testkit::broker::amqp_url;
use idp_testkit::database::database_url;
use idp_testkit::proxy::Proxy;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "a passphrase for the drills";
/// Enough registrations per address for any drill.
const NO_EMAIL_LIMIT: &str = "1000000/60s";
/// `DATABASE_ACQUIRE_TIMEOUT_SECS`'s default.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// An HTTP answer; `problem` when its body is `application/problem+json`.
    Answered { status: u16, problem: bool },
    /// The connection was refused (nothing listens).
    Refused,
    /// Anything else: reset, closed mid-answer, no answer in time.
    Broken(String),
}

#[derive(Debug, Clone)]
struct Sample {
    /// Which route: `me` or `register`.
    what: &'static str,
    /// The address registered, for `register`.
    email: Option<String>,
    started: Instant,
    latency: Duration,
    outcome: Outcome,
}

impl Sample {
    fn finished(&self) -> Instant {
        self.started + self.latency
    }

    fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Answered { status, .. } if (200..300).contains(&status))
    }
}

/// A few clients calling `GET /v1/auth/me` and `POST /v1/auth/register` in turn, as fast as
/// they are answered, recording every outcome.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, token: &str, clients: usize, client: &reqwest::Client) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let tasks = (0..clients)
            .map(|i| {
                let (base, token, client) = (base.to_owned(), token.to_owned(), client.clone());
                let (samples, stop) = (samples.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0_u64;
                    while !stop.is_cancelled() {
                        n += 1;
                        let sample = if n.is_multiple_of(2) {
                            let email = format!("load-{i}-{n}@example.com");
                            // Each load client is a client address of its own (through the
                            // trusted loopback proxy): one address has one sign-up at a time.
                            let request = client
                                .post(format!("{base}/v1/auth/register"))
                                .header("x-forwarded-for", format!("198.18.0.{}", i + 1))
                                .json(&serde_json::json!({ "email": email, "password": PASSWORD }));
                            let mut sample = send("register", request).await;
                            sample.email = Some(email);
                            sample
                        } else {
                            let request =
                                client.get(format!("{base}/v1/auth/me")).bearer_auth(&token);
                            send("me", request).await
                        };
                        let refused = sample.outcome == Outcome::Refused;
                        samples.lock().unwrap().push(sample);
                        if refused {
                            // Nothing listens: do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            samples,
            stop,
            tasks,
        }
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits until some request started at or after `since` succeeded; when it finished.
    async fn first_success_since(&self, since: Instant, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(done) = self
                .snapshot()
                .iter()
                .filter(|s| s.started >= since && s.is_success())
                .map(Sample::finished)
                .min()
            {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "no request succeeded within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

async fn send(what: &'static str, request: reqwest::RequestBuilder) -> Sample {
    let started = Instant::now();
    let outcome = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let problem = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/problem+json");
            match response.bytes().await {
                Ok(_) => Outcome::Answered { status, problem },
                Err(err) => Outcome::Broken(format!("body of a {status}: {}", chain(&err))),
            }
        }
        Err(err) if is_refused(&err) => Outcome::Refused,
        Err(err) => Outcome::Broken(chain(&err)),
    };
    Sample {
        what,
        email: None,
        started,
        latency: started.elapsed(),
        outcome,
    }
}

fn is_refused(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = e.source();
    }
    false
}

/// An error with its causes, for messages.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A readiness answer during a drill.
#[derive(Debug)]
struct ReadyProbe {
    status: u16,
    latency: Duration,
    body: serde_json::Value,
}

async fn probe_ready(client: &reqwest::Client, base: &str) -> ReadyProbe {
    let started = Instant::now();
    let response = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap();
    ReadyProbe {
        status,
        latency: started.elapsed(),
        body,
    }
}

/// The database check of a readiness report.
fn database_check(body: &serde_json::Value) -> serde_json::Value {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "database")
        .cloned()
        .unwrap_or_else(|| panic!("no database check in {body}"))
}

/// Polls readiness every 200 ms until `until` has passed.
async fn probe_ready_until(
    client: &reqwest::Client,
    base: &str,
    until: Instant,
) -> Vec<ReadyProbe> {
    let mut probes = Vec::new();
    while Instant::now() < until {
        probes.push(probe_ready(client, base).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probes
}

/// Waits until readiness answers 200; how long that took.
async fn wait_ready(client: &reqwest::Client, base: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if probe_ready(client, base).await.status == 200 {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_successes(load: &Load, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.snapshot().iter().filter(|s| s.is_success()).count() < n {
        assert!(Instant::now() < deadline, "the load never got {n} answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The API with its database behind `proxy`, a signed-in user, and a client for the load.
async fn app_behind(proxy: &Proxy, conn: &PgConnectOptions, extra: &[&str]) -> (TestApp, String) {
    let via_proxy = conn.clone().host("127.0.0.1").port(proxy.port());
    let mut args = vec![
        "--rate-limit-email-per-ip",
        NO_EMAIL_LIMIT,
        "--trusted-proxies",
        "127.0.0.1/32",
    ];
    args.extend_from_slice(extra);
    let app = spawn_app(&via_proxy, &args).await;
    let direct = direct_pool(conn).await;
    let token = app
        .verified_user(&direct, "driller@example.com", PASSWORD)
        .await;
    direct.close().await;
    (app, token)
}

async fn direct_pool(conn: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(conn.clone())
        .await
        .unwrap()
}

/// Every request got an HTTP answer (no reset, no hang), none a 500, none later than `bound`.
fn assert_every_request_answered(samples: &[Sample], bound: Duration) {
    let broken: Vec<_> = samples
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::Answered { .. }))
        .collect();
    assert!(broken.is_empty(), "requests without an answer: {broken:?}");
    let errors: Vec<_> = samples
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Answered { status, .. } if status >= 500 && status != 503))
        .collect();
    assert!(
        errors.is_empty(),
        "server errors other than 503: {errors:?}"
    );
    let slowest = samples.iter().map(|s| s.latency).max().unwrap();
    assert!(
        slowest <= bound,
        "a request took {slowest:?}, beyond {bound:?}"
    );
}

/// Requests started at or after `from` and finished before `to`: every one a 503 problem
/// document. Returns the slowest.
fn assert_outage_answers(samples: &[Sample], from: Instant, to: Instant) -> Duration {
    let during: Vec<_> = samples
        .iter()
        .filter(|s| s.started >= from && s.finished() <= to)
        .collect();
    assert!(
        during.len() >= 4,
        "too few requests during the outage to judge: {during:?}"
    );
    for sample in &during {
        assert_eq!(
            sample.outcome,
            Outcome::Answered {
                status: 503,
                problem: true
            },
            "every answer during the outage is a 503 problem document, the request timeout's \
             too: {sample:?}"
        );
    }
    during.iter().map(|s| s.latency).max().unwrap()
}

/// No event half-written: every chain verifies, every registration that got a 202 is in the
/// log, and every registered account has both of its registration events.
async fn assert_log_whole(pool: &PgPool, samples: &[Sample]) -> usize {
    let report = idp_events::chain::verify_streams(pool, None).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.first_break);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for kind in ["UserRegistered", "VerificationRequested"] {
        for e in idp_testkit::log::opened_events(pool, kind).await {
            let email = idp_events::privacy::fields::known_text(&e.data["email"])
                .unwrap_or_default()
                .to_owned();
            rows.push((e.stream_id, e.event_type, email));
        }
    }
    let mut by_stream: BTreeMap<String, (BTreeSet<String>, String)> = BTreeMap::new();
    for (stream, kind, email) in rows {
        let entry = by_stream.entry(stream).or_default();
        entry.0.insert(kind);
        entry.1 = email;
    }
    for (stream, (kinds, _)) in &by_stream {
        assert_eq!(kinds.len(), 2, "{stream} has only {kinds:?}");
    }
    let registered: BTreeSet<&str> = by_stream.values().map(|(_, e)| e.as_str()).collect();
    let accepted: Vec<&str> = samples
        .iter()
        .filter(|s| s.what == "register" && s.is_success())
        .filter_map(|s| s.email.as_deref())
        .collect();
    for email in &accepted {
        assert!(
            registered.contains(email),
            "{email} was accepted but is not in the log"
        );
    }
    accepted.len()
}

#[sqlx::test(migrations = false)]
async fn a_stopped_database_gets_fast_503_problems_a_named_reason_in_readiness_and_a_fast_recovery(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let proxy = Proxy::to(conn.get_host(), conn.get_port()).await;
    let (app, token) = app_behind(&proxy, &conn, &[]).await;
    let request_timeout = Duration::from_secs(10);
    let client = reqwest::Client::builder()
        .timeout(request_timeout + Duration::from_secs(5))
        .build()
        .unwrap();
    let load = Load::start(&app.base, &token, 4, &client);
    wait_successes(&load, 10).await;

    // What `pg_ctl stop -m fast` does: no new connections, and each session is sent
    // "terminating connection due to administrator command" (57P01) and closed.
    proxy.stop_accepting().await;
    let admin = direct_pool(&conn).await;
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity
          where datname = current_database() and pid <> pg_backend_pid()",
    )
    .execute(&admin)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.open() > 0 {
        assert!(Instant::now() < deadline, "the sessions were not closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.refuse().await;
    let down_at = Instant::now();
    // Long enough for requests to start and end within it, however long a refusal takes.
    let probes = probe_ready_until(
        &client,
        &app.internal,
        down_at + 2 * ACQUIRE_TIMEOUT + Duration::from_secs(2),
    )
    .await;

    proxy.restore().await;
    let restored_at = Instant::now();
    let recovered = load
        .first_success_since(restored_at, Duration::from_secs(10))
        .await
        - restored_at;
    let ready_again = wait_ready(&client, &app.internal, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.stop().await;

    assert_every_request_answered(&samples, request_timeout);
    let slowest_503 = assert_outage_answers(&samples, down_at, restored_at);
    assert!(
        slowest_503 <= ACQUIRE_TIMEOUT + Duration::from_secs(2),
        "a 503 took {slowest_503:?}"
    );
    assert!(!probes.is_empty());
    for probe in &probes {
        assert_eq!(probe.status, 503, "{probe:?}");
        let check = database_check(&probe.body);
        assert_eq!(check["status"], "down", "{probe:?}");
        let detail = check["detail"].as_str().unwrap();
        assert!(detail.contains("cannot connect"), "{detail}");
        assert!(probe.latency < Duration::from_secs(3), "{probe:?}");
    }
    assert!(
        recovered < Duration::from_secs(10),
        "recovered {recovered:?} after restart"
    );
    let accepted = assert_log_whole(&admin, &samples).await;
    eprintln!(
        "database stopped: {} requests, {} during the outage, slowest 503 {slowest_503:?}, \
         slowest readiness {:?} ({:?}), first success {recovered:?} after restart, ready again \
         after {ready_again:?}, {accepted} registrations accepted, chains intact",
        samples.len(),
        samples
            .iter()
            .filter(|s| s.started >= down_at && s.finished() <= restored_at)
            .count(),
        probes.iter().map(|p| p.latency).max().unwrap(),
        database_check(&probes[0].body)["detail"],
    );
    admin.close().await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_database_behind_a_dead_network_gets_503_problems_within_the_request_timeout(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let proxy = Proxy::to(conn.get_host(), conn.get_port()).await;
    let (app, token) = app_behind(&proxy, &conn, &["--request-timeout-secs", "2"]).await;
    let request_timeout = Duration::from_secs(2);
    let client = reqwest::Client::builder()
        .timeout(request_timeout + Duration::from_secs(5))
        .build()
        .unwrap();
    let load = Load::start(&app.base, &token, 4, &client);
    wait_successes(&load, 10).await;

    // Packets to the database vanish: queries in flight never get an answer, new connections
    // never complete their handshake.
    proxy.blackhole().await;
    let down_at = Instant::now();
    // Long enough for requests to start and end within it, however long a timeout takes.
    let until = down_at + 2 * request_timeout + Duration::from_secs(1);
    let probes = probe_ready_until(&client, &app.internal, until).await;

    proxy.restore().await;
    let restored_at = Instant::now();
    let recovered = load
        .first_success_since(restored_at, Duration::from_secs(10))
        .await
        - restored_at;
    let ready_again = wait_ready(&client, &app.internal, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.stop().await;

    // The request timeout answers what the database does not; a little slack for scheduling.
    assert_every_request_answered(&samples, request_timeout + Duration::from_millis(500));
    let slowest_503 = assert_outage_answers(&samples, down_at, restored_at);
    for probe in &probes {
        assert_eq!(probe.status, 503, "{probe:?}");
        let check = database_check(&probe.body);
        assert_eq!(check["status"], "down", "{probe:?}");
        assert!(
            check["detail"].as_str().unwrap().contains("no answer"),
            "{probe:?}"
        );
        assert!(probe.latency < Duration::from_secs(3), "{probe:?}");
    }
    assert!(
        recovered < Duration::from_secs(10),
        "recovered {recovered:?} after the network came back"
    );
    let admin = direct_pool(&conn).await;
    let accepted = assert_log_whole(&admin, &samples).await;
    eprintln!(
        "database unreachable: {} requests, slowest 503 {slowest_503:?}, slowest readiness \
         {:?} ({:?}), first success {recovered:?} after the network came back, ready again \
         after {ready_again:?}, {accepted} registrations accepted, chains intact",
        samples.len(),
        probes.iter().map(|p| p.latency).max().unwrap(),
        database_check(&probes[0].body)["detail"],
    );
    admin.close().await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn sigterm_under_load_finishes_requests_in_flight_and_then_refuses_connections_cleanly(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let keys = std::env::temp_dir().join(format!("idp-test-keys-drill-{port}"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_idp-api"));
    command
        .env("DATABASE_URL", database_url(&conn))
        .env("AMQP_URL", amqp_url())
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .env("API_INTERNAL_ADDR", "127.0.0.1:0")
        .env("JWT_KEYS_DIR", &keys)
        .env("EMAIL_TOKEN_KEYS", idp_testkit::keys::EMAIL_TOKEN_KEYS)
        .env(
            "PROJECT_DATABASE_KEYS",
            idp_testkit::keys::PROJECT_DATABASE_KEYS,
        )
        .env(
            "ADDRESS_DIGEST_KEYS",
            idp_testkit::keys::ADDRESS_DIGEST_KEYS,
        )
        .env("PERSONAL_DATA_KEYS", idp_testkit::keys::PERSONAL_DATA_KEYS)
        .env("EMAIL_INDEX_KEYS", idp_testkit::keys::EMAIL_INDEX_KEYS)
        .env("RATE_LIMIT_EMAIL_PER_IP", NO_EMAIL_LIMIT)
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    idp_ops::test_logs::child(&mut command, "idp-api");
    let mut child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/health/live")).await.is_err() {
        assert!(Instant::now() < deadline, "the API never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One connection per request, like most load balancers' health checks and many clients:
    // every request after the listener closes is a new connection attempt.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let load = Load::start(&base, "no token", 6, &client);
    wait_successes(&load, 20).await;

    let term_at = Instant::now();
    idp_testkit::process::sigterm(&child);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            term_at.elapsed() < Duration::from_secs(15),
            "the API did not stop within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stopped_after = term_at.elapsed();
    let exited_at = Instant::now();
    // New connections meet a closed port.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !load
        .snapshot()
        .iter()
        .any(|s| s.started > exited_at && s.outcome == Outcome::Refused)
    {
        assert!(
            Instant::now() < deadline,
            "no connection refused after exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let samples = load.stop().await;
    let _ = std::fs::remove_dir_all(&keys);

    assert!(exit.success(), "exit status {exit}");
    let broken: Vec<_> = samples
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Broken(_)))
        .collect();
    assert!(broken.is_empty(), "connections broken: {broken:?}");
    // Requests in flight at the signal were answered, and answered normally.
    let in_flight: Vec<_> = samples
        .iter()
        .filter(|s| s.started < term_at && s.finished() > term_at)
        .collect();
    assert!(!in_flight.is_empty(), "no request was in flight at SIGTERM");
    for sample in &in_flight {
        assert!(
            sample.is_success() || sample.what == "me",
            "in flight at SIGTERM: {sample:?}"
        );
        assert!(
            matches!(sample.outcome, Outcome::Answered { .. }),
            "in flight at SIGTERM: {sample:?}"
        );
    }
    let refused = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Refused)
        .count();
    let admin = direct_pool(&conn).await;
    let accepted = assert_log_whole(&admin, &samples).await;
    eprintln!(
        "SIGTERM under load: {} requests, {} in flight at the signal (all answered), stopped \
         after {stopped_after:?}, {refused} refused after the listener closed, 0 broken, \
         {accepted} registrations accepted and in the log",
        samples.len(),
        in_flight.len(),
    );
    admin.close().await;
}
