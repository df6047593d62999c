//! Projects over real HTTP against a fresh database: templates, requests with idempotency keys,
//! listing, access rules, retry, deletion, the one-time database login and live events.
//!
//! No worker runs here: its progress is simulated by appending project events to the stream
//! (with the `projects` table in the same transaction), as the worker does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use idp_events::StreamId;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use common::identity::PASSWORD;
use common::{TestApp, spawn_app};
use idp_api::config::Config;
use idp_api::startup::Application;
use idp_events::project::{Project, ProjectEvent, read_model};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

/// The API, a pool on its database and a store to play the worker with.
struct Env {
    app: TestApp,
    pool: PgPool,
    store: EventStore,
}

async fn env(conn: &PgConnectOptions, extra: &[&str]) -> Env {
    let mut args = common::ADMIN_ARGS.to_vec();
    args.extend_from_slice(extra);
    let app = spawn_app(conn, &args).await;
    let pool = idp_testkit::database::pool(conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    Env { app, pool, store }
}

impl Env {
    /// Registers, verifies and signs in a user; returns an access token.
    async fn user(&self, email: &str) -> String {
        self.app.verified_user(&self.pool, email, PASSWORD).await
    }

    async fn admin(&self) -> String {
        self.app.admin_token().await
    }

    async fn request(&self, token: &str, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .post(self.app.url("/v1/projects"))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    /// Requests a `service` project named `name`; returns its id.
    async fn create(&self, token: &str, name: &str) -> Uuid {
        let response = self
            .request(token, json!({ "name": name, "template": "service" }), None)
            .await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    async fn send(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::Response {
        self.app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn detail(&self, token: &str, id: Uuid) -> Value {
        let response = self
            .app
            .get_auth(&format!("/v1/projects/{id}"), token)
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Plays the worker: appends `events` to project `id`'s stream at its current version and
    /// saves the `projects` table in the same transaction. Returns the events' positions.
    async fn simulate(&self, id: Uuid, events: &[ProjectEvent]) -> Vec<i64> {
        let history = self
            .store
            .read_stream(StreamId::project(id).as_str(), 1)
            .await
            .unwrap();
        let mut project = Project::fold(id, &history);
        let mut tx = self.pool.begin().await.unwrap();
        let outcome = self
            .store
            .append_in(
                &mut tx,
                Append::to(StreamId::project(id))
                    .expecting(ExpectedVersion::Exact(project.version))
                    .events(events.iter().map(ProjectEvent::to_new_event))
                    .metadata(Metadata::actor("worker")),
            )
            .await
            .unwrap();
        for event in events {
            project.apply(event, chrono::Utc::now());
        }
        project.version = u64::try_from(outcome.stream_version).unwrap();
        read_model::save(&mut tx, &project).await.unwrap();
        tx.commit().await.unwrap();
        outcome.positions
    }

    async fn count_requested(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events where event_type = 'ProjectRequested'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn started(step: &str) -> ProjectEvent {
    ProjectEvent::StepStarted {
        step: step.into(),
        attempt: 1,
    }
}

fn succeeded(step: &str, output: Value) -> ProjectEvent {
    ProjectEvent::StepSucceeded {
        step: step.into(),
        attempt: 1,
        output,
    }
}

/// A database step's output, its password derived with the test ring's key `test`.
fn database_output() -> Value {
    json!({ "database": "p_billing", "role": "p_billing", "host": "db.internal", "port": 5432,
            "password_key_id": "test" })
}

/// Every step of a `service` project succeeding, and the project ready.
fn provisioned() -> Vec<ProjectEvent> {
    vec![
        started("repository"),
        succeeded("repository", json!({ "path": "/repos/billing" })),
        started("database"),
        succeeded("database", database_output()),
        started("webhook"),
        succeeded("webhook", json!({ "status": 200 })),
        ProjectEvent::ProjectReady,
    ]
}

fn failed_at_repository() -> Vec<ProjectEvent> {
    vec![
        started("repository"),
        ProjectEvent::StepFailed {
            step: "repository".into(),
            attempt: 1,
            error: "disk full".into(),
            permanent: true,
            retry_in_ms: None,
        },
        ProjectEvent::ProjectFailed {
            step: "repository".into(),
            reason: "disk full".into(),
        },
    ]
}

/// Status and problem body (without the per-request id).
async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let mut body: Value = response.json().await.unwrap();
    body.as_object_mut().unwrap().remove("request_id");
    (status, body)
}

/// A directory with one extra template taking a required parameter.
fn templates_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("idp-test-templates-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("team-service.json"),
        r#"{"name": "team-service", "version": 3, "description": "A service owned by a team.",
            "parameters": [{"name": "team", "description": "The owning team."}],
            "steps": [{"name": "repository", "driver": "repository"}],
            "files": {"OWNERS": "{{ team }}\n"}}"#,
    )
    .unwrap();
    dir
}

#[sqlx::test(migrations = false)]
async fn templates_are_listed_with_their_parameters_and_steps(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let dir = templates_dir();
    let env = env(&conn, &["--project-templates-dir", dir.to_str().unwrap()]).await;
    assert_eq!(
        env.app
            .client
            .get(env.app.url("/v1/templates"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let token = env.user("ada@example.com").await;

    let response = env.app.get_auth("/v1/templates", &token).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["service", "static-site", "team-service"]);
    let service = &body["items"][0];
    assert_eq!(service["version"], 1);
    assert_eq!(
        service["steps"],
        json!([
            {"name": "repository", "driver": "repository"},
            {"name": "database", "driver": "database"},
            {"name": "webhook", "driver": "webhook"},
        ])
    );
    assert_eq!(
        service["parameters"][1],
        json!({"name": "language", "description": "The main programming language.",
               "default": "rust", "required": false})
    );
    assert_eq!(
        body["items"][2]["parameters"],
        json!([{"name": "team", "description": "The owning team.", "default": null, "required": true}])
    );
    env.app.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_broken_template_file_stops_start_up_naming_the_variable_and_the_file(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let dir = templates_dir();
    std::fs::write(dir.join("broken.json"), "{ not json").unwrap();
    let db = idp_testkit::database::database_url(&conn);
    let config = Config::try_parse_from([
        "idp-api",
        "--database-url",
        &db,
        "--api-addr",
        "127.0.0.1:0",
        "--project-templates-dir",
        dir.to_str().unwrap(),
    ])
    .unwrap();

    let error = Application::build(&config).await.unwrap_err().to_string();

    assert!(error.contains("PROJECT_TEMPLATES_DIR"), "{error}");
    assert!(error.contains("broken.json"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_request_is_accepted_with_links_and_shows_the_template_steps_pending(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;

    let response = env
        .request(
            &token,
            json!({ "name": "billing", "template": "service", "parameters": { "language": "go" } }),
            None,
        )
        .await;

    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(location, format!("/v1/projects/{id}"));
    assert_eq!(
        body,
        json!({
            "id": id, "name": "billing", "template": "service", "status": "requested",
            "links": { "self": format!("/v1/projects/{id}"), "events": format!("/v1/projects/{id}/events") },
        })
    );

    let detail = env.detail(&token, id).await;
    assert_eq!(detail["status"], "requested");
    assert_eq!(detail["template_version"], 1);
    assert_eq!(
        detail["parameters"],
        json!({ "description": "A service", "language": "go" })
    );
    assert_eq!(detail["failure"], Value::Null);
    assert!(detail["created_at"].as_str().unwrap().ends_with('Z'));
    let steps = detail["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for (step, (name, driver)) in steps.iter().zip([
        ("repository", "repository"),
        ("database", "database"),
        ("webhook", "webhook"),
    ]) {
        assert_eq!(
            step,
            &json!({ "name": name, "driver": driver, "status": "pending", "attempts": 0,
                     "last_error": null, "started_at": null, "finished_at": null, "output": null })
        );
    }
    // The request is in the log, with its actor.
    let history = env
        .store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].event_type, "ProjectRequested");
    assert_eq!(
        history[0].typed_metadata().actor.unwrap(),
        format!("user-{}", detail["owner_id"].as_str().unwrap())
    );
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn invalid_requests_are_422_problems_saying_what_is_wrong(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let dir = templates_dir();
    let env = env(&conn, &["--project-templates-dir", dir.to_str().unwrap()]).await;
    let token = env.user("ada@example.com").await;
    let cases = [
        (
            json!({ "name": "Billing", "template": "service" }),
            "name: the name contains 'B'; only lowercase letters a-z, digits 0-9 and '-' are allowed",
        ),
        (
            json!({ "name": "a".repeat(64), "template": "service" }),
            "name: the name is 64 characters long; at most 63 are allowed",
        ),
        (
            json!({ "name": "2fa", "template": "service" }),
            "name: the name must start with a lowercase letter a-z",
        ),
        (
            json!({ "name": "billing", "template": "mainframe" }),
            "template: there is no template \"mainframe\" (GET /v1/templates lists them)",
        ),
        (
            json!({ "name": "billing", "template": "service", "parameters": { "colour": "red" } }),
            "parameters: unknown parameter \"colour\"",
        ),
        (
            json!({ "name": "billing", "template": "team-service" }),
            "parameters: parameter \"team\" is required",
        ),
    ];
    for (body, detail) in cases {
        let (status, problem) = problem(env.request(&token, body.clone(), None).await).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(problem["detail"], detail, "{body}");
        assert_eq!(problem["type"], "https://idp.dev/problems/unprocessable");
    }
    let (status, problem) = problem(
        env.request(
            &token,
            json!({ "name": "billing", "template": "service", "owner": "someone" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"].as_str().unwrap().contains("owner"),
        "{problem}"
    );
    assert_eq!(env.count_requested().await, 0);

    // A required parameter given: accepted.
    let response = env
        .request(
            &token,
            json!({ "name": "billing", "template": "team-service", "parameters": { "team": "payments" } }),
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    env.app.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_name_is_unique_per_owner_only(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let env = env(&conn, &[]).await;
    let ada = env.user("ada@example.com").await;
    let bob = env.user("bob@example.com").await;
    env.create(&ada, "billing").await;

    let (status, body) = problem(
        env.request(
            &ada,
            json!({ "name": "billing", "template": "static-site" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        body["detail"],
        "you already have a project named \"billing\""
    );

    env.create(&bob, "billing").await;
    assert_eq!(env.count_requested().await, 2);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_same_idempotency_key_and_request_answer_the_same_and_create_once(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let ada = env.user("ada@example.com").await;
    let bob = env.user("bob@example.com").await;
    // Parameters written in another order are the same request.
    let body = json!({ "name": "billing", "template": "service",
                       "parameters": { "language": "go", "description": "Bills" } });
    let same = json!({ "template": "service", "name": "billing",
                       "parameters": { "description": "Bills", "language": "go" } });

    let first = env.request(&ada, body.clone(), Some("order-1")).await;
    let second = env.request(&ada, same, Some("order-1")).await;

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 202);
    assert_eq!(first.headers()["location"], second.headers()["location"]);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let first: Value = first.json().await.unwrap();
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(env.count_requested().await, 1);

    // The same key with another request.
    let (status, problem_body) = problem(
        env.request(
            &ada,
            json!({ "name": "billing-2", "template": "service" }),
            Some("order-1"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        problem_body["detail"],
        "Idempotency-Key reused with a different request"
    );

    // Keys are per owner: Bob's "order-1" is his own.
    let bobs = env.request(&bob, body.clone(), Some("order-1")).await;
    assert_eq!(bobs.status(), 202);
    let bobs: Value = bobs.json().await.unwrap();
    assert_ne!(bobs["id"], first["id"]);

    // A failed first request leaves its key free.
    let invalid = env
        .request(
            &ada,
            json!({ "name": "Ledger", "template": "service" }),
            Some("order-2"),
        )
        .await;
    assert_eq!(invalid.status(), 422);
    let valid = env
        .request(
            &ada,
            json!({ "name": "ledger", "template": "service" }),
            Some("order-2"),
        )
        .await;
    assert_eq!(valid.status(), 202);
    assert_eq!(env.count_requested().await, 3);

    // Malformed keys.
    for key in ["", &"k".repeat(256), "with space"] {
        let (status, _) = problem(
            env.request(
                &ada,
                json!({ "name": "other", "template": "service" }),
                Some(key),
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "{key:?}");
    }
    assert!(
        env.request(
            &ada,
            json!({ "name": "other", "template": "service" }),
            Some(&"k".repeat(255))
        )
        .await
        .status()
            == 202
    );
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn ten_concurrent_identical_requests_create_one_project_and_answer_alike(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;
    let body = json!({ "name": "billing", "template": "service" });

    let responses = futures::future::join_all(
        (0..10).map(|_| env.request(&token, body.clone(), Some("concurrent-key"))),
    )
    .await;

    let mut bodies = Vec::new();
    let mut replayed = 0;
    for response in responses {
        assert_eq!(response.status(), 202);
        if response.headers().contains_key("idempotent-replayed") {
            replayed += 1;
        }
        bodies.push(response.json::<Value>().await.unwrap());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(
        replayed, 9,
        "one request did the work, the others got its answer"
    );
    assert_eq!(env.count_requested().await, 1);
    env.app.stop().await;
}

async fn page(env: &Env, token: &str, query: &str) -> Value {
    let response = env
        .app
        .get_auth(&format!("/v1/projects{query}"), token)
        .await;
    assert_eq!(response.status(), 200, "{query}");
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn the_list_shows_own_projects_newest_first_in_pages_and_admins_see_all(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let ada = env.user("ada@example.com").await;
    let bob = env.user("bob@example.com").await;
    let mut adas = Vec::new();
    for name in ["one", "two", "three", "four", "five"] {
        adas.push(env.create(&ada, name).await.to_string());
    }
    let bobs = env.create(&bob, "solo").await.to_string();
    adas.reverse();

    // Pages of two, following the cursor: every project once, newest first.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let body = page(&env, &ada, &query).await;
        pages += 1;
        assert!(body["items"].as_array().unwrap().len() <= 2);
        seen.extend(ids(&body));
        match body["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, adas);

    let first = &page(&env, &ada, "").await["items"][0];
    assert_eq!(first["name"], "five");
    assert_eq!(first["template"], "service");
    assert_eq!(first["status"], "requested");
    assert!(first["owner_id"].is_string());
    assert!(first["created_at"].is_string() && first["updated_at"].is_string());

    assert_eq!(
        ids(&page(&env, &bob, "").await),
        std::slice::from_ref(&bobs)
    );
    let admin = env.admin().await;
    let everyone = ids(&page(&env, &admin, "").await);
    assert_eq!(everyone.len(), 6);
    assert_eq!(everyone[0], bobs);

    // Filtered by status.
    let failed: Uuid = adas[2].parse().unwrap();
    env.simulate(failed, &failed_at_repository()).await;
    assert_eq!(
        ids(&page(&env, &ada, "?status=failed").await),
        [failed.to_string()]
    );
    assert_eq!(ids(&page(&env, &ada, "?status=requested").await).len(), 4);
    assert!(ids(&page(&env, &ada, "?status=deletion_failed").await).is_empty());

    for query in [
        "?status=bogus",
        "?status=Failed",
        "?limit=0",
        "?limit=201",
        "?cursor=nonsense",
        "?colour=red",
    ] {
        let response = env
            .app
            .get_auth(&format!("/v1/projects{query}"), &ada)
            .await;
        let (status, _) = problem(response).await;
        assert_eq!(status, 400, "{query}");
    }
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn another_users_project_is_not_found_whatever_the_route(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let ada = env.user("ada@example.com").await;
    let bob = env.user("bob@example.com").await;
    let id = env.create(&ada, "billing").await;
    env.simulate(id, &provisioned()).await;
    let missing = Uuid::now_v7();

    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/projects/{id}")),
        (reqwest::Method::POST, format!("/v1/projects/{id}/retry")),
        (reqwest::Method::DELETE, format!("/v1/projects/{id}")),
        (reqwest::Method::GET, format!("/v1/projects/{id}/events")),
        (
            reqwest::Method::POST,
            format!("/v1/projects/{id}/credentials"),
        ),
        (reqwest::Method::GET, format!("/v1/projects/{missing}")),
        (reqwest::Method::GET, "/v1/projects/not-a-uuid".to_owned()),
    ] {
        let (status, body) = problem(env.send(method.clone(), &path, &bob).await).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(body["type"], "https://idp.dev/problems/not-found");
    }
    // Nothing changed: still ready, credentials not handed out.
    assert_eq!(env.detail(&ada, id).await["status"], "ready");
    let history = env
        .store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap();
    assert_eq!(history.last().unwrap().event_type, "ProjectReady");

    // An administrator sees it, but the database login is the owner's alone.
    let admin = env.admin().await;
    assert_eq!(env.detail(&admin, id).await["name"], "billing");
    let (status, _) = problem(
        env.send(
            reqwest::Method::POST,
            &format!("/v1/projects/{id}/credentials"),
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn retry_resumes_a_failed_project_only(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;
    let id = env.create(&token, "billing").await;
    let retry = format!("/v1/projects/{id}/retry");

    let (status, body) = problem(env.send(reqwest::Method::POST, &retry, &token).await).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["detail"],
        "cannot retry while the project's status is requested"
    );

    env.simulate(id, &failed_at_repository()).await;
    let detail = env.detail(&token, id).await;
    assert_eq!(detail["status"], "failed");
    assert_eq!(detail["failure"], "disk full");
    assert_eq!(detail["steps"][0]["status"], "failed");
    assert_eq!(detail["steps"][0]["attempts"], 1);
    assert_eq!(detail["steps"][0]["last_error"], "disk full");
    assert!(detail["steps"][0]["started_at"].is_string());
    assert!(detail["steps"][0]["finished_at"].is_string());

    let response = env.send(reqwest::Method::POST, &retry, &token).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "provisioning");

    let detail = env.detail(&token, id).await;
    assert_eq!(detail["status"], "provisioning");
    assert_eq!(detail["failure"], Value::Null);
    assert_eq!(detail["steps"][0]["status"], "pending");
    let listed = page(&env, &token, "").await;
    assert_eq!(listed["items"][0]["status"], "provisioning");
    let (status, _) = problem(env.send(reqwest::Method::POST, &retry, &token).await).await;
    assert_eq!(status, 409);
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn delete_waits_for_provisioning_to_settle_then_starts_deprovisioning(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;
    let id = env.create(&token, "billing").await;
    let path = format!("/v1/projects/{id}");

    let (status, body) = problem(env.send(reqwest::Method::DELETE, &path, &token).await).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["detail"],
        "the project is still being provisioned; delete it once it is ready or failed"
    );

    env.simulate(id, &provisioned()).await;
    assert_eq!(env.detail(&token, id).await["status"], "ready");
    let response = env.send(reqwest::Method::DELETE, &path, &token).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "deleting"
    );

    assert_eq!(env.detail(&token, id).await["status"], "deleting");
    assert_eq!(
        page(&env, &token, "?status=deleting").await["items"][0]["id"],
        id.to_string()
    );
    let (status, body) = problem(env.send(reqwest::Method::DELETE, &path, &token).await).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["detail"],
        "the project is already deleted or being deleted"
    );
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_database_login_is_handed_to_the_owner_once(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;
    let id = env.create(&token, "billing").await;
    let path = format!("/v1/projects/{id}/credentials");

    let (status, body) = problem(env.send(reqwest::Method::POST, &path, &token).await).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["detail"],
        "the database is not provisioned: step \"database\" is pending"
    );

    env.simulate(
        id,
        &[
            started("repository"),
            succeeded("repository", json!({})),
            started("database"),
            succeeded("database", database_output()),
        ],
    )
    .await;
    let response = env.send(reqwest::Method::POST, &path, &token).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "database": "p_billing", "role": "p_billing", "host": "db.internal", "port": 5432,
            "password": idp_events::project::database_password(idp_testkit::keys::DATABASE_SECRET.as_bytes(), id),
        })
    );
    // The log records the hand-out, not the password.
    let history = env
        .store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.event_type, "CredentialsIssued");
    assert!(
        !last
            .data
            .to_string()
            .contains(body["password"].as_str().unwrap())
    );

    let (status, problem_body) =
        problem(env.send(reqwest::Method::POST, &path, &token).await).await;
    assert_eq!(status, 410);
    assert_eq!(problem_body["type"], "https://idp.dev/problems/gone");

    // A template without a database step has no login to hand out.
    let site = env
        .request(
            &token,
            json!({ "name": "docs", "template": "static-site" }),
            None,
        )
        .await;
    let site: Uuid = site.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = problem(
        env.send(
            reqwest::Method::POST,
            &format!("/v1/projects/{site}/credentials"),
            &token,
        )
        .await,
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(body["detail"], "the project has no database step");
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_login_whose_key_is_not_recorded_or_not_configured_is_not_handed_out_until_it_is_rotated(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;
    let id = env.create(&token, "billing").await;
    let path = format!("/v1/projects/{id}/credentials");
    // As recorded before key ids were: derived from a secret no longer configured.
    let mut legacy = database_output();
    legacy.as_object_mut().unwrap().remove("password_key_id");
    env.simulate(
        id,
        &[
            started("repository"),
            succeeded("repository", json!({})),
            started("database"),
            succeeded("database", legacy),
        ],
    )
    .await;

    let (status, body) = problem(env.send(reqwest::Method::POST, &path, &token).await).await;

    assert_eq!(status, 409);
    assert_eq!(body["type"], "https://idp.dev/problems/conflict");
    assert_eq!(
        body["detail"],
        "the database login was set up before its password key was recorded, so its password \
         cannot be handed out; ask an operator to rotate it (idp-worker harden-databases \
         --rotate-passwords), then ask again"
    );
    let history = env
        .store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap();
    assert!(
        history.iter().all(|e| e.event_type != "CredentialsIssued"),
        "nothing was handed out"
    );

    // A key that was removed from the ring too early is no better.
    let rotated = |key_id: &str| ProjectEvent::DatabasePasswordRotated {
        step: "database".into(),
        key_id: key_id.into(),
    };
    env.simulate(id, &[rotated("retired")]).await;
    let (status, body) = problem(env.send(reqwest::Method::POST, &path, &token).await).await;
    assert_eq!(status, 409);
    assert!(
        body["detail"].as_str().unwrap().starts_with(
            "the key \"retired\" that derived the database login's password is no longer configured"
        ),
        "{body}"
    );

    // Rotated to a configured key: handed out, once per rotation.
    env.simulate(id, &[rotated("test")]).await;
    let password =
        idp_events::project::database_password(idp_testkit::keys::DATABASE_SECRET.as_bytes(), id);
    let response = env.send(reqwest::Method::POST, &path, &token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["password"],
        password
    );
    let (status, _) = problem(env.send(reqwest::Method::POST, &path, &token).await).await;
    assert_eq!(status, 410);
    assert_eq!(
        env.detail(&token, id).await["steps"][1]["output"]["password_key_id"],
        "test"
    );
    env.simulate(id, &[rotated("retired"), rotated("test")])
        .await;
    let response = env.send(reqwest::Method::POST, &path, &token).await;
    assert_eq!(response.status(), 200, "a new rotation may be fetched once");
    env.app.stop().await;
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
}

/// A tiny SSE client over a streaming response.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    async fn connect(env: &Env, token: &str, id: Uuid, last_event_id: Option<&str>) -> Self {
        let mut request = env
            .app
            .client
            .get(env.app.url(&format!("/v1/projects/{id}/events")))
            .bearer_auth(token);
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` once the server ended the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an event or the end of the stream in time")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every remaining event, until the server ends the stream.
    async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

#[sqlx::test(migrations = false)]
async fn a_follower_sees_every_event_live_and_a_reconnect_resumes_after_last_event_id(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // A one-second request timeout: the stream must outlive it.
    let env = env(&conn, &["--request-timeout-secs", "1"]).await;
    let token = env.user("ada@example.com").await;
    let id = env.create(&token, "billing").await;

    let mut live = SseClient::connect(&env, &token, id, None).await;
    let mut seen = vec![live.next().await.unwrap()];
    assert_eq!(seen[0].event, "ProjectRequested");
    let steps = provisioned();
    // Events that arrived well before the 1 s fallback poll: woken by the log's notifications.
    let mut prompt = 0;
    for (i, event) in steps.iter().enumerate() {
        if i == 3 {
            // Well past the request timeout.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let positions = env.simulate(id, std::slice::from_ref(event)).await;
        let appended = std::time::Instant::now();
        let received = live.next().await.unwrap();
        if appended.elapsed() < Duration::from_millis(500) {
            prompt += 1;
        }
        assert_eq!(received.id, positions[0].to_string());
        assert_eq!(received.event, event.to_new_event().event_type, "event {i}");
        seen.push(received);
    }
    assert_eq!(live.next().await, None, "the stream ends once ready");
    assert!(prompt >= 5, "only {prompt} of 7 events came promptly");

    // Everything in the log, in order, with positions as ids.
    let history = env
        .store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap();
    assert_eq!(seen.len(), history.len());
    for (event, recorded) in seen.iter().zip(&history) {
        assert_eq!(event.id, recorded.position.to_string());
        assert_eq!(event.event, recorded.event_type);
        assert_eq!(event.data["position"], recorded.position);
        assert_eq!(event.data["version"], recorded.stream_version);
        assert_eq!(event.data["type"], recorded.event_type.as_str());
        assert_eq!(event.data["data"], recorded.data);
        assert!(event.data["recorded_at"].as_str().unwrap().ends_with('Z'));
    }

    // Reconnecting after the second event: exactly the rest, then the end (already ready).
    let mut resumed = SseClient::connect(&env, &token, id, Some(&seen[1].id)).await;
    assert_eq!(resumed.rest().await, seen[2..]);
    // After the last event: nothing, and the stream ends at once.
    let mut done = SseClient::connect(&env, &token, id, Some(&seen.last().unwrap().id)).await;
    assert!(done.rest().await.is_empty());

    for bad in ["999999999", "not-a-number"] {
        let response = env
            .app
            .client
            .get(env.app.url(&format!("/v1/projects/{id}/events")))
            .bearer_auth(&token)
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        let (status, _) = problem(response).await;
        assert_eq!(status, 400, "{bad}");
    }
    env.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_stream_keeps_following_through_a_retry_and_ends_when_the_project_settles(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;
    let id = env.create(&token, "billing").await;
    env.simulate(id, &failed_at_repository()).await;

    // Failed is final: the catch-up is sent, then the stream ends.
    let mut failed = SseClient::connect(&env, &token, id, None).await;
    let types: Vec<String> = failed.rest().await.into_iter().map(|e| e.event).collect();
    assert_eq!(
        types,
        [
            "ProjectRequested",
            "StepStarted",
            "StepFailed",
            "ProjectFailed"
        ]
    );

    // After a retry the stream follows until the project settles again.
    let retry = env
        .send(
            reqwest::Method::POST,
            &format!("/v1/projects/{id}/retry"),
            &token,
        )
        .await;
    assert_eq!(retry.status(), 202);
    let mut live = SseClient::connect(&env, &token, id, None).await;
    assert_eq!(live.rest_until("RetryRequested").await.len(), 5);
    env.simulate(id, &provisioned()[..2]).await;
    env.simulate(id, &provisioned()[2..]).await;
    let types: Vec<String> = live.rest().await.into_iter().map(|e| e.event).collect();
    assert_eq!(types.len(), 7);
    assert_eq!(types.last().unwrap(), "ProjectReady");
    env.app.stop().await;
}

impl SseClient {
    /// Events up to and including the first of type `event_type`.
    async fn rest_until(&mut self, event_type: &str) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            let last = event.event == event_type;
            events.push(event);
            if last {
                break;
            }
        }
        events
    }
}

#[sqlx::test(migrations = false)]
async fn stopping_the_api_ends_open_event_streams(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let env = env(&conn, &[]).await;
    let token = env.user("ada@example.com").await;
    let id = env.create(&token, "billing").await;
    let mut live = SseClient::connect(&env, &token, id, None).await;
    assert_eq!(live.next().await.unwrap().event, "ProjectRequested");

    tokio::time::timeout(PATIENCE, env.app.stop())
        .await
        .expect("the API stops although a stream is open");

    assert_eq!(live.next().await, None);
}

#[sqlx::test(migrations = false)]
async fn the_openapi_document_covers_the_project_routes(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    for (path, methods) in [
        ("/v1/templates", &["get"][..]),
        ("/v1/projects", &["get", "post"][..]),
        ("/v1/projects/{id}", &["get", "delete"][..]),
        ("/v1/projects/{id}/retry", &["post"][..]),
        ("/v1/projects/{id}/credentials", &["post"][..]),
        ("/v1/projects/{id}/events", &["get"][..]),
    ] {
        for method in methods {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
    for schema in [
        "CreateProjectRequest",
        "ProjectAccepted",
        "ProjectPage",
        "ProjectDetail",
        "DatabaseCredentials",
        "TemplateList",
        "StreamedEvent",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    assert!(
        doc["paths"]["/v1/projects/{id}/events"]["get"]["responses"]["200"]["content"]
            ["text/event-stream"]
            .is_object()
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn event_streams_are_capped_per_user_and_end_within_seconds_of_sign_out(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let env = env(&conn, &["--sse-max-streams-per-user", "2"]).await;
    let first_session = env.user("ada@example.com").await;
    let id = env.create(&first_session, "billing").await;
    let pair: Value = env
        .app
        .post(
            "/v1/auth/login",
            json!({ "email": "ada@example.com", "password": PASSWORD }),
        )
        .await
        .json()
        .await
        .unwrap();
    idp_ops::test_logs::remember_secrets_in(&pair);
    let second_session = pair["access_token"].as_str().unwrap();

    let mut a = SseClient::connect(&env, second_session, id, None).await;
    let mut b = SseClient::connect(&env, second_session, id, None).await;
    assert_eq!(a.next().await.unwrap().event, "ProjectRequested");
    assert_eq!(b.next().await.unwrap().event, "ProjectRequested");
    // The cap is the user's, whichever session asks.
    let third = env
        .send(
            reqwest::Method::GET,
            &format!("/v1/projects/{id}/events"),
            &first_session,
        )
        .await;
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    // Someone else is not limited by Ada's streams.
    let admin = env.admin().await;
    let mut other = SseClient::connect(&env, &admin, id, None).await;
    assert_eq!(other.next().await.unwrap().event, "ProjectRequested");

    let signed_out = env
        .app
        .post(
            "/v1/auth/logout",
            json!({ "refresh_token": pair["refresh_token"] }),
        )
        .await;
    assert_eq!(signed_out.status(), 204);
    let started = std::time::Instant::now();
    assert!(a.next().await.is_none(), "the stream ends");
    assert!(b.next().await.is_none(), "the stream ends");
    let ended_after = started.elapsed();
    assert!(
        ended_after < Duration::from_secs(3),
        "streams of an ended session close within seconds: {ended_after:?}"
    );
    // Their places are free again.
    let mut again = SseClient::connect(&env, &first_session, id, None).await;
    assert_eq!(again.next().await.unwrap().event, "ProjectRequested");
    drop(other);
    env.app.stop().await;
}
