//! The API process against real PostgreSQL and RabbitMQ: health, readiness, metrics, problem
//! documents, configuration errors and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

mod common;

use common::spawn_app;
use idp_testkit::broker::amqp_url;
use idp_testkit::database::database_url;

#[sqlx::test(migrations = false)]
async fn the_api_applies_migrations_and_reports_live_ready_and_metrics(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let client = reqwest::Client::new();

    let live = client
        .get(format!("{}/health/live", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    let ready = client
        .get(app.internal_url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["database", "broker"]);

    let metrics = client
        .get(app.internal_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("idp_build_info"));

    // The migrations ran: the event log exists and refuses to be emptied.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let err = sqlx::query("truncate events")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    pool.close().await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn readiness_names_the_broker_when_it_is_unreachable_and_the_api_stays_in_rotation(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // Nothing listens on port 1. The API's writes go to the log, not to the broker, so it
    // serves on: degraded, not unready.
    let app = spawn_app(&conn, &["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"]).await;
    let ready = reqwest::get(app.internal_url("/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    let checks = body["checks"].as_array().unwrap();
    assert_eq!(checks[0]["name"], "database");
    assert_eq!(checks[0]["status"], "up");
    assert_eq!(checks[1]["name"], "broker");
    assert_eq!(checks[1]["status"], "down");
    assert!(
        checks[1]["detail"]
            .as_str()
            .unwrap()
            .contains("cannot connect")
    );
    assert!(
        !body.to_string().contains("guest:guest"),
        "no credentials in the report"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn unknown_routes_get_a_problem_document_carrying_the_request_id(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let response = reqwest::get(format!("{}/v1/nothing-here", app.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!request_id.is_empty());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["type"], "https://idp.dev/problems/not-found");
    assert_eq!(body["request_id"], request_id.as_str());
    app.stop().await;
}

#[test]
fn a_bad_setting_stops_the_binary_with_a_message_naming_the_variable() {
    for (var, value) in [
        ("API_ADDR", "not-an-address"),
        ("DATABASE_URL", "mysql://localhost/idp"),
        ("AMQP_URL", "http://localhost"),
        ("LOG_FORMAT", "xml"),
        ("RUST_LOG", "[[["),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_idp-api"))
            .env(var, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}

#[sqlx::test(migrations = false)]
async fn sigterm_stops_the_api_gracefully(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let free_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (port, internal_port) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_idp-api"));
    command
        .env("DATABASE_URL", database_url(&conn))
        .env("PERSONAL_DATA_KEYS", idp_testkit::keys::PERSONAL_DATA_KEYS)
        .env("AMQP_URL", amqp_url())
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .env("API_INTERNAL_ADDR", format!("127.0.0.1:{internal_port}"))
        .env("LOG_FORMAT", "json")
        .env(
            "JWT_KEYS_DIR",
            std::env::temp_dir().join(format!("idp-test-keys-{port}")),
        )
        .env("EMAIL_TOKEN_KEYS", idp_testkit::keys::EMAIL_TOKEN_KEYS)
        .env(
            "PROJECT_DATABASE_KEYS",
            idp_testkit::keys::PROJECT_DATABASE_KEYS,
        )
        .env(
            "ADDRESS_DIGEST_KEYS",
            idp_testkit::keys::ADDRESS_DIGEST_KEYS,
        )
        .env("EMAIL_INDEX_KEYS", idp_testkit::keys::EMAIL_INDEX_KEYS)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    idp_ops::test_logs::child(&mut command, "idp-api");
    let mut child = command.spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}/health/live");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(&url).await.is_err() {
        assert!(Instant::now() < deadline, "the API never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The binary writes its logs from a thread of its own and says if it ever had to drop any.
    let metrics = reqwest::get(format!("http://127.0.0.1:{internal_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idp_log_lines_dropped_total 0"),
        "{metrics}"
    );
    idp_testkit::process::sigterm(&child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API did not stop within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn bodies_over_the_limit_and_wrong_methods_get_problem_documents(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &["--body-limit-bytes", "1024"]).await;
    // Declared too large: refused before the body is read.
    let large = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"email":"{}@example.com"}}"#, "a".repeat(2048)))
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 413);
    assert_eq!(
        large.headers()["content-type"],
        "application/problem+json",
        "a problem document"
    );
    let request_id = large.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = large.json().await.unwrap();
    assert_eq!(body["status"], 413);
    assert_eq!(body["type"], "https://idp.dev/problems/payload-too-large");
    assert_eq!(body["request_id"], request_id.as_str());

    let wrong = app
        .client
        .delete(app.url("/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["allow"], "POST");
    assert_eq!(wrong.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["type"], "https://idp.dev/problems/method-not-allowed");
    app.stop().await;
}
