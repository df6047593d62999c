//! Jobs: effects the worker performs for events, consumed from RabbitMQ by apalis workers.
//!
//! Each job kind declares its queue and is idempotent: it records its outcome as events in the
//! job's stream (`job-<uuid>`, the id derived from the kind and the causing event) and refuses
//! to repeat an effect already recorded there. A job that gives up returns an error, which
//! dead-letters its message; [`dead_letters`] records every dead letter as `JobDeadLettered`.

pub mod dead_letters;
pub mod provision_project;
pub mod send_email;

use std::time::{Duration, Instant};

use idp_events::backoff::Backoff;

use crate::broker::Ack;

/// Queue of `send_email` jobs.
pub const EMAIL_QUEUE: &str = "email";

/// Queue of `provision_project` jobs.
pub const PROVISION_QUEUE: &str = "provision";

/// Every job queue, for declaring and for the dead-letter recorders.
pub const QUEUES: &[&str] = &[EMAIL_QUEUE, PROVISION_QUEUE];

/// The kind of the jobs of a known queue.
pub fn queue_kind(queue: &str) -> Option<&'static str> {
    match queue {
        EMAIL_QUEUE => Some(send_email::KIND),
        PROVISION_QUEUE => Some(provision_project::KIND),
        _ => None,
    }
}

/// The `'static` name of a known queue.
pub fn known_queue(name: &str) -> Option<&'static str> {
    QUEUES.iter().copied().find(|q| *q == name)
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
