//! `/v1/projects/*`: requesting a project from a template, listing and reading projects,
//! retrying a failed provisioning, deleting, handing out the database login once, and following
//! a project's events live (Server-Sent Events).
//!
//! Owners see their own projects, administrators everyone's; anyone else gets 404, as for a
//! project that does not exist. Writes append to the project's stream and save the `projects`
//! table in the same transaction; the worker does the provisioning.

use idp_events::StreamId;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use idp_events::RecordedEvent;
use idp_events::project::project::{self as decide, ProjectError};
use idp_events::project::{
    DriverKind, Project, ProjectName, ProjectStatus, StepStatus, recorded_database_password,
};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::paging;
use crate::auth::permissions::Permission;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, AuthUser, ClientContext, PathParam};
use crate::projects;
use crate::projects::idempotency::{self, Claim, IdempotencyKey, StoredResponse};
use crate::projects::live::Follower;
use crate::startup::AppState;

/// How often an idle event stream sends a comment, so proxies do not cut it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/projects", post(create_project).get(list_projects))
        .route("/v1/projects/{id}", get(get_project).delete(delete_project))
        .route("/v1/projects/{id}/retry", post(retry_project))
        .route("/v1/projects/{id}/credentials", post(issue_credentials))
        .route("/v1/projects/{id}/events", get(project_events))
}

/// A project id from the path; one that is not a UUID names no project (404).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(transparent)]
pub struct ProjectId(pub Uuid);

impl PathParam for ProjectId {
    const WHAT: &'static str = "a project id";

    fn refused(_key: &str) -> ApiError {
        ApiError::NotFound
    }
}

/// A project to provision. The document served by an instance lists its templates and, for
/// each, the parameters it takes (`oneOf`, one variant per template).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "billing-api", "template": "service", "parameters": {"language": "rust"}}))]
pub struct CreateProjectRequest {
    /// 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a letter and not ending with
    /// `-`; unique among the caller's projects.
    #[schema(pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// The template's name (see `GET /v1/templates`).
    pub template: String,
    /// Values of the template's parameters; those left out take their defaults.
    pub parameters: Option<BTreeMap<String, String>>,
}

/// What the request's `Idempotency-Key` is bound to: the parsed request, fields in a fixed
/// order and parameters sorted, so equal requests hash equally however they were written.
#[derive(Debug, Serialize)]
struct CanonicalRequest<'a> {
    name: &'a str,
    template: &'a str,
    parameters: &'a BTreeMap<String, String>,
}

/// Where to find a project.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"self": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "events": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d/events"}))]
pub struct ProjectLinks {
    /// The project (`GET`).
    #[serde(rename = "self")]
    #[schema(example = "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d")]
    pub self_: String,
    /// Its events, live (`GET`, `text/event-stream`).
    #[schema(example = "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d/events")]
    pub events: String,
}

impl ProjectLinks {
    fn of(id: Uuid) -> Self {
        Self {
            self_: format!("/v1/projects/{id}"),
            events: format!("/v1/projects/{id}/events"),
        }
    }
}

