//! Domain event enums as log events: the variant name is the event type, the variant's fields
//! are the payload. Shared by every aggregate so they all read and write events the same way.
//!
//! Each event enum derives [`strum::VariantNames`] beside serde, so its list of event types
//! ([`EventTypes::TYPES`]) is derived from its variants: a new variant is in the list the
//! moment it exists, and nothing keeps a copy by hand.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{NewEvent, RecordedEvent};

/// The event types of a domain event enum: the names of its variants, as the log stores them.
///
/// Implemented for every enum deriving [`strum::VariantNames`]; the event enums of this crate
/// ([`UserEvent`](crate::identity::user::UserEvent),
/// [`SessionEvent`](crate::identity::session::SessionEvent),
/// [`ProjectEvent`](crate::project::ProjectEvent), [`JobEvent`](crate::jobs::JobEvent),
/// [`BreakerEvent`](crate::jobs::BreakerEvent)) all do.
pub trait EventTypes {
    /// Every event type of the enum, one per variant, in declaration order.
    const TYPES: &'static [&'static str];

    /// Whether `event_type` is one of [`Self::TYPES`].
    fn has_type(event_type: &str) -> bool {
        Self::TYPES.contains(&event_type)
    }
}

impl<T: strum::VariantNames> EventTypes for T {
    const TYPES: &'static [&'static str] = T::VARIANTS;
}

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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::identity::api_key::ApiKeyEvent;
    use crate::identity::plan::PlanEvent;
    use crate::identity::service_account::ServiceAccountEvent;
    use crate::identity::session::SessionEvent;
    use crate::identity::user::UserEvent;
    use crate::jobs::{BreakerEvent, JobEvent};
    use crate::project::ProjectEvent;

    /// Whether serde reads `event_type` as a variant of `T` (whatever it then makes of the
    /// missing payload): the derived list and the serialisation agree on every name.
    fn serde_knows<T: DeserializeOwned>(event_type: &str) -> bool {
        let unknown = |value: Value| {
            serde_json::from_value::<T>(value)
                .err()
                .is_some_and(|err| err.to_string().contains("unknown variant"))
        };
        !unknown(serde_json::json!({ "type": event_type }))
            && !unknown(serde_json::json!({ "type": event_type, "data": {} }))
    }

    fn check<T: EventTypes + DeserializeOwned>(enum_name: &str) {
        assert!(!T::TYPES.is_empty(), "{enum_name} lists no types");
        let distinct: HashSet<_> = T::TYPES.iter().collect();
        assert_eq!(
            distinct.len(),
            T::TYPES.len(),
            "{enum_name}: {:?}",
            T::TYPES
        );
        for event_type in T::TYPES {
            assert!(
                serde_knows::<T>(event_type),
                "{enum_name}: serde does not read {event_type:?}"
            );
            assert!(T::has_type(event_type));
        }
        assert!(!serde_knows::<T>("NoSuchEventType"), "{enum_name}");
        assert!(!T::has_type("NoSuchEventType"));
    }

    #[test]
    fn every_derived_event_type_is_a_variant_name_serde_reads_and_writes() {
        check::<UserEvent>("UserEvent");
        check::<SessionEvent>("SessionEvent");
        check::<ProjectEvent>("ProjectEvent");
        check::<JobEvent>("JobEvent");
        check::<BreakerEvent>("BreakerEvent");
        check::<ApiKeyEvent>("ApiKeyEvent");
        check::<ServiceAccountEvent>("ServiceAccountEvent");
        check::<PlanEvent>("PlanEvent");
    }

    #[test]
    fn a_serialised_event_carries_one_of_its_enums_types() {
        let written = [
            UserEvent::PasswordChanged.to_new_event(),
            UserEvent::VerificationRequested {
                email: "ada@example.com".into(),
            }
            .to_new_event(),
        ];
        for event in written {
            assert!(UserEvent::has_type(&event.event_type), "{event:?}");
        }
        let opened = BreakerEvent::CircuitHalfOpened.to_new_event();
        assert!(BreakerEvent::has_type(&opened.event_type));
        assert!(!UserEvent::has_type(&opened.event_type));
    }
}
