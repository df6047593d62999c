//! `GET /openapi.json`: the OpenAPI document, generated from the handlers and types.
//!
//! Handlers declare their own outcomes (`#[utoipa::path]`): the success with its body and the
//! errors particular to them. What every operation of a kind shares is added here, once, by
//! `conventions`, so that no handler can forget it:
//!
//! - every 4xx/5xx answer is an RFC 9457 problem document (`application/problem+json`,
//!   [`Problem`]) with an example, unless the handler documents another body for it;
//! - an operation with a JSON body can answer 400 (not JSON), 413 (too large), 415 (not
//!   `application/json`) and 422 (wrong shape), as [`crate::extract::ApiJson`] does;
//! - an operation that declares the bearer scheme can answer 401 (with `WWW-Authenticate`);
//! - every operation can answer 503 (a dependency is away, or the request took too long);
//! - an operation that declares the bearer scheme is rate-limited by plan: it can answer 429
//!   and 402 is listed where quotas apply by the handler; every answer of it carries the
//!   `RateLimit-*` and `X-RateLimit-*` headers;
//! - the routes an API key may call list the `api_key` scheme too, with the scope it needs
//!   ([`key_scope`]);
//! - 429 answers carry `Retry-After`;
//! - a JSON body whose schema is a component with an example gets that example, so requests and
//!   answers are shown with one.
//!
//! The health and metrics routes come from `idp-ops`, which knows nothing of OpenAPI; they are
//! described here by hand (`OperationsRoutes`). The body of `POST /v1/projects` depends on the
//! templates of this instance, so the document is finished against the catalogue ([`document`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use idp_events::project::Catalogue;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::openapi::path::{HttpMethod, OperationBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::Problem;
use crate::startup::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "idp", description = "Event-sourced backend for internal developer platforms. \
        Errors are RFC 9457 problem documents (`application/problem+json`) carrying the request id; \
        authenticated routes take `Authorization: Bearer <access token>` from `POST /v1/auth/login`, and those that list \
        the `api_key` scheme also `Authorization: Bearer idp_...` (an API key). Authenticated routes are rate-limited by plan \
        (`RateLimit-*` headers on every answer, 429 beyond)."),
    paths(
        super::api_keys::create_key, super::api_keys::list_keys, super::api_keys::revoke_key,
        super::api_keys::rotate_key, super::api_keys::list_keys_of, super::api_keys::revoke_key_of,
        super::service_accounts::create_account, super::service_accounts::list_accounts,
        super::service_accounts::get_account, super::service_accounts::set_roles,
        super::service_accounts::disable_account,
        super::service_accounts::enable_account, super::service_accounts::delete_account,
        super::service_accounts::create_key, super::service_accounts::list_keys,
        super::service_accounts::revoke_key, super::service_accounts::rotate_key,
        super::plans::plan, super::plans::limits, super::plans::set_limits, super::plans::set_plan,
        super::auth::register, super::auth::verify_email, super::auth::resend_verification,
        super::auth::login, super::auth::refresh, super::auth::logout, super::auth::me,
        super::auth::forgot_password, super::auth::reset_password, super::auth::change_password,
        super::auth::jwks, super::admin_users::unlock,
        super::federation::list_providers, super::federation::start, super::federation::callback,
        super::federation::exchange, super::federation::list_identities, super::federation::link,
        super::federation::unlink,
        super::two_factor::enable_init, super::two_factor::enable_complete,
        super::two_factor::disable, super::two_factor::verify, super::two_factor::recovery_login,
        super::two_factor::recovery_codes, super::two_factor::reset,
        super::admin_users::list_users, super::admin_users::get_user, super::admin_users::lock,
        super::admin_users::set_roles, super::admin_users::revoke_sessions,
        super::admin_users::erase_user, super::admin_users::export_user,
        super::admin_users::resend_verification,
        super::account::erase_account, super::account::export_account,
        super::account::list_consents, super::account::decide_consent,
        super::sessions::list_sessions, super::sessions::revoke_session,
        super::sessions::revoke_others, super::sessions::revoke_from_notice,
        super::admin_jobs::list_dead, super::admin_jobs::retry,
        super::admin_events::list_events, super::admin_events::export_events,
        super::admin_streams::stream_history,
        super::admin_audit::verify, super::admin_audit::latest_seal,
        super::templates::list_templates,
        super::projects::create_project, super::projects::list_projects,
        super::projects::get_project, super::projects::retry_project,
        super::projects::delete_project, super::projects::issue_credentials,
        super::projects::project_events,
        openapi_json, super::docs::page, super::docs::script, super::docs::style,
    ),
    components(schemas(Problem, Liveness, Readiness,
        super::projects::StreamedEvent, super::admin_events::EventTypeName)),
    modifiers(&BearerAuth, &OperationsRoutes),
    tags((name = "auth", description = "Registration, sign-in, tokens and passwords"),
         (name = "two-factor", description = "Two-factor sign-in (TOTP, RFC 6238) and recovery codes"),
         (name = "account", description = "The caller's personal data (export, erasure, consents), sessions and linked identities"),
         (name = "projects", description = "Project templates, requests, provisioning status and live events"),
         (name = "admin", description = "Administration (admin role)"),
         (name = "operations", description = "Liveness and readiness, for load balancers and orchestrators (metrics and the detailed readiness report are on the internal listener, `API_INTERNAL_ADDR`)"),
         (name = "meta", description = "This document and its reference page"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.bearer_format = Some("JWT".into());
            http.description =
                Some("An access token from `POST /v1/auth/login` or `/v1/auth/refresh`".into());
            components.add_security_scheme("bearer", SecurityScheme::Http(http));
            let mut key = Http::new(HttpAuthScheme::Bearer);
            key.bearer_format = Some("idp_ API key".into());
            key.description = Some(
                "An API key (`idp_` and 57 letters and digits) of a person or a service account,                  from `POST /v1/account/api-keys` or `POST /v1/admin/service-accounts/{id}/api-keys`:                  accepted on the routes that list it, within its scopes and its owner's roles"
                    .into(),
            );
            components.add_security_scheme("api_key", SecurityScheme::Http(key));
        }
    }
}

