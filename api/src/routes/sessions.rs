//! A person's own sessions: `GET /v1/account/sessions` lists them, `DELETE
//! /v1/account/sessions/{id}` ends one, `POST /v1/account/sessions/revoke-others` ends all but
//! the caller's; and `POST /v1/auth/revoke-session`, where the link of a new-device email ends
//! the session it is about without signing in.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use uuid::Uuid;

use super::auth::TokenRequest;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, AuthUser, ClientContext, PathParam};
use crate::identity::{OtherSessionsRevoked, SessionView};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/account/sessions", get(list_sessions))
        .route("/v1/account/sessions/{id}", delete(revoke_session))
        .route("/v1/account/sessions/revoke-others", post(revoke_others))
        .route("/v1/auth/revoke-session", post(revoke_from_notice))
}

/// The caller's active sessions.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Sessions {
    /// Newest first.
    pub sessions: Vec<SessionView>,
}

/// A session id in a path; anything else is a session the caller does not have (404).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl PathParam for SessionId {
    const WHAT: &'static str = "a session id";

    fn refused(_key: &str) -> ApiError {
        ApiError::NotFound
    }
}

/// The caller's active sessions (neither ended nor expired), newest first: when each started
/// and was last refreshed, the device and the approximate network it signed in from, and which
/// one is the caller's.
#[utoipa::path(get, path = "/v1/account/sessions", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "The caller's sessions", body = Sessions,
               example = json!({"sessions": [
                   {"id": "0193a0c4-5b1e-7c3a-9f1d-2a4b6c8d0e1f", "created_at": "2026-12-07T09:00:00Z",
                    "last_used_at": "2026-12-07T09:45:00Z", "device": "Firefox on Linux",
                    "network": "203.0.113.0/24", "current": true},
                   {"id": "0193a0c4-5b1e-7c3a-9f1d-2a4b6c8d0e20", "created_at": "2026-12-01T18:30:00Z",
                    "last_used_at": "2026-12-06T20:10:00Z", "device": "Safari on iOS",
                    "network": "2001:db8:1::/48", "current": false}]})),
              (status = 401, description = "No valid token")))]
#[tracing::instrument(name = "account.sessions", skip_all, fields(user.id = %user.user_id))]
pub async fn list_sessions(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Sessions>, ApiError> {
    let sessions = state
        .identity
        .sessions_of(user.user_id, user.session_id)
        .await?;
    Ok(Json(Sessions { sessions }))
}

/// Ends one of the caller's sessions (the current one too, like signing out): its refresh
/// token and its access tokens are refused from now on. Recorded as `SessionRevoked` (reason
/// `owner`). Ending an ended session again changes nothing.
#[utoipa::path(delete, path = "/v1/account/sessions/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "A session of the caller")),
    responses((status = 204, description = "Ended"),
              (status = 401, description = "No valid token"),
              (status = 404, description = "The caller has no such session")))]
#[tracing::instrument(name = "account.revoke_session", skip_all, fields(user.id = %user.user_id))]
pub async fn revoke_session(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(SessionId(id)): ApiPath<SessionId>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .revoke_own_session(&ctx, user.user_id, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of the caller but the one of this request.
#[utoipa::path(post, path = "/v1/account/sessions/revoke-others", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "How many sessions ended", body = OtherSessionsRevoked,
               example = json!({"revoked": 2})),
              (status = 401, description = "No valid token")))]
#[tracing::instrument(name = "account.revoke_other_sessions", skip_all, fields(user.id = %user.user_id))]
pub async fn revoke_others(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
) -> Result<Json<OtherSessionsRevoked>, ApiError> {
    let revoked = state
        .identity
        .revoke_other_sessions(&ctx, user.user_id, user.session_id)
        .await?;
    Ok(Json(revoked))
}

/// Ends the session a new-device email is about, with the token of its link
/// (`{PUBLIC_BASE_URL}/revoke-session?token=...`); no sign-in needed. Using the link again
/// changes nothing.
#[utoipa::path(post, path = "/v1/auth/revoke-session", tag = "auth", request_body = TokenRequest,
    responses((status = 204, description = "The session is ended"),
              (status = 422, description = "Invalid token")))]
#[tracing::instrument(name = "auth.revoke_session", skip_all)]
pub async fn revoke_from_notice(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<StatusCode, ApiError> {
    state.identity.revoke_by_notice(&ctx, &body.token).await?;
    Ok(StatusCode::NO_CONTENT)
}
