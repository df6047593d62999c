//! `/v1/admin/events` and `/v1/admin/events/export`: the event log as an auditor reads it —
//! filtered, paged in log order (by position) forwards and backwards, or exported whole as CSV
//! or NDJSON (admin role required on every request).
//!
//! Events are returned as stored, not upcast: the data, schema version and hash are exactly what
//! the stream's hash chain covers.
//!
//! # Never skipping a late commit
//!
//! Positions are handed out at insert but become visible at commit, so an event may appear below
//! a position a reader has already passed. Cutting pages at `transaction_id <
//! pg_snapshot_xmin(...)` (the horizon of `EventStore::read_all`) is not enough for pages in
//! *position* order: a transaction gets its id at its first write and its positions at each
//! insert, so a committed transaction older than the horizon can hold a higher position than one
//! still running (two interleaved multi-event appends are enough).
//!
//! So every request reads up to a *settled* position instead: the last position handed out when
//! it arrived, once every transaction that held a write lock on `events` at that moment has
//! ended. A transaction takes that lock before it draws a position and keeps it until it has
//! committed or rolled back, so every event at or below the settled position is visible for good
//! or never will be. Reading it costs two small queries; waiting costs as long as the appends in
//! flight take (milliseconds). A writer that stays open longer than [`WRITER_WAIT`] makes the
//! request answer 503 rather than a page that could skip its events.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::channel::mpsc;
use futures::{SinkExt, TryStreamExt};
use idp_events::RecordedEvent;
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, QueryBuilder};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::AdminUser;
use crate::startup::AppState;

/// Events per page when the caller does not say.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page.
pub const MAX_LIMIT: i64 = 1000;
/// Rows an export reads per query (keyset batches by position).
pub const EXPORT_BATCH: i64 = 5_000;
/// How long a request waits for the appends in flight when it arrived.
pub const WRITER_WAIT: Duration = Duration::from_secs(3);
/// Bytes of an export handed to the connection at a time.
const EXPORT_CHUNK: usize = 256 * 1024;
/// Encoded chunks buffered between the database reader and the connection.
const EXPORT_CHUNKS_IN_FLIGHT: usize = 4;
/// Longest stream id, prefix, type or actor accepted in a filter, in characters.
const MAX_TEXT: usize = 512;
/// Most event types in one filter.
const MAX_TYPES: usize = 100;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/events", get(list_events))
        .route("/v1/admin/events/export", get(export_events))
}

/// Filters of the event log, shared by the list and the export. All given filters must match.
///
/// These parameter structs describe the query for OpenAPI; the handlers read the query with
/// `Params::parse`, which also takes `type` repeated and refuses unknown parameters.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilterParams {
    /// Only the events of this stream (exact), e.g. `user-0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d`;
    /// 1 to 512 characters, no NUL.
    #[param(min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$")]
    pub stream: Option<String>,
    /// Only the events of streams whose id starts with this, e.g. `user-` or `project-`; 1 to
    /// 512 characters, no NUL.
    #[param(
        example = "user-",
        min_length = 1,
        max_length = 512,
        pattern = "^[^\\u0000]*$"
    )]
    pub stream_prefix: Option<String>,
    /// Only events of these types: repeat the parameter (`type=A&type=B`) or separate the
    /// types with commas (`type=A,B`); each type 1 to 512 characters (blanks around it are
    /// ignored), no NUL, at most 100 types.
    #[param(rename = "type", style = Form, explode, example = json!(["UserRegistered"]),
            value_type = Option<Vec<EventTypeName>>)]
    pub event_types: Option<Vec<String>>,
    /// Only events whose metadata names this actor, e.g. `user-<uuid>`, `system`, `worker`; 1 to
    /// 512 characters, no NUL.
    #[param(min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$")]
    pub actor: Option<String>,
    /// Only events whose metadata carries this correlation id.
    pub correlation_id: Option<Uuid>,
    /// Only events recorded at or after this instant (RFC 3339; encode `+` as `%2B`).
    pub from: Option<DateTime<Utc>>,
    /// Only events recorded before this instant (RFC 3339, exclusive).
    pub to: Option<DateTime<Utc>>,
}

/// Paging of the event list.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventPageParams {
    /// Events per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The `next` or `prev` of a page; without it, the first page (the oldest events).
    pub cursor: Option<String>,
}

/// An event type in a filter: one name, or several separated by commas, none of them blank.
#[derive(Debug, ToSchema)]
#[schema(as = EventTypeName, value_type = String, example = "UserRegistered",
         pattern = "^[^,\\u0000]*[^,\\s\\u0000][^,\\u0000]*(,[^,\\u0000]*[^,\\s\\u0000][^,\\u0000]*)*$")]