/// A request, retry or deletion was accepted; the worker carries it out.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "billing-api", "template": "service", "status": "requested",
                          "links": {"self": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "events": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d/events"}}))]
pub struct ProjectAccepted {
    /// The project.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its template.
    pub template: String,
    /// Its status now: `requested`, `provisioning` or `deleting`.
    #[schema(value_type = String, pattern = "^(requested|provisioning|deleting)$")]
    pub status: ProjectStatus,
    /// Where to follow it.
    pub links: ProjectLinks,
}

impl From<&Project> for ProjectAccepted {
    fn from(project: &Project) -> Self {
        Self {
            id: project.id,
            name: project.name.clone(),
            template: project.template.clone(),
            status: project.status,
            links: ProjectLinks::of(project.id),
        }
    }
}

/// `status` with the body, `Location` naming the project (from `links.self`), and
/// `Idempotent-Replayed: true` when the answer is a stored one.
fn accepted(status: StatusCode, body: serde_json::Value, replayed: bool) -> Response {
    let location = body["links"]["self"]
        .as_str()
        .and_then(|l| HeaderValue::from_str(l).ok());
    let mut response = (status, Json(body)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Requests a project: provisioning starts in the background; follow it at `links.events`.
///
/// With an `Idempotency-Key` (per caller), repeating the same request answers the same, once
/// only creating the project, even when the repeats run concurrently; the same key with another
/// request is refused.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", security(("bearer" = [])),
    request_body = CreateProjectRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", example = "billing-api-1",
            description = "1 to 255 visible ASCII characters, given once; the same key and request answer the same (per caller)")),
    responses((status = 202, description = "Accepted; provisioning runs in the background", body = ProjectAccepted,
               headers(("Location" = String, description = "The project, as `links.self`"),
                       ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same key"))),
              (status = 400, description = "Malformed JSON, or an Idempotency-Key that is not 1 to 255 visible ASCII characters or is given twice"),
              (status = 402, description = "The project would take the caller past their live-project quota or monthly spend cap (the problem names the limit, the usage and the cap); nothing was created"),
              (status = 409, description = "The caller already has a project of that name"),
              (status = 422, description = "Invalid name, unknown template, bad parameters, or an Idempotency-Key reused with another request")))]
#[tracing::instrument(name = "projects.create", skip_all, fields(user.id = %user.user_id))]
pub async fn create_project(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateProjectRequest>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(&headers)?;
    let parameters = body.parameters.unwrap_or_default();
    // One transaction for the key, the events and the stored response: a request that fails
    // leaves nothing behind, and a concurrent repeat waits on the key until this one is done.
    let mut tx = state.store.pool().begin().await?;
    if let Some(key) = &key {
        let hash = idempotency::request_hash(&CanonicalRequest {
            name: &body.name,
            template: &body.template,
            parameters: &parameters,
        })?;
        if let Claim::Replay(stored) = idempotency::claim(&mut tx, user.user_id, key, &hash).await?
        {
            tx.rollback().await?;
            return Ok(accepted(stored.status, stored.body, true));
        }
    }

    let name = ProjectName::parse(&body.name)
        .map_err(|e| ApiError::Unprocessable(format!("name: {e}")))?;
    let template = state.catalogue.get(&body.template).ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "template: there is no template {:?} (GET /v1/templates lists them)",
            body.template
        ))
    })?;
    let events = decide::request(user.user_id, &name, template, parameters)
        .map_err(|e| ApiError::Unprocessable(format!("parameters: {e}")))?;
    // The quotas are checked in this transaction, under the owner's lock: concurrent
    // requests of one owner cannot overshoot them.
    state
        .access
        .check_project_quota(&mut tx, user.user_id, template.monthly_cost_cents)
        .await?;
    let new = Project {
        id: Uuid::now_v7(),
        ..Project::default()
    };
    let project =
        projects::record(&state, &mut tx, &new, &events, ctx.metadata(user.actor())).await?;

    let body = serde_json::to_value(ProjectAccepted::from(&project))
        .map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(key) = &key {
        let response = StoredResponse {
            status: StatusCode::ACCEPTED,
            body: body.clone(),
        };
        idempotency::store(&mut tx, user.user_id, key, &response).await?;
    }
    tx.commit().await?;
    tracing::info!(project.id = %project.id, template = %project.template, "project requested");
    Ok(accepted(StatusCode::ACCEPTED, body, false))
}

/// A project in a list.
#[derive(Debug, Serialize, FromRow, ToSchema)]
#[schema(example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "owner_id": "0190f4c2-7b00-7c3b-9d2a-111111111111", "name": "billing-api", "template": "service",
                          "status": "ready", "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:05Z"}))]
pub struct ProjectSummary {
    /// The project.
    pub id: Uuid,
    /// Who requested it.
    pub owner_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its template.
    pub template: String,
    /// `requested`, `provisioning`, `ready`, `failed`, `deleting`, `deleted` or
    /// `deletion_failed`.
    #[schema(pattern = "^(requested|provisioning|ready|failed|deleting|deleted|deletion_failed)$")]
    pub status: String,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A page of projects, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"items": [{"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "owner_id": "0190f4c2-7b00-7c3b-9d2a-111111111111", "name": "billing-api", "template": "service",
                                     "status": "ready", "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:05Z"}],
                          "next_cursor": null}))]
pub struct ProjectPage {
    /// The projects.
    pub items: Vec<ProjectSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging and filtering of the project list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Projects per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (opaque: only cursors this API handed out).
    pub cursor: Option<String>,
    /// Only projects with this status: `requested`, `provisioning`, `ready`, `failed`,
    /// `deleting`, `deleted` or `deletion_failed`.
    #[param(pattern = "^(requested|provisioning|ready|failed|deleting|deleted|deletion_failed)$")]
    pub status: Option<String>,
}

