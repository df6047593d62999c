//! `idp_events::query` against a real PostgreSQL: pages, their cursors at the end of the log,
//! the settled horizon with a writer in flight, time ranges and exports. Each test gets a
//! fresh migrated database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use chrono::Utc;
use idp_events::query::{
    self, EventFilter, ExportRow, ExportSink, Extent, PageCursor, PageLimit, QueryError,
    StreamPrefix, horizon,
};
use idp_events::{Append, EventStore, NewEvent};
use serde_json::json;
use sqlx::PgPool;

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new("ThingHappened", json!({ "i": i })))
        .collect()
}

async fn page(
    pool: &PgPool,
    filter: &EventFilter,
    cursor: Option<PageCursor>,
    limit: i64,
) -> query::Page {
    let mut conn = pool.acquire().await.unwrap();
    query::page(&mut conn, filter, cursor, PageLimit::new(limit).unwrap())
        .await
        .unwrap()
}

fn positions(page: &query::Page) -> Vec<i64> {
    page.events.iter().map(|e| e.position).collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn following_resume_reads_each_new_event_once(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let first = store
        .append(Append::to("thing-1").events(events(3)))
        .await
        .unwrap();
    let filter = EventFilter {
        stream_prefix: Some(StreamPrefix::new("thing-")),
        ..EventFilter::default()
    };
    let head = page(&pool, &filter, None, 10).await;
    assert_eq!(positions(&head), first.positions);
    assert_eq!(head.next, None, "nothing more matched");
    let again = page(&pool, &filter, Some(head.resume), 10).await;
    assert!(again.events.is_empty(), "resume repeats nothing");

    // Events of other streams move the horizon on; the filter's events come once each.
    store
        .append(Append::to("other-1").events(events(2)))
        .await
        .unwrap();
    let later = store
        .append(Append::to("thing-2").events(events(2)))
        .await
        .unwrap();
    let new = page(&pool, &filter, Some(again.resume), 10).await;
    assert_eq!(positions(&new), later.positions);
    let quiet = page(&pool, &filter, Some(new.resume), 10).await;
    assert!(quiet.events.is_empty());
    assert_eq!(quiet.resume, new.resume, "no new events: the same place");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_writer_that_stays_open_leaves_the_log_unsettled(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(Append::to("thing-1").events(events(1)))
        .await
        .unwrap();
    let mut open = pool.begin().await.unwrap();
    store
        .append_in(&mut open, Append::to("thing-2").events(events(1)))
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let err = horizon::settled_within(&mut conn, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueryError::Unsettled { writers: 1, waited } if waited == Duration::from_millis(100)),
        "{err:?}"
    );
    open.rollback().await.unwrap();
    assert!(
        horizon::settled_within(&mut conn, Duration::from_millis(100))
            .await
            .unwrap()
            >= 2
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_time_range_is_bounded_by_the_positions_of_its_events(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(Append::to("thing-1").events(events(5)))
        .await
        .unwrap();
    let from = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let inside = store
        .append(Append::to("thing-2").events(events(3)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let to = Utc::now();
    store
        .append(Append::to("thing-3").events(events(4)))
        .await
        .unwrap();
    let filter = EventFilter {
        from: Some(from),
        to: Some(to),
        ..EventFilter::default()
    };
    let mut conn = pool.acquire().await.unwrap();
    let extent = Extent::of(&mut conn, &filter).await.unwrap();
    assert!(extent.first <= inside.positions[0]);
    assert!(extent.last >= inside.positions[2]);
    assert!(extent.horizon >= inside.positions[2] + 4);
    let found = page(&pool, &filter, None, 100).await;
    assert_eq!(positions(&found), inside.positions);
}

/// Collects an export's positions; stops after `stop_after` rows if given.
struct Collect {
    positions: Vec<i64>,
    stop_after: Option<usize>,
}

impl ExportSink for Collect {
    async fn accept(&mut self, row: &ExportRow) -> bool {
        self.positions.push(row.position);
        self.stop_after != Some(self.positions.len())
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn an_export_hands_on_every_matching_event_in_log_order(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let wanted = store
        .append(Append::to("thing-1").events(events(4)))
        .await
        .unwrap();
    store
        .append(Append::to("other-1").events(events(2)))
        .await
        .unwrap();
    let filter = EventFilter {
        stream: Some("thing-1".into()),
        ..EventFilter::default()
    };
    let mut conn = pool.acquire().await.unwrap();
    let extent = Extent::of(&mut conn, &filter).await.unwrap();
    let mut all = Collect {
        positions: Vec::new(),
        stop_after: None,
    };
    let summary = query::export(&store, &filter, extent, &mut all)
        .await
        .unwrap();
    assert_eq!(all.positions, wanted.positions);
    assert_eq!((summary.events, summary.stopped), (4, false));

    let mut two = Collect {
        positions: Vec::new(),
        stop_after: Some(2),
    };
    let summary = query::export(&store, &filter, extent, &mut two)
        .await
        .unwrap();
    assert_eq!(two.positions, wanted.positions[..2]);
    assert_eq!(summary.events, 2);
    assert!(summary.stopped);
}
