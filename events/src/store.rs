//! Appending to and reading from the event log.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::chain::link_hash;
use crate::error::{AppendError, ReadError};
use crate::event::{Cursor, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use crate::notifier::Notifier;
use crate::stream_id::StreamId;
use crate::upcast::Upcasters;

mod encode;
mod personal;

use self::encode::{Encoded, encode};
pub(crate) use self::personal::{Codec, Opening};
use crate::privacy::SubjectKeys;

/// A stream's current version: the highest version it holds.
const STREAM_VERSION: &str = "select max(stream_version) from events where stream_id = $1";

/// [`STREAM_VERSION`]'s answer as a version (0 for a stream with no events).
fn folded_version(version: Option<i64>) -> u64 {
    version.map_or(0, |v| u64::try_from(v).unwrap_or_default())
}

/// The channel subscribers LISTEN on; the payload is the highest position appended so far.
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
    subject: Option<Uuid>,
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
            subject: None,
        }
    }

    /// Says whom the append's personal values are about: they are sealed under that person's
    /// data key (see [`crate::privacy`]). An append with personal values needs one.
    #[must_use]
    pub fn about(mut self, subject: Uuid) -> Self {
        self.subject = Some(subject);
        self
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
    /// The events' `recorded_at` (microseconds, as stored).
    pub recorded_at: DateTime<Utc>,
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
    codec: Arc<Codec>,
    notifier: Notifier,
    heads: Arc<HeadCache>,
}

/// The last known committed `(version, hash)` of streams this store wrote or read. An entry is a
/// fact that never goes stale (version `n` of a stream has the same hash forever), so an append that
/// expects version `n` can compute its chain link without reading the head; if the stream moved
/// on meanwhile, the unique `(stream_id, stream_version)` constraint refuses the insert.
#[derive(Debug, Default)]
struct HeadCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (i64, [u8; 32])>>,
}

impl HeadCache {
    /// Most streams a store remembers; the cache starts over when full.
    const CAPACITY: usize = 100_000;

    fn get(&self, stream_id: &str) -> Option<(i64, [u8; 32])> {
        self.entries.lock().ok()?.get(stream_id).copied()
    }

    fn remember(&self, stream_id: &str, version: i64, hash: &[u8]) {
        let Ok(hash) = <[u8; 32]>::try_from(hash) else {
            return;
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::CAPACITY && !entries.contains_key(stream_id) {
                entries.clear();
            }
            let entry = entries
                .entry(stream_id.to_owned())
                .or_insert((version, hash));
            if entry.0 <= version {
                *entry = (version, hash);
            }
        }
    }

    fn forget(&self, stream_id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(stream_id);
        }
    }
}

/// How often an [`ExpectedVersion::Any`] append is retried after losing a race for a version.
const ANY_RETRIES: u32 = 20;

/// One event, one statement: read the stream's head, insert the next version with its chain link
/// (same formula as `idp_append` in the migrations) if the head is the expected one. Returns the
/// head version seen and, if inserted, the new row; a concurrent writer that took the version
/// first makes the insert fail on `events_stream_version_key`.
const APPEND_ONE: &str = "
with head as (
    select coalesce(h.stream_version, 0) as version, h.hash
      from (values (1)) as one
      left join lateral (
            select e.stream_version, e.hash from events e
             where e.stream_id = $1
             order by e.stream_version desc
             limit 1) as h on true
), inserted as (
    insert into events (event_id, stream_id, stream_version, event_type, schema_version,
                        data, metadata, recorded_at, hash)
    select $2, $1, head.version + 1, $3, $4, $5, $6, $7,
           sha256(coalesce(head.hash, ''::bytea) || int8send(head.version + 1)
                  || int4send(octet_length($1)) || convert_to($1, 'UTF8') || $8)
      from head
     where $9::bigint is null or head.version = $9::bigint
    returning position, stream_version, hash
)
select head.version, inserted.position, inserted.stream_version,
       coalesce(pg_current_xact_id_if_assigned()::text::bigint, 0), inserted.hash
  from head left join inserted on true";

/// One event on a head known to the writer (see [`INSERT_KNOWN_HEAD`]).
const INSERT_KNOWN_ONE: &str = "
insert into events (event_id, stream_id, stream_version, event_type, schema_version,
                    data, metadata, recorded_at, hash)
