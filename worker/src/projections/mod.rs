//! Async projections: read models the worker keeps from the log.
//!
//! Each projection is a [`Projection`] in a file of its own, listed once in [`for_each`]: the
//! worker runs every projection of that list, and `idp-worker rebuild` knows them by name.

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

/// A read model of the worker: the handler of a named subscription.
pub trait Projection: Handler + Default {
    /// The subscription's name (what `idp-worker rebuild` takes).
    const NAME: &'static str;

    /// The options of its subscription.
    fn options() -> SubscriptionOptions {
        SubscriptionOptions::default()
    }

    /// Its subscription over `store`'s log.
    fn subscription(store: &EventStore) -> Subscription<Self> {
        Subscription::new(Self::NAME, Self::default(), store).with_options(Self::options())
    }
}

/// Something done for each projection, one type at a time (see [`for_each`]).
pub trait Visit {
    /// Called once per projection.
    fn visit<P: Projection>(&mut self);
}

/// Visits every projection the worker keeps: the one list of them.
pub fn for_each(visitor: &mut impl Visit) {
    visitor.visit::<EventTypeCounts>();
    visitor.visit::<UsersDirectory>();
    visitor.visit::<AuditView>();
}

/// Names of every projection, as `idp-worker rebuild` accepts them.
pub fn names() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl Visit for Names {
        fn visit<P: Projection>(&mut self) {
            self.0.push(P::NAME);
        }
    }
    let mut names = Names(Vec::new());
    for_each(&mut names);
    names.0
}

/// The subscription running [`EventTypeCounts`].
pub fn event_type_counts(store: &EventStore) -> Subscription<EventTypeCounts> {
    EventTypeCounts::subscription(store)
}

/// The subscription running [`UsersDirectory`].
pub fn users_directory(store: &EventStore) -> Subscription<UsersDirectory> {
    UsersDirectory::subscription(store)
}

/// The subscription running [`AuditView`].
pub fn audit_view(store: &EventStore) -> Subscription<AuditView> {
    AuditView::subscription(store)
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
    struct Spawn<'a> {
        store: &'a EventStore,
        tasks: &'a mut JoinSet<()>,
        shutdown: &'a CancellationToken,
    }
    impl Visit for Spawn<'_> {
        fn visit<P: Projection>(&mut self) {
            let sub = P::subscription(self.store);
            let token = self.shutdown.clone();
            self.tasks.spawn(async move { sub.run(token).await });
        }
    }
    for_each(&mut Spawn {
        store,
        tasks,
        shutdown,
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_has_a_name_of_its_own() {
        let names = names();
        assert!(names.contains(&UsersDirectory::NAME), "{names:?}");
        let mut distinct = names.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), names.len());
    }
}
