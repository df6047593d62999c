//! Jobs: the record of the side effects the worker performs for events, so that an effect is
//! never repeated and every outcome is on the record; and the circuit breakers guarding the
//! systems those effects reach.
//!
//! A job is identified by what it does and the event that caused it ([`job_id`]), so however
//! often an event is dispatched, it maps to the same job and the same stream `job-<uuid>`.
//! Every event of that stream carries the cause as its causation id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{NewEvent, RecordedEvent};

/// Namespace of the name-based job ids.
const JOB_NAMESPACE: Uuid = Uuid::from_u128(0x6a0b_5d3e_21c4_4f0e_9a7d_0c1e_5f2b_8d41);

/// The id of the job `kind` caused by event `cause`: the same inputs always give the same id.
pub fn job_id(kind: &str, cause: Uuid) -> Uuid {
    Uuid::new_v5(&JOB_NAMESPACE, format!("{kind}:{cause}").as_bytes())
}

/// Events of a job's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum JobEvent {
    /// The message was about to be handed to the mail server: recorded after the server
    /// accepted the envelope and before the body's final dot, so a crash can never leave a
    /// delivered message unrecorded.
    EmailSending {
        /// Attempt number within the current round (1-based).
        attempt: u32,
        /// The `Message-ID` (without angle brackets).
        message_id: String,
        /// Which email (`verification`, `password_reset`, ...).
        template: String,
    },
    /// The mail server accepted the message.
    EmailSent {
        /// Attempt number within the current round.
        attempt: u32,
        /// The `Message-ID` (without angle brackets).
        message_id: String,
        /// Which email.
        template: String,
        /// `false` when the worker died after handing the message over and before it saw the
        /// server's answer; the message was handed over, its acceptance was not seen.
        confirmed: bool,
    },
    /// The email was not sent and will not be: its person was erased before it went out.
    EmailDropped {
        /// Which email.
        template: String,
        /// Why (never the address).
        reason: String,
    },
    /// The mail files the outbox held for an erased person were removed (`forget_mail`).
    MailForgotten {
        /// How many files were removed (none when the mailer keeps no files).
        files: u32,
    },
    /// An attempt failed.
    EmailDeliveryFailed {
        /// Attempt number within the current round.
        attempt: u32,
        /// Whether retrying is pointless (a permanent refusal, a bad address).
        permanent: bool,
        /// Why (the server's reply or the connection error; never the address).
        error: String,
        /// When the next attempt is due, if there is one.
        retry_in_ms: Option<u64>,
    },
    /// The job gave up (attempts exhausted, permanent failure, or the broker's delivery limit)
    /// and went to the dead-letter queue.
    JobDeadLettered {
        /// The queue it came from (without prefix).
        queue: String,
        /// `rejected` (the job gave up) or `delivery_limit` (it kept crashing its worker), or
        /// what the broker said.
        reason: String,
        /// Attempts made in the last round.
        attempts: u32,
        /// The last error, if known.
        error: Option<String>,
        /// The job message, to send it again.
        payload: Value,
    },
    /// An administrator sent a dead-lettered job back for another round of attempts.
    JobRetryRequested {
        /// The queue to send it to (without prefix).
        queue: String,
        /// The job message.
        payload: Value,
    },
}

impl JobEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        crate::tagged::to_new_event(self)
    }

    /// The event, if `event` is one of these.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        crate::tagged::from_recorded(event)
    }
}

/// A job as its stream tells it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Job {
    /// Stream version (0 when the stream does not exist).
    pub version: u64,
    /// Failed attempts since the job started or was last sent back by an administrator.
    pub failed_attempts: u32,
    /// An attempt that handed the message over and whose outcome was never recorded.
    pub unresolved: Option<(u32, String)>,
    /// The effect is done (`EmailSent`, `EmailDropped`, `MailForgotten`).
    pub done: bool,
    /// The job is in the dead-letter queue (and not sent back since).
    pub dead: bool,
    /// The last error recorded.
    pub last_error: Option<String>,
    /// The payload of the dead letter, to send it back.
    pub dead_payload: Option<(String, Value)>,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
}