fn parse_status(raw: &str) -> Result<ProjectStatus, ApiError> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).map_err(|_| {
        ApiError::BadRequest(format!(
            "status {raw:?} is not one of requested, provisioning, ready, failed, deleting, \
             deleted, deletion_failed"
        ))
    })
}

/// Lists the caller's projects (an administrator's: everyone's), newest first.
#[utoipa::path(get, path = "/v1/projects", tag = "projects", security(("bearer" = [])),
    params(ListParams),
    responses((status = 200, description = "A page of projects", body = ProjectPage),
              (status = 400, description = "Bad cursor, limit or status, or an unknown parameter")))]
#[tracing::instrument(name = "projects.list", skip_all, fields(user.id = %user.user_id))]
pub async fn list_projects(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ProjectPage>, ApiError> {
    let limit = paging::limit(params.limit)?;
    let status = params.status.as_deref().map(parse_status).transpose()?;
    let after = params
        .cursor
        .as_deref()
        .map(paging::decode_cursor)
        .transpose()?;
    let owner = if user.may(&state, Permission::ReadProjectsOfOthers).await? {
        None
    } else {
        Some(user.user_id)
    };
    // Only the conditions that apply, so each shape of the query gets its own plan: an owner's
    // list always walks `projects_owner_idx`, whatever a cached generic plan of an
    // `owner is null or ...` form would have chosen.
    let mut query = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "select project_id as id, owner_id, name, template, status, created_at, updated_at
           from projects where true",
    );
    if let Some(owner) = owner {
        query.push(" and owner_id = ").push_bind(owner);
    }
    if let Some(status) = status {
        query.push(" and status = ").push_bind(status.as_str());
    }
    if let Some((created_at, project_id)) = after {
        query
            .push(" and (created_at, project_id) < (")
            .push_bind(created_at)
            .push(", ")
            .push_bind(project_id)
            .push(")");
    }
    query
        .push(" order by created_at desc, project_id desc limit ")
        .push_bind(limit + 1);
    let mut items: Vec<ProjectSummary> =
        query.build_query_as().fetch_all(state.store.pool()).await?;
    let next_cursor = paging::finish_page(&mut items, limit, |last| (last.created_at, last.id));
    Ok(Json(ProjectPage { items, next_cursor }))
}

/// A provisioning step of a project.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepDetail {
    /// Its name.
    pub name: String,
    /// Its driver: `database`, `repository` or `webhook`.
    #[schema(example = "database")]
    pub driver: &'static str,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped` or `deprovisioned`.
    #[schema(value_type = String, pattern = "^(pending|running|succeeded|failed|skipped|deprovisioned)$")]
    pub status: StepStatus,
    /// Attempts in the current round (provisioning, a retry, or deletion).
    pub attempts: u32,
    /// The latest error, until the step next succeeds.
    pub last_error: Option<String>,
    /// When the latest attempt began.
    pub started_at: Option<DateTime<Utc>>,
    /// When the latest attempt ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The driver's non-secret output (database and role name and the id of the key that
    /// derived the login's password, repository path, webhook status), or `{"reason": ..}` for
    /// a skipped step; `null` before.
    #[schema(value_type = Option<Object>)]
    pub output: serde_json::Value,
}

/// A project with its steps, as its events tell.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "owner_id": "0190f4c2-7b00-7c3b-9d2a-111111111111", "name": "billing-api", "template": "service",
    "template_version": 1, "parameters": {"language": "rust"}, "status": "ready", "failure": null,
    "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:05Z",
    "steps": [{"name": "database", "driver": "database", "status": "succeeded", "attempts": 1, "last_error": null,
               "started_at": "2026-12-01T10:00:01Z", "finished_at": "2026-12-01T10:00:02Z",
               "output": {"database": "p_billing_api", "role": "p_billing_api", "host": "127.0.0.1", "port": 5432, "password_key_id": "2026-12-01T090000Z"}}]}))]
