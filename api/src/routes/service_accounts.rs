//! Service accounts and their API keys (`/v1/admin/service-accounts`): non-human accounts that
//! administrators create, that own projects and hold roles like people, and that call the API
//! only with their keys (they have no password).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::api_keys::{ApiKeys, CreateKeyRequest, CreatedKey, make_key, rotate};
use crate::access::api_keys::KeyOwner;
use crate::access::service_accounts::{AccountSpec, ServiceAccountView, StateChange, parse_roles};
use crate::auth::permissions::{ManageServiceAccounts, Permitted};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ClientContext};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/service-accounts",
            post(create_account).get(list_accounts),
        )
        .route(
            "/v1/admin/service-accounts/{id}",
            get(get_account).delete(delete_account),
        )
        .route("/v1/admin/service-accounts/{id}/roles", put(set_roles))
        .route(
            "/v1/admin/service-accounts/{id}/disable",
            post(disable_account),
        )
        .route(
            "/v1/admin/service-accounts/{id}/enable",
            post(enable_account),
        )
        .route(
            "/v1/admin/service-accounts/{id}/api-keys",
            post(create_key).get(list_keys),
        )
        .route(
            "/v1/admin/service-accounts/{id}/api-keys/{key_id}",
            delete(revoke_key),
        )
        .route(
            "/v1/admin/service-accounts/{id}/api-keys/{key_id}/rotate",
            post(rotate_key),
        )
}

/// A service account to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci-preview", "description": "Preview databases per branch", "roles": ["user"]}))]
pub struct CreateAccountRequest {
    /// Unique among service accounts: 1 to 63 of `a-z`, `0-9` and `-`, starting with a letter
    /// and not ending with `-`.
    #[schema(pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// What it is for (at most 500 characters).
    pub description: Option<String>,
    /// Its roles (`user` is always among them); absent: `user` only.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A service account's new roles.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"roles": ["user", "admin"]}))]
pub struct SetRolesRequest {
    /// Its roles (`user` is always among them).
    pub roles: Vec<String>,
}

/// Every service account that is not deleted.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"service_accounts": [{"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "ci-preview",
                          "description": "Preview databases per branch", "roles": ["user"],
                          "created_at": "2026-12-07T10:00:00Z", "disabled": false}]}))]
pub struct ServiceAccounts {
    /// By name.
    pub service_accounts: Vec<ServiceAccountView>,
}

/// Creates a service account (`ServiceAccountCreated`). It has no password and cannot sign in:
/// make it a key (`POST /v1/admin/service-accounts/{id}/api-keys`).
#[utoipa::path(post, path = "/v1/admin/service-accounts", tag = "admin", security(("bearer" = [])),
    request_body = CreateAccountRequest,
    responses((status = 201, description = "Created", body = ServiceAccountView),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 409, description = "A service account has that name"),
              (status = 422, description = "A bad name or description, or an unknown role")))]
#[tracing::instrument(name = "admin.service_accounts.create", skip_all)]
pub async fn create_account(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiJson(body): ApiJson<CreateAccountRequest>,
) -> Result<(StatusCode, Json<ServiceAccountView>), ApiError> {
    let spec = AccountSpec::parse(&body.name, body.description.as_deref(), &body.roles)?;
    let account = state
        .access
        .create_service_account(ctx.metadata(admin.actor()), &spec)
        .await?;
    tracing::info!(service_account.id = %account.id, "service account created");
    Ok((StatusCode::CREATED, Json(account)))
}

/// Every service account that is not deleted, by name.
#[utoipa::path(get, path = "/v1/admin/service-accounts", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "By name", body = ServiceAccounts),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)")))]
#[tracing::instrument(name = "admin.service_accounts.list", skip_all)]
pub async fn list_accounts(
    State(state): State<AppState>,
    _admin: Permitted<ManageServiceAccounts>,
) -> Result<Json<ServiceAccounts>, ApiError> {
    let service_accounts = state.access.list_service_accounts().await?;
    Ok(Json(ServiceAccounts { service_accounts }))
}

/// One service account.
#[utoipa::path(get, path = "/v1/admin/service-accounts/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account")),
    responses((status = 200, description = "The service account", body = ServiceAccountView),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such service account (or it is deleted)")))]
#[tracing::instrument(name = "admin.service_accounts.get", skip_all)]
pub async fn get_account(
    State(state): State<AppState>,
    _admin: Permitted<ManageServiceAccounts>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ServiceAccountView>, ApiError> {
    Ok(Json(state.access.service_account(id).await?))
}

/// Replaces a service account's roles (`ServiceAccountRolesChanged`); its keys act with the new
/// roles from the next request on.
#[utoipa::path(put, path = "/v1/admin/service-accounts/{id}/roles", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account")),
    request_body = SetRolesRequest,
    responses((status = 200, description = "The service account with its new roles", body = ServiceAccountView),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such service account"),
              (status = 422, description = "An unknown role")))]
#[tracing::instrument(name = "admin.service_accounts.roles", skip_all)]
pub async fn set_roles(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SetRolesRequest>,
) -> Result<Json<ServiceAccountView>, ApiError> {
    let roles = parse_roles(&body.roles)?;
    let view = state
        .access
        .set_service_account_roles(ctx.metadata(admin.actor()), id, &roles)
        .await?;
    Ok(Json(view))
}

