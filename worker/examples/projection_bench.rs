//! Projection benchmark: `scripts/bench projections` runs it.
//!
//! Two figures, each next to a baseline measured in the same run on the same database:
//!
//! - **Rebuild**: `users_directory` and `audit_view` replayed from zero (reset + catch-up, as
//!   `idp-worker rebuild` does) over a log of realistic identity traffic (default 1,000,000
//!   events). Baseline: reading the same events with `read_all` in the same batch size, with no
//!   handler. Rounds alternate the three and the means are reported.
//! - **Decryption**: `users_directory` rebuilt over the seeded log, whose addresses, names and
//!   client details are sealed, against the same rebuild over a copy of the log holding the same
//!   values in the clear (database `idp_bench_projections_clear`, created and dropped here).
//! - **Latency**: both projections running, an appender at a steady rate (default 1,000
//!   events/s for 10 s), and a watcher on its own connection that polls the read models until
//!   each appended event's effect is visible; the latency runs from the append returning to the
//!   watcher seeing the row. Baseline: the same watcher seeing the event in the log itself,
//!   which is what the polling costs.
//!
//! The benchmark creates its own database (`idp_bench_projections`) on the server of
//! `DATABASE_URL` and drops it at the end. Seeding is not measured.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use idp_events::StreamId;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use idp_events::identity::login::{self, FailureReason};
use idp_events::identity::session::{RevokeReason, SessionEvent};
use idp_events::identity::user::{self, UserEvent};
use idp_events::subscription::{self, Handler, Subscription, SubscriptionOptions};
use idp_events::{Append, Cursor, EventStore, ExpectedVersion, Metadata, NewEvent};
use idp_ops::config::DatabaseUrl;
use idp_worker::projections::{self, AuditView, UsersDirectory};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The scratch database, created and dropped by the benchmark.
const DATABASE: &str = "idp_bench_projections";
/// Its copy with personal values in the clear, created and dropped by the benchmark.
const CLEAR_DATABASE: &str = "idp_bench_projections_clear";

/// Rounds of activity in each seeded account's life (registration comes before them).
const LIFE_ROUNDS: u32 = 4;

/// Accounts whose events one seeding transaction writes.
const SEED_CHUNK: usize = 64;

#[derive(Debug, Parser)]
#[command(about = "Rebuild throughput and event-to-read-model latency of the projections")]
struct Args {
    /// Sections to run: `rebuild`, `latency` (default: both).
    sections: Vec<String>,
    /// Events in the log to rebuild from.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Alternating rounds of the rebuild figures (means are reported).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Events per second appended during the latency figure.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds the latency figure lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per batch of the rebuilds (default: the projections' own setting).
    #[arg(long)]
    batch: Option<i64>,
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
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/idp_bench".into());
    let server = DatabaseUrl::from_str(&url)
        .map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?
        .options();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .context("while connecting to DATABASE_URL")?;
    let drop_both = || async {
        for name in [DATABASE, CLEAR_DATABASE] {
            sqlx::raw_sql(&format!("drop database if exists {name} with (force)"))
                .execute(&admin)
                .await
                .context("while dropping the benchmark databases")?;
        }
        anyhow::Ok(())
    };
    drop_both().await?;
    for name in [DATABASE, CLEAR_DATABASE] {
        sqlx::raw_sql(&format!("create database {name}"))
            .execute(&admin)
            .await
            .context("while creating the benchmark databases")?;
    }

    let clear = server.clone().database(CLEAR_DATABASE);
    let result = run(&args, server.database(DATABASE), clear).await;

    drop_both().await?;
    print_table(&result?);
    Ok(())
}

