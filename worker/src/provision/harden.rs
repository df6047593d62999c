//! `idp-worker harden-databases`: the isolation of `database` steps applied to every project
//! database provisioned so far, and, on request, a rotation of their passwords to the current
//! key of `PROJECT_DATABASE_KEYS`.
//!
//! Projects come from the `projects` table; each one's stream is folded to find its database
//! step. A project whose database step succeeded or failed (a failed one may have left its role
//! and database) is hardened through [`DatabaseDriver::harden`]; one being deleted is left to
//! its deletion. A rotation sets the password first and then records `DatabasePasswordRotated`
//! with the key's id, so the log never names a key whose password the login does not have; a
//! run cut in between leaves the old key recorded, and running the command again sets the
//! password again and records it.

use idp_events::StreamId;
use idp_events::project::project::{self as decide, Project, ProjectStatus};
use idp_events::project::{
    DriverKind, RecordedPasswordError, StepStatus, read_model, recorded_database_password,
};
use idp_events::{AppendError, EventStore, Metadata};
use uuid::Uuid;

use super::drivers::database::{DatabaseDriver, Hardened, Password, database_name};

/// Appends that lose a race with another writer to a project's stream before giving up.
const RECORD_ROUNDS: usize = 5;

/// What happened to one project's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseReport {
    /// The project.
    pub project_id: Uuid,
    /// Its name.
    pub project_name: String,
    /// Its database (and role).
    pub database: String,
    /// The outcome.
    pub outcome: Outcome,
}

/// The outcome for one project's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Isolated; `rotated_to` names the key of the new password when it was rotated.
    Hardened {
        /// The key now recorded for the login, when this run rotated it.
        rotated_to: Option<String>,
        /// Why the owner cannot be handed the current password, when they cannot (a login set
        /// up before key ids were recorded, or a key no longer in the ring): a rotation fixes it.
        needs_rotation: Option<RecordedPasswordError>,
    },
    /// The server has neither the role nor the database: nothing to harden.
    Missing,
    /// The driver or the log refused; the reason.
    Failed(String),
}

/// Counts of a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Databases isolated.
    pub hardened: usize,
    /// Of those, passwords rotated.
    pub rotated: usize,
    /// Projects whose role or database the server does not have.
    pub missing: usize,
    /// Databases that could not be hardened or whose rotation could not be recorded.
    pub failed: usize,
}

/// The command could not list the projects.
#[derive(Debug, thiserror::Error)]
#[error("listing the projects failed: {0}")]
pub struct HardenError(#[from] sqlx::Error);

/// Hardens every provisioned project database, oldest project first, with `password` deciding
/// whether logins get the current key's password; `progress` sees each database's report as it
/// is done. Failures of one database do not stop the others; they are counted.
pub async fn harden_databases(
    store: &EventStore,
    driver: &DatabaseDriver,
    password: Password,
    mut progress: impl FnMut(&DatabaseReport),
) -> Result<Summary, HardenError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "select project_id from projects where status <> 'deleted'
          order by created_at, project_id",
    )
    .fetch_all(store.pool())
    .await?;
    let mut summary = Summary::default();
    for id in ids {
        let Some(report) = harden_project(store, driver, id, password).await else {
            continue;
        };
        match &report.outcome {
            Outcome::Hardened { rotated_to, .. } => {
                summary.hardened += 1;
                summary.rotated += usize::from(rotated_to.is_some());
            }
            Outcome::Missing => summary.missing += 1,
            Outcome::Failed(_) => summary.failed += 1,
        }
        progress(&report);
    }
    Ok(summary)
}

