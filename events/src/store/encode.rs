//! What an append stores besides the events' own fields, computed once for every path.

use chrono::{DateTime, Utc};

use super::Append;
use crate::chain::canonical_body;
use crate::error::AppendError;
use crate::event::NewEvent;

/// What every append path stores besides the events' own fields: the metadata as JSON, the
/// time of the append, and each event's canonical body (the input of its chain link).
pub(super) struct Encoded {
    pub(super) metadata: serde_json::Value,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) bodies: Vec<Vec<u8>>,
}

pub(super) fn encode(append: &Append) -> Result<Encoded, AppendError> {
    let metadata = serde_json::to_value(&append.metadata)
        .map_err(|e| AppendError::InvalidEvent(e.to_string()))?;
    let recorded_at = now_micros();
    let bodies = append
        .events
        .iter()
        .map(|event| {
            check_schema_version(event)?;
            Ok(canonical_body(
                event.event_id,
                &event.event_type,
                event.schema_version,
                &event.data,
                &metadata,
                recorded_at,
            ))
        })
        .collect::<Result<_, AppendError>>()?;
    Ok(Encoded {
        metadata,
        recorded_at,
        bodies,
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
