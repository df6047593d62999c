//! `/v1/admin/events` and `/v1/admin/events/export`: the event log as an auditor reads it —
//! filtered, paged in log order (by position) forwards and backwards, or exported whole as CSV
//! or NDJSON (admin role required on every request).
//!
//! The reading itself, commit-safe and index-friendly, is [`idp_events::query`]; this module
//! holds the HTTP parameters, the response documents and the mapping of its errors to problems.
//! Events are returned as stored, not upcast: the data, schema version and hash are exactly what
//! the stream's hash chain covers.
//!
//! A request reads up to the log's settled position when it arrived (see
//! [`idp_events::query`]). A transaction writing to the log that stays open longer than
//! [`WRITER_WAIT`](idp_events::query::WRITER_WAIT) gets the request a 503 with `Retry-After`
//! and a detail naming the cause, rather than a page that could skip its events: a shorter,
//! "settled" page cannot be offered, because which positions below the last one the open writer
//! holds is not visible to a reader until it commits.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::SinkExt;
use futures::channel::mpsc;
use idp_events::RecordedEvent;
use idp_events::query::{
    self, EventFilter, ExportFormat, ExportRow, ExportSink, Extent, PageCursor, PageLimit,
    QueryError, StreamPrefix,
};
use serde::{Deserialize, Deserializer, Serialize};
use tracing::Instrument;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::permissions::{Permitted, ReadEvents};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::startup::AppState;

pub use idp_events::query::{DEFAULT_LIMIT, MAX_LIMIT};

/// Bytes of an export handed to the connection at a time.
const EXPORT_CHUNK: usize = 256 * 1024;
/// Encoded chunks buffered between the database reader and the connection.
const EXPORT_CHUNKS_IN_FLIGHT: usize = 4;
/// Longest stream id, prefix, type or actor accepted in a filter, in characters.
const MAX_TEXT: usize = 512;
/// Most event types in one filter.
const MAX_TYPES: usize = 100;
/// Seconds a client is told to wait when the log could not settle.
const UNSETTLED_RETRY_AFTER_SECS: u64 = 1;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/events", get(list_events))
        .route("/v1/admin/events/export", get(export_events))
}

/// Filters of the event log, shared by the list and the export. All given filters must match.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilterParams {
    /// Only the events of this stream (exact), e.g. `user-0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d`;
    /// 1 to 512 characters, no NUL.
    #[param(min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$")]
    #[serde(default, deserialize_with = "de_stream")]
    pub stream: Option<String>,
    /// Only the events of streams whose id starts with this, e.g. `user-` or `project-`; 1 to
    /// 512 characters, no NUL.
    #[param(
        example = "user-",
        min_length = 1,
        max_length = 512,
        pattern = "^[^\\u0000]*$"
    )]
    #[serde(default, deserialize_with = "de_stream_prefix")]
    pub stream_prefix: Option<String>,
    /// Only events of these types: repeat the parameter (`type=A&type=B`) or separate the
    /// types with commas (`type=A,B`); each type 1 to 512 characters (blanks around it are
    /// ignored), no NUL, at most 100 types.
    #[param(rename = "type", style = Form, explode, example = json!(["UserRegistered"]),
            value_type = Option<Vec<EventTypeName>>)]
    #[serde(rename = "type", default, deserialize_with = "de_event_types")]
    pub event_types: Vec<String>,
    /// Only events whose metadata names this actor, e.g. `user-<uuid>`, `system`, `worker`; 1 to
    /// 512 characters, no NUL.
    #[param(min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$")]
    #[serde(default, deserialize_with = "de_actor")]
    pub actor: Option<String>,
    /// Only events whose metadata carries this correlation id.
    #[serde(default, deserialize_with = "de_correlation_id")]
    pub correlation_id: Option<Uuid>,
    /// Only events recorded at or after this instant (RFC 3339; encode `+` as `%2B`).
    #[serde(default, deserialize_with = "de_from")]
    pub from: Option<DateTime<Utc>>,
    /// Only events recorded before this instant (RFC 3339, exclusive).
    #[serde(default, deserialize_with = "de_to")]
    pub to: Option<DateTime<Utc>>,
}

