//! `/v1/auth/*` and `/.well-known/jwks.json`: registration, verification, sign-in, tokens,
//! passwords and the caller's profile.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::captcha;
use crate::error::ApiError;
use crate::extract::{ApiJson, AuthUser, ClientContext};
use crate::identity::{Profile, SignIn, TokenPair};
use crate::startup::AppState;
use idp_events::identity::display_name::DisplayName;
use idp_events::identity::email::Email;

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

/// An answer that says only what became of the request.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "accepted"}))]
pub struct Acknowledgement {
    /// `accepted`: carried out in the background, or nothing to do (which is not told apart);
    /// `verified`: the address is confirmed.
    #[schema(example = "accepted")]
    pub status: &'static str,
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        Json(Acknowledgement { status: "accepted" }),
    )
        .into_response()
}

/// The `captcha_token` of a request: at most [`captcha::MAX_TOKEN_LEN`] characters (422
/// otherwise, whether or not a CAPTCHA is asked for).
fn captcha_token(token: Option<&str>) -> Result<Option<&str>, ApiError> {
    match token {
        Some(token) if token.chars().count() > captcha::MAX_TOKEN_LEN => {
            Err(ApiError::Unprocessable(format!(
                "captcha_token: at most {} characters",
                captcha::MAX_TOKEN_LEN
            )))
        }
        token => Ok(token),
    }
}

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery staple", "display_name": "Ada Lovelace"}))]
pub struct RegisterRequest {
    /// Email address; a verification link is sent there.
    #[schema(format = Email, min_length = 3, max_length = 254)]
    pub email: String,
    /// 12 to 128 characters, not a common password.
    #[schema(min_length = 12, max_length = 128)]
    pub password: String,
    /// Name to show, at most 100 characters (blank: none), without control, format or line and
    /// paragraph separator characters.
    #[schema(max_length = 100)]
    pub display_name: Option<String>,
    /// A CAPTCHA token, needed after too many failed sign-ins for the account or from the
    /// client's address (a 400 `captcha-required` says so); ignored otherwise.
    #[schema(max_length = 2048)]
    #[serde(default)]
    pub captcha_token: Option<String>,
}

/// Registers an account. The answer is the same whether or not the address is taken.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 202, description = "Accepted; check your mailbox", body = Acknowledgement),
              (status = 400, description = "A CAPTCHA is required (captcha-required): send captcha_token"),
              (status = 401, description = "The CAPTCHA token was refused (captcha-refused)"),
              (status = 422, description = "Invalid email, password or display name (too long, or with control or format characters)"),
              (status = 429, description = "Too many registrations from this client address or of this email address"),
              (status = 503, description = "Too many passwords are waiting to be hashed, or the CAPTCHA cannot be checked now (captcha-unavailable); try again after Retry-After")))]
#[tracing::instrument(name = "auth.register", skip_all)]
pub async fn register(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&body.email)?;
    let display_name = match body.display_name.as_deref().map(DisplayName::parse) {
        None => None,
        Some(Ok(name)) => name.map(DisplayName::into_inner),
        Some(Err(e)) => return Err(ApiError::Unprocessable(format!("display_name: {e}"))),
    };
    state
        .identity
        .register(
            &ctx,
            &email,
            &body.password,
            display_name,
            captcha_token(body.captcha_token.as_deref())?,
        )
        .await?;
    Ok(accepted())
}

/// A one-time token from an email.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "AZD0wopOfDudKl5vepi8DcbmYgAVR4Fz5ILhTX3U8eaZK0Y7qMmvNhR2h8Z3QxXy"}))]
pub struct TokenRequest {
    /// The token from the link (64 characters of base64url).
    pub token: String,
}

/// Confirms an email address.
#[utoipa::path(post, path = "/v1/auth/verify-email", tag = "auth", request_body = TokenRequest,
    responses((status = 200, description = "Verified", body = Acknowledgement, example = json!({"status": "verified"})),
              (status = 422, description = "Invalid, used or expired token")))]
