//! Upcasting: old event payloads are raised to the current schema on read.
//!
//! The log is immutable, so when an event's shape changes, its old versions stay stored as they
//! were. Readers register one function per `(event type, from version)` that turns a payload of
//! that version into the next one; reading applies them in a chain until no function matches.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::event::RecordedEvent;

type UpcastFn = Box<dyn Fn(Value) -> Value + Send + Sync>;

/// A registry of upcasting steps.
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<(String, i32), UpcastFn>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// Registers the step that turns `event_type` payloads of `from_version` into
    /// `from_version + 1`.
    #[must_use]
    pub fn register(
        mut self,
        event_type: impl Into<String>,
        from_version: i32,
        step: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.into(), from_version), Box::new(step));
        self
    }

    /// Raises `event` to the newest version the registered steps reach.
    pub fn apply(&self, event: &mut RecordedEvent) {
        if self.steps.is_empty() {
            return;
        }
        // Bounded by the number of steps, so a cycle cannot loop forever.
        for _ in 0..=self.steps.len() {
            let key = (event.event_type.clone(), event.schema_version);
            let Some(step) = self.steps.get(&key) else {
                return;
            };
            let data = std::mem::take(&mut event.data);
            event.data = step(data);
            event.schema_version += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    fn recorded(event_type: &str, schema_version: i32, data: Value) -> RecordedEvent {
        RecordedEvent {
            position: 1,
            transaction_id: 1,
            event_id: Uuid::nil(),
            stream_id: "s".into(),
            stream_version: 1,
            event_type: event_type.into(),
            schema_version,
            data,
            metadata: json!({}),
            recorded_at: Utc::now(),
            hash: vec![],
        }
    }

    #[test]
    fn steps_are_chained_until_the_newest_version() {
        let upcasters = Upcasters::default()
            .register("Renamed", 1, |mut v| {
                if let Some(obj) = v.as_object_mut() {
                    let name = obj.remove("name").unwrap_or(Value::Null);
                    obj.insert("display_name".into(), name);
                }
                v
            })
            .register("Renamed", 2, |mut v| {
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("locale".into(), json!("en"));
                }
                v
            });
        let mut event = recorded("Renamed", 1, json!({"name": "Ada"}));
        upcasters.apply(&mut event);
        assert_eq!(event.schema_version, 3);
        assert_eq!(event.data, json!({"display_name": "Ada", "locale": "en"}));
    }

    #[test]
    fn events_without_steps_are_left_alone() {
        let upcasters = Upcasters::default().register("Other", 1, |_| json!(null));
        let mut event = recorded("Renamed", 1, json!({"name": "Ada"}));
        upcasters.apply(&mut event);
        assert_eq!(event.schema_version, 1);
        assert_eq!(event.data, json!({"name": "Ada"}));
    }
}