pub struct EventTypeName(pub String);

/// The format of an export.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `csv` or `ndjson`.
    #[param(example = "ndjson", pattern = "^(csv|ndjson)$")]
    pub format: String,
}

/// One event of the log, as stored.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"position": 1, "event_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d",
    "stream_id": "user-0190f4c2-7b00-7c3b-9d2a-111111111111", "stream_version": 1, "event_type": "UserRegistered",
    "schema_version": 1, "data": {"email": "ada@example.com", "roles": ["user"]},
    "metadata": {"actor": "user-0190f4c2-7b00-7c3b-9d2a-111111111111", "request_id": "0190f4c2-9c00-7c3b-9d2a-333333333333"},
    "recorded_at": "2026-12-01T10:00:00Z", "hash": "9f2c3b5d2b8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b"}))]
pub struct LoggedEvent {
    /// Global position: the log's order.
    pub position: i64,
    /// The event's identity.
    pub event_id: Uuid,
    /// The stream it belongs to, e.g. `user-<uuid>`.
    pub stream_id: String,
    /// Its version within the stream, from 1.
    pub stream_version: i64,
    /// Past-tense type, e.g. `UserRegistered`.
    pub event_type: String,
    /// Version of the payload's shape as stored.
    pub schema_version: i32,
    /// The payload.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Actor, request, correlation and causation ids, client address and user agent.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// When it was appended (UTC).
    pub recorded_at: DateTime<Utc>,
    /// Its link in the stream's hash chain: SHA-256, hex.
    pub hash: String,
}

impl From<RecordedEvent> for LoggedEvent {
    fn from(e: RecordedEvent) -> Self {
        Self {
            position: e.position,
            event_id: e.event_id,
            stream_id: e.stream_id,
            stream_version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: e.data,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            hash: hex::encode(e.hash),
        }
    }
}

/// A page of events, in ascending position order.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"items": [{"position": 1, "event_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d",
    "stream_id": "user-0190f4c2-7b00-7c3b-9d2a-111111111111", "stream_version": 1, "event_type": "UserRegistered",
    "schema_version": 1, "data": {"email": "ada@example.com", "roles": ["user"]},
    "metadata": {"actor": "user-0190f4c2-7b00-7c3b-9d2a-111111111111"},
    "recorded_at": "2026-12-01T10:00:00Z", "hash": "9f2c3b5d2b8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b"}],
    "next": "Zjox", "prev": null}))]
pub struct EventPage {
    /// The events.
    pub items: Vec<LoggedEvent>,
    /// Pass as `cursor` for the following (newer) events; absent when no more events matched
    /// when this page was read.
    pub next: Option<String>,
    /// Pass as `cursor` for the preceding (older) events; absent on the first page.
    pub prev: Option<String>,
}

/// Lists events in log order, filtered, a page at a time, forwards or backwards.
///
/// Pages only reach events whose position is settled (see the module documentation): an event
/// committing late is never skipped by a reader following `next`.
#[utoipa::path(get, path = "/v1/admin/events", tag = "admin", security(("bearer" = [])),
    params(EventFilterParams, EventPageParams),
    responses((status = 200, description = "A page of events", body = EventPage),
              (status = 400, description = "Bad filter, limit or cursor, or an unknown parameter"),
              (status = 403, description = "Not an administrator"),
              (status = 503, description = "A transaction writing to the log stayed open too long")))]
