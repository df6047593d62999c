//! HTTP routes. Each resource module exposes `router()`; [`router`] assembles them.

pub mod account;
pub mod admin_audit;
pub mod admin_events;
pub mod admin_jobs;
pub mod admin_streams;
pub mod admin_users;
pub mod api_keys;
pub mod auth;
pub mod docs;
pub mod federation;
pub mod openapi;
pub mod paging;
pub mod plans;
pub mod projects;
pub mod service_accounts;
pub mod sessions;
pub mod templates;
pub mod two_factor;

use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Router};
use idp_events::identity::api_key::Scope;
use idp_ops::health::Health;

use crate::error::problem;
use crate::extract::KeyScopes;
use crate::startup::AppState;

/// Every route of the API.
pub fn router(state: AppState, health: Health) -> Router {
    Router::new()
        .merge(auth::router())
        .merge(two_factor::router())
        .merge(account::router())
        .merge(federation::router())
        .merge(sessions::router())
        .merge(admin_users::router())
        .merge(admin_audit::router())
        .merge(admin_events::router())
        .merge(admin_jobs::router())
        .merge(admin_streams::router())
        .merge(api_keys::router())
        .merge(service_accounts::router())
        .merge(plans::router())
        // What an API key needs here; other routes are for sessions (or name their scope
        // through their permission).
        .merge(templates::router().route_layer(Extension(KeyScopes {
            read: Scope::TemplatesRead,
            write: Scope::TemplatesRead,
        })))
        .merge(projects::router().route_layer(Extension(KeyScopes {
            read: Scope::ProjectsRead,
            write: Scope::ProjectsWrite,
        })))
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
