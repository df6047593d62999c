//! The `projects` table, an inline projection: whoever appends to a project's stream (the API
//! for requests, retries and deletions; the worker for step outcomes) saves the folded project
//! in the same transaction, so listing and filtering never lag behind a write that returned.

use sqlx::PgConnection;

use super::project::Project;

/// The reservation scope that keeps project names unique per owner.
pub const NAME_SCOPE: &str = "project-name";

/// The reserved value for `owner`'s project `name`.
pub fn name_claim(owner_id: uuid::Uuid, name: &str) -> String {
    format!("{owner_id}/{name}")
}

/// Saves `project` as folded at its version; an older version never overwrites a newer one.
pub async fn save(conn: &mut PgConnection, project: &Project) -> Result<(), sqlx::Error> {
    let state = serde_json::to_value(project).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let created_at = project.created_at.unwrap_or_else(chrono::Utc::now);
    sqlx::query(
        "insert into projects
             (project_id, owner_id, name, template, status, version, created_at, updated_at, state)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
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
    .execute(conn)
    .await?;
    Ok(())
}