/// `GET /health/live`'s answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "live"}))]
struct Liveness {
    /// Always `live`.
    #[schema(pattern = "^live$")]
    status: String,
}

/// `GET /health/ready`'s answer on the public listener, ready or not: only the status (the
/// detailed report, naming what is down and why, is on the internal listener).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready"}))]
struct Readiness {
    /// `ready`; `degraded` (still 200: the API serves without the broker, whose outage only
    /// delays emails and provisioning); or `not_ready` (503: the database does not answer).
    #[schema(pattern = "^(ready|degraded|not_ready)$")]
    status: String,
}

/// The routes of `idp_ops::health`, described by hand.
struct OperationsRoutes;

impl Modify for OperationsRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let json_of = |schema: &str, example: Value| {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .example(Some(example))
                .build()
        };
        let live = OperationBuilder::new()
            .tags(Some(vec!["operations"]))
            .summary(Some("Liveness: 200 while the process runs."))
            .operation_id(Some("health_live"))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The process runs")
                    .content(
                        "application/json",
                        json_of("Liveness", json!({"status": "live"})),
                    ),
            )
            .build();
        let ready = OperationBuilder::new()
            .tags(Some(vec!["operations"]))
            .summary(Some(
                "Readiness: 200 when the database and the broker answer.",
            ))
            .description(Some(
                "Only the status: the detailed report, naming what is down and why, is served on \
                 the internal listener (`API_INTERNAL_ADDR`), as are the metrics.",
            ))
            .operation_id(Some("health_ready"))
            .response(
                "200",
                ResponseBuilder::new().description("Ready (`ready`, or `degraded` while the broker is down: requests are served, emails and provisioning wait)").content(
                    "application/json",
                    json_of(
                        "Readiness",
                        json!({"status": "ready"}),
                    ),
                ),
            )
            .response(
                "503",
                ResponseBuilder::new()
                    .description("Not ready: the database does not answer")
                    .content(
                        "application/json",
                        json_of(
                            "Readiness",
                            json!({"status": "not_ready"}),
                        ),
                    ),
            )
            .build();
        openapi
            .paths
            .add_path_operation("/health/live", vec![HttpMethod::Get], live);
        openapi
            .paths
            .add_path_operation("/health/ready", vec![HttpMethod::Get], ready);
    }
}

