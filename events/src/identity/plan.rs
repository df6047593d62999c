//! The plan aggregate: which plan an account (a person's or a service account's) is on, and
//! the monthly spend cap its holder chose below the plan's ceiling.
//!
//! The stream is `plan-<account uuid>`; an account without one is on the default plan with no
//! cap of its own. The plans themselves (their rate limits, project quotas and spend ceilings)
//! are configuration, not events: an event names a plan, configuration says what it allows.

use serde::{Deserialize, Serialize};

use crate::{NewEvent, RecordedEvent};

/// Events of a plan stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum PlanEvent {
    /// A billing administrator or an administrator (the event's actor) put the account on
    /// `plan`.
    PlanChanged {
        /// The plan's name (`free`, `pro`, or one of the configured plans).
        plan: String,
    },
    /// The account's holder set their own monthly spend cap (`None`: the plan's ceiling).
    SpendCapChanged {
        /// The cap, in cents per month.
        cap_cents: Option<u64>,
    },
}

impl PlanEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        super::to_new_event(self)
    }

    /// The event read back from the log, if it is a plan event.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        super::from_recorded(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_events_carry_their_type_name() {
        let e = PlanEvent::SpendCapChanged {
            cap_cents: Some(500),
        }
        .to_new_event();
        assert_eq!(e.event_type, "SpendCapChanged");
        assert_eq!(e.data, serde_json::json!({"cap_cents": 500}));
    }
}
