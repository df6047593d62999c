//! Projects in the API: who may see a project, and appending the decisions on it to its stream
//! together with the inline `projects` table, in one transaction.
//!
//! The decisions themselves are pure and live in `idp_events::project`; the worker performs the
//! provisioning ones, the API those of the owner (request, retry, delete, credentials).

pub mod idempotency;
pub mod live;

use idp_events::StreamId;
use idp_events::project::read_model;
use idp_events::project::{Project, ProjectEvent};
use idp_events::{AppendError, Metadata, RecordedEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::auth::permissions::{Permission, granted};
use crate::error::ApiError;
use crate::extract::AuthUser;
use crate::startup::AppState;

/// A project with the events it was folded from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The project.
    pub project: Project,
    /// Its stream.
    pub history: Vec<RecordedEvent>,
}

/// Project `id` as folded from its stream, if `user` owns it or may read other people's
/// projects (`read_projects_of_others`); 404 otherwise, the same as for a project that does not
/// exist, so ids cannot be probed.
pub async fn load_visible(state: &AppState, user: &AuthUser, id: Uuid) -> Result<Loaded, ApiError> {
    load_checked(state, user, id, false).await
}

/// Project `id`, as [`load_visible`], for a change: 403 for someone else's project that the
/// caller may read but not change (`manage_projects_of_others`).
pub async fn load_changeable(
    state: &AppState,
    user: &AuthUser,
    id: Uuid,
) -> Result<Loaded, ApiError> {
    load_checked(state, user, id, true).await
}

/// Project `id` for `user` (to read, or to `change`): the account's current roles are read
/// once, and only for someone else's project.
async fn load_checked(
    state: &AppState,
    user: &AuthUser,
    id: Uuid,
    change: bool,
) -> Result<Loaded, ApiError> {
    let loaded = load(state, id).await?;
    if loaded.project.owner_id == user.user_id {
        return Ok(loaded);
    }
    let roles = user.current_roles(state).await?;
    // An API key reaches other people's projects only with the scope of those permissions.
    let reads = user.may_with_key(Permission::ReadProjectsOfOthers);
    if !reads || !granted(&roles, Permission::ReadProjectsOfOthers) {
        return Err(ApiError::NotFound);
    }
    if change
        && (!user.may_with_key(Permission::ManageProjectsOfOthers)
            || !granted(&roles, Permission::ManageProjectsOfOthers))
    {
        return Err(ApiError::Forbidden);
    }
    Ok(loaded)
}

/// Project `id` as folded from its stream; 404 if it has none.
pub async fn load(state: &AppState, id: Uuid) -> Result<Loaded, ApiError> {
    let history = state
        .store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await?;
    let project = Project::fold(id, &history);
    if !project.exists() {
        return Err(ApiError::NotFound);
    }
    Ok(Loaded { project, history })
}

/// Records `events`, decided on `project` as folded, with the `projects` table, in `tx`
/// ([`read_model::record`]). A concurrent change or a name the owner already uses is a 409.
pub async fn record(
    state: &AppState,
    tx: &mut PgConnection,
    project: &Project,
    events: &[ProjectEvent],
    metadata: Metadata,
) -> Result<Project, ApiError> {
    match read_model::record(&state.store, tx, project, events, metadata).await {
        Ok(next) => Ok(next),
        Err(AppendError::ReservationTaken { .. }) => {
            let name = events.iter().find_map(|e| match e {
                ProjectEvent::ProjectRequested { name, .. } => Some(name.as_str()),
                _ => None,
            });
            Err(ApiError::Conflict(format!(
                "you already have a project named {:?}",
                name.unwrap_or_default()
            )))
        }
        Err(AppendError::Conflict { .. }) => Err(ApiError::Conflict(
            "the project changed meanwhile; look again".into(),
        )),
        Err(err) => Err(err.into()),
    }
}
