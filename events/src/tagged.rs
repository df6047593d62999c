//! Domain event enums as log events: the variant name is the event type, the variant's fields
//! are the payload. Shared by every aggregate so they all read and write events the same way.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{NewEvent, RecordedEvent};

/// A domain event enum serialised as `{"type": ..., "data": ...}` becomes a log event whose
/// type is the variant name and whose payload is the data (`{}` for unit variants).
pub(crate) fn to_new_event(event: &impl Serialize) -> NewEvent {
    match serde_json::to_value(event) {
        Ok(Value::Object(mut map)) => NewEvent::new(
            map.remove("type")
                .and_then(|t| t.as_str().map(str::to_owned))
                .unwrap_or_default(),
            map.remove("data")
                .unwrap_or(Value::Object(serde_json::Map::new())),
        ),
        _ => NewEvent::new("", Value::Null),
    }
}

/// The inverse of [`to_new_event`]; `None` if the event is not one of `T`'s variants.
pub(crate) fn from_recorded<T: DeserializeOwned>(event: &RecordedEvent) -> Option<T> {
    let tagged = if event
        .data
        .as_object()
        .is_some_and(serde_json::Map::is_empty)
    {
        serde_json::json!({ "type": event.event_type })
    } else {
        serde_json::json!({ "type": event.event_type, "data": event.data })
    };
    serde_json::from_value(tagged).ok()
}
