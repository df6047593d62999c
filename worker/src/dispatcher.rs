//! The dispatcher: a subscription that turns events into jobs and publishes them to RabbitMQ.
//!
//! Events of a batch are mapped to jobs while the batch is read; before the batch's checkpoint
//! commits, every job is published (persistent, mandatory) and the broker's confirms awaited,
//! all in flight at once. If anything fails, the checkpoint does not move and the batch is
//! published again after a reconnect: a job may reach the queue twice, never zero times, and
//! jobs are idempotent. A crash between the log commit and the publish loses nothing, because
//! the log is the outbox.

use std::sync::Mutex;

use idp_events::RecordedEvent;
use idp_events::jobs::JobEvent;
use idp_events::subscription::{Handler, HandlerError};
use sqlx::PgConnection;

use crate::broker::{OutgoingJob, Publisher};
use crate::jobs::known_queue;
use crate::jobs::provision_project::ProvisionProject;
use crate::jobs::send_email::SendEmail;

/// The dispatcher's subscription name.
pub const NAME: &str = "dispatcher";

/// Maps an event to the jobs it causes.
pub trait Route: Send + Sync + 'static {
    /// The jobs `event` causes (usually none).
    fn jobs(&self, event: &RecordedEvent) -> Result<Vec<OutgoingJob>, HandlerError>;
}

/// Emails that account events ask for.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmailRoute;

impl Route for EmailRoute {
    fn jobs(&self, event: &RecordedEvent) -> Result<Vec<OutgoingJob>, HandlerError> {
        match SendEmail::for_event(event) {
            Some(job) => Ok(vec![job.to_outgoing()?]),
            None => Ok(Vec::new()),
        }
    }
}

/// Provisioning that project events ask for (requests, retries, deletions).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProjectRoute;

impl Route for ProjectRoute {
    fn jobs(&self, event: &RecordedEvent) -> Result<Vec<OutgoingJob>, HandlerError> {
        match ProvisionProject::for_event(event) {
            Some(job) => Ok(vec![job.to_outgoing()?]),
            None => Ok(Vec::new()),
        }
    }
}

/// Dead-lettered jobs an administrator sent back.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryRoute;

impl Route for RetryRoute {
    fn jobs(&self, event: &RecordedEvent) -> Result<Vec<OutgoingJob>, HandlerError> {
        if event.event_type != "JobRetryRequested" {
            return Ok(Vec::new());
        }
        let Some(JobEvent::JobRetryRequested { queue, payload }) = JobEvent::from_recorded(event)
        else {
            return Err(HandlerError::msg("JobRetryRequested that does not decode"));
        };
        let Some(queue) = known_queue(&queue) else {
            tracing::warn!(
                queue,
                "retry requested for a job of an unknown queue; skipped"
            );
            return Ok(Vec::new());
        };
        let job_id = event
            .stream_id
            .strip_prefix("job-")
            .and_then(|id| id.parse().ok())
            .unwrap_or(event.event_id);
        let cause_id = payload
            .get("cause_id")
            .and_then(serde_json::Value::as_str)
            .and_then(|id| id.parse().ok())
            .unwrap_or(event.event_id);
        let kind = crate::jobs::queue_kind(queue).unwrap_or("unknown");
        Ok(vec![OutgoingJob {
            queue,
            job_id,
            kind,
            cause_id,
            correlation_id: None,
            body: serde_json::to_vec(&payload)?,
        }])
    }
}

/// The dispatcher's handler: routes, a publisher and the jobs of the batch in progress.
pub struct Dispatcher {
    routes: Vec<Box<dyn Route>>,
    publisher: Publisher,
    pending: Mutex<Vec<OutgoingJob>>,
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
    /// The production routes: emails, provisioning and administrator retries.
    pub fn new(publisher: Publisher) -> Self {
        Self::with_routes(
            publisher,
            vec![
                Box::new(EmailRoute),
                Box::new(ProjectRoute),
                Box::new(RetryRoute),
            ],
        )
    }

    /// A dispatcher with the given routes.
    pub fn with_routes(publisher: Publisher, routes: Vec<Box<dyn Route>>) -> Self {
        Self {
            routes,
            publisher,
            pending: Mutex::new(Vec::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<OutgoingJob>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Handler for Dispatcher {
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let mut jobs = Vec::new();
        for route in &self.routes {
            jobs.extend(route.jobs(event)?);
        }
        let correlation = event.typed_metadata().correlation_id;
        for job in &mut jobs {
            job.correlation_id = job.correlation_id.or(correlation);
        }
        if !jobs.is_empty() {
            self.pending().extend(jobs);
        }
        Ok(())
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), HandlerError> {
        // Replaying the dispatcher re-publishes every job; jobs are idempotent, so that only
        // costs work.
        Ok(())
    }

    fn begin_batch(&self) {
        self.pending().clear();
    }

    async fn before_commit(&self, _conn: &mut PgConnection) -> Result<(), HandlerError> {
        let jobs = std::mem::take(&mut *self.pending());
        if jobs.is_empty() {
            return Ok(());
        }
        self.publisher.publish_all(&jobs).await.map_err(|err| {
            HandlerError::msg(format!("publishing {} jobs failed: {err}", jobs.len()))
        })?;
        metrics::counter!("idp_dispatcher_jobs_published_total").increment(jobs.len() as u64);
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
            stream_id: format!("user-{}", uuid::Uuid::now_v7()),
            stream_version: 1,
            event_type: "VerificationRequested".into(),
            schema_version: 1,
            data: serde_json::json!({ "email": "ada@example.com" }),
            metadata: serde_json::json!({ "correlation_id": correlation.to_string() }),
            recorded_at: chrono::Utc::now(),
            hash: vec![0; 32],
        };
        assert_eq!(event.typed_metadata().correlation_id, Some(correlation));
        let mut jobs = EmailRoute.jobs(&event).unwrap();
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
}