#[tracing::instrument(name = "admin.events.list", skip_all, fields(user.id = %admin.user_id))]
pub async fn list_events(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(pairs) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let request = Params::parse(pairs, Route::List)?;
    let limit = request.limit.unwrap_or(DEFAULT_LIMIT);
    let mut conn = state.store.pool().acquire().await?;
    let extent = Extent::of(&mut conn, &request.filter).await?;

    let mut query = QueryBuilder::new(SELECT_EVENTS);
    query
        .push(" where e.position >= ")
        .push_bind(extent.first)
        .push(" and e.position <= ")
        .push_bind(extent.last);
    match request.cursor {
        None => {}
        Some(PageCursor::After(p)) => {
            query.push(" and e.position > ").push_bind(p);
        }
        Some(PageCursor::Before(p)) => {
            query.push(" and e.position < ").push_bind(p);
        }
    }
    request.filter.push_conditions(&mut query);
    let backwards = matches!(request.cursor, Some(PageCursor::Before(_)));
    query
        .push(if backwards {
            " order by e.position desc limit "
        } else {
            " order by e.position limit "
        })
        .push_bind(limit + 1);
    // Not prepared: an unnamed statement is planned with the actual values, so the planner sees
    // how selective each filter is.
    let rows = query
        .build()
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
    drop(conn);

    let mut items: Vec<LoggedEvent> = rows
        .iter()
        .map(|row| RecordedEvent::from_row(row).map(LoggedEvent::from))
        .collect::<Result<_, _>>()?;
    let more = items.len() > usize::try_from(limit).unwrap_or_default();
    items.truncate(usize::try_from(limit).unwrap_or_default());
    if backwards {
        items.reverse();
    }
    let first = items.first().map(|e| e.position);
    let last = items.last().map(|e| e.position);
    let (next, prev) = match request.cursor {
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
    Ok(Json(EventPage {
        items,
        next: next.map(|c| c.to_string()),
        prev: prev.map(|c| c.to_string()),
    }))
}

/// Exports every event that matches, in log order, as CSV or NDJSON, streamed.
///
/// The export covers the log up to the settled position when the request arrived. It is read in
/// keyset batches of 5,000 events and written as it is read, so memory stays flat however many
/// events match; the request timeout bounds only the wait for the response's headers, never the
/// transfer. CSV columns: `position,event_id,stream_id,stream_version,event_type,schema_version,
/// recorded_at,hash,data,metadata` (data and metadata as JSON text, RFC 4180 quoting, CRLF line
/// ends). NDJSON: one event per line, the fields of `LoggedEvent`. A failure midway aborts the
/// transfer (no final chunk), so a truncated file cannot pass for a complete one.
#[utoipa::path(get, path = "/v1/admin/events/export", tag = "admin", security(("bearer" = [])),
    params(EventFilterParams, ExportParams),
    responses((status = 200, description = "The matching events, as an attachment `idp-events-<UTC time>.csv` or `.ndjson`",
               content((String = "text/csv", example = json!("position,event_id,stream_id,stream_version,event_type,schema_version,recorded_at,hash,data,metadata\r\n1,0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d,user-0190f4c2-7b00-7c3b-9d2a-111111111111,1,UserRegistered,1,2026-12-01T10:00:00Z,9f2c...,\"{\"\"email\"\":\"\"ada@example.com\"\"}\",{}\r\n")),
                       (String = "application/x-ndjson", example = json!("{\"position\":1,\"event_id\":\"0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d\",\"stream_id\":\"user-0190f4c2-7b00-7c3b-9d2a-111111111111\",\"stream_version\":1,\"event_type\":\"UserRegistered\",\"schema_version\":1,\"data\":{\"email\":\"ada@example.com\"},\"metadata\":{},\"recorded_at\":\"2026-12-01T10:00:00Z\",\"hash\":\"9f2c...\"}\n"))),
               headers(("Content-Disposition" = String, description = "`attachment; filename=\"idp-events-<UTC time>.<csv|ndjson>\"`"))),
              (status = 400, description = "Bad filter or format, or an unknown parameter"),
              (status = 403, description = "Not an administrator"),
              (status = 503, description = "A transaction writing to the log stayed open too long")))]
#[tracing::instrument(name = "admin.events.export", skip_all, fields(user.id = %admin.user_id))]
pub async fn export_events(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let request = Params::parse(pairs, Route::Export)?;
    let format = request
        .format
        .ok_or_else(|| ApiError::BadRequest("format is required: csv or ndjson".into()))?;
    let extent = {
        let mut conn = state.store.pool().acquire().await?;
        Extent::of(&mut conn, &request.filter).await?
    };
    let (tx, rx) = mpsc::channel(EXPORT_CHUNKS_IN_FLIGHT);
    let pool = state.store.pool().clone();
    tokio::spawn(
        export(pool, request.filter, format, extent, tx).instrument(tracing::info_span!(
            "admin.events.export.body",
            first = extent.first,
            last = extent.last
        )),
    );
    let file = format!(
        "attachment; filename=\"idp-events-{}.{}\"",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        format.extension()
    );
    let mut response = Body::from_stream(rx).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&file) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Reads the matching events in batches and sends them encoded, a chunk at a time. Ends early,