#[tracing::instrument(name = "auth.verify_email", skip_all)]
pub async fn verify_email(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    state.identity.verify_email(&ctx, &body.token).await?;
    Ok(Json(Acknowledgement { status: "verified" }).into_response())
}

/// An email address.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com"}))]
pub struct EmailRequest {
    /// The address.
    #[schema(format = Email, min_length = 3, max_length = 254)]
    pub email: String,
    /// A CAPTCHA token, needed after too many failed sign-ins for the account or from the
    /// client's address (a 400 `captcha-required` says so); ignored otherwise.
    #[schema(max_length = 2048)]
    #[serde(default)]
    pub captcha_token: Option<String>,
}

/// Sends the verification email again (if there is an unverified account). 202 whether or not
/// there is one.
#[utoipa::path(post, path = "/v1/auth/resend-verification", tag = "auth", request_body = EmailRequest,
    responses((status = 202, description = "Accepted", body = Acknowledgement),
              (status = 422, description = "Not a valid email address"),
              (status = 429, description = "Too many emails asked for, from this address or for this account"),
              (status = 400, description = "A CAPTCHA is required (captcha-required): send captcha_token"),
              (status = 401, description = "The CAPTCHA token was refused (captcha-refused)"),
              (status = 503, description = "The CAPTCHA cannot be checked now (captcha-unavailable); try again after Retry-After")))]
#[tracing::instrument(name = "auth.resend_verification", skip_all)]
pub async fn resend_verification(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<EmailRequest>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&body.email)?;
    state
        .identity
        .resend_verification(&ctx, &email, captcha_token(body.captcha_token.as_deref())?)
        .await?;
    Ok(accepted())
}

/// Credentials.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery staple"}))]
pub struct LoginRequest {
    /// Email address (a malformed one is refused at once, 422).
    #[schema(format = Email, min_length = 3, max_length = 254)]
    pub email: String,
    /// Password.
    pub password: String,
    /// A CAPTCHA token, needed after too many failed sign-ins for the account or from the
    /// client's address (a 400 `captcha-required` says so); ignored otherwise.
    #[schema(max_length = 2048)]
    #[serde(default)]
    pub captcha_token: Option<String>,
}

/// Signs in. Unknown email, wrong password, unverified or locked account: one identical 401.
/// An account with a second factor answers `mfa_required` with a challenge instead of tokens.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, description = "Signed in, or (with a second factor) a challenge for it", body = SignIn,
               example = json!({"access_token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSJ9.eyJzdWIiOiIwMTkwZjRjMiJ9.c2lnbmF0dXJl",
                                "refresh_token": "3q2Vb8yJkq0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP", "token_type": "Bearer", "expires_in": 900})),
              (status = 400, description = "A CAPTCHA is required (captcha-required): send captcha_token"),
              (status = 401, description = "Invalid credentials (the same answer whatever the reason), or the CAPTCHA token was refused (captcha-refused)"),
              (status = 422, description = "Not a valid email address"),
              (status = 429, description = "Too many sign-ins from this address or for this account"),
              (status = 503, description = "Too many sign-ins are waiting to be checked, or the CAPTCHA cannot be checked now (captcha-unavailable); try again after Retry-After")))]
#[tracing::instrument(name = "auth.login", skip_all)]
pub async fn login(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<SignIn>, ApiError> {
    Ok(Json(
        state
            .identity
            .login(
                &ctx,
                &body.email,
                &body.password,
                captcha_token(body.captcha_token.as_deref())?,
            )
            .await?,
    ))
}

/// A refresh token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"refresh_token": "3q2Vb8yJkq0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP"}))]
pub struct RefreshRequest {
    /// The refresh token of the last pair.
    pub refresh_token: String,
}

/// Exchanges a refresh token for a new pair; the old one stops working. Presenting an already
/// used one ends the session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, description = "A new pair", body = TokenPair,
               example = json!({"access_token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSJ9.eyJzdWIiOiIwMTkwZjRjMiJ9.c2lnbmF0dXJl",
                                "refresh_token": "3q2Vb8yJkq0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP", "token_type": "Bearer", "expires_in": 900})),
              (status = 401, description = "Invalid, used or expired refresh token")))]
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