pub struct ProjectDetail {
    /// The project.
    pub id: Uuid,
    /// Who requested it.
    pub owner_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its template.
    pub template: String,
    /// The template's version when the project was requested.
    pub template_version: u32,
    /// Every parameter's value, defaults included.
    pub parameters: BTreeMap<String, String>,
    /// `requested`, `provisioning`, `ready`, `failed`, `deleting`, `deleted` or
    /// `deletion_failed`.
    #[schema(value_type = String, pattern = "^(requested|provisioning|ready|failed|deleting|deleted|deletion_failed)$")]
    pub status: ProjectStatus,
    /// Why provisioning or deletion failed, while it is failed.
    pub failure: Option<String>,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The steps, in provisioning order.
    pub steps: Vec<StepDetail>,
}

impl From<&Project> for ProjectDetail {
    fn from(project: &Project) -> Self {
        let created_at = project.created_at.unwrap_or_default();
        Self {
            id: project.id,
            owner_id: project.owner_id,
            name: project.name.clone(),
            template: project.template.clone(),
            template_version: project.template_version,
            parameters: project.parameters.clone(),
            status: project.status,
            failure: project.failure.clone(),
            created_at,
            updated_at: project.updated_at.unwrap_or(created_at),
            steps: project
                .steps
                .iter()
                .map(|s| StepDetail {
                    name: s.name.clone(),
                    driver: s.driver.as_str(),
                    status: s.status,
                    attempts: s.attempts,
                    last_error: s.last_error.clone(),
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    output: s.output.clone(),
                })
                .collect(),
        }
    }
}

/// Reads a project and its steps (folded from its events, so never behind).
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project")),
    responses((status = 200, description = "The project", body = ProjectDetail),
              (status = 404, description = "No such project, or not the caller's (also for an id that is not a UUID)")))]
#[tracing::instrument(name = "projects.get", skip_all, fields(project.id = %id))]
pub async fn get_project(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(ProjectId(id)): ApiPath<ProjectId>,
) -> Result<Json<ProjectDetail>, ApiError> {
    let loaded = projects::load_visible(&state, &user, id).await?;
    Ok(Json(ProjectDetail::from(&loaded.project)))
}

/// A decision refused because of the project's status: 409 with its reason.
fn refused(err: ProjectError) -> ApiError {
    ApiError::Conflict(err.to_string())
}

/// Appends a decision of the caller on project `id` and answers 202.
async fn act(
    state: &AppState,
    ctx: &ClientContext,
    user: &AuthUser,
    id: Uuid,
    decision: fn(&Project) -> Result<Vec<decide::ProjectEvent>, ProjectError>,
) -> Result<Response, ApiError> {
    let project = projects::load_changeable(state, user, id).await?.project;
    let events = decision(&project).map_err(refused)?;
    let mut tx = state.store.pool().begin().await?;
    let project = projects::record(
        state,
        &mut tx,
        &project,
        &events,
        ctx.metadata(user.actor()),
    )
    .await?;
    tx.commit().await?;
    let body = serde_json::to_value(ProjectAccepted::from(&project))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(accepted(StatusCode::ACCEPTED, body, false))
}

/// Resumes a failed provisioning at the step that failed; the steps that succeeded stay.
#[utoipa::path(post, path = "/v1/projects/{id}/retry", tag = "projects", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project")),
    responses((status = 202, description = "Provisioning resumes", body = ProjectAccepted,
               example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "billing-api", "template": "service", "status": "provisioning",
                                "links": {"self": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "events": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d/events"}})),
              (status = 403, description = "Someone else's project, which the caller may read but not change"),
              (status = 404, description = "No such project, or not the caller's (also for an id that is not a UUID)"),
              (status = 409, description = "The project has not failed, or changed meanwhile")))]
#[tracing::instrument(name = "projects.retry", skip_all, fields(project.id = %id))]
pub async fn retry_project(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(ProjectId(id)): ApiPath<ProjectId>,
) -> Result<Response, ApiError> {
    act(&state, &ctx, &user, id, decide::retry).await
}

/// Deletes a project: the steps that were provisioned are undone in reverse order.
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project")),
    responses((status = 202, description = "Deletion runs in the background", body = ProjectAccepted,
               example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "billing-api", "template": "service", "status": "deleting",
                                "links": {"self": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "events": "/v1/projects/0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d/events"}})),
              (status = 403, description = "Someone else's project, which the caller may read but not change"),
              (status = 404, description = "No such project, or not the caller's (also for an id that is not a UUID)"),
              (status = 409, description = "Still being provisioned, already deleted or being deleted, or changed meanwhile")))]
