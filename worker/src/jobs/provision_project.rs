//! `provision_project`: runs a project's steps through their drivers, and undoes them when the
//! project is deleted.
//!
//! The project's own stream is the job's record: every step's start, success and failure is an
//! event there, appended at the version the job folded (so two deliveries of one job cannot both
//! record an outcome) together with the `projects` read model in one transaction. The job folds
//! the stream, does the next thing, records it and folds again, so a redelivered job (after a
//! crash, a broker failure, or `kill -9`) resumes exactly where the record stops; a step that
//! was running when its worker died runs again, which the drivers make harmless (each is
//! idempotent). Transient failures are retried in place with exponential backoff and full
//! jitter, recorded with the delay that follows; after the last attempt, or at a permanent
//! failure, the project fails with the reason. One circuit breaker per downstream (the
//! provisioning database server, the webhook endpoint) is shared by all worker processes; while
//! it is open, attempts fail at once and the next waits until it lets a trial call through.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use idp_events::project::project::{self as decide, Project, ProjectEvent, ProjectStatus};
use idp_events::project::read_model;
use idp_events::project::{Catalogue, DriverKind};
use idp_events::{AppendError, EventStore, Metadata, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Cause, Job, JobError, JobRun, RetryPolicy};
use crate::breaker::{Breaker, Permit};
use crate::provision::drivers::{
    DatabaseDriver, DriverError, RepositoryDriver, StepInput, WebhookDriver,
};

/// What the job does to the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run the steps still to do (after a request or a manual retry).
    Provision,
    /// Undo the steps that left resources, in reverse order (after a deletion request).
    Deprovision,
}

/// The job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionProject {
    /// The job (`job-<uuid>`; its outcome is in the project's stream).
    pub job_id: Uuid,
    /// The event that asked for it (`ProjectRequested`, `RetryRequested`, `DeletionRequested`).
    pub cause_id: Uuid,
    /// The project.
    pub project_id: Uuid,
    /// Provision or deprovision.
    pub action: Action,
}

impl Action {
    /// What a project event asks the job to do, if anything.
    pub fn for_event(event: &ProjectEvent) -> Option<Self> {
        // Every variant is named, so a new one is a decision about provisioning.
        match event {
            ProjectEvent::ProjectRequested { .. } | ProjectEvent::RetryRequested => {
                Some(Self::Provision)
            }
            ProjectEvent::DeletionRequested => Some(Self::Deprovision),
            ProjectEvent::StepStarted { .. }
            | ProjectEvent::StepSucceeded { .. }
            | ProjectEvent::StepFailed { .. }
            | ProjectEvent::StepSkipped { .. }
            | ProjectEvent::ProjectReady
            | ProjectEvent::ProjectFailed { .. }
            | ProjectEvent::StepDeprovisioned { .. }
            | ProjectEvent::DeprovisionFailed { .. }
            | ProjectEvent::ProjectDeleted
            | ProjectEvent::CredentialsIssued { .. }
            | ProjectEvent::DatabasePasswordRotated { .. }
            | ProjectEvent::DeletionFailed { .. } => None,
        }
    }
}

impl Job for ProvisionProject {
    const KIND: &'static str = "provision_project";
    const QUEUE: &'static str = "provision";
    type Context = ProvisionJobs;

    /// The provisioning a project event asks for (a request, a retry, a deletion), if any.
    fn caused_by(cause: &Cause, event: &RecordedEvent) -> Option<Self> {
        let Cause::Project {
            project_id,
            event: e,
        } = cause
        else {
            return None;
        };
        Some(Self {
            job_id: idp_events::jobs::job_id(Self::KIND, event.event_id),
            cause_id: event.event_id,
            project_id: *project_id,
            action: Action::for_event(e)?,
        })
    }

    fn job_id(&self) -> Uuid {
        self.job_id
    }

    fn cause_id(&self) -> Uuid {
        self.cause_id
    }