/// Hardens project `id`'s database; `None` when it has none to harden.
async fn harden_project(
    store: &EventStore,
    driver: &DatabaseDriver,
    id: Uuid,
    password: Password,
) -> Option<DatabaseReport> {
    let project = match fold(store, id).await {
        Ok(project) => project,
        Err(e) => return Some(report_failed(id, "", &e.to_string())),
    };
    if matches!(
        project.status,
        ProjectStatus::Deleting | ProjectStatus::Deleted
    ) {
        return None;
    }
    let database_steps: Vec<_> = project
        .steps
        .iter()
        .filter(|s| s.driver == DriverKind::Database)
        .filter(|s| matches!(s.status, StepStatus::Succeeded | StepStatus::Failed))
        .collect();
    if database_steps.is_empty() {
        return None;
    }
    // Only a login the log says was set up can be handed a recorded key.
    let has_login = database_steps
        .iter()
        .any(|s| s.status == StepStatus::Succeeded);
    let password = if has_login { password } else { Password::Keep };
    let report = |outcome| DatabaseReport {
        project_id: id,
        project_name: project.name.clone(),
        database: database_name(id),
        outcome,
    };
    let hardened = match driver.harden(id, password).await {
        Ok(hardened) => hardened,
        Err(e) => return Some(report(Outcome::Failed(e.to_string()))),
    };
    let rotated_to = match hardened {
        Hardened::Missing => return Some(report(Outcome::Missing)),
        Hardened::Done { password_key_id } => password_key_id,
    };
    let project = match &rotated_to {
        Some(key_id) => match record_rotation(store, project.clone(), key_id).await {
            Ok(project) => project,
            Err(e) => return Some(report(Outcome::Failed(e))),
        },
        None => project.clone(),
    };
    let needs_rotation = project
        .steps
        .iter()
        .filter(|s| s.driver == DriverKind::Database && s.status == StepStatus::Succeeded)
        .find_map(|s| recorded_database_password(driver.keys(), id, &s.output).err());
    Some(report(Outcome::Hardened {
        rotated_to,
        needs_rotation,
    }))
}

/// Records that the project's succeeded database steps now have `key_id`'s password, folding
/// again when another writer appended first. Returns the project as recorded.
async fn record_rotation(
    store: &EventStore,
    mut project: Project,
    key_id: &str,
) -> Result<Project, String> {
    let metadata = Metadata::actor("operator");
    for _ in 0..RECORD_ROUNDS {
        let steps: Vec<String> = project
            .steps
            .iter()
            .filter(|s| s.driver == DriverKind::Database && s.status == StepStatus::Succeeded)
            .map(|s| s.name.clone())
            .collect();
        let mut events = Vec::new();
        for step in &steps {
            events.extend(
                decide::rotate_database_password(&project, step, key_id)
                    .map_err(|e| format!("recording the rotation: {e}"))?,
            );
        }
        if events.is_empty() {
            return Ok(project);
        }
        let recorded = async {
            let mut tx = store.pool().begin().await.map_err(AppendError::Database)?;
            let next =
                read_model::record(store, &mut tx, &project, &events, metadata.clone()).await?;
            tx.commit().await.map_err(AppendError::Database)?;
            Ok::<_, AppendError>(next)
        };
        match recorded.await {
            Ok(next) => return Ok(next),
            Err(AppendError::Conflict { .. }) => {
                project = fold(store, project.id)
                    .await
                    .map_err(|e| format!("recording the rotation: {e}"))?;
            }
            Err(e) => return Err(format!("recording the rotation failed: {e}")),
        }
    }
    Err(format!(
        "recording the rotation lost {RECORD_ROUNDS} races with other writers; run the command again"
    ))
}

async fn fold(store: &EventStore, id: Uuid) -> Result<Project, idp_events::ReadError> {
    let history = store.read_stream(StreamId::project(id).as_str(), 1).await?;
    Ok(Project::fold(id, &history))
}

fn report_failed(id: Uuid, name: &str, reason: &str) -> DatabaseReport {
    DatabaseReport {
        project_id: id,
        project_name: name.to_owned(),
        database: database_name(id),
        outcome: Outcome::Failed(reason.to_owned()),
    }
}