/// quietly, when the client goes away (the receiver is dropped).
async fn export(
    pool: PgPool,
    filter: EventFilter,
    format: ExportFormat,
    extent: Extent,
    mut tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let started = std::time::Instant::now();
    let mut buf = Vec::with_capacity(EXPORT_CHUNK + 64 * 1024);
    if format == ExportFormat::Csv {
        buf.extend_from_slice(CSV_HEADER.as_bytes());
    }
    let mut after = extent.first - 1;
    let mut events = 0_u64;
    let mut bytes = 0_u64;
    loop {
        // Rows are encoded as they arrive, so memory holds a chunk and a row whatever the size of
        // the events; the price is that a slow client keeps the batch's connection busy.
        let batch = async {
            let mut conn = pool.acquire().await?;
            let mut query = QueryBuilder::new(SELECT_EXPORT);
            query
                .push(" where e.position > ")
                .push_bind(after)
                .push(" and e.position <= ")
                .push_bind(extent.last);
            filter.push_conditions(&mut query);
            query
                .push(" order by e.position limit ")
                .push_bind(EXPORT_BATCH);
            let mut rows = query
                .build_query_as::<ExportRow>()
                .persistent(false)
                .fetch(&mut *conn);
            let mut read = 0_i64;
            while let Some(row) = rows.try_next().await? {
                format.encode(&row, &mut buf)?;
                after = row.position;
                read += 1;
                if buf.len() >= EXPORT_CHUNK {
                    bytes += buf.len() as u64;
                    let chunk = Bytes::from(std::mem::replace(
                        &mut buf,
                        Vec::with_capacity(EXPORT_CHUNK + 64 * 1024),
                    ));
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok::<_, ExportError>(None);
                    }
                }
            }
            Ok(Some(read))
        }
        .await;
        match batch {
            Ok(Some(read)) => {
                events += u64::try_from(read).unwrap_or_default();
                if read < EXPORT_BATCH {
                    break;
                }
            }
            Ok(None) => {
                tracing::info!(events, "export abandoned by the client");
                return;
            }
            Err(err) => {
                tracing::error!(error = %err, events, "export failed midway; transfer aborted");
                let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                return;
            }
        }
    }
    bytes += buf.len() as u64;
    if !buf.is_empty() && tx.send(Ok(Bytes::from(buf))).await.is_err() {
        return;
    }
    tracing::info!(
        events,
        bytes,
        duration_ms = started.elapsed().as_millis() as u64,
        "export finished"
    );
}

/// What can stop an export midway.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("encoding: {0}")]
    Encoding(#[from] std::io::Error),
}

const SELECT_EVENTS: &str = "select e.position, e.transaction_id::text::bigint as transaction_id,
        e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data,
        e.metadata, e.recorded_at, e.hash from events e";

// data and metadata as text: PostgreSQL's rendering of jsonb is valid one-line JSON, passed
// through without a parse and a re-serialisation per event (and without losing the precision of
// numbers that do not fit an f64).
const SELECT_EXPORT: &str = "select e.position, e.event_id, e.stream_id, e.stream_version,
        e.event_type, e.schema_version, e.data::text as data, e.metadata::text as metadata,
        e.recorded_at, e.hash from events e";

const CSV_HEADER: &str = "position,event_id,stream_id,stream_version,event_type,schema_version,recorded_at,hash,data,metadata\r\n";

/// One exported event, with its JSON as text.
#[derive(Debug, FromRow)]
struct ExportRow {
    position: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i32,
    data: String,
    metadata: String,
    recorded_at: DateTime<Utc>,
    hash: Vec<u8>,
}

/// The formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportFormat {
    Csv,
    Ndjson,
}

impl ExportFormat {
    fn parse(raw: &str) -> Result<Self, ApiError> {
        match raw {
            "csv" => Ok(Self::Csv),
            "ndjson" => Ok(Self::Ndjson),
            other => Err(ApiError::BadRequest(format!(
                "format {other:?} is not csv or ndjson"
            ))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Ndjson => "ndjson",
        }
    }

    fn encode(self, row: &ExportRow, out: &mut Vec<u8>) -> std::io::Result<()> {
        let recorded_at = row.recorded_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let hash = hex::encode(&row.hash);
        match self {
            Self::Ndjson => {
                write!(
                    out,
                    "{{\"position\":{},\"event_id\":\"{}\",\"stream_id\":",
                    row.position, row.event_id
                )?;
                serde_json::to_writer(&mut *out, &row.stream_id)?;
                write!(
                    out,
                    ",\"stream_version\":{},\"event_type\":",
                    row.stream_version
                )?;
                serde_json::to_writer(&mut *out, &row.event_type)?;
                writeln!(
                    out,
                    ",\"schema_version\":{},\"data\":{},\"metadata\":{},\"recorded_at\":\"{recorded_at}\",\"hash\":\"{hash}\"}}",
                    row.schema_version, row.data, row.metadata
                )
            }
            Self::Csv => {
                write!(out, "{},{},", row.position, row.event_id)?;
                csv_field(out, &row.stream_id);
                write!(out, ",{},", row.stream_version)?;
                csv_field(out, &row.event_type);
                write!(out, ",{},{recorded_at},{hash},", row.schema_version)?;
                csv_field(out, &row.data);
                out.push(b',');
                csv_field(out, &row.metadata);
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
        }
    }
}

/// Writes one CSV field (RFC 4180): quoted, with quotes doubled, when it holds a comma, a quote
/// or a line break; as is otherwise.
fn csv_field(out: &mut Vec<u8>, value: &str) {
    if !value
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    for (i, part) in value.split('"').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'"');
}

/// The positions a request reads: every event it may return lies in `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    first: i64,
    last: i64,
}