/// Ends the session of a refresh token. An unknown or already ended one is not an error.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "Signed out (no body)")))]
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
    responses((status = 200, description = "Profile", body = Profile,
               example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "email": "ada@example.com",
                                "display_name": "Ada Lovelace", "roles": ["user"], "email_verified": true,
                                "created_at": "2026-12-01T10:00:00Z"}))))]
#[tracing::instrument(name = "auth.me", skip_all, fields(user.id = %user.user_id))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<Profile>, ApiError> {
    Ok(Json(state.identity.profile(user.user_id).await?))
}

/// Sends a password reset email (if there is such an account). 202 whether or not there is one.
#[utoipa::path(post, path = "/v1/auth/password/forgot", tag = "auth", request_body = EmailRequest,
    responses((status = 202, description = "Accepted", body = Acknowledgement),
              (status = 422, description = "Not a valid email address"),
              (status = 429, description = "Too many emails asked for, from this address or for this account"),
              (status = 400, description = "A CAPTCHA is required (captcha-required): send captcha_token"),
              (status = 401, description = "The CAPTCHA token was refused (captcha-refused)"),
              (status = 503, description = "The CAPTCHA cannot be checked now (captcha-unavailable); try again after Retry-After")))]
#[tracing::instrument(name = "auth.forgot_password", skip_all)]
pub async fn forgot_password(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<EmailRequest>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&body.email)?;
    state
        .identity
        .forgot_password(&ctx, &email, captcha_token(body.captcha_token.as_deref())?)
        .await?;
    Ok(accepted())
}

/// A new password with the token from the reset email.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "AZD0wopOfDudKl5vepi8DcbmYgAVR4Fz5ILhTX3U8eaZK0Y7qMmvNhR2h8Z3QxXy", "new_password": "a new and long passphrase"}))]
pub struct ResetRequest {
    /// The token from the link (64 characters of base64url).
    pub token: String,
    /// The new password: 12 to 128 characters, not a common password.
    #[schema(min_length = 12, max_length = 128)]
    pub new_password: String,
}

/// Sets a new password; every session ends.
#[utoipa::path(post, path = "/v1/auth/password/reset", tag = "auth", request_body = ResetRequest,
    responses((status = 204, description = "Password set (no body)"),
              (status = 422, description = "Invalid, used or expired token, or a weak password")))]
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
#[schema(example = json!({"current_password": "correct horse battery staple", "new_password": "a new and long passphrase"}))]
pub struct ChangeRequest {
    /// The current password.
    pub current_password: String,
    /// The new password: 12 to 128 characters, not a common password.
    #[schema(min_length = 12, max_length = 128)]
    pub new_password: String,
}

/// Changes the caller's password; the caller's other sessions end.
#[utoipa::path(post, path = "/v1/auth/password/change", tag = "auth", request_body = ChangeRequest, security(("bearer" = [])),
    responses((status = 204, description = "Password changed (no body)"),
              (status = 422, description = "Wrong current password, or a weak new one"),
              (status = 429, description = "Too many attempts for this account")))]
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

/// A JSON Web Key Set (RFC 7517), as `KeyRing::jwks` writes it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "2026-12-01T100000Z", "alg": "EdDSA", "use": "sig"}]}))]
pub struct JwkSet {
    /// The keys, signing one last.
    pub keys: Vec<Jwk>,
}

/// An Ed25519 public key as a JSON Web Key (RFC 8037).
#[derive(Debug, Serialize, ToSchema)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// The key id, as in the `kid` of tokens' headers.
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// The public keys that verify idp's access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JSON Web Key Set", body = JwkSet)))]
pub async fn jwks(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.identity.tokens().keys().jwks())
}
