//! `/v1/admin/events` and its export over real HTTP against a fresh database: access, filters,
//! paging both ways, paging while appends run, the export's formats, size, memory and duration.
//!
//! Events are appended directly with the `EventStore`, as the commands and the worker do.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{TestApp, spawn_app};
use idp_events::privacy::fields::unmark;
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// The API, an admin's token, and a pool and store on its database.
struct Env {
    app: TestApp,
    admin: String,
    pool: PgPool,
    store: EventStore,
}

async fn env(conn: &PgConnectOptions, extra: &[&str]) -> Env {
    let mut args = common::ADMIN_ARGS.to_vec();
    args.extend_from_slice(extra);
    let app = spawn_app(conn, &args).await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let admin = app.token(common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;
    Env {
        app,
        admin,
        pool,
        store,
    }
}

/// A signed-in user without the admin role.
async fn user_token(env: &Env) -> String {
    env.app
        .verified_user(&env.pool, "bob@example.com", "a long enough password")
        .await
}

impl Env {
    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.app.get_auth(path_and_query, &self.admin).await
    }

    async fn page(&self, query: &str) -> Value {
        let response = self.get(&format!("/v1/admin/events?{query}")).await;
        assert_eq!(response.status(), 200, "{query}");
        response.json().await.unwrap()
    }

    /// Follows `next` from the first page to the end; the positions of every page.
    async fn page_forwards(&self, filter: &str, limit: usize) -> Vec<Vec<i64>> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = format!("limit={limit}");
            if !filter.is_empty() {
                query = format!("{filter}&{query}");
            }
            if let Some(c) = &cursor {
                query.push_str(&format!("&cursor={c}"));
            }
            let page = self.page(&query).await;
            pages.push(positions(&page));
            assert!(pages.len() < 10_000, "paging does not end: {filter}");
            match page["next"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return pages,
            }
        }
    }

    /// Every event of the log, straight from the table.
    async fn all_events(&self) -> Vec<RecordedEvent> {
        sqlx::query(
            "select e.position, e.transaction_id::text::bigint as transaction_id, e.event_id,
                    e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data,
                    e.metadata, e.recorded_at, e.hash
               from events e order by e.position",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .iter()
        .map(|row| RecordedEvent::from_row(row).unwrap())
        .collect()
    }
}

/// The cursor of the events after `position`. Cursors are opaque to clients; a test may know
/// what they hold, to resume at the head of the log where a page has no `next`.
fn after(position: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("f:{position}"))
}

fn positions(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect()
}

fn metadata(actor: &str, correlation: Option<Uuid>) -> Metadata {
    Metadata {
        actor: Some(actor.to_owned()),
        correlation_id: correlation,
        ..Metadata::default()
    }
}

fn events(event_type: &str, n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(
                event_type,
                json!({ "i": i, "note": format!("{event_type} #{i}") }),
            )
        })
        .collect()
}

/// Percent-encodes a query value.
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

