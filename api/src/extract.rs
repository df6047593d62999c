//! Extractors: JSON bodies, query strings and path parameters that fail as problem documents,
//! the client's context for event metadata, and the authenticated caller.

use std::any::TypeId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::path::ErrorKind;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use idp_events::identity::api_key::Scope;
use idp_events::privacy::Personal;
use idp_events::{Metadata, StreamId};
use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use utoipa::openapi::path::ParameterIn;
use uuid::Uuid;

use crate::auth::api_key;
use crate::auth::request_limits::{RateDecision, RateStatus};
use crate::client_address::{self, TrustedProxies};
use crate::error::ApiError;
use crate::identity::SessionState;
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

/// A query string read into `T`, whose `IntoParams` is also its OpenAPI description: the
/// parameters the document lists are the only ones accepted.
///
/// Every answer is a 400 problem document: a parameter `T` does not describe (`unknown query
/// parameter "x"; known: ...`), a parameter given twice that is not an exploded array (`query
/// parameter x is given more than once`), or a value `T` refuses (`Failed to deserialize query
/// string: ...`, with the message of the field's own check). An exploded array (`type=A&type=B`)
/// is read as its unexploded form (`type=A,B`), so the field takes a comma-separated list. A
/// value with a NUL character is refused (`query parameter x holds a NUL character`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + IntoParams + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let uri = canonical_query::<T>(&parts.uri)?;
        let Query(value) = Query::<T>::try_from_uri(uri.as_ref().unwrap_or(&parts.uri))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
        Ok(Self(value))
    }
}

/// Checks the names in `uri`'s query against `T`'s parameters; when an exploded array is
/// repeated, the URI with its values joined by commas.
fn canonical_query<T: IntoParams + 'static>(uri: &Uri) -> Result<Option<Uri>, ApiError> {
    let query = uri.query().unwrap_or_default();
    if query.is_empty() {
        return Ok(None);
    }
    let params = known_params::<T>();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut joined = false;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let Some(param) = params.iter().find(|p| p.name == key) else {
            let known: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {key:?}; known: {}",
                known.join(", ")
            )));
        };
        // No text idp stores or looks up may hold a NUL (PostgreSQL's text refuses it).
        if value.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "query parameter {key} holds a NUL character"
            )));
        }
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            None => pairs.push((key.into_owned(), value.into_owned())),
            Some((_, values)) if param.explode => {
                values.push(',');
                values.push_str(&value);
                joined = true;
            }
            Some(_) => {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {key} is given more than once"
                )));
            }
        }
    }
    if !joined {
        return Ok(None);
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    Uri::builder()
        .path_and_query(format!("/?{query}"))
        .build()
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))
}

/// A query parameter as [`ApiQuery`] checks it: its name, and whether it may repeat.
#[derive(Debug)]
struct KnownParam {
    name: String,
    explode: bool,
}

/// The query parameters `T` describes, built from its `IntoParams` once per type (the full
/// OpenAPI description, schemas included, is not rebuilt for every request).
fn known_params<T: IntoParams + 'static>() -> &'static [KnownParam] {
    static KNOWN: OnceLock<Mutex<HashMap<TypeId, &'static [KnownParam]>>> = OnceLock::new();
    let mut known = KNOWN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    known.entry(TypeId::of::<T>()).or_insert_with(|| {
        let params: Vec<KnownParam> = T::into_params(|| Some(ParameterIn::Query))
            .into_iter()
            .map(|p| KnownParam {
                explode: p.explode == Some(true),
                name: p.name,
            })
            .collect();
        // One small list per query type, for the life of the process.
        Vec::leak(params)
    })
}

/// A value of the path, and the answer when the path holds something else.
pub trait PathParam: DeserializeOwned + Send {
    /// What the value is, for the 400 that names its parameter: `<name>: not <WHAT>`.
    const WHAT: &'static str;

    /// The answer to a path whose parameter `key` is not such a value: by default a 400
    /// (`id: not a UUID`).
    fn refused(key: &str) -> ApiError {
        ApiError::BadRequest(format!("{key}: not {}", Self::WHAT))
    }
}

impl PathParam for Uuid {
    const WHAT: &'static str = "a UUID";
}

impl PathParam for (Uuid, Uuid) {
    const WHAT: &'static str = "a UUID";
}

impl PathParam for String {
    const WHAT: &'static str = "UTF-8 text";
}

/// An optional JSON body: none (or only whitespace) and `null` are the default, anything else
/// must be JSON (by its `Content-Type`, else 415) of the right shape.
pub fn optional_json<T: Default + DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    optional_json_bytes(&body)
}

