//! Async projections: read models the worker keeps from the log.

pub mod event_type_counts;

use idp_events::EventStore;
use idp_events::subscription::Subscription;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use event_type_counts::EventTypeCounts;

/// Names of every projection, as `idp-worker rebuild` accepts them.
pub const NAMES: &[&str] = &[EventTypeCounts::NAME];

/// The subscription running [`EventTypeCounts`].
pub fn event_type_counts(store: &EventStore) -> Subscription<EventTypeCounts> {
    Subscription::new(EventTypeCounts::NAME, EventTypeCounts, store)
}

/// Starts every projection on `tasks`; each stops when `shutdown` is cancelled.
pub fn spawn_all(store: &EventStore, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
    let counts = event_type_counts(store);
    let token = shutdown.clone();
    tasks.spawn(async move { counts.run(token).await });
}
