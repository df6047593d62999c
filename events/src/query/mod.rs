//! The event log as an auditor reads it: filtered, paged in log order (by position) forwards and
//! backwards, or read whole for an export, without ever skipping an event that commits late.
//!
//! Events are returned as stored, not upcast: the data, schema version and hash are exactly what
//! the stream's hash chain covers.
//!
//! # Never skipping a late commit
//!
//! Positions are handed out at insert but become visible at commit, so an event may appear below
//! a position a reader has already passed. Cutting pages at `transaction_id <
//! pg_snapshot_xmin(...)` (the horizon of [`EventStore::read_all`](crate::EventStore::read_all))
//! is not enough for pages in *position* order: a transaction gets its id at its first write and
//! its positions at each insert, so a committed transaction older than the horizon can hold a
//! higher position than one still running (two interleaved multi-event appends are enough).
//!
//! So every read goes up to a *settled* position instead ([`horizon`]): the last position handed
//! out when it started, once every transaction that held a write lock on `events` at that moment
//! has ended. A transaction takes that lock before it draws a position and keeps it until it has
//! committed or rolled back, so every event at or below the settled position is visible for good
//! or never will be. Reading it costs two small queries; waiting costs as long as the appends in
//! flight take (milliseconds). A writer that stays open longer than [`WRITER_WAIT`] makes the
//! read fail with [`QueryError::Unsettled`] rather than return a page that could skip its events.

mod cursor;
pub mod export;
mod filter;
pub mod horizon;
mod page;
mod time_range;

use std::time::Duration;

pub use cursor::{CursorError, PageCursor};
pub use export::{ExportFormat, ExportRow, ExportSink, ExportSummary, export};
pub use filter::{EventFilter, StreamPrefix};
pub use horizon::WRITER_WAIT;
pub use page::{DEFAULT_LIMIT, MAX_LIMIT, Page, PageLimit, page};

use sqlx::PgConnection;

/// Why a query of the log failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A transaction writing to the log stayed open longer than [`WRITER_WAIT`]: the events it
    /// may hold below the last position cannot be told from gaps yet, so no page is safe.
    #[error(
        "{writers} transaction(s) writing to the event log stayed open longer than {} ms",
        waited.as_millis()
    )]
    Unsettled {
        /// How many writers were still open.
        writers: usize,
        /// How long the read waited for them.
        waited: Duration,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The keys of personal values could not be read or unwrapped.
    #[error("personal data keys are unavailable: {0}")]
    Keys(crate::privacy::SubjectKeysError),
}

impl From<crate::error::ReadError> for QueryError {
    fn from(err: crate::error::ReadError) -> Self {
        match err {
            crate::error::ReadError::Database(e) => Self::Database(e),
            crate::error::ReadError::Keys(e) => Self::Keys(e),
        }
    }
}

/// The positions a read covers: every event it may return lies in `first..=last`, and the log
/// is settled up to `horizon` (at least `last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The lowest position that may match.
    pub first: i64,
    /// The highest position that may match.
    pub last: i64,
    /// The settled position the read stops at: no event at or below it can still appear.
    pub horizon: i64,
}

impl Extent {
    /// Up to the settled horizon, narrowed to the positions of the filter's time range.
    ///
    /// # Errors
    /// [`QueryError::Unsettled`] when a writer stays open, or the database's error.
    pub async fn of(conn: &mut PgConnection, filter: &EventFilter) -> Result<Self, QueryError> {
        let horizon = horizon::settled(conn).await?;
        let (first, last) = if filter.from.is_some() || filter.to.is_some() {
            time_range::positions(conn, filter.from, filter.to, horizon).await?
        } else {
            (0, horizon)
        };
        Ok(Self {
            first,
            last: last.min(horizon),
            horizon,
        })
    }
}
