//! `send_email`: the emails an account's events ask for (verification, duplicate-registration
//! notice, password reset, lockout notice, password-changed notice, second-factor reset notice,
//! new-device notice), sent exactly once.
//!
//! The job's stream says what happened so far. Each attempt first asks the SMTP circuit
//! breaker, then hands the message to the server; the hand-over (`EmailSending`) is written
//! after the server accepted the envelope, with the stream version the job read, and committed
//! as the final dot goes out, so two deliveries of the same job cannot both send and a crash
//! can never leave a sent message unrecorded. A delivery that finds a hand-over without an outcome (its
//! predecessor died in the middle) records `EmailSent { confirmed: false }` instead of sending
//! again. Transient failures are retried in place with exponential backoff and full jitter;
//! after the last attempt, or at a permanent failure, the job gives up and is dead-lettered.
//!
//! The message is composed and built before the breaker is asked: an email that cannot be
//! built (an address lettre refuses, already in the log) is a permanent failure, recorded like
//! any other, that says nothing about the mail server. A display name that cannot be used in a
//! header is left out and the email still goes out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::identity::user::{User, UserEvent};
use idp_events::jobs::{self, JobEvent};
use idp_events::keys::SecretKeys;
use idp_events::privacy::Personal;
use idp_events::{
    Append, AppendError, EventStore, ExpectedVersion, Metadata, RecordedEvent, StreamId,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Cause, Job, JobError, JobRun, RetryPolicy};
use crate::breaker::{Breaker, Permit};
use crate::config::EmailConfig;
use crate::email::{
    BuiltEmail, EmailKind, HandOver, Links, Mailer, OutgoingEmail, SendError, render,
    sender_domain, usable_display_name,
};

/// Which email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// Confirm the address (`VerificationRequested`).
    Verification,
    /// Someone tried to register the address again (`DuplicateRegistrationAttempted`).
    DuplicateRegistration,
    /// The password reset link (`PasswordResetRequested`).
    PasswordReset,
    /// The account was locked (`AccountLocked`).
    AccountLocked,
    /// The password was changed (`PasswordChanged`).
    PasswordChanged,
    /// An administrator removed the second factor (`SecondFactorReset`).
    SecondFactorReset,
    /// A sign-in from a new device (`NewDeviceSignedIn`).
    NewDevice,
}

impl Template {
    /// The template asked for by a user event, if any.
    pub fn for_event(event: &UserEvent) -> Option<Self> {
        // Every variant is named, so a new one is a decision about its email.
        match event {
            UserEvent::VerificationRequested { .. } => Some(Self::Verification),
            UserEvent::DuplicateRegistrationAttempted { .. } => Some(Self::DuplicateRegistration),
            UserEvent::PasswordResetRequested { .. } => Some(Self::PasswordReset),
            UserEvent::AccountLocked { .. } => Some(Self::AccountLocked),
            UserEvent::PasswordChanged => Some(Self::PasswordChanged),
            UserEvent::SecondFactorReset { .. } => Some(Self::SecondFactorReset),
            UserEvent::NewDeviceSignedIn { .. } => Some(Self::NewDevice),
            UserEvent::UserRegistered { .. }
            | UserEvent::EmailVerified { .. }
            | UserEvent::RegistrationRepeated { .. }
            | UserEvent::PendingRegistrationConfirmed { .. }
            | UserEvent::PasswordReset { .. }
            | UserEvent::PasswordRehashed
            | UserEvent::RolesChanged { .. }
            | UserEvent::AccountUnlocked
            | UserEvent::PersonErased { .. }
            | UserEvent::PersonalDataExported
            | UserEvent::ConsentGiven { .. }
            | UserEvent::ConsentWithdrawn { .. }
            | UserEvent::SecondFactorEnrolmentStarted
            | UserEvent::SecondFactorEnabled
            | UserEvent::SecondFactorDisabled
            | UserEvent::RecoveryCodesGenerated { .. }
            | UserEvent::RecoveryCodeUsed { .. }
            | UserEvent::SecondFactorLocked { .. }
            | UserEvent::ExternalIdentityLinked { .. }
            | UserEvent::ExternalIdentityUnlinked { .. } => None,
        }
    }
}