impl EventFilterParams {
    /// The filter these parameters ask for; a time range that ends before it starts is a 400.
    fn into_filter(self) -> Result<EventFilter, ApiError> {
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            return Err(ApiError::BadRequest("from must be before to".into()));
        }
        Ok(EventFilter {
            stream: self.stream,
            stream_prefix: self.stream_prefix.map(StreamPrefix::new),
            types: self.event_types,
            actor: self.actor,
            correlation_id: self.correlation_id,
            from: self.from,
            to: self.to,
        })
    }
}

/// Paging of the event list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventPageParams {
    /// Events per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, value_type = Option<i64>)]
    #[serde(default, deserialize_with = "de_limit")]
    pub limit: Option<PageLimit>,
    /// The `next`, `prev` or `resume` of a page; without it, the first page (the oldest events).
    #[param(value_type = Option<String>)]
    #[serde(default, deserialize_with = "de_cursor")]
    pub cursor: Option<PageCursor>,
}

/// The format of an export.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportFormatParams {
    /// `csv` or `ndjson`.
    #[param(required = true, value_type = String, example = "ndjson", pattern = "^(csv|ndjson)$")]
    #[serde(default, deserialize_with = "de_format")]
    pub format: Option<ExportFormat>,
}

/// The query of `GET /v1/admin/events`: filters and paging.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    /// The filters.
    #[serde(flatten)]
    pub filter: EventFilterParams,
    /// The page.
    #[serde(flatten)]
    pub page: EventPageParams,
}

/// The query of `GET /v1/admin/events/export`: filters and the format.
#[derive(Debug, Default, Deserialize)]
pub struct ExportParams {
    /// The filters.
    #[serde(flatten)]
    pub filter: EventFilterParams,
    /// The format.
    #[serde(flatten)]
    pub format: ExportFormatParams,
}

// utoipa's `IntoParams` derive does not follow `#[serde(flatten)]`: the parameters of a route
// are those of its parts, in order.
impl IntoParams for ListParams {
    fn into_params(parameter_in: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = EventFilterParams::into_params(&parameter_in);
        params.extend(EventPageParams::into_params(&parameter_in));
        params
    }
}

impl IntoParams for ExportParams {
    fn into_params(parameter_in: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = EventFilterParams::into_params(&parameter_in);
        params.extend(ExportFormatParams::into_params(&parameter_in));
        params
    }
}

/// An event type in a filter: one name, or several separated by commas, none of them blank.
#[derive(Debug, ToSchema)]
#[schema(as = EventTypeName, value_type = String, example = "UserRegistered",
         pattern = "^[^,\\u0000]*[^,\\s\\u0000][^,\\u0000]*(,[^,\\u0000]*[^,\\s\\u0000][^,\\u0000]*)*$")]
pub struct EventTypeName(pub String);

/// A text filter: not empty, not too long (a NUL, which PostgreSQL text cannot hold, is refused
/// for every query parameter by [`ApiQuery`]).
fn text(name: &str, value: String) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("{name} must not be empty"));
    }
    if value.chars().count() > MAX_TEXT {
        return Err(format!("{name} is longer than {MAX_TEXT} characters"));
    }
    Ok(value)
}

/// Event types, comma-separated (repeated parameters arrive joined by commas), each one a
/// text filter, kept once each in the order given.
fn types(value: &str) -> Result<Vec<String>, String> {
    let mut types: Vec<String> = Vec::new();
    for t in value.split(',') {
        let t = text("type", t.trim().to_owned())?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.len() > MAX_TYPES {
        return Err(format!("at most {MAX_TYPES} event types per query"));
    }
    Ok(types)
}

/// An RFC 3339 instant. A `+` left unencoded in a query string arrives as a space; it is read
/// back as the `+` of the offset.
fn instant(name: &str, value: &str) -> Result<DateTime<Utc>, String> {
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
            format!("{name} {value:?} is not an RFC 3339 time such as 2026-12-01T10:00:00Z")
        })
}

