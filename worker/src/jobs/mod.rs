//! Jobs: effects the worker performs for events, consumed from RabbitMQ by apalis workers.
//!
//! Each job kind is a [`Job`]: it declares its queue, the events that cause it and what it
//! does, and is idempotent: it records its outcome as events in the job's stream
//! (`job-<uuid>`, the id derived from the kind and the causing event) and refuses to repeat an
//! effect already recorded there. A job that gives up returns an error, which
//! dead-letters its message; [`dead_letters`] records every dead letter as `JobDeadLettered`.

mod cause;
pub mod dead_letters;
pub mod forget_mail;
pub mod provision_project;
pub mod send_email;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{Data, Monitor, WorkerBuilder, WorkerBuilderExt};
use idp_events::backoff::Backoff;
use idp_events::{EventStore, RecordedEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use cause::{Cause, Undecodable};

use crate::broker::{Ack, OutgoingJob, QueueBackend, Topology};
use dead_letters::{DeadLetters, record_dead_letter};
use forget_mail::ForgetMail;
use provision_project::ProvisionProject;
use send_email::SendEmail;

/// Every job kind of the worker: the dispatcher routes events to them and their queues are
/// the worker's queues. A new job kind is a file of its own implementing [`Job`], one entry
/// here, and one [`register`] call where the worker starts (which gives it its context).
pub const KINDS: &[JobKind] = &[
    JobKind::of::<SendEmail>(),
    JobKind::of::<ProvisionProject>(),
    JobKind::of::<ForgetMail>(),
];

/// Prefetch and concurrency of each queue's dead-letter recorder.
const DEAD_LETTER_CONCURRENCY: u16 = 16;

/// A kind of job: what causes it, where it waits, and what it does. Jobs are idempotent: one
/// records its outcome as events and refuses to repeat an effect already recorded, so a job
/// delivered twice does its effect once.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The job kind: part of every job id of this kind, the message type on the wire and the
    /// name of its worker.
    const KIND: &'static str;

    /// Its queue (short name, without the prefix).
    const QUEUE: &'static str;

    /// What the jobs of this kind share (the store, drivers, settings).
    type Context: Send + Sync + 'static;

    /// The job `cause` asks for, if any; `event` is the record `cause` was decoded from.
    fn caused_by(cause: &Cause, event: &RecordedEvent) -> Option<Self>;

    /// The job's id.
    fn job_id(&self) -> Uuid;

    /// The id of the event that caused it.
    fn cause_id(&self) -> Uuid;

    /// Does the job. It runs in a task of its own ([`run_detached`]), so it owns what it uses.
    fn perform(
        self,
        ctx: Arc<Self::Context>,
        run: JobRun,
    ) -> impl Future<Output = Result<(), JobError>> + Send + 'static;

    /// The message to publish.
    ///
    /// # Errors
    /// When the job cannot be serialised.
    fn to_outgoing(&self) -> Result<OutgoingJob, serde_json::Error> {
        Ok(OutgoingJob {
            queue: Self::QUEUE,
            job_id: self.job_id(),
            kind: Self::KIND,
            cause_id: self.cause_id(),
            correlation_id: None,
            body: serde_json::to_vec(self)?,
        })
    }
}

/// A [`Job`] kind as the dispatcher and the broker see it: names, and the routing of events.
#[derive(Debug, Clone, Copy)]
pub struct JobKind {
    /// [`Job::KIND`].
    pub kind: &'static str,
    /// [`Job::QUEUE`].
    pub queue: &'static str,
    route: fn(&Cause, &RecordedEvent) -> Result<Option<OutgoingJob>, serde_json::Error>,
}

impl JobKind {
    /// The kind of the jobs of type `J`.
    pub const fn of<J: Job>() -> Self {
        Self {
            kind: J::KIND,
            queue: J::QUEUE,
            route: route::<J>,
        }
    }

    /// The message of the job of this kind that `cause` asks for, if any.
    ///
    /// # Errors
    /// When the job cannot be serialised.
    pub fn job_for(
        &self,
        cause: &Cause,
        event: &RecordedEvent,
    ) -> Result<Option<OutgoingJob>, serde_json::Error> {
        (self.route)(cause, event)
    }
}

fn route<J: Job>(
    cause: &Cause,
    event: &RecordedEvent,
) -> Result<Option<OutgoingJob>, serde_json::Error> {
    J::caused_by(cause, event)
        .map(|job| job.to_outgoing())
        .transpose()
}

/// Every job queue (short names), for declaring and for cleaning up.
pub fn queues() -> impl Iterator<Item = &'static str> + Clone {
    KINDS.iter().map(|kind| kind.queue)
}

/// The kind of the jobs of a known queue.
pub fn queue_kind(queue: &str) -> Option<&'static str> {
    KINDS.iter().find(|k| k.queue == queue).map(|k| k.kind)
}

/// The `'static` name of a known queue.
pub fn known_queue(name: &str) -> Option<&'static str> {
    queues().find(|q| *q == name)
}

/// Runs one job of kind `J` (the apalis handler of every job kind).
pub async fn handle<J: Job>(
    job: J,
    ctx: Data<Arc<J::Context>>,
    ack: Data<Ack>,
) -> Result<(), JobError> {
    let ctx = Arc::clone(&ctx);
    run_detached(J::QUEUE, &ack, move |run| job.perform(ctx, run)).await
}

