//! The event log as tests watch it: how many events of a type it holds, the cursor of its last
//! committed event, waiting until commit-safe readers see every committed event, and catching a
//! subscription up while another runner may still hold its lock.

use std::time::Duration;

use idp_events::subscription::{Handler, Subscription};
use idp_events::{Cursor, EventStore};
use sqlx::PgPool;

/// How many `event_type` events the log holds.
pub async fn count_events(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("select count(*) from events where event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The cursor of the last committed event, if any, visible to commit-safe readers or not yet.
pub async fn last_committed_if_any(pool: &PgPool) -> Option<Cursor> {
    let last: Option<(i64, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, position from events
          order by transaction_id desc, position desc limit 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    last.map(|(transaction_id, position)| Cursor {
        transaction_id,
        position,
    })
}

/// The cursor of the last committed event (visible to commit-safe readers or not yet); panics
/// on an empty log.
pub async fn last_committed(pool: &PgPool) -> Cursor {
    last_committed_if_any(pool)
        .await
        .expect("the log holds an event")
}

/// Waits until commit-safe readers see every committed event: an open transaction anywhere
/// in the cluster (another test's) holds them back for a while.
pub async fn await_visible(store: &EventStore) {
    let last = last_committed_if_any(store.pool()).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.head().await.unwrap() != last {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every committed event became visible within 10 s");
}

/// Catches `sub` up, waiting while another runner's lock is still being released; how many
/// events it handled.
pub async fn catch_up<H: Handler>(sub: &Subscription<H>) -> u64 {
    for _ in 0..100 {
        if let Some(handled) = sub.catch_up().await.unwrap() {
            return handled;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the subscription lock was never free");
}

/// Every `event_type` event of the log, oldest first, with its personal values opened (as the
/// test apps' key ring opens them): the way a test finds an event by an address, which the log
/// only holds sealed.
pub async fn opened_events(pool: &PgPool, event_type: &str) -> Vec<idp_events::RecordedEvent> {
    let streams: Vec<String> =
        sqlx::query_scalar("select stream_id from events where event_type = $1 group by stream_id")
            .bind(event_type)
            .fetch_all(pool)
            .await
            .unwrap();
    let store = crate::keys::event_store(pool.clone());
    let mut found = Vec::new();
    for stream in streams {
        let events = store.read_stream(stream.as_str(), 1).await.unwrap();
        found.extend(events.into_iter().filter(|e| e.event_type == event_type));
    }
    found.sort_by_key(|e| e.position);
    found
}

/// The `event_type` events whose personal string `field` reads `value`, oldest first.
pub async fn events_with(
    pool: &PgPool,
    event_type: &str,
    field: &str,
    value: &str,
) -> Vec<idp_events::RecordedEvent> {
    opened_events(pool, event_type)
        .await
        .into_iter()
        .filter(|e| {
            e.data
                .get(field)
                .and_then(idp_events::privacy::fields::known_text)
                == Some(value)
        })
        .collect()
}
