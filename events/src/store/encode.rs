//! What an append stores besides the events' own fields, computed once for every path.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Append;
use super::personal::{Codec, KeySource};
use crate::chain::canonical_body;
use crate::error::AppendError;
use crate::event::NewEvent;
use crate::privacy::fields::{Place, drop_fields, has_personal, seal_fields};

/// What every append path stores besides the events' ids, types and versions: each event's
/// data as stored (its personal values sealed), the metadata as JSON (likewise), the time of
/// the append, and each event's canonical body (the input of its chain link, over what is
/// stored).
pub(super) struct Encoded<'a> {
    pub(super) data: Vec<Cow<'a, serde_json::Value>>,
    pub(super) metadata: serde_json::Value,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) bodies: Vec<Vec<u8>>,
    /// The people whose keys came from memory ([`KeySource::Kept`]): the statement must check
    /// their key rows.
    pub(super) guard: Vec<Uuid>,
}

/// Encodes `append`; its personal values, if any, are sealed under the key of its subject,
/// taken on `conn` (in the append's transaction) from `source`.
pub(super) async fn encode<'a>(
    codec: &Codec,
    conn: &mut PgConnection,
    append: &'a Append,
    source: KeySource,
) -> Result<Encoded<'a>, AppendError> {
    let mut metadata = serde_json::to_value(&append.metadata)
        .map_err(|e| AppendError::InvalidEvent(e.to_string()))?;
    let recorded_at = now_micros();
    for event in &append.events {
        check_schema_version(event)?;
    }
    let data_parts = append.events.iter().map(|e| &e.data);
    let sealings = codec
        .sealing(
            conn,
            append.subject,
            data_parts,
            &metadata,
            recorded_at,
            source,
        )
        .await?;
    let data: Vec<Cow<'a, serde_json::Value>> = append
        .events
        .iter()
        .map(|event| match &sealings.data {
            Some(sealing) if has_personal(&event.data) => {
                let mut data = event.data.clone();
                seal_fields(
                    &mut data,
                    Place::Data(event.event_id),
                    &sealing.subjects,
                    &sealing.key,
                );
                Cow::Owned(data)
            }
            _ => Cow::Borrowed(&event.data),
        })
        .collect();
    match &sealings.metadata {
        Some(Some(sealing)) => {
            let place = Place::Metadata {
                stream_id: &append.stream_id,
                recorded_at,
            };
            seal_fields(&mut metadata, place, &sealing.subjects, &sealing.key);
        }
        Some(None) => drop_fields(&mut metadata),
        None => {}
    }
    let bodies = append
        .events
        .iter()
        .zip(&data)
        .map(|(event, data)| {
            canonical_body(
                event.event_id,
                &event.event_type,
                event.schema_version,
                data,
                &metadata,
                recorded_at,
            )
        })
        .collect();
    Ok(Encoded {
        data,
        metadata,
        recorded_at,
        bodies,
        guard: sealings.guard,
    })
}

fn check_schema_version(event: &NewEvent) -> Result<(), AppendError> {
    if event.schema_version < 1 {
        return Err(AppendError::InvalidEvent(format!(
            "schema version of {} must be at least 1",
            event.event_type
        )));
    }
    Ok(())
}

/// Now, at the microsecond precision PostgreSQL stores, so the hashed time is the stored time.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
