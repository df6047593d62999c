//! The project aggregate: its events, its state folded from them, and the decisions on it.
//!
//! The stream is `project-<uuid>`. Every provisioning step's start, success and failure is an
//! event, so status, progress and history all come from the log; the worker's drivers do the
//! work and report back through the decisions here, which keep the steps in order.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::credentials::{PASSWORD_KEY_ID, password_key_id};
use super::name::ProjectName;
use super::template::{DriverKind, StepSpec, Template, TemplateError};
use crate::{NewEvent, RecordedEvent};

mod preconditions;
use preconditions::{
    failure_reason, is_last_to_do, is_provisioning, running_step, the_next_step,
    the_next_to_deprovision,
};

/// Events of a project's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum ProjectEvent {
    /// A project was requested from a template; provisioning runs `steps` in order.
    ProjectRequested {
        /// Who asked for it.
        owner_id: Uuid,
        /// The project's name (a valid [`ProjectName`]).
        name: String,
        /// The template's name.
        template: String,
        /// The template's version at the time.
        template_version: u32,
        /// Every parameter's value, defaults included.
        parameters: BTreeMap<String, String>,
        /// The steps, copied from the template so later template changes do not alter them.
        steps: Vec<StepSpec>,
        /// What the project costs per month, in cents, as its template declared when it was
        /// requested (0 for projects requested before templates declared costs).
        #[serde(default, skip_serializing_if = "is_zero")]
        monthly_cost_cents: u64,
    },
    /// A driver began an attempt at a step.
    StepStarted {
        /// The step.
        step: String,
        /// The attempt's number in this round, from 1.
        attempt: u32,
    },
    /// A step's attempt succeeded.
    StepSucceeded {
        /// The step.
        step: String,
        /// The attempt that succeeded.
        attempt: u32,
        /// Non-secret results: database and role name, repository path, webhook HTTP status.
        output: serde_json::Value,
    },
    /// A step's attempt failed.
    StepFailed {
        /// The step.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// What went wrong, fit to show to the owner.
        error: String,
        /// True if trying again cannot help.
        permanent: bool,
        /// When the next attempt is due, if there is one.
        retry_in_ms: Option<u64>,
    },
    /// A step was passed over (e.g. its driver is not configured).
    StepSkipped {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// Every step succeeded or was skipped.
    ProjectReady,
    /// Provisioning stopped at `step`; the owner may retry.
    ProjectFailed {
        /// The step that failed.
        step: String,
        /// Why.
        reason: String,
    },
    /// The owner asked to resume a failed provisioning at the failed step.
    RetryRequested,
    /// The owner asked to delete the project; its steps are undone in reverse order.
    DeletionRequested,
    /// A step's resources were removed.
    StepDeprovisioned {
        /// The step.
        step: String,
    },
    /// An attempt at removing a step's resources failed.
    DeprovisionFailed {
        /// The step.
        step: String,
        /// The attempt's number in this round, from 1.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// True if trying again cannot help.
        permanent: bool,
        /// When the next attempt is due, if there is one.
        retry_in_ms: Option<u64>,
    },
    /// Every provisioned step was undone.
    ProjectDeleted,
    /// The database step's login was handed to the owner (once; the password is derived from a
    /// server secret and never stored, so the log holds nothing usable).
    CredentialsIssued {
        /// The step whose login it is.
        step: String,
    },
    /// The password of the database step's login was set again, derived with another key of
    /// the ring (a rotation); the owner may have the new password, once.
    DatabasePasswordRotated {
        /// The database step whose login it is.
        step: String,
        /// The id of the key that derived the new password (never the password).
        key_id: String,
    },
    /// Deletion stopped at `step`; the owner may ask to delete again.
    DeletionFailed {
        /// The step that could not be undone.
        step: String,
        /// Why.
        reason: String,
    },
}

impl ProjectEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        crate::tagged::to_new_event(self)
    }

    /// The event read back from the log, if it is a project event.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        crate::tagged::from_recorded(event)
    }
}

/// Where a project is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    /// Requested; no step has started yet.
    #[default]
    Requested,
    /// Steps are running.
    Provisioning,
    /// Every step succeeded or was skipped.
    Ready,
    /// Provisioning stopped at a failed step.
    Failed,
    /// Steps are being undone.
    Deleting,
    /// Every provisioned step was undone.
    Deleted,
    /// Undoing a step failed.
    DeletionFailed,
}