values ($2, $1, $3, $4, $5, $6, $7, $8, $9)
returning array[position], pg_current_xact_id()::text::bigint";

/// [`INSERT_KNOWN_ONE`] for an event sealed with keys kept in memory: it inserts only while
/// every person of `$10` still has a key (none of them erased since the key was kept); no row
/// comes back otherwise.
const INSERT_KNOWN_ONE_GUARDED: &str = "
insert into events (event_id, stream_id, stream_version, event_type, schema_version,
                    data, metadata, recorded_at, hash)
select $2, $1, $3, $4, $5, $6, $7, $8, $9
 where (select count(*) from subject_keys k
         where k.subject_id = any($10::uuid[]) and k.wrapped is not null) = cardinality($10::uuid[])
returning array[position], pg_current_xact_id()::text::bigint";

/// Events on a head known to the writer: the links are computed by the writer (same formula as
/// above), and a writer whose head was not the head anymore fails on
/// `events_stream_version_key`.
const INSERT_KNOWN_HEAD: &str = "
with inserted as (
    insert into events (event_id, stream_id, stream_version, event_type, schema_version,
                        data, metadata, recorded_at, hash)
    select e.id, $1, e.version, e.type, e.schema, e.data, $7, $8, e.hash
      from unnest($2::uuid[], $3::bigint[], $4::text[], $5::int[], $6::jsonb[], $9::bytea[])
           as e(id, version, type, schema, data, hash)
     order by e.version
    returning position
)
select array_agg(position order by position), pg_current_xact_id()::text::bigint from inserted";

// The table is aliased `e` so that `order by e.transaction_id` sorts by the column (and can
// walk its index), not by the bigint cast that the select list names `transaction_id`.
/// The columns [`RecordedEvent::from_row`] reads, from `events e`.
macro_rules! event_columns {
    () => {
        "e.position, e.transaction_id::text::bigint as transaction_id,
        e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data,
        e.metadata, e.recorded_at, e.hash"
    };
}

const SELECT_COLUMNS: &str = concat!("select ", event_columns!(), " from events e");

/// The events of stream `$1` from version `$2` on.
const SELECT_STREAM: &str = concat!(
    "select ",
    event_columns!(),
    " from events e where e.stream_id = $1 and e.stream_version >= $2 order by e.stream_version"
);

/// [`SELECT_STREAM`] for the stream of person `$3`, with the person's stored key (if any) on
/// its first row only (versions start at 1 and have no gaps).
const SELECT_PERSON_STREAM: &str = concat!(
    "select ",
    event_columns!(),
    ", k.kek_id, k.wrapped from events e
       left join subject_keys k on k.subject_id = $3 and k.erased_at is null
                               and e.stream_version = greatest($2, 1)
      where e.stream_id = $1 and e.stream_version >= $2 order by e.stream_version"
);

impl EventStore {
    /// A store over `pool` with no upcasters.
    pub fn new(pool: PgPool) -> Self {
        Self::with_upcasters(pool, Upcasters::default())
    }

    /// A store that upcasts events to their current schema version when reading.
    pub fn with_upcasters(pool: PgPool, upcasters: Upcasters) -> Self {
        Self::with_codec(
            pool,
            Codec {
                upcasters,
                personal: None,
            },
        )
    }

    /// A store that upcasts events when reading and keeps personal values sealed under the
    /// data keys of `keys` (see [`crate::privacy`]). Without it, an append with personal values
    /// is refused and sealed values read as erased.
    pub fn with_personal_data(pool: PgPool, upcasters: Upcasters, keys: SubjectKeys) -> Self {
        Self::with_codec(
            pool,
            Codec {
                upcasters,
                personal: Some(keys),
            },
        )
    }

    fn with_codec(pool: PgPool, codec: Codec) -> Self {
        Self {
            notifier: Notifier::new(pool.clone()),
            pool,
            codec: Arc::new(codec),
            heads: Arc::default(),
        }
    }

    /// The key table of personal data, if this store seals personal values.
    pub fn subject_keys(&self) -> Option<&SubjectKeys> {
        self.codec.personal.as_ref()
    }

    /// The connection pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The upcasters applied on read.
    pub fn upcasters(&self) -> &Upcasters {
        &self.codec.upcasters
    }

