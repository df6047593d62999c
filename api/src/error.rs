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
    /// 404: no such route or resource.
    #[error("not found")]
    NotFound,
    /// 409: the resource changed since the caller read it, or a unique value is taken.
    #[error("{0}")]
    Conflict(String),
    /// 503: a dependency (database, broker) is unavailable; retrying later may work.
    #[error("service unavailable")]
    Unavailable,
    /// 500: a bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request's `x-request-id`, to quote when reporting the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

tokio::task_local! {
    /// The id of the request being handled, set by the request-id middleware.
    pub static REQUEST_ID: String;
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::Conflict(_) => "conflict",
            Self::Unavailable => "unavailable",
            Self::Internal(_) => "internal",
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
            E::Database(ref db) if is_unavailable(db) => Self::Unavailable,
            other => Self::Internal(other.into()),
        }
    }
}

/// Connection-level failures mean the database is away, not that the code is wrong.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
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
            Self::NotFound => None,
            Self::Conflict(detail) => Some(detail.clone()),
        };
        problem(status, self.slug(), detail)
    }
}

/// A problem+json response.
pub fn problem(status: StatusCode, slug: &str, detail: Option<String>) -> Response {
    let body = Problem {
        kind: format!("https://idp.dev/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        request_id: REQUEST_ID.try_with(Clone::clone).ok(),
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
