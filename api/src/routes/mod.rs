//! HTTP routes. Each resource module exposes `router()`; [`router`] assembles them.

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use idp_ops::health::Health;

use crate::error::problem;

/// Every route of the API.
pub fn router(health: Health) -> Router {
    Router::new()
        .merge(idp_ops::health::router(health))
        .fallback(not_found)
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        Some("no such route".into()),
    )
}