fn limit_value(value: &str) -> Result<PageLimit, String> {
    value
        .parse::<i64>()
        .ok()
        .and_then(PageLimit::new)
        .ok_or_else(|| format!("limit must be a whole number from 1 to {MAX_LIMIT}"))
}

fn format_value(value: &str) -> Result<ExportFormat, String> {
    ExportFormat::from_name(value).ok_or_else(|| format!("format {value:?} is not csv or ndjson"))
}

fn correlation_value(value: &str) -> Result<Uuid, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("correlation_id {value:?} is not a UUID"))
}

/// Reads a parameter's text and checks it with `check`, whose message is the 400's detail.
fn checked<'de, D, T>(d: D, check: impl FnOnce(String) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let value = String::deserialize(d)?;
    check(value).map_err(serde::de::Error::custom)
}

fn de_stream<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |v| text("stream", v)).map(Some)
}

fn de_stream_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |v| text("stream_prefix", v)).map(Some)
}

fn de_actor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |v| text("actor", v)).map(Some)
}

fn de_event_types<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked(d, |v| types(&v))
}

fn de_correlation_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    checked(d, |v| correlation_value(&v)).map(Some)
}

fn de_from<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    checked(d, |v| instant("from", &v)).map(Some)
}

fn de_to<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    checked(d, |v| instant("to", &v)).map(Some)
}

fn de_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PageLimit>, D::Error> {
    checked(d, |v| limit_value(&v)).map(Some)
}

fn de_cursor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PageCursor>, D::Error> {
    checked(d, |v| PageCursor::parse(&v).map_err(|e| e.to_string())).map(Some)
}

fn de_format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ExportFormat>, D::Error> {
    checked(d, |v| format_value(&v)).map(Some)
}

/// The problem a failed read of the log answers.
fn refused(err: QueryError) -> ApiError {
    match err {
        QueryError::Unsettled { writers, waited } => ApiError::RetryLater {
            detail: format!(
                "{writers} transaction(s) writing to the event log stayed open longer than {} ms; \
                 a page now could skip their events, try again shortly",
                waited.as_millis()
            ),
            retry_after_secs: UNSETTLED_RETRY_AFTER_SECS,
        },
        QueryError::Database(e) => e.into(),
        QueryError::Keys(e) => idp_events::ReadError::Keys(e).into(),
    }
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
    fn from(mut e: RecordedEvent) -> Self {
        idp_events::privacy::fields::unmark(&mut e.data);
        idp_events::privacy::fields::unmark(&mut e.metadata);
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
    "next": null, "prev": null, "resume": "Zjo0Mg"}))]
pub struct EventPage {
    /// The events.
    pub items: Vec<LoggedEvent>,
    /// Pass as `cursor` for the following (newer) events; absent when no more events matched
    /// when this page was read.
    pub next: Option<String>,
    /// Pass as `cursor` for the preceding (older) events; absent on the first page.
    pub prev: Option<String>,
    /// Pass as `cursor` to read on after this page, also at the end of the log: the same as
    /// `next` when there is one, otherwise the events appended after this page was read, none
    /// of them a repeat. A reader that follows the log passes it again and again.
    pub resume: String,
}

/// Lists events in log order, filtered, a page at a time, forwards or backwards.
///
/// Pages only reach events whose position is settled (see the module documentation): an event
/// committing late is never skipped by a reader following `next`, and a reader following
/// `resume` at the end of the log gets each new event once. A writer that keeps a transaction
/// open on the log for more than 3 s makes the request a 503 with `Retry-After` (no page could
/// then be known not to skip its events).
#[utoipa::path(get, path = "/v1/admin/events", tag = "admin", security(("bearer" = [])),
    params(ListParams),
    responses((status = 200, description = "A page of events", body = EventPage),
              (status = 400, description = "Bad filter, limit or cursor, or an unknown parameter"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 503, description = "A transaction writing to the log stayed open longer than 3 s: no page is settled yet. `Retry-After` says when to try again; the detail names the cause",
               headers(("Retry-After" = u64, description = "Seconds to wait before trying again")))))]
