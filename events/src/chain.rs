//! The per-stream hash chain: tamper evidence for every event.
//!
//! Each event's `hash` is
//! `sha256(previous hash in the stream || version (8 bytes BE) || len(stream id) (4 bytes BE)
//! || stream id || canonical body)`, where the previous hash is empty for version 1 and the
//! canonical body is [`canonical_body`]. The database computes the link at append
//! (`idp_append` in the migrations); [`verify_streams`] recomputes every link here, independently,
//! and names the first one that does not hold.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The bytes of an event that its hash covers besides its place in the stream: a JSON array
/// `[event_id, event_type, schema_version, data, metadata, recorded_at]` with object keys sorted,
/// no insignificant whitespace, and `recorded_at` as RFC 3339 UTC with microseconds.
pub fn canonical_body(
    event_id: Uuid,
    event_type: &str,
    schema_version: i32,
    data: &Value,
    metadata: &Value,
    recorded_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"[\"");
    let mut id = [0_u8; 36];
    out.extend_from_slice(event_id.hyphenated().encode_lower(&mut id).as_bytes());
    out.extend_from_slice(b"\",");
    write_str(&mut out, event_type);
    out.push(b',');
    out.extend_from_slice(schema_version.to_string().as_bytes());
    out.push(b',');
    write_json(&mut out, data);
    out.push(b',');
    write_json(&mut out, metadata);
    out.push(b',');
    let at = recorded_at.format("%Y-%m-%dT%H:%M:%S%.6fZ");
    out.push(b'"');
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_fmt(&mut out, format_args!("{at}"));
    out.push(b'"');
    out.push(b']');
    out
}

/// Canonical JSON: object keys in byte order whatever the map type, numbers as serde_json
/// prints them (zero without a sign, since PostgreSQL's `numeric` has no negative zero).
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::String(s) => write_str(out, s),
        Value::Number(n) => {
            if n.as_f64() == Some(0.0) && n.is_f64() {
                out.extend_from_slice(b"0.0");
            } else {
                out.extend_from_slice(n.to_string().as_bytes());
            }
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_json(out, item);
            }
            out.push(b'}');
        }
    }
}

/// The hash of one link of a stream's chain.
pub fn link_hash(
    previous: Option<&[u8]>,
    stream_id: &str,
    stream_version: i64,
    body: &[u8],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    if let Some(previous) = previous {
        hasher.update(previous);
    }
    hasher.update(stream_version.to_be_bytes());
    let id_len = u32::try_from(stream_id.len()).unwrap_or(u32::MAX);
    hasher.update(id_len.to_be_bytes());
    hasher.update(stream_id.as_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// What is wrong with a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The stored hash is not the hash of the stored event and its predecessor: the event (or one
    /// before it) was edited, or events were reordered.
    HashMismatch,
    /// Versions are not contiguous: this version was expected but another was found (an event
    /// was deleted).
    MissingVersion {
        /// The version that should come next.
        expected: i64,
    },
}

/// The first link of a chain that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The stream whose chain is broken.
    pub stream_id: String,
    /// The version at which the chain stops holding.
    pub stream_version: i64,
    /// The event's global position.
    pub position: i64,
    /// What is wrong.
    pub kind: BreakKind,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BreakKind::HashMismatch => write!(
                f,
                "stream {} version {} (position {}): stored hash does not match the event",
                self.stream_id, self.stream_version, self.position
            ),
            BreakKind::MissingVersion { expected } => write!(
                f,
                "stream {} version {} is missing (found version {} at position {})",
                self.stream_id, expected, self.stream_version, self.position
            ),
        }
    }
}

/// The outcome of a verification run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Streams whose chains were walked.
    pub streams: u64,
    /// Events checked.
    pub events: u64,
    /// The first broken link, in stream order, or `None` when every chain holds.
    pub first_break: Option<ChainBreak>,
}

impl VerifyReport {
    /// True when every link held.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Walks the hash chain of every stream (or of the streams whose id starts with `prefix`)
/// and reports the first link that does not hold. Reads raw stored rows, without upcasting.
///
/// The whole log is streamed in one ordered scan, so memory stays flat.
pub async fn verify_streams(
    pool: &PgPool,
    prefix: Option<&str>,
) -> Result<VerifyReport, sqlx::Error> {
    let prefix = prefix.unwrap_or("");
    let mut rows = sqlx::query(
        "select position, event_id, stream_id, stream_version, event_type, schema_version,
                data, metadata, recorded_at, hash
           from events
          where starts_with(stream_id, $1)
          order by stream_id, stream_version",
    )
    .bind(prefix)
    .fetch(pool);

    let mut report = VerifyReport::default();
    let mut current_stream: Option<String> = None;
    let mut previous_hash: Option<Vec<u8>> = None;
    let mut expected_version = 1_i64;

    while let Some(row) = rows.try_next().await? {
        let stream_id: String = row.try_get("stream_id")?;
        if current_stream.as_deref() != Some(stream_id.as_str()) {
            report.streams += 1;
            current_stream = Some(stream_id.clone());
            previous_hash = None;
            expected_version = 1;
        }
        report.events += 1;
        let stream_version: i64 = row.try_get("stream_version")?;
        let position: i64 = row.try_get("position")?;
        if stream_version != expected_version {
            report.first_break = Some(ChainBreak {
                stream_id,
                stream_version,
                position,
                kind: BreakKind::MissingVersion {
                    expected: expected_version,
                },
            });
            return Ok(report);
        }
        let data: Value = row.try_get("data")?;
        let metadata: Value = row.try_get("metadata")?;
        let body = canonical_body(
            row.try_get("event_id")?,
            row.try_get::<&str, _>("event_type")?,
            row.try_get("schema_version")?,
            &data,
            &metadata,
            row.try_get("recorded_at")?,
        );
        let stored: Vec<u8> = row.try_get("hash")?;
        let computed = link_hash(previous_hash.as_deref(), &stream_id, stream_version, &body);
        if stored != computed {
            report.first_break = Some(ChainBreak {
                stream_id,
                stream_version,
                position,
                kind: BreakKind::HashMismatch,
            });
            return Ok(report);
        }
        previous_hash = Some(stored);
        expected_version += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_body_sorts_keys_and_drops_whitespace() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = canonical_body(
            Uuid::nil(),
            "Thing",
            1,
            &json!({"b": 1, "a": [true, null, "x"]}),
            &json!({}),
            at,
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"["00000000-0000-0000-0000-000000000000","Thing",1,{"a":[true,null,"x"],"b":1},{},"2026-01-02T03:04:05.123456Z"]"#
        );
    }

    #[test]
    fn negative_zero_is_canonicalised_like_postgres_numeric() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_json(&mut a, &json!(-0.0));
        write_json(&mut b, &json!(0.0));
        assert_eq!(a, b);
    }

    #[test]
    fn each_link_depends_on_its_predecessor_and_place() {
        let first = link_hash(None, "s", 1, b"x");
        assert_ne!(
            link_hash(Some(&first), "s", 2, b"x"),
            link_hash(None, "s", 2, b"x")
        );
        assert_ne!(link_hash(None, "s", 1, b"x"), link_hash(None, "t", 1, b"x"));
        assert_ne!(link_hash(None, "s", 1, b"x"), link_hash(None, "s", 2, b"x"));
    }
}
