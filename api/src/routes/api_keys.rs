//! API keys: a person's own (`/v1/account/api-keys`, personal access tokens, from a signed-in
//! session only), and administrators' views of people's keys (`/v1/admin/users/{id}/api-keys`).
//! Service accounts' keys are in `service_accounts`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use idp_events::identity::api_key::Scope;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::api_keys::{
    ApiKeyView, DEFAULT_ROTATION_GRACE_SECS, KeyOwner, KeySpec, MadeKey,
};
use crate::auth::permissions::{ManageApiKeys, Permission, Permitted, granted};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, AuthUser, ClientContext, PathParam};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/account/api-keys", post(create_key).get(list_keys))
        .route("/v1/account/api-keys/{id}", delete(revoke_key))
        .route("/v1/account/api-keys/{id}/rotate", post(rotate_key))
        .route("/v1/admin/users/{id}/api-keys", get(list_keys_of))
        .route(
            "/v1/admin/users/{id}/api-keys/{key_id}",
            delete(revoke_key_of),
        )
}

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci-preview", "scopes": ["projects:write"], "expires_at": "2027-03-01T00:00:00Z"}))]
pub struct CreateKeyRequest {
    /// What to call it: 1 to 64 characters, no control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// At least one of `projects:read`, `projects:write` (includes reading), `templates:read`,
    /// `audit:read`, `admin` (includes `audit:read`). A key never does more than its owner's
    /// roles allow.
    #[schema(min_items = 1)]
    pub scopes: Vec<String>,
    /// When it stops working (in the future); `null` or absent: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A rotation: how long the old key keeps working.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"grace_period_secs": 3600}))]
pub struct RotateKeyRequest {
    /// Seconds the old key keeps working (never past its own expiry): 0 to 604800 (7 days);
    /// absent: 3600 (an hour).
    #[schema(maximum = 604_800)]
    pub grace_period_secs: Option<u64>,
}

/// A key just made: the key itself, shown this once, and what lists show of it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"key": "idp_4fZk2QbA7h3kLmN0pQrStUvWxYz0123456789AbCdEfGhIjKlMn0a1B2c",
                          "api_key": {"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "ci-preview", "prefix": "idp_4fZk2QbA",
                                      "scopes": ["projects:write"], "created_at": "2026-12-07T10:00:00Z",
                                      "expires_at": "2027-03-01T00:00:00Z", "last_used_at": null}}))]
pub struct CreatedKey {
    /// The key: send it as `Authorization: Bearer <key>`. It is not shown again.
    pub key: String,
    /// The key as lists show it.
    pub api_key: ApiKeyView,
}

impl From<MadeKey> for CreatedKey {
    fn from(made: MadeKey) -> Self {
        Self {
            key: made.key.secret.expose_secret().to_owned(),
            api_key: made.view,
        }
    }
}

/// Keys that still work.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"api_keys": [{"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "ci-preview", "prefix": "idp_4fZk2QbA",
                          "scopes": ["projects:write"], "created_at": "2026-12-07T10:00:00Z",
                          "expires_at": null, "last_used_at": "2026-12-07T10:05:00Z"}]}))]
pub struct ApiKeys {
    /// Newest first.
    pub api_keys: Vec<ApiKeyView>,
}

/// A key id in a path; anything else is a key the caller does not have (404).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub Uuid);

impl PathParam for KeyId {
    const WHAT: &'static str = "an API key id";

    fn refused(_key: &str) -> ApiError {
        ApiError::NotFound
    }
}

/// Refuses scopes the owner's roles give nothing to: `admin` without any administration
/// permission, `audit:read` without reading the log or the audit.
fn check_scopes_against_roles(spec: &KeySpec, roles: &[String]) -> Result<(), ApiError> {
    for scope in &spec.scopes {
        let useful = match scope {
            Scope::Admin => Permission::ALL.iter().any(|p| granted(roles, *p)),
            Scope::AuditRead => {
                granted(roles, Permission::ReadEvents) || granted(roles, Permission::ReadAudit)
            }
            _ => true,
        };
        if !useful {
            return Err(ApiError::Unprocessable(format!(
                "scopes: the owner's roles give {scope} nothing to do"
            )));
        }
    }
    Ok(())
}

/// Makes a personal access token: a key that acts as the caller, within its scopes, until it
/// expires or is revoked. The key is in this answer only; idp keeps its hash. Recorded as
/// `ApiKeyCreated`. At most 50 working keys per account.
#[utoipa::path(post, path = "/v1/account/api-keys", tag = "account", security(("bearer" = [])),
    request_body = CreateKeyRequest,
    responses((status = 201, description = "Made; the key is shown this once", body = CreatedKey),
              (status = 403, description = "Made with an API key: keys are made from a signed-in session"),
              (status = 409, description = "The account has 50 working keys"),
              (status = 422, description = "A bad name, an unknown scope, a scope the caller's roles give nothing to, or an expiry in the past")))]
#[tracing::instrument(name = "account.api_keys.create", skip_all, fields(user.id = %user.user_id))]
pub async fn create_key(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let roles = user.current_roles(&state).await?;
    let owner = KeyOwner {
        id: user.user_id,
        service_account: false,
    };
    make_key(&state, ctx.metadata(user.actor()), owner, &roles, &body).await
}