#[sqlx::test(migrations = false)]
async fn the_event_routes_are_for_admins_only_and_refuse_bad_parameters_with_a_400(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let user = user_token(&env).await;
    for path in ["/v1/admin/events", "/v1/admin/events/export?format=csv"] {
        let anonymous = env.app.client.get(env.app.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let plain_user = env.app.get_auth(path, &user).await;
        assert_eq!(plain_user.status(), 403, "{path}");
        assert_eq!(
            plain_user.headers()["content-type"],
            "application/problem+json"
        );
    }

    let bad = [
        ("/v1/admin/events?limit=0", "limit"),
        ("/v1/admin/events?limit=1001", "limit"),
        ("/v1/admin/events?limit=ten", "limit"),
        ("/v1/admin/events?limit=5&limit=6", "more than once"),
        ("/v1/admin/events?cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("/v1/admin/events?cursor=%25%25", "cursor"),
        ("/v1/admin/events?stream=", "stream"),
        ("/v1/admin/events?stream_prefix=", "stream_prefix"),
        ("/v1/admin/events?stream=a%00b", "NUL"),
        ("/v1/admin/events?type=A,,B", "type"),
        ("/v1/admin/events?correlation_id=42", "correlation_id"),
        ("/v1/admin/events?from=yesterday", "from"),
        ("/v1/admin/events?to=2026-13-01T00:00:00Z", "to"),
        (
            "/v1/admin/events?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            "before",
        ),
        ("/v1/admin/events?colour=red", "unknown query parameter"),
        ("/v1/admin/events?format=csv", "unknown query parameter"),
        ("/v1/admin/events/export", "format is required"),
        ("/v1/admin/events/export?format=xml", "format"),
        (
            "/v1/admin/events/export?format=csv&limit=10",
            "unknown query parameter",
        ),
        (
            "/v1/admin/events/export?format=csv&cursor=Zjox",
            "unknown query parameter",
        ),
        ("/v1/admin/events/export?format=ndjson&from=now", "from"),
    ];
    for (path, says) in bad {
        let response = env.get(path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{path}: {detail}");
    }
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn every_filter_alone_and_combined_returns_exactly_the_matching_events_in_log_order(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let flow_a = Uuid::now_v7();
    let flow_b = Uuid::now_v7();
    let alice = format!("user-{}", Uuid::now_v7());
    let carol = format!("user-{}", Uuid::now_v7());
    let project = format!("project-{}", Uuid::now_v7());
    let job = format!("job-{}", Uuid::now_v7());
    let odd = "login-unknown-\"odd\", stream".to_owned();
    // Three rounds apart in time, so that time ranges have something to cut.
    for round in 0..3 {
        let version = |n: u64| {
            if round == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(n * round)
            }
        };
        let appends = [
            Append::to(&alice)
                .expecting(version(2))
                .events(events("UserRegistered", 1))
                .events(events("EmailVerified", 1))
                .metadata(metadata(&alice, Some(flow_a))),
            Append::to(&carol)
                .expecting(version(1))
                .events(events("UserLocked", 1))
                .metadata(metadata("user-admin", Some(flow_b))),
            Append::to(&project)
                .expecting(version(3))
                .events(events("ProjectRequested", 1))
                .events(events("ProvisioningStepSucceeded", 2))
                .metadata(metadata(&alice, Some(flow_a))),
            Append::to(&job)
                .expecting(version(2))
                .events(events("EmailSent", 2))
                .metadata(metadata("worker", None)),
            Append::to(&odd)
                .expecting(version(1))
                .events(events("LoginFailed", 1))
                .metadata(Metadata::default()),
        ];
        for append in appends {
            env.store.append(append).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let all = env.all_events().await;
    let round_starts: Vec<DateTime<Utc>> = {
        let mut times: Vec<DateTime<Utc>> = all
            .iter()
            .filter(|e| e.stream_id == alice && e.event_type == "UserRegistered")
            .map(|e| e.recorded_at)
            .collect();
        times.sort();
        times
    };
    assert_eq!(round_starts.len(), 3);
    let (t1, t2) = (round_starts[1], round_starts[2]);
    let actor = |e: &RecordedEvent| e.metadata["actor"].as_str().map(str::to_owned);
    let flow = |e: &RecordedEvent| e.metadata["correlation_id"].as_str().map(str::to_owned);

    type Check<'a> = (String, Box<dyn Fn(&RecordedEvent) -> bool + 'a>);
    let checks: Vec<Check> = vec![
        (String::new(), Box::new(|_| true)),
        (
            format!("stream={}", enc(&alice)),
            Box::new(|e| e.stream_id == alice),
        ),
        (
            format!("stream={}", enc(&odd)),
            Box::new(|e| e.stream_id == odd),
        ),
        (
            "stream_prefix=user-".into(),
            Box::new(|e| e.stream_id.starts_with("user-")),
        ),
        (
            "stream_prefix=project-".into(),
            Box::new(|e| e.stream_id.starts_with("project-")),
        ),
        (
            format!("stream_prefix={}", enc(&alice[..12])),
            Box::new(|e| e.stream_id.starts_with(&alice[..12])),
        ),
        (
            format!("stream_prefix={}", enc("login-unknown-\"")),
            Box::new(|e| e.stream_id.starts_with("login-unknown-\"")),
        ),
        ("stream_prefix=nobody-".into(), Box::new(|_| false)),
        (
            "type=EmailSent".into(),
            Box::new(|e| e.event_type == "EmailSent"),
        ),
        (
            "type=UserRegistered,UserLocked".into(),
            Box::new(|e| ["UserRegistered", "UserLocked"].contains(&e.event_type.as_str())),
        ),
        (
            "type=UserRegistered&type=LoginFailed&type=Nothing".into(),
            Box::new(|e| ["UserRegistered", "LoginFailed"].contains(&e.event_type.as_str())),
        ),
        (
            format!("actor={}", enc(&alice)),
            Box::new(|e| actor(e).as_deref() == Some(&alice)),
        ),
        (
            "actor=worker".into(),
            Box::new(|e| actor(e).as_deref() == Some("worker")),
        ),
        (
            format!("correlation_id={flow_a}"),
            Box::new(|e| flow(e) == Some(flow_a.to_string())),
        ),
        (
            format!("correlation_id={}", flow_b.to_string().to_uppercase()),
            Box::new(|e| flow(e) == Some(flow_b.to_string())),
        ),
        (
            format!("from={}", enc(&t1.to_rfc3339())),
            Box::new(|e| e.recorded_at >= t1),
        ),
        (
            format!("to={}", enc(&t1.to_rfc3339())),
            Box::new(|e| e.recorded_at < t1),
        ),
        (
            // The `+` of the offset left unencoded: it arrives as a space and is read back.
            format!("from={}&to={}", t1.to_rfc3339(), enc(&t2.to_rfc3339())),
            Box::new(|e| e.recorded_at >= t1 && e.recorded_at < t2),
        ),
        (
            format!("stream_prefix=user-&actor={}", enc(&alice)),
            Box::new(|e| e.stream_id.starts_with("user-") && actor(e).as_deref() == Some(&alice)),
        ),
        (
            format!(
                "type=ProvisioningStepSucceeded,UserRegistered&correlation_id={flow_a}&from={}",
                enc(&t1.to_rfc3339())
            ),
            Box::new(|e| {
                ["ProvisioningStepSucceeded", "UserRegistered"].contains(&e.event_type.as_str())
                    && flow(e) == Some(flow_a.to_string())
                    && e.recorded_at >= t1
            }),
        ),
        (
            format!(
                "stream={}&stream_prefix=project-&type=ProjectRequested&actor={}&correlation_id={flow_a}&from={}&to={}",
                enc(&project),
                enc(&alice),
                enc(&t1.to_rfc3339()),
                enc(&t2.to_rfc3339())
            ),
            Box::new(|e| {
                e.stream_id == project
                    && e.event_type == "ProjectRequested"
                    && e.recorded_at >= t1
                    && e.recorded_at < t2
            }),
        ),
        (
            format!("stream={}&actor=worker", enc(&alice)),
            Box::new(|_| false),
        ),
    ];
    for (query, matches) in &checks {
        let expected: Vec<i64> = all
            .iter()
            .filter(|e| matches(e))
            .map(|e| e.position)
            .collect();
        // Small pages, so that every filter is also paged.
        let paged: Vec<i64> = env.page_forwards(query, 2).await.concat();
        assert_eq!(paged, expected, "filter {query:?}");
        let whole = env.page(&format!("{query}&limit=1000")).await;
        assert_eq!(positions(&whole), expected, "filter {query:?} in one page");
    }
    assert!(
        checks.iter().filter(|(_, m)| all.iter().any(m)).count() >= 18,
        "the filters select something"
    );

    // Items carry the event as stored.
    let page = env.page(&format!("stream={}&limit=1", enc(&odd))).await;
    let item = &page["items"][0];
    let stored = all.iter().find(|e| e.stream_id == odd).unwrap();
    assert_eq!(item["event_id"], stored.event_id.to_string());
    assert_eq!(item["stream_version"], 1);
    assert_eq!(item["event_type"], "LoginFailed");
    assert_eq!(item["schema_version"], 1);
    assert_eq!(item["data"], stored.data);
    assert_eq!(item["metadata"], stored.metadata);
    assert_eq!(item["hash"], hex::encode(&stored.hash));
    let at: DateTime<Utc> = item["recorded_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(at, stored.recorded_at);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn paging_forwards_then_backwards_returns_the_same_pages(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    for s in 0..6 {
        env.store
            .append(
                Append::to(format!("user-{s}"))
                    .events(events("Something", 8))
                    .metadata(metadata("system", None)),
            )
            .await
            .unwrap();
    }
    let filter = "stream_prefix=user-";
    let mut forwards: Vec<Value> = Vec::new();
    let mut query = format!("{filter}&limit=7");
    loop {
        let page = env.page(&query).await;
        let items = positions(&page);
        assert!(
            items.windows(2).all(|w| w[0] < w[1]),
            "ascending within a page"
        );
        if forwards.is_empty() {
            assert!(page["prev"].is_null(), "the first page has no prev");
        } else {
            assert!(page["prev"].is_string());
        }
        let next = page["next"].as_str().map(str::to_owned);
        forwards.push(page);
        match next {
            Some(next) => query = format!("{filter}&limit=7&cursor={next}"),
            None => break,
        }
    }
    let all: Vec<i64> = forwards.iter().flat_map(positions).collect();
    let users: Vec<i64> = env
        .all_events()
        .await
        .iter()
        .filter(|e| e.stream_id.starts_with("user-"))
        .map(|e| e.position)
        .collect();
    assert_eq!(all, users);
    assert!(
        forwards.len() >= 7,
        "48 user events (and the admin's) in pages of 7"
    );

    // Back from the last page, one page at a time, to the first.
    let mut backwards: Vec<Vec<i64>> = vec![positions(forwards.last().unwrap())];
    let mut prev = forwards.last().unwrap()["prev"].as_str().map(str::to_owned);
    while let Some(cursor) = prev {
        let page = env.page(&format!("{filter}&limit=7&cursor={cursor}")).await;
        let items = positions(&page);
        assert!(
            items.windows(2).all(|w| w[0] < w[1]),
            "ascending within a page"
        );
        assert!(
            page["next"].is_string(),
            "a page reached backwards has a next"
        );
        backwards.push(items);
        prev = page["prev"].as_str().map(str::to_owned);
    }
    backwards.reverse();
    let forward_pages: Vec<Vec<i64>> = forwards.iter().map(positions).collect();
    assert_eq!(backwards, forward_pages);

    // `next` of a page reached backwards leads to the same page as going forwards did.
    let second_back = env
        .page(&format!(
            "{filter}&limit=7&cursor={}",
            forwards[2]["prev"].as_str().unwrap()
        ))
        .await;
    assert_eq!(positions(&second_back), forward_pages[1]);
    let again = env
        .page(&format!(
            "{filter}&limit=7&cursor={}",
            second_back["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(positions(&again), forward_pages[2]);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn time_ranges_find_events_recorded_out_of_position_order(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    // 3,000 events a millisecond apart from 2020-01-01, written straight into the table (the
    // log refuses changes, not inserts), with three recorded far out of position order, as a
    // process with a wrong clock or a long wait before its insert would. The admin's events,
    // appended first, are recorded now: later than all of these, at lower positions.
    sqlx::query(
        "insert into events (event_id, stream_id, stream_version, event_type, schema_version,
                             data, metadata, recorded_at, hash)
         select gen_random_uuid(), 'clock-' || i, 1, 'Ticked', 1, jsonb_build_object('i', i),
                '{}', timestamptz '2020-01-01 00:00:00Z' + interval '1 millisecond' * case i
                    when 50 then 2500 when 2900 then 100 when 1500 then 10 else i end,
                sha256(convert_to(i::text, 'UTF8'))
           from generate_series(0, 2999) as i order by i",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let all = env.all_events().await;
    let at = |ms: i64| {
        DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::milliseconds(ms)
    };
    let windows = [
        (Some(at(2400)), Some(at(2600))),
        (Some(at(90)), Some(at(110))),
        (Some(at(5)), Some(at(15))),
        (None, Some(at(120))),
        (Some(at(2950)), None),
        (Some(at(-10)), Some(at(1))),
        (Some(at(3000)), None),
        (None, Some(at(-1))),
    ];
    for (from, to) in windows {
        let mut query = Vec::new();
        if let Some(from) = from {
            query.push(format!("from={}", enc(&from.to_rfc3339())));
        }
        if let Some(to) = to {
            query.push(format!("to={}", enc(&to.to_rfc3339())));
        }
        let query = query.join("&");
        let expected: Vec<i64> = all
            .iter()
            .filter(|e| {
                from.is_none_or(|f| e.recorded_at >= f) && to.is_none_or(|t| e.recorded_at < t)
            })
            .map(|e| e.position)
            .collect();
        assert_eq!(
            env.page_forwards(&query, 7).await.concat(),
            expected,
            "{query}"
        );
        let expected = expected_fingerprints(
            &env,
            &format!(
                "{} and {}",
                from.map_or("true".into(), |f| format!(
                    "recorded_at >= '{}'",
                    f.to_rfc3339()
                )),
                to.map_or("true".into(), |t| format!(
                    "recorded_at < '{}'",
                    t.to_rfc3339()
                )),
            ),
        )
        .await;
        download(
            &env,
            &format!("format=ndjson&{query}"),
            Duration::ZERO,
            &expected,
        )
        .await;
    }
    env.app.stop().await;
}

/// Appends in transactions that take their id first and append later, in batches of varied
/// size: transactions overlap and commit out of position order.
async fn append_until(
    pool: PgPool,
    store: EventStore,
    writer: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) {
    let stream = format!("conc-{writer}");
    let mut version = 0_u64;
    let mut round = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let n = 1 + usize::try_from((round * 7 + writer as u64) % 5).unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("select pg_current_xact_id()")
            .execute(&mut *tx)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis((round + writer as u64) % 4)).await;
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        store
            .append_in(
                &mut tx,
                Append::to(&stream)
                    .expecting(expected)
                    .events(events("Ticked", n))
                    .metadata(metadata("worker", None)),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2 + round % 5)).await;
        tx.commit().await.unwrap();
        version += n as u64;
        count.fetch_add(n as u64, Ordering::Relaxed);
        // Slower than a reader pages, so that readers reach the end while appends go on.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn paging_while_appends_run_neither_repeats_nor_skips_an_event(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // The readers page as fast as the machine lets them, for as long as the writers run: more
    // requests than the administrator's plan allows a minute, which is not what this tests.
    let env = env(&conn, &["--rate-limit-requests", "false"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(append_until(
                env.pool.clone(),
                env.store.clone(),
                w,
                Arc::clone(&stop),
                Arc::clone(&appended),
            ))
        })
        .collect();
    while appended.load(Ordering::Relaxed) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Two readers follow the log to its head and keep following it while the writers go on:
    // at the head a page has no `next`, so the reader resumes after the last event it saw.
    // Then the writers stop and the readers read to the end.
    // Readers end only once every writer has finished (not merely been told to stop: appends
    // in flight still commit after that).
    let writers_done = Arc::new(AtomicBool::new(false));
    // How often each reader has reached the head so far: the writers go on until both have
    // reached it often enough, however slow the machine (tests share it, and under `cargo test`
    // this binary's tests run at once).
    let heads = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let follow = |filter: &'static str, heads: &Arc<AtomicUsize>| {
        let env = &env;
        let done = Arc::clone(&writers_done);
        let heads = Arc::clone(heads);
        async move {
            let mut seen: Vec<i64> = Vec::new();
            let mut at_head = 0;
            let mut cursor: Option<String> = None;
            loop {
                let writing = !done.load(Ordering::SeqCst);
                let mut query = format!("limit=10&{filter}");
                if let Some(c) = &cursor {
                    query.push_str(&format!("&cursor={c}"));
                }
                let page = env.page(&query).await;
                seen.extend(positions(&page));
                match page["next"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None if writing => {
                        at_head += 1;
                        heads.store(at_head, Ordering::Relaxed);
                        if let Some(&last) = seen.last() {
                            cursor = Some(after(last));
                        }
                    }
                    None => return (filter, seen, at_head),
                }
                assert!(seen.len() < 100_000, "following does not end");
            }
        }
    };
    let readers = async {
        tokio::join!(
            follow("", &heads[0]),
            follow("stream_prefix=conc-&type=Ticked", &heads[1])
        )
    };
    let stopper = async {
        // At least 2.5 s of appends, and until each reader has been at the head 20 times
        // (asserted below), for at most a minute.
        let started = Instant::now();
        while (started.elapsed() < Duration::from_millis(2500)
            || heads.iter().any(|h| h.load(Ordering::Relaxed) < 20))
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for writer in &writers {
            while !writer.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        writers_done.store(true, Ordering::SeqCst);
    };
    let ((first, second), ()) = tokio::join!(readers, stopper);
    for writer in writers {
        writer.await.unwrap();
    }

    let all = env.all_events().await;
    for (filter, seen, at_head) in [first, second] {
        assert!(
            at_head >= 20,
            "{filter:?}: reached the head only {at_head} times"
        );
        let unique: HashSet<i64> = seen.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{filter:?}: an event appeared twice"
        );
        let expected: Vec<i64> = all
            .iter()
            .filter(|e| filter.is_empty() || e.stream_id.starts_with("conc-"))
            .map(|e| e.position)
            .collect();
        assert_eq!(seen, expected, "{filter:?}: events skipped or out of order");
    }
    assert_eq!(
        all.iter()
            .filter(|e| e.stream_id.starts_with("conc-"))
            .count() as u64,
        appended.load(Ordering::Relaxed),
    );
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_page_waits_for_an_append_in_flight_below_a_committed_one(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    // Older transaction id, higher position: what a `transaction_id < xmin` horizon would show
    // while the lower position is still in flight, and then skip.
    let mut older = env.pool.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    let mut in_flight = env.pool.begin().await.unwrap();
    let low = env
        .store
        .append_in(
            &mut in_flight,
            Append::to("stepped-a").event(NewEvent::new("Low", json!({}))),
        )
        .await
        .unwrap();
    let high = env
        .store
        .append_in(
            &mut older,
            Append::to("stepped-b").event(NewEvent::new("High", json!({}))),
        )
        .await
        .unwrap();
    older.commit().await.unwrap();
    assert!(low.positions[0] < high.positions[0]);
    assert!(low.transaction_id > high.transaction_id);

    let started = Instant::now();
    let page = {
        let request = env.page("stream_prefix=stepped-&limit=1");
        let commit = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            in_flight.commit().await.unwrap();
        };
        let (page, ()) = tokio::join!(request, commit);
        page
    };
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the page waited"
    );
    assert_eq!(positions(&page), [low.positions[0]]);
    let next = env
        .page(&format!(
            "stream_prefix=stepped-&limit=1&cursor={}",
            page["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(positions(&next), [high.positions[0]]);

    // A writer that stays open past the wait gets a 503, not a page that could skip its event.
    let mut lingering = env.pool.begin().await.unwrap();
    env.store
        .append_in(
            &mut lingering,
            Append::to("stepped-c").event(NewEvent::new("Late", json!({}))),
        )
        .await
        .unwrap();
    let refused = env.get("/v1/admin/events?limit=1").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    lingering.rollback().await.unwrap();
    let after = env.page("stream_prefix=stepped-").await;
    assert_eq!(positions(&after), [low.positions[0], high.positions[0]]);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_page_at_the_end_of_the_log_resumes_with_only_the_events_appended_since(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let filter = "stream_prefix=tail-&limit=5";
    // Nothing matches yet: the page is empty, has no `next`, and still says where to resume.
    let empty = env.page(filter).await;
    assert!(positions(&empty).is_empty());
    assert!(empty["next"].is_null());
    let mut resume = empty["resume"].as_str().unwrap().to_owned();

    let mut seen: Vec<i64> = Vec::new();
    let mut appended: Vec<i64> = Vec::new();
    for round in 0..4 {
        let outcome = env
            .store
            .append(Append::to(format!("tail-{round}")).events(events("Tailed", 3)))
            .await
            .unwrap();
        appended.extend(&outcome.positions);
        // Events of other streams move the log on without matching.
        env.store
            .append(Append::to(format!("other-{round}")).events(events("Other", 2)))
            .await
            .unwrap();
        let page = env.page(&format!("{filter}&cursor={resume}")).await;
        assert_eq!(positions(&page), outcome.positions, "round {round}");
        assert!(page["next"].is_null(), "the end of the log");
        seen.extend(positions(&page));
        resume = page["resume"].as_str().unwrap().to_owned();
        // Asking again at once repeats nothing.
        let again = env.page(&format!("{filter}&cursor={resume}")).await;
        assert!(positions(&again).is_empty(), "round {round}: {again}");
        assert_eq!(again["resume"], resume.as_str());
    }
    assert_eq!(seen, appended);

    // A full page resumes where `next` does.
    let full = env.page("stream_prefix=tail-&limit=2").await;
    assert_eq!(full["resume"], full["next"]);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_writer_that_stays_open_gets_a_503_with_retry_after_and_the_cause(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    env.store
        .append(Append::to("held-1").events(events("Before", 1)))
        .await
        .unwrap();
    // A second connection appends and keeps its transaction open past the wait.
    let mut lingering = env.pool.begin().await.unwrap();
    env.store
        .append_in(
            &mut lingering,
            Append::to("held-2").event(NewEvent::new("Late", json!({}))),
        )
        .await
        .unwrap();
    for path in [
        "/v1/admin/events?stream_prefix=held-",
        "/v1/admin/events/export?format=ndjson",
    ] {
        let started = Instant::now();
        let refused = env.get(path).await;
        assert_eq!(refused.status(), 503, "{path}");
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{path}: waited for the writer first"
        );
        assert_eq!(refused.headers()["retry-after"], "1", "{path}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["type"], "https://idp.dev/problems/unavailable");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("writing to the event log stayed open"),
            "{path}: {detail}"
        );
    }
    lingering.commit().await.unwrap();
    let page = env.page("stream_prefix=held-").await;
    assert_eq!(
        positions(&page).len(),
        2,
        "both events once the writer ended"
    );
    env.app.stop().await;
}

/// Peak resident memory of this process (where the API runs too), in bytes.
fn peak_rss() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// Resident memory of this process now, in bytes.
fn current_rss() -> u64 {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kib: u64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Resets the peak to the current resident size, where the kernel allows it (Linux >= 4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A streaming RFC 4180 reader: feed bytes as they come, take whole records.
#[derive(Default)]
struct CsvReader {
    field: Vec<u8>,
    record: Vec<String>,
    quoted: bool,
    quote_seen: bool,
    records: Vec<Vec<String>>,
}

impl CsvReader {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.quoted {
                if self.quote_seen {
                    self.quote_seen = false;
                    if b == b'"' {
                        self.field.push(b'"');
                        continue;
                    }
                    self.quoted = false;
                } else if b == b'"' {
                    self.quote_seen = true;
                    continue;
                } else {
                    self.field.push(b);
                    continue;
                }
            }
            match b {
                b'"' if self.field.is_empty() => self.quoted = true,
                b',' => self.end_field(),
                b'\r' => {}
                b'\n' => {
                    self.end_field();
                    self.records.push(std::mem::take(&mut self.record));
                }
                _ => self.field.push(b),
            }
        }
    }

    fn end_field(&mut self) {
        let field = String::from_utf8(std::mem::take(&mut self.field)).unwrap();
        self.record.push(field);
    }
}

/// What an exported event is compared by: position, id, stream, version, type and a digest of
/// its data and metadata (parsed, re-serialised).
type Fingerprint = (i64, Uuid, String, i64, String, [u8; 32]);

fn fingerprint(
    position: i64,
    event_id: Uuid,
    stream_id: &str,
    version: i64,
    event_type: &str,
    data: &Value,
    metadata: &Value,
) -> Fingerprint {
    let mut digest = Sha256::new();
    digest.update(serde_json::to_vec(data).unwrap());
    digest.update([0]);
    digest.update(serde_json::to_vec(metadata).unwrap());
    (
        position,
        event_id,
        stream_id.to_owned(),
        version,
        event_type.to_owned(),
        digest.finalize().into(),
    )
}

/// The fingerprints of the events matching `sql_filter`, read in batches, with their personal
/// values opened as the export shows them.
async fn expected_fingerprints(env: &Env, sql_filter: &str) -> Vec<Fingerprint> {
    let mut out = Vec::new();
    let mut after = 0_i64;
    loop {
        let rows = sqlx::query(&format!(
            "select e.position, e.transaction_id::text::bigint as transaction_id, e.event_id,
                    e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data,
                    e.metadata, e.recorded_at, e.hash
               from events e where e.position > $1 and ({sql_filter})
              order by e.position limit 5000"
        ))
        .bind(after)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        let mut events: Vec<RecordedEvent> = rows
            .iter()
            .map(|row| RecordedEvent::from_row(row).unwrap())
            .collect();
        let Some(last) = events.last() else {
            return out;
        };
        after = last.position;
        env.store.open_personal(None, &mut events).await.unwrap();
        for event in &mut events {
            unmark(&mut event.data);
            unmark(&mut event.metadata);
        }
        out.extend(events.iter().map(|e| {
            fingerprint(
                e.position,
                e.event_id,
                &e.stream_id,
                e.stream_version,
                &e.event_type,
                &e.data,
                &e.metadata,
            )
        }));
    }
}

/// Downloads an export chunk by chunk, parsing as it goes and comparing each event with the
/// next `expected` one (so that the test itself holds no more than a chunk); returns the number
/// of events, the size in bytes and the response headers. `pause` holds the download after the
/// first chunk.
async fn download(
    env: &Env,
    query: &str,
    pause: Duration,
    expected: &[Fingerprint],
) -> (usize, u64, reqwest::header::HeaderMap) {
    let mut response = env.get(&format!("/v1/admin/events/export?{query}")).await;
    assert_eq!(response.status(), 200, "{query}");
    let headers = response.headers().clone();
    let csv = query.contains("format=csv");
    let mut size = 0_u64;
    let mut seen = 0_usize;
    let mut check = |got: Fingerprint| {
        assert!(seen < expected.len(), "{query}: more events than expected");
        assert!(
            got == expected[seen],
            "{query}: event {seen} differs: {got:?}, expected {:?}",
            expected[seen]
        );
        seen += 1;
    };
    let mut csv_reader = CsvReader::default();
    let mut header_seen = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut first = true;
    while let Some(chunk) = response.chunk().await.unwrap() {
        size += chunk.len() as u64;
        if first {
            first = false;
            tokio::time::sleep(pause).await;
        }
        if csv {
            csv_reader.feed(&chunk);
            for record in csv_reader.records.drain(..) {
                if !header_seen {
                    header_seen = true;
                    assert_eq!(
                        record,
                        [
                            "position",
                            "event_id",
                            "stream_id",
                            "stream_version",
                            "event_type",
                            "schema_version",
                            "recorded_at",
                            "hash",
                            "data",
                            "metadata"
                        ]
                    );
                    continue;
                }
                assert_eq!(record.len(), 10, "{record:?}");
                let _: DateTime<Utc> = record[6].parse().unwrap();
                assert_eq!(record[7].len(), 64);
                check(fingerprint(
                    record[0].parse().unwrap(),
                    record[1].parse().unwrap(),
                    &record[2],
                    record[3].parse().unwrap(),
                    &record[4],
                    &serde_json::from_str(&record[8]).unwrap(),
                    &serde_json::from_str(&record[9]).unwrap(),
                ));
            }
        } else {
            pending.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                let line: Value = serde_json::from_slice(&pending[start..start + end]).unwrap();
                start += end + 1;
                let _: DateTime<Utc> = line["recorded_at"].as_str().unwrap().parse().unwrap();
                assert_eq!(line["hash"].as_str().unwrap().len(), 64);
                check(fingerprint(
                    line["position"].as_i64().unwrap(),
                    line["event_id"].as_str().unwrap().parse().unwrap(),
                    line["stream_id"].as_str().unwrap(),
                    line["stream_version"].as_i64().unwrap(),
                    line["event_type"].as_str().unwrap(),
                    &line["data"],
                    &line["metadata"],
                ));
            }
            pending.drain(..start);
        }
    }
    if csv {
        assert!(header_seen, "a CSV export starts with its header");
        assert!(
            csv_reader.field.is_empty() && csv_reader.record.is_empty(),
            "ends with a line end"
        );
    } else {
        assert!(pending.is_empty(), "ends with a line end");
    }
    assert_eq!(seen, expected.len(), "{query}: events missing");
    (seen, size, headers)
}

#[sqlx::test(migrations = false)]
async fn an_export_of_100000_events_parses_back_to_exactly_the_events_in_flat_memory(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    // ~1 KB of data per event, with what CSV must quote and JSON must escape.
    let filler = "lorem, \"ipsum\"\nd\u{f6}lor \u{1f600} ".repeat(30);
    for batch in 0..100 {
        let batch_events: Vec<NewEvent> = (0..1000)
            .map(|i| {
                NewEvent::new(
                    if i % 3 == 0 {
                        "ThingHappened"
                    } else {
                        "OtherThingHappened"
                    },
                    json!({ "batch": batch, "i": i, "text": filler, "big": 12345678901234567_i64 }),
                )
            })
            .collect();
        env.store
            .append(
                Append::to(format!("bulk-{batch}"))
                    .events(batch_events)
                    .metadata(metadata("system", Some(Uuid::now_v7()))),
            )
            .await
            .unwrap();
    }
    let expected = expected_fingerprints(&env, "true").await;
    assert!(expected.len() > 100_000);

    for format in ["ndjson", "csv"] {
        let resettable = reset_peak_rss();
        let before = current_rss();
        let started = Instant::now();
        let (got, size, headers) =
            download(&env, &format!("format={format}"), Duration::ZERO, &expected).await;
        let elapsed = started.elapsed();
        let growth = peak_rss().saturating_sub(before);
        println!(
            "export {format}: {got} events, {:.1} MiB in {:.2} s; resident {:.1} MiB before, \
             peak {:.1} MiB during: grew by {:.1} MiB (peak reset: {resettable})",
            size as f64 / 1048576.0,
            elapsed.as_secs_f64(),
            before as f64 / 1048576.0,
            (before + growth) as f64 / 1048576.0,
            growth as f64 / 1048576.0,
        );
        assert_eq!(got, expected.len(), "{format}: event count");
        assert!(
            size > 100 * 1024 * 1024,
            "{format}: a large export ({size} bytes)"
        );
        assert!(
            growth < 64 * 1024 * 1024,
            "{format}: memory grew by {growth} bytes for a {size}-byte export"
        );
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with(if format == "csv" {
                "text/csv"
            } else {
                "application/x-ndjson"
            }),
            "{content_type}"
        );
        let disposition = headers["content-disposition"].to_str().unwrap();
        let name = disposition
            .strip_prefix("attachment; filename=\"idp-events-")
            .and_then(|rest| rest.strip_suffix(&format!(".{format}\"")))
            .unwrap_or_else(|| panic!("{disposition}"));
        assert!(
            chrono::NaiveDateTime::parse_from_str(name, "%Y%m%dT%H%M%SZ").is_ok(),
            "{disposition}"
        );
    }
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_export_keeps_streaming_past_the_request_timeout(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &["--request-timeout-secs", "1"]).await;
    let filler = "x".repeat(500);
    for batch in 0..20 {
        env.store
            .append(
                Append::to(format!("slow-{batch}"))
                    .events(
                        (0..1000)
                            .map(|i| NewEvent::new("Padded", json!({ "i": i, "pad": filler }))),
                    )
                    .metadata(metadata("system", None)),
            )
            .await
            .unwrap();
    }
    let expected = expected_fingerprints(&env, "stream_id like 'slow-%'").await;
    let started = Instant::now();
    // A reader that stops for 1.5 s after the first chunk: the body is still being sent when the
    // 1 s timeout has long passed.
    let (got, size, _) = download(
        &env,
        "format=ndjson&stream_prefix=slow-",
        Duration::from_millis(1500),
        &expected,
    )
    .await;
    assert!(started.elapsed() > Duration::from_millis(1500));
    assert!(
        size > 10 * 1024 * 1024,
        "more than the socket buffers hold: {size}"
    );
    assert_eq!(got, 20_000, "the whole export arrived");
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn exports_apply_the_filters_and_keep_awkward_values_intact(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let flow = Uuid::now_v7();
    let awkward = "odd-\"quoted\", comma\r\nand line";
    env.store
        .append(
            Append::to(awkward)
                .events([
                    NewEvent::new(
                        "Weird,Type",
                        json!({ "s": "a,b \"c\"\r\nd", "u": "\u{e9}\u{1f600}", "n": 1.5 }),
                    ),
                    NewEvent::new("Plain", json!([1, "two", null])),
                ])
                .metadata(metadata("someone, \"quoted\"", Some(flow))),
        )
        .await
        .unwrap();
    env.store
        .append(
            Append::to("other-1")
                .events(events("Plain", 3))
                .metadata(metadata("worker", None)),
        )
        .await
        .unwrap();
    let cases = [
        (
            format!("stream={}", enc(awkward)),
            format!("stream_id = '{}'", awkward.replace('\'', "''")),
        ),
        (
            format!("correlation_id={flow}"),
            format!("metadata->>'correlation_id' = '{flow}'"),
        ),
        (
            "type=Plain&actor=worker".into(),
            "event_type = 'Plain' and metadata->>'actor' = 'worker'".into(),
        ),
        ("type=Weird%2CType".into(), "false".into()),
        ("type=Nothing".into(), "false".into()),
        ("stream_prefix=odd-".into(), "stream_id like 'odd-%'".into()),
    ];
    for format in ["csv", "ndjson"] {
        for (query, sql) in &cases {
            let expected = expected_fingerprints(&env, sql).await;
            let (got, size, _) = download(
                &env,
                &format!("format={format}&{query}"),
                Duration::ZERO,
                &expected,
            )
            .await;
            assert_eq!(got, expected.len(), "{format} {query}");
            if expected.is_empty() && format == "ndjson" {
                assert_eq!(size, 0, "an empty NDJSON export is empty");
            }
        }
    }
    // `Weird,Type` is two types when split at the comma; the quoted stream is one stream.
    let weird = expected_fingerprints(&env, "event_type = 'Weird,Type'").await;
    assert_eq!(weird.len(), 1);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_openapi_document_describes_the_event_routes(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    let list = &doc["paths"]["/v1/admin/events"]["get"];
    let names: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "stream",
        "stream_prefix",
        "type",
        "actor",
        "correlation_id",
        "from",
        "to",
        "limit",
        "cursor",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(list["responses"]["200"].is_object());
    assert!(list["responses"]["403"].is_object());
    let export = &doc["paths"]["/v1/admin/events/export"]["get"];
    let content = &export["responses"]["200"]["content"];
    assert!(content["text/csv"].is_object() && content["application/x-ndjson"].is_object());
    assert!(
        export["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "format" && p["required"] == true)
    );
    assert!(doc["components"]["schemas"]["EventPage"].is_object());
    assert!(doc["components"]["schemas"]["LoggedEvent"].is_object());
    app.stop().await;
}