/// The JSON of an optional body, whatever its `Content-Type`: none (or only whitespace) and
/// `null` are the default; else 400 if it is not JSON, 422 if `T` refuses it.
pub fn optional_json_bytes<T: Default + DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            if e.is_data() {
                ApiError::Unprocessable(e.to_string())
            } else {
                ApiError::BadRequest(e.to_string())
            }
        })
}

/// Path parameters read into `T`. A parameter that is not a `T` gets `T`'s answer
/// ([`PathParam::refused`]): a 400 naming the parameter unless the type says otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: PathParam,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_refusal::<T>(&rejection)),
        }
    }
}

fn path_refusal<T: PathParam>(rejection: &PathRejection) -> ApiError {
    if rejection.status().is_server_error() {
        // A route whose parameters do not fit the handler's: a bug, not the caller's fault.
        return ApiError::Internal(anyhow::anyhow!(
            "path parameters: {}",
            rejection.body_text()
        ));
    }
    let key = match rejection {
        PathRejection::FailedToDeserializePathParams(err) => match err.kind() {
            ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::DeserializeError { key, .. }
            | ErrorKind::InvalidUtf8InPathParam { key } => Some(key.as_str()),
            _ => None,
        },
        _ => None,
    };
    T::refused(key.unwrap_or("path"))
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
    /// What authentication learnt (read when the metadata is made, after it ran).
    pub caller: Option<CallerSlot>,
}

impl ClientContext {
    /// Event metadata for an action of `actor`.
    pub fn metadata(&self, actor: impl Into<String>) -> Metadata {
        Metadata {
            actor: Some(actor.into()),
            request_id: self.request_id.clone(),
            correlation_id: self.correlation_id,
            causation_id: None,
            client_ip: self.ip.map(|ip| Personal::Known(ip.to_string())),
            user_agent: self.user_agent.clone().map(Personal::Known),
            api_key_id: self
                .caller
                .as_ref()
                .and_then(|CallerSlot(slot)| slot.get())
                .and_then(|note| note.api_key_id),
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
            caller: parts.extensions.get::<CallerSlot>().cloned(),
        })
    }
}

/// The caller, authenticated by a valid access token of a session that is still active, or by
/// an API key that is neither revoked nor expired.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The account: a person's, or a service account's (only with an API key).
    pub user_id: Uuid,
    /// The session the token belongs to, or the API key's id.
    pub session_id: Uuid,
    /// Roles as of the token (a service account's as its key's lookup read them, in this
    /// request; empty for a person's API key: routes that need roles read them as they are
    /// now).
    pub roles: Vec<String>,
    /// The API key the request was made with, if it was.
    pub key: Option<KeyGrant>,
}

/// What an API key allows its request.
#[derive(Debug, Clone)]
pub struct KeyGrant {
    /// The key.
    pub key_id: Uuid,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Whether its owner is a service account.
    pub service_account: bool,
}

impl KeyGrant {
    /// Whether the key has `scope` (`projects:write` includes `projects:read`, `admin`
    /// includes `audit:read`).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|held| {
            *held == scope
                || matches!(
                    (*held, scope),
                    (Scope::ProjectsWrite, Scope::ProjectsRead) | (Scope::Admin, Scope::AuditRead)
                )
        })
    }
}

impl AuthUser {
    /// The actor name for event metadata: `user-<uuid>` or `service-account-<uuid>`.
    pub fn actor(&self) -> String {
        if self.key.as_ref().is_some_and(|k| k.service_account) {
            StreamId::service_account(self.user_id).into()
        } else {
            StreamId::user(self.user_id).into()
        }
    }

    /// Refuses an API key that lacks `scope` (403 `insufficient-scope`); a session passes.
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        match &self.key {
            Some(key) if !key.allows(scope) => Err(ApiError::MissingScope(scope)),
            _ => Ok(()),
        }
    }
}

/// The scopes an API key needs on a group of routes: one to read (`GET`, `HEAD`), one for the
/// rest. Routes without one are for signed-in sessions only; the administration routes name
/// theirs through their permission ([`crate::auth::permissions`]).
#[derive(Debug, Clone, Copy)]
pub struct KeyScopes {
    /// For `GET` and `HEAD`.
    pub read: Scope,
    /// For every other method.
    pub write: Scope,
}

impl KeyScopes {
    /// The scope `method` needs.
    pub fn for_method(self, method: &axum::http::Method) -> Scope {
        if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
            self.read
        } else {
            self.write
        }
    }
}

