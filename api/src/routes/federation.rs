//! Federated sign-in: `GET /v1/auth/providers`, `GET /v1/auth/oidc/{provider}/start`, `GET
//! /v1/auth/oidc/{provider}/callback`, `POST /v1/auth/oidc/exchange`; and a person's linked
//! identities: `GET /v1/account/identities`, `POST /v1/account/identities/{provider}/link`,
//! `DELETE /v1/account/identities/{id}`.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use url::Url;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, AuthUser, ClientContext, PathParam};
use crate::federation::flow;
use crate::federation::{CallbackParams, Completed, ProviderView};
use crate::identity::{IdentityView, SignIn};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/providers", get(list_providers))
        .route("/v1/auth/oidc/{provider}/start", get(start))
        .route("/v1/auth/oidc/{provider}/callback", get(callback))
        .route("/v1/auth/oidc/exchange", post(exchange))
        .route("/v1/account/identities", get(list_identities))
        .route("/v1/account/identities/{provider}/link", post(link))
        .route("/v1/account/identities/{id}", delete(unlink))
}

/// A provider id in a path: anything no provider could be named is no provider (404).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct ProviderId(pub String);

impl PathParam for ProviderId {
    const WHAT: &'static str = "a provider id";

    fn refused(_key: &str) -> ApiError {
        ApiError::NotFound
    }
}

/// A linked identity's id in a path; anything else is none of the caller's (404).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(transparent)]
pub struct IdentityId(pub Uuid);

impl PathParam for IdentityId {
    const WHAT: &'static str = "an identity id";

    fn refused(_key: &str) -> ApiError {
        ApiError::NotFound
    }
}

/// The providers one can sign in with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Providers {
    /// In configuration order.
    pub providers: Vec<ProviderView>,
}

/// The identity providers one can sign in with (`AUTH_PROVIDERS`; disabled ones are not
/// listed).
#[utoipa::path(get, path = "/v1/auth/providers", tag = "auth",
    responses((status = 200, description = "The providers", body = Providers,
               example = json!({"providers": [{"id": "github", "kind": "github", "display_name": "GitHub",
                                               "start_url": "https://idp.example.com/v1/auth/oidc/github/start"}]}))))]
pub async fn list_providers(State(state): State<AppState>) -> Json<Providers> {
    Json(Providers {
        providers: state.federation.list(),
    })
}

/// Where to go once signed in.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    /// An absolute URL on `PUBLIC_BASE_URL`'s origin or one of `CORS_ALLOWED_ORIGINS`: the
    /// callback redirects there with `login_code` (exchange it at `POST
    /// /v1/auth/oidc/exchange`). Without it the callback answers the tokens as JSON.
    pub return_to: Option<String>,
}

/// Starts signing in with a provider: redirects the browser to it (authorization code with
/// PKCE S256, `state` and `nonce`), binding the flow to the browser with a signed, short-lived
/// `HttpOnly`, `SameSite=Lax` cookie.
#[utoipa::path(get, path = "/v1/auth/oidc/{provider}/start", tag = "auth",
    params(("provider" = String, Path, description = "A provider of GET /v1/auth/providers"), StartParams),
    responses((status = 303, description = "To the provider; sets the flow's cookie"),
              (status = 400, description = "return_to is not on an allowed origin (return-to-refused), or an unknown query parameter"),
              (status = 403, description = "The provider is disabled (provider-disabled)"),
              (status = 404, description = "No such provider"),
              (status = 502, description = "The provider cannot be reached (provider-unavailable)")))]
#[tracing::instrument(name = "auth.federated.start", skip_all, fields(provider = %provider.0))]
pub async fn start(
    State(state): State<AppState>,
    ApiPath(provider): ApiPath<ProviderId>,
    ApiQuery(params): ApiQuery<StartParams>,
) -> Result<Response, ApiError> {
    let (url, cookie) = state
        .federation
        .start(&provider.0, params.return_to.as_deref(), None)
        .await?;
    Ok(setting_cookie(
        Redirect::to(url.as_str()).into_response(),
        &cookie,
    ))
}

/// The end of a provider's sign-in. The browser's flow cookie must be this provider's, with
/// this `state`, not completed before; the code is exchanged and (OpenID Connect) the
/// `id_token` validated. Then: a first sign-in makes an account (or links an existing one when
/// the provider asserts a verified address and is trusted for linking); the account signs in
/// as with a password (its second factor, lockout and rate limits apply). With a `return_to`,
/// redirects there with a one-time `login_code`; without, answers the sign-in as JSON. A flow
/// started to link an identity links it instead.
#[utoipa::path(get, path = "/v1/auth/oidc/{provider}/callback", tag = "auth",
    params(("provider" = String, Path, description = "The provider"), CallbackParams),
    responses((status = 200, description = "Signed in (tokens, or the second factor's challenge), or linked (the identity)", body = SignIn,
               example = json!({"access_token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSJ9.eyJzdWIiOiIwMTkwZjRjMiJ9.c2lnbmF0dXJl",
                                "refresh_token": "3q2Vb8yJkq0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP", "token_type": "Bearer", "expires_in": 900})),
              (status = 303, description = "To return_to, with login_code (or linked=<provider>)"),
              (status = 400, description = "Not a flow of this browser and provider (federation-state-invalid)"),
              (status = 401, description = "The provider refused (provider-refused), its id_token was refused (id-token-invalid), or the account cannot sign in now (invalid-credentials)"),
              (status = 403, description = "Disabled provider (provider-disabled), address outside allowed_domains (email-domain-refused), no address (provider-email-required), address not confirmed (email-unverified)"),
              (status = 404, description = "No such provider"),
              (status = 409, description = "An account has this address: sign in with its password and link (link-required); or the identity is linked to another account"),
              (status = 429, description = "Too many sign-ins from this client address"),
              (status = 502, description = "The provider cannot be reached (provider-unavailable)")))]
