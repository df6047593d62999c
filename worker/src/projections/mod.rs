//! Async projections: read models the worker keeps from the log.

pub mod audit_view;
pub mod event_type_counts;
pub mod users_directory;

use idp_events::EventStore;
use idp_events::subscription::{Handler, Subscription};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use audit_view::AuditView;
pub use event_type_counts::EventTypeCounts;
pub use users_directory::UsersDirectory;

/// Names of every projection, as `idp-worker rebuild` accepts them.
pub const NAMES: &[&str] = &[EventTypeCounts::NAME, UsersDirectory::NAME, AuditView::NAME];

/// The subscription running [`EventTypeCounts`].
pub fn event_type_counts(store: &EventStore) -> Subscription<EventTypeCounts> {
    Subscription::new(EventTypeCounts::NAME, EventTypeCounts, store)
}

/// The subscription running [`UsersDirectory`].
pub fn users_directory(store: &EventStore) -> Subscription<UsersDirectory> {
    Subscription::new(UsersDirectory::NAME, UsersDirectory::default(), store)
}

/// The subscription running [`AuditView`].
pub fn audit_view(store: &EventStore) -> Subscription<AuditView> {
    Subscription::new(AuditView::NAME, AuditView::default(), store)
}

/// Starts every projection on `tasks`; each stops when `shutdown` is cancelled.
pub fn spawn_all(store: &EventStore, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
    spawn(tasks, event_type_counts(store), shutdown);
    spawn(tasks, users_directory(store), shutdown);
    spawn(tasks, audit_view(store), shutdown);
}

fn spawn<H: Handler>(tasks: &mut JoinSet<()>, sub: Subscription<H>, shutdown: &CancellationToken) {
    let token = shutdown.clone();
    tasks.spawn(async move { sub.run(token).await });
}