async fn run(
    args: &Args,
    options: PgConnectOptions,
    clear_options: PgConnectOptions,
) -> anyhow::Result<Vec<Row3>> {
    let wants = |name: &str| args.sections.is_empty() || args.sections.iter().any(|s| s == name);
    let pool = PgPoolOptions::new()
        .max_connections(16)
        // As the binaries configure their pools (idp_ops::database).
        .test_before_acquire(false)
        .connect_with(options.clone())
        .await?;
    idp_events::migrations::run(&pool).await?;
    let store = idp_testkit::keys::event_store(pool.clone());
    let mut rows = Vec::new();

    if wants("rebuild") {
        eprintln!("seeding {} identity events ...", args.events);
        let started = Instant::now();
        let seeded = seed(&options, args.events).await?;
        eprintln!(
            "seeded {seeded} events in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        eprintln!("copying the log with its personal values in the clear ...");
        let clear_pool = PgPoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(clear_options)
            .await?;
        idp_events::migrations::run(&clear_pool).await?;
        let clear = EventStore::new(clear_pool.clone());
        copy_in_the_clear(&store, &clear, seeded).await?;
        rebuild(&store, &clear, args.rounds, args.batch, seeded, &mut rows).await?;
        clear_pool.close().await;
        // Let the vacuum that the rebuilds' millions of inserts call for happen now, rather
        // than during the latency figure, which is about steady traffic.
        eprintln!("vacuuming the rebuilt read models ...");
        sqlx::raw_sql("vacuum analyze users_directory, audit_view")
            .execute(&pool)
            .await?;
    }
    if wants("latency") {
        latency(&store, args.rate, args.seconds, &mut rows).await?;
    }
    pool.close().await;
    Ok(rows)
}

fn print_table(rows: &[Row3]) {
    println!();
    println!(
        "{:<48} {:>12} {:>12} {:>9} {:>7} {:>12} {:>4}",
        "scenario", "idp", "baseline", "unit", "ratio", "target", "met"
    );
    println!("{}", "-".repeat(110));
    for r in rows {
        println!(
            "{:<48} {:>12.1} {:>12.1} {:>9} {:>6.2}x {:>12} {:>4}",
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
        "baselines: rebuild = read_all of the same events in the same batch size, no handler;"
    );
    println!(
        "sealed vs clear = the same rebuild over a copy of the log with its personal values in the clear;"
    );
    println!("latency = the same watcher seeing the appended event in the log (its polling cost).");
}

// ---------------------------------------------------------------------------------------------
// Seeding: realistic identity traffic through the event store.

/// A tiny deterministic generator (splitmix64), so every run seeds the same traffic.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One seeded account and what the seeder knows of its streams.
struct Account {
    n: u64,
    id: Uuid,
    dice: Dice,
    version: i64,
    verified: bool,
    failures: u64,
    lock_count: u32,
    locked: bool,
    admin_id: Uuid,
    /// Events of the appends made so far.
    produced: u64,
}

impl Account {
    fn new(n: u64, admin_id: Uuid) -> Self {
        Self {
            n,
            id: if n == 0 { admin_id } else { Uuid::now_v7() },
            dice: Dice(n.wrapping_mul(0x5851_f42d_4c95_7f2d)),
            version: 0,
            verified: false,
            failures: 0,
            lock_count: 0,
            locked: false,
            admin_id,
            produced: 0,
        }
    }

    fn meta(&mut self, actor: String) -> Metadata {
        let request = Uuid::now_v7();
        Metadata {
            actor: Some(actor),
            request_id: Some(request.to_string()),
            correlation_id: Some(request),
            causation_id: None,
            client_ip: Some(format!("198.51.100.{}", self.n % 250).into()),
            user_agent: Some(
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".into(),
            ),
            api_key_id: None,
        }
    }

    fn own(&mut self) -> Metadata {
        let actor = format!("user-{}", self.id);
        self.meta(actor)
    }

    fn user_append(&mut self, events: &[UserEvent], meta: Metadata) -> Append {
        let expected = if self.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(u64::try_from(self.version).unwrap_or_default())
        };
        self.version += i64::try_from(events.len()).unwrap_or_default();
        self.produced += events.len() as u64;
        Append::to(StreamId::user(self.id))
            .about(self.id)
            .expecting(expected)
            .events(events.iter().map(UserEvent::to_new_event))
            .metadata(meta)
    }

    /// The appends of round `round` of this account's life (round 0: registration).
    fn round(&mut self, round: u32) -> Vec<Append> {
        let mut appends = Vec::new();
        if round == 0 {
            let roles = if self.n == 0 {
                vec!["user".to_owned(), "admin".to_owned()]
            } else {
                vec!["user".to_owned()]
            };
            let name = self.dice.chance(60).then(|| format!("Person {}", self.n));
            let email = format!("person{}@example.com", self.n);
            let events = user::register(&email, name, roles, self.n == 0);
            self.verified = self.n == 0;
            let meta = self.own();
            appends.push(self.user_append(&events, meta));
            return appends;
        }
        if round == 1 && !self.verified && self.dice.chance(90) {
            self.verified = true;
            let meta = self.own();
            let verified = [UserEvent::EmailVerified {
                verification_id: Some(Uuid::now_v7()),
            }];
            appends.push(self.user_append(&verified, meta));
        }
        for _ in 0..self.dice.below(3) {
            appends.push(self.session());
        }
        if self.dice.chance(35) {
            appends.extend(self.wrong_passwords());
        }
        if self.locked && self.dice.chance(50) {
            self.locked = false;
            self.failures = 0;
            let meta = self.meta(format!("user-{}", self.admin_id));
            appends.push(self.user_append(&[UserEvent::AccountUnlocked], meta));
        }
        if self.dice.chance(4) {
            let meta = self.meta(format!("user-{}", self.admin_id));
            let roles = [UserEvent::RolesChanged {
                roles: vec!["admin".into(), "user".into()],
            }];
            appends.push(self.user_append(&roles, meta));
        }
        if self.dice.chance(5) {
            let email = format!("person{}@example.com", self.n);
            let meta = self.meta("anonymous".into());
            appends.push(self.user_append(
                &[UserEvent::PasswordResetRequested {
                    email: email.into(),
                }],
                meta,
            ));
            let meta = self.own();
            let reset = [UserEvent::PasswordReset {
                reset_id: Uuid::now_v7(),
            }];
            appends.push(self.user_append(&reset, meta));
            self.locked = false;
            self.failures = 0;
        }
        if self.dice.chance(5) {
            let meta = self.own();
            appends.push(self.user_append(&[UserEvent::PasswordChanged], meta));
            self.failures = 0;
        }
        if self.dice.chance(8) {
            let digest = format!("{:032x}", self.dice.next());
            let meta = self.meta("anonymous".into());
            self.produced += 1;
            appends.push(
                Append::to(StreamId::login_unknown(&digest))
                    .expecting(ExpectedVersion::Any)
                    .event(login::failed_unknown(&digest))
                    .metadata(meta),
            );
        }
        if self.dice.chance(12) {
            appends.push(self.project());
        }
        appends
    }

    /// A sign-in, a few refreshes, maybe a sign-out.
    fn session(&mut self) -> Append {
        let session_id = Uuid::now_v7();
        let mut events = vec![
            login::succeeded(session_id),
            SessionEvent::SessionStarted {
                user_id: self.id,
                expires_at: chrono::Utc::now() + chrono::Duration::days(30),
            }
            .to_new_event(),
        ];
        for generation in 2..2 + self.dice.below(4) {
            events.push(
                SessionEvent::SessionRefreshed {
                    generation: u32::try_from(generation).unwrap_or_default(),
                }
                .to_new_event(),
            );
        }
        if self.dice.chance(50) {
            events.push(
                SessionEvent::SessionRevoked {
                    reason: RevokeReason::Logout,
                }
                .to_new_event(),
            );
        }
        self.failures = 0;
        self.produced += events.len() as u64;
        let meta = self.own();
        Append::to(StreamId::session(session_id))
            .about(self.id)
            .events(events)
            .metadata(meta)
    }

    /// One to four wrong passwords; the fifth in a row locks the account.
    fn wrong_passwords(&mut self) -> Vec<Append> {
        let mut appends = Vec::new();
        for _ in 0..=self.dice.below(4) {
            let meta = self.own();
            let reason = if self.locked {
                FailureReason::Locked
            } else {
                self.failures += 1;
                FailureReason::WrongPassword
            };
            self.produced += 1;
            appends.push(
                Append::to(StreamId::login(self.id))
                    .about(self.id)
                    .expecting(ExpectedVersion::Any)
                    .event(login::failed(reason))
                    .metadata(meta),
            );
            if !self.locked && self.failures >= u64::from(user::LOCK_AFTER_FAILURES) {
                self.locked = true;
                self.failures = 0;
                self.lock_count += 1;
                let lock = [UserEvent::AccountLocked {
                    until: chrono::Utc::now() + chrono::Duration::minutes(5),
                    lock_count: self.lock_count,
                }];
                let meta = self.own();
                appends.push(self.user_append(&lock, meta));
            }
        }
        appends
    }

    /// Another context's traffic: a project requested and provisioned.
    fn project(&mut self) -> Append {
        let project = Uuid::now_v7();
        let mut events = vec![NewEvent::new(
            "ProjectRequested",
            json!({ "project_id": project, "name": format!("service-{}", self.n), "template": "service" }),
        )];
        for step in ["database", "repository", "webhook"] {
            events.push(NewEvent::new(
                "ProvisioningStepSucceeded",
                json!({ "project_id": project, "step": step }),
            ));
        }
        self.produced += events.len() as u64;
        let meta = self.own();
        Append::to(format!("project-{project}"))
            .events(events)
            .metadata(meta)
    }
}

/// How many accounts make a log of at least `target` events (a dry run of the same dice).
fn accounts_for(target: u64) -> u64 {
    let admin = Uuid::now_v7();
    let mut total = 0_u64;
    let mut n = 0_u64;
    while total < target {
        let mut account = Account::new(n, admin);
        for round in 0..=LIFE_ROUNDS {
            account.round(round);
        }
        total += account.produced;
        n += 1;
    }
    n
}

/// Writes the traffic of enough accounts for `target` events: registrations first, then the
/// rounds of activity, each round in transactions of [`SEED_CHUNK`] accounts across 8 writers
/// (so consecutive events belong to many accounts, as in real traffic). Returns the count.
async fn seed(options: &PgConnectOptions, target: u64) -> anyhow::Result<u64> {
    let accounts = accounts_for(target);
    // Seeding is not measured: skip the WAL flush at each commit.
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options.clone().options([("synchronous_commit", "off")]))
        .await?;
    let store = idp_testkit::keys::event_store(pool.clone());
    let writers = 8_u64;
    let admin = Uuid::now_v7();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.spawn(async move {
            let mut mine: Vec<Account> = (0..accounts)
                .filter(|n| n % writers == w)
                .map(|n| Account::new(n, admin))
                .collect();
            for round in 0..=LIFE_ROUNDS {
                for chunk in mine.chunks_mut(SEED_CHUNK) {
                    let mut conn = store.pool().acquire().await?;
                    let mut tx = conn.begin().await?;
                    for account in chunk {
                        for append in account.round(round) {
                            store.append_in(&mut tx, append).await?;
                        }
                    }
                    tx.commit().await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    sqlx::raw_sql("vacuum analyze events")
        .execute(&pool)
        .await?;
    let count: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(u64::try_from(count).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Rebuild throughput.

/// Copies every event of `sealed` into `clear` with its personal values opened (marked, not
/// sealed), so a read of `clear` has nothing to open. The copy's chains are not valid: it is
/// only read.
async fn copy_in_the_clear(
    sealed: &EventStore,
    clear: &EventStore,
    expected: u64,
) -> anyhow::Result<()> {
    let mut cursor = Cursor::START;
    let mut copied = 0_u64;
    loop {
        let events = sealed.read_all(cursor, 5_000).await?;
        let Some(last) = events.last() else { break };
        cursor = last.cursor();
        let mut text = String::new();
        for event in &events {
            text.push_str(&event.data.to_string());
            text.push_str(&event.metadata.to_string());
        }
        anyhow::ensure!(!text.contains("$sealed"), "a value stayed sealed");
        sqlx::query(
            "insert into events (event_id, stream_id, stream_version, event_type, schema_version,
                                 data, metadata, recorded_at, hash)
             select * from unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::int[],
                                  $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::bytea[])",
        )
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.stream_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.stream_version).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.schema_version).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.data.clone()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.metadata.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.hash.clone()).collect::<Vec<_>>())
        .execute(clear.pool())
        .await?;
        copied += events.len() as u64;
    }
    anyhow::ensure!(
        copied == expected,
        "copied {copied} events, expected {expected}"
    );
    sqlx::raw_sql("vacuum analyze events")
        .execute(clear.pool())
        .await?;
    Ok(())
}