/// Makes a key for `owner`, whose roles are `roles`, as `body` asks: 201 with the key.
pub(crate) async fn make_key(
    state: &AppState,
    metadata: idp_events::Metadata,
    owner: KeyOwner,
    roles: &[String],
    body: &CreateKeyRequest,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let spec = KeySpec::parse(&body.name, &body.scopes, body.expires_at, Utc::now())?;
    check_scopes_against_roles(&spec, roles)?;
    let made = state.access.create_key(metadata, owner, &spec).await?;
    tracing::info!(api_key.id = %made.view.id, service_account = owner.service_account, "API key made");
    Ok((StatusCode::CREATED, Json(made.into())))
}

/// Rotates `owner`'s key `key_id` with the grace period `body` asks for: 201 with the new key.
pub(crate) async fn rotate(
    state: &AppState,
    metadata: idp_events::Metadata,
    owner: KeyOwner,
    key_id: Uuid,
    body: &[u8],
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let grace = rotation_grace(body)?;
    let made = state
        .access
        .rotate_key(metadata, owner, key_id, grace)
        .await?;
    Ok((StatusCode::CREATED, Json(made.into())))
}

/// The caller's keys that still work (never the keys themselves).
#[utoipa::path(get, path = "/v1/account/api-keys", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "Newest first", body = ApiKeys),
              (status = 403, description = "Asked with an API key")))]
#[tracing::instrument(name = "account.api_keys.list", skip_all, fields(user.id = %user.user_id))]
pub async fn list_keys(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<ApiKeys>, ApiError> {
    let api_keys = state.access.list_keys(user.user_id).await?;
    Ok(Json(ApiKeys { api_keys }))
}

/// Revokes one of the caller's keys: it is refused from now on, on every API instance.
/// Recorded as `ApiKeyRevoked`; revoking a revoked key changes nothing.
#[utoipa::path(delete, path = "/v1/account/api-keys/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "A key of the caller")),
    responses((status = 204, description = "Revoked"),
              (status = 403, description = "Asked with an API key"),
              (status = 404, description = "The caller has no such key")))]
#[tracing::instrument(name = "account.api_keys.revoke", skip_all, fields(user.id = %user.user_id))]
pub async fn revoke_key(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(KeyId(id)): ApiPath<KeyId>,
) -> Result<StatusCode, ApiError> {
    state
        .access
        .revoke_key(ctx.metadata(user.actor()), user.user_id, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotates one of the caller's keys: a new key with the same name, scopes and expiry, shown
/// once; the old one keeps working for the grace period (default an hour), then stops.
/// Recorded as `ApiKeyCreated` (naming the old key) and `ApiKeyRotated`.
#[utoipa::path(post, path = "/v1/account/api-keys/{id}/rotate", tag = "account", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "A working key of the caller")),
    request_body(content = Option<RotateKeyRequest>, description = "Optional (an empty body takes the default grace period)", example = json!({"grace_period_secs": 3600})),
    responses((status = 201, description = "The new key, shown this once", body = CreatedKey),
              (status = 403, description = "Asked with an API key"),
              (status = 404, description = "The caller has no such working key"),
              (status = 422, description = "A grace period over 7 days")))]
#[tracing::instrument(name = "account.api_keys.rotate", skip_all, fields(user.id = %user.user_id))]
pub async fn rotate_key(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(KeyId(id)): ApiPath<KeyId>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let owner = KeyOwner {
        id: user.user_id,
        service_account: false,
    };
    rotate(&state, ctx.metadata(user.actor()), owner, id, &body).await
}

/// The grace period a rotation's body asks for: an empty body asks for the default; anything
/// else must be a [`RotateKeyRequest`].
fn rotation_grace(body: &[u8]) -> Result<u64, ApiError> {
    let request: RotateKeyRequest = crate::extract::optional_json_bytes(body)?;
    Ok(request
        .grace_period_secs
        .unwrap_or(DEFAULT_ROTATION_GRACE_SECS))
}

/// A person's keys that still work.
#[utoipa::path(get, path = "/v1/admin/users/{id}/api-keys", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 200, description = "Newest first", body = ApiKeys),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)")))]
#[tracing::instrument(name = "admin.users.api_keys", skip_all, fields(user.id = %id))]
pub async fn list_keys_of(
    State(state): State<AppState>,
    _admin: Permitted<ManageApiKeys>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ApiKeys>, ApiError> {
    let api_keys = state.access.list_keys(id).await?;
    Ok(Json(ApiKeys { api_keys }))
}

/// Revokes a person's key (a leaked one, say), recorded with the administrator as actor.
#[utoipa::path(delete, path = "/v1/admin/users/{id}/api-keys/{key_id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account"),
           ("key_id" = Uuid, Path, description = "One of its keys")),
    responses((status = 204, description = "Revoked"),
              (status = 400, description = "An id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "The account has no such key")))]
#[tracing::instrument(name = "admin.users.revoke_api_key", skip_all, fields(user.id = %id))]
pub async fn revoke_key_of(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageApiKeys>,
    ApiPath((id, key_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    state
        .access
        .revoke_key(ctx.metadata(admin.actor()), id, key_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