/// Adds the workers of job kind `J` to `monitor`: one that runs up to `concurrency` jobs of
/// its queue at once with `ctx`, and the recorder of the queue's dead letters.
pub fn register<J: Job>(
    monitor: Monitor,
    topology: &Topology,
    store: &EventStore,
    ctx: Arc<J::Context>,
    concurrency: u16,
) -> Monitor {
    let jobs_topology = topology.clone();
    let dead_topology = topology.clone();
    let dead_letters = Arc::new(DeadLetters::new(store.clone(), J::QUEUE));
    monitor
        .register(move |_restarts| {
            WorkerBuilder::new(J::KIND)
                .backend(QueueBackend::<J>::new(
                    jobs_topology.clone(),
                    J::QUEUE,
                    concurrency,
                ))
                .enable_tracing()
                .catch_panic()
                .concurrency(usize::from(concurrency))
                .data(ctx.clone())
                .build(handle::<J>)
        })
        .register(move |_restarts| {
            WorkerBuilder::new(format!("dead_letters.{}", J::QUEUE))
                .backend(QueueBackend::<serde_json::Value>::dead_letters(
                    dead_topology.clone(),
                    J::QUEUE,
                    DEAD_LETTER_CONCURRENCY,
                ))
                .enable_tracing()
                .concurrency(usize::from(DEAD_LETTER_CONCURRENCY))
                .data(dead_letters.clone())
                .build(record_dead_letter)
        })
}

/// Retry schedule of jobs: attempts and exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per round before the job is dead-lettered.
    pub max_attempts: u32,
    /// Delay schedule between attempts.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): uniform in `[0, min(cap, base·2^(attempt-1))]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt)
    }
}

/// Why a job gave up (its message is dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// Every attempt of the round failed.
    #[error("gave up after {attempts} attempts: {last_error}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last_error: String,
    },
    /// The worker is stopping in the middle of the job; the message goes back to the queue.
    #[error("interrupted by shutdown; handed back to the queue")]
    Interrupted,
    /// Storage failed; the message goes back to the queue.
    #[error("storage failed: {0}")]
    Storage(String),
    /// Another delivery of the same job wrote to its stream first.
    #[error("another delivery of this job wrote first: {0}")]
    Conflict(String),
}

impl JobError {
    /// Whether the message should go back to the queue instead of to the dead letters.
    pub fn hands_back(&self) -> bool {
        matches!(
            self,
            Self::Interrupted | Self::Storage(_) | Self::Conflict(_)
        )
    }
}

impl From<idp_events::ReadError> for JobError {
    fn from(err: idp_events::ReadError) -> Self {
        Self::Storage(err.to_string())
    }
}

impl From<idp_events::AppendError> for JobError {
    fn from(err: idp_events::AppendError) -> Self {
        Self::Storage(err.to_string())
    }
}

impl From<sqlx::Error> for JobError {
    fn from(err: sqlx::Error) -> Self {
        Self::Storage(err.to_string())
    }
}

/// Runs a job's `work` in its own task, so that nothing dropping the handler's future (a
/// worker whose broker connection broke) interrupts it between an effect and the record of it;
/// counts it in the job metrics; and hands its message back to the queue or lets it be
/// dead-lettered, as its result says.
pub async fn run_detached<F, Fut>(queue: &'static str, ack: &Ack, work: F) -> Result<(), JobError>
where
    F: FnOnce(JobRun) -> Fut,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    let run = JobRun::start(queue);
    // The task keeps the delivery's span (message and correlation ids) for its log lines.
    let work = tracing::Instrument::instrument(work(run), tracing::Span::current());
    let result = tokio::spawn(work)
        .await
        .unwrap_or_else(|err| Err(JobError::Storage(format!("the job task failed: {err}"))));
    run.finish(&result);
    match &result {
        Ok(()) => {}
        Err(err) if err.hands_back() => {
            tracing::warn!(queue, error = %err, "job handed back to the queue");
            ack.hand_back();
        }
        Err(err) => tracing::error!(queue, error = %err, "job gave up; dead-lettering it"),
    }
    result
}

/// Counts a job run in the job metrics: started now, outcome and duration when finished.
#[derive(Debug, Clone, Copy)]
pub struct JobRun {
    queue: &'static str,
    started: Instant,
}

impl JobRun {
    /// A job of `queue` starts.
    pub fn start(queue: &'static str) -> Self {
        metrics::counter!("idp_jobs_started_total", "queue" => queue).increment(1);
        Self {
            queue,
            started: Instant::now(),
        }
    }

    /// A failed attempt will be retried.
    pub fn retried(&self) {
        metrics::counter!("idp_jobs_retried_total", "queue" => self.queue).increment(1);
    }

    /// The job ended with `result`.
    pub fn finish<T>(self, result: &Result<T, JobError>) {
        let outcome = match result {
            Ok(_) => "succeeded",
            Err(err) if err.hands_back() => "handed_back",
            Err(_) => "failed",
        };
        metrics::counter!(format!("idp_jobs_{outcome}_total"), "queue" => self.queue).increment(1);
        metrics::histogram!("idp_job_duration_seconds", "queue" => self.queue, "outcome" => outcome)
            .record(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_kind_has_a_kind_and_a_queue_of_its_own() {
        let mut kinds: Vec<_> = KINDS.iter().map(|k| k.kind).collect();
        let mut queues: Vec<_> = queues().collect();
        assert_eq!(queues.len(), KINDS.len());
        kinds.sort_unstable();
        kinds.dedup();
        queues.sort_unstable();
        queues.dedup();
        assert_eq!((kinds.len(), queues.len()), (KINDS.len(), KINDS.len()));
    }

    #[test]
    fn queues_name_their_kind() {
        assert_eq!(queue_kind(SendEmail::QUEUE), Some(SendEmail::KIND));
        assert_eq!(
            queue_kind(ProvisionProject::QUEUE),
            Some(ProvisionProject::KIND)
        );
        assert_eq!(known_queue(&String::from("email")), Some("email"));
        assert_eq!(queue_kind("nowhere"), None);
        assert_eq!(known_queue("nowhere"), None);
    }
}
