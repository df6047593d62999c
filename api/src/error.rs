//! Errors of the API, answered as RFC 9457 `application/problem+json`.
//!
//! Policy: each variant documents its status. Client errors say what was wrong; server errors
//! say only that something failed and carry the request id, while the cause is logged once, here,
//! where the error becomes a response. Nothing internal (SQL, stack, configuration) is sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, bad header).
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or invalid credentials. One uniform body whatever the reason.
    #[error("authentication required")]
    Unauthorized,
    /// 401 for sign-in: the same answer for an unknown email, a wrong password, an unverified
    /// or a locked account.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// 401 for the second step of a sign-in: the same answer for an unknown, expired or used
    /// challenge, a wrong, malformed or replayed code, and a locked second factor.
    #[error("second factor refused")]
    SecondFactorRefused,
    /// 400 for sign-in, registration and the email requests: after too many failed sign-ins
    /// for the account or from the address, a CAPTCHA token (`captcha_token`) is needed.
    #[error("a CAPTCHA is required")]
    CaptchaRequired,
    /// 401: the CAPTCHA provider refused the token.
    #[error("the CAPTCHA token was refused")]
    CaptchaRefused,
    /// 401: the bearer credential starts like an API key (`idp_`) but is not one idp could
    /// have made (its shape or checksum is wrong); refused without a lookup.
    #[error("{0}")]
    MalformedApiKey(crate::auth::api_key::MalformedKey),
    /// 402: the request would take the account past a limit of its plan or its own spend cap.
    #[error("{limit} would be exceeded")]
    QuotaExceeded {
        /// The limit: `live_projects` or `monthly_spend_cents`.
        limit: &'static str,
        /// What the account uses now.
        usage: u64,
        /// What the request would add.
        requested: u64,
        /// The limit's value.
        cap: u64,
    },
    /// A refusal with a problem type of its own (federated sign-in: `provider-refused`,
    /// `federation-state-invalid`, `link-required`, ...); `detail` says what to do.
    #[error("{detail}")]
    Refused {
        /// The status (4xx, or 502 when an identity provider failed).
        status: StatusCode,
        /// The problem type's slug.
        slug: &'static str,
        /// What happened.
        detail: String,
    },
    /// 403: authenticated, but not allowed.
    #[error("forbidden")]
    Forbidden,
    /// 403: the API key lacks the scope the route needs.
    #[error("the API key lacks the scope {0}")]
    MissingScope(idp_events::identity::api_key::Scope),
    /// 403: the route is for a person's signed-in session (their account, sessions, second
    /// factor, API keys); API keys cannot use it.
    #[error("this route needs a signed-in session; API keys cannot use it")]
    SessionRequired,
    /// 403: the caller's role must have a second factor (`MFA_REQUIRED_ROLES`), and they have
    /// none yet: only enrolment is open to them.
    #[error("second factor enrolment required")]
    SecondFactorEnrolmentRequired,
    /// 404: no such route or resource.
    #[error("not found")]
    NotFound,
    /// 413: the body is larger than `API_BODY_LIMIT_BYTES`.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 415: the body is not JSON.
    #[error("expected a JSON body (content-type: application/json)")]
    UnsupportedMediaType,
    /// 422: the request is well-formed but its content is refused.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: too many requests; try again after the given seconds.
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until the limit resets.
        retry_after_secs: u64,
    },
    /// 409: the resource changed since the caller read it, or a unique value is taken.
    #[error("{0}")]
    Conflict(String),
    /// 410: the resource was handed out once and is gone for good (e.g. a one-time secret).
    #[error("{0}")]
    Gone(String),
    /// 503: too much work is waiting (password computations beyond `ARGON2_MAX_QUEUE`); try
    /// again after the given seconds.
    #[error("overloaded")]
    Overloaded {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// 503: the CAPTCHA provider cannot be asked, so the request is refused (fail closed).
    #[error("the CAPTCHA cannot be checked now")]
    CaptchaUnavailable {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// 503: a dependency (database, broker) is unavailable; retrying later may work.
    #[error("service unavailable")]
    Unavailable,
    /// 503: the answer must wait for something that should end soon (e.g. a transaction
    /// writing to the event log); the detail names it, `Retry-After` says when to try again.
    #[error("{detail}")]
    RetryLater {
        /// What the answer waits for.
        detail: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// 500: a bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The problem document (RFC 9457), the body of every error answer
/// (`application/problem+json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://idp.dev/problems/not-found",
    "title": "Not Found",
    "status": 404,
    "request_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d"
}))]
pub struct Problem {
    /// A URI naming the kind of problem: `https://idp.dev/problems/<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind: the status's reason phrase.
    pub title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What happened, for this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request's `x-request-id`, to quote when reporting the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For a 402: the limit the request would exceed, `live_projects` or
    /// `monthly_spend_cents`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub limit: Option<&'static str>,
    /// For a 402: what the account uses now (live projects, or their monthly cost in cents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
    /// For a 402: the limit's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<u64>,
}

