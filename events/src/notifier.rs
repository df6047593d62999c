//! Wake-up notifications for subscribers, sent after appends and coalesced.
//!
//! Subscribers LISTEN on [`NOTIFY_CHANNEL`](crate::NOTIFY_CHANNEL); the payload is the highest
//! position announced so far. Notifications are sent from a background task on its own short
//! statement rather than inside the appending transaction, because PostgreSQL serialises the
//! commits of all notifying transactions: under load one NOTIFY per append would turn
//! concurrent appends into one-at-a-time commits. Announcements made while a NOTIFY is in
//! flight are merged into the next one. A notification is only a hint: subscribers also poll,
//! and look again shortly when an announced event is not visible yet (for example because it
//! was announced before its transaction committed).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use sqlx::PgPool;
use tokio::sync::Notify;

/// Least time between two notifications.
const MIN_SPACING: std::time::Duration = std::time::Duration::from_millis(1);

#[derive(Debug)]
struct Shared {
    pool: PgPool,
    highest: AtomicI64,
    started: AtomicBool,
}

/// Announces appended positions to subscribers.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    wake: Arc<Notify>,
}

impl Notifier {
    /// A notifier sending through `pool`.
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                highest: AtomicI64::new(0),
                started: AtomicBool::new(false),
            }),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Announces that events up to `position` were appended. Never blocks the caller.
    pub(crate) fn announce(&self, position: i64) {
        self.shared.highest.fetch_max(position, Ordering::AcqRel);
        if !self.shared.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(Arc::downgrade(&self.shared), Arc::clone(&self.wake)));
        }
        self.wake.notify_one();
    }
}

/// Sends notifications until every clone of the store is gone. Holds the pool only while
/// sending, so dropping the store releases its connections.
async fn run(shared: Weak<Shared>, wake: Arc<Notify>) {
    let mut sent = 0_i64;
    loop {
        let (pool, position) = match shared.upgrade() {
            Some(strong) => (strong.pool.clone(), strong.highest.load(Ordering::Acquire)),
            None => return,
        };
        if position <= sent {
            drop(pool);
            // Wake up now and then to notice that the store is gone.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified()).await;
            continue;
        }
        if pool.is_closed() {
            return;
        }
        match sqlx::query("select pg_notify($1, $2)")
            .bind(crate::NOTIFY_CHANNEL)
            .bind(position.to_string())
            .execute(&pool)
            .await
        {
            Ok(_) => {
                sent = position;
                // Under load, merge the appends of the next moment into one notification
                // rather than sending one per append.
                tokio::time::sleep(MIN_SPACING).await;
            }
            Err(err) => {
                tracing::debug!(error = %err, "wake-up notification failed; subscribers will poll");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