impl Extent {
    /// Up to the settled horizon, narrowed to the positions of the filter's time range.
    async fn of(conn: &mut PgConnection, filter: &EventFilter) -> Result<Self, ApiError> {
        let horizon = settled_horizon(conn).await?;
        let (first, last) = if filter.from.is_some() || filter.to.is_some() {
            time_range_positions(conn, filter.from, filter.to, horizon).await?
        } else {
            (0, horizon)
        };
        Ok(Self {
            first,
            last: last.min(horizon),
        })
    }
}

/// Bounds `(first, last)` on the positions of the events recorded in `[from, to)`, at most
/// `horizon`.
///
/// Pages go in position order, but with a time filter the planner either walks the primary key
/// from the start of the log up to the range (it assumes matches spread evenly) or sorts the
/// whole range. Bounded positions turn either into a walk over the range itself. Times follow
/// positions only roughly (`recorded_at` is the appending process's clock, read just before
/// its insert), so the bounds come in two steps: a binary search over positions (about 20
/// primary-key probes) guesses where the range starts and ends, then the BRIN index over
/// `(recorded_at, position)` looks for events of the range beyond the guesses, reading only the
/// few blocks where both can lie. The bounds are exact however disordered the times are; only
/// the cost grows with the disorder.
async fn time_range_positions(
    conn: &mut PgConnection,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    horizon: i64,
) -> Result<(i64, i64), ApiError> {
    // Guesses: `below`, a position recorded before the range (0: none); `above`, one recorded
    // after it (beyond the horizon: none).
    let mut guess = QueryBuilder::new("with recursive ");
    push_crossing_search(&mut guess, "before_range", from, horizon);
    guess.push(", ");
    push_crossing_search(&mut guess, "after_range", to, horizon);
    guess.push(" select (select max(lo) from before_range), (select min(hi) from after_range)");
    let (below, above): (Option<i64>, Option<i64>) = guess
        .build_query_as()
        .persistent(false)
        .fetch_one(&mut *conn)
        .await?;
    let below = below.unwrap_or(0);
    let above = above.unwrap_or(horizon + 1);
    if below == 0 && above > horizon {
        return Ok((0, horizon));
    }

    // Events of the range on the wrong side of a guess.
    let mut check = QueryBuilder::new("select (select min(position) from events where true");
    push_time_range(&mut check, from, to);
    check.push(" and position < ").push_bind(below);
    check.push("), (select max(position) from events where true");
    push_time_range(&mut check, from, to);
    check.push(" and position > ").push_bind(above);
    check.push(")");
    // The planner cannot tell that this BRIN scan reads a handful of blocks (it takes the two
    // conditions for independent) and would walk the primary key over half the log instead:
    // bitmap scans only, and none of the start-up costs of JIT and parallel workers that its
    // cost estimate would call for, in this one transaction.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(
        "select set_config('enable_seqscan', 'off', true),
                set_config('enable_indexscan', 'off', true),
                set_config('enable_indexonlyscan', 'off', true),
                set_config('max_parallel_workers_per_gather', '0', true),
                set_config('jit', 'off', true)",
    )
    .execute(&mut *tx)
    .await?;
    let (earlier, later): (Option<i64>, Option<i64>) = check
        .build_query_as()
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let first = earlier.unwrap_or(below);
    let last = if above > horizon {
        horizon
    } else {
        later.unwrap_or(above)
    };
    Ok((first, last))
}

/// A recursive CTE `name(lo, hi)` bisecting `0..=horizon + 1` for where the log crosses
/// `instant`: the event at or before `lo` was recorded before it, the one at or before `hi` at
/// or after it, as far as the probes saw. Without an instant, no rows.
fn push_crossing_search(
    query: &mut QueryBuilder<'_, Postgres>,
    name: &str,
    instant: Option<DateTime<Utc>>,
    horizon: i64,
) {
    query.push(format!("{name}(lo, hi) as (select 0::bigint, "));
    query.push_bind(horizon + 1);
    query.push("::bigint where ");
    query.push_bind(instant);
    query.push(
        "::timestamptz is not null
         union all
         select case when probe.at is null or probe.at < ",
    );
    query.push_bind(instant);
    query.push(
        " then (s.lo + s.hi) / 2 else s.lo end,
                case when probe.at is null or probe.at < ",
    );
    query.push_bind(instant);
    query.push(format!(
        " then s.hi else (s.lo + s.hi) / 2 end
           from {name} s
           left join lateral (select e.recorded_at as at from events e
                               where e.position <= (s.lo + s.hi) / 2
                               order by e.position desc limit 1) probe on true
          where s.hi - s.lo > 1)"
    ));
}