#[tracing::instrument(name = "auth.federated.callback", skip_all, fields(provider = %provider.0))]
pub async fn callback(
    State(state): State<AppState>,
    ctx: ClientContext,
    headers: HeaderMap,
    ApiPath(provider): ApiPath<ProviderId>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = callback_params(query.as_deref().unwrap_or(""));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(flow::from_cookie_header);
    let clear = state.federation.clear_cookie();
    let outcome = complete(&state, &ctx, &provider.0, &params, cookie).await;
    let response = match outcome {
        Ok(response) => response,
        Err(err) => {
            let label = state.federation.label(&provider.0);
            metrics::counter!("idp_federated_flows_total", "provider" => label, "step" => "refused")
                .increment(1);
            err.into_response()
        }
    };
    Ok(setting_cookie(response, &clear))
}

/// The callback's work, once its parameters are read.
async fn complete(
    state: &AppState,
    ctx: &ClientContext,
    provider: &str,
    params: &CallbackParams,
    cookie: Option<&str>,
) -> Result<Response, ApiError> {
    let Completed { flow, assertion } = state.federation.callback(provider, params, cookie).await?;
    if let Some(user_id) = flow.link_user {
        let linked = state
            .identity
            .link_identity(ctx, user_id, &assertion)
            .await?;
        return Ok(match &flow.return_to {
            Some(to) => Redirect::to(&with_param(to, "linked", provider)).into_response(),
            None => Json(linked).into_response(),
        });
    }
    let account = state.identity.federated_account(ctx, &assertion).await?;
    let session = state.federation.session(provider);
    match &flow.return_to {
        Some(to) => {
            let code = state
                .identity
                .issue_login_code(account.id, &session)
                .await?;
            Ok(Redirect::to(&with_param(to, "login_code", &code)).into_response())
        }
        None => {
            let signed_in = state
                .identity
                .finish_federated(ctx, &account, &session)
                .await?;
            Ok(Json(signed_in).into_response())
        }
    }
}

/// The first `code`, `state`, `error`, `error_description` and `iss` of a callback's query;
/// other parameters (providers add `scope`, `session_state`...) are ignored.
fn callback_params(query: &str) -> CallbackParams {
    let mut params = CallbackParams::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "code" => &mut params.code,
            "state" => &mut params.state,
            "error" => &mut params.error,
            "error_description" => &mut params.error_description,
            "iss" => &mut params.iss,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value.into_owned());
        }
    }
    params
}

/// `to` with `name=value` added to its query (`to` was checked at the start).
fn with_param(to: &str, name: &str, value: &str) -> String {
    match Url::parse(to) {
        Ok(mut url) => {
            url.query_pairs_mut().append_pair(name, value);
            url.into()
        }
        Err(_) => to.to_owned(),
    }
}

/// `response` with a `Set-Cookie` of `cookie` added.
fn setting_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The code a callback redirected to `return_to` with.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"login_code": "Yk3v0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP3q2Vb8"}))]
pub struct ExchangeRequest {
    /// The `login_code` of the redirect; it works once, within 60 seconds.
    #[schema(max_length = 128)]
    pub login_code: String,
}

/// Finishes a federated sign-in that redirected to `return_to`: the `login_code` for the
/// usual token pair (or, with a second factor on, its challenge).
#[utoipa::path(post, path = "/v1/auth/oidc/exchange", tag = "auth", request_body = ExchangeRequest,
    responses((status = 200, description = "Tokens, or the second factor's challenge (status mfa_required)", body = SignIn,
               example = json!({"access_token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSJ9.eyJzdWIiOiIwMTkwZjRjMiJ9.c2lnbmF0dXJl",
                                "refresh_token": "3q2Vb8yJkq0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP", "token_type": "Bearer", "expires_in": 900})),
              (status = 401, description = "The login_code is invalid, used or expired (login-code-refused), or the account cannot sign in now (invalid-credentials)")))]
