//! A whole-log export: every matching event up to the settled position, read in keyset
//! batches and handed on row by row, so memory stays flat however many events match; and the
//! two formats an export is written in, CSV and NDJSON.

use std::future::Future;
use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::{FromRow, PgConnection, QueryBuilder};
use uuid::Uuid;

use super::{EventFilter, Extent, QueryError};
use crate::event::RecordedEvent;
use crate::privacy::fields::unmark;
use crate::store::EventStore;

/// Rows an export reads per query (keyset batches by position).
pub const EXPORT_BATCH: i64 = 5_000;

/// CSV's first line: the column names.
pub const CSV_HEADER: &str = "position,event_id,stream_id,stream_version,event_type,schema_version,recorded_at,hash,data,metadata\r\n";

// data and metadata as text: PostgreSQL's rendering of jsonb is valid one-line JSON, passed
// through without a parse and a re-serialisation per event (and without losing the precision of
// numbers that do not fit an f64).
const SELECT_EXPORT: &str = "select e.position, e.event_id, e.stream_id, e.stream_version,
        e.event_type, e.schema_version, e.data::text as data, e.metadata::text as metadata,
        e.recorded_at, e.hash from events e";

/// One exported event, with its JSON as text.
#[derive(Debug, Clone, FromRow)]
pub struct ExportRow {
    /// Global position.
    pub position: i64,
    /// The event's identity.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its version within the stream.
    pub stream_version: i64,
    /// Its type.
    pub event_type: String,
    /// The version of its payload's shape, as stored.
    pub schema_version: i32,
    /// The payload, as PostgreSQL renders the stored JSON.
    pub data: String,
    /// The metadata, likewise.
    pub metadata: String,
    /// When it was appended.
    pub recorded_at: DateTime<Utc>,
    /// Its link in the stream's hash chain.
    pub hash: Vec<u8>,
}

/// Where the rows of an export go, one at a time, as they are read.
pub trait ExportSink: Send {
    /// Takes one row; `false` ends the export early (the reader went away, or the row could
    /// not be written).
    fn accept(&mut self, row: &ExportRow) -> impl Future<Output = bool> + Send;
}

/// How an export ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows handed to the sink.
    pub events: u64,
    /// Whether the sink ended the export before the last row.
    pub stopped: bool,
}

/// Hands every event of `filter` within `extent` to `sink`, in log order, reading batches of
/// [`EXPORT_BATCH`] rows, each on a connection of its own. The personal values of a batch are
/// opened with one query for their keys (each becomes its value, or `"[erased]"` when its key
/// is destroyed); events without personal values pass through as PostgreSQL renders them.
///
/// # Errors
/// The database's error, or the keys' when they cannot be read; the rows before it have been
/// handed on.
pub async fn export(
    store: &EventStore,
    filter: &EventFilter,
    extent: Extent,
    sink: &mut impl ExportSink,
) -> Result<ExportSummary, QueryError> {
    let mut after = extent.first - 1;
    let mut events = 0_u64;
    loop {
        let mut conn = store.pool().acquire().await?;
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
        let mut rows: Vec<ExportRow> = query
            .build_query_as::<ExportRow>()
            .persistent(false)
            .fetch(&mut *conn)
            .try_collect()
            .await?;
        open_rows(store, &mut conn, &mut rows).await?;
        drop(conn);
        let read = rows.len();
        for row in &rows {
            after = row.position;
            events += 1;
            if !sink.accept(row).await {
                return Ok(ExportSummary {
                    events,
                    stopped: true,
                });
            }
        }
        if i64::try_from(read).unwrap_or(i64::MAX) < EXPORT_BATCH {
            return Ok(ExportSummary {
                events,
                stopped: false,
            });
        }
    }
}

