//! Projects provisioned end to end: requested through the real API, provisioned by the real
//! worker over RabbitMQ, with real drivers (a database and login role on the test's PostgreSQL
//! server, a git repository on disk, a signed webhook to a real HTTP server that fails on
//! command).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use idp_events::StreamId;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::harness::{
    self, ADMIN_EMAIL, ADMIN_PASSWORD, TestApi, drop_project_database, role_has_password,
    spawn_worker_process, start_api, start_worker,
};
use idp_events::jobs::BreakerEvent;
use idp_events::project::ProjectEvent;
use idp_events::{EventStore, RecordedEvent};
use idp_testkit::broker::unique_prefix;
use idp_testkit::clock::wait_until;
use idp_testkit::settings::repo_root;
use idp_testkit::webhook::WebhookServer;
use idp_worker::provision::drivers::signature;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

const SECRET: &str = "webhook-test-secret";
const WAIT: Duration = Duration::from_secs(60);

/// Worker flags of these tests: the webhook, and short backoffs.
fn flags(hook: &WebhookServer) -> Vec<String> {
    [
        "--provision-webhook-url",
        &hook.url(),
        "--provision-webhook-secret",
        SECRET,
        "--provision-backoff-base-ms",
        "100",
        "--provision-backoff-cap-ms",
        "400",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

struct Owner {
    api: TestApi,
    token: String,
}

impl Owner {
    async fn start(conn: &PgConnectOptions) -> Self {
        let api = start_api(conn).await;
        let token = api.token(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        Self { api, token }
    }

    async fn request(&self, name: &str, template: &str) -> Uuid {
        let response = self
            .api
            .client
            .post(self.api.url("/v1/projects"))
            .bearer_auth(&self.token)
            .json(&json!({ "name": name, "template": template }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    async fn project(&self, id: Uuid) -> Value {
        self.api
            .client
            .get(self.api.url(&format!("/v1/projects/{id}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str) -> reqwest::Response {
        self.api
            .client
            .post(self.api.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// Waits until the project's status is `status`; fails early at another final status.
    async fn wait_for(&self, id: Uuid, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let project = self.project(id).await;
            let now = project["status"].as_str().unwrap_or_default().to_owned();
            if now == status {
                return project;
            }
            assert!(
                !(["ready", "failed", "deleted"].contains(&now.as_str())),
                "project ended {now}, not {status}: {project:#}"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "project still {now}: {project:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn history(store: &EventStore, id: Uuid) -> Vec<(ProjectEvent, RecordedEvent)> {
    store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| ProjectEvent::from_recorded(&e).map(|p| (p, e)))
        .collect()
}

fn starts_of(events: &[(ProjectEvent, RecordedEvent)], step: &str) -> usize {
    events
        .iter()
        .filter(|(e, _)| matches!(e, ProjectEvent::StepStarted { step: s, .. } if s == step))
        .count()
}

/// The one repository of the test's repository root.
fn repository(prefix: &str) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(repo_root(prefix))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

fn git(repo: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

async fn database_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("select exists (select from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn role_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("select exists (select from pg_roles where rolname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Distinct webhook effects: a receiver acts once per idempotency key.
fn effects(hook: &WebhookServer) -> std::collections::BTreeSet<String> {
    hook.received()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_service_gets_a_database_a_repository_and_one_signed_webhook_and_deleting_removes_them(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let hook = WebhookServer::start(200).await;
    let prefix = unique_prefix();
    let owner = Owner::start(&conn).await;
    let args = flags(&hook);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = start_worker(&conn, &prefix, None, &args).await;

    let id = owner.request("billing", "service").await;
    let project = owner.wait_for(id, "ready").await;

    let steps: Vec<(&str, &str)> = project["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("repository", "succeeded"),
            ("database", "succeeded"),
            ("webhook", "succeeded")
        ]
    );

    // The database and its login, with the password handed out once.
    let credentials: Value = owner
        .post(&format!("/v1/projects/{id}/credentials"))
        .await
        .json()
        .await
        .unwrap();
    let database = credentials["database"].as_str().unwrap().to_owned();
    let role = credentials["role"].as_str().unwrap().to_owned();
    let password = credentials["password"].as_str().unwrap().to_owned();
    assert!(role_has_password(&pool, &role, &password).await);
    assert!(!role_has_password(&pool, &role, "not the password").await);
    let login = conn
        .clone()
        .database(&database)
        .username(&role)
        .password(&password);
    let mut connection = sqlx::PgConnection::connect_with(&login).await.unwrap();
    let (user, db): (String, String) =
        sqlx::query_as("select current_user::text, current_database()::text")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(
        (user.as_str(), db.as_str()),
        (role.as_str(), database.as_str())
    );
    connection.close().await.unwrap();
    // The login reaches its own database only: idp's is closed to it.
    let idp_database = conn.get_database().unwrap().to_owned();
    match sqlx::PgConnection::connect_with(&login.clone().database(&idp_database)).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("42501"), "{e}"),
        other => panic!("the project's login reached idp's database: {other:?}"),
    }
    assert_eq!(project["steps"][1]["output"]["password_key_id"], "test");
    let history_text = serde_json::to_string(
        &sqlx::query_scalar::<_, Value>("select jsonb_agg(data) from events")
            .fetch_one(&pool)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        !history_text.contains(&password),
        "the log never holds the password"
    );

    // The repository: rendered files and one commit.
    let repo = repository(&prefix);
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    assert!(readme.starts_with("# billing\n"), "{readme}");
    assert_eq!(git(&repo, &["rev-list", "--count", "HEAD"]).trim(), "1");

    // One signed webhook.
    let received = hook.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    let timestamp = request.header("x-idp-timestamp").unwrap();
    assert_eq!(
        request.header("x-idp-signature").unwrap(),
        signature(SECRET.as_bytes(), &timestamp, &request.body)
    );
    assert_eq!(request.json()["project_id"], id.to_string());
    assert_eq!(request.json()["name"], "billing");

    // Deleting undoes every step.
    let deleted = owner
        .api
        .client
        .delete(owner.api.url(&format!("/v1/projects/{id}")))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    owner.wait_for(id, "deleted").await;
    assert!(!database_exists(&pool, &database).await);
    assert!(!role_exists(&pool, &role).await);
    assert!(!repo.exists());

    worker.stop().await;
    owner.api.stop().await;
    harness::delete_queues(&prefix).await;
    let _ = std::fs::remove_dir_all(repo_root(&prefix));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_static_site_gets_a_repository_and_a_webhook(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let _pool = opts.connect_with(conn.clone()).await.unwrap();
    let hook = WebhookServer::start(200).await;
    let prefix = unique_prefix();
    let owner = Owner::start(&conn).await;
    let args = flags(&hook);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = start_worker(&conn, &prefix, None, &args).await;

    let id = owner.request("docs", "static-site").await;
    owner.wait_for(id, "ready").await;

    let repo = repository(&prefix);
    let index = std::fs::read_to_string(repo.join("index.html")).unwrap();
    assert!(index.contains("<h1>docs</h1>"), "{index}");
    assert_eq!(git(&repo, &["rev-list", "--count", "HEAD"]).trim(), "1");
    assert_eq!(hook.received().len(), 1);
    assert_eq!(hook.received()[0].json()["template"], "static-site");

    worker.stop().await;
    owner.api.stop().await;
    harness::delete_queues(&prefix).await;
    let _ = std::fs::remove_dir_all(repo_root(&prefix));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_webhook_failing_three_times_is_retried_with_backoff_and_the_project_ends_ready(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let hook = WebhookServer::start(200).await;
    hook.answer_next(&[503, 503, 503]);
    let prefix = unique_prefix();
    let owner = Owner::start(&conn).await;
    let args = flags(&hook);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = start_worker(&conn, &prefix, None, &args).await;

    let id = owner.request("flaky", "static-site").await;
    let project = owner.wait_for(id, "ready").await;

    let events = history(&store, id).await;
    let failures: Vec<(u32, Option<u64>, chrono::DateTime<chrono::Utc>)> = events
        .iter()
        .filter_map(|(e, r)| match e {
            ProjectEvent::StepFailed {
                step,
                attempt,
                retry_in_ms,
                permanent,
                error,
            } if step == "webhook" => {
                assert!(!permanent, "a 503 is not permanent");
                assert!(error.contains("503"), "{error}");
                Some((*attempt, *retry_in_ms, r.recorded_at))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        failures.iter().map(|f| f.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "{events:?}"
    );
    let webhook_starts: Vec<chrono::DateTime<chrono::Utc>> = events
        .iter()
        .filter_map(|(e, r)| match e {
            ProjectEvent::StepStarted { step, .. } if step == "webhook" => Some(r.recorded_at),
            _ => None,
        })
        .collect();
    assert_eq!(webhook_starts.len(), 4);
    for (i, (attempt, delay, failed_at)) in failures.iter().enumerate() {
        let ceiling = (100_u64 << i).min(400);
        let delay = delay.expect("a retry is scheduled");
        assert!(
            delay <= ceiling,
            "attempt {attempt}: {delay} ms > {ceiling} ms"
        );
        let waited = (webhook_starts[i + 1] - *failed_at).num_milliseconds();
        assert!(
            waited >= i64::try_from(delay).unwrap(),
            "waited {waited} ms after attempt {attempt}, scheduled {delay} ms"
        );
    }
    let webhook = &project["steps"][1];
    assert_eq!(webhook["attempts"], 4);
    assert_eq!(hook.received().len(), 4);
    assert_eq!(
        effects(&hook).len(),
        1,
        "one idempotency key for every attempt"
    );

    worker.stop().await;
    owner.api.stop().await;
    harness::delete_queues(&prefix).await;
    let _ = std::fs::remove_dir_all(repo_root(&prefix));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_webhook_down_for_good_opens_the_breaker_fails_the_project_and_a_manual_retry_finishes_it(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let hook = WebhookServer::start(503).await;
    let prefix = unique_prefix();
    let owner = Owner::start(&conn).await;
    let mut args = flags(&hook);
    args.extend(
        [
            "--provision-max-attempts",
            "4",
            "--breaker-failure-threshold",
            "2",
            "--breaker-open-ms",
            "3000",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = start_worker(&conn, &prefix, None, &args).await;

    let id = owner.request("down", "service").await;
    let failed = owner.wait_for(id, "failed").await;

    // Two calls reached the server; the breaker then refused the other two at once.
    assert_eq!(hook.received().len(), 2);
    let webhook = &failed["steps"][2];
    assert_eq!(webhook["status"], "failed");
    assert_eq!(webhook["attempts"], 4);
    assert!(
        webhook["last_error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker provision-webhook is open"),
        "{webhook}"
    );
    assert!(
        failed["failure"].as_str().unwrap().contains("webhook"),
        "{failed}"
    );
    let ready: Value = reqwest::get(format!("http://127.0.0.1:{}/health/ready", worker.port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["breakers"]["provision-webhook"], "open", "{ready}");

    // The server recovers; once the breaker's cool-down is over, a manual retry resumes at the
    // failed step (its first call is the breaker's trial).
    hook.answer_always(200);
    let retry_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "select retry_at from circuit_breakers where name = 'provision-webhook'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let cool_down = (retry_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(cool_down).await;
    let retried = owner.post(&format!("/v1/projects/{id}/retry")).await;
    assert_eq!(retried.status(), 202);
    owner.wait_for(id, "ready").await;

    let events = history(&store, id).await;
    assert_eq!(starts_of(&events, "repository"), 1, "not redone");
    assert_eq!(starts_of(&events, "database"), 1, "not redone");
    assert_eq!(hook.received().len(), 3);
    let transitions: Vec<BreakerEvent> = store
        .read_stream(StreamId::breaker("provision-webhook").as_str(), 1)
        .await
        .unwrap()
        .iter()
        .filter_map(BreakerEvent::from_recorded)
        .collect();
    assert!(
        matches!(
            transitions.as_slice(),
            [
                BreakerEvent::CircuitOpened { .. },
                BreakerEvent::CircuitHalfOpened,
                BreakerEvent::CircuitClosed
            ]
        ),
        "{transitions:?}"
    );

    worker.stop().await;
    owner.api.stop().await;
    harness::delete_queues(&prefix).await;
    let _ = std::fs::remove_dir_all(repo_root(&prefix));
    drop_project_database(&pool, id).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_worker_killed_in_the_middle_of_a_step_is_replaced_and_every_effect_happens_once(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let hook = WebhookServer::start(200).await;
    // The webhook holds its answer, so the kill lands while the step is under way.
    hook.delay(Duration::from_secs(3));
    let prefix = unique_prefix();
    let owner = Owner::start(&conn).await;
    let args = flags(&hook);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut worker = spawn_worker_process(&conn, &prefix, None, &args);

    let id = owner.request("sturdy", "service").await;
    wait_until("the webhook call", WAIT, || async {
        !hook.received().is_empty()
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(
        owner.project(id).await["steps"][2]["status"],
        "running",
        "killed in the middle of the webhook step"
    );

    hook.delay(Duration::ZERO);
    let mut worker = spawn_worker_process(&conn, &prefix, None, &args);
    owner.wait_for(id, "ready").await;
    harness::terminate(&mut worker);

    let events = history(&store, id).await;
    assert_eq!(starts_of(&events, "repository"), 1);
    assert_eq!(starts_of(&events, "database"), 1);
    assert_eq!(effects(&hook).len(), 1, "one webhook effect");
    let _ = repository(&prefix);
    let databases: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(format!("p_{}", id.simple()))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(databases, 1);

    owner.api.stop().await;
    harness::delete_queues(&prefix).await;
    let _ = std::fs::remove_dir_all(repo_root(&prefix));
    drop_project_database(&pool, id).await;
}
