//! The event log against a real PostgreSQL: appends, concurrency, reservations, immutability,
//! hash chains, upcasting and commit-safe reading. Each test gets a fresh migrated database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use idp_events::chain::{BreakKind, verify_streams};
use idp_events::{
    Append, AppendError, Cursor, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId,
    Upcasters,
};
use idp_testkit::log::await_visible;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

fn event(n: i64) -> NewEvent {
    NewEvent::new("ThingHappened", json!({ "n": n }))
}

async fn pool_with(opts: PgPoolOptions, conn: PgConnectOptions, max: u32) -> PgPool {
    opts.max_connections(max).connect_with(conn).await.unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn appended_events_are_read_back_in_stream_order_with_their_metadata(pool: PgPool) {
    let store = EventStore::new(pool);
    let meta = Metadata {
        actor: Some("user-1".into()),
        request_id: Some("req-1".into()),
        ..Metadata::default()
    };
    let first = store
        .append(
            Append::to("thing-1")
                .events([event(1), event(2)])
                .metadata(meta.clone()),
        )
        .await
        .unwrap();
    assert_eq!(first.stream_version, 2);
    assert_eq!(first.positions.len(), 2);
    store
        .append(
            Append::to("thing-1")
                .expecting(ExpectedVersion::Exact(2))
                .event(event(3)),
        )
        .await
        .unwrap();

    let events = store.read_stream("thing-1", 1).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(events[0].data, json!({"n": 1}));
    assert_eq!(events[0].typed_metadata(), meta);
    assert_eq!(events[2].typed_metadata(), Metadata::default());

    let tail = store.read_stream("thing-1", 3).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].data, json!({"n": 3}));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stale_expected_version_is_a_typed_conflict(pool: PgPool) {
    let store = EventStore::new(pool);
    store.append(Append::to("s").event(event(1))).await.unwrap();

    let again = store.append(Append::to("s").event(event(2))).await;
    assert!(
        matches!(
            again,
            Err(AppendError::Conflict {
                expected: 0,
                actual: 1,
                ..
            })
        ),
        "{again:?}"
    );
    let stale = store
        .append(
            Append::to("s")
                .expecting(ExpectedVersion::Exact(5))
                .event(event(2)),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(AppendError::Conflict {
                expected: 5,
                actual: 1,
                ..
            })
        ),
        "{stale:?}"
    );
    let any = store
        .append(
            Append::to("s")
                .expecting(ExpectedVersion::Any)
                .event(event(2)),
        )
        .await
        .unwrap();
    assert_eq!(any.stream_version, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_empty_or_repeated_append_is_refused(pool: PgPool) {
    let store = EventStore::new(pool);
    assert!(matches!(
        store.append(Append::to("s")).await,
        Err(AppendError::Empty)
    ));
    let e = event(1);
    store
        .append(Append::to("s").event(e.clone()))
        .await
        .unwrap();
    let repeat = store.append(Append::to("other").event(e)).await;
    assert!(
        matches!(repeat, Err(AppendError::DuplicateEvent)),
        "{repeat:?}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_nul_character_in_a_payload_is_refused_as_invalid_not_a_database_failure(pool: PgPool) {
    let store = EventStore::new(pool);
    let bad = store
        .append(Append::to("s").event(NewEvent::new("T", json!({"name": "a\u{0}b"}))))
        .await;
    assert!(matches!(bad, Err(AppendError::InvalidEvent(_))), "{bad:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn fifty_writers_with_the_same_expected_version_yield_one_success_and_49_conflicts(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool_with(opts, conn, 20).await;
    let store = EventStore::new(pool);
    store
        .append(Append::to("race").event(event(0)))
        .await
        .unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .append(
                    Append::to("race")
                        .expecting(ExpectedVersion::Exact(1))
                        .event(event(n)),
                )
                .await
        });
    }
    let (mut ok, mut conflicts) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(outcome) => {
                ok += 1;
                assert_eq!(outcome.stream_version, 2);
            }
            Err(AppendError::Conflict { actual, .. }) => {
                conflicts += 1;
                assert_eq!(actual, 2);
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 49));

    let versions: Vec<i64> = store
        .read_stream("race", 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2]);
    assert!(
        verify_streams(store.pool(), None)
            .await
            .unwrap()
            .is_intact()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_any_appends_to_one_stream_keep_versions_contiguous(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool_with(opts, conn, 20).await;
    let store = EventStore::new(pool);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .append(
                    Append::to("busy")
                        .expecting(ExpectedVersion::Any)
                        .event(event(n)),
                )
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let versions: Vec<i64> = store
        .read_stream("busy", 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=40).collect::<Vec<_>>());
    assert!(
        verify_streams(store.pool(), None)
            .await
            .unwrap()
            .is_intact()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_claims_of_one_unique_value_have_exactly_one_winner(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool_with(opts, conn, 20).await;
    let store = EventStore::new(pool);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..30 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .append(
                    Append::to(format!("user-{n}"))
                        .event(NewEvent::new(
                            "UserRegistered",
                            json!({"email": "ada@example.com"}),
                        ))
                        .claim("email", "ada@example.com"),
                )
                .await
        });
    }
    let (mut ok, mut taken) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => ok += 1,
            Err(AppendError::ReservationTaken { scope }) => {
                assert_eq!(scope, "email");
                taken += 1;
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!((ok, taken), (1, 29));
    let registered: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'UserRegistered'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        registered, 1,
        "the losers' events were rolled back with their claims"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_released_value_can_be_claimed_by_another_stream(pool: PgPool) {
    let store = EventStore::new(pool);
    store
        .append(
            Append::to("user-a")
                .event(event(1))
                .claim("email", "x@example.com"),
        )
        .await
        .unwrap();
    // Claiming again from the holder is a no-op.
    store
        .append(
            Append::to("user-a")
                .expecting(ExpectedVersion::Exact(1))
                .event(event(2))
                .claim("email", "x@example.com"),
        )
        .await
        .unwrap();
    let blocked = store
        .append(
            Append::to("user-b")
                .event(event(1))
                .claim("email", "x@example.com"),
        )
        .await;
    assert!(matches!(blocked, Err(AppendError::ReservationTaken { .. })));
    store
        .append(
            Append::to("user-a")
                .expecting(ExpectedVersion::Exact(2))
                .event(event(3))
                .release("email", "x@example.com"),
        )
        .await
        .unwrap();
    store
        .append(
            Append::to("user-b")
                .event(event(1))
                .claim("email", "x@example.com"),
        )
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn the_database_refuses_to_update_delete_or_truncate_the_log(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store.append(Append::to("s").event(event(1))).await.unwrap();
    for statement in [
        "update events set data = '{}'::jsonb",
        "delete from events",
        "truncate events",
    ] {
        let err = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("IE003"), "{statement}: {err}");
    }
    assert_eq!(
        store.read_stream("s", 1).await.unwrap()[0].data,
        json!({"n": 1})
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_verifier_names_the_event_a_superuser_edited_behind_the_triggers(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(Append::to("a").events((1..=3).map(event)))
        .await
        .unwrap();
    store
        .append(Append::to("b").events((1..=4).map(event)))
        .await
        .unwrap();
    store
        .append(Append::to("c").event(NewEvent::new(
            "Nested",
            json!({"z": [1.5, -0.0, {"y": null, "x": "é"}], "a": 1e300}),
        )))
        .await
        .unwrap();
    let intact = verify_streams(&pool, None).await.unwrap();
    assert!(intact.is_intact(), "{:?}", intact.first_break);
    assert_eq!((intact.streams, intact.events), (3, 8));

    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("alter table events disable trigger events_immutable")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "update events set data = '{\"n\": 99}' where stream_id = 'b' and stream_version = 3",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("alter table events enable trigger events_immutable")
        .execute(&mut *conn)
        .await
        .unwrap();

    let report = verify_streams(&pool, None).await.unwrap();
    let broken = report.first_break.expect("the edit is found");
    assert_eq!((broken.stream_id.as_str(), broken.stream_version), ("b", 3));
    assert_eq!(broken.kind, BreakKind::HashMismatch);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_verifier_finds_a_deleted_event_and_a_reordered_pair(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(Append::to("del").events((1..=3).map(event)))
        .await
        .unwrap();
    store
        .append(Append::to("swap").events((1..=3).map(event)))
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("set session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("delete from events where stream_id = 'del' and stream_version = 2")
        .execute(&mut *conn)
        .await
        .unwrap();
    let report = verify_streams(&pool, Some("del")).await.unwrap();
    assert_eq!(
        report.first_break.map(|b| (b.stream_version, b.kind)),
        Some((3, BreakKind::MissingVersion { expected: 2 }))
    );

    // Swap versions 1 and 2 of `swap` (payloads and hashes move with their rows).
    for statement in [
        "alter table events drop constraint events_stream_version_positive",
        "update events set stream_version = -1 where stream_id = 'swap' and stream_version = 1",
        "update events set stream_version = 1 where stream_id = 'swap' and stream_version = 2",
        "update events set stream_version = 2 where stream_id = 'swap' and stream_version = -1",
    ] {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    let report = verify_streams(&pool, Some("swap")).await.unwrap();
    let broken = report.first_break.expect("the reordering is found");
    assert_eq!(
        (broken.stream_version, broken.kind),
        (1, BreakKind::HashMismatch)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn old_schema_versions_are_upcast_on_read_but_stored_as_written(pool: PgPool) {
    let raw = EventStore::new(pool.clone());
    raw.append(Append::to("u").event(NewEvent::new("Named", json!({"name": "Ada"}))))
        .await
        .unwrap();
    let upcasting = EventStore::with_upcasters(
        pool.clone(),
        Upcasters::default().register("Named", 1, |v| json!({ "display_name": v["name"] })),
    );
    let read = upcasting.read_stream("u", 1).await.unwrap();
    assert_eq!(
        (read[0].schema_version, &read[0].data),
        (2, &json!({"display_name": "Ada"}))
    );
    await_visible(&upcasting).await;
    let all = upcasting.read_all(Cursor::START, 10).await.unwrap();
    assert_eq!(all[0].schema_version, 2);
    assert_eq!(
        raw.read_stream("u", 1).await.unwrap()[0].data,
        json!({"name": "Ada"})
    );
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());
}

#[sqlx::test(migrations = "../migrations")]
async fn an_append_notifies_listeners_at_commit(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(idp_events::NOTIFY_CHANNEL).await.unwrap();
    let store = EventStore::new(pool);
    let outcome = store
        .append(Append::to("s").events([event(1), event(2)]))
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    assert_eq!(note.payload(), outcome.positions[1].to_string());
}

/// Transaction A appends and stays open; B appends and commits; the reader must not move past
/// A's event before A commits, and sees both after.
#[sqlx::test(migrations = "../migrations")]
async fn a_reader_never_skips_an_event_whose_transaction_commits_late(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool_with(opts, conn, 5).await;
    let store = EventStore::new(pool.clone());

    let mut a = pool.acquire().await.unwrap();
    let mut tx_a = a.begin().await.unwrap();
    let in_a = store
        .append_in(&mut tx_a, Append::to("stream-a").event(event(1)))
        .await
        .unwrap();

    let in_b = store
        .append(Append::to("stream-b").event(event(2)))
        .await
        .unwrap();
    assert!(
        in_b.positions[0] > in_a.positions[0],
        "B got the later position"
    );

    let first = store.read_all(Cursor::START, 100).await.unwrap();
    assert!(
        first.is_empty(),
        "B must wait behind the still-open A, or a reader would skip A: {first:?}"
    );

    tx_a.commit().await.unwrap();
    await_visible(&store).await;
    let mut cursor = Cursor::START;
    let mut seen = Vec::new();
    for page in 0..3 {
        let batch = store.read_all(cursor, 1).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(page < 2, "only two events exist");
        cursor = batch[0].cursor();
        seen.push(batch[0].position);
    }
    assert_eq!(
        seen,
        [in_a.positions[0], in_b.positions[0]],
        "both, in commit-safe order"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn read_all_pages_through_the_whole_log_without_gaps_or_repeats(pool: PgPool) {
    let store = EventStore::new(pool);
    for s in 0..10 {
        store
            .append(Append::to(format!("s-{s}")).events((0..7).map(event)))
            .await
            .unwrap();
    }
    await_visible(&store).await;
    let mut cursor = Cursor::START;
    let mut positions = Vec::new();
    loop {
        let batch = store.read_all(cursor, 9).await.unwrap();
        let Some(last) = batch.last() else { break };
        cursor = last.cursor();
        positions.extend(batch.iter().map(|e| e.position));
    }
    assert_eq!(positions.len(), 70);
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 70);
    assert_eq!(store.head().await.unwrap(), Some(cursor));
}

#[sqlx::test(migrations = "../migrations")]
async fn writers_with_a_stale_idea_of_the_head_conflict_and_the_chain_stays_intact(pool: PgPool) {
    // Two stores stand for two processes; each remembers the heads it wrote or read.
    let a = EventStore::new(pool.clone());
    let b = EventStore::new(pool.clone());
    a.append(Append::to("s").events([event(1)])).await.unwrap();
    a.append(
        Append::to("s")
            .expecting(ExpectedVersion::Exact(1))
            .event(event(2)),
    )
    .await
    .unwrap();
    assert_eq!(b.read_stream("s", 1).await.unwrap().len(), 2);
    b.append(
        Append::to("s")
            .expecting(ExpectedVersion::Exact(2))
            .event(event(3)),
    )
    .await
    .unwrap();

    // `a` still believes the head is version 2.
    let stale = a
        .append(
            Append::to("s")
                .expecting(ExpectedVersion::Exact(2))
                .event(event(4)),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(AppendError::Conflict {
                expected: 2,
                actual: 3,
                ..
            })
        ),
        "{stale:?}"
    );
    let exists = a.append(Append::to("s").event(event(4))).await;
    assert!(
        matches!(
            exists,
            Err(AppendError::Conflict {
                expected: 0,
                actual: 3,
                ..
            })
        ),
        "{exists:?}"
    );
    let any = a
        .append(
            Append::to("s")
                .expecting(ExpectedVersion::Any)
                .event(event(4)),
        )
        .await
        .unwrap();
    assert_eq!(any.stream_version, 4);
    let next = a
        .append(
            Append::to("s")
                .expecting(ExpectedVersion::Exact(4))
                .event(event(5)),
        )
        .await
        .unwrap();
    assert_eq!(next.stream_version, 5);

    // Batches take the same path.
    let batch = a
        .append(
            Append::to("s")
                .expecting(ExpectedVersion::Exact(5))
                .events([event(6), event(7)]),
        )
        .await
        .unwrap();
    assert_eq!(batch.stream_version, 7);
    assert_eq!(batch.positions.len(), 2);
    let stale_batch = b
        .append(
            Append::to("s")
                .expecting(ExpectedVersion::Exact(3))
                .events([event(8), event(9)]),
        )
        .await;
    assert!(
        matches!(
            stale_batch,
            Err(AppendError::Conflict {
                expected: 3,
                actual: 7,
                ..
            })
        ),
        "{stale_batch:?}"
    );
    let new_batch = b
        .append(Append::to("t").events([event(1), event(2), event(3)]))
        .await
        .unwrap();
    assert_eq!(new_batch.stream_version, 3);

    let versions: Vec<i64> = b
        .read_stream("s", 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
    let report = verify_streams(&pool, None).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.first_break);
}

#[sqlx::test(migrations = "../migrations")]
async fn several_streams_are_read_in_the_callers_transaction_upcast_and_in_the_order_asked(
    pool: PgPool,
) {
    let store = EventStore::with_upcasters(
        pool.clone(),
        Upcasters::default().register("Named", 1, |v| json!({ "display_name": v["name"] })),
    );
    let (ada, bob, nobody) = (
        StreamId::user(Uuid::now_v7()),
        StreamId::user(Uuid::now_v7()),
        StreamId::user(Uuid::now_v7()),
    );
    store
        .append(Append::to(&ada).events([event(1), event(2)]))
        .await
        .unwrap();
    store
        .append(Append::to(&bob).event(NewEvent::new("Named", json!({"name": "Bob"}))))
        .await
        .unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            Append::to(&ada)
                .expecting(ExpectedVersion::after(2))
                .event(event(3)),
        )
        .await
        .unwrap();
    let streams = store
        .read_streams_in(&mut tx, &[bob.clone(), nobody.clone(), ada.clone()])
        .await
        .unwrap();
    assert_eq!(streams.len(), 3);
    assert_eq!(
        (streams[0][0].schema_version, &streams[0][0].data),
        (2, &json!({"display_name": "Bob"})),
        "upcast on read"
    );
    assert!(streams[1].is_empty(), "a stream with no events reads empty");
    assert_eq!(
        streams[2]
            .iter()
            .map(|e| (e.stream_version, e.data["n"].as_i64()))
            .collect::<Vec<_>>(),
        [(1, Some(1)), (2, Some(2)), (3, Some(3))],
        "in stream order, with what the transaction appended itself"
    );
    assert_eq!(store.stream_version_in(&mut tx, &ada).await.unwrap(), 3);
    assert_eq!(store.stream_version_in(&mut tx, &nobody).await.unwrap(), 0);
    tx.rollback().await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        store.stream_version_in(&mut conn, &ada).await.unwrap(),
        2,
        "the rolled back append is gone"
    );
    let again = store
        .read_streams_in(&mut conn, std::slice::from_ref(&ada))
        .await
        .unwrap();
    assert_eq!(again[0].len(), 2);
    store
        .append(
            Append::to(&ada)
                .expecting(ExpectedVersion::after(2))
                .event(event(4)),
        )
        .await
        .unwrap();
    assert_eq!(store.stream_version(ada.as_str()).await.unwrap(), 3);
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());
}

#[sqlx::test(migrations = "../migrations")]
async fn an_event_and_a_reservation_name_the_stream_that_holds_them(pool: PgPool) {
    let store = EventStore::new(pool);
    let ada = StreamId::user(Uuid::now_v7());
    let first = NewEvent::new("Registered", json!({}));
    let first_id = first.event_id;
    store
        .append(
            Append::to(&ada)
                .event(first)
                .claim("email", "ada@example.com"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.stream_of_event(first_id, "Registered").await.unwrap(),
        Some(ada.clone())
    );
    assert_eq!(
        store
            .stream_of_event(first_id, "SomethingElse")
            .await
            .unwrap(),
        None,
        "the type must match too"
    );
    assert_eq!(
        store
            .stream_of_event(Uuid::now_v7(), "Registered")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.holder_of("email", "ada@example.com").await.unwrap(),
        Some(ada)
    );
    assert_eq!(
        store.holder_of("email", "bob@example.com").await.unwrap(),
        None
    );
    assert_eq!(
        store.holder_of("name", "ada@example.com").await.unwrap(),
        None
    );
}

// An append in a caller's transaction that rolled back once left its head in the store's cache:
// the next `Any` append of the same store built on it, as version 2 of a stream with no version
// 1, linked to a hash that was never committed.
#[sqlx::test(migrations = "../migrations")]
async fn a_rolled_back_append_is_not_built_on(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let stream = StreamId::user(Uuid::now_v7());
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            Append::to(&stream)
                .expecting(ExpectedVersion::NoStream)
                .event(event(1)),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let outcome = store
        .append(Append::to(&stream).event(event(2)))
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, 1);
    store
        .append(
            Append::to(&stream)
                .expecting(ExpectedVersion::after(1))
                .events([event(3), event(4)]),
        )
        .await
        .unwrap();
    let versions: Vec<i64> = store
        .read_stream(&stream, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());
}