/// The job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendEmail {
    /// The job (`job-<uuid>` stream).
    pub job_id: Uuid,
    /// The event that asked for the email.
    pub cause_id: Uuid,
    /// The account it is about.
    pub user_id: Uuid,
    /// Which email.
    pub template: Template,
}

impl Job for SendEmail {
    const KIND: &'static str = "send_email";
    const QUEUE: &'static str = "email";
    type Context = EmailJobs;

    /// The email a user event asks for, if any.
    fn caused_by(cause: &Cause, event: &RecordedEvent) -> Option<Self> {
        let Cause::User { user_id, event: e } = cause else {
            return None;
        };
        Some(Self {
            job_id: jobs::job_id(Self::KIND, event.event_id),
            cause_id: event.event_id,
            user_id: *user_id,
            template: Template::for_event(e)?,
        })
    }

    fn job_id(&self) -> Uuid {
        self.job_id
    }

    fn cause_id(&self) -> Uuid {
        self.cause_id
    }

    async fn perform(self, ctx: Arc<EmailJobs>, run: JobRun) -> Result<(), JobError> {
        // In its own task (see `run_detached`): nothing may cut an SMTP transaction between its
        // recorded hand-over and the final dot.
        attempt_until_done(&self, &ctx, &run).await
    }
}