/// The document of an instance serving the templates of `catalogue`.
pub fn document(catalogue: &Catalogue) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|err| {
        // The document is plain data; this cannot happen, but an empty document beats a panic.
        tracing::error!(error = %err, "the OpenAPI document does not serialise");
        json!({})
    });
    describe_templates(&mut doc, catalogue);
    describe_event_data(&mut doc);
    conventions(&mut doc);
    doc
}

/// The route serving it (the reference page's routes are in `super::docs`).
pub fn router(catalogue: &Catalogue) -> Router<AppState> {
    let doc = Arc::new(document(catalogue));
    Router::new().route("/openapi.json", get(openapi_json).with_state(doc))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API, with the project templates of this instance",
               content((Object = "application/json", example = json!({"openapi": "3.1.0", "info": {"title": "idp", "version": "0.1.0"}, "paths": {}}))))))]
pub async fn openapi_json(State(doc): State<Arc<Value>>) -> Response {
    Json(&*doc).into_response()
}

/// Narrows `CreateProjectRequest` to this instance's templates: one variant per template, naming
/// it in `template` and its parameters in `parameters` (those without a default required, no
/// others, each value at most 256 characters without control characters). With no templates,
/// the schema is left as it is.
fn describe_templates(doc: &mut Value, catalogue: &Catalogue) {
    use idp_events::project::template::MAX_VALUE_LEN;
    let Some(schema) = doc.pointer_mut("/components/schemas/CreateProjectRequest") else {
        return;
    };
    let variants: Vec<Value> = catalogue
        .iter()
        .map(|template| {
            let mut properties = Map::new();
            for p in &template.parameters {
                let mut value = json!({
                    "type": "string",
                    "maxLength": MAX_VALUE_LEN,
                    // `char::is_control`: C0, DEL and C1.
                    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
                    "description": p.description,
                });
                if let Some(default) = &p.default {
                    value["default"] = json!(default);
                }
                properties.insert(p.name.clone(), value);
            }
            let required: Vec<&str> = template
                .parameters
                .iter()
                .filter(|p| p.is_required())
                .map(|p| p.name.as_str())
                .collect();
            let mut parameters = json!({
                "type": "object",
                "properties": properties,
                "additionalProperties": false,
                "description": format!("Parameters of `{}`", template.name),
            });
            let mut variant = json!({
                "type": "object",
                "title": template.name,
                "properties": {
                    "template": {"type": "string", "enum": [template.name]},
                    "parameters": parameters.clone(),
                },
                "required": ["name", "template"],
            });
            if required.is_empty() {
                // Absent or null: every parameter takes its default.
                parameters["type"] = json!(["object", "null"]);
                variant["properties"]["parameters"] = parameters;
            } else {
                parameters["required"] = json!(required);
                variant["properties"]["parameters"] = parameters;
                variant["required"] = json!(["name", "template", "parameters"]);
            }
            variant
        })
        .collect();
    if variants.is_empty() {
        return;
    }
    let names: Vec<&str> = catalogue.iter().map(|t| t.name.as_str()).collect();
    if let Some(template) = schema.pointer_mut("/properties/template") {
        template["enum"] = json!(names);
    }
    if let Some(parameters) = schema.pointer_mut("/properties/parameters") {
        // Each variant says which parameters its template takes.
        *parameters = json!({"type": ["object", "null"], "description": "Values of the template's parameters; those left out take their defaults",
                             "additionalProperties": {"type": "string"}});
    }
    schema["oneOf"] = json!(variants);
}

/// Says that the `data` of a project's Server-Sent Events is a `StreamedEvent` as JSON
/// (`contentMediaType`, `contentSchema`), which the schema of a struct field cannot.
fn describe_event_data(doc: &mut Value) {
    if let Some(data) = doc.pointer_mut("/components/schemas/ServerSentEvent/properties/data") {
        data["contentMediaType"] = json!("application/json");
        data["contentSchema"] = json!({ "$ref": "#/components/schemas/StreamedEvent" });
    }
}

