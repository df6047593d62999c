//! `/v1/auth/2fa/*` and `/v1/auth/recovery-login`: enrolling a TOTP authenticator, the second
//! step of a sign-in, recovery codes, and turning it off; `POST /v1/admin/users/{id}/reset-2fa`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::permissions::{ManageUsers, Permitted};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, AuthUser, ClientContext, EnrollingUser};
use crate::identity::{Enrolment, TokenPair};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/2fa/enable-init", post(enable_init))
        .route("/v1/auth/2fa/enable-complete", post(enable_complete))
        .route("/v1/auth/2fa/disable", post(disable))
        .route("/v1/auth/2fa/verify", post(verify))
        .route("/v1/auth/2fa/recovery-codes", post(recovery_codes))
        .route("/v1/auth/recovery-login", post(recovery_login))
        .route("/v1/admin/users/{id}/reset-2fa", post(reset))
}

/// The caller's password, entered again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"password": "correct horse battery staple"}))]
pub struct PasswordRequest {
    /// The current password.
    pub password: String,
}

/// Starts enrolling a TOTP authenticator. With `MFA_REQUIRED_ROLES`, open to those who must
/// enrol.
#[utoipa::path(post, path = "/v1/auth/2fa/enable-init", tag = "two-factor", request_body = PasswordRequest, security(("bearer" = [])),
    responses((status = 200, description = "The new secret", body = Enrolment),
              (status = 401, description = "No valid access token, or a wrong password"),
              (status = 409, description = "A second factor is on already"),
              (status = 429, description = "Too many attempts for this account")))]
#[tracing::instrument(name = "auth.2fa.enable_init", skip_all, fields(user.id = %user.user_id))]
pub async fn enable_init(
    State(state): State<AppState>,
    ctx: ClientContext,
    EnrollingUser(user): EnrollingUser,
    ApiJson(body): ApiJson<PasswordRequest>,
) -> Result<Json<Enrolment>, ApiError> {
    Ok(Json(
        state
            .identity
            .enrol_second_factor(&ctx, &user, &body.password)
            .await?,
    ))
}

/// A code of the authenticator app.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "492039"}))]
pub struct CodeRequest {
    /// Six digits.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"recovery_codes": ["k3vq-7xhn-2m5a-pq4r", "b6td-n2wq-x7ke-3hsa"]}))]
pub struct RecoveryCodes {
    /// Ten codes; each signs in once in place of a code of the app.
    pub recovery_codes: Vec<String>,
}

/// Completes an enrolment with a code of the new secret: sign-ins ask for a code from now on.
#[utoipa::path(post, path = "/v1/auth/2fa/enable-complete", tag = "two-factor", request_body = CodeRequest, security(("bearer" = [])),
    responses((status = 200, description = "On; the recovery codes, shown once", body = RecoveryCodes),
              (status = 401, description = "No valid access token"),
              (status = 409, description = "No enrolment in progress, or the second factor is on already"),
              (status = 422, description = "Not a current code of the new secret")))]
#[tracing::instrument(name = "auth.2fa.enable_complete", skip_all, fields(user.id = %user.user_id))]
pub async fn enable_complete(
    State(state): State<AppState>,
    ctx: ClientContext,
    EnrollingUser(user): EnrollingUser,
    ApiJson(body): ApiJson<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let recovery_codes = state
        .identity
        .complete_second_factor(&ctx, &user, &body.code)
        .await?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

/// The password and a code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"password": "correct horse battery staple", "code": "492039"}))]
pub struct DisableRequest {
    /// The current password.
    pub password: String,
    /// A current code of the authenticator app.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// Turns the second factor off.
#[utoipa::path(post, path = "/v1/auth/2fa/disable", tag = "two-factor", request_body = DisableRequest, security(("bearer" = [])),
    responses((status = 204, description = "Off (no body)"),
              (status = 401, description = "No valid access token, a wrong password, or a code refused (wrong, used, or the second factor is locked)"),
              (status = 409, description = "There is no second factor"),
              (status = 429, description = "Too many attempts for this account")))]
