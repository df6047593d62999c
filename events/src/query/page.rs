//! A page of the log: the events after or before a cursor, in ascending position order, and the
//! cursors that lead on.

use sqlx::{PgConnection, QueryBuilder};

use super::{EventFilter, Extent, PageCursor, QueryError};
use crate::RecordedEvent;

/// Events per page when the caller does not say.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page.
pub const MAX_LIMIT: i64 = 1000;

/// The size of a page: 1 to [`MAX_LIMIT`] events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(i64);

impl PageLimit {
    /// A page of `limit` events, if that is 1 to [`MAX_LIMIT`].
    pub fn new(limit: i64) -> Option<Self> {
        (1..=MAX_LIMIT).contains(&limit).then_some(Self(limit))
    }

    /// The number of events.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self(DEFAULT_LIMIT)
    }
}

/// A page of events and where to go from it.
#[derive(Debug, Clone)]
pub struct Page {
    /// The events, in ascending position order.
    pub events: Vec<RecordedEvent>,
    /// The following (newer) events; `None` when no more matched when the page was read.
    pub next: Option<PageCursor>,
    /// The preceding (older) events; `None` on the first page.
    pub prev: Option<PageCursor>,
    /// Where to read on after this page, at the end of the log too: the following events when
    /// more matched, otherwise the events appended after the page was read (none that it could
    /// have shown).
    pub resume: PageCursor,
}

const SELECT_EVENTS: &str = "select e.position, e.transaction_id::text::bigint as transaction_id,
        e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data,
        e.metadata, e.recorded_at, e.hash from events e";

/// Reads the page of `filter` at `cursor` (the first page without one), up to the settled
/// position.
///
/// # Errors
/// [`QueryError::Unsettled`] when a writer stays open, or the database's error.
pub async fn page(
    conn: &mut PgConnection,
    filter: &EventFilter,
    cursor: Option<PageCursor>,
    limit: PageLimit,
) -> Result<Page, QueryError> {
    let extent = Extent::of(conn, filter).await?;
    let rows = page_query(filter, extent, cursor, limit)
        .build()
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
    let events = rows
        .iter()
        .map(RecordedEvent::from_row)
        .collect::<Result<_, _>>()?;
    Ok(finish(events, extent, cursor, limit))
}

/// The page's query: within the extent, beyond the cursor, filtered, `limit + 1` rows (the
/// extra one tells whether more matched). Not prepared: an unnamed statement is planned with
/// the actual values, so the planner sees how selective each filter is.
fn page_query(
    filter: &EventFilter,
    extent: Extent,
    cursor: Option<PageCursor>,
    limit: PageLimit,
) -> QueryBuilder<'static, sqlx::Postgres> {
    let mut query = QueryBuilder::new(SELECT_EVENTS);
    query
        .push(" where e.position >= ")
        .push_bind(extent.first)
        .push(" and e.position <= ")
        .push_bind(extent.last);
    match cursor {
        None => {}
        Some(PageCursor::After(p)) => {
            query.push(" and e.position > ").push_bind(p);
        }
        Some(PageCursor::Before(p)) => {
            query.push(" and e.position < ").push_bind(p);
        }
    }
    filter.push_conditions(&mut query);
    let backwards = matches!(cursor, Some(PageCursor::Before(_)));
    query
        .push(if backwards {
            " order by e.position desc limit "
        } else {
            " order by e.position limit "
        })
        .push_bind(limit.get() + 1);
    query
}

/// Cuts the rows read (`limit + 1` at most, in the cursor's direction) to a page and sets its
/// cursors.
fn finish(
    mut events: Vec<RecordedEvent>,
    extent: Extent,
    cursor: Option<PageCursor>,
    limit: PageLimit,
) -> Page {
    let limit = usize::try_from(limit.get()).unwrap_or(usize::MAX);
    let more = events.len() > limit;
    events.truncate(limit);
    if matches!(cursor, Some(PageCursor::Before(_))) {
        events.reverse();
    }
    let first = events.first().map(|e| e.position);
    let last = events.last().map(|e| e.position);
    let (next, prev) = match cursor {
        None => (last.filter(|_| more).map(PageCursor::After), None),
        Some(PageCursor::After(p)) => (
            last.filter(|_| more).map(PageCursor::After),
            // Came from a page before: older events exist (at least up to `p`).
            Some(PageCursor::Before(first.unwrap_or(p.saturating_add(1)))).filter(|_| p > 0),
        ),
        Some(PageCursor::Before(p)) => (
            Some(PageCursor::After(last.unwrap_or(p.saturating_sub(1)))),
            first.filter(|_| more).map(PageCursor::Before),
        ),
    };
    // Without a `next`, every event up to the horizon that matches has been read (or lies
    // before the cursor): a reader resumes after the horizon, skipping what cannot match.
    let resume = next.unwrap_or_else(|| {
        let read_to = match cursor {
            Some(PageCursor::After(p)) => p,
            _ => 0,
        };
        PageCursor::After(extent.horizon.max(read_to))
    });
    Page {
        events,
        next,
        prev,
        resume,
    }
}

#[cfg(test)]
mod tests;
