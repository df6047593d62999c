//! Extractors: JSON bodies that fail as problem documents, the client's context for event
//! metadata, and the authenticated caller.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use idp_events::Metadata;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::client_address::{self, TrustedProxies};
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

/// The correlation id of a request: made by the server for every request (never taken from the
/// client), carried by the request's events and its log lines. Set by `startup`'s outermost
/// middleware as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelationId(pub Uuid);

/// Longest client-chosen request id kept; longer or odd ones are replaced by one of ours.
pub const MAX_CLIENT_REQUEST_ID_LEN: usize = 64;

/// Whether a client's `X-Request-Id` may be kept: a short token of `[A-Za-z0-9._-]`. Anything
/// else would end up in the log (which never forgets) and in every log line of the request.
pub fn acceptable_request_id(id: &[u8]) -> bool {
    (1..=MAX_CLIENT_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Who is calling from where: the request id, client address and user agent, as recorded in the
/// metadata of the events a request causes.
#[derive(Debug, Clone, Default)]
pub struct ClientContext {
    /// The request id.
    pub request_id: Option<String>,
    /// The request's correlation id (the server's own).
    pub correlation_id: Option<Uuid>,
    /// Client IP as this server may believe it (see [`crate::client_address`]).
    pub ip: Option<IpAddr>,
    /// The `User-Agent` header, shortened.
    pub user_agent: Option<String>,
}

impl ClientContext {
    /// Event metadata for an action of `actor`.
    pub fn metadata(&self, actor: impl Into<String>) -> Metadata {
        Metadata {
            actor: Some(actor.into()),
            request_id: self.request_id.clone(),
            correlation_id: self.correlation_id,
            causation_id: None,
            client_ip: self.ip.map(|ip| ip.to_string()),
            user_agent: self.user_agent.clone(),
        }
    }

    /// The key rate limits use for this client: its IPv4 address or its IPv6 /64.
    pub fn ip_key(&self) -> String {
        self.ip
            .map_or_else(|| "unknown".to_owned(), client_address::rate_key)
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
        let trusted = parts.extensions.get::<Arc<TrustedProxies>>();
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| match trusted {
                Some(trusted) => trusted.client_ip(addr.ip(), &parts.headers),
                None => addr.ip(),
            });
        let correlation_id = parts
            .extensions
            .get::<CorrelationId>()
            .map(|CorrelationId(id)| *id);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
        Ok(Self {
            request_id,
            correlation_id,
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
