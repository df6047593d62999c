//! `GET /v1/admin/streams/{stream_id}` over HTTP: a stream's history and its aggregate's state
//! now and as of past instants, and the route's access control and input errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use common::{TestApp, spawn_app};
use idp_events::identity::user::UserEvent;
use idp_events::project::project::ProjectEvent;
use idp_events::project::template::{DriverKind, StepSpec};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use idp_testkit::clock::rfc3339;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

async fn connect(conn: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(conn.clone())
        .await
        .unwrap()
}

/// Appends `events` to `stream` one append each (so each has its own `recorded_at`), and
/// returns the stream as stored.
async fn append_one_by_one(
    store: &EventStore,
    stream: &str,
    actor: &str,
    events: Vec<NewEvent>,
) -> Vec<RecordedEvent> {
    let person = idp_events::StreamId::parse(stream)
        .ok()
        .and_then(|s| s.user_id());
    for event in events {
        let mut append = Append::to(stream)
            .expecting(ExpectedVersion::Any)
            .event(event)
            .metadata(Metadata::actor(actor));
        if let Some(person) = person {
            append = append.about(person);
        }
        store.append(append).await.unwrap();
    }
    let stored = store.read_stream(stream, 1).await.unwrap();
    for pair in stored.windows(2) {
        assert!(
            pair[0].recorded_at < pair[1].recorded_at,
            "distinct instants"
        );
    }
    stored
}

/// Halfway between two instants, in whole microseconds (the log's precision).
fn midpoint(a: DateTime<Utc>, b: DateTime<Utc>) -> DateTime<Utc> {
    let mid = a + (b - a) / 2;
    DateTime::from_timestamp_micros(mid.timestamp_micros()).unwrap()
}

