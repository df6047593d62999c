//! Appending to and reading from the event log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::chain::canonical_body;
use crate::error::{AppendError, ReadError};
use crate::event::{Cursor, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use crate::upcast::Upcasters;

/// The channel `idp_append` notifies (payload: the last position appended) at commit.
pub const NOTIFY_CHANNEL: &str = "idp_events";

/// An append to one stream: events, the version the writer decided on, metadata shared by the
/// events, and uniqueness reservations claimed or released with them.
#[derive(Debug, Clone)]
pub struct Append {
    stream_id: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    metadata: Metadata,
    claims: Vec<(String, String)>,
    releases: Vec<(String, String)>,
}

impl Append {
    /// Starts an append to `stream_id` that expects the stream not to exist yet.
    pub fn to(stream_id: impl Into<String>) -> Self {
        Self {
            stream_id: stream_id.into(),
            expected: ExpectedVersion::NoStream,
            events: Vec::new(),
            metadata: Metadata::default(),
            claims: Vec::new(),
            releases: Vec::new(),
        }
    }

    /// Sets the version the stream must be at.
    #[must_use]
    pub fn expecting(mut self, expected: ExpectedVersion) -> Self {
        self.expected = expected;
        self
    }

    /// Adds one event.
    #[must_use]
    pub fn event(mut self, event: NewEvent) -> Self {
        self.events.push(event);
        self
    }

    /// Adds several events, appended in order.
    #[must_use]
    pub fn events(mut self, events: impl IntoIterator<Item = NewEvent>) -> Self {
        self.events.extend(events);
        self
    }

    /// Sets the metadata stored with every event of this append.
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Claims a unique `value` within `scope` for this stream; the append fails with
    /// [`AppendError::ReservationTaken`] if another stream holds it. Claiming a value the stream
    /// already holds is a no-op.
    #[must_use]
    pub fn claim(mut self, scope: impl Into<String>, value: impl Into<String>) -> Self {
        self.claims.push((scope.into(), value.into()));
        self
    }

    /// Releases a unique value this stream holds (no-op if it holds none).
    #[must_use]
    pub fn release(mut self, scope: impl Into<String>, value: impl Into<String>) -> Self {
        self.releases.push((scope.into(), value.into()));
        self
    }

    /// The stream this append writes to.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Global positions of the appended events, in order.
    pub positions: Vec<i64>,
    /// The stream's version after the append.
    pub stream_version: i64,
    /// The writing transaction.
    pub transaction_id: i64,
}

impl AppendOutcome {
    /// The cursor of the last appended event: a reader past it has seen this append.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            transaction_id: self.transaction_id,
            position: self.positions.last().copied().unwrap_or_default(),
        }
    }
}

/// The event log: append-only, hash-chained, read in commit-safe order.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    upcasters: Arc<Upcasters>,
}

const SELECT_COLUMNS: &str = "select position, transaction_id::text::bigint as transaction_id,
        event_id, stream_id, stream_version, event_type, schema_version, data, metadata,
        recorded_at, hash from events";

impl EventStore {
    /// A store over `pool` with no upcasters.
    pub fn new(pool: PgPool) -> Self {
        Self::with_upcasters(pool, Upcasters::default())
    }

    /// A store that upcasts events to their current schema version when reading.
    pub fn with_upcasters(pool: PgPool, upcasters: Upcasters) -> Self {
        Self {
            pool,
            upcasters: Arc::new(upcasters),
        }
    }

    /// The connection pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The upcasters applied on read.
    pub fn upcasters(&self) -> &Upcasters {
        &self.upcasters
    }

    pub(crate) fn shared_upcasters(&self) -> Arc<Upcasters> {
        Arc::clone(&self.upcasters)
    }

    /// Appends in a transaction of its own (one statement, one round trip).
    pub async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError> {
        let mut conn = self.pool.acquire().await.map_err(AppendError::Database)?;
        self.append_in(&mut conn, append).await
    }