/// What a 402 names: the limit, the account's usage and the limit's value.
#[derive(Debug, Clone, Copy)]
struct QuotaProblem {
    limit: &'static str,
    usage: u64,
    cap: u64,
}

tokio::task_local! {
    /// The id of the request being handled, set by the request-id middleware.
    pub static REQUEST_ID: String;
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::CaptchaRequired => StatusCode::BAD_REQUEST,
            Self::Unauthorized
            | Self::InvalidCredentials
            | Self::SecondFactorRefused
            | Self::CaptchaRefused
            | Self::MalformedApiKey(_) => StatusCode::UNAUTHORIZED,
            Self::QuotaExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::Refused { status, .. } => *status,
            Self::Forbidden
            | Self::SecondFactorEnrolmentRequired
            | Self::MissingScope(_)
            | Self::SessionRequired => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::Unavailable
            | Self::Overloaded { .. }
            | Self::RetryLater { .. }
            | Self::CaptchaUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Unauthorized => "unauthorized",
            Self::InvalidCredentials => "invalid-credentials",
            Self::CaptchaRequired => "captcha-required",
            Self::CaptchaRefused => "captcha-refused",
            Self::CaptchaUnavailable { .. } => "captcha-unavailable",
            Self::Forbidden => "forbidden",
            Self::MalformedApiKey(_) => "malformed-api-key",
            Self::QuotaExceeded { .. } => "quota-exceeded",
            Self::Refused { slug, .. } => slug,
            Self::MissingScope(_) => "insufficient-scope",
            Self::SessionRequired => "session-required",
            Self::SecondFactorRefused => "second-factor-refused",
            Self::SecondFactorEnrolmentRequired => "second-factor-enrolment-required",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unprocessable(_) => "unprocessable",
            Self::TooManyRequests { .. } => "too-many-requests",
            Self::NotFound => "not-found",
            Self::PayloadTooLarge => "payload-too-large",
            Self::Conflict(_) => "conflict",
            Self::Gone(_) => "gone",
            Self::Unavailable | Self::RetryLater { .. } => "unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::Internal(_) => "internal",
        }
    }
}

impl ApiError {
    /// [`ApiError::Refused`] with `err`'s text as the detail.
    pub fn refused(status: StatusCode, slug: &'static str, err: &impl std::fmt::Display) -> Self {
        Self::Refused {
            status,
            slug,
            detail: err.to_string(),
        }
    }
}

