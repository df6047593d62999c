//! Async projections: read models the worker keeps from the log.

pub mod event_type_counts;

use idp_events::EventStore;
use idp_events::subscription::Subscription;

pub use event_type_counts::EventTypeCounts;

/// Names of every projection, as `idp-worker rebuild` accepts them.
pub const NAMES: &[&str] = &[EventTypeCounts::NAME];

/// The subscription running [`EventTypeCounts`].
pub fn event_type_counts(store: &EventStore) -> Subscription<EventTypeCounts> {
    Subscription::new(EventTypeCounts::NAME, EventTypeCounts, store)
}
