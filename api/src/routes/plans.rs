//! Plans and limits: `GET /v1/account/plan`, `GET /v1/account/limits` and `PUT
//! /v1/account/limits` (the caller's own spend cap), and `PUT /v1/admin/users/{id}/plan`
//! (billing administrators and administrators).

use axum::extract::State;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::plans::{LimitsView, PlanView};
use crate::auth::permissions::{ManagePlans, Permitted};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, AuthUser, ClientContext, KeyScopes};
use crate::startup::AppState;
use idp_events::identity::api_key::Scope;

/// The routes of this module. Reading the plan and the limits is open to API keys with
/// `projects:read` (a service account sees its own); changing them needs a session.
pub fn router() -> Router<AppState> {
    let readable = Router::new()
        .route("/v1/account/plan", get(plan))
        .route("/v1/account/limits", get(limits))
        .route_layer(axum::Extension(KeyScopes {
            read: Scope::ProjectsRead,
            write: Scope::ProjectsWrite,
        }));
    Router::new()
        .merge(readable)
        .route("/v1/account/limits", put(set_limits))
        .route("/v1/admin/users/{id}/plan", put(set_plan))
}

/// The caller's own spend cap.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"spend_cap_cents": 1000}))]
pub struct SetLimitsRequest {
    /// Cents per month, at most the plan's ceiling; `null`: the plan's ceiling.
    pub spend_cap_cents: Option<u64>,
}

/// The plan to put an account on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plan": "pro"}))]
pub struct SetPlanRequest {
    /// One of the configured plans (`PLANS`; by default `free` and `pro`).
    pub plan: String,
}

/// The caller's plan and what it allows.
#[utoipa::path(get, path = "/v1/account/plan", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "The plan", body = PlanView)))]
#[tracing::instrument(name = "account.plan", skip_all, fields(user.id = %user.user_id))]
pub async fn plan(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<PlanView>, ApiError> {
    Ok(Json(state.access.plan_view(user.user_id).await?))
}

/// What the caller uses of their plan's limits: live projects and their monthly cost.
#[utoipa::path(get, path = "/v1/account/limits", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "Usage and limits", body = LimitsView)))]
#[tracing::instrument(name = "account.limits", skip_all, fields(user.id = %user.user_id))]
pub async fn limits(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<LimitsView>, ApiError> {
    Ok(Json(state.access.limits(user.user_id).await?))
}

/// Sets the caller's own monthly spend cap, at most the plan's ceiling (`SpendCapChanged`). A
/// cap below what the live projects cost already refuses new projects and touches none that
/// exist.
#[utoipa::path(put, path = "/v1/account/limits", tag = "account", security(("bearer" = [])),
    request_body = SetLimitsRequest,
    responses((status = 200, description = "Usage and limits, as they now are", body = LimitsView),
              (status = 403, description = "Asked with an API key"),
              (status = 422, description = "A cap above the plan's ceiling")))]
#[tracing::instrument(name = "account.set_limits", skip_all, fields(user.id = %user.user_id))]
pub async fn set_limits(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiJson(body): ApiJson<SetLimitsRequest>,
) -> Result<Json<LimitsView>, ApiError> {
    let view = state
        .access
        .set_spend_cap(
            ctx.metadata(user.actor()),
            user.user_id,
            body.spend_cap_cents,
        )
        .await?;
    Ok(Json(view))
}

/// Puts an account (a person's or a service account's) on a plan (`PlanChanged`, the caller as
/// actor). Its own spend cap stays; the lower of it and the new ceiling applies.
#[utoipa::path(put, path = "/v1/admin/users/{id}/plan", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    request_body = SetPlanRequest,
    responses((status = 200, description = "The account's plan", body = PlanView),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 422, description = "No such plan")))]
#[tracing::instrument(name = "admin.users.plan", skip_all, fields(user.id = %id))]
pub async fn set_plan(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManagePlans>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SetPlanRequest>,
) -> Result<Json<PlanView>, ApiError> {
    // A person's account, or a service account: anything else has no plan to change.
    match state.identity.load_user(id).await {
        Ok(_) => {}
        Err(crate::identity::IdentityError::NotFound) => {
            state.access.service_account(id).await?;
        }
        Err(err) => return Err(err.into()),
    }
    let view = state
        .access
        .change_plan(ctx.metadata(admin.actor()), id, &body.plan)
        .await?;
    Ok(Json(view))
}