impl From<crate::auth::password::HashError> for ApiError {
    fn from(err: crate::auth::password::HashError) -> Self {
        match err {
            crate::auth::password::HashError::Busy => Self::Overloaded {
                retry_after_secs: 1,
            },
            other => Self::Internal(other.into()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable
        } else {
            Self::Internal(err.into())
        }
    }
}

impl From<idp_events::ReadError> for ApiError {
    fn from(err: idp_events::ReadError) -> Self {
        match err {
            idp_events::ReadError::Database(e)
            | idp_events::ReadError::Keys(idp_events::privacy::SubjectKeysError::Database(e)) => {
                e.into()
            }
            other @ idp_events::ReadError::Keys(_) => Self::Internal(other.into()),
        }
    }
}

impl From<idp_events::AppendError> for ApiError {
    fn from(err: idp_events::AppendError) -> Self {
        use idp_events::AppendError as E;
        match err {
            E::Conflict { .. } | E::ReservationTaken { .. } | E::DuplicateEvent => {
                Self::Conflict(err.to_string())
            }
            E::InvalidEvent(detail) => Self::Unprocessable(detail),
            E::Personal(idp_events::privacy::SubjectKeysError::Erased(_)) => {
                Self::Gone("the person is erased".into())
            }
            E::Personal(idp_events::privacy::SubjectKeysError::Database(db)) => db.into(),
            E::Database(ref db) if is_unavailable(db) => Self::Unavailable,
            other => Self::Internal(other.into()),
        }
    }
}

/// Connection-level failures mean the database is away, not that the code is wrong: no
/// connection in time, a broken one, or a server stopping or starting (`terminating connection
/// due to administrator command` and the like); see [`idp_ops::database::is_unavailable`].
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    idp_ops::database::is_unavailable(err)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                None
            }
            Self::Unavailable => {
                tracing::warn!("request failed: a dependency is unavailable");
                Some("a dependency is unavailable; try again shortly".to_owned())
            }
            Self::NotFound | Self::Forbidden => None,
            Self::Unauthorized => Some("a valid access token is required".to_owned()),
            Self::InvalidCredentials => Some(
                "the email or password is incorrect, or the account cannot sign in now".to_owned(),
            ),
            Self::SecondFactorRefused => Some(
                "the challenge or the code is not valid (wrong, used or expired), or the second factor cannot be used now; sign in again"
                    .to_owned(),
            ),
            Self::CaptchaRequired => Some(
                "too many failed sign-ins for this account or from this address: solve the CAPTCHA and send its token as captcha_token"
                    .to_owned(),
            ),
            Self::CaptchaRefused => Some(
                "the CAPTCHA token was refused (wrong, expired or used): solve a new one".to_owned(),
            ),
            Self::CaptchaUnavailable { retry_after_secs } => Some(format!(
                "the CAPTCHA cannot be checked now; try again in {retry_after_secs} s"
            )),
            Self::SecondFactorEnrolmentRequired => Some(
                "your role requires a second factor: enrol one (POST /v1/auth/2fa/enable-init) before anything else"
                    .to_owned(),
            ),
            Self::TooManyRequests { retry_after_secs } => Some(format!(
                "too many requests; try again in {retry_after_secs} s"
            )),
            Self::Overloaded { retry_after_secs } => Some(format!(
                "too many requests are waiting; try again in {retry_after_secs} s"
            )),
            Self::RetryLater { detail, .. }
            | Self::Conflict(detail)
            | Self::BadRequest(detail)
            | Self::Unprocessable(detail)
            | Self::Gone(detail)
            | Self::Refused { detail, .. } => Some(detail.clone()),
            Self::QuotaExceeded {
                limit,
                usage,
                requested,
                cap,
            } => Some(format!(
                "{limit}: {usage} in use, this request adds {requested}, the limit is {cap}"
            )),
            Self::UnsupportedMediaType
            | Self::PayloadTooLarge
            | Self::MalformedApiKey(_)
            | Self::MissingScope(_)
            | Self::SessionRequired => Some(self.to_string()),
        };
        let mut response = match &self {
            Self::QuotaExceeded {
                limit, usage, cap, ..
            } => problem_with(
                status,
                self.slug(),
                detail,
                Some(QuotaProblem {
                    limit,
                    usage: *usage,
                    cap: *cap,
                }),
            ),
            _ => problem(status, self.slug(), detail),
        };
        match self {
            Self::TooManyRequests { retry_after_secs }
            | Self::Overloaded { retry_after_secs }
            | Self::CaptchaUnavailable { retry_after_secs }
            | Self::RetryLater {
                retry_after_secs, ..
            } => {
                if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        // Every 401 names the scheme to authenticate with (RFC 9110, 15.5.2).
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A problem+json response.
pub fn problem(status: StatusCode, slug: &str, detail: Option<String>) -> Response {
    problem_with(status, slug, detail, None)
}

fn problem_with(
    status: StatusCode,
    slug: &str,
    detail: Option<String>,
    quota: Option<QuotaProblem>,
) -> Response {
    let body = Problem {
        kind: format!("https://idp.dev/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        limit: quota.map(|q| q.limit),
        usage: quota.map(|q| q.usage),
        cap: quota.map(|q| q.cap),
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
