//! Events as jobs see them: decoded once, with the id of the aggregate they belong to, so
//! every job kind decides on typed events ([`Cause`]) rather than on type strings.

use idp_events::identity::user::UserEvent;
use idp_events::jobs::JobEvent;
use idp_events::project::ProjectEvent;
use idp_events::{Category, EventTypes, RecordedEvent, StreamId};
use uuid::Uuid;

/// An event of an aggregate that jobs follow, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// An event of account `user_id`'s stream.
    User {
        /// The account.
        user_id: Uuid,
        /// What happened.
        event: UserEvent,
    },
    /// An event of project `project_id`'s stream.
    Project {
        /// The project.
        project_id: Uuid,
        /// What happened.
        event: ProjectEvent,
    },
    /// An event of job `job_id`'s stream.
    Job {
        /// The job.
        job_id: Uuid,
        /// What happened.
        event: JobEvent,
    },
}

/// An event of a followed stream and type whose payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_type} at position {position} does not decode")]
pub struct Undecodable {
    /// The event's type.
    pub event_type: String,
    /// Where it is in the log.
    pub position: i64,
}

impl Cause {
    /// `event` decoded; `None` for the streams and event types no job follows.
    ///
    /// # Errors
    /// When `event` has the type of a followed stream's events but its payload does not decode.
    pub fn decode(event: &RecordedEvent) -> Result<Option<Self>, Undecodable> {
        let Ok(stream) = StreamId::parse(&event.stream_id) else {
            return Ok(None);
        };
        let kind = event.event_type.as_str();
        let decoded = match (stream.category(), stream.uuid()) {
            (Category::User, Some(user_id)) if UserEvent::has_type(kind) => {
                UserEvent::from_recorded(event).map(|event| Self::User { user_id, event })
            }
            (Category::Project, Some(project_id)) if ProjectEvent::has_type(kind) => {
                ProjectEvent::from_recorded(event).map(|event| Self::Project { project_id, event })
            }
            (Category::Job, Some(job_id)) if JobEvent::has_type(kind) => {
                JobEvent::from_recorded(event).map(|event| Self::Job { job_id, event })
            }
            _ => return Ok(None),
        };
        decoded.map(Some).ok_or_else(|| Undecodable {
            event_type: event.event_type.clone(),
            position: event.position,
        })
    }
}

#[cfg(test)]
mod tests {
    use idp_events::NewEvent;
    use serde_json::json;

    use super::*;

    fn recorded(stream_id: &str, event: NewEvent) -> RecordedEvent {
        RecordedEvent {
            position: 3,
            transaction_id: 3,
            event_id: event.event_id,
            stream_id: stream_id.to_owned(),
            stream_version: 1,
            event_type: event.event_type,
            schema_version: 1,
            data: event.data,
            metadata: json!({}),
            recorded_at: chrono::Utc::now(),
            hash: vec![0; 32],
        }
    }

    #[test]
    fn an_aggregate_event_decodes_with_its_aggregate_id() {
        let id = Uuid::now_v7();
        let changed = recorded(
            StreamId::user(id).as_str(),
            UserEvent::PasswordChanged.to_new_event(),
        );
        assert_eq!(
            Cause::decode(&changed),
            Ok(Some(Cause::User {
                user_id: id,
                event: UserEvent::PasswordChanged
            }))
        );
        let retry = recorded(
            StreamId::project(id).as_str(),
            ProjectEvent::RetryRequested.to_new_event(),
        );
        assert_eq!(
            Cause::decode(&retry),
            Ok(Some(Cause::Project {
                project_id: id,
                event: ProjectEvent::RetryRequested
            }))
        );
    }

    #[test]
    fn strangers_are_ignored_and_a_malformed_followed_event_is_an_error() {
        let id = Uuid::now_v7();
        let foreign = recorded("crm-contact-1", NewEvent::new("PasswordChanged", json!({})));
        assert_eq!(Cause::decode(&foreign), Ok(None));
        let unknown = recorded(
            StreamId::user(id).as_str(),
            NewEvent::new("AvatarUploaded", json!([1])),
        );
        assert_eq!(Cause::decode(&unknown), Ok(None));
        let session = recorded(
            StreamId::session(id).as_str(),
            NewEvent::new("SessionRefreshed", json!({ "generation": 2 })),
        );
        assert_eq!(Cause::decode(&session), Ok(None), "no job follows sessions");
        let malformed = recorded(
            StreamId::user(id).as_str(),
            NewEvent::new("VerificationRequested", json!({ "email": 7 })),
        );
        assert_eq!(
            Cause::decode(&malformed),
            Err(Undecodable {
                event_type: "VerificationRequested".into(),
                position: 3
            })
        );
    }
}