async fn rebuild(
    store: &EventStore,
    clear: &EventStore,
    rounds: u32,
    batch: Option<i64>,
    events: u64,
    rows: &mut Vec<Row3>,
) -> anyhow::Result<()> {
    let mut directory = projections::users_directory(store);
    let mut audit = projections::audit_view(store);
    if let Some(batch_size) = batch {
        let options = SubscriptionOptions {
            batch_size,
            ..projections::set_based_options()
        };
        directory = directory.with_options(options.clone());
        audit = audit.with_options(options);
    }
    let mut clear_directory = projections::users_directory(clear);
    if let Some(batch_size) = batch {
        clear_directory = clear_directory.with_options(SubscriptionOptions {
            batch_size,
            ..projections::set_based_options()
        });
    }
    let batch = batch.unwrap_or(projections::set_based_options().batch_size);
    let (mut read, mut dir, mut aud, mut dir_clear) = (0.0, 0.0, 0.0, 0.0);
    for round in 1..=rounds {
        eprintln!(
            "rebuild round {round}/{rounds}: read_all, users_directory (sealed, clear), audit_view ..."
        );
        read += read_all(store, batch, events).await? / f64::from(rounds);
        dir += replay(store, &directory, events).await? / f64::from(rounds);
        dir_clear += replay(clear, &clear_directory, events).await? / f64::from(rounds);
        aud += replay(store, &audit, events).await? / f64::from(rounds);
    }
    rows.push(Row3 {
        scenario: format!("rebuild {} sealed vs clear", UsersDirectory::NAME),
        idp: dir,
        baseline: dir_clear,
        unit: "events/s",
        target: ">= 0.80x".into(),
        met: dir >= 0.8 * dir_clear,
    });
    for (name, rate) in [(UsersDirectory::NAME, dir), (AuditView::NAME, aud)] {
        rows.push(Row3 {
            scenario: format!("rebuild {name} ({events} events)"),
            idp: rate,
            baseline: read,
            unit: "events/s",
            target: ">= 50000/s".into(),
            met: rate >= 50_000.0,
        });
    }
    Ok(())
}

