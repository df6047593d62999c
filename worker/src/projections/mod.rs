//! Async projections: read models the worker keeps from the log.

pub mod audit_view;
pub mod event_type_counts;
pub mod users_directory;

use idp_events::EventStore;
use idp_events::subscription::{Handler, Subscription, SubscriptionOptions};
use sqlx::PgConnection;
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
        .with_options(set_based_options())
}

/// The subscription running [`AuditView`].
pub fn audit_view(store: &EventStore) -> Subscription<AuditView> {
    Subscription::new(AuditView::NAME, AuditView::default(), store)
        .with_options(set_based_options())
}

/// Options of the read models that write a whole batch at once: bigger batches than the
/// default spread each batch's fixed costs (the read, the checkpoint, the commit) over more
/// events when rebuilding; live, a batch holds only what arrived since the last one anyway.
pub fn set_based_options() -> SubscriptionOptions {
    SubscriptionOptions {
        batch_size: 2_000,
        ..SubscriptionOptions::default()
    }
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

/// Lets the batch transaction on `conn` commit without waiting for its WAL to reach the disk.
/// Safe for a read model: its rows and the checkpoint covering them commit together, so a
/// crash can only lose both, and the subscription then redoes the batch from the log (whose
/// own commits stay synchronous). It saves a disk flush per batch, which dominates rebuilds.
pub(crate) async fn commit_without_flush_wait(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("set local synchronous_commit = off")
        .execute(conn)
        .await?;
    Ok(())
}