async fn change(
    state: &AppState,
    ctx: &ClientContext,
    admin: &crate::extract::AuthUser,
    id: Uuid,
    change: StateChange,
) -> Result<StatusCode, ApiError> {
    state
        .access
        .change_service_account(ctx.metadata(admin.actor()), id, change)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disables a service account (`ServiceAccountDisabled`): its keys are revoked in the same
/// transaction and stop at once. Disabling a disabled account changes nothing.
#[utoipa::path(post, path = "/v1/admin/service-accounts/{id}/disable", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account")),
    responses((status = 204, description = "Disabled"),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such service account")))]
#[tracing::instrument(name = "admin.service_accounts.disable", skip_all)]
pub async fn disable_account(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    change(&state, &ctx, &admin, id, StateChange::Disable).await
}

/// Enables a disabled service account (`ServiceAccountEnabled`); its old keys stay revoked.
#[utoipa::path(post, path = "/v1/admin/service-accounts/{id}/enable", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account")),
    responses((status = 204, description = "Enabled"),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such service account")))]
#[tracing::instrument(name = "admin.service_accounts.enable", skip_all)]
pub async fn enable_account(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    change(&state, &ctx, &admin, id, StateChange::Enable).await
}

/// Deletes a service account (`ServiceAccountDeleted`): its keys are revoked at once and its
/// name is free. Its projects stay, for administrators to keep or delete.
#[utoipa::path(delete, path = "/v1/admin/service-accounts/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account")),
    responses((status = 204, description = "Deleted"),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such service account")))]
#[tracing::instrument(name = "admin.service_accounts.delete", skip_all)]
pub async fn delete_account(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    change(&state, &ctx, &admin, id, StateChange::Delete).await
}

/// Makes a key for a service account (`ApiKeyCreated`, the administrator as actor): shown in
/// this answer only. The account must be enabled.
#[utoipa::path(post, path = "/v1/admin/service-accounts/{id}/api-keys", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account")),
    request_body = CreateKeyRequest,
    responses((status = 201, description = "Made; the key is shown this once", body = CreatedKey),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such service account"),
              (status = 409, description = "The account is disabled, or has 50 working keys"),
              (status = 422, description = "A bad name, an unknown scope, a scope the account's roles give nothing to, or an expiry in the past")))]
#[tracing::instrument(name = "admin.service_accounts.create_key", skip_all)]
pub async fn create_key(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let account = state.access.service_account(id).await?;
    if account.disabled {
        return Err(ApiError::Conflict(
            "the service account is disabled; enable it first".into(),
        ));
    }
    let owner = KeyOwner {
        id,
        service_account: true,
    };
    make_key(
        &state,
        ctx.metadata(admin.actor()),
        owner,
        &account.roles,
        &body,
    )
    .await
}

/// A service account's keys that still work.
#[utoipa::path(get, path = "/v1/admin/service-accounts/{id}/api-keys", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account")),
    responses((status = 200, description = "Newest first", body = ApiKeys),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such service account")))]
#[tracing::instrument(name = "admin.service_accounts.list_keys", skip_all)]
pub async fn list_keys(
    State(state): State<AppState>,
    _admin: Permitted<ManageServiceAccounts>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ApiKeys>, ApiError> {
    state.access.service_account(id).await?;
    let api_keys = state.access.list_keys(id).await?;
    Ok(Json(ApiKeys { api_keys }))
}

/// Revokes a service account's key: refused from now on, on every API instance.
#[utoipa::path(delete, path = "/v1/admin/service-accounts/{id}/api-keys/{key_id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account"),
           ("key_id" = Uuid, Path, description = "One of its keys")),
    responses((status = 204, description = "Revoked"),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "The account has no such key")))]
#[tracing::instrument(name = "admin.service_accounts.revoke_key", skip_all)]
pub async fn revoke_key(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiPath((id, key_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    state
        .access
        .revoke_key(ctx.metadata(admin.actor()), id, key_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotates a service account's key: a new key, shown once; the old one works for the grace
/// period (default an hour).
#[utoipa::path(post, path = "/v1/admin/service-accounts/{id}/api-keys/{key_id}/rotate", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The service account"),
           ("key_id" = Uuid, Path, description = "One of its working keys")),
    request_body(content = Option<super::api_keys::RotateKeyRequest>, description = "Optional (an empty body takes the default grace period)", example = json!({"grace_period_secs": 3600})),
    responses((status = 201, description = "The new key, shown this once", body = CreatedKey),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "The account has no such working key"),
              (status = 422, description = "A grace period over 7 days")))]
#[tracing::instrument(name = "admin.service_accounts.rotate_key", skip_all)]
pub async fn rotate_key(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageServiceAccounts>,
    ApiPath((id, key_id)): ApiPath<(Uuid, Uuid)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let owner = KeyOwner {
        id,
        service_account: true,
    };
    rotate(&state, ctx.metadata(admin.actor()), owner, key_id, &body).await
}