/// What `send_email` jobs share.
pub struct EmailJobs {
    store: EventStore,
    mailer: Mailer,
    breaker: Breaker,
    retry: RetryPolicy,
    links: Links,
    from: String,
    message_id_domain: String,
    email_keys: Arc<SecretKeys>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for EmailJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailJobs")
            .field("mailer", &self.mailer)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl EmailJobs {
    /// Everything `send_email` needs.
    pub fn new(
        store: EventStore,
        mailer: Mailer,
        breaker: Breaker,
        retry: RetryPolicy,
        config: &EmailConfig,
        email_keys: Arc<SecretKeys>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let links = Links::new(&config.public_base_url)
            .map_err(|err| anyhow::anyhow!("PUBLIC_BASE_URL: {err}"))?;
        // Checked here, at start: a sender lettre cannot write would fail every email.
        let message_id_domain = sender_domain(&config.email_from)
            .map_err(|err| anyhow::anyhow!("EMAIL_FROM {:?}: {err}", config.email_from))?;
        Ok(Self {
            store,
            mailer,
            breaker,
            retry,
            links,
            from: config.email_from.clone(),
            message_id_domain,
            email_keys,
            shutdown,
        })
    }

    /// The event store.
    pub(super) fn store(&self) -> &EventStore {
        &self.store
    }

    /// The `Message-ID` (without angle brackets) of the email of job `job_id`.
    fn message_id(&self, job_id: Uuid) -> String {
        format!("{job_id}@{}", self.message_id_domain)
    }

    /// Removes every message the mailer keeps (outbox files) of the emails account `user_id`'s
    /// events asked for; how many there were.
    ///
    /// # Errors
    /// When the account's stream cannot be read or a file cannot be removed.
    pub async fn forget_mail_of(&self, user_id: Uuid) -> Result<u32, JobError> {
        if !self.mailer.keeps_messages() {
            return Ok(0);
        }
        let events = self
            .store
            .read_stream(StreamId::user(user_id).as_str(), 1)
            .await?;
        let mut removed = 0_u32;
        for event in &events {
            let asked = UserEvent::from_recorded(event)
                .as_ref()
                .and_then(Template::for_event);
            if asked.is_none() {
                continue;
            }
            let job_id = jobs::job_id(SendEmail::KIND, event.event_id);
            let forgotten = self
                .mailer
                .forget(&self.message_id(job_id))
                .await
                .map_err(|err| JobError::Storage(format!("outbox: {err}")))?;
            removed += u32::from(forgotten);
        }
        Ok(removed)
    }

    /// Removes the kept message `message_id` of account `user_id` if the account was erased
    /// since the email was composed (the erasure's own clean-up may have run before the message
    /// was written).
    async fn forget_if_erased(&self, user_id: Uuid, message_id: &str) {
        if !self.mailer.keeps_messages() {
            return;
        }
        let erased = match self
            .store
            .read_stream(StreamId::user(user_id).as_str(), 1)
            .await
        {
            Ok(events) => User::fold(user_id, &events).erased,
            Err(err) => {
                tracing::warn!(error = %err, "could not check whether the person was erased after sending");
                return;
            }
        };
        if erased && let Err(err) = self.mailer.forget(message_id).await {
            tracing::warn!(error = %err, "could not remove the message of an erased person");
        }
    }
}

#[tracing::instrument(name = "job.send_email", skip_all, fields(job.id = %job.job_id, cause.id = %job.cause_id, template = ?job.template))]
async fn attempt_until_done(
    job: &SendEmail,
    ctx: &EmailJobs,
    run: &JobRun,
) -> Result<(), JobError> {
    let stream = StreamId::job(job.job_id);
    loop {
        let history = ctx.store.read_stream(stream.as_str(), 1).await?;
        let state = jobs::Job::fold(&history);
        if state.done || state.dead {
            tracing::info!(
                done = state.done,
                "email job already settled; nothing to do"
            );
            return Ok(());
        }
        let metadata = Metadata {
            actor: Some("worker".into()),
            causation_id: Some(job.cause_id),
            ..Metadata::default()
        };
        if let Some((attempt, message_id)) = state.unresolved {
            // The previous delivery handed the message over and died before the server's
            // answer was recorded: sending again could deliver it twice.
            let sent = JobEvent::EmailSent {
                attempt,
                message_id,
                template: template_name(job.template).to_owned(),
                confirmed: false,
            };
            return record(ctx, &stream, state.version, &sent, &metadata).await;
        }
        if state.failed_attempts >= ctx.retry.max_attempts {
            return Err(JobError::Exhausted {
                attempts: state.failed_attempts,
                last_error: state.last_error.unwrap_or_default(),
            });
        }
        let attempt = state.failed_attempts + 1;

        // While the breaker is open, the next attempt waits at least until it lets a trial
        // call through: retrying sooner would only spend the job's attempts on refusals.
        let mut breaker_open_until = None;
        let failure = match compose(job, ctx).await {
            // The message is the problem and the server was not asked: the breaker is not told.
            Err(failure) => failure,
            Ok((email, built)) => match ctx.breaker.acquire().await {
                Err(err) => return Err(JobError::Storage(err.to_string())),
                Ok(Permit::Refused { retry_at }) => {
                    breaker_open_until = Some(retry_at);
                    Failure::Transient(format!(
                        "circuit breaker {} is open until {}",
                        ctx.breaker.name(),
                        retry_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ))
                }
                Ok(permit) => {
                    let sent = send_once(
                        job,
                        ctx,
                        Outgoing {
                            email: &email,
                            built: &built,
                        },
                        &stream,
                        state.version,
                        attempt,
                        &metadata,
                    )
                    .await;
                    match sent {
                        Ok(Sent::Done) => {
                            let _ = ctx.breaker.success(permit).await;
                            return Ok(());
                        }
                        Ok(Sent::TakenByAnother) => return Ok(()),
                        Err(Failure::Transient(error)) => {
                            if let Err(err) = ctx.breaker.failure(permit, &error).await {
                                tracing::warn!(error = %err, "circuit breaker not updated");
                            }
                            Failure::Transient(error)
                        }
                        Err(Failure::Permanent(error)) => {
                            // The server answered: it is up, the message is the problem.
                            let _ = ctx.breaker.success(permit).await;
                            Failure::Permanent(error)
                        }
                        Err(failure @ Failure::Dropped(_)) => failure,
                        Err(Failure::Job(err)) => return Err(err),
                    }
                }
            },
        };
        let version = ctx.store.stream_version(stream.as_str()).await?;
        match failure {
            Failure::Dropped(reason) => {
                let dropped = JobEvent::EmailDropped {
                    template: template_name(job.template).to_owned(),
                    reason,
                };
                match record(ctx, &stream, version, &dropped, &metadata).await {
                    Err(JobError::Conflict(_)) => continue,
                    other => return other,
                }
            }
            Failure::Permanent(error) => {
                let failed = JobEvent::EmailDeliveryFailed {
                    attempt,
                    permanent: true,
                    error: error.clone(),
                    retry_in_ms: None,
                };
                match record(ctx, &stream, version, &failed, &metadata).await {
                    Err(JobError::Conflict(_)) => continue,
                    other => other?,
                }
                return Err(JobError::Permanent(error));
            }
            Failure::Transient(error) => {
                let last = attempt >= ctx.retry.max_attempts;
                let delay = ctx.retry.delay(attempt);
                let delay = match breaker_open_until {
                    Some(until) => {
                        delay.max((until - chrono::Utc::now()).to_std().unwrap_or_default())
                    }
                    None => delay,
                };
                let failed = JobEvent::EmailDeliveryFailed {
                    attempt,
                    permanent: false,
                    error: error.clone(),
                    retry_in_ms: (!last)
                        .then(|| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                };
                match record(ctx, &stream, version, &failed, &metadata).await {
                    Err(JobError::Conflict(_)) => continue,
                    other => other?,
                }
                if last {
                    return Err(JobError::Exhausted {
                        attempts: attempt,
                        last_error: error,
                    });
                }
                run.retried();
                tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "email attempt failed; retrying");
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Err(JobError::Interrupted),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Failure::Job(err) => return Err(err),
        }
    }
}

/// Waits between attempts to record a delivered message while storage fails: up to 5 s apart.
const UNRECORDED_RETRY: idp_events::backoff::Backoff =
    idp_events::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

enum Sent {
    Done,
    TakenByAnother,
}

enum Failure {
    Transient(String),
    Permanent(String),
    /// The email must not be sent at all (its person is erased).
    Dropped(String),
    Job(JobError),
}

/// The email of one attempt, as composed and as built.
struct Outgoing<'a> {
    email: &'a OutgoingEmail,
    built: &'a BuiltEmail,
}

async fn send_once(
    job: &SendEmail,
    ctx: &EmailJobs,
    Outgoing { email, built }: Outgoing<'_>,
    stream: &StreamId,
    version: u64,
    attempt: u32,
    metadata: &Metadata,
) -> Result<Sent, Failure> {
    let template = template_name(job.template).to_owned();
    let handed_over = AtomicBool::new(false);
    let sending = JobEvent::EmailSending {
        attempt,
        message_id: email.message_id.clone(),
        template: template.clone(),
    };
    let hand_over = RecordedHandOver {
        ctx,
        stream,
        version,
        event: &sending,
        metadata,
        handed_over: &handed_over,
    };
    let sent = JobEvent::EmailSent {
        attempt,
        message_id: email.message_id.clone(),
        template: template.clone(),
        confirmed: true,
    };
    match ctx.mailer.send_built(built, hand_over).await {
        Ok(_) => {
            record(ctx, stream, version + 1, &sent, metadata)
                .await
                .map_err(Failure::Job)?;
            ctx.forget_if_erased(job.user_id, &email.message_id).await;
            metrics::counter!("idp_emails_sent_total", "template" => template).increment(1);
            Ok(Sent::Done)
        }
        Err(SendError::Unrecorded { error, .. }) => {
            // Delivered, but the hand-over's commit failed: record the delivery on whatever the
            // stream holds now (the commit may have gone through after all). Only this process
            // knows the message went out, so it keeps trying while the database is away (the
            // usual reason a commit fails): handing the job back would send the message again.
            tracing::warn!(error = %error, "the message was accepted but its hand-over was not recorded; recording it as sent");
            let mut waits = 0_u32;
            loop {
                let recorded = match ctx.store.stream_version(stream.as_str()).await {
                    Ok(version) => record(ctx, stream, version, &sent, metadata).await,
                    Err(err) => Err(err.into()),
                };
                match recorded {
                    Ok(()) => {
                        metrics::counter!("idp_emails_sent_total", "template" => template)
                            .increment(1);
                        return Ok(Sent::Done);
                    }
                    Err(JobError::Conflict(_)) => {}
                    Err(JobError::Storage(err)) => {
                        waits = waits.saturating_add(1);
                        let delay = UNRECORDED_RETRY.delay(waits);
                        tracing::warn!(error = %err, delay_ms = delay.as_millis() as u64, "could not record a delivered message; trying again");
                        tokio::select! {
                            () = ctx.shutdown.cancelled() => return Err(Failure::Job(JobError::Interrupted)),
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                    Err(err) => return Err(Failure::Job(err)),
                }
            }
        }
        Err(SendError::NotCommitted(JobError::Conflict(_))) => Ok(Sent::TakenByAnother),
        Err(SendError::NotCommitted(err)) => Err(Failure::Job(err)),
        Err(SendError::Permanent(error)) => Err(Failure::Permanent(error)),
        Err(SendError::Unanswered(error)) if handed_over.load(Ordering::Acquire) => {
            // The server had the whole message; its answer was lost. It may have been
            // delivered, so it is not sent again.
            tracing::warn!(error = %error, "no answer after the message was handed over; recording it as sent, unconfirmed");
            let unconfirmed = JobEvent::EmailSent {
                attempt,
                message_id: email.message_id.clone(),
                template,
                confirmed: false,
            };
            record(ctx, stream, version + 1, &unconfirmed, metadata)
                .await
                .map_err(Failure::Job)?;
            Ok(Sent::Done)
        }
        Err(SendError::Transient(error) | SendError::Unanswered(error)) => {
            Err(Failure::Transient(error))
        }
    }
}

/// The hand-over record (`EmailSending`), appended inside a transaction whose commit goes out
/// together with the message (see [`crate::email::transport`]).
struct RecordedHandOver<'a> {
    ctx: &'a EmailJobs,
    stream: &'a StreamId,
    version: u64,
    event: &'a JobEvent,
    metadata: &'a Metadata,
    /// Set once the record committed.
    handed_over: &'a AtomicBool,
}

impl<'a> HandOver for RecordedHandOver<'a> {
    type Error = JobError;
    type Commit = std::pin::Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>>;

    async fn prepare(self) -> Result<Self::Commit, JobError> {
        let mut tx = self.ctx.store.pool().begin().await?;
        self.ctx
            .store
            .append_in(
                &mut tx,
                append_at(self.stream, self.version, self.event, self.metadata),
            )
            .await
            .map_err(job_error)?;
        let handed_over = self.handed_over;
        Ok(Box::pin(async move {
            tx.commit().await?;
            handed_over.store(true, Ordering::Release);
            Ok(())
        }))
    }
}

fn append_at(stream: &StreamId, version: u64, event: &JobEvent, metadata: &Metadata) -> Append {
    Append::to(stream)
        .expecting(ExpectedVersion::after(version))
        .event(event.to_new_event())
        .metadata(metadata.clone())
}

fn job_error(err: AppendError) -> JobError {
    match err {
        err @ AppendError::Conflict { .. } => JobError::Conflict(err.to_string()),
        err => err.into(),
    }
}

/// Appends `event` to the job's stream at `version`; a concurrent writer makes it a conflict.
pub(super) async fn record(
    ctx: &EmailJobs,
    stream: &StreamId,
    version: u64,
    event: &JobEvent,
    metadata: &Metadata,
) -> Result<(), JobError> {
    ctx.store
        .append(append_at(stream, version, event, metadata))
        .await
        .map(drop)
        .map_err(job_error)
}

fn template_name(template: Template) -> &'static str {
    match template {
        Template::Verification => "verification",
        Template::DuplicateRegistration => "duplicate_registration",
        Template::PasswordReset => "password_reset",
        Template::AccountLocked => "account_locked",
        Template::PasswordChanged => "password_changed",
        Template::SecondFactorReset => "second_factor_reset",
        Template::NewDevice => "new_device",
    }
}

/// The address of a personal field; one whose key is destroyed is not sent to.
fn known(email: Personal<String>) -> Result<String, Failure> {
    email
        .into_known()
        .ok_or_else(|| Failure::Dropped("the address is erased".into()))
}

/// Composes the email from the account's stream and the causing event, and builds its message.
async fn compose(job: &SendEmail, ctx: &EmailJobs) -> Result<(OutgoingEmail, BuiltEmail), Failure> {
    let events = ctx
        .store
        .read_stream(StreamId::user(job.user_id).as_str(), 1)
        .await
        .map_err(|err| Failure::Job(err.into()))?;
    let account = User::fold(job.user_id, &events);
    if !account.exists() {
        return Err(Failure::Permanent("the account does not exist".into()));
    }
    if account.erased {
        return Err(Failure::Dropped("the person is erased".into()));
    }
    let cause_index = events.iter().position(|e| e.event_id == job.cause_id);
    let cause = cause_index
        .and_then(|i| events.get(i))
        .and_then(UserEvent::from_recorded);
    let Some(cause) = cause else {
        return Err(Failure::Permanent(
            "the causing event is not in the account's stream".into(),
        ));
    };
    let (to, kind) = match (job.template, cause) {
        (Template::Verification, UserEvent::VerificationRequested { email }) => {
            let token = one_time_token::issue(&ctx.email_keys, Purpose::VerifyEmail, job.cause_id);
            let link = ctx.links.verification(&token);
            (known(email)?, EmailKind::Verification { link })
        }
        (Template::DuplicateRegistration, UserEvent::DuplicateRegistrationAttempted { email }) => (
            known(email)?,
            EmailKind::DuplicateRegistration {
                sign_in_link: ctx.links.sign_in(),
                reset_link: ctx.links.forgot_password(),
            },
        ),
        (Template::PasswordReset, UserEvent::PasswordResetRequested { email }) => {
            let token =
                one_time_token::issue(&ctx.email_keys, Purpose::ResetPassword, job.cause_id);
            let link = ctx.links.password_reset(&token);
            (known(email)?, EmailKind::PasswordReset { link })
        }
        (Template::AccountLocked, UserEvent::AccountLocked { until, .. }) => {
            // Who locked it is a matter of the account as the lock left it, not as it is now.
            let locked = cause_index
                .and_then(|i| events.get(..=i))
                .unwrap_or(&events);
            let at_lock = User::fold(job.user_id, locked);
            let by_admin = locked
                .last()
                .is_some_and(|event| at_lock.is_locked_by_admin(event.recorded_at));
            (
                account.email.clone(),
                EmailKind::AccountLocked {
                    until,
                    by_admin,
                    reset_link: ctx.links.forgot_password(),
                },
            )
        }
        (Template::PasswordChanged, UserEvent::PasswordChanged) => (
            account.email.clone(),
            EmailKind::PasswordChanged {
                reset_link: ctx.links.forgot_password(),
            },
        ),
        (Template::SecondFactorReset, UserEvent::SecondFactorReset { email }) => (
            known(email)?,
            EmailKind::SecondFactorReset {
                reset_link: ctx.links.forgot_password(),
            },
        ),
        (
            Template::NewDevice,
            UserEvent::NewDeviceSignedIn {
                email,
                device,
                network,
                ..
            },
        ) => {
            let token =
                one_time_token::issue(&ctx.email_keys, Purpose::RevokeSession, job.cause_id);
            let at = cause_index
                .and_then(|i| events.get(i))
                .map_or_else(chrono::Utc::now, |e| e.recorded_at);
            (
                known(email)?,
                EmailKind::NewDevice {
                    at,
                    device: device
                        .into_known()
                        .unwrap_or_else(|| "unknown device".into()),
                    network: network
                        .into_known()
                        .unwrap_or_else(|| "unknown network".into()),
                    revoke_link: ctx.links.revoke_session(&token),
                    reset_link: ctx.links.forgot_password(),
                },
            )
        }
        _ => {
            return Err(Failure::Permanent(
                "the causing event does not match the template".into(),
            ));
        }
    };
    if let Some(name) = account.display_name.as_deref()
        && !name.trim().is_empty()
        && usable_display_name(name).is_none()
    {
        tracing::info!(
            "the account's display name cannot be used in an email; addressing it without one"
        );
    }
    let rendered = render(&kind, account.display_name.as_deref(), "idp")
        .map_err(|err| Failure::Permanent(err.to_string()))?;
    let email = OutgoingEmail {
        message_id: ctx.message_id(job.job_id),
        from: ctx.from.clone(),
        to,
        to_name: account.display_name.clone(),
        rendered,
    };
    let built = email
        .build()
        .map_err(|err| Failure::Permanent(err.to_string()))?;
    Ok((email, built))
}