async fn history(app: &TestApp, token: &str, stream: &str, as_of: Option<DateTime<Utc>>) -> Value {
    let path = match as_of {
        Some(at) => format!("/v1/admin/streams/{stream}?as_of={}", rfc3339(at)),
        None => format!("/v1/admin/streams/{stream}"),
    };
    let response = app.get_auth(&path, token).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn as_of_returns_the_user_before_and_after_a_lock_a_role_change_and_a_password_change(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let admin = app.admin_token().await;
    let store = idp_testkit::keys::event_store(connect(&conn).await);
    let id = Uuid::now_v7();
    let stream = format!("user-{id}");
    let lock_end = Utc::now() + Duration::hours(1);
    let events = append_one_by_one(
        &store,
        &stream,
        "system",
        [
            UserEvent::UserRegistered {
                email: "ada@example.com".into(),
                display_name: Some("Ada".into()),
                roles: vec!["user".into()],
            },
            UserEvent::EmailVerified {
                verification_id: None,
            },
            UserEvent::AccountLocked {
                until: lock_end,
                lock_count: 1,
            },
            UserEvent::RolesChanged {
                roles: vec!["admin".into(), "user".into()],
            },
            UserEvent::PasswordChanged,
        ]
        .iter()
        .map(UserEvent::to_new_event)
        .collect(),
    )
    .await;
    let at: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();

    // Now: the whole history and the current state, without `as_of`.
    let now = history(&app, &admin, &stream, None).await;
    assert_eq!(now["stream_id"], json!(stream));
    assert_eq!(now["version"], json!(5));
    assert!(now.get("as_of").is_none());
    let types: Vec<&str> = now["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "UserRegistered",
            "EmailVerified",
            "AccountLocked",
            "RolesChanged",
            "PasswordChanged"
        ]
    );
    let first = &now["events"][0];
    assert_eq!(first["position"], json!(events[0].position));
    assert_eq!(first["event_id"], json!(events[0].event_id));
    assert_eq!(first["version"], json!(1));
    assert_eq!(first["schema_version"], json!(1));
    assert_eq!(first["data"]["email"], json!("ada@example.com"));
    assert_eq!(first["metadata"]["actor"], json!("system"));
    assert_eq!(first["hash"], json!(hex::encode(&events[0].hash)));
    assert_eq!(
        first["recorded_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        at[0]
    );
    assert_eq!(now["state"]["roles"], json!(["admin", "user"]));
    assert_eq!(now["state"]["password_changed_at"], json!(at[4]));
    // Password hashes live in the credentials table, never in the log or the state.
    let keys: Vec<&String> = now["state"].as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(
            |k| !k.contains("hash") && (!k.contains("password") || *k == "password_changed_at")
        ),
        "{keys:?}"
    );

    // Before the lock (between verification and lock): not locked, plain user.
    let before_lock = history(&app, &admin, &stream, Some(midpoint(at[1], at[2]))).await;
    assert_eq!(before_lock["version"], json!(2));
    assert_eq!(before_lock["events"].as_array().unwrap().len(), 2);
    assert_eq!(before_lock["as_of"], json!(midpoint(at[1], at[2])));
    assert_eq!(before_lock["state"]["email_verified"], json!(true));
    assert_eq!(before_lock["state"]["locked_until"], Value::Null);
    assert_eq!(before_lock["state"]["lock_count"], json!(0));

    // At the very instant of the lock (inclusive): locked, still a plain user.
    let after_lock = history(&app, &admin, &stream, Some(at[2])).await;
    assert_eq!(after_lock["version"], json!(3));
    assert_eq!(after_lock["state"]["locked_until"], json!(lock_end));
    assert_eq!(after_lock["state"]["lock_count"], json!(1));
    assert_eq!(after_lock["state"]["roles"], json!(["user"]));

    // After the role change, before the password change: admin, password from registration.
    let after_roles = history(&app, &admin, &stream, Some(midpoint(at[3], at[4]))).await;
    assert_eq!(after_roles["version"], json!(4));
    assert_eq!(after_roles["state"]["roles"], json!(["admin", "user"]));
    assert_eq!(after_roles["state"]["password_changed_at"], json!(at[0]));

    // After the password change.
    let after_password = history(&app, &admin, &stream, Some(at[4])).await;
    assert_eq!(after_password["version"], json!(5));
    assert_eq!(after_password["state"]["password_changed_at"], json!(at[4]));

    // Before the stream began: no events, no state, but the stream exists (200).
    let before = history(&app, &admin, &stream, Some(at[0] - Duration::seconds(1))).await;
    assert_eq!(before["version"], json!(0));
    assert_eq!(before["events"], json!([]));
    assert_eq!(before["state"], Value::Null);

    // A `+01:00` offset, percent-encoded, means the same instant.
    let offset = at[2]
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339_opts(SecondsFormat::Micros, false)
        .replace('+', "%2B");
    let response = app
        .get_auth(
            &format!("/v1/admin/streams/{stream}?as_of={offset}"),
            &admin,
        )
        .await;
    assert_eq!(response.status(), 200);
    let with_offset: Value = response.json().await.unwrap();
    assert_eq!(with_offset["version"], json!(3));
    assert_eq!(with_offset["as_of"], json!(at[2]));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn as_of_returns_a_project_as_it_was_at_a_past_instant(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let admin = app.admin_token().await;
    let store = idp_testkit::keys::event_store(connect(&conn).await);
    let id = Uuid::now_v7();
    let stream = format!("project-{id}");
    let events = append_one_by_one(
        &store,
        &stream,
        "worker",
        [
            ProjectEvent::ProjectRequested {
                owner_id: Uuid::now_v7(),
                name: "shop".into(),
                template: "service".into(),
                template_version: 1,
                parameters: BTreeMap::new(),
                steps: vec![StepSpec {
                    name: "repository".into(),
                    driver: DriverKind::Repository,
                }],
                monthly_cost_cents: 0,
            },
            ProjectEvent::StepStarted {
                step: "repository".into(),
                attempt: 1,
            },
            ProjectEvent::StepSucceeded {
                step: "repository".into(),
                attempt: 1,
                output: json!({ "path": "/srv/git/shop.git" }),
            },
            ProjectEvent::ProjectReady,
        ]
        .iter()
        .map(ProjectEvent::to_new_event)
        .collect(),
    )
    .await;
    let at: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();

    let requested = history(&app, &admin, &stream, Some(midpoint(at[0], at[1]))).await;
    assert_eq!(requested["state"]["status"], json!("requested"));
    assert_eq!(requested["state"]["steps"][0]["status"], json!("pending"));
    assert_eq!(requested["state"]["name"], json!("shop"));

    let running = history(&app, &admin, &stream, Some(midpoint(at[1], at[2]))).await;
    assert_eq!(running["state"]["status"], json!("provisioning"));
    assert_eq!(running["state"]["steps"][0]["status"], json!("running"));
    assert_eq!(running["version"], json!(2));

    let now = history(&app, &admin, &stream, None).await;
    assert_eq!(now["state"]["status"], json!("ready"));
    assert_eq!(now["state"]["steps"][0]["status"], json!("succeeded"));
    assert_eq!(now["state"]["version"], json!(4));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn other_streams_have_a_history_without_a_state_and_unknown_streams_are_404(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let admin = app.admin_token().await;
    let store = idp_testkit::keys::event_store(connect(&conn).await);
    append_one_by_one(
        &store,
        "ledger-7",
        "system",
        vec![NewEvent::new("Touched", json!({ "n": 1 }))],
    )
    .await;
    let ledger = history(&app, &admin, "ledger-7", None).await;
    assert_eq!(ledger["version"], json!(1));
    assert_eq!(ledger["events"][0]["data"], json!({ "n": 1 }));
    assert_eq!(ledger["state"], Value::Null);

    let unknown = app
        .get_auth(
            &format!("/v1/admin/streams/user-{}", Uuid::now_v7()),
            &admin,
        )
        .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn stream_history_is_for_admins_only_and_bad_input_is_a_400(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let pool = connect(&conn).await;
    let admin = app.admin_token().await;
    // The administrator's own stream exists: every refusal below is about the caller or input.
    let admin_stream: String = sqlx::query_scalar(
        "select stream_id from events where event_type = 'UserRegistered' limit 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let path = format!("/v1/admin/streams/{admin_stream}");

    let anonymous = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // A plain user: register, verify through the log's token, sign in.
    let user = app
        .verified_user(&pool, "bob@example.com", "a long enough password")
        .await;
    assert_eq!(app.get_auth(&path, &user).await.status(), 403);
    assert_eq!(
        app.get_auth(&format!("{path}?as_of=2020-01-01T00:00:00Z"), &user)
            .await
            .status(),
        403
    );

    // The admin reads it; the state of a real account holds no password hash.
    let real = history(&app, &admin, &admin_stream, None).await;
    assert_eq!(real["state"]["email"], json!("root@example.com"));
    assert!(
        real["state"]["roles"]
            .as_array()
            .unwrap()
            .contains(&json!("admin"))
    );
    assert!(!real.to_string().contains("argon2"), "{real}");

    for bad in [
        format!("{path}?as_of=yesterday"),
        format!("{path}?as_of=2026-01-31"),
        // An unencoded `+` is a space in a query string.
        format!("{path}?as_of=2026-01-31T12:00:00+01:00"),
        format!("{path}?as_of="),
        format!("{path}?since=2026-01-31T12:00:00Z"),
        format!("/v1/admin/streams/{}", "x".repeat(201)),
        "/v1/admin/streams/user%20one".to_owned(),
        "/v1/admin/streams/user%0A1".to_owned(),
    ] {
        let response = app.get_auth(&bad, &admin).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_openapi_document_lists_the_stream_history_route(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let doc = app.openapi().await;
    let route = &doc["paths"]["/v1/admin/streams/{stream_id}"]["get"];
    assert!(route.is_object(), "{}", doc["paths"]);
    let params: Vec<&str> = route["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["stream_id", "as_of"]);
    for status in ["200", "400", "401", "403", "404"] {
        assert!(route["responses"][status].is_object(), "{status}");
    }
    assert!(doc["components"]["schemas"]["StreamHistory"].is_object());
    app.stop().await;
}