#[tracing::instrument(name = "projects.delete", skip_all, fields(project.id = %id))]
pub async fn delete_project(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(ProjectId(id)): ApiPath<ProjectId>,
) -> Result<Response, ApiError> {
    act(&state, &ctx, &user, id, decide::delete).await
}

/// The login to a project's database. Shown once: keep it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"database": "p_billing_api", "role": "p_billing_api", "host": "127.0.0.1", "port": 5432,
                          "password": "Zk3v9QmX0b7TqL2wYp4sN8rC"}))]
pub struct DatabaseCredentials {
    /// The database's name.
    pub database: String,
    /// The login role.
    pub role: String,
    /// The database server's host.
    pub host: String,
    /// The database server's port.
    pub port: u16,
    /// The role's password.
    pub password: String,
}

impl std::fmt::Debug for DatabaseCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseCredentials")
            .field("database", &self.database)
            .field("role", &self.role)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// Database, role, host and port from a database step's output.
fn login_of(output: &serde_json::Value) -> Option<(String, String, String, u16)> {
    let text = |key: &str| output.get(key)?.as_str().map(str::to_owned);
    let port = output.get("port").and_then(|p| {
        p.as_u64()
            .or_else(|| p.as_str()?.parse().ok())
            .and_then(|p| u16::try_from(p).ok())
    })?;
    Some((text("database")?, text("role")?, text("host")?, port))
}

/// Hands the owner the login to the project's database, once. Only the owner may have it, not
/// even an administrator: the password is never stored, and a second call is 410 Gone. After an
/// operator rotates the password (`idp-worker harden-databases --rotate-passwords`), the new one
/// may be fetched once.
#[utoipa::path(post, path = "/v1/projects/{id}/credentials", tag = "projects", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project")),
    responses((status = 200, description = "The login, shown once", body = DatabaseCredentials,
               headers(("Cache-Control" = String, description = "`no-store`"))),
              (status = 403, description = "Someone else's project: the login is only ever its owner's"),
              (status = 404, description = "No such project, or not the caller's (also for an id that is not a UUID)"),
              (status = 409, description = "No database step, or it has not succeeded, or its password must be rotated by an operator first (a login set up before password key ids were recorded, or whose key was removed)"),
              (status = 410, description = "Already handed out")))]
#[tracing::instrument(name = "projects.credentials", skip_all, fields(project.id = %id))]
pub async fn issue_credentials(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(ProjectId(id)): ApiPath<ProjectId>,
) -> Result<Response, ApiError> {
    let project = projects::load_visible(&state, &user, id).await?.project;
    if project.owner_id != user.user_id {
        // Visible to this caller, but the secret is the owner's.
        return Err(ApiError::Forbidden);
    }
    let step = project
        .steps
        .iter()
        .find(|s| s.driver == DriverKind::Database)
        .ok_or_else(|| ApiError::Conflict("the project has no database step".into()))?;
    let events = decide::issue_credentials(&project, &step.name).map_err(|err| match err {
        ProjectError::CredentialsAlreadyIssued => ApiError::Gone(
            "the database credentials were already handed out; they are shown once".into(),
        ),
        ProjectError::WrongState { .. } => ApiError::Conflict(format!(
            "the database is not provisioned: step {:?} is {}",
            step.name,
            serde_json::to_value(step.status)
                .ok()
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .unwrap_or("not done")
        )),
        other => refused(other),
    })?;
    let (database, role, host, port) = login_of(&step.output).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "the database step's output lacks database, role, host or port"
        ))
    })?;
    // With the key the step recorded, which after a rotation of the ring need not be current.
    let password =
        recorded_database_password(&state.database_keys, id, &step.output).map_err(|err| {
            tracing::warn!(reason = %err, "database credentials cannot be derived");
            ApiError::Conflict(format!(
                "{err}, so its password cannot be handed out; ask an operator to rotate it \
                 (idp-worker harden-databases --rotate-passwords), then ask again"
            ))
        })?;
    let mut tx = state.store.pool().begin().await?;
    projects::record(
        &state,
        &mut tx,
        &project,
        &events,
        ctx.metadata(user.actor()),
    )
    .await?;
    // Handed out only once the log says so: a failed commit shows nothing.
    tx.commit().await?;
    tracing::info!("database credentials handed out");
    let credentials = DatabaseCredentials {
        database,
        role,
        host,
        port,
        password,
    };
    let mut response = Json(credentials).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// One event of a project's stream as sent to followers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"position": 1042, "version": 3, "type": "StepSucceeded",
                          "data": {"step": "database", "attempt": 1, "output": {"database": "p_billing_api"}},
                          "recorded_at": "2026-12-01T10:00:02Z"}))]