fn push_time_range(
    query: &mut QueryBuilder<'_, Postgres>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) {
    if let Some(from) = from {
        query.push(" and recorded_at >= ").push_bind(from);
    }
    if let Some(to) = to {
        query.push(" and recorded_at < ").push_bind(to);
    }
}

/// The position up to which the log is settled: the last position handed out when this is
/// called, after every transaction that was then writing to `events` has ended (see the module
/// documentation). 503 if one stays open longer than [`WRITER_WAIT`].
async fn settled_horizon(conn: &mut PgConnection) -> Result<i64, ApiError> {
    // First the last position, then the writers: a position drawn before the first query was
    // drawn under a lock still held by the second, unless its transaction has ended.
    let last: Option<i64> = sqlx::query_scalar(
        "select pg_sequence_last_value(pg_get_serial_sequence('events', 'position')::regclass)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let writers: Vec<String> = sqlx::query_scalar(
        "select virtualtransaction from pg_locks
          where locktype = 'relation' and relation = 'events'::regclass
            and mode = 'RowExclusiveLock' and granted and pid is distinct from pg_backend_pid()",
    )
    .fetch_all(&mut *conn)
    .await?;
    if !writers.is_empty() {
        wait_for_writers(conn, &writers).await?;
    }
    Ok(last.unwrap_or(0))
}

async fn wait_for_writers(conn: &mut PgConnection, writers: &[String]) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + WRITER_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        let open: Vec<i32> = sqlx::query_scalar(
            "select coalesce(pid, 0) from pg_locks
              where locktype = 'relation' and relation = 'events'::regclass
                and mode = 'RowExclusiveLock' and virtualtransaction = any($1)",
        )
        .bind(writers)
        .fetch_all(&mut *conn)
        .await?;
        if open.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                pids = ?open,
                wait_ms = WRITER_WAIT.as_millis() as u64,
                "transactions writing to the event log stayed open; refusing a page that could skip their events"
            );
            return Err(ApiError::Unavailable);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Where a page starts: after or before a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageCursor {
    /// Events after this position, ascending (`next`).
    After(i64),
    /// Events before this position, the closest first (`prev`); shown ascending.
    Before(i64),
}

