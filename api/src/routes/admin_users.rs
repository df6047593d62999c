//! `/v1/admin/users/*`: account administration (admin role required on every request).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{AdminUser, ClientContext};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/users/{id}/unlock", post(unlock))
}

/// Lifts the lock of an account before it ends.
#[utoipa::path(post, path = "/v1/admin/users/{id}/unlock", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 204, description = "Unlocked"),
              (status = 403, description = "Not an administrator", content_type = "application/problem+json"),
              (status = 404, description = "No such account", content_type = "application/problem+json"),
              (status = 422, description = "The account is not locked", content_type = "application/problem+json")))]
#[tracing::instrument(name = "admin.unlock", skip_all, fields(user.id = %id))]
pub async fn unlock(
    State(state): State<AppState>,
    ctx: ClientContext,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.identity.unlock(&ctx, &admin.actor(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}