    /// Opens, in place, the personal values of events read as stored (not through the store,
    /// for example by [`crate::query::page`]): each becomes its value, marked as personal, or
    /// `"[erased]"` when its key is destroyed. The keys are read on `conn`, or on the pool.
    /// Nothing is upcast.
    ///
    /// # Errors
    /// When the keys cannot be read or unwrapped.
    pub async fn open_personal(
        &self,
        conn: Option<&mut PgConnection>,
        events: &mut [RecordedEvent],
    ) -> Result<(), ReadError> {
        self.codec
            .open(conn, events, Opening::All, HashMap::new())
            .await
    }

    pub(crate) fn shared_codec(&self) -> Arc<Codec> {
        Arc::clone(&self.codec)
    }

    /// Appends in a transaction of its own: one statement, one round trip.
    ///
    /// A single event without reservations takes a lock-free path: it reads the stream's head
    /// and inserts the next version in one statement, relying on the unique
    /// `(stream_id, stream_version)` constraint to refuse a concurrent writer. With
    /// [`ExpectedVersion::Any`] such a clash is retried here, so it never reaches the caller.
    pub async fn append(&self, append: Append) -> Result<AppendOutcome, AppendError> {
        let mut conn = self.pool.acquire().await.map_err(AppendError::Database)?;
        let plain = append.claims.is_empty() && append.releases.is_empty();
        let mut attempt = 1;
        let result = match append.events.len() {
            1 if plain => loop {
                match self.append_one(&mut conn, &append).await {
                    Err(AppendError::Conflict { .. })
                        if append.expected == ExpectedVersion::Any && attempt < ANY_RETRIES =>
                    {
                        attempt += 1;
                    }
                    other => break other,
                }
            },
            n if plain && n > 1 => match self.append_known(&mut conn, &append, true).await {
                Some(result) => result,
                None => self.append_in(&mut conn, append).await,
            },
            _ => self.append_in(&mut conn, append).await,
        };
        self.with_actual_version(result).await
    }

    /// Replaces the unknown `actual` (-1) of a conflict lost on the unique constraint by the
    /// version that won.
    async fn with_actual_version(
        &self,
        result: Result<AppendOutcome, AppendError>,
    ) -> Result<AppendOutcome, AppendError> {
        match result {
            Err(AppendError::Conflict {
                stream_id,
                expected,
                actual: -1,
            }) => {
                let actual = match self.stream_version(&stream_id).await {
                    Ok(version) => i64::try_from(version).unwrap_or(i64::MAX),
                    Err(_) => -1,
                };
                Err(AppendError::Conflict {
                    stream_id,
                    expected,
                    actual,
                })
            }
            other => other,
        }
    }

    /// The head `append` builds on, if known without asking the database.
    fn known_head(&self, append: &Append) -> Option<(i64, Option<[u8; 32]>)> {
        match append.expected {
            ExpectedVersion::NoStream => Some((0, None)),
            ExpectedVersion::Exact(n) => self
                .heads
                .get(&append.stream_id)
                .filter(|(version, _)| u64::try_from(*version).ok() == Some(n))
                .map(|(version, hash)| (version, Some(hash))),
            ExpectedVersion::Any => self
                .heads
                .get(&append.stream_id)
                .map(|(version, hash)| (version, Some(hash))),
        }
    }