impl ProjectStatus {
    /// True when nothing is in progress: the project waits for its owner, or is gone.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Ready | Self::Failed | Self::Deleted | Self::DeletionFailed
        )
    }

    /// The status as in JSON (`deletion_failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::DeletionFailed => "deletion_failed",
        }
    }
}

impl fmt::Display for ProjectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started in this round.
    Pending,
    /// An attempt is under way.
    Running,
    /// Its resources exist.
    Succeeded,
    /// The latest attempt failed.
    Failed,
    /// Passed over.
    Skipped,
    /// Its resources were removed.
    Deprovisioned,
}

/// A step as folded from the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepState {
    /// The step's name.
    pub name: String,
    /// Which driver runs it.
    pub driver: DriverKind,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts in the current round (provisioning, a manual retry, or deletion).
    pub attempts: u32,
    /// The latest error, kept until the step next succeeds.
    pub last_error: Option<String>,
    /// When the latest attempt began.
    pub started_at: Option<DateTime<Utc>>,
    /// When the latest attempt ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The driver's non-secret output on success, or `{"reason": ..}` when skipped.
    pub output: serde_json::Value,
}

/// A project as folded from its stream.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Project {
    /// The project's id.
    pub id: Uuid,
    /// Stream version (0 = no such project).
    pub version: u64,
    /// Who requested it.
    pub owner_id: Uuid,
    /// Its name.
    pub name: String,
    /// The template it was requested from.
    pub template: String,
    /// That template's version.
    pub template_version: u32,
    /// Every parameter's value.
    pub parameters: BTreeMap<String, String>,
    /// Where it is in its life.
    pub status: ProjectStatus,
    /// Its steps, in provisioning order.
    pub steps: Vec<StepState>,
    /// Why provisioning or deletion failed, while it is failed.
    pub failure: Option<String>,
    /// When it was requested.
    pub created_at: Option<DateTime<Utc>>,
    /// When its latest event was recorded.
    pub updated_at: Option<DateTime<Utc>>,
    /// Steps whose login was handed out.
    pub credentials_issued: std::collections::BTreeSet<String>,
    /// What it costs per month, in cents (counted against its owner's spend cap while live).
    pub monthly_cost_cents: u64,
}

impl Project {
    /// Folds a stream's events.
    pub fn fold(id: Uuid, events: &[RecordedEvent]) -> Self {
        let mut project = Self {
            id,
            ..Self::default()
        };
        for event in events {
            if let Some(e) = ProjectEvent::from_recorded(event) {
                project.apply(&e, event.recorded_at);
            }
            project.version = u64::try_from(event.stream_version).unwrap_or_default();
        }
        project
    }