/// The shared outcomes and bodies listed in the module documentation.
fn conventions(doc: &mut Value) {
    let examples = component_examples(doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                continue;
            }
            key_security(method, path, operation);
            complete_operation(operation, &examples);
        }
    }
}

/// Examples of the component schemas, by `$ref`.
fn component_examples(doc: &Value) -> Map<String, Value> {
    let mut examples = Map::new();
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        for (name, schema) in schemas {
            if let Some(example) = schema.get("example").or_else(|| {
                schema
                    .get("examples")
                    .and_then(Value::as_array)
                    .and_then(|e| e.first())
            }) {
                examples.insert(format!("#/components/schemas/{name}"), example.clone());
            }
        }
    }
    examples
}

fn complete_operation(operation: &mut Value, examples: &Map<String, Value>) {
    let json_body = operation
        .pointer("/requestBody/content/application~1json")
        .is_some();
    let secured = operation
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
        });
    if let Some(body) = operation.pointer_mut("/requestBody/content") {
        add_examples(body, examples);
    }
    if !operation.get("responses").is_some_and(Value::is_object) {
        operation["responses"] = json!({});
    }
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut shared: Vec<(&str, &str)> = Vec::new();
    if json_body {
        shared.extend([
            ("400", "The body is not JSON"),
            (
                "413",
                "The body is larger than the limit (API_BODY_LIMIT_BYTES)",
            ),
            ("415", "The body is not `application/json`"),
            ("422", "The body does not have the documented shape"),
        ]);
    }
    if secured {
        shared.push((
            "401",
            "No valid access token or API key: missing, malformed, expired, revoked, or its session ended",
        ));
        shared.push((
            "429",
            "The caller's plan allows no more requests now (per account and per API key); see `Retry-After`",
        ));
    }
    shared.push((
        "503",
        "A dependency (database, broker) is unavailable, or the request took too long; try again",
    ));
    for (status, description) in shared {
        responses
            .entry(status)
            .or_insert_with(|| json!({ "description": description }));
    }
    for (status, response) in responses.iter_mut() {
        let code: u16 = status.parse().unwrap_or(0);
        if code >= 400 {
            problem_content(code, response);
        }
        if secured {
            rate_limit_headers(response);
        }
        if let Some(content) = response.get_mut("content") {
            add_examples(content, examples);
        }
    }
}

/// The headers every answer of a rate-limited route carries.
fn rate_limit_headers(response: &mut Value) {
    let Some(response) = response.as_object_mut() else {
        return;
    };
    let headers = response.entry("headers").or_insert_with(|| json!({}));
    let Some(headers) = headers.as_object_mut() else {
        return;
    };
    for (names, description, example) in [
        (
            ["RateLimit-Limit", "X-RateLimit-Limit"],
            "Requests per minute the caller's plan allows",
            600,
        ),
        (
            ["RateLimit-Remaining", "X-RateLimit-Remaining"],
            "Requests left before the limit",
            599,
        ),
        (
            ["RateLimit-Reset", "X-RateLimit-Reset"],
            "Seconds until the allowance is full again",
            1,
        ),
    ] {
        for name in names {
            headers.entry(name).or_insert_with(|| {
                json!({ "description": description, "schema": { "type": "integer", "minimum": 0 }, "example": example })
            });
        }
    }
}

/// The scope an API key needs for `method path`, for the routes keys may call: the ones the
/// router gives a `KeyScopes` (projects, templates, the plan and the limits) and the
/// administration routes, whose permission names it (`Permission::key_scope`). `None`: the
/// route is for signed-in sessions only.
pub fn key_scope(method: &str, path: &str) -> Option<&'static str> {
    let read = method == "get";
    if path == "/v1/projects" || path.starts_with("/v1/projects/") {
        Some(if read {
            "projects:read"
        } else {
            "projects:write"
        })
    } else if path == "/v1/templates" {
        Some("templates:read")
    } else if read && (path == "/v1/account/plan" || path == "/v1/account/limits") {
        Some("projects:read")
    } else if path.starts_with("/v1/admin/events")
        || path.starts_with("/v1/admin/streams/")
        || path.starts_with("/v1/admin/audit/")
    {
        Some("audit:read")
    } else if path.starts_with("/v1/admin/") {
        Some("admin")
    } else {
        None
    }
}