impl Job {
    /// The state of the job from its stream's events.
    pub fn fold(events: &[RecordedEvent]) -> Self {
        let mut job = Self::default();
        for event in events {
            job.version = event.stream_version.try_into().unwrap_or_default();
            if let Some(e) = JobEvent::from_recorded(event) {
                job.apply(&e, event.recorded_at);
            }
        }
        job
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &JobEvent, at: DateTime<Utc>) {
        match event {
            JobEvent::EmailSending {
                attempt,
                message_id,
                ..
            } => self.unresolved = Some((*attempt, message_id.clone())),
            JobEvent::EmailSent { .. }
            | JobEvent::EmailDropped { .. }
            | JobEvent::MailForgotten { .. } => {
                self.unresolved = None;
                self.done = true;
            }
            JobEvent::EmailDeliveryFailed { error, .. } => {
                self.unresolved = None;
                self.failed_attempts += 1;
                self.last_error = Some(error.clone());
            }
            JobEvent::JobDeadLettered { queue, payload, .. } => {
                self.dead = true;
                self.dead_payload = Some((queue.clone(), payload.clone()));
                self.dead_at = Some(at);
            }
            JobEvent::JobRetryRequested { .. } => {
                self.dead = false;
                self.failed_attempts = 0;
            }
        }
    }
}

/// Where a circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused without trying, until the cool-down ends.
    Open,
    /// One trial call is allowed; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// The name stored in the database and shown in readiness.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "closed" => Some(Self::Closed),
            "open" => Some(Self::Open),
            "half_open" => Some(Self::HalfOpen),
            _ => None,
        }
    }
}

/// Transitions of a circuit breaker (stream `breaker-<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum BreakerEvent {
    /// Too many consecutive failures: calls are refused until `retry_at`.
    CircuitOpened {
        /// Consecutive failures that opened it.
        failures: u32,
        /// When a trial call will be allowed.
        retry_at: DateTime<Utc>,
        /// The last failure.
        error: String,
    },
    /// The cool-down ended; one trial call goes through.
    CircuitHalfOpened,
    /// The trial call succeeded; calls go through again.
    CircuitClosed,
}

impl BreakerEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        crate::tagged::to_new_event(self)
    }

    /// The event, if `event` is one of these.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        crate::tagged::from_recorded(event)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_same_cause_and_kind_always_give_the_same_job() {
        let cause = Uuid::new_v4();
        assert_eq!(job_id("send_email", cause), job_id("send_email", cause));
        assert_ne!(job_id("send_email", cause), job_id("other", cause));
        assert_ne!(
            job_id("send_email", cause),
            job_id("send_email", Uuid::new_v4())
        );
    }

    #[test]
    fn a_retry_request_gives_a_dead_job_a_fresh_round_of_attempts() {
        let now = Utc::now();
        let mut job = Job::default();
        for attempt in 1..=3 {
            job.apply(
                &JobEvent::EmailDeliveryFailed {
                    attempt,
                    permanent: false,
                    error: "451".into(),
                    retry_in_ms: None,
                },
                now,
            );
        }
        job.apply(
            &JobEvent::JobDeadLettered {
                queue: "email".into(),
                reason: "rejected".into(),
                attempts: 3,
                error: None,
                payload: Value::Null,
            },
            now,
        );
        assert!(job.dead);
        assert_eq!(job.failed_attempts, 3);
        job.apply(
            &JobEvent::JobRetryRequested {
                queue: "email".into(),
                payload: Value::Null,
            },
            now,
        );
        assert!(!job.dead);
        assert_eq!(job.failed_attempts, 0);
    }

    #[test]
    fn events_round_trip_through_the_log_format() {
        let event = JobEvent::EmailSent {
            attempt: 2,
            message_id: "m@idp".into(),
            template: "verification".into(),
            confirmed: true,
        };
        let new = event.to_new_event();
        assert_eq!(new.event_type, "EmailSent");
        let opened = BreakerEvent::CircuitHalfOpened.to_new_event();
        assert_eq!(opened.event_type, "CircuitHalfOpened");
    }
}