    async fn perform(self, ctx: Arc<ProvisionJobs>, run: JobRun) -> Result<(), JobError> {
        // In its own task (see `run_detached`): nothing may cut a driver between its effect and
        // the record of it.
        run_job(&self, &ctx, &run).await
    }
}

/// The drivers and where they reach.
#[derive(Debug)]
pub struct Drivers {
    /// What `database` steps run.
    pub database: DatabaseDriver,
    /// Where `repository` steps create repositories.
    pub repository: RepositoryDriver,
    /// Where `webhook` steps post.
    pub webhook: WebhookDriver,
}

/// What provisioning jobs share.
pub struct ProvisionJobs {
    store: EventStore,
    catalogue: Catalogue,
    database: DatabaseDriver,
    repository: RepositoryDriver,
    webhook: WebhookDriver,
    database_breaker: Breaker,
    webhook_breaker: Breaker,
    retry: RetryPolicy,
    step_timeout: Duration,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for ProvisionJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionJobs")
            .field("retry", &self.retry)
            .field("step_timeout", &self.step_timeout)
            .finish_non_exhaustive()
    }
}

/// Settings of [`ProvisionJobs`] beyond the drivers.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionSettings {
    /// Attempts per step and backoff between them.
    pub retry: RetryPolicy,
    /// Time one attempt may take.
    pub step_timeout: Duration,
    /// Consecutive failures that open a downstream's breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker refuses calls.
    pub breaker_open: Duration,
}

impl ProvisionJobs {
    /// Everything `provision_project` needs.
    pub fn new(
        store: EventStore,
        catalogue: Catalogue,
        drivers: Drivers,
        settings: ProvisionSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let breaker = |name| {
            Breaker::new(
                name,
                store.clone(),
                settings.breaker_threshold,
                settings.breaker_open,
            )
        };
        Self {
            database_breaker: breaker("provision-database"),
            webhook_breaker: breaker("provision-webhook"),
            store,
            catalogue,
            database: drivers.database,
            repository: drivers.repository,
            webhook: drivers.webhook,
            retry: settings.retry,
            step_timeout: settings.step_timeout,
            shutdown,
        }
    }

    fn breaker(&self, driver: DriverKind) -> Option<&Breaker> {
        match driver {
            DriverKind::Database => Some(&self.database_breaker),
            DriverKind::Webhook => Some(&self.webhook_breaker),
            // Local disk: nothing remote to protect.
            DriverKind::Repository => None,
        }
    }
}

/// What one attempt at a step came to.
enum Outcome {
    Done(serde_json::Value),
    Failed {
        error: String,
        permanent: bool,
        /// The breaker refused the call; the next attempt waits until then at least.
        not_before: Option<DateTime<Utc>>,
    },
}

