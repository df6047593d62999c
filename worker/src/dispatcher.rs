//! The dispatcher: a subscription that turns events into jobs and publishes them to RabbitMQ.
//!
//! Events of a batch are mapped to jobs while the batch is read; before the batch's checkpoint
//! commits, every job is published (persistent, mandatory) and the broker's confirms awaited,
//! all in flight at once. If anything fails, the checkpoint does not move and the batch is
//! published again after a reconnect: a job may reach the queue twice, never zero times, and
//! jobs are idempotent. A crash between the log commit and the publish loses nothing, because
//! the log is the outbox.

use idp_events::RecordedEvent;
use idp_events::jobs::JobEvent;
use idp_events::subscription::{Batch, BatchHandler, HandlerError};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::broker::{OutgoingJob, Publisher};
use crate::jobs::{self, Cause};

/// The dispatcher's subscription name.
pub const NAME: &str = "dispatcher";

/// Maps an event to the jobs it causes.
pub trait Route: Send + Sync + 'static {
    /// The jobs `event` causes (usually none).
    fn jobs(&self, event: &RecordedEvent) -> Result<Vec<OutgoingJob>, HandlerError>;
}

/// The production route: decodes each event once ([`Cause::decode`]) and asks every job kind
/// of [`jobs::KINDS`] for the job it causes; an administrator's `JobRetryRequested` sends the
/// dead-lettered job it names back to its queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobRoutes;

impl Route for JobRoutes {
    fn jobs(&self, event: &RecordedEvent) -> Result<Vec<OutgoingJob>, HandlerError> {
        let cause = match Cause::decode(event) {
            Ok(Some(cause)) => cause,
            Ok(None) => return Ok(Vec::new()),
            Err(err) => return Err(HandlerError::msg(err.to_string())),
        };
        if let Cause::Job {
            job_id,
            event: JobEvent::JobRetryRequested { queue, payload },
        } = &cause
        {
            return Ok(retry(event, *job_id, queue, payload)?.into_iter().collect());
        }
        let mut found = Vec::new();
        for kind in jobs::KINDS {
            found.extend(kind.job_for(&cause, event)?);
        }
        Ok(found)
    }
}

/// The message that sends dead-lettered job `job_id` back to `queue` with `payload`.
fn retry(
    event: &RecordedEvent,
    job_id: Uuid,
    queue: &str,
    payload: &serde_json::Value,
) -> Result<Option<OutgoingJob>, serde_json::Error> {
    let Some(queue) = jobs::known_queue(queue) else {
        tracing::warn!(
            queue,
            "retry requested for a job of an unknown queue; skipped"
        );
        return Ok(None);
    };
    let cause_id = payload
        .get("cause_id")
        .and_then(serde_json::Value::as_str)
        .and_then(|id| id.parse().ok())
        .unwrap_or(event.event_id);
    Ok(Some(OutgoingJob {
        queue,
        job_id,
        kind: jobs::queue_kind(queue).unwrap_or("unknown"),
        cause_id,
        correlation_id: None,
        body: serde_json::to_vec(payload)?,
    }))
}

/// The dispatcher's handler: routes, and a publisher for the jobs of each batch.
pub struct Dispatcher {
    routes: Vec<Box<dyn Route>>,
    publisher: Publisher,
    batch: Batch<OutgoingJob>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("routes", &self.routes.len())
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// The production routes: every job kind, and administrators' retries ([`JobRoutes`]).
    pub fn new(publisher: Publisher) -> Self {
        Self::with_routes(publisher, vec![Box::new(JobRoutes)])
    }

    /// A dispatcher with the given routes.
    pub fn with_routes(publisher: Publisher, routes: Vec<Box<dyn Route>>) -> Self {
        Self {
            routes,
            publisher,
            batch: Batch::default(),
        }
    }
}

impl BatchHandler for Dispatcher {
    type Item = OutgoingJob;

    fn batch(&self) -> &Batch<OutgoingJob> {
        &self.batch
    }

    fn gather(
        &self,
        event: &RecordedEvent,
        jobs: &mut Vec<OutgoingJob>,
    ) -> Result<(), HandlerError> {
        let before = jobs.len();
        for route in &self.routes {
            jobs.extend(route.jobs(event)?);
        }
        if let Some(caused) = jobs.get_mut(before..).filter(|caused| !caused.is_empty()) {
            let correlation = event.typed_metadata().correlation_id;
            for job in caused {
                job.correlation_id = job.correlation_id.or(correlation);
            }
        }
        Ok(())
    }