/// What authentication learnt about a request, for the events it records (the API key) and
/// for its answer's `RateLimit-*` headers. The outermost middleware puts an empty one in each
/// request ([`CallerSlot`]); authentication fills it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerNote {
    /// The API key the request was made with.
    pub api_key_id: Option<Uuid>,
    /// Where the caller's rate limit stands (`None`: limits are off).
    pub rate: Option<RateStatus>,
}

/// The request's [`CallerNote`], once authentication has run.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(pub Arc<OnceLock<CallerNote>>);

/// The bearer credential of a request, if any.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The caller of a valid access token whose session is active, or of a valid API key, with the
/// session as found; counted against the rate limit of the account's plan (and of the key).
pub(crate) async fn authenticate(
    parts: &Parts,
    state: &AppState,
) -> Result<(AuthUser, SessionState), ApiError> {
    let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
    let (user, session) = if api_key::looks_like_key(token) {
        // Shape and checksum first: a malformed key costs no lookup.
        let presented = api_key::parse(token).map_err(ApiError::MalformedApiKey)?;
        let holder = state
            .access
            .key_holder(&presented.hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let user = AuthUser {
            user_id: holder.owner_id,
            session_id: holder.key_id,
            roles: holder.roles,
            key: Some(KeyGrant {
                key_id: holder.key_id,
                scopes: holder.scopes,
                service_account: holder.service_account,
            }),
        };
        // A key was made in a session that had passed enrolment; it has no factor of its own.
        let session = SessionState {
            active: true,
            second_factor: true,
            plan: Some(holder.plan),
        };
        (user, session)
    } else {
        let claims = state
            .identity
            .tokens()
            .verify_access(token)
            .map_err(|err| {
                tracing::debug!(reason = ?err, "access token refused");
                ApiError::Unauthorized
            })?;
        let session = state.identity.session_state(claims.sid).await?;
        if !session.active {
            return Err(ApiError::Unauthorized);
        }
        let user = AuthUser {
            user_id: claims.sub,
            session_id: claims.sid,
            roles: claims.roles,
            key: None,
        };
        (user, session)
    };
    // The request's span (see `startup::http_span`) names the caller from here on.
    tracing::Span::current().record("user.id", tracing::field::display(user.user_id));
    let key_id = user.key.as_ref().map(|k| k.key_id);
    let decision = state
        .access
        .count_request(user.user_id, key_id, session.plan.as_deref())
        .await?;
    if let Some(CallerSlot(slot)) = parts.extensions.get::<CallerSlot>() {
        let _ = slot.set(CallerNote {
            api_key_id: key_id,
            rate: decision.map(|d| d.status()),
        });
    }
    if let Some(RateDecision::Limited { retry_after, .. }) = decision {
        metrics::counter!("idp_rate_limited_total", "kind" => "plan").increment(1);
        return Err(ApiError::TooManyRequests {
            retry_after_secs: retry_after.as_secs().max(1),
        });
    }
    Ok((user, session))
}

/// Refuses an API key on a route that names no scope for keys (403 `session-required`) or
/// whose scope it lacks (403 `insufficient-scope`).
fn check_key_route(parts: &Parts, user: &AuthUser) -> Result<(), ApiError> {
    if user.key.is_none() {
        return Ok(());
    }
    let scopes = parts
        .extensions
        .get::<KeyScopes>()
        .ok_or(ApiError::SessionRequired)?;
    user.require_scope(scopes.for_method(&parts.method))
}

/// [`authenticate`], refusing a holder of a role of `MFA_REQUIRED_ROLES` (as of the token) who
/// has no second factor on (403 `second-factor-enrolment-required`).
pub(crate) async fn authenticate_enrolled(
    parts: &Parts,
    state: &AppState,
) -> Result<(AuthUser, SessionState), ApiError> {
    let (user, session) = authenticate(parts, state).await?;
    if state.identity.must_enrol(&user.roles, &session) {
        return Err(ApiError::SecondFactorEnrolmentRequired);
    }
    Ok((user, session))
}

/// An authenticated caller. With `MFA_REQUIRED_ROLES`, a holder of such a role (as of the
/// token) who has no second factor on is refused (403 `second-factor-enrolment-required`):
/// only the enrolment routes ([`EnrollingUser`]) are open to them.
impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = authenticate_enrolled(parts, state).await?.0;
        check_key_route(parts, &user)?;
        Ok(user)
    }
}

/// An authenticated caller on a route that enrols a second factor: open to those who must
/// enrol one before anything else.
#[derive(Debug, Clone)]
pub struct EnrollingUser(pub AuthUser);

impl FromRequestParts<AppState> for EnrollingUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = authenticate(parts, state).await?.0;
        if user.key.is_some() {
            return Err(ApiError::SessionRequired);
        }
        Ok(Self(user))
    }
}