pub struct StreamedEvent {
    /// Its position in the log (also the SSE `id`, for `Last-Event-ID`).
    pub position: i64,
    /// Its version within the project's stream.
    pub version: i64,
    /// Its type (also the SSE `event`), e.g. `StepSucceeded`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its payload.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// One Server-Sent Event of `GET /v1/projects/{id}/events`, as its fields arrive on the wire.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "1042", "event": "StepSucceeded",
    "data": "{\"position\":1042,\"version\":3,\"type\":\"StepSucceeded\",\"data\":{\"step\":\"database\"},\"recorded_at\":\"2026-12-01T10:00:02Z\"}"}))]
pub struct ServerSentEvent {
    /// The event's position in the log, for `Last-Event-ID`.
    #[schema(pattern = "^[0-9]+$")]
    pub id: String,
    /// The event's type, e.g. `StepSucceeded`.
    pub event: String,
    /// A [`StreamedEvent`] as JSON.
    pub data: String,
}

fn sse_event(event: &RecordedEvent) -> Event {
    let body = StreamedEvent {
        position: event.position,
        version: event.stream_version,
        event_type: event.event_type.clone(),
        data: event.data.clone(),
        recorded_at: event.recorded_at,
    };
    // Serialising plain JSON values cannot fail.
    let data = serde_json::to_string(&body).unwrap_or_default();
    Event::default()
        .id(event.position.to_string())
        .event(&event.event_type)
        .data(data)
}

/// Follows a project's events live as Server-Sent Events: first those recorded so far (after
/// `Last-Event-ID`, when reconnecting), then each new one as it is recorded. The stream ends
/// once the project is `ready`, `failed`, `deleted` or `deletion_failed` and every event was
/// sent; comments every 15 s keep it open meanwhile.
#[utoipa::path(get, path = "/v1/projects/{id}/events", tag = "projects", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The project"),
           ("Last-Event-ID" = Option<String>, Header, example = "1042",
            description = "The id of the last event received (its log position), which must be an event of this project: the stream resumes after it")),
    responses((status = 200, description = "`text/event-stream`: each event has `id` (its log position), `event` (its type) and `data` (a StreamedEvent as JSON)",
               content((ServerSentEvent = "text/event-stream",
                        example = json!("id: 1042\nevent: StepSucceeded\ndata: {\"position\":1042,\"version\":3,\"type\":\"StepSucceeded\",\"data\":{\"step\":\"database\"},\"recorded_at\":\"2026-12-01T10:00:02Z\"}\n\n")))),
              (status = 400, description = "Last-Event-ID is not an event of this project"),
              (status = 429, description = "The caller has SSE_MAX_STREAMS_PER_USER streams open already"),
              (status = 404, description = "No such project, or not the caller's (also for an id that is not a UUID)")))]
#[tracing::instrument(name = "projects.events", skip_all, fields(project.id = %id))]
pub async fn project_events(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(ProjectId(id)): ApiPath<ProjectId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let loaded = projects::load_visible(&state, &user, id).await?;
    // Followers compare the stream's version as the watch last saw it with the version they
    // read, so an event appended between the read above and this subscription is not missed.
    let subscription = state
        .log_watch
        .follow(user.user_id, user.session_id, StreamId::project(id).into())
        .map_err(|e| {
            metrics::counter!("idp_event_streams_refused_total").increment(1);
            tracing::info!(reason = %e, "event stream refused");
            ApiError::TooManyRequests {
                retry_after_secs: 5,
            }
        })?;
    let resume_at = match headers.get("last-event-id") {
        None => 0,
        Some(value) => {
            let position: Option<i64> = value.to_str().ok().and_then(|v| v.trim().parse().ok());
            position
                .and_then(|p| loaded.history.iter().position(|e| e.position == p))
                .map(|index| index + 1)
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID is not an event of this project".into())
                })?
        }
    };
    let follower = Follower::new(
        state.store.clone(),
        subscription,
        loaded.project,
        loaded.history,
        resume_at,
    );
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((Ok::<_, Infallible>(sse_event(&event)), follower))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Proxies such as nginx would otherwise buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
