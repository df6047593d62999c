//! HTTP routes. Each resource module exposes `router()`; [`router`] assembles them.

pub mod account;
pub mod admin_audit;
pub mod admin_events;
pub mod admin_jobs;
pub mod admin_streams;
pub mod admin_users;
pub mod auth;
pub mod docs;
pub mod openapi;
pub mod paging;
pub mod projects;
pub mod sessions;
pub mod templates;
pub mod two_factor;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use idp_ops::health::Health;

use crate::error::problem;
use crate::startup::AppState;

/// Every route of the API.
pub fn router(state: AppState, health: Health) -> Router {
    Router::new()
        .merge(auth::router())
        .merge(two_factor::router())
        .merge(account::router())
        .merge(sessions::router())
        .merge(admin_users::router())
        .merge(admin_audit::router())
        .merge(admin_events::router())
        .merge(admin_jobs::router())
        .merge(admin_streams::router())
        .merge(templates::router())
        .merge(projects::router())
        .merge(openapi::router(&state.catalogue))
        .merge(docs::router())
        .with_state(state)
        .merge(idp_ops::health::public_router(health))
        .fallback(not_found)
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        Some("no such route".into()),
    )
}