    async fn write(
        &self,
        _conn: &mut PgConnection,
        jobs: Vec<OutgoingJob>,
    ) -> Result<(), HandlerError> {
        self.publisher.publish_all(&jobs).await.map_err(|err| {
            HandlerError::msg(format!("publishing {} jobs failed: {err}", jobs.len()))
        })?;
        metrics::counter!("idp_dispatcher_jobs_published_total").increment(jobs.len() as u64);
        Ok(())
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), HandlerError> {
        // Replaying the dispatcher re-publishes every job; jobs are idempotent, so that only
        // costs work.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Envelope, properties};

    #[test]
    fn a_jobs_message_carries_the_correlation_id_of_the_request_behind_its_cause() {
        let correlation = uuid::Uuid::now_v7();
        let event = RecordedEvent {
            position: 1,
            transaction_id: 1,
            event_id: uuid::Uuid::now_v7(),
            stream_id: idp_events::StreamId::user(uuid::Uuid::now_v7()).into(),
            stream_version: 1,
            event_type: "VerificationRequested".into(),
            schema_version: 1,
            data: serde_json::json!({ "email": "ada@example.com" }),
            metadata: serde_json::json!({ "correlation_id": correlation.to_string() }),
            recorded_at: chrono::Utc::now(),
            hash: vec![0; 32],
        };
        assert_eq!(event.typed_metadata().correlation_id, Some(correlation));
        let mut jobs = JobRoutes.jobs(&event).unwrap();
        assert_eq!(jobs.len(), 1);
        jobs[0].correlation_id = event.typed_metadata().correlation_id;
        // What the consumer reads back from the message puts it into the job's log lines.
        let envelope = Envelope::of(&properties(&jobs[0]));
        assert_eq!(envelope.correlation_id, Some(correlation.to_string()));
        assert_eq!(envelope.message_id, Some(jobs[0].job_id.to_string()));

        let without = RecordedEvent {
            metadata: serde_json::json!({ "correlation_id": "not a uuid" }),
            ..event
        };
        assert_eq!(without.typed_metadata().correlation_id, None);
        jobs[0].correlation_id = None;
        assert_eq!(Envelope::of(&properties(&jobs[0])).correlation_id, None);
    }

    fn recorded(stream: idp_events::StreamId, event: idp_events::NewEvent) -> RecordedEvent {
        RecordedEvent {
            position: 9,
            transaction_id: 9,
            event_id: event.event_id,
            stream_id: stream.into(),
            stream_version: 1,
            event_type: event.event_type,
            schema_version: 1,
            data: event.data,
            metadata: serde_json::json!({}),
            recorded_at: chrono::Utc::now(),
            hash: vec![0; 32],
        }
    }

    #[test]
    fn each_event_goes_to_the_job_kinds_it_causes() {
        use idp_events::StreamId;
        use idp_events::identity::user::UserEvent;
        use idp_events::project::ProjectEvent;

        let id = Uuid::now_v7();
        let changed = recorded(
            StreamId::user(id),
            UserEvent::PasswordChanged.to_new_event(),
        );
        let jobs = JobRoutes.jobs(&changed).unwrap();
        assert_eq!(
            jobs.iter().map(|j| (j.queue, j.kind)).collect::<Vec<_>>(),
            [("email", "send_email")]
        );
        assert_eq!(jobs[0].cause_id, changed.event_id);
        assert_eq!(
            jobs[0].job_id,
            idp_events::jobs::job_id("send_email", changed.event_id)
        );

        let deletion = recorded(
            StreamId::project(id),
            ProjectEvent::DeletionRequested.to_new_event(),
        );
        let jobs = JobRoutes.jobs(&deletion).unwrap();
        assert_eq!(
            jobs.iter().map(|j| (j.queue, j.kind)).collect::<Vec<_>>(),
            [("provision", "provision_project")]
        );

        let rehashed = recorded(
            StreamId::user(id),
            UserEvent::PasswordRehashed.to_new_event(),
        );
        assert!(JobRoutes.jobs(&rehashed).unwrap().is_empty());
        let stranger = recorded(
            StreamId::breaker("smtp"),
            idp_events::NewEvent::new("PasswordChanged", serde_json::json!({})),
        );
        assert!(JobRoutes.jobs(&stranger).unwrap().is_empty());
        let malformed = recorded(
            StreamId::user(id),
            idp_events::NewEvent::new("AccountLocked", serde_json::json!({ "until": "soon" })),
        );
        assert!(JobRoutes.jobs(&malformed).is_err());
    }

    #[test]
    fn a_retry_request_sends_the_dead_job_back_to_its_queue() {
        let job = Uuid::now_v7();
        let cause = Uuid::now_v7();
        let payload = serde_json::json!({ "job_id": job, "cause_id": cause });
        let retry = recorded(
            idp_events::StreamId::job(job),
            JobEvent::JobRetryRequested {
                queue: "provision".into(),
                payload: payload.clone(),
            }
            .to_new_event(),
        );
        let jobs = JobRoutes.jobs(&retry).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (
                jobs[0].queue,
                jobs[0].kind,
                jobs[0].job_id,
                jobs[0].cause_id
            ),
            ("provision", "provision_project", job, cause)
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&jobs[0].body).unwrap(),
            payload
        );

        let elsewhere = recorded(
            idp_events::StreamId::job(job),
            JobEvent::JobRetryRequested {
                queue: "nowhere".into(),
                payload,
            }
            .to_new_event(),
        );
        assert!(JobRoutes.jobs(&elsewhere).unwrap().is_empty());
    }
}