    /// Appends on a known head with chain links computed here, in one plain `INSERT`. `None`
    /// when the head is unknown, or when an `Any` append found the stream moved on (the caller
    /// then takes a path that reads the head).
    ///
    /// The new head is remembered only when `committed`: the statement is its own transaction.
    /// In a caller's transaction it may still roll back, and a remembered head that never
    /// committed would have the next append build on it (a gap in the stream's versions, or a
    /// link to a hash that is not in the log).
    async fn append_known(
        &self,
        conn: &mut PgConnection,
        append: &Append,
        committed: bool,
    ) -> Option<Result<AppendOutcome, AppendError>> {
        let (version, previous) = self.known_head(append)?;
        let n = append.events.len();
        // Outside a transaction, one event seals with the keys kept in memory and one guarded
        // statement; everything else takes its keys in its transaction.
        let source = if committed && n == 1 {
            personal::KeySource::Kept
        } else {
            personal::KeySource::Table
        };
        let Encoded {
            data: stored_data,
            metadata,
            recorded_at,
            bodies,
            guard,
        } = match encode(&self.codec, conn, append, source).await {
            Ok(encoded) => encoded,
            Err(e) => return Some(Err(e)),
        };
        let (mut ids, mut versions, mut types, mut schemas, mut data, mut hashes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut link: Option<[u8; 32]> = previous;
        let mut next = version;
        for ((event, body), stored) in append.events.iter().zip(&bodies).zip(&stored_data) {
            next += 1;
            let hash = link_hash(
                link.as_ref().map(|h| h.as_slice()),
                &append.stream_id,
                next,
                body,
            );
            link = Some(hash);
            ids.push(event.event_id);
            versions.push(next);
            types.push(event.event_type.as_str());
            schemas.push(event.schema_version);
            data.push(stored.as_ref());
            hashes.push(hash.to_vec());
        }
        let expected = append.expected.as_db();
        let inserted = if n == 1 {
            let statement = sqlx::query(if guard.is_empty() {
                INSERT_KNOWN_ONE
            } else {
                INSERT_KNOWN_ONE_GUARDED
            })
            .bind(&append.stream_id)
            .bind(ids[0])
            .bind(versions[0])
            .bind(types[0])
            .bind(schemas[0])
            .bind(data[0])
            .bind(&metadata)
            .bind(recorded_at)
            .bind(&hashes[0]);
            if guard.is_empty() {
                statement.fetch_all(&mut *conn).await
            } else {
                statement.bind(&guard).fetch_all(&mut *conn).await
            }
        } else {
            sqlx::query(INSERT_KNOWN_HEAD)
                .bind(&append.stream_id)
                .bind(&ids)
                .bind(&versions)
                .bind(&types)
                .bind(&schemas)
                .bind(&data)
                .bind(&metadata)
                .bind(recorded_at)
                .bind(&hashes)
                .fetch_all(&mut *conn)
                .await
        };
        match inserted {
            Ok(rows) => {
                let Some(row) = rows.first() else {
                    if let (Some(first), Some(keys)) = (guard.first(), &self.codec.personal) {
                        // A kept key's row is gone: its person was erased meanwhile.
                        guard.iter().for_each(|person| keys.forget_sealing(*person));
                        return Some(Err(AppendError::Personal(
                            crate::privacy::SubjectKeysError::Erased(*first),
                        )));
                    }
                    return Some(Err(AppendError::Database(sqlx::Error::RowNotFound)));
                };
                let outcome = match (row.try_get::<Vec<i64>, _>(0), row.try_get::<i64, _>(1)) {
                    (Ok(positions), Ok(transaction_id)) => AppendOutcome {
                        positions,
                        stream_version: next,
                        transaction_id,
                        recorded_at,
                    },
                    (Err(e), _) | (_, Err(e)) => return Some(Err(AppendError::Database(e))),
                };
                if let Some(hash) = link.filter(|_| committed) {
                    self.heads.remember(&append.stream_id, next, &hash);
                }
                self.appended(&append.events, &outcome);
                Some(Ok(outcome))
            }
            Err(err) => match AppendError::from_db(&append.stream_id, expected, err) {
                AppendError::Conflict { .. } if append.expected == ExpectedVersion::Any => {
                    self.heads.forget(&append.stream_id);
                    None
                }
                other => Some(Err(other)),
            },
        }
    }

    /// The stream's current version (0 if it has no events).
    pub async fn stream_version(&self, stream_id: impl AsRef<str>) -> Result<u64, ReadError> {
        let stream_id = stream_id.as_ref();
        let version = sqlx::query_scalar(STREAM_VERSION)
            .bind(stream_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(folded_version(version))
    }

    /// The current version of `stream` (0 if it has no events), read on `conn`: inside the
    /// caller's transaction, so it counts what that transaction appended and, under the
    /// transaction's locks, what others committed before.
    pub async fn stream_version_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
    ) -> Result<u64, ReadError> {
        let version = sqlx::query_scalar(STREAM_VERSION)
            .bind(stream.as_str())
            .fetch_one(conn)
            .await?;
        Ok(folded_version(version))
    }

    /// The events of each of `streams`, upcast, read on `conn` in one statement: inside the
    /// caller's transaction, so a decision that folds several streams sees them as of one
    /// moment, under the transaction's locks. One list per stream asked for, in the order
    /// asked, each in stream order (empty for a stream with no events).
    ///
    /// Nothing read here is remembered as a stream's head: the transaction may still roll back
    /// what it appended itself.
    pub async fn read_streams_in(
        &self,
        conn: &mut PgConnection,
        streams: &[StreamId],
    ) -> Result<Vec<Vec<RecordedEvent>>, ReadError> {
        let ids: Vec<&str> = streams.iter().map(StreamId::as_str).collect();
        let rows = sqlx::query(&format!(
            "{SELECT_COLUMNS} where e.stream_id = any($1) order by e.stream_id, e.stream_version"
        ))
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut by_stream: HashMap<String, Vec<RecordedEvent>> = HashMap::new();
        for event in self.codec.decode(Some(conn), &rows).await? {
            by_stream
                .entry(event.stream_id.clone())
                .or_default()
                .push(event);
        }
        Ok(ids
            .iter()
            .map(|id| by_stream.get(*id).cloned().unwrap_or_default())
            .collect())
    }

    /// The stream that holds event `event_id`, if the log has such an event of type
    /// `event_type` (and its stream is one [`StreamId`] names).
    pub async fn stream_of_event(
        &self,
        event_id: Uuid,
        event_type: &str,
    ) -> Result<Option<StreamId>, ReadError> {
        let stream: Option<String> = sqlx::query_scalar(
            "select stream_id from events where event_id = $1 and event_type = $2",
        )
        .bind(event_id)
        .bind(event_type)
        .fetch_optional(&self.pool)
        .await?;
        Ok(stream.and_then(|s| StreamId::parse(&s).ok()))
    }

    /// The stream that holds the unique `value` within `scope` (see [`Append::claim`]), if any.
    pub async fn holder_of(&self, scope: &str, value: &str) -> Result<Option<StreamId>, ReadError> {
        let stream: Option<String> = sqlx::query_scalar(
            "select stream_id from reservations where scope = $1 and value = $2",
        )
        .bind(scope)
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        Ok(stream.and_then(|s| StreamId::parse(&s).ok()))
    }

    /// The single-statement path of [`EventStore::append`] for one event.
    async fn append_one(
        &self,
        conn: &mut PgConnection,
        append: &Append,
    ) -> Result<AppendOutcome, AppendError> {
        if let Some(result) = self.append_known(conn, append, true).await {
            return result;
        }
        let event = &append.events[0];
        let Encoded {
            data,
            metadata,
            recorded_at,
            mut bodies,
            guard: _,
        } = encode(&self.codec, conn, append, personal::KeySource::Table).await?;
        let canonical = bodies.swap_remove(0);
        let expected = append.expected.as_db();
        let row = sqlx::query(APPEND_ONE)
            .bind(&append.stream_id)
            .bind(event.event_id)
            .bind(&event.event_type)
            .bind(event.schema_version)
            .bind(data[0].as_ref())
            .bind(&metadata)
            .bind(recorded_at)
            .bind(canonical)
            .bind(expected)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| AppendError::from_db(&append.stream_id, expected, e))?;
        let current: i64 = row.try_get(0).map_err(AppendError::Database)?;
        let position: Option<i64> = row.try_get(1).map_err(AppendError::Database)?;
        let Some(position) = position else {
            return Err(AppendError::Conflict {
                stream_id: append.stream_id.clone(),
                expected: expected.unwrap_or_default(),
                actual: current,
            });
        };
        let outcome = AppendOutcome {
            positions: vec![position],
            stream_version: row.try_get(2).map_err(AppendError::Database)?,
            transaction_id: row.try_get(3).map_err(AppendError::Database)?,
            recorded_at,
        };
        let hash: Vec<u8> = row.try_get(4).map_err(AppendError::Database)?;
        self.heads
            .remember(&append.stream_id, outcome.stream_version, &hash);
        self.appended(&append.events, &outcome);
        Ok(outcome)
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
        // A known head needs no lookup, in the caller's transaction too. Not for `Any`: a stale
        // guess would abort the caller's transaction instead of being retried.
        if append.claims.is_empty()
            && append.releases.is_empty()
            && append.expected != ExpectedVersion::Any
            && let Some(result) = self.append_known(conn, &append, false).await
        {
            return result;
        }
        let Encoded {
            data,
            metadata,
            recorded_at,
            bodies,
            guard: _,
        } = encode(&self.codec, conn, &append, personal::KeySource::Table).await?;
        let ids: Vec<Uuid> = append.events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = append
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect();
        let versions: Vec<i32> = append.events.iter().map(|e| e.schema_version).collect();
        let data: Vec<&serde_json::Value> = data.iter().map(AsRef::as_ref).collect();
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
        .bind(&metadata)
        .bind(recorded_at)
        .bind(bodies)
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
            recorded_at,
        };
        for row in rows {
            outcome
                .positions
                .push(row.try_get(0).map_err(AppendError::Database)?);
            outcome.stream_version = row.try_get(1).map_err(AppendError::Database)?;
            outcome.transaction_id = row.try_get(2).map_err(AppendError::Database)?;
        }
        self.appended(&append.events, &outcome);
        Ok(outcome)
    }

    fn appended(&self, events: &[NewEvent], outcome: &AppendOutcome) {
        if let Some(&last) = outcome.positions.last() {
            self.notifier.announce(last);
        }
        for event in events {
            metrics::counter!("idp_events_appended_total", "event_type" => event.event_type.clone())
                .increment(1);
        }
    }

    /// The events of `stream_id` from `from_version` on, to fold into a state: their data
    /// opened, their metadata as stored (its personal values sealed), which spares opening
    /// what a fold never reads.
    pub async fn read_stream_to_fold(
        &self,
        stream_id: impl AsRef<str>,
        from_version: i64,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        self.read_one_stream(stream_id.as_ref(), from_version, Opening::Data)
            .await
    }

    /// Events of one stream from `from_version` (inclusive, versions start at 1), upcast.
    pub async fn read_stream(
        &self,
        stream_id: impl AsRef<str>,
        from_version: i64,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        self.read_one_stream(stream_id.as_ref(), from_version, Opening::All)
            .await
    }

    /// The events of one stream, opened as `opening` says; a person's stream (`user-<uuid>`)
    /// is read with the person's key in the same statement.
    async fn read_one_stream(
        &self,
        stream_id: &str,
        from_version: i64,
        opening: Opening,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        // The data of a person's stream is sealed under their key: fetched with the events, it
        // spares a query (its metadata may still need the keys of its days).
        let person = StreamId::parse(stream_id)
            .ok()
            .and_then(|stream| stream.user_id())
            .filter(|_| self.codec.personal.is_some());
        let query = match person {
            Some(person) => sqlx::query(SELECT_PERSON_STREAM)
                .bind(stream_id)
                .bind(from_version)
                .bind(person),
            None => sqlx::query(SELECT_STREAM)
                .bind(stream_id)
                .bind(from_version),
        };
        let rows = query.fetch_all(&self.pool).await?;
        let known = match (person, rows.first(), &self.codec.personal) {
            (Some(person), Some(row), Some(keys)) => {
                let key =
                    keys.unwrap_stored(person, row.try_get("kek_id")?, row.try_get("wrapped")?)?;
                HashMap::from([(person, key)])
            }
            _ => HashMap::new(),
        };
        let events = self.codec.decode_parts(None, &rows, opening, known).await?;
        if let Some(last) = events.last() {
            self.heads
                .remember(stream_id, last.stream_version, &last.hash);
        }
        Ok(events)
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
        read_all_in(&mut conn, &self.codec, after, limit, Opening::All).await
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
}

/// [`EventStore::read_all`] on a given connection (subscriptions read on the connection that
/// holds their lock).
pub(crate) async fn read_all_in(
    conn: &mut PgConnection,
    codec: &Codec,
    after: Cursor,
    limit: i64,
    opening: Opening,
) -> Result<Vec<RecordedEvent>, ReadError> {
    let rows = sqlx::query(&format!(
        "{SELECT_COLUMNS}
          where (e.transaction_id, e.position) > (($1::bigint)::text::xid8, $2)
            and e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          order by e.transaction_id, e.position
          limit $3"
    ))
    .bind(after.transaction_id)
    .bind(after.position)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    codec
        .decode_parts(Some(conn), &rows, opening, HashMap::new())
        .await
}

impl RecordedEvent {
    /// An event from a row with the `events` columns (`transaction_id` as `bigint`), as stored:
    /// no upcasting.
    pub fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
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
        })
    }
}
