//! `GET /openapi.json`: the OpenAPI document, generated from the handlers and types.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::startup::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "idp", description = "Event-sourced backend for internal developer platforms."),
    paths(
        super::auth::register, super::auth::verify_email, super::auth::resend_verification,
        super::auth::login, super::auth::refresh, super::auth::logout, super::auth::me,
        super::auth::forgot_password, super::auth::reset_password, super::auth::change_password,
        super::auth::jwks, super::admin_users::unlock,
        super::admin_users::list_users, super::admin_users::get_user, super::admin_users::lock,
        super::admin_users::set_roles, super::admin_users::revoke_sessions,
        super::admin_jobs::list_dead, super::admin_jobs::retry,
        super::admin_events::list_events, super::admin_events::export_events,
        super::admin_streams::stream_history,
        super::admin_audit::verify, super::admin_audit::latest_seal,
        super::templates::list_templates,
        super::projects::create_project, super::projects::list_projects,
        super::projects::get_project, super::projects::retry_project,
        super::projects::delete_project, super::projects::issue_credentials,
        super::projects::project_events,
    ),
    components(schemas(crate::error::Problem)),
    modifiers(&BearerAuth),
    tags((name = "auth", description = "Registration, sign-in, tokens and passwords"),
         (name = "admin", description = "Administration (admin role)"),
         (name = "projects", description = "Project templates, requests, provisioning status and live events"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.bearer_format = Some("JWT".into());
            components.add_security_scheme("bearer", SecurityScheme::Http(http));
        }
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The route serving it.
pub fn router() -> Router<AppState> {
    let doc = document();
    Router::new().route("/openapi.json", get(move || async move { Json(doc) }))
}