    /// Applies one event recorded at `at`.
    pub fn apply(&mut self, event: &ProjectEvent, at: DateTime<Utc>) {
        self.updated_at = Some(at);
        match event {
            ProjectEvent::ProjectRequested {
                owner_id,
                name,
                template,
                template_version,
                parameters,
                steps,
                monthly_cost_cents,
            } => {
                self.owner_id = *owner_id;
                self.monthly_cost_cents = *monthly_cost_cents;
                self.name.clone_from(name);
                self.template.clone_from(template);
                self.template_version = *template_version;
                self.parameters.clone_from(parameters);
                self.status = ProjectStatus::Requested;
                self.steps = steps
                    .iter()
                    .map(|spec| StepState {
                        name: spec.name.clone(),
                        driver: spec.driver,
                        status: StepStatus::Pending,
                        attempts: 0,
                        last_error: None,
                        started_at: None,
                        finished_at: None,
                        output: serde_json::Value::Null,
                    })
                    .collect();
                self.failure = None;
                self.created_at = Some(at);
            }
            ProjectEvent::StepStarted { step, attempt } => {
                self.status = ProjectStatus::Provisioning;
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Running;
                    s.attempts = *attempt;
                    s.started_at = Some(at);
                    s.finished_at = None;
                }
            }
            ProjectEvent::StepSucceeded {
                step,
                attempt,
                output,
            } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Succeeded;
                    s.attempts = *attempt;
                    s.last_error = None;
                    s.finished_at = Some(at);
                    s.output.clone_from(output);
                }
            }
            ProjectEvent::StepFailed {
                step,
                attempt,
                error,
                ..
            } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Failed;
                    s.attempts = *attempt;
                    s.last_error = Some(error.clone());
                    s.finished_at = Some(at);
                }
            }
            ProjectEvent::StepSkipped { step, reason } => {
                self.status = ProjectStatus::Provisioning;
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Skipped;
                    s.finished_at = Some(at);
                    s.output = serde_json::json!({ "reason": reason });
                }
            }
            ProjectEvent::ProjectReady => self.status = ProjectStatus::Ready,
            ProjectEvent::ProjectFailed { reason, .. } => {
                self.status = ProjectStatus::Failed;
                self.failure = Some(reason.clone());
            }
            ProjectEvent::RetryRequested => {
                self.status = ProjectStatus::Provisioning;
                self.failure = None;
                // Succeeded and skipped steps stay as they are: provisioning resumes at the
                // failed step.
                for s in &mut self.steps {
                    if matches!(s.status, StepStatus::Failed | StepStatus::Running) {
                        s.status = StepStatus::Pending;
                        s.attempts = 0;
                        s.started_at = None;
                        s.finished_at = None;
                    }
                }
            }
            ProjectEvent::DeletionRequested => {
                self.status = ProjectStatus::Deleting;
                self.failure = None;
                // Deletion is a new round of attempts for every step still to undo.
                for s in &mut self.steps {
                    s.attempts = 0;
                }
            }
            ProjectEvent::StepDeprovisioned { step } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Deprovisioned;
                    s.last_error = None;
                    s.finished_at = Some(at);
                }
            }
            ProjectEvent::DeprovisionFailed {
                step,
                attempt,
                error,
                ..
            } => {
                // The step keeps its status: its resources are still there.
                if let Some(s) = self.step_mut(step) {
                    s.attempts = *attempt;
                    s.last_error = Some(error.clone());
                }
            }
            ProjectEvent::ProjectDeleted => self.status = ProjectStatus::Deleted,
            ProjectEvent::CredentialsIssued { step } => {
                self.credentials_issued.insert(step.clone());
            }
            ProjectEvent::DatabasePasswordRotated { step, key_id } => {
                if let Some(s) = self.step_mut(step)
                    && let Some(output) = s.output.as_object_mut()
                {
                    output.insert(
                        PASSWORD_KEY_ID.to_owned(),
                        serde_json::Value::String(key_id.clone()),
                    );
                }
                // A new password, never handed out yet.
                self.credentials_issued.remove(step);
            }
            ProjectEvent::DeletionFailed { reason, .. } => {
                self.status = ProjectStatus::DeletionFailed;
                self.failure = Some(reason.clone());
            }
        }
    }

    /// True once the stream has its first event.
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.name == name)
    }

    fn step_mut(&mut self, name: &str) -> Option<&mut StepState> {
        self.steps.iter_mut().find(|s| s.name == name)
    }
}

/// Why a decision refused a command (the caller's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    /// The template, or the parameters given to it, are not acceptable.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The command does not fit the project's status.
    #[error("cannot {action} while the project's status is {status}")]
    WrongState {
        /// The project's status.
        status: ProjectStatus,
        /// What was attempted, e.g. `retry`.
        action: &'static str,
    },
    /// The project has no step of that name.
    #[error("the project has no step {0:?}")]
    UnknownStep(String),
    /// Steps run (and are undone) in order; this one's turn has not come, or is over.
    #[error("step {0:?} is not the next step")]
    NotNextStep(String),
    /// An outcome was reported for a step that is not running.
    #[error("step {0:?} is not running")]
    StepNotRunning(String),
    /// Deletion was asked for again.
    #[error("the project is already deleted or being deleted")]
    AlreadyDeleted,
    /// Deletion was asked for while provisioning is still under way.
    #[error("the project is still being provisioned; delete it once it is ready or failed")]
    Busy,
    /// Deletion cannot finish while a step still has resources.
    #[error("step {0:?} still has to be deprovisioned")]
    DeprovisionPending(String),
    /// A login is handed out once only.
    #[error("the database credentials were already handed out")]
    CredentialsAlreadyIssued,
}

