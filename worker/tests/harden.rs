//! `idp-worker harden-databases`: the real binary isolates project databases provisioned the
//! old way (PUBLIC's default privileges, no connection limit, idp's own database open), keeps
//! their passwords unless asked to rotate them, and with `--rotate-passwords` sets them with the
//! current key and records its id; running it again changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use idp_events::StreamId;
use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::harness::{drop_project_database, role_has_password};
use idp_events::project::project::{self as decide, Project, ProjectEvent};
use idp_events::project::{Catalogue, ProjectName, database_password, password_key_id, read_model};
use idp_events::{EventStore, Metadata};
use idp_testkit::database::database_url;
use idp_testkit::process::stdout_of;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

const OLD_SECRET: &str = "old-database-secret-0123456789abcdef0123456789";
const NEW_SECRET: &str = "new-database-secret-0123456789abcdef0123456789";

/// Runs `idp-worker harden-databases <args>` against the test's database, with the ring
/// `keys`.
fn harden(conn: &PgConnectOptions, keys: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idp-worker"))
        .arg("harden-databases")
        .args(args)
        .env("DATABASE_URL", database_url(conn))
        .env("PERSONAL_DATA_KEYS", idp_testkit::keys::PERSONAL_DATA_KEYS)
        .env("PROJECT_DATABASE_KEYS", keys)
        .env("SECRETS_GENERATE", "false")
        .env_remove("PROVISION_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The line of `stdout` about project `id`.
fn line_of(stdout: &str, id: Uuid) -> &str {
    stdout
        .lines()
        .find(|line| line.contains(&id.to_string()))
        .unwrap_or_else(|| panic!("no line for {id} in {stdout}"))
}

/// A ready `service` project, recorded as the worker records one, whose database step output
/// is `database_output`.
async fn ready_project(store: &EventStore, name: &str, database_output: Value) -> Uuid {
    let template = Catalogue::builtin().get("service").unwrap().clone();
    let name = ProjectName::parse(name).unwrap();
    let mut project = Project {
        id: Uuid::now_v7(),
        ..Project::default()
    };
    let record = |project: Project, events: Vec<ProjectEvent>| async move {
        let mut tx = store.pool().begin().await.unwrap();
        let next = read_model::record(store, &mut tx, &project, &events, Metadata::actor("worker"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        next
    };
    let requested = decide::request(Uuid::now_v7(), &name, &template, BTreeMap::new()).unwrap();
    project = record(project, requested).await;
    while let Some(step) = decide::next_step(&project).map(|s| s.name.clone()) {
        let started = decide::start_step(&project, &step).unwrap();
        project = record(project, started).await;
        let output = if step == "database" {
            database_output.clone()
        } else {
            json!({})
        };
        let done = decide::step_succeeded(&project, &step, output).unwrap();
        project = record(project, done).await;
    }
    project.id
}

fn output_of(id: Uuid, key_id: Option<&str>) -> Value {
    let name = format!("p_{}", id.simple());
    let mut output = json!({ "database": name, "role": name, "host": "127.0.0.1", "port": 5432 });
    if let Some(key_id) = key_id {
        output["password_key_id"] = json!(key_id);
    }
    output
}

/// Creates the project's role and database as earlier versions did.
async fn provision_the_old_way(pool: &PgPool, id: Uuid, password: &str) {
    let name = format!("p_{}", id.simple());
    for statement in [
        format!("create role {name} login password '{password}'"),
        format!("create database {name} owner {name}"),
    ] {
        sqlx::raw_sql(&statement).execute(pool).await.unwrap();
    }
}

/// The SQLSTATE with which the server refuses project `id`'s login (over TCP, with `password`)
/// to `database`, or `None` if it lets it in.
async fn refusal(
    conn: &PgConnectOptions,
    id: Uuid,
    password: &str,
    database: &str,
) -> Option<String> {
    let login = conn
        .clone()
        .host("127.0.0.1")
        .username(&format!("p_{}", id.simple()))
        .password(password)
        .database(database);
    match sqlx::PgConnection::connect_with(&login).await {
        Ok(connection) => {
            connection.close().await.unwrap();
            None
        }
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(other) => panic!("{other}"),
    }
}

async fn connection_limit(pool: &PgPool, id: Uuid) -> i32 {
    sqlx::query_scalar("select rolconnlimit from pg_roles where rolname = $1")
        .bind(format!("p_{}", id.simple()))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rotations(store: &EventStore, id: Uuid) -> Vec<(String, Value)> {
    store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match ProjectEvent::from_recorded(&e) {
            Some(ProjectEvent::DatabasePasswordRotated { key_id, .. }) => {
                Some((key_id, e.metadata["actor"].clone()))
            }
            _ => None,
        })
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_command_isolates_databases_made_the_old_way_and_rotates_their_passwords_on_request(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let idp_database = conn.get_database().unwrap().to_owned();
    // A login from before key ids were recorded, one derived with the key "old", and a project
    // whose database is not on the server.
    let legacy = ready_project(&store, "legacy", output_of(Uuid::nil(), None)).await;
    let legacy_password = "from-the-old-shared-secret-0123456789";
    provision_the_old_way(&pool, legacy, legacy_password).await;
    let keyed = ready_project(&store, "keyed", output_of(Uuid::nil(), Some("old"))).await;
    let keyed_password = database_password(OLD_SECRET.as_bytes(), keyed);
    provision_the_old_way(&pool, keyed, &keyed_password).await;
    let gone = ready_project(&store, "gone", output_of(Uuid::nil(), Some("old"))).await;
    let keyed_db = format!("p_{}", keyed.simple());
    assert_eq!(
        refusal(&conn, legacy, legacy_password, &keyed_db).await,
        None,
        "the old way, another tenant gets in"
    );
    assert_eq!(
        refusal(&conn, legacy, legacy_password, &idp_database).await,
        None,
        "the old way, a tenant gets into idp's database"
    );
    let ring = format!("old:{OLD_SECRET},new:{NEW_SECRET}");

    let stdout = stdout_of(&harden(&conn, &ring, &[]));

    assert!(
        stdout.contains(&format!(
            "idp's database {idp_database:?}: PUBLIC may no longer connect"
        )),
        "{stdout}"
    );
    assert!(
        line_of(&stdout, legacy).ends_with(
            ": hardened; the database login was set up before its password key was recorded: \
             run again with --rotate-passwords so the owner can have it"
        ),
        "{stdout}"
    );
    assert!(line_of(&stdout, keyed).ends_with(": hardened"), "{stdout}");
    assert!(
        line_of(&stdout, gone).ends_with(": no role or database on the server; nothing to do"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "2 project databases hardened (0 passwords rotated), 1 not on the server, 0 failed"
        ),
        "{stdout}"
    );
    let legacy_db = format!("p_{}", legacy.simple());
    // 42501: insufficient_privilege ("permission denied for database").
    for (id, password, database) in [
        (legacy, legacy_password, keyed_db.as_str()),
        (keyed, keyed_password.as_str(), legacy_db.as_str()),
        (legacy, legacy_password, idp_database.as_str()),
        (keyed, keyed_password.as_str(), idp_database.as_str()),
    ] {
        assert_eq!(
            refusal(&conn, id, password, database).await.as_deref(),
            Some("42501"),
            "{id} into {database}"
        );
    }
    assert_eq!(
        refusal(&conn, keyed, &keyed_password, &keyed_db).await,
        None
    );
    for id in [legacy, keyed] {
        assert_eq!(connection_limit(&pool, id).await, 10, "the default limit");
    }
    // Passwords are kept until they are rotated.
    assert!(role_has_password(&pool, &legacy_db, legacy_password).await);
    assert!(role_has_password(&pool, &keyed_db, &keyed_password).await);
    assert!(rotations(&store, legacy).await.is_empty());

    let stdout = stdout_of(&harden(&conn, &ring, &["--rotate-passwords"]));

    for id in [legacy, keyed] {
        assert!(
            line_of(&stdout, id).ends_with(": hardened; password rotated to key \"new\""),
            "{stdout}"
        );
        let name = format!("p_{}", id.simple());
        assert!(
            role_has_password(&pool, &name, &database_password(NEW_SECRET.as_bytes(), id)).await
        );
        assert_eq!(
            rotations(&store, id).await,
            [("new".to_owned(), json!("operator"))]
        );
        let state: Value = sqlx::query_scalar("select state from projects where project_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(password_key_id(&state["steps"][1]["output"]), Some("new"));
    }
    assert!(!role_has_password(&pool, &keyed_db, &keyed_password).await);

    // Again: the same passwords, nothing more recorded.
    let stdout = stdout_of(&harden(&conn, &ring, &["--rotate-passwords"]));
    assert!(
        stdout.contains("2 project databases hardened (2 passwords rotated)"),
        "{stdout}"
    );
    for id in [legacy, keyed] {
        assert_eq!(rotations(&store, id).await.len(), 1);
    }

    for id in [legacy, keyed, gone] {
        drop_project_database(&pool, id).await;
    }
}
