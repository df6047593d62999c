//! Extractors: JSON bodies that fail as problem documents, the client's context for event
//! metadata, and the authenticated caller.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use idp_events::Metadata;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;
use crate::startup::AppState;

/// A JSON body. Malformed JSON is 400, a body of the wrong shape (missing or unknown fields,
/// wrong types) is 422, a missing or wrong content type is 415, a body over the limit is 413 —
/// all as problem documents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::Unprocessable(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge
                }
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
    }
}

/// The correlation id a request's events carry, and its log lines: the request id, when it is a
/// UUID (the API makes one when the client sent none).
pub fn correlation_of(request_id: &str) -> Option<Uuid> {
    Uuid::parse_str(request_id).ok()
}

/// Who is calling from where: the request id, client address and user agent, as recorded in the
/// metadata of the events a request causes.
#[derive(Debug, Clone, Default)]
pub struct ClientContext {
    /// The request id.
    pub request_id: Option<String>,
    /// Client IP as seen by this server.
    pub ip: Option<String>,
    /// The `User-Agent` header, shortened.
    pub user_agent: Option<String>,
}

impl ClientContext {
    /// Event metadata for an action of `actor`.
    pub fn metadata(&self, actor: impl Into<String>) -> Metadata {
        Metadata {
            actor: Some(actor.into()),
            request_id: self.request_id.clone(),
            correlation_id: self.request_id.as_deref().and_then(correlation_of),
            causation_id: None,
            client_ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }

    /// The key rate limits use for this client.
    pub fn ip_key(&self) -> &str {
        self.ip.as_deref().unwrap_or("unknown")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
        Ok(Self {
            request_id,
            ip,
            user_agent,
        })
    }
}

/// The caller, authenticated by a valid access token of a session that is still active.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user.
    pub user_id: Uuid,
    /// The session the token belongs to.
    pub session_id: Uuid,
    /// Roles as of the token.
    pub roles: Vec<String>,
}

impl AuthUser {
    /// The actor name for event metadata.
    pub fn actor(&self) -> String {
        format!("user-{}", self.user_id)
    }

    /// Whether the caller is an administrator now: the account's current state decides, not
    /// the token's roles, so a role granted or removed takes effect on the next request.
    pub async fn is_admin(&self, state: &AppState) -> Result<bool, ApiError> {
        let account = state.identity.load_user(self.user_id).await?;
        Ok(account.has_role(idp_events::identity::user::ROLE_ADMIN))
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(ApiError::Unauthorized)?;
        let claims = state
            .identity
            .tokens()
            .verify_access(token.trim())
            .map_err(|err| {
                tracing::debug!(reason = ?err, "access token refused");
                ApiError::Unauthorized
            })?;
        if !state.identity.session_is_active(claims.sid).await? {
            return Err(ApiError::Unauthorized);
        }
        // The request's span (see `startup::http_span`) names the caller from here on.
        tracing::Span::current().record("user.id", tracing::field::display(claims.sub));
        Ok(Self {
            user_id: claims.sub,
            session_id: claims.sid,
            roles: claims.roles,
        })
    }
}

/// An authenticated administrator. The role is checked against the current state of the
/// account on every request, not against the token, so a revoked role takes effect at once.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.is_admin(state).await? {
            return Err(ApiError::Forbidden);
        }
        Ok(Self(user))
    }
}