/// A new project `name` from `template` with the `parameters` the requester gave.
pub fn request(
    owner_id: Uuid,
    name: &ProjectName,
    template: &Template,
    parameters: BTreeMap<String, String>,
) -> Result<Vec<ProjectEvent>, ProjectError> {
    template.validate()?;
    let parameters = template.resolve(&parameters)?;
    Ok(vec![ProjectEvent::ProjectRequested {
        owner_id,
        name: name.as_str().to_owned(),
        template: template.name.clone(),
        template_version: template.version,
        parameters,
        steps: template.steps.clone(),
        monthly_cost_cents: template.monthly_cost_cents,
    }])
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The step provisioning is at: the first that has neither succeeded nor been skipped, while the
/// project is being provisioned.
pub fn next_step(project: &Project) -> Option<&StepState> {
    if !is_provisioning(project) {
        return None;
    }
    project
        .steps
        .iter()
        .find(|s| !matches!(s.status, StepStatus::Succeeded | StepStatus::Skipped))
}

/// Begins the next attempt at `step`, which must be the next step.
pub fn start_step(project: &Project, step: &str) -> Result<Vec<ProjectEvent>, ProjectError> {
    let state = the_next_step(project, step, "start a step")?;
    Ok(vec![ProjectEvent::StepStarted {
        step: step.to_owned(),
        attempt: state.attempts.saturating_add(1),
    }])
}

/// Records the success of the running `step`, and readiness if it was the last one to do.
pub fn step_succeeded(
    project: &Project,
    step: &str,
    output: serde_json::Value,
) -> Result<Vec<ProjectEvent>, ProjectError> {
    let state = running_step(project, step, "record a step's success")?;
    let mut events = vec![ProjectEvent::StepSucceeded {
        step: step.to_owned(),
        attempt: state.attempts,
        output,
    }];
    if is_last_to_do(project, step) {
        events.push(ProjectEvent::ProjectReady);
    }
    Ok(events)
}

/// Records the failure of the running `step`; provisioning fails with it if the error is
/// permanent or this was the `last_attempt`, and then no retry time is recorded.
pub fn step_failed(
    project: &Project,
    step: &str,
    error: &str,
    permanent: bool,
    retry_in_ms: Option<u64>,
    last_attempt: bool,
) -> Result<Vec<ProjectEvent>, ProjectError> {
    let state = running_step(project, step, "record a step's failure")?;
    let gives_up = permanent || last_attempt;
    let mut events = vec![ProjectEvent::StepFailed {
        step: step.to_owned(),
        attempt: state.attempts,
        error: error.to_owned(),
        permanent,
        retry_in_ms: if gives_up { None } else { retry_in_ms },
    }];
    if gives_up {
        events.push(ProjectEvent::ProjectFailed {
            step: step.to_owned(),
            reason: failure_reason(error, permanent, state.attempts),
        });
    }
    Ok(events)
}

/// Passes over `step`, which must be the next step, and records readiness if it was the last.
pub fn skip_step(
    project: &Project,
    step: &str,
    reason: &str,
) -> Result<Vec<ProjectEvent>, ProjectError> {
    the_next_step(project, step, "skip a step")?;
    let mut events = vec![ProjectEvent::StepSkipped {
        step: step.to_owned(),
        reason: reason.to_owned(),
    }];
    if is_last_to_do(project, step) {
        events.push(ProjectEvent::ProjectReady);
    }
    Ok(events)
}

/// Resumes a failed provisioning at the failed step.
pub fn retry(project: &Project) -> Result<Vec<ProjectEvent>, ProjectError> {
    match project.status {
        ProjectStatus::Failed => Ok(vec![ProjectEvent::RetryRequested]),
        status => Err(ProjectError::WrongState {
            status,
            action: "retry",
        }),
    }
}

/// Starts deleting a project that is ready, failed, or whose deletion failed before.
pub fn delete(project: &Project) -> Result<Vec<ProjectEvent>, ProjectError> {
    match project.status {
        ProjectStatus::Ready | ProjectStatus::Failed | ProjectStatus::DeletionFailed => {
            Ok(vec![ProjectEvent::DeletionRequested])
        }
        ProjectStatus::Deleting | ProjectStatus::Deleted => Err(ProjectError::AlreadyDeleted),
        ProjectStatus::Requested | ProjectStatus::Provisioning => Err(ProjectError::Busy),
    }
}

/// The steps whose resources exist, in the order they are undone (reverse of provisioning).
pub fn steps_to_deprovision(project: &Project) -> Vec<&StepState> {
    project
        .steps
        .iter()
        .rev()
        // A failed step may have left part of its resources behind; drivers remove whatever
        // exists, so it is undone too.
        .filter(|s| matches!(s.status, StepStatus::Succeeded | StepStatus::Failed))
        .collect()
}

/// Records that `step`'s resources were removed, and the deletion if it was the last.
pub fn deprovisioned(project: &Project, step: &str) -> Result<Vec<ProjectEvent>, ProjectError> {
    the_next_to_deprovision(project, step, "record a deprovisioned step")?;
    let mut events = vec![ProjectEvent::StepDeprovisioned {
        step: step.to_owned(),
    }];
    if steps_to_deprovision(project).len() == 1 {
        events.push(ProjectEvent::ProjectDeleted);
    }
    Ok(events)
}

/// Records a failed attempt at removing `step`'s resources; deletion fails with it if the error
/// is permanent or this was the `last_attempt`, and then no retry time is recorded.
pub fn deprovision_failed(
    project: &Project,
    step: &str,
    error: &str,
    permanent: bool,
    retry_in_ms: Option<u64>,
    last_attempt: bool,
) -> Result<Vec<ProjectEvent>, ProjectError> {
    let state = the_next_to_deprovision(project, step, "record a failed deprovisioning")?;
    let attempt = state.attempts.saturating_add(1);
    let gives_up = permanent || last_attempt;
    let mut events = vec![ProjectEvent::DeprovisionFailed {
        step: step.to_owned(),
        attempt,
        error: error.to_owned(),
        permanent,
        retry_in_ms: if gives_up { None } else { retry_in_ms },
    }];
    if gives_up {
        events.push(ProjectEvent::DeletionFailed {
            step: step.to_owned(),
            reason: failure_reason(error, permanent, attempt),
        });
    }
    Ok(events)
}

/// Hands out the login made by `step` (a succeeded database step), once.
pub fn issue_credentials(project: &Project, step: &str) -> Result<Vec<ProjectEvent>, ProjectError> {
    let state = project
        .step(step)
        .ok_or(ProjectError::UnknownStep(step.to_owned()))?;
    if state.driver != DriverKind::Database || state.status != StepStatus::Succeeded {
        return Err(ProjectError::WrongState {
            status: project.status,
            action: "hand out database credentials",
        });
    }
    if project.credentials_issued.contains(step) {
        return Err(ProjectError::CredentialsAlreadyIssued);
    }
    Ok(vec![ProjectEvent::CredentialsIssued {
        step: step.to_owned(),
    }])
}

/// Records that the login of `step` (a succeeded database step) now has the password derived
/// with key `key_id`; nothing when the step records that key already. Refused while the project
/// is being deleted or is deleted, as its login is going or gone.
pub fn rotate_database_password(
    project: &Project,
    step: &str,
    key_id: &str,
) -> Result<Vec<ProjectEvent>, ProjectError> {
    let state = project
        .step(step)
        .ok_or(ProjectError::UnknownStep(step.to_owned()))?;
    let deleting = matches!(
        project.status,
        ProjectStatus::Deleting | ProjectStatus::Deleted
    );
    if deleting || state.driver != DriverKind::Database || state.status != StepStatus::Succeeded {
        return Err(ProjectError::WrongState {
            status: project.status,
            action: "rotate the database password",
        });
    }
    if password_key_id(&state.output) == Some(key_id) {
        return Ok(Vec::new());
    }
    Ok(vec![ProjectEvent::DatabasePasswordRotated {
        step: step.to_owned(),
        key_id: key_id.to_owned(),
    }])
}

/// Completes a deletion with nothing (left) to undo, e.g. of a project whose first step failed.
pub fn finish_deletion(project: &Project) -> Result<Vec<ProjectEvent>, ProjectError> {
    if project.status != ProjectStatus::Deleting {
        return Err(ProjectError::WrongState {
            status: project.status,
            action: "finish deletion",
        });
    }
    match steps_to_deprovision(project).first() {
        Some(pending) => Err(ProjectError::DeprovisionPending(pending.name.clone())),
        None => Ok(vec![ProjectEvent::ProjectDeleted]),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod credential_tests;