#[tracing::instrument(name = "admin.events.list", skip_all, fields(user.id = %admin.user_id))]
pub async fn list_events(
    State(state): State<AppState>,
    Permitted { user: admin, .. }: Permitted<ReadEvents>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<EventPage>, ApiError> {
    let filter = params.filter.into_filter()?;
    let limit = params.page.limit.unwrap_or_default();
    let mut conn = state.store.pool().acquire().await?;
    let mut page = query::page(&mut conn, &filter, params.page.cursor, limit)
        .await
        .map_err(refused)?;
    state
        .store
        .open_personal(Some(&mut conn), &mut page.events)
        .await?;
    drop(conn);
    Ok(Json(EventPage {
        items: page.events.into_iter().map(LoggedEvent::from).collect(),
        next: page.next.map(|c| c.to_string()),
        prev: page.prev.map(|c| c.to_string()),
        resume: page.resume.to_string(),
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
    params(ExportParams),
    responses((status = 200, description = "The matching events, as an attachment `idp-events-<UTC time>.csv` or `.ndjson`",
               content((String = "text/csv", example = json!("position,event_id,stream_id,stream_version,event_type,schema_version,recorded_at,hash,data,metadata\r\n1,0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d,user-0190f4c2-7b00-7c3b-9d2a-111111111111,1,UserRegistered,1,2026-12-01T10:00:00Z,9f2c...,\"{\"\"email\"\":\"\"ada@example.com\"\"}\",{}\r\n")),
                       (String = "application/x-ndjson", example = json!("{\"position\":1,\"event_id\":\"0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d\",\"stream_id\":\"user-0190f4c2-7b00-7c3b-9d2a-111111111111\",\"stream_version\":1,\"event_type\":\"UserRegistered\",\"schema_version\":1,\"data\":{\"email\":\"ada@example.com\"},\"metadata\":{},\"recorded_at\":\"2026-12-01T10:00:00Z\",\"hash\":\"9f2c...\"}\n"))),
               headers(("Content-Disposition" = String, description = "`attachment; filename=\"idp-events-<UTC time>.<csv|ndjson>\"`"))),
              (status = 400, description = "Bad filter or format, or an unknown parameter"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 503, description = "A transaction writing to the log stayed open longer than 3 s: the export's end is not settled yet. `Retry-After` says when to try again; the detail names the cause",
               headers(("Retry-After" = u64, description = "Seconds to wait before trying again")))))]
#[tracing::instrument(name = "admin.events.export", skip_all, fields(user.id = %admin.user_id))]
pub async fn export_events(
    State(state): State<AppState>,
    Permitted { user: admin, .. }: Permitted<ReadEvents>,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    let filter = params.filter.into_filter()?;
    let format = params
        .format
        .format
        .ok_or_else(|| ApiError::BadRequest("format is required: csv or ndjson".into()))?;
    let extent = {
        let mut conn = state.store.pool().acquire().await?;
        Extent::of(&mut conn, &filter).await.map_err(refused)?
    };
    let (tx, rx) = mpsc::channel(EXPORT_CHUNKS_IN_FLIGHT);
    let store = state.store.clone();
    tokio::spawn(
        async move {
            let started = std::time::Instant::now();
            let mut sink = ChunkedBody::new(format, tx);
            let outcome = query::export(&store, &filter, extent, &mut sink).await;
            sink.finish(outcome, started).await;
        }
        .instrument(tracing::info_span!(
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

/// The body of an export: rows encoded into chunks of about [`EXPORT_CHUNK`] bytes, sent to the
/// connection as they fill, so memory holds a chunk and a row whatever the size of the events.
struct ChunkedBody {
    format: ExportFormat,
    buf: Vec<u8>,
    bytes: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// Why the body stopped taking rows, if it did.
    stop: Option<Stop>,
}

/// Why an export's body stopped taking rows.
#[derive(Debug)]
enum Stop {
    /// The client went away.
    Gone,
    /// A row could not be encoded.
    Encoding(std::io::Error),
}

impl ChunkedBody {
    fn new(format: ExportFormat, tx: mpsc::Sender<Result<Bytes, std::io::Error>>) -> Self {
        let mut buf = Self::fresh_buffer();
        buf.extend_from_slice(format.preamble().as_bytes());
        Self {
            format,
            buf,
            bytes: 0,
            tx,
            stop: None,
        }
    }

    fn fresh_buffer() -> Vec<u8> {
        Vec::with_capacity(EXPORT_CHUNK + 64 * 1024)
    }

    /// Sends the rest and logs how the export ended; a failure midway aborts the transfer (an
    /// error instead of the final chunk), so a truncated file cannot pass for a complete one.
    async fn finish(
        mut self,
        outcome: Result<query::ExportSummary, QueryError>,
        started: std::time::Instant,
    ) {
        let failure = match (outcome, self.stop.take()) {
            (Err(err), _) => Some(err.to_string()),
            (Ok(_), Some(Stop::Encoding(err))) => Some(format!("encoding: {err}")),
            (Ok(summary), Some(Stop::Gone)) => {
                tracing::info!(events = summary.events, "export abandoned by the client");
                return;
            }
            (Ok(_), None) => None,
        };
        if let Some(error) = failure {
            tracing::error!(%error, "export failed midway; transfer aborted");
            let _ = self
                .tx
                .send(Err(std::io::Error::other("export failed")))
                .await;
            return;
        }
        self.bytes += self.buf.len() as u64;
        let bytes = self.bytes;
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() && self.tx.send(Ok(Bytes::from(rest))).await.is_err() {
            return;
        }
        tracing::info!(
            bytes,
            duration_ms = started.elapsed().as_millis() as u64,
            "export finished"
        );
    }
}

impl ExportSink for ChunkedBody {
    async fn accept(&mut self, row: &ExportRow) -> bool {
        if let Err(err) = self.format.encode(row, &mut self.buf) {
            self.stop = Some(Stop::Encoding(err));
            return false;
        }
        if self.buf.len() >= EXPORT_CHUNK {
            self.bytes += self.buf.len() as u64;
            let chunk = Bytes::from(std::mem::replace(&mut self.buf, Self::fresh_buffer()));
            if self.tx.send(Ok(chunk)).await.is_err() {
                self.stop = Some(Stop::Gone);
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::extract::FromRequestParts;
    use axum::http::Request;

    use idp_events::query::WRITER_WAIT;

    use super::*;

    async fn read<T: serde::de::DeserializeOwned + IntoParams + 'static>(
        query: &str,
    ) -> Result<T, String> {
        let (mut parts, ()) = Request::builder()
            .uri(format!("/v1/admin/events?{query}"))
            .body(())
            .unwrap()
            .into_parts();
        match ApiQuery::<T>::from_request_parts(&mut parts, &()).await {
            Ok(ApiQuery(value)) => Ok(value),
            Err(ApiError::BadRequest(detail)) => Err(detail),
            Err(other) => panic!("not a 400: {other:?}"),
        }
    }

    #[tokio::test]
    async fn types_may_be_repeated_or_comma_separated_and_other_repeats_are_refused() {
        let params: ListParams = read("type=A,B&type=C&type=A").await.unwrap();
        assert_eq!(params.filter.event_types, ["A", "B", "C"]);
        let twice = read::<ListParams>("limit=1&limit=2").await.unwrap_err();
        assert_eq!(twice, "query parameter limit is given more than once");
        let blank = read::<ListParams>("type=A,,B").await.unwrap_err();
        assert!(blank.contains("type must not be empty"), "{blank}");
        let many = (0..=MAX_TYPES).map(|i| format!("T{i}")).collect::<Vec<_>>();
        let too_many = read::<ListParams>(&format!("type={}", many.join(",")))
            .await
            .unwrap_err();
        assert!(too_many.contains("at most 100 event types"), "{too_many}");
    }

    #[tokio::test]
    async fn each_route_accepts_only_its_own_parameters() {
        let unknown = read::<ListParams>("format=csv").await.unwrap_err();
        assert_eq!(
            unknown,
            "unknown query parameter \"format\"; known: stream, stream_prefix, type, actor, \
             correlation_id, from, to, limit, cursor"
        );
        assert!(read::<ExportParams>("limit=10").await.is_err());
        assert!(read::<ExportParams>("cursor=Zjox").await.is_err());
        assert!(read::<ListParams>("color=red").await.is_err());
        let export: ExportParams = read("format=ndjson").await.unwrap();
        assert_eq!(export.format.format, Some(ExportFormat::Ndjson));
        let missing: ExportParams = read("").await.unwrap();
        assert_eq!(missing.format.format, None);
    }

    #[tokio::test]
    async fn values_are_checked_with_messages_that_name_the_parameter() {
        let page: ListParams = read("limit=7&cursor=Zjox&stream_prefix=user-&actor=system")
            .await
            .unwrap();
        assert_eq!(page.page.limit.map(PageLimit::get), Some(7));
        assert_eq!(page.page.cursor, Some(PageCursor::After(1)));
        let filter = page.filter.into_filter().unwrap();
        assert_eq!(
            filter.stream_prefix,
            Some(StreamPrefix::Category(idp_events::Category::User))
        );
        assert_eq!(filter.actor.as_deref(), Some("system"));
        for (query, says) in [
            ("limit=0", "limit must be a whole number from 1 to 1000"),
            ("limit=ten", "limit must be a whole number from 1 to 1000"),
            (
                "cursor=bm90LWEtY3Vyc29y",
                "cursor is not one this API returned",
            ),
            ("stream=", "stream must not be empty"),
            (
                "stream=a%00b",
                "query parameter stream holds a NUL character",
            ),
            ("correlation_id=42", "correlation_id \"42\" is not a UUID"),
        ] {
            let detail = read::<ListParams>(query).await.unwrap_err();
            assert!(detail.contains(says), "{query}: {detail}");
        }
        let long = "x".repeat(MAX_TEXT + 1);
        let detail = read::<ListParams>(&format!("actor={long}"))
            .await
            .unwrap_err();
        assert!(
            detail.contains("actor is longer than 512 characters"),
            "{detail}"
        );
        let detail = read::<ExportParams>("format=xml").await.unwrap_err();
        assert!(
            detail.contains("format \"xml\" is not csv or ndjson"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn times_are_rfc_3339_even_with_a_plus_decoded_as_a_space() {
        let expected = instant("from", "2026-12-01T09:00:00Z").unwrap();
        assert_eq!(
            instant("from", "2026-12-01T10:00:00+01:00").unwrap(),
            expected
        );
        let spaced: ListParams = read("from=2026-12-01T10:00:00+01:00").await.unwrap();
        assert_eq!(spaced.filter.from, Some(expected));
        assert!(instant("from", "yesterday").is_err());
        let backwards: ListParams = read("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z")
            .await
            .unwrap();
        assert!(matches!(
            backwards.filter.into_filter(),
            Err(ApiError::BadRequest(detail)) if detail == "from must be before to"
        ));
    }

    #[test]
    fn the_documented_parameters_are_the_accepted_ones() {
        use utoipa::openapi::Required;
        let list = ListParams::into_params(|| Some(ParameterIn::Query));
        let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "stream",
                "stream_prefix",
                "type",
                "actor",
                "correlation_id",
                "from",
                "to",
                "limit",
                "cursor"
            ]
        );
        assert!(list.iter().all(|p| p.required == Required::False));
        let export = ExportParams::into_params(|| Some(ParameterIn::Query));
        let format = export.iter().find(|p| p.name == "format").unwrap();
        assert!(format.required == Required::True);
    }

    #[test]
    fn an_unsettled_log_is_a_503_that_says_why_and_when_to_retry() {
        let err = refused(QueryError::Unsettled {
            writers: 1,
            waited: WRITER_WAIT,
        });
        let ApiError::RetryLater {
            detail,
            retry_after_secs,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(
            detail.contains("writing to the event log stayed open"),
            "{detail}"
        );
        assert_eq!(*retry_after_secs, UNSETTLED_RETRY_AFTER_SECS);
        let response = err.into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
