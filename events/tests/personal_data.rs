//! Personal values in the log against a real PostgreSQL: sealed on every append path, opened
//! on every read, unreadable once their person's key is destroyed, with the chain intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idp_events::chain::verify_streams;
use idp_events::privacy::{KeyEncryptionKeys, Personal, SubjectKeys, SubjectKeysError};
use idp_events::{
    Append, AppendError, Cursor, EventStore, ExpectedVersion, NewEvent, StreamId, Upcasters,
};
use idp_testkit::log::await_visible;
use serde::Deserialize;
use serde_json::json;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

const ADDRESS: &str = "ada.lovelace@example.com";

fn keys(pool: &PgPool) -> SubjectKeys {
    let ring = idp_events::keys::SecretKeys::parse(
        "PERSONAL_DATA_KEYS",
        "k1:test-kek-test-kek-test-kek-test-kek-0001",
    )
    .unwrap();
    SubjectKeys::new(pool.clone(), KeyEncryptionKeys::from_ring(&ring))
}

fn store(pool: &PgPool) -> EventStore {
    EventStore::with_personal_data(pool.clone(), Upcasters::default(), keys(pool))
}

#[derive(Debug, Deserialize)]
struct Registered {
    email: Personal<String>,
    n: i64,
}

fn registered(n: i64) -> NewEvent {
    let email = serde_json::to_value(Personal::Known(ADDRESS.to_owned())).unwrap();
    NewEvent::new("Registered", json!({ "email": email, "n": n }))
}