impl PageCursor {
    fn parse(raw: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::BadRequest("cursor is not one this API returned".into());
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
        let (direction, position) = text.split_once(':').ok_or_else(bad)?;
        let position: i64 = position.parse().map_err(|_| bad())?;
        if position < 0 {
            return Err(bad());
        }
        match direction {
            "f" => Ok(Self::After(position)),
            "b" => Ok(Self::Before(position)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for PageCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = match self {
            Self::After(p) => format!("f:{p}"),
            Self::Before(p) => format!("b:{p}"),
        };
        f.write_str(&URL_SAFE_NO_PAD.encode(raw))
    }
}

/// The filters of a request, checked.
#[derive(Debug, Default, Clone)]
struct EventFilter {
    stream: Option<String>,
    stream_prefix: Option<String>,
    types: Vec<String>,
    actor: Option<String>,
    correlation_id: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl EventFilter {
    /// Appends ` and <condition>` for each filter, written so that an index ending in
    /// `position` serves it (see the migration `event_query_indexes`).
    fn push_conditions(&self, query: &mut QueryBuilder<'_, Postgres>) {
        if let Some(stream) = &self.stream {
            query.push(" and e.stream_id = ").push_bind(stream.clone());
        }
        if let Some(prefix) = &self.stream_prefix {
            match category_of(prefix) {
                // `user-`: the category index walks the category in log order. `split_part` is
                // `user` for `user` itself too, hence the `<>`; no `starts_with` here, which
                // the planner would take for an independent filter and then misjudge the
                // category index.
                Some(category) => {
                    query
                        .push(" and split_part(e.stream_id, '-', 1) = ")
                        .push_bind(category.to_owned())
                        .push(" and e.stream_id <> ")
                        .push_bind(category.to_owned());
                }
                // Any other prefix: a byte-wise range of the pattern index.
                None => {
                    query
                        .push(" and e.stream_id ~>=~ ")
                        .push_bind(prefix.clone());
                    if let Some(upper) = prefix_upper_bound(prefix) {
                        query.push(" and e.stream_id ~<~ ").push_bind(upper);
                    }
                    query
                        .push(" and starts_with(e.stream_id, ")
                        .push_bind(prefix.clone())
                        .push(")");
                }
            }
        }
        match self.types.as_slice() {
            [] => {}
            [one] => {
                query.push(" and e.event_type = ").push_bind(one.clone());
            }
            many => {
                query
                    .push(" and e.event_type = any(")
                    .push_bind(many.to_vec())
                    .push(")");
            }
        }
        if let Some(actor) = &self.actor {
            query
                .push(" and (e.metadata ->> 'actor') = ")
                .push_bind(actor.clone());
        }
        if let Some(correlation) = &self.correlation_id {
            // `Metadata` serialises the id hyphenated and lowercase, as `Uuid` displays it.
            query
                .push(" and (e.metadata ->> 'correlation_id') = ")
                .push_bind(correlation.to_string());
        }
        if let Some(from) = self.from {
            query.push(" and e.recorded_at >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            query.push(" and e.recorded_at < ").push_bind(to);
        }
    }
}

/// `user` for the prefix `user-`: a prefix that is a whole stream category (no other `-`).
fn category_of(prefix: &str) -> Option<&str> {
    let category = prefix.strip_suffix('-')?;
    (!category.is_empty() && !category.contains('-')).then_some(category)
}

/// The smallest string above every string starting with `prefix`, in byte order: the prefix
/// with its last character replaced by the next one (UTF-8 keeps code point order in bytes).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The two routes differ in their parameters besides the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    List,
    Export,
}

/// A request's parameters, checked.
#[derive(Debug, Default)]
struct Params {
    filter: EventFilter,
    limit: Option<i64>,
    cursor: Option<PageCursor>,
    format: Option<ExportFormat>,
}

impl Params {
    /// Reads the query's pairs: unknown or repeated parameters (but `type`) and bad values are
    /// a 400 that says which.
    fn parse(pairs: Vec<(String, String)>, route: Route) -> Result<Self, ApiError> {
        let mut params = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in pairs {
            if key != "type" {
                if seen.contains(&key) {
                    return Err(ApiError::BadRequest(format!(
                        "query parameter {key} is given more than once"
                    )));
                }
                seen.push(key.clone());
            }
            let f = &mut params.filter;
            match (key.as_str(), route) {
                ("stream", _) => f.stream = Some(text("stream", value)?),
                ("stream_prefix", _) => f.stream_prefix = Some(text("stream_prefix", value)?),
                ("type", _) => {
                    for t in value.split(',') {
                        let t = text("type", t.trim().to_owned())?;
                        if !f.types.contains(&t) {
                            f.types.push(t);
                        }
                    }
                    if f.types.len() > MAX_TYPES {
                        return Err(ApiError::BadRequest(format!(
                            "at most {MAX_TYPES} event types per query"
                        )));
                    }
                }
                ("actor", _) => f.actor = Some(text("actor", value)?),
                ("correlation_id", _) => {
                    f.correlation_id = Some(value.trim().parse().map_err(|_| {
                        ApiError::BadRequest(format!("correlation_id {value:?} is not a UUID"))
                    })?);
                }
                ("from", _) => f.from = Some(instant("from", &value)?),
                ("to", _) => f.to = Some(instant("to", &value)?),
                ("limit", Route::List) => {
                    let limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "limit must be a whole number from 1 to {MAX_LIMIT}"
                            ))
                        })?;
                    params.limit = Some(limit);
                }
                ("cursor", Route::List) => params.cursor = Some(PageCursor::parse(&value)?),
                ("format", Route::Export) => params.format = Some(ExportFormat::parse(&value)?),
                (other, _) => {
                    let known = match route {
                        Route::List => {
                            "stream, stream_prefix, type, actor, correlation_id, from, to, limit, cursor"
                        }
                        Route::Export => {
                            "stream, stream_prefix, type, actor, correlation_id, from, to, format"
                        }
                    };
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {other:?}; known: {known}"
                    )));
                }
            }
        }
        if let (Some(from), Some(to)) = (params.filter.from, params.filter.to)
            && from >= to
        {
            return Err(ApiError::BadRequest("from must be before to".into()));
        }
        Ok(params)
    }
}

/// A text filter: not empty, not too long, no NUL (which PostgreSQL text cannot hold).
fn text(name: &str, value: String) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::BadRequest(format!("{name} must not be empty")));
    }
    if value.chars().count() > MAX_TEXT {
        return Err(ApiError::BadRequest(format!(
            "{name} is longer than {MAX_TEXT} characters"
        )));
    }
    if value.contains('\0') {
        return Err(ApiError::BadRequest(format!("{name} must not contain NUL")));
    }
    Ok(value)
}

