//! `/v1/admin/jobs/*`: jobs that gave up (dead letters) and sending them back for another
//! round of attempts (admin role required on every request).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use idp_events::StreamId;
use idp_events::jobs::{Job, JobEvent};
use idp_events::{Append, AppendError, ExpectedVersion};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::paging;
use crate::auth::permissions::{ManageJobs, Permitted, ReadJobs};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, ClientContext};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/jobs/dead", get(list_dead))
        .route("/v1/admin/jobs/{id}/retry", post(retry))
}

/// A job that gave up.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct DeadJob {
    /// The job (its history is the stream `job-<id>`).
    pub job_id: Uuid,
    /// Its queue, e.g. `email`.
    pub queue: String,
    /// Its kind, e.g. `send_email`.
    pub kind: String,
    /// `rejected` (the job gave up) or `delivery_limit` (it kept crashing its worker).
    pub reason: String,
    /// Attempts made in its last round.
    pub attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The event that caused the job.
    pub cause_id: Option<Uuid>,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
    /// The job message.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// A page of dead jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"items": [{"job_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "queue": "email", "kind": "send_email", "reason": "rejected",
    "attempts": 5, "last_error": "smtp: connection refused", "cause_id": "0190f4c2-7b00-7c3b-9d2a-222222222222",
    "dead_lettered_at": "2026-12-01T10:15:00Z", "payload": {"template": "verify_email", "to": "ada@example.com"}}],
    "next_cursor": null}))]
pub struct DeadJobPage {
    /// The jobs.
    pub items: Vec<DeadJob>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging of the dead jobs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Jobs per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (opaque: only cursors this API handed out).
    pub cursor: Option<String>,
}

/// Lists the jobs that gave up, newest first.
#[utoipa::path(get, path = "/v1/admin/jobs/dead", tag = "admin", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, description = "A page of dead jobs", body = DeadJobPage),
              (status = 400, description = "Bad cursor or limit, or an unknown parameter"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)")))]
#[tracing::instrument(name = "admin.jobs.dead", skip_all)]
pub async fn list_dead(
    State(state): State<AppState>,
    Permitted { user: _admin, .. }: Permitted<ReadJobs>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<DeadJobPage>, ApiError> {
    let limit = paging::limit(params.limit)?;
    let after = params
        .cursor
        .as_deref()
        .map(paging::decode_cursor)
        .transpose()?;
    let mut items: Vec<DeadJob> = sqlx::query_as(
        "select job_id, queue, kind, reason, attempts, last_error, cause_id, dead_lettered_at, payload
           from dead_jobs
          where $1::timestamptz is null or (dead_lettered_at, job_id) < ($1, $2)
          order by dead_lettered_at desc, job_id desc
          limit $3",
    )
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit + 1)
    .fetch_all(state.store.pool())
    .await?;
    let next_cursor = paging::finish_page(&mut items, limit, |last| {
        (last.dead_lettered_at, last.job_id)
    });
    Ok(Json(DeadJobPage { items, next_cursor }))
}

/// The retry was accepted.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"job_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "status": "queued"}))]
pub struct RetryAccepted {
    /// The job.
    pub job_id: Uuid,
    /// `queued`: the job is sent back to its queue with a fresh round of attempts.
    #[schema(pattern = "^queued$")]
    pub status: &'static str,
}

/// Sends a dead-lettered job back to its queue for a fresh round of attempts.
#[utoipa::path(post, path = "/v1/admin/jobs/{id}/retry", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job")),
    responses((status = 202, description = "Sent back to its queue", body = RetryAccepted),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such job"),
              (status = 409, description = "The job is not dead-lettered (anymore)")))]
#[tracing::instrument(name = "admin.jobs.retry", skip_all, fields(job.id = tracing::field::Empty))]
pub async fn retry(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageJobs>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<RetryAccepted>), ApiError> {
    tracing::Span::current().record("job.id", tracing::field::display(id));
    let stream = StreamId::job(id);
    let history = state.store.read_stream(&stream, 1).await?;
    if history.is_empty() {
        return Err(ApiError::NotFound);
    }
    let job = Job::fold(&history);
    let Some((queue, payload)) = job.dead_payload.filter(|_| job.dead) else {
        return Err(ApiError::Conflict("the job is not dead-lettered".into()));
    };
    let event = JobEvent::JobRetryRequested { queue, payload };
    let mut tx = state.store.pool().begin().await?;
    let appended = state
        .store
        .append_in(
            &mut tx,
            Append::to(&stream)
                .expecting(ExpectedVersion::Exact(job.version))
                .event(event.to_new_event())
                .metadata(ctx.metadata(admin.actor())),
        )
        .await;
    match appended {
        Ok(_) => {}
        Err(AppendError::Conflict { .. }) => {
            return Err(ApiError::Conflict(
                "the job changed meanwhile; look again".into(),
            ));
        }
        Err(err) => return Err(ApiError::Internal(err.into())),
    }
    sqlx::query("delete from dead_jobs where job_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RetryAccepted {
            job_id: id,
            status: "queued",
        }),
    ))
}
