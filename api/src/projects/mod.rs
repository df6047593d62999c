//! Projects in the API: who may see a project, and appending the decisions on it to its stream
//! together with the inline `projects` table, in one transaction.
//!
//! The decisions themselves are pure and live in `idp_events::project`; the worker performs the
//! provisioning ones, the API those of the owner (request, retry, delete, credentials).

pub mod idempotency;
pub mod live;

use idp_events::project::read_model::{self, NAME_SCOPE, name_claim};
use idp_events::project::{Project, ProjectEvent, stream_id};
use idp_events::{Append, AppendError, ExpectedVersion, Metadata, RecordedEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::AuthUser;
use crate::startup::AppState;

/// Whether `user` is an administrator now. The token's roles only rule the check out cheaply;
/// the account's current state decides, so a revoked role takes effect at once.
pub async fn is_admin(state: &AppState, user: &AuthUser) -> Result<bool, ApiError> {
    use idp_events::identity::user::ROLE_ADMIN;
    if !user.roles.iter().any(|r| r == ROLE_ADMIN) {
        return Ok(false);
    }
    Ok(state
        .identity
        .load_user(user.user_id)
        .await?
        .has_role(ROLE_ADMIN))
}

/// A project with the events it was folded from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The project.
    pub project: Project,
    /// Its stream.
    pub history: Vec<RecordedEvent>,
}

/// Project `id` as folded from its stream, if `user` owns it or is an administrator; 404
/// otherwise, the same as for a project that does not exist, so ids cannot be probed.
pub async fn load_visible(state: &AppState, user: &AuthUser, id: Uuid) -> Result<Loaded, ApiError> {
    let loaded = load(state, id).await?;
    if loaded.project.owner_id != user.user_id && !is_admin(state, user).await? {
        return Err(ApiError::NotFound);
    }
    Ok(loaded)
}

/// Project `id` as folded from its stream; 404 if it has none.
pub async fn load(state: &AppState, id: Uuid) -> Result<Loaded, ApiError> {
    let history = state.store.read_stream(&stream_id(id), 1).await?;
    let project = Project::fold(id, &history);
    if !project.exists() {
        return Err(ApiError::NotFound);
    }
    Ok(Loaded { project, history })
}

/// Appends `events`, decided on `project` as folded, to its stream at the version it was folded
/// at (a new stream for version 0, claiming the owner's name for a `ProjectRequested`), and
/// saves the project as it now is in the `projects` table, both in `tx`. A concurrent change
/// or a name the owner already uses is a 409.
pub async fn record(
    state: &AppState,
    tx: &mut PgConnection,
    project: &Project,
    events: &[ProjectEvent],
    metadata: Metadata,
) -> Result<Project, ApiError> {
    let expected = match project.version {
        0 => ExpectedVersion::NoStream,
        version => ExpectedVersion::Exact(version),
    };
    let mut append = Append::to(stream_id(project.id))
        .expecting(expected)
        .events(events.iter().map(ProjectEvent::to_new_event))
        .metadata(metadata);
    let mut requested_name = None;
    for event in events {
        if let ProjectEvent::ProjectRequested { owner_id, name, .. } = event {
            append = append.claim(NAME_SCOPE, name_claim(*owner_id, name));
            requested_name = Some(name.clone());
        }
    }
    let outcome = match state.store.append_in(&mut *tx, append).await {
        Ok(outcome) => outcome,
        Err(AppendError::ReservationTaken { .. }) => {
            return Err(ApiError::Conflict(format!(
                "you already have a project named {:?}",
                requested_name.unwrap_or_default()
            )));
        }
        Err(AppendError::Conflict { .. }) => {
            return Err(ApiError::Conflict(
                "the project changed meanwhile; look again".into(),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    // The events' own time, so the table agrees with a fold of the stream.
    let recorded_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select recorded_at from events where position = $1")
            .bind(outcome.positions.last().copied().unwrap_or_default())
            .fetch_one(&mut *tx)
            .await?;
    let mut next = project.clone();
    for event in events {
        next.apply(event, recorded_at);
    }
    next.version = u64::try_from(outcome.stream_version).unwrap_or_default();
    read_model::save(&mut *tx, &next).await?;
    Ok(next)
}