/// Opens the personal values of `rows` in place, with one query for the keys of all of them.
/// Only rows whose text holds a sealed value are parsed.
async fn open_rows(
    store: &EventStore,
    conn: &mut PgConnection,
    rows: &mut [ExportRow],
) -> Result<(), QueryError> {
    let sealed = |text: &str| text.contains(SEALED_KEY);
    let mut which = Vec::new();
    let mut events = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if !sealed(&row.data) && !sealed(&row.metadata) {
            continue;
        }
        // PostgreSQL's rendering of jsonb always parses; a row that somehow does not is handed
        // on as stored.
        let (Ok(data), Ok(metadata)) = (
            serde_json::from_str::<Value>(&row.data),
            serde_json::from_str::<Value>(&row.metadata),
        ) else {
            continue;
        };
        which.push(i);
        events.push(RecordedEvent {
            position: row.position,
            transaction_id: 0,
            event_id: row.event_id,
            stream_id: row.stream_id.clone(),
            stream_version: row.stream_version,
            event_type: row.event_type.clone(),
            schema_version: row.schema_version,
            data,
            metadata,
            recorded_at: row.recorded_at,
            hash: Vec::new(),
        });
    }
    if events.is_empty() {
        return Ok(());
    }
    store.open_personal(Some(conn), &mut events).await?;
    for (i, mut event) in which.into_iter().zip(events) {
        unmark(&mut event.data);
        unmark(&mut event.metadata);
        rows[i].data = event.data.to_string();
        rows[i].metadata = event.metadata.to_string();
    }
    Ok(())
}

/// How a sealed value's object key reads in stored JSON text.
const SEALED_KEY: &str = "\"$sealed\"";

/// The formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV, CRLF line ends, data and metadata as JSON text; starts with [`CSV_HEADER`].
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl ExportFormat {
    /// The format called `name` (`csv`, `ndjson`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "csv" => Some(Self::Csv),
            "ndjson" => Some(Self::Ndjson),
            _ => None,
        }
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    /// Its file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Ndjson => "ndjson",
        }
    }

    /// What the file starts with, before the first row.
    pub fn preamble(self) -> &'static str {
        match self {
            Self::Csv => CSV_HEADER,
            Self::Ndjson => "",
        }
    }

    /// Writes one row, with its line end.
    ///
    /// # Errors
    /// When `out` refuses the bytes.
    pub fn encode(self, row: &ExportRow, out: &mut Vec<u8>) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row() -> ExportRow {
        ExportRow {
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
    fn ndjson_lines_carry_the_json_as_stored() {
        let mut out = Vec::new();
        ExportFormat::Ndjson.encode(&row(), &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        assert!(line.contains(r#""data":{"n": 12345678901234567890123}"#));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["stream_id"], "user-\"x\"");
        assert_eq!(parsed["recorded_at"], "1970-01-01T00:00:01.000001Z");
        assert_eq!(parsed["hash"], "ab".repeat(32));
    }

    #[test]
    fn csv_rows_follow_the_header_column_for_column() {
        let mut out = Vec::new();
        ExportFormat::Csv.encode(&row(), &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            format!(
                "3,{},\"user-\"\"x\"\"\",1,UserRegistered,1,1970-01-01T00:00:01.000001Z,{},\
                 \"{{\"\"n\"\": 12345678901234567890123}}\",{{}}\r\n",
                Uuid::nil(),
                "ab".repeat(32)
            )
        );
        assert_eq!(ExportFormat::Csv.preamble(), CSV_HEADER);
        assert_eq!(ExportFormat::Ndjson.preamble(), "");
    }

    #[test]
    fn formats_are_named_csv_and_ndjson() {
        assert_eq!(ExportFormat::from_name("csv"), Some(ExportFormat::Csv));
        assert_eq!(
            ExportFormat::from_name("ndjson"),
            Some(ExportFormat::Ndjson)
        );
        assert_eq!(ExportFormat::from_name("xml"), None);
        assert_eq!(ExportFormat::Ndjson.extension(), "ndjson");
        assert_eq!(ExportFormat::Csv.content_type(), "text/csv; charset=utf-8");
    }
}