/// Lists the `api_key` scheme beside the bearer one on the routes keys may call.
fn key_security(method: &str, path: &str, operation: &mut Value) {
    let Some(scope) = key_scope(method, path) else {
        return;
    };
    let Some(security) = operation.get_mut("security").and_then(Value::as_array_mut) else {
        return;
    };
    let listed = security.iter().any(|r| r.get("api_key").is_some());
    if !listed && security.iter().any(|r| r.get("bearer").is_some()) {
        security.push(json!({ "api_key": [] }));
    }
    let note = format!("\n\nWith an API key: needs the scope `{scope}`.");
    let description = operation
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !description.contains("With an API key") {
        operation["description"] = json!(format!("{description}{note}"));
    }
}

/// Makes an error answer a problem document unless it documents a body of its own.
fn problem_content(status: u16, response: &mut Value) {
    let Some(response) = response.as_object_mut() else {
        return;
    };
    let documents_own_body = response
        .get("content")
        .and_then(Value::as_object)
        .is_some_and(|c| c.values().any(|m| m.get("schema").is_some()));
    if !documents_own_body {
        let detail = response
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        response.insert(
            "content".into(),
            json!({ "application/problem+json": {
                "schema": { "$ref": "#/components/schemas/Problem" },
                "example": problem_example(status, &detail),
            }}),
        );
    }
    let header = match status {
        401 => Some((
            "WWW-Authenticate",
            "`Bearer`: the scheme the API expects",
            "Bearer",
        )),
        429 => Some((
            "Retry-After",
            "Seconds until the limit lets the request through",
            "60",
        )),
        _ => None,
    };
    if let Some((name, description, example)) = header {
        let headers = response.entry("headers").or_insert_with(|| json!({}));
        if let Some(headers) = headers.as_object_mut() {
            headers.entry(name).or_insert_with(|| {
                json!({ "description": description, "required": true,
                        "schema": { "type": "string" }, "example": example })
            });
        }
    }
}

/// A problem document as the API writes one for `status` (see `crate::error::problem`).
fn problem_example(status: u16, detail: &str) -> Value {
    let (kind, title) = match status {
        400 => ("bad-request", "Bad Request"),
        401 => ("unauthorized", "Unauthorized"),
        403 => ("forbidden", "Forbidden"),
        404 => ("not-found", "Not Found"),
        402 => ("quota-exceeded", "Payment Required"),
        409 => ("conflict", "Conflict"),
        410 => ("gone", "Gone"),
        413 => ("payload-too-large", "Payload Too Large"),
        415 => ("unsupported-media-type", "Unsupported Media Type"),
        422 => ("unprocessable", "Unprocessable Entity"),
        429 => ("too-many-requests", "Too Many Requests"),
        503 => ("unavailable", "Service Unavailable"),
        _ => ("internal", "Internal Server Error"),
    };
    let mut example = json!({
        "type": format!("https://idp.dev/problems/{kind}"),
        "title": title,
        "status": status,
        "request_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d",
    });
    if !detail.is_empty() && !matches!(status, 403 | 404) {
        example["detail"] = json!(detail);
    }
    example
}

/// Gives each JSON body whose schema is a component with an example that example.
fn add_examples(content: &mut Value, examples: &Map<String, Value>) {
    let Some(content) = content.as_object_mut() else {
        return;
    };
    for (media_type, media) in content.iter_mut() {
        if !media_type.contains("json") || media.get("example").is_some() {
            continue;
        }
        let reference = media
            .pointer("/schema/$ref")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(example) = reference.and_then(|r| examples.get(&r)) {
            media["example"] = example.clone();
        }
    }
}