#[tracing::instrument(name = "auth.2fa.disable", skip_all, fields(user.id = %user.user_id))]
pub async fn disable(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiJson(body): ApiJson<DisableRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .disable_second_factor(&ctx, &user, &body.password, &body.code)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The second step of a sign-in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"challenge": "Yk3v0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP3q2Vb8", "code": "492039"}))]
pub struct VerifyRequest {
    /// The challenge the sign-in answered.
    pub challenge: String,
    /// A current code of the authenticator app.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// Completes a sign-in that answered `mfa_required`, with a code of the authenticator app.
/// Each code works once; five wrong codes lock the second factor for 5 minutes (doubling
/// with each lock, up to a day).
#[utoipa::path(post, path = "/v1/auth/2fa/verify", tag = "two-factor", request_body = VerifyRequest,
    responses((status = 200, description = "Signed in", body = TokenPair,
               example = json!({"access_token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSJ9.eyJzdWIiOiIwMTkwZjRjMiJ9.c2lnbmF0dXJl",
                                "refresh_token": "3q2Vb8yJkq0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP", "token_type": "Bearer", "expires_in": 900})),
              (status = 401, description = "Refused: the same answer for an unknown, expired or used challenge, a wrong, malformed or used code, and a locked second factor")))]
#[tracing::instrument(name = "auth.2fa.verify", skip_all)]
pub async fn verify(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    Ok(Json(
        state
            .identity
            .verify_second_factor(&ctx, &body.challenge, &body.code)
            .await?,
    ))
}

/// The second step of a sign-in with a recovery code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"challenge": "Yk3v0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP3q2Vb8", "recovery_code": "k3vq-7xhn-2m5a-pq4r"}))]
pub struct RecoveryLoginRequest {
    /// The challenge the sign-in answered.
    pub challenge: String,
    /// One of the recovery codes (case, dashes and spaces do not matter).
    pub recovery_code: String,
}

/// Completes a sign-in that answered `mfa_required` with a recovery code, which is used up.
#[utoipa::path(post, path = "/v1/auth/recovery-login", tag = "two-factor", request_body = RecoveryLoginRequest,
    responses((status = 200, description = "Signed in", body = TokenPair,
               example = json!({"access_token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSJ9.eyJzdWIiOiIwMTkwZjRjMiJ9.c2lnbmF0dXJl",
                                "refresh_token": "3q2Vb8yJkq0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP", "token_type": "Bearer", "expires_in": 900})),
              (status = 401, description = "Refused: the same answer whatever the reason")))]
#[tracing::instrument(name = "auth.recovery_login", skip_all)]
pub async fn recovery_login(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<RecoveryLoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    Ok(Json(
        state
            .identity
            .recovery_login(&ctx, &body.challenge, &body.recovery_code)
            .await?,
    ))
}

/// A new set of recovery codes; the old ones stop working.
#[utoipa::path(post, path = "/v1/auth/2fa/recovery-codes", tag = "two-factor", request_body = PasswordRequest, security(("bearer" = [])),
    responses((status = 200, description = "The new codes, shown once", body = RecoveryCodes),
              (status = 401, description = "No valid access token, or a wrong password"),
              (status = 409, description = "There is no second factor"),
              (status = 429, description = "Too many attempts for this account")))]
#[tracing::instrument(name = "auth.2fa.recovery_codes", skip_all, fields(user.id = %user.user_id))]
pub async fn recovery_codes(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiJson(body): ApiJson<PasswordRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let recovery_codes = state
        .identity
        .regenerate_recovery_codes(&ctx, &user, &body.password)
        .await?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

/// Removes the second factor of an account (the person lost their device); the person is told
/// by email, and signs in with the password alone until they enrol again.
#[utoipa::path(post, path = "/v1/admin/users/{id}/reset-2fa", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 204, description = "Removed (no body)"),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 409, description = "The account has no second factor"),
              (status = 410, description = "The person is erased")))]
#[tracing::instrument(name = "admin.users.reset_2fa", skip_all, fields(user.id = %id))]
pub async fn reset(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageUsers>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.identity.reset_second_factor(&ctx, &admin, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