/// An RFC 3339 instant. A `+` left unencoded in a query string arrives as a space; it is read
/// back as the `+` of the offset.
fn instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|e| {
            if value.contains(' ') {
                DateTime::parse_from_rfc3339(&value.replace(' ', "+"))
            } else {
                Err(e)
            }
        })
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name} {value:?} is not an RFC 3339 time such as 2026-12-01T10:00:00Z"
            ))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pairs(raw: &[(&str, &str)]) -> Vec<(String, String)> {
        raw.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn cursors_name_a_direction_and_a_position() {
        for cursor in [
            PageCursor::After(0),
            PageCursor::After(42),
            PageCursor::Before(7),
        ] {
            assert_eq!(PageCursor::parse(&cursor.to_string()).unwrap(), cursor);
        }
        for bad in [
            "",
            "f:1",
            "Zjph",
            "eDox",
            "Zjot MQ",
            &URL_SAFE_NO_PAD.encode("f:-1"),
        ] {
            assert!(PageCursor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        let mut out = Vec::new();
        csv_field(&mut out, "plain");
        out.push(b'|');
        csv_field(&mut out, r#"{"a": "b,c"}"#);
        out.push(b'|');
        csv_field(&mut out, "two\r\nlines");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain|\"{\"\"a\"\": \"\"b,c\"\"}\"|\"two\r\nlines\""
        );
    }

    #[test]
    fn prefixes_get_a_byte_wise_upper_bound() {
        assert_eq!(prefix_upper_bound("user-").as_deref(), Some("user."));
        assert_eq!(prefix_upper_bound("a\u{7f}").as_deref(), Some("a\u{80}"));
        assert_eq!(
            prefix_upper_bound("a\u{d7ff}").as_deref(),
            Some("a\u{e000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10ffff}"), None);
        assert_eq!(category_of("user-"), Some("user"));
        assert_eq!(category_of("login-unknown-"), None);
        assert_eq!(category_of("user"), None);
        assert_eq!(category_of("-"), None);
    }

    #[test]
    fn types_may_be_repeated_or_comma_separated_and_other_repeats_are_refused() {
        let params = Params::parse(
            pairs(&[("type", "A,B"), ("type", "C"), ("type", "A")]),
            Route::List,
        )
        .unwrap();
        assert_eq!(params.filter.types, ["A", "B", "C"]);
        assert!(Params::parse(pairs(&[("limit", "1"), ("limit", "2")]), Route::List).is_err());
        assert!(Params::parse(pairs(&[("type", "A,,B")]), Route::List).is_err());
    }

    #[test]
    fn each_route_accepts_only_its_own_parameters() {
        assert!(Params::parse(pairs(&[("format", "csv")]), Route::List).is_err());
        assert!(Params::parse(pairs(&[("limit", "10")]), Route::Export).is_err());
        assert!(Params::parse(pairs(&[("cursor", "Zjox")]), Route::Export).is_err());
        assert!(Params::parse(pairs(&[("color", "red")]), Route::List).is_err());
        let export = Params::parse(pairs(&[("format", "ndjson")]), Route::Export).unwrap();
        assert_eq!(export.format, Some(ExportFormat::Ndjson));
    }

    #[test]
    fn times_are_rfc_3339_even_with_a_plus_decoded_as_a_space() {
        let expected = instant("from", "2026-12-01T09:00:00Z").unwrap();
        assert_eq!(
            instant("from", "2026-12-01T10:00:00+01:00").unwrap(),
            expected
        );
        assert_eq!(
            instant("from", "2026-12-01T10:00:00 01:00").unwrap(),
            expected
        );
        assert!(instant("from", "yesterday").is_err());
        assert!(
            Params::parse(
                pairs(&[
                    ("from", "2026-12-02T00:00:00Z"),
                    ("to", "2026-12-01T00:00:00Z")
                ]),
                Route::List
            )
            .is_err()
        );
    }

    #[test]
    fn ndjson_lines_carry_the_json_as_stored() {
        let row = ExportRow {
            position: 3,
            event_id: Uuid::nil(),
            stream_id: "user-\"x\"".into(),
            stream_version: 1,
            event_type: "UserRegistered".into(),
            schema_version: 1,
            data: r#"{"n": 12345678901234567890123}"#.into(),
            metadata: "{}".into(),
            recorded_at: DateTime::from_timestamp_micros(1_000_001).unwrap(),
            hash: vec![0xab; 32],
        };
        let mut out = Vec::new();
        ExportFormat::Ndjson.encode(&row, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        assert!(line.contains(r#""data":{"n": 12345678901234567890123}"#));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["stream_id"], "user-\"x\"");
        assert_eq!(parsed["recorded_at"], "1970-01-01T00:00:01.000001Z");
        assert_eq!(parsed["hash"], "ab".repeat(32));
    }
}
