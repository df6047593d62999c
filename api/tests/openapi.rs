//! `/openapi.json` and `/docs` over HTTP: the document covers every route the routers declare,
//! gives every operation a documented success with schemas and examples, makes every error a
//! problem document, and declares the bearer scheme exactly where a token is needed; the
//! reference page and its assets are served under a policy that lets them run offline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Every (method, path) of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method.to_owned(), path.clone(), operation));
            }
        }
    }
    found
}

/// The `(method, path)` of every `.route("path", method(..).method(..))` in `source`.
fn declared_routes(source: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for (at, _) in source.match_indices(".route(") {
        let rest = &source[at + ".route(".len()..];
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        let (path, rest) = rest.split_once('"').unwrap();
        // The handlers run to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let handlers = &rest[..end];
        for method in METHODS {
            let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0 || !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                routes.push((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

#[test]
fn the_route_scanner_reads_routes_with_several_methods() {
    let source = r#"Router::new()
        .route("/v1/projects", post(create_project).get(list_projects))
        .route(
            "/v1/admin/users/{id}/sessions/revoke",
            post(revoke_sessions),
        )
        .route("/openapi.json", get(openapi_json).with_state(doc))"#;
    assert_eq!(
        declared_routes(source),
        [
            ("get".to_owned(), "/v1/projects".to_owned()),
            ("post".to_owned(), "/v1/projects".to_owned()),
            (
                "post".to_owned(),
                "/v1/admin/users/{id}/sessions/revoke".to_owned()
            ),
            ("get".to_owned(), "/openapi.json".to_owned()),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn the_document_lists_every_route_the_routers_declare(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(root.join("src/routes")).unwrap() {
        sources.push(entry.unwrap().path());
    }
    // Of the operations routes, only the public listener's (the internal one's are not part
    // of the public API).
    let health = std::fs::read_to_string(root.join("../ops/src/health.rs")).unwrap();
    let public = health
        .split("pub fn public_router")
        .nth(1)
        .and_then(|rest| rest.split("\n}\n").next())
        .unwrap();
    let mut declared: BTreeSet<(String, String)> = declared_routes(public).into_iter().collect();
    assert_eq!(declared.len(), 2, "{declared:?}");
    for file in sources {
        declared.extend(declared_routes(&std::fs::read_to_string(&file).unwrap()));
    }
    assert!(
        declared.len() >= 38,
        "the scanner found too few routes: {declared:?}"
    );
    let missing: Vec<_> = declared.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    let phantom: Vec<_> = documented.difference(&declared).collect();
    assert!(
        phantom.is_empty(),
        "documented routes no router declares: {phantom:?}"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn every_operation_documents_a_success_and_shows_its_bodies_with_examples(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    for (method, path, operation) in operations(&doc) {
        let name = format!("{method} {path}");
        assert!(operation["operationId"].is_string(), "{name}: operationId");
        let responses = operation["responses"].as_object().unwrap();
        let successes: Vec<_> = responses
            .iter()
            .filter(|(status, _)| status.starts_with('2') || status.starts_with('3'))
            .collect();
        // A browser's step (the start of a federated sign-in) succeeds with a redirect.
        assert!(!successes.is_empty(), "{name}: no 2xx or 3xx response");
        for (status, response) in successes {
            assert!(
                response["description"].is_string(),
                "{name} {status}: description"
            );
            let Some(content) = response["content"].as_object() else {
                // Only "no content" and redirects may go without a body.
                assert!(
                    status == "204" || status.starts_with('3'),
                    "{name} {status}: no body documented"
                );
                continue;
            };
            for (media_type, media) in content {
                assert!(
                    media["schema"].is_object(),
                    "{name} {status} {media_type}: schema"
                );
                assert!(
                    media.get("example").is_some() || media["examples"].is_object(),
                    "{name} {status} {media_type}: example"
                );
            }
        }
        if let Some(body) = operation.get("requestBody") {
            for (media_type, media) in body["content"].as_object().unwrap() {
                assert!(
                    media["schema"].is_object(),
                    "{name} request {media_type}: schema"
                );
                assert!(
                    media.get("example").is_some(),
                    "{name} request {media_type}: example"
                );
            }
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            assert!(
                parameter["description"].is_string() && parameter["schema"].is_object(),
                "{name}: parameter {parameter}"
            );
        }
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn every_error_answer_is_a_problem_document(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    assert!(doc["components"]["schemas"]["Problem"]["example"].is_object());
    for (method, path, operation) in operations(&doc) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            let code: u16 = status.parse().unwrap();
            if code < 400 {
                continue;
            }
            let name = format!("{method} {path} {status}");
            // The readiness report is the same document ready or not, so a probe or a person
            // reads one format either way.
            if path == "/health/ready" && code == 503 {
                assert!(
                    response["content"]["application/json"].is_object(),
                    "{name}"
                );
                continue;
            }
            let content = response["content"].as_object().unwrap();
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{name}"
            );
            let media = &content["application/problem+json"];
            assert_eq!(
                media["schema"]["$ref"], "#/components/schemas/Problem",
                "{name}"
            );
            assert_eq!(media["example"]["status"], json!(code), "{name}");
            if code == 429 {
                assert!(response["headers"]["Retry-After"].is_object(), "{name}");
            }
            if code == 401 {
                assert!(
                    response["headers"]["WWW-Authenticate"].is_object(),
                    "{name}"
                );
            }
        }
    }
    app.stop().await;
}

/// `path` with its parameters filled in: a UUID that names nothing, or a stream id.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| match part {
            "{stream_id}" => "user-00000000-0000-0000-0000-000000000000".to_owned(),
            p if p.starts_with('{') => "00000000-0000-0000-0000-000000000000".to_owned(),
            p => p.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> u16 {
    let method: Method = method.to_uppercase().parse().unwrap();
    let mut request = app.client.request(method.clone(), app.url(&concrete(path)));
    if method == Method::POST || method == Method::PUT {
        request = request.json(&json!({}));
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[sqlx::test(migrations = false)]
async fn exactly_the_operations_that_need_a_token_declare_the_bearer_scheme(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path, operation) in operations(&doc) {
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        let anonymous = call(&app, &method, &path, None).await;
        let forged = call(&app, &method, &path, Some("not-a-token")).await;
        let name = format!("{method} {path}");
        if secured {
            assert_eq!(anonymous, 401, "{name} without a token");
            assert_eq!(forged, 401, "{name} with a forged token");
            assert!(operation["responses"]["401"].is_object(), "{name}: 401");
        } else {
            assert_ne!(anonymous, 401, "{name} needs a token but does not say so");
        }
        if path.starts_with("/v1/admin/") {
            assert!(secured, "{name}: an administration route without security");
            assert!(operation["responses"]["403"].is_object(), "{name}: 403");
        }
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_reference_page_and_its_assets_are_served_under_their_own_policy(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(header(&page, "content-type").starts_with("text/html"));
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/docs/app.js""#), "{html}");
    assert!(html.contains(r#"href="/docs/app.css""#), "{html}");
    assert!(html.contains("/openapi.json"));
    // Nothing from elsewhere: the page works offline.
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "{html}"
    );

    let script = app
        .client
        .get(app.url("/docs/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(header(&script, "content-type").starts_with("text/javascript"));
    assert_eq!(header(&script, "content-security-policy"), policy);
    let js = script.text().await.unwrap();
    assert!(js.contains(r#"fetch("/openapi.json""#));
    assert!(
        !js.contains("innerHTML"),
        "the script builds nodes, never markup"
    );

    let style = app
        .client
        .get(app.url("/docs/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(style.status(), 200);
    assert!(header(&style, "content-type").starts_with("text/css"));

    // The API's own answers keep the strict default policy.
    let other = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&other, "content-security-policy"),
        "default-src 'none'; frame-ancestors 'none'"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_project_request_schema_lists_the_templates_of_the_instance(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    let schema = &doc["components"]["schemas"]["CreateProjectRequest"];
    assert_eq!(
        schema["properties"]["template"]["enum"],
        json!(["service", "static-site"])
    );
    let variants = schema["oneOf"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for variant in variants {
        let parameters = &variant["properties"]["parameters"];
        assert_eq!(parameters["additionalProperties"], false, "{variant}");
        assert!(parameters["properties"].is_object(), "{variant}");
    }
    let example = &doc["paths"]["/v1/projects"]["post"]["requestBody"]["content"]["application/json"]
        ["example"];
    assert_eq!(example["template"], "service");
    app.stop().await;
}