async fn stored_text(pool: &PgPool) -> String {
    sqlx::query_scalar::<_, String>("select coalesce(string_agg(data::text, ' '), '') from events")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn read(events: &[idp_events::RecordedEvent]) -> Vec<(Personal<String>, i64)> {
    events
        .iter()
        .map(|e| {
            let r: Registered = serde_json::from_value(e.data.clone()).unwrap();
            (r.email, r.n)
        })
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn every_append_path_seals_and_every_read_opens(pool: PgPool) {
    let store = store(&pool);
    let ada = Uuid::now_v7();
    let stream = StreamId::user(ada);
    // One event on a known head (no stream yet), then one on an unknown head (a new store),
    // then two at once, then one in a caller's transaction with a reservation.
    store
        .append(Append::to(&stream).about(ada).event(registered(1)))
        .await
        .unwrap();
    let other = self::store(&pool);
    other
        .append(
            Append::to(&stream)
                .expecting(ExpectedVersion::Any)
                .about(ada)
                .event(registered(2)),
        )
        .await
        .unwrap();
    other
        .append(
            Append::to(&stream)
                .expecting(ExpectedVersion::after(2))
                .about(ada)
                .events([registered(3), registered(4)]),
        )
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            Append::to(&stream)
                .expecting(ExpectedVersion::after(4))
                .about(ada)
                .claim("thing", "five")
                .event(registered(5)),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let text = stored_text(&pool).await;
    assert!(!text.contains("ada.lovelace"), "{text}");
    assert!(text.contains("$sealed"));
    let expected: Vec<_> = (1..=5)
        .map(|n| (Personal::Known(ADDRESS.to_owned()), n))
        .collect();
    assert_eq!(
        read(&store.read_stream(&stream, 1).await.unwrap()),
        expected
    );
    // Commit-safe reading waits for other tests' transactions in the cluster.
    await_visible(&store).await;
    assert_eq!(
        read(&store.read_all(Cursor::START, 100).await.unwrap()),
        expected
    );
    let mut conn = pool.acquire().await.unwrap();
    let in_tx = store
        .read_streams_in(&mut conn, std::slice::from_ref(&stream))
        .await
        .unwrap();
    assert_eq!(read(&in_tx[0]), expected);
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_destroyed_key_erases_every_value_and_leaves_the_chain_intact(pool: PgPool) {
    let store = store(&pool);
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for (who, n) in [(ada, 1), (bob, 2)] {
        store
            .append(
                Append::to(StreamId::user(who))
                    .about(who)
                    .event(registered(n)),
            )
            .await
            .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    assert!(keys(&pool).erase_in(&mut conn, ada).await.unwrap());

    let erased = store.read_stream(StreamId::user(ada), 1).await.unwrap();
    assert_eq!(read(&erased), [(Personal::Erased, 1)]);
    assert_eq!(erased[0].data["email"], json!("[erased]"));
    let kept = store.read_stream(StreamId::user(bob), 1).await.unwrap();
    assert_eq!(read(&kept), [(Personal::Known(ADDRESS.to_owned()), 2)]);
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());

    let refused = store
        .append(
            Append::to(StreamId::user(ada))
                .expecting(ExpectedVersion::Any)
                .about(ada)
                .event(registered(3)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, AppendError::Personal(SubjectKeysError::Erased(id)) if id == ada),
        "{refused:?}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn personal_values_are_never_stored_in_the_clear(pool: PgPool) {
    let ada = Uuid::now_v7();
    let without_subject = store(&pool)
        .append(Append::to(StreamId::user(ada)).event(registered(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(without_subject, AppendError::InvalidEvent(_)),
        "{without_subject:?}"
    );
    let without_keys = EventStore::new(pool.clone())
        .append(
            Append::to(StreamId::user(ada))
                .about(ada)
                .event(registered(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(without_keys, AppendError::InvalidEvent(_)),
        "{without_keys:?}"
    );
    assert_eq!(stored_text(&pool).await, "");
    // Events without personal values need neither.
    EventStore::new(pool.clone())
        .append(Append::to("thing-1").event(NewEvent::new("Thing", json!({"n": 1}))))
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn a_ciphertext_copied_into_another_event_does_not_open(pool: PgPool) {
    let store = store(&pool);
    let ada = Uuid::now_v7();
    store
        .append(
            Append::to(StreamId::user(ada))
                .about(ada)
                .event(registered(1)),
        )
        .await
        .unwrap();
    let sealed: serde_json::Value =
        sqlx::query_scalar("select data -> 'email' from events where stream_id = $1")
            .bind(StreamId::user(ada).as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(sealed.get("$sealed").is_some());
    let mallory = Uuid::now_v7();
    store
        .append(Append::to(StreamId::user(mallory)).event(NewEvent::new(
            "Registered",
            json!({"email": sealed, "n": 2}),
        )))
        .await
        .unwrap();
    let copied = store.read_stream(StreamId::user(mallory), 1).await.unwrap();
    assert_eq!(read(&copied), [(Personal::Erased, 2)]);
    let original = store.read_stream(StreamId::user(ada), 1).await.unwrap();
    assert_eq!(read(&original), [(Personal::Known(ADDRESS.to_owned()), 1)]);
}

/// Client address and agent in metadata are sealed under the person's key and their day's:
/// destroying the day's key (retention) takes them from every event of that day, which keep
/// their actor and verify; what is written for a day whose key is gone keeps no value at all.
#[sqlx::test(migrations = "../migrations")]
async fn metadata_values_expire_with_their_day_and_the_chain_stays_intact(pool: PgPool) {
    let store = store(&pool);
    let ada = Uuid::now_v7();
    let stream = StreamId::user(ada);
    let metadata = idp_events::Metadata {
        actor: Some(stream.to_string()),
        client_ip: Some("192.0.2.77".into()),
        user_agent: Some("Lovelace-Browser/1.0".into()),
        ..idp_events::Metadata::default()
    };
    store
        .append(
            Append::to(&stream)
                .about(ada)
                .event(registered(1))
                .metadata(metadata.clone()),
        )
        .await
        .unwrap();
    let text: String = sqlx::query_scalar("select metadata::text from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        !text.contains("192.0.2.77") && !text.contains("Lovelace"),
        "{text}"
    );
    let events = store.read_stream(&stream, 1).await.unwrap();
    assert_eq!(
        events[0].metadata["client_ip"],
        json!({"$personal": "192.0.2.77"})
    );

    // Retention: every day before tomorrow is past.
    let tomorrow = chrono::Utc::now().date_naive() + chrono::Days::new(1);
    assert_eq!(
        keys(&pool).expire_periods_before(tomorrow).await.unwrap(),
        1
    );
    assert_eq!(
        keys(&pool).expire_periods_before(tomorrow).await.unwrap(),
        0
    );
    let events = store.read_stream(&stream, 1).await.unwrap();
    assert_eq!(events[0].metadata["client_ip"], json!("[erased]"));
    assert_eq!(events[0].metadata["user_agent"], json!("[erased]"));
    assert_eq!(events[0].metadata["actor"], json!(stream.to_string()));
    assert_eq!(
        read(&events),
        [(Personal::Known(ADDRESS.to_owned()), 1)],
        "the data, under the person's own key, stays"
    );
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());

    // Today's key is gone: a new append of today keeps its events and drops the values.
    store
        .append(
            Append::to(&stream)
                .expecting(ExpectedVersion::Any)
                .about(ada)
                .event(registered(2))
                .metadata(metadata),
        )
        .await
        .unwrap();
    let events = store.read_stream(&stream, 1).await.unwrap();
    assert_eq!(events[1].metadata["client_ip"], json!("[erased]"));
    let text: String = sqlx::query_scalar("select string_agg(metadata::text, ' ') from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!text.contains("192.0.2.77"), "{text}");
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());
}

/// Collects the data of the rows of an export.
struct Rows(Vec<serde_json::Value>);

impl idp_events::query::ExportSink for Rows {
    async fn accept(&mut self, row: &idp_events::query::ExportRow) -> bool {
        self.0.push(serde_json::from_str(&row.data).unwrap());
        true
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_event_query_and_the_export_open_values_and_show_erased_ones(pool: PgPool) {
    use idp_events::query::{self, EventFilter, Extent, PageLimit};

    let store = store(&pool);
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for (who, n) in [(ada, 1), (bob, 2)] {
        store
            .append(
                Append::to(StreamId::user(who))
                    .about(who)
                    .event(registered(n)),
            )
            .await
            .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    assert!(keys(&pool).erase_in(&mut conn, ada).await.unwrap());

    let filter = EventFilter {
        stream_prefix: Some(idp_events::query::StreamPrefix::new("user-")),
        ..EventFilter::default()
    };
    let mut page = query::page(&mut conn, &filter, None, PageLimit::new(10).unwrap())
        .await
        .unwrap();
    assert!(page.events[0].data["email"].get("$sealed").is_some());
    store
        .open_personal(Some(&mut conn), &mut page.events)
        .await
        .unwrap();
    let emails: Vec<_> = page
        .events
        .iter()
        .map(|e| e.data["email"].clone())
        .collect();
    assert_eq!(emails, [json!("[erased]"), json!({ "$personal": ADDRESS })]);

    let extent = Extent::of(&mut conn, &filter).await.unwrap();
    let mut rows = Rows(Vec::new());
    query::export(&store, &filter, extent, &mut rows)
        .await
        .unwrap();
    let emails: Vec<_> = rows.0.iter().map(|data| data["email"].clone()).collect();
    assert_eq!(emails, [json!("[erased]"), json!(ADDRESS)]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_key_kept_for_sealing_is_refused_once_another_process_erased_its_person(pool: PgPool) {
    let writer = store(&pool);
    let ada = Uuid::now_v7();
    let stream = StreamId::user(ada);
    for n in 1..=2 {
        // The second append seals with the key kept from the first.
        writer
            .append(
                Append::to(&stream)
                    .expecting(ExpectedVersion::after(n - 1))
                    .about(ada)
                    .event(registered(i64::try_from(n).unwrap())),
            )
            .await
            .unwrap();
    }
    // Another process (its own key table handle) erases the person.
    let mut conn = pool.acquire().await.unwrap();
    assert!(keys(&pool).erase_in(&mut conn, ada).await.unwrap());

    let refused = writer
        .append(
            Append::to(&stream)
                .expecting(ExpectedVersion::after(2))
                .about(ada)
                .event(registered(3)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, AppendError::Personal(SubjectKeysError::Erased(id)) if id == ada),
        "{refused:?}"
    );
    let events = writer.read_stream(&stream, 1).await.unwrap();
    assert_eq!(
        read(&events),
        [(Personal::Erased, 1), (Personal::Erased, 2)]
    );
    // And again, now without a kept key.
    let again = writer
        .append(
            Append::to(&stream)
                .expecting(ExpectedVersion::after(2))
                .about(ada)
                .event(registered(3)),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        again,
        AppendError::Personal(SubjectKeysError::Erased(_))
    ));
    assert!(verify_streams(&pool, None).await.unwrap().is_intact());
}
