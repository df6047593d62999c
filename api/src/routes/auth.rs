//! `/v1/auth/*` and `/.well-known/jwks.json`: registration, verification, sign-in, tokens,
//! passwords and the caller's profile.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{ApiJson, AuthUser, ClientContext};
use crate::identity::{Email, Profile, TokenPair};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/verify-email", post(verify_email))
        .route("/v1/auth/resend-verification", post(resend_verification))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/me", get(me))
        .route("/v1/auth/password/forgot", post(forgot_password))
        .route("/v1/auth/password/reset", post(reset_password))
        .route("/v1/auth/password/change", post(change_password))
        .route("/.well-known/jwks.json", get(jwks))
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "accepted" })),
    )
        .into_response()
}

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Email address; a verification link is sent there.
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// 12 to 128 characters, not a common password.
    #[schema(example = "correct horse battery staple")]
    pub password: String,
    /// Name to show.
    pub display_name: Option<String>,
}

/// Registers an account. The answer is the same whether or not the address is taken.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 202, description = "Accepted; check your mailbox"),
              (status = 422, description = "Invalid email or password", content_type = "application/problem+json"),
              (status = 429, description = "Too many requests", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.register", skip_all)]
pub async fn register(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&body.email)?;
    let display_name = body
        .display_name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if display_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 100)
    {
        return Err(ApiError::Unprocessable(
            "display_name: at most 100 characters".into(),
        ));
    }
    state
        .identity
        .register(&ctx, &email, &body.password, display_name)
        .await?;
    Ok(accepted())
}

/// A one-time token from an email.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token from the link.
    pub token: String,
}

/// Confirms an email address.
#[utoipa::path(post, path = "/v1/auth/verify-email", tag = "auth", request_body = TokenRequest,
    responses((status = 200, description = "Verified"),
              (status = 422, description = "Invalid or expired token", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.verify_email", skip_all)]
pub async fn verify_email(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    state.identity.verify_email(&ctx, &body.token).await?;
    Ok(Json(serde_json::json!({ "status": "verified" })).into_response())
}

/// An email address.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// The address.
    pub email: String,
}

/// Sends the verification email again (if there is an unverified account). Always 202.
#[utoipa::path(post, path = "/v1/auth/resend-verification", tag = "auth", request_body = EmailRequest,
    responses((status = 202, description = "Accepted"),
              (status = 429, description = "Too many requests", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.resend_verification", skip_all)]
pub async fn resend_verification(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<EmailRequest>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&body.email)?;
    state.identity.resend_verification(&ctx, &email).await?;
    Ok(accepted())
}

/// Credentials.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email address.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Signs in. Unknown email, wrong password, unverified or locked account: one identical 401.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, description = "Signed in", body = TokenPair),
              (status = 401, description = "Invalid credentials", content_type = "application/problem+json"),
              (status = 429, description = "Too many requests", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.login", skip_all)]
pub async fn login(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    // A malformed address cannot belong to an account: same answer as an unknown one.
    let Ok(email) = Email::parse(&body.email) else {
        state.identity.hasher().verify_dummy(&body.password).await;
        return Err(ApiError::InvalidCredentials);
    };
    Ok(Json(
        state.identity.login(&ctx, &email, &body.password).await?,
    ))
}

/// A refresh token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last pair.
    pub refresh_token: String,
}

/// Exchanges a refresh token for a new pair; the old one stops working. Presenting an already
/// used one ends the session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, description = "A new pair", body = TokenPair),
              (status = 401, description = "Invalid, used or expired refresh token", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.refresh", skip_all)]
pub async fn refresh(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    Ok(Json(
        state.identity.refresh(&ctx, &body.refresh_token).await?,
    ))
}

/// Ends the session of a refresh token.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "Signed out")))]
#[tracing::instrument(name = "auth.logout", skip_all)]
pub async fn logout(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    state.identity.logout(&ctx, &body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "Profile", body = Profile),
              (status = 401, description = "Missing or invalid access token", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.me", skip_all, fields(user.id = %user.user_id))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<Profile>, ApiError> {
    Ok(Json(state.identity.profile(user.user_id).await?))
}

/// Sends a password reset email (if there is such an account). Always 202.
#[utoipa::path(post, path = "/v1/auth/password/forgot", tag = "auth", request_body = EmailRequest,
    responses((status = 202, description = "Accepted"),
              (status = 429, description = "Too many requests", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.forgot_password", skip_all)]
pub async fn forgot_password(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<EmailRequest>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&body.email)?;
    state.identity.forgot_password(&ctx, &email).await?;
    Ok(accepted())
}

/// A new password with the token from the reset email.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The token from the link.
    pub token: String,
    /// The new password.
    pub new_password: String,
}

/// Sets a new password; every session ends.
#[utoipa::path(post, path = "/v1/auth/password/reset", tag = "auth", request_body = ResetRequest,
    responses((status = 204, description = "Password set"),
              (status = 422, description = "Invalid token or password", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.reset_password", skip_all)]
pub async fn reset_password(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .reset_password(&ctx, &body.token, &body.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The current and the new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// The current password.
    pub current_password: String,
    /// The new password.
    pub new_password: String,
}

/// Changes the caller's password; the caller's other sessions end.
#[utoipa::path(post, path = "/v1/auth/password/change", tag = "auth", request_body = ChangeRequest, security(("bearer" = [])),
    responses((status = 204, description = "Password changed"),
              (status = 401, description = "Missing or invalid access token", content_type = "application/problem+json"),
              (status = 422, description = "Wrong current password or weak new one", content_type = "application/problem+json")))]
#[tracing::instrument(name = "auth.change_password", skip_all, fields(user.id = %user.user_id))]
pub async fn change_password(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiJson(body): ApiJson<ChangeRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .change_password(
            &ctx,
            user.user_id,
            user.session_id,
            &body.current_password,
            &body.new_password,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify idp's access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JSON Web Key Set")))]
pub async fn jwks(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.identity.tokens().keys().jwks())
}
