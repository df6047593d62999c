//! The idp event log.
//!
//! Every change of state in idp is a domain event appended to one PostgreSQL table. This crate
//! owns that table: appending with optimistic concurrency and uniqueness reservations
//! ([`EventStore`]), reading a stream or the whole log in commit-safe order, the per-stream hash
//! chain that makes tampering visible ([`chain`]), schema upcasting on read ([`Upcasters`]) and
//! subscriptions that keep read models current ([`subscription`]), the seals over the whole log
//! ([`seal`]) and every server key ([`keys`]).
//!
//! It knows nothing of HTTP or job queues; the `api` and `worker` crates build on it.

pub mod backoff;
pub mod chain;
mod error;
mod event;
pub mod identity;
pub mod jobs;
pub mod keys;
pub mod migrations;
mod notifier;
pub mod privacy;
pub mod project;
pub mod query;
pub mod replay;
pub mod seal;
mod store;
pub mod stream_id;
pub mod subscription;
mod tagged;
mod upcast;

pub use error::{AppendError, ReadError};
pub use event::{Cursor, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
pub use store::{Append, AppendOutcome, EventStore, NOTIFY_CHANNEL};
pub use stream_id::{Category, StreamId, StreamIdError};
pub use tagged::EventTypes;
pub use upcast::Upcasters;
