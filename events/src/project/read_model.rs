//! The `projects` table, an inline projection: whoever appends to a project's stream (the API
//! for requests, retries and deletions; the worker for step outcomes) saves the folded project
//! in the same transaction, so listing and filtering never lag behind a write that returned.

use sqlx::PgConnection;

use super::project::{Project, ProjectEvent};
use crate::{Append, AppendError, EventStore, ExpectedVersion, Metadata, StreamId};

/// The reservation scope that keeps project names unique per owner.
pub const NAME_SCOPE: &str = "project-name";

/// The reserved value for `owner`'s project `name`.
pub fn name_claim(owner_id: uuid::Uuid, name: &str) -> String {
    format!("{owner_id}/{name}")
}

/// Appends `events`, decided on `project` as folded, to its stream at the version it was folded
/// at (a new stream at version 0), claiming the owner's name with a `ProjectRequested` and
/// releasing it with `ProjectDeleted`, and saves the project as it now is: both on `conn`, which
/// the caller runs in a transaction. Returns the project after the events.
pub async fn record(
    store: &EventStore,
    conn: &mut PgConnection,
    project: &Project,
    events: &[ProjectEvent],
    metadata: Metadata,
) -> Result<Project, AppendError> {
    let expected = match project.version {
        0 => ExpectedVersion::NoStream,
        version => ExpectedVersion::Exact(version),
    };
    let mut append = Append::to(StreamId::project(project.id))
        .expecting(expected)
        .events(events.iter().map(ProjectEvent::to_new_event))
        .metadata(metadata);
    for event in events {
        match event {
            ProjectEvent::ProjectRequested { owner_id, name, .. } => {
                append = append.claim(NAME_SCOPE, name_claim(*owner_id, name));
            }
            ProjectEvent::ProjectDeleted => {
                append = append.release(NAME_SCOPE, name_claim(project.owner_id, &project.name));
            }
            _ => {}
        }
    }
    let outcome = store.append_in(&mut *conn, append).await?;
    let mut next = project.clone();
    for event in events {
        // The events' own time, so the table agrees with a fold of the stream.
        next.apply(event, outcome.recorded_at);
    }
    next.version = u64::try_from(outcome.stream_version).unwrap_or_default();
    save(conn, &next).await.map_err(AppendError::Database)?;
    Ok(next)
}

/// Saves `project` as folded at its version; an older version never overwrites a newer one.
pub async fn save(conn: &mut PgConnection, project: &Project) -> Result<(), sqlx::Error> {
    let state = serde_json::to_value(project).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let created_at = project.created_at.unwrap_or_else(chrono::Utc::now);
    sqlx::query(
        "insert into projects
             (project_id, owner_id, name, template, status, version, created_at, updated_at, state,
              monthly_cost_cents)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict (project_id) do update
            set status = excluded.status, version = excluded.version,
                updated_at = excluded.updated_at, state = excluded.state
          where projects.version < excluded.version",
    )
    .bind(project.id)
    .bind(project.owner_id)
    .bind(&project.name)
    .bind(&project.template)
    .bind(project.status.as_str())
    .bind(i64::try_from(project.version).unwrap_or(i64::MAX))
    .bind(created_at)
    .bind(project.updated_at.unwrap_or(created_at))
    .bind(state)
    .bind(i64::try_from(project.monthly_cost_cents).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}