#[tracing::instrument(name = "job.provision_project", skip_all, fields(job.id = %job.job_id, project.id = %job.project_id, action = ?job.action))]
async fn run_job(
    job: &ProvisionProject,
    ctx: &ProvisionJobs,
    run: &JobRun,
) -> Result<(), JobError> {
    let stream = StreamId::project(job.project_id);
    let metadata = Metadata {
        actor: Some("worker".into()),
        causation_id: Some(job.cause_id),
        ..Metadata::default()
    };
    loop {
        let history = ctx.store.read_stream(stream.as_str(), 1).await?;
        let project = Project::fold(job.project_id, &history);
        if !project.exists() {
            tracing::warn!("no such project; nothing to do");
            return Ok(());
        }
        let next = match job.action {
            Action::Provision => next_provisioning(ctx, &project)?,
            Action::Deprovision => next_deprovisioning(&project)?,
        };
        let step = match next {
            Next::Settled => {
                tracing::info!(status = %project.status, "project settled; nothing to do");
                return Ok(());
            }
            Next::Record(events) => {
                record(ctx, &project, &events, &metadata).await?;
                continue;
            }
            Next::Run(step) => step,
        };
        let Some(state) = project.step(&step) else {
            return Err(JobError::Permanent(format!("step {step} vanished")));
        };
        let driver = state.driver;
        // The attempt's number: provisioning records a start, deprovisioning does not.
        let (project, attempt) = match job.action {
            Action::Provision => {
                let started = decide::start_step(&project, &step).map_err(domain)?;
                let Some(project) = record(ctx, &project, &started, &metadata).await? else {
                    continue;
                };
                let attempt = project.step(&step).map_or(1, |s| s.attempts);
                (project, attempt)
            }
            Action::Deprovision => {
                let attempt = state.attempts.saturating_add(1);
                (project, attempt)
            }
        };

        let outcome = attempt_step(ctx, job.action, &project, &step, driver).await?;
        let last = attempt >= ctx.retry.max_attempts;
        let (events, delay) = match outcome {
            Outcome::Done(output) => {
                let events = match job.action {
                    Action::Provision => decide::step_succeeded(&project, &step, output),
                    Action::Deprovision => decide::deprovisioned(&project, &step),
                }
                .map_err(domain)?;
                (events, None)
            }
            Outcome::Failed {
                error,
                permanent,
                not_before,
            } => {
                let mut delay = ctx.retry.delay(attempt);
                if let Some(until) = not_before {
                    // Wait for the breaker's trial call rather than spend attempts on
                    // refusals, within the attempt's backoff ceiling.
                    let open_for = (until - Utc::now()).to_std().unwrap_or_default();
                    delay = delay.max(open_for.min(ctx.retry.backoff.ceiling(attempt)));
                }
                let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                let failed = match job.action {
                    Action::Provision => decide::step_failed,
                    Action::Deprovision => decide::deprovision_failed,
                };
                let events = failed(&project, &step, &error, permanent, Some(retry_in_ms), last)
                    .map_err(domain)?;
                tracing::warn!(step, attempt, permanent, error = %error, "provisioning step failed");
                let gives_up = permanent || last;
                (events, (!gives_up).then_some(delay))
            }
        };
        if record(ctx, &project, &events, &metadata).await?.is_none() {
            continue;
        }
        if let Some(delay) = delay {
            run.retried();
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Err(JobError::Interrupted),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// What the job does next.
enum Next {
    /// Nothing: the project is where this job leaves it.
    Settled,
    /// Record these events (no driver call), then look again.
    Record(Vec<ProjectEvent>),
    /// Run this step.
    Run(String),
}

fn next_provisioning(ctx: &ProvisionJobs, project: &Project) -> Result<Next, JobError> {
    if !matches!(
        project.status,
        ProjectStatus::Requested | ProjectStatus::Provisioning
    ) {
        return Ok(Next::Settled);
    }
    let Some(step) = decide::next_step(project) else {
        return Ok(Next::Settled);
    };
    if step.driver == DriverKind::Webhook && !ctx.webhook.is_configured() {
        let events = decide::skip_step(project, &step.name, "PROVISION_WEBHOOK_URL is not set")
            .map_err(domain)?;
        return Ok(Next::Record(events));
    }
    Ok(Next::Run(step.name.clone()))
}

fn next_deprovisioning(project: &Project) -> Result<Next, JobError> {
    if project.status != ProjectStatus::Deleting {
        return Ok(Next::Settled);
    }
    match decide::steps_to_deprovision(project).first() {
        Some(step) => Ok(Next::Run(step.name.clone())),
        None => Ok(Next::Record(
            decide::finish_deletion(project).map_err(domain)?,
        )),
    }
}

/// One attempt at `step`: through its breaker, bounded by the step timeout.
async fn attempt_step(
    ctx: &ProvisionJobs,
    action: Action,
    project: &Project,
    step: &str,
    driver: DriverKind,
) -> Result<Outcome, JobError> {
    let breaker = ctx.breaker(driver);
    let permit = match breaker {
        Some(breaker) => match breaker.acquire().await {
            Err(err) => return Err(JobError::Storage(err.to_string())),
            Ok(Permit::Refused { retry_at }) => {
                return Ok(Outcome::Failed {
                    error: format!(
                        "circuit breaker {} is open until {}",
                        breaker.name(),
                        retry_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                    permanent: false,
                    not_before: Some(retry_at),
                });
            }
            Ok(permit) => Some(permit),
        },
        None => None,
    };

    let result = match ctx.catalogue.get(&project.template) {
        None => Err(DriverError::Permanent(format!(
            "template {} is not known to this worker (PROJECT_TEMPLATES_DIR must match the API's)",
            project.template
        ))),
        Some(template) => {
            let files = template.render_files(&project.name, &project.parameters);
            let input = StepInput {
                project_id: project.id,
                project_name: &project.name,
                owner_id: project.owner_id,
                template: &project.template,
                template_version: project.template_version,
                parameters: &project.parameters,
                files: &files,
            };
            let call = run_driver(ctx, action, driver, &input);
            match tokio::time::timeout(ctx.step_timeout, call).await {
                Ok(result) => result?,
                Err(_) => Err(DriverError::Transient(format!(
                    "step {step} took longer than {} ms",
                    ctx.step_timeout.as_millis()
                ))),
            }
        }
    };

    if let (Some(breaker), Some(permit)) = (breaker, permit) {
        let updated = match &result {
            Err(DriverError::Transient(error)) => breaker.failure(permit, error).await,
            // Success, or a permanent refusal: the downstream answered.
            _ => breaker.success(permit).await,
        };
        if let Err(err) = updated {
            tracing::warn!(error = %err, "circuit breaker not updated");
        }
    }
    Ok(match result {
        Ok(output) => Outcome::Done(output),
        Err(err) => Outcome::Failed {
            permanent: err.is_permanent(),
            error: err.to_string(),
            not_before: None,
        },
    })
}

async fn run_driver(
    ctx: &ProvisionJobs,
    action: Action,
    driver: DriverKind,
    input: &StepInput<'_>,
) -> Result<Result<serde_json::Value, DriverError>, JobError> {
    let done = serde_json::Value::Null;
    Ok(match (driver, action) {
        (DriverKind::Database, Action::Provision) => ctx.database.provision(input).await,
        (DriverKind::Database, Action::Deprovision) => {
            ctx.database.deprovision(input).await.map(|()| done)
        }
        (DriverKind::Repository, Action::Provision) => ctx.repository.provision(input).await,
        (DriverKind::Repository, Action::Deprovision) => {
            ctx.repository.deprovision(input).await.map(|()| done)
        }
        (DriverKind::Webhook, Action::Provision) => ctx.webhook.provision(input).await,
        (DriverKind::Webhook, Action::Deprovision) => {
            if ctx.webhook.is_configured() {
                ctx.webhook.deprovision(input).await.map(|()| done)
            } else {
                Ok(done)
            }
        }
    })
}

/// Records `events` with the read model ([`read_model::record`]) in one transaction. Returns
/// the project as it now is, or `None` when another delivery wrote first.
async fn record(
    ctx: &ProvisionJobs,
    project: &Project,
    events: &[ProjectEvent],
    metadata: &Metadata,
) -> Result<Option<Project>, JobError> {
    if events.is_empty() {
        return Ok(Some(project.clone()));
    }
    let mut tx = ctx.store.pool().begin().await?;
    let next =
        match read_model::record(&ctx.store, &mut tx, project, events, metadata.clone()).await {
            Ok(next) => next,
            Err(AppendError::Conflict { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
    tx.commit().await?;
    Ok(Some(next))
}

fn domain(err: decide::ProjectError) -> JobError {
    JobError::Permanent(err.to_string())
}
