//! What a decision checks before it decides: the project's state and which step is next.

use super::{
    Project, ProjectError, ProjectStatus, StepState, StepStatus, next_step, steps_to_deprovision,
};

pub(super) fn is_provisioning(project: &Project) -> bool {
    matches!(
        project.status,
        ProjectStatus::Requested | ProjectStatus::Provisioning
    )
}

/// `step`, if the project is being provisioned and `step` is its next step.
pub(super) fn the_next_step<'a>(
    project: &'a Project,
    step: &str,
    action: &'static str,
) -> Result<&'a StepState, ProjectError> {
    if !is_provisioning(project) {
        return Err(ProjectError::WrongState {
            status: project.status,
            action,
        });
    }
    let state = project
        .step(step)
        .ok_or_else(|| ProjectError::UnknownStep(step.to_owned()))?;
    match next_step(project) {
        Some(next) if next.name == step => Ok(state),
        _ => Err(ProjectError::NotNextStep(step.to_owned())),
    }
}

/// `step`, if it is the next step and an attempt at it is under way.
pub(super) fn running_step<'a>(
    project: &'a Project,
    step: &str,
    action: &'static str,
) -> Result<&'a StepState, ProjectError> {
    let state = the_next_step(project, step, action)?;
    if state.status != StepStatus::Running {
        return Err(ProjectError::StepNotRunning(step.to_owned()));
    }
    Ok(state)
}

/// True if every step but `step` has succeeded or been skipped.
pub(super) fn is_last_to_do(project: &Project, step: &str) -> bool {
    project
        .steps
        .iter()
        .filter(|s| s.name != step)
        .all(|s| matches!(s.status, StepStatus::Succeeded | StepStatus::Skipped))
}

/// `step`, if the project is being deleted and `step` is the next to undo.
pub(super) fn the_next_to_deprovision<'a>(
    project: &'a Project,
    step: &str,
    action: &'static str,
) -> Result<&'a StepState, ProjectError> {
    if project.status != ProjectStatus::Deleting {
        return Err(ProjectError::WrongState {
            status: project.status,
            action,
        });
    }
    let state = project
        .step(step)
        .ok_or_else(|| ProjectError::UnknownStep(step.to_owned()))?;
    match steps_to_deprovision(project).first() {
        Some(next) if next.name == step => Ok(state),
        _ => Err(ProjectError::NotNextStep(step.to_owned())),
    }
}

pub(super) fn failure_reason(error: &str, permanent: bool, attempts: u32) -> String {
    if permanent {
        error.to_owned()
    } else {
        format!("{error} (gave up after {attempts} attempts)")
    }
}
