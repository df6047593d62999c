//! `idp-worker replay`: the real binary prints a stream's history and its aggregate's state, now
//! and up to a past instant or log position, and refuses unknown streams and bad bounds clearly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use idp_events::identity::user::UserEvent;
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, RecordedEvent};
use idp_testkit::clock::rfc3339;
use idp_testkit::database::database_url;
use idp_testkit::process::stdout_of;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

fn replay(conn: &PgConnectOptions, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idp-worker"))
        .arg("replay")
        .args(args)
        .env("DATABASE_URL", database_url(conn))
        .env("PERSONAL_DATA_KEYS", idp_testkit::keys::PERSONAL_DATA_KEYS)
        .env("WORKER_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The pretty JSON state printed after the history.
fn printed_state(stdout: &str) -> Value {
    let (_, state) = stdout
        .split_once(":\n{")
        .unwrap_or_else(|| panic!("no state in {stdout}"));
    serde_json::from_str(&format!("{{{state}")).unwrap()
}

/// The history lines (after the header), as `(position, version, type, actor)`.
fn printed_events(stdout: &str) -> Vec<(i64, i64, String, String)> {
    stdout
        .lines()
        .skip(2)
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (
                fields[0].parse().unwrap(),
                fields[1].parse().unwrap(),
                fields[3].to_owned(),
                fields[4].to_owned(),
            )
        })
        .collect()
}

async fn user_stream(store: &EventStore, id: Uuid) -> Vec<RecordedEvent> {
    let stream = format!("user-{id}");
    let admin = format!("user-{}", Uuid::now_v7());
    let steps = [
        (
            "system",
            UserEvent::UserRegistered {
                email: "ada@example.com".into(),
                display_name: None,
                roles: vec!["user".into()],
            },
        ),
        (
            "system",
            UserEvent::EmailVerified {
                verification_id: None,
            },
        ),
        (
            admin.as_str(),
            UserEvent::RolesChanged {
                roles: vec!["admin".into(), "user".into()],
            },
        ),
        (stream.as_str(), UserEvent::PasswordChanged),
    ];
    let person = idp_events::StreamId::parse(&stream)
        .ok()
        .and_then(|s| s.user_id());
    for (actor, event) in steps {
        let mut append = Append::to(&stream)
            .expecting(ExpectedVersion::Any)
            .event(event.to_new_event())
            .metadata(Metadata::actor(actor));
        if let Some(person) = person {
            append = append.about(person);
        }
        store.append(append).await.unwrap();
    }
    store.read_stream(&stream, 1).await.unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn replay_prints_the_whole_history_and_the_current_state(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts
        .max_connections(2)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool);
    let id = Uuid::now_v7();
    let events = user_stream(&store, id).await;
    let stream = format!("user-{id}");

    let stdout = stdout_of(&replay(&conn, &["--stream", &stream]));
    assert!(
        stdout.starts_with(&format!("stream {stream}: 4 events\n")),
        "{stdout}"
    );
    let printed = printed_events(&stdout);
    let expected: Vec<(i64, i64, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.position,
                e.stream_version,
                e.event_type.clone(),
                e.metadata["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(printed, expected, "{stdout}");
    // Each line carries the instant and the payload.
    assert!(stdout.contains(&rfc3339(events[0].recorded_at)), "{stdout}");
    assert!(
        stdout.contains(r#"{"display_name":null,"email":"ada@example.com","roles":["user"]}"#),
        "{stdout}"
    );

    assert!(stdout.contains("\nstate at version 4:\n"), "{stdout}");
    let state = printed_state(&stdout);
    assert_eq!(state["id"], json!(id));
    assert_eq!(state["roles"], json!(["admin", "user"]));
    assert_eq!(state["email_verified"], json!(true));
    assert_eq!(state["password_changed_at"], json!(events[3].recorded_at));
}

#[sqlx::test(migrations = "../migrations")]
async fn replay_until_a_time_or_a_position_shows_the_state_back_then(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts
        .max_connections(2)
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool);
    let id = Uuid::now_v7();
    let events = user_stream(&store, id).await;
    let stream = format!("user-{id}");

    // Until the instant of the verification: before the role change.
    let until = rfc3339(events[1].recorded_at);
    let stdout = stdout_of(&replay(&conn, &["--stream", &stream, "--until", &until]));
    assert!(
        stdout.starts_with(&format!("stream {stream}: 2 of 4 events, until ")),
        "{stdout}"
    );
    let types: Vec<String> = printed_events(&stdout).into_iter().map(|e| e.2).collect();
    assert_eq!(types, ["UserRegistered", "EmailVerified"]);
    assert!(stdout.contains("\nstate at version 2:\n"), "{stdout}");
    let before = printed_state(&stdout);
    assert_eq!(before["roles"], json!(["user"]));
    assert_eq!(before["password_changed_at"], json!(events[0].recorded_at));

    // Until the log position of the role change: an admin, password not changed yet.
    let position = events[2].position.to_string();
    let stdout = stdout_of(&replay(&conn, &["--stream", &stream, "--until", &position]));
    assert_eq!(printed_events(&stdout).len(), 3, "{stdout}");
    let after = printed_state(&stdout);
    assert_eq!(after["roles"], json!(["admin", "user"]));
    assert_eq!(after["password_changed_at"], json!(events[0].recorded_at));

    // Before the stream began: no events, no state.
    let stdout = stdout_of(&replay(&conn, &["--stream", &stream, "--until", "0"]));
    assert!(stdout.contains(": 0 of 4 events"), "{stdout}");
    assert!(
        stdout.contains("no state: the stream had no events yet"),
        "{stdout}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn replay_refuses_an_unknown_stream_and_a_bad_until(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let unknown = format!("user-{}", Uuid::now_v7());
    let output = replay(&conn, &["--stream", &unknown]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("no stream named \"{unknown}\"")),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    let output = replay(&conn, &["--stream", &unknown, "--until", "last tuesday"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--until"), "{stderr}");
    assert!(stderr.contains("RFC 3339"), "{stderr}");

    let output = replay(&conn, &["--stream", "user one"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--stream"), "{stderr}");
}
