//! `forget_mail`: when a person is erased (`PersonErased`), the messages the mailer keeps of the
//! emails sent to them (the outbox's `.eml` files, which hold their address, their name and
//! their links) are removed. An SMTP mailer keeps nothing: the job records that no file was
//! there.
//!
//! The files are found from the person's own stream, which outlives the erasure: each event
//! that asked for an email names the `send_email` job, whose id names the message. Removing is
//! idempotent, so a repeated delivery removes nothing more; the outcome is recorded as
//! `MailForgotten` in the job's stream. An email composed before the erasure and written after
//! this job ran is removed by its own job, which looks at the account again once the message
//! is written.

use std::sync::Arc;

use idp_events::identity::user::UserEvent;
use idp_events::jobs::{self, JobEvent};
use idp_events::{Metadata, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::send_email::{EmailJobs, record};
use super::{Cause, Job, JobError, JobRun};

/// The job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetMail {
    /// The job (`job-<uuid>` stream).
    pub job_id: Uuid,
    /// The `PersonErased` event.
    pub cause_id: Uuid,
    /// The erased account.
    pub user_id: Uuid,
}

impl Job for ForgetMail {
    const KIND: &'static str = "forget_mail";
    const QUEUE: &'static str = "erasure";
    type Context = EmailJobs;

    fn caused_by(cause: &Cause, event: &RecordedEvent) -> Option<Self> {
        let Cause::User {
            user_id,
            event: UserEvent::PersonErased { .. },
        } = cause
        else {
            return None;
        };
        Some(Self {
            job_id: jobs::job_id(Self::KIND, event.event_id),
            cause_id: event.event_id,
            user_id: *user_id,
        })
    }

    fn job_id(&self) -> Uuid {
        self.job_id
    }

    fn cause_id(&self) -> Uuid {
        self.cause_id
    }

    async fn perform(self, ctx: Arc<EmailJobs>, _run: JobRun) -> Result<(), JobError> {
        forget(&self, &ctx).await
    }
}

#[tracing::instrument(name = "job.forget_mail", skip_all, fields(job.id = %job.job_id, user.id = %job.user_id))]
async fn forget(job: &ForgetMail, ctx: &EmailJobs) -> Result<(), JobError> {
    let stream = StreamId::job(job.job_id);
    let history = ctx.store().read_stream(stream.as_str(), 1).await?;
    let state = jobs::Job::fold(&history);
    if state.done {
        return Ok(());
    }
    let files = ctx.forget_mail_of(job.user_id).await?;
    tracing::info!(files, "removed the kept mail of an erased person");
    let metadata = Metadata {
        actor: Some("worker".into()),
        causation_id: Some(job.cause_id),
        ..Metadata::default()
    };
    let forgotten = JobEvent::MailForgotten { files };
    record(ctx, &stream, state.version, &forgotten, &metadata).await
}