/// Events per second of reading the whole log with no handler.
async fn read_all(store: &EventStore, batch: i64, expected: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut cursor = Cursor::START;
    let mut n = 0_u64;
    loop {
        let events = store.read_all(cursor, batch).await?;
        let Some(last) = events.last() else { break };
        cursor = last.cursor();
        n += events.len() as u64;
    }
    anyhow::ensure!(n == expected, "read {n} events, expected {expected}");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Events per second of a rebuild: reset, then replay everything.
async fn replay<H: Handler>(
    store: &EventStore,
    sub: &Subscription<H>,
    expected: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    subscription::reset(store.pool(), sub.name(), sub.handler()).await?;
    let handled = sub
        .catch_up()
        .await?
        .context("another runner holds the subscription")?;
    anyhow::ensure!(
        handled == expected,
        "{} replayed {handled} events, expected {expected}",
        sub.name()
    );
    Ok(handled as f64 / start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Event-to-read-model latency.

/// Where the effect of an appended event shows.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// `users_directory.last_position` of the account reaches the position.
    UserStream,
    /// `users_directory.login_position` of the account reaches the position.
    LoginStream,
}

/// An appended event the watcher waits for.
#[derive(Debug, Clone, Copy)]
struct Probe {
    position: i64,
    account: Uuid,
    mark: Mark,
    appended: Instant,
}

#[derive(Default)]
struct Seen {
    log: Vec<Duration>,
    directory: Vec<Duration>,
    audit: Vec<Duration>,
}

async fn latency(
    store: &EventStore,
    rate: u64,
    seconds: u64,
    rows: &mut Vec<Row3>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let directory = projections::users_directory(store);
    let audit = projections::audit_view(store);
    eprintln!("catching the projections up before the latency run ...");
    directory.catch_up().await?;
    audit.catch_up().await?;
    let runners = tokio::spawn({
        let stop = stop.clone();
        async move { tokio::join!(directory.run(stop.clone()), audit.run(stop.clone())) }
    });

    let (probes_tx, probes_rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch(store.pool().clone(), probes_rx));

    eprintln!("event -> read model latency at {rate} events/s for {seconds}s ...");
    let store2 = store.clone();
    paced(rate, Duration::from_secs(seconds), move |i, task| {
        let store = store2.clone();
        let probes = probes_tx.clone();
        async move {
            // Each task cycles through an account's life: registered, a wrong password,
            // roles changed, verified. One event per append.
            let cycle = i / 8;
            let account = Uuid::from_u64_pair(task + 1, cycle / 4);
            let meta = Metadata::actor(format!("user-{account}"));
            let (append, mark) = match cycle % 4 {
                0 => (
                    Append::to(StreamId::user(account))
                        .about(account)
                        .event(
                            UserEvent::UserRegistered {
                                email: format!("probe-{task}-{cycle}@example.com").into(),
                                display_name: None,
                                roles: vec!["user".into()],
                            }
                            .to_new_event(),
                        )
                        .metadata(meta),
                    Mark::UserStream,
                ),
                1 => (
                    Append::to(StreamId::login(account))
                        .expecting(ExpectedVersion::Any)
                        .event(login::failed(FailureReason::WrongPassword))
                        .metadata(meta),
                    Mark::LoginStream,
                ),
                2 => (
                    Append::to(StreamId::user(account))
                        .expecting(ExpectedVersion::Exact(1))
                        .event(
                            UserEvent::RolesChanged {
                                roles: vec!["admin".into(), "user".into()],
                            }
                            .to_new_event(),
                        )
                        .metadata(meta),
                    Mark::UserStream,
                ),
                _ => (
                    Append::to(StreamId::user(account))
                        .expecting(ExpectedVersion::Exact(2))
                        .event(
                            UserEvent::EmailVerified {
                                verification_id: None,
                            }
                            .to_new_event(),
                        )
                        .metadata(meta),
                    Mark::UserStream,
                ),
            };
            let outcome = store.append(append).await?;
            let appended = Instant::now();
            let _ = probes.send(Probe {
                position: outcome.positions[0],
                account,
                mark,
                appended,
            });
            Ok(())
        }
    })
    .await?;

    let seen = watcher.await??;
    stop.cancel();
    runners.await?;
    let expected = usize::try_from(rate * seconds).unwrap_or_default();
    for (name, samples) in [
        (UsersDirectory::NAME, &seen.directory),
        (AuditView::NAME, &seen.audit),
    ] {
        anyhow::ensure!(
            samples.len() == expected,
            "{name}: saw {} of {expected} events",
            samples.len()
        );
    }
    let log = percentiles(seen.log);
    for (name, samples) in [
        (UsersDirectory::NAME, seen.directory),
        (AuditView::NAME, seen.audit),
    ] {
        let p = percentiles(samples);
        for (label, value, baseline, target) in [
            ("p50", p.0, log.0, None),
            ("p99", p.1, log.1, Some(50.0)),
            ("max", p.2, log.2, None),
        ] {
            rows.push(Row3 {
                scenario: format!("event -> {name} {label} @ {rate}/s"),
                idp: value,
                baseline,
                unit: "ms",
                target: target.map_or_else(|| "-".into(), |t| format!("<= {t:.0} ms")),
                met: target.is_none_or(|t| value <= t),
            });
        }
    }
    Ok(())
}

/// Polls until every probe is visible in the log, in `users_directory` and in `audit_view`,
/// on one connection of its own, and returns the latencies. Ends when the appender is done
/// and nothing is pending (or 30 s after the appender stopped).
async fn watch(
    pool: PgPool,
    mut probes: tokio::sync::mpsc::UnboundedReceiver<Probe>,
) -> anyhow::Result<Seen> {
    let mut conn = pool.acquire().await?;
    let mut seen = Seen::default();
    let (mut in_log, mut in_directory, mut in_audit): (Vec<Probe>, Vec<Probe>, Vec<Probe>) =
        Default::default();
    let mut appender_done = None;
    loop {
        loop {
            match probes.try_recv() {
                Ok(probe) => {
                    in_log.push(probe);
                    in_directory.push(probe);
                    in_audit.push(probe);
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    appender_done.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if let Some(done) = appender_done {
            let pending = in_log.len() + in_directory.len() + in_audit.len();
            if pending == 0 || done.elapsed() > Duration::from_secs(30) {
                return Ok(seen);
            }
        }

        if !in_log.is_empty() {
            let positions: Vec<i64> = in_log.iter().map(|p| p.position).collect();
            let visible: Vec<i64> =
                sqlx::query_scalar("select position from events where position = any($1)")
                    .bind(&positions)
                    .fetch_all(&mut *conn)
                    .await?;
            settle(&mut in_log, &mut seen.log, |p| {
                visible.contains(&p.position)
            });
        }
        if !in_audit.is_empty() {
            let positions: Vec<i64> = in_audit.iter().map(|p| p.position).collect();
            let visible: Vec<i64> =
                sqlx::query_scalar("select position from audit_view where position = any($1)")
                    .bind(&positions)
                    .fetch_all(&mut *conn)
                    .await?;
            settle(&mut in_audit, &mut seen.audit, |p| {
                visible.contains(&p.position)
            });
        }
        if !in_directory.is_empty() {
            let accounts: Vec<Uuid> = in_directory.iter().map(|p| p.account).collect();
            let marks: HashMap<Uuid, (i64, i64)> = sqlx::query_as::<_, (Uuid, i64, i64)>(
                "select user_id, last_position, login_position from users_directory
                  where user_id = any($1)",
            )
            .bind(&accounts)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|(id, user, login)| (id, (user, login)))
            .collect();
            settle(&mut in_directory, &mut seen.directory, |p| {
                marks
                    .get(&p.account)
                    .is_some_and(|(user, login)| match p.mark {
                        Mark::UserStream => *user >= p.position,
                        Mark::LoginStream => *login >= p.position,
                    })
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Moves the probes that `visible` accepts from `pending` to `latencies`, timed now.
fn settle(
    pending: &mut Vec<Probe>,
    latencies: &mut Vec<Duration>,
    visible: impl Fn(&Probe) -> bool,
) {
    let now = Instant::now();
    pending.retain(|p| {
        if visible(p) {
            latencies.push(now - p.appended);
            false
        } else {
            true
        }
    });
}

/// p50, p99 and max in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99), at(1.0))
}

/// Paces `rate` operations per second over `duration`, spread across 8 tasks; `op` gets the
/// operation's number and its task's.
async fn paced<F, Fut>(rate: u64, duration: Duration, op: F) -> anyhow::Result<()>
where
    F: Fn(u64, u64) -> Fut + Send + Sync + Clone + 'static,
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
                op(i, t).await?;
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