    /// Appends inside the caller's transaction, so inline projections and reservations commit or
    /// roll back together with the events.
    #[tracing::instrument(name = "events.append", skip_all, fields(stream.id = %append.stream_id, events = append.events.len()))]
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        append: Append,
    ) -> Result<AppendOutcome, AppendError> {
        if append.events.is_empty() {
            return Err(AppendError::Empty);
        }
        let metadata = serde_json::to_value(&append.metadata)
            .map_err(|e| AppendError::InvalidEvent(e.to_string()))?;
        let recorded_at = now_micros();

        let n = append.events.len();
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut data = Vec::with_capacity(n);
        let mut metas = Vec::with_capacity(n);
        let mut canonical = Vec::with_capacity(n);
        for event in &append.events {
            if event.schema_version < 1 {
                return Err(AppendError::InvalidEvent(format!(
                    "schema version of {} must be at least 1",
                    event.event_type
                )));
            }
            canonical.push(canonical_body(
                event.event_id,
                &event.event_type,
                event.schema_version,
                &event.data,
                &metadata,
                recorded_at,
            ));
            ids.push(event.event_id);
            types.push(event.event_type.clone());
            versions.push(event.schema_version);
            data.push(event.data.clone());
            metas.push(metadata.clone());
        }
        let (claim_scopes, claim_values): (Vec<_>, Vec<_>) = append.claims.iter().cloned().unzip();
        let (release_scopes, release_values): (Vec<_>, Vec<_>) =
            append.releases.iter().cloned().unzip();

        let expected = append.expected.as_db();
        let rows = sqlx::query(
            "select out_position, out_stream_version, out_transaction_id
               from idp_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&append.stream_id)
        .bind(expected)
        .bind(ids)
        .bind(types)
        .bind(versions)
        .bind(data)
        .bind(metas)
        .bind(recorded_at)
        .bind(canonical)
        .bind(claim_scopes)
        .bind(claim_values)
        .bind(release_scopes)
        .bind(release_values)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| AppendError::from_db(&append.stream_id, expected, e))?;

        let mut outcome = AppendOutcome {
            positions: Vec::with_capacity(rows.len()),
            stream_version: 0,
            transaction_id: 0,
        };
        for row in rows {
            outcome
                .positions
                .push(row.try_get(0).map_err(AppendError::Database)?);
            outcome.stream_version = row.try_get(1).map_err(AppendError::Database)?;
            outcome.transaction_id = row.try_get(2).map_err(AppendError::Database)?;
        }
        for event in &append.events {
            metrics::counter!("idp_events_appended_total", "event_type" => event.event_type.clone())
                .increment(1);
        }
        Ok(outcome)
    }

    /// Events of one stream from `from_version` (inclusive, versions start at 1), upcast.
    pub async fn read_stream(
        &self,
        stream_id: &str,
        from_version: i64,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_COLUMNS} where stream_id = $1 and stream_version >= $2 order by stream_version"
        )))
        .bind(stream_id)
        .bind(from_version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    /// Up to `limit` events after `after`, in commit-safe order, upcast.
    ///
    /// Only events of transactions older than every transaction still running are returned, so
    /// a reader that follows the returned cursors never skips an event whose transaction commits
    /// late. The price: a long-running writing transaction holds readers back until it ends.
    pub async fn read_all(
        &self,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut conn = self.pool.acquire().await?;
        read_all_in(&mut conn, &self.upcasters, after, limit).await
    }

    /// The cursor of the last event visible in commit-safe order, if any.
    pub async fn head(&self) -> Result<Option<Cursor>, ReadError> {
        let row = sqlx::query(
            "select transaction_id::text::bigint, position from events
              where transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              order by transaction_id desc, position desc limit 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => Some(Cursor {
                transaction_id: row.try_get(0)?,
                position: row.try_get(1)?,
            }),
            None => None,
        })
    }

    fn decode(&self, row: &PgRow) -> Result<RecordedEvent, ReadError> {
        decode_row(row, &self.upcasters)
    }
}

/// [`EventStore::read_all`] on a given connection (subscriptions read on the connection that
/// holds their lock).
pub(crate) async fn read_all_in(
    conn: &mut PgConnection,
    upcasters: &Upcasters,
    after: Cursor,
    limit: i64,
) -> Result<Vec<RecordedEvent>, ReadError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT_COLUMNS}
          where (transaction_id, position) > (($1::bigint)::text::xid8, $2)
            and transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          order by transaction_id, position
          limit $3"
    )))
    .bind(after.transaction_id)
    .bind(after.position)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| decode_row(row, upcasters)).collect()
}

fn decode_row(row: &PgRow, upcasters: &Upcasters) -> Result<RecordedEvent, ReadError> {
    let mut event = RecordedEvent {
        position: row.try_get("position")?,
        transaction_id: row.try_get("transaction_id")?,
        event_id: row.try_get("event_id")?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        data: row.try_get("data")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
        hash: row.try_get("hash")?,
    };
    upcasters.apply(&mut event);
    Ok(event)
}

/// Now, at the microsecond precision PostgreSQL stores, so the hashed time is the stored time.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
