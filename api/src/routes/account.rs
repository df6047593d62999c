//! `/v1/account`: what a person can do about the data idp holds about them: export it all
//! (`GET /v1/account/export`), erase themselves (`DELETE /v1/account`), and give or withdraw
//! consent (`GET /v1/account/consents`, `PUT /v1/account/consents/{purpose}`). The
//! administrators' equivalents of the first two are `GET /v1/admin/users/{id}/export` and
//! `POST /v1/admin/users/{id}/erase`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, AuthUser, ClientContext};
use crate::identity::{ConsentView, Eraser, ErasureOutcome, PersonalExport};
use crate::startup::AppState;

/// Events per chunk of an export's body.
const EXPORT_CHUNK: usize = 500;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/account", delete(erase_account))
        .route("/v1/account/export", get(export_account))
        .route("/v1/account/consents", get(list_consents))
        .route("/v1/account/consents/{purpose}", put(decide_consent))
}

/// The caller's consents.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Consents {
    /// Every configured purpose (`CONSENT_PURPOSES`) in the configured order, then every
    /// purpose decided earlier that is no longer configured.
    pub consents: Vec<ConsentView>,
}

/// What the caller decided about each purpose they may consent to.
#[utoipa::path(get, path = "/v1/account/consents", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "The caller's consents", body = Consents,
               example = json!({"consents": [{"purpose": "product_news", "current_version": "2026-11", "given": true,
                   "version": "2026-11", "decided_at": "2026-12-01T10:00:00Z"},
                   {"purpose": "usage_analytics", "current_version": "3", "given": false, "version": null, "decided_at": null}]})),
              (status = 401, description = "No valid token")))]
#[tracing::instrument(name = "account.consents", skip_all, fields(user.id = %user.user_id))]
pub async fn list_consents(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Consents>, ApiError> {
    let consents = state
        .identity
        .consents(user.user_id, &state.consent_purposes)
        .await?;
    Ok(Json(Consents { consents }))
}

/// A decision on one purpose.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"given": true, "version": "2026-11"}))]
pub struct ConsentDecision {
    /// `true` to agree, `false` to withdraw.
    pub given: bool,
    /// The version of the purpose's text the person was shown; required to agree, and it
    /// must be the version in force (`current_version`).
    pub version: Option<String>,
}

/// Gives or withdraws the caller's consent to `purpose`, recorded as `ConsentGiven` or
/// `ConsentWithdrawn` with the version of the text. Deciding what is decided already records
/// nothing.
#[utoipa::path(put, path = "/v1/account/consents/{purpose}", tag = "account", request_body = ConsentDecision,
    security(("bearer" = [])),
    params(("purpose" = String, Path, description = "A purpose of `CONSENT_PURPOSES`")),
    responses((status = 200, description = "The purpose as it stands now", body = ConsentView,
               example = json!({"purpose": "product_news", "current_version": "2026-11", "given": true,
                   "version": "2026-11", "decided_at": "2026-12-01T10:00:00Z"})),
              (status = 401, description = "No valid token"),
              (status = 404, description = "No such purpose"),
              (status = 409, description = "The version given is not the one in force: show the current text and ask again"),
              (status = 422, description = "Agreeing without a version")))]
#[tracing::instrument(name = "account.consent", skip_all, fields(user.id = %user.user_id))]
pub async fn decide_consent(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(purpose): ApiPath<String>,
    ApiJson(body): ApiJson<ConsentDecision>,
) -> Result<Json<ConsentView>, ApiError> {
    let Some(purpose) = state.consent_purposes.get(&purpose) else {
        return Err(ApiError::NotFound);
    };
    if body.given && body.version.is_none() {
        return Err(ApiError::Unprocessable(
            "version: agreeing names the version of the text the person was shown".into(),
        ));
    }
    let view = state
        .identity
        .decide_consent(
            &ctx,
            &user.actor(),
            user.user_id,
            purpose,
            body.given,
            body.version.as_deref(),
        )
        .await?;
    Ok(Json(view))
}

/// The caller's password, re-entered.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"password": "correct horse battery staple"}))]
pub struct EraseRequest {
    /// The caller's current password.
    pub password: String,
}

/// Erases the caller: records `PersonErased` and destroys their data key, so every personal
/// field ever written about them reads as `"[erased]"` for everyone; every session ends, and
/// the address can be registered again as a new account. Projects they own stay, owned by the
/// erased account.
#[utoipa::path(delete, path = "/v1/account", tag = "account", request_body = EraseRequest, security(("bearer" = [])),
    responses((status = 200, description = "Erased", body = ErasureOutcome,
               example = json!({"erased_now": true, "sessions_revoked": 2})),
              (status = 401, description = "No valid token, or a wrong password (nothing is erased)"),
              (status = 409, description = "The last administrator who can sign in"),
              (status = 429, description = "Too many attempts for this account")))]
#[tracing::instrument(name = "account.erase", skip_all, fields(user.id = %user.user_id))]
pub async fn erase_account(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiJson(body): ApiJson<EraseRequest>,
) -> Result<Json<ErasureOutcome>, ApiError> {
    let outcome = state
        .identity
        .erase(
            &ctx,
            user.user_id,
            Eraser::Themselves {
                password: &body.password,
            },
        )
        .await?;
    Ok(Json(outcome))
}

/// Everything idp holds about the caller, as one JSON document: the account, its row of the
/// users directory, its projects, and every event about it (its account, sign-ins, sessions
/// and projects) with personal fields in the clear. Streamed; recorded as
/// `PersonalDataExported`.
#[utoipa::path(get, path = "/v1/account/export", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "The export (`idp-personal-data-export/v1`)",
               content_type = "application/json", body = Object, example = json!({"format": "idp-personal-data-export/v1", "exported_at": "2026-12-02T10:00:00Z",
                   "person": {"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "email": "ada@example.com", "display_name": "Ada Lovelace",
                              "roles": ["user"], "email_verified": true, "registered_at": "2026-12-01T10:00:00Z",
                              "consents": {"product_news": {"given": true, "version": "2026-11", "at": "2026-12-01T10:05:00Z"}}},
                   "users_directory": null, "projects": [],
                   "events": [{"position": 1, "event_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0e",
                               "stream_id": "user-0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "stream_version": 1,
                               "event_type": "UserRegistered", "recorded_at": "2026-12-01T10:00:00Z",
                               "data": {"email": "ada@example.com", "display_name": "Ada Lovelace", "roles": ["user"]},
                               "metadata": {"actor": "anonymous", "client_ip": "192.0.2.7", "user_agent": "curl/8.5"}}]})),
              (status = 401, description = "No valid token")))]
#[tracing::instrument(name = "account.export", skip_all, fields(user.id = %user.user_id))]
pub async fn export_account(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
) -> Result<Response, ApiError> {
    let export = state
        .identity
        .export(&ctx, &user.actor(), user.user_id)
        .await?;
    Ok(export_response(export))
}

/// An export as a streamed `application/json` download.
pub fn export_response(export: PersonalExport) -> Response {
    let chunks = export
        .chunks(EXPORT_CHUNK)
        .map(|chunk| Ok::<_, std::convert::Infallible>(chunk.into_bytes()));
    let mut response = Body::from_stream(futures::stream::iter(chunks)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"idp-personal-data.json\""),
    );
    *response.status_mut() = StatusCode::OK;
    response
}