#[tracing::instrument(name = "auth.federated.exchange", skip_all)]
pub async fn exchange(
    State(state): State<AppState>,
    ctx: ClientContext,
    ApiJson(body): ApiJson<ExchangeRequest>,
) -> Result<Json<SignIn>, ApiError> {
    if body.login_code.len() > 128 {
        return Err(crate::identity::IdentityError::LoginCodeRefused.into());
    }
    Ok(Json(
        state
            .identity
            .exchange_login_code(&ctx, &body.login_code)
            .await?,
    ))
}

/// The caller's linked identities.
#[derive(Debug, Serialize, ToSchema)]
pub struct Identities {
    /// Oldest first.
    pub identities: Vec<IdentityView>,
}

/// The accounts of identity providers linked to the caller's.
#[utoipa::path(get, path = "/v1/account/identities", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "The linked identities", body = Identities,
               example = json!({"identities": [{"id": "0193a0c4-5b1e-7c3a-9f1d-2a4b6c8d0e21", "provider": "github",
                   "email": "ada@example.com", "linked_at": "2026-12-01T10:00:00Z", "last_used_at": "2026-12-07T09:00:00Z"}]})),
              (status = 401, description = "No valid token"),
              (status = 403, description = "An API key (session-required)")))]
#[tracing::instrument(name = "account.identities", skip_all, fields(user.id = %user.user_id))]
pub async fn list_identities(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Identities>, ApiError> {
    Ok(Json(Identities {
        identities: state.identity.identities(user.user_id).await?,
    }))
}

/// Where to go once linked.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"return_to": "https://idp.example.com/account/identities"}))]
pub struct LinkRequest {
    /// As for `GET /v1/auth/oidc/{provider}/start`: the callback redirects there with
    /// `linked=<provider>`; without, it answers the identity as JSON.
    pub return_to: Option<String>,
}

/// Where the browser goes to link.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"authorization_url": "https://accounts.google.com/o/oauth2/v2/auth?response_type=code&client_id=...&state=...&code_challenge=...&code_challenge_method=S256&redirect_uri=...&scope=openid+email+profile&nonce=..."}))]
pub struct LinkStarted {
    /// Send the browser here (the answer also set the flow's cookie for it).
    pub authorization_url: String,
}

/// Starts linking an account of a provider to the caller's: answers the provider's URL for
/// the browser and sets the flow's cookie; the callback links instead of signing in (refused
/// if that account of the provider is linked to someone else).
#[utoipa::path(post, path = "/v1/account/identities/{provider}/link", tag = "account", security(("bearer" = [])),
    params(("provider" = String, Path, description = "A provider of GET /v1/auth/providers")),
    request_body(content = Option<LinkRequest>, description = "Optional: where to return", example = json!({"return_to": "https://idp.example.com/account/identities"})),
    responses((status = 200, description = "Send the browser to authorization_url", body = LinkStarted),
              (status = 400, description = "return_to is not on an allowed origin (return-to-refused)"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "An API key (session-required), or a disabled provider (provider-disabled)"),
              (status = 404, description = "No such provider"),
              (status = 502, description = "The provider cannot be reached (provider-unavailable)")))]
#[tracing::instrument(name = "account.identities.link", skip_all, fields(user.id = %user.user_id))]
pub async fn link(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(provider): ApiPath<ProviderId>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let request: LinkRequest = crate::extract::optional_json(&headers, body)?;
    let (url, cookie) = state
        .federation
        .start(
            &provider.0,
            request.return_to.as_deref(),
            Some(user.user_id),
        )
        .await?;
    let started = Json(LinkStarted {
        authorization_url: url.into(),
    });
    Ok(setting_cookie(started.into_response(), &cookie))
}

/// Unlinks one of the caller's identities; refused (409) if the account would be left with no
/// way to sign in (no password and no other identity).
#[utoipa::path(delete, path = "/v1/account/identities/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "A linked identity of the caller")),
    responses((status = 204, description = "Unlinked"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "An API key (session-required)"),
              (status = 404, description = "The caller has no such identity"),
              (status = 409, description = "It is the account's last way to sign in")))]
#[tracing::instrument(name = "account.identities.unlink", skip_all, fields(user.id = %user.user_id))]
pub async fn unlink(
    State(state): State<AppState>,
    ctx: ClientContext,
    user: AuthUser,
    ApiPath(IdentityId(id)): ApiPath<IdentityId>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .unlink_identity(&ctx, user.user_id, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_reads_its_first_parameters_and_ignores_the_rest() {
        let params = callback_params("code=c1&state=s&iss=x&code=c2&scope=openid+email");
        assert_eq!(params.code.as_deref(), Some("c1"));
        assert_eq!(params.state.as_deref(), Some("s"));
        assert!(params.error.is_none());
        let refused = callback_params("error=access_denied&error_description=no&state=s");
        assert_eq!(refused.error.as_deref(), Some("access_denied"));
    }

    #[test]
    fn a_return_to_keeps_its_query() {
        assert_eq!(
            with_param("https://app.example.com/done?x=1", "login_code", "a b"),
            "https://app.example.com/done?x=1&login_code=a+b"
        );
    }
}
