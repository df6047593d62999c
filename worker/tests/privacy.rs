//! `idp-worker privacy`: the real binary re-wraps every data key under a new key-encryption key
//! (after which the old entry is no longer needed), and re-applies the erasures of the log to a
//! key table restored from an older backup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use idp_events::identity::user::{self, UserEvent};
use idp_events::keys::SecretKeys;
use idp_events::privacy::{KeyEncryptionKeys, Personal, SubjectKeys};
use idp_events::{Append, EventStore, Metadata, StreamId, Upcasters};
use idp_testkit::database::database_url;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

const OLD: &str = "old:old-kek-secret-0123456789abcdef0123456789abcdef";
const NEW: &str = "new:new-kek-secret-0123456789abcdef0123456789abcdef";

fn store(pool: &PgPool, ring: &str) -> EventStore {
    let ring = SecretKeys::parse("PERSONAL_DATA_KEYS", ring).unwrap();
    let keys = SubjectKeys::new(pool.clone(), KeyEncryptionKeys::from_ring(&ring));
    EventStore::with_personal_data(pool.clone(), Upcasters::default(), keys)
}

fn privacy(conn: &PgConnectOptions, ring: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idp-worker"))
        .arg("privacy")
        .args(args)
        .env("DATABASE_URL", database_url(conn))
        .env("PERSONAL_DATA_KEYS", ring)
        .env("WORKER_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

async fn register(store: &EventStore, email: &str) -> Uuid {
    let id = Uuid::now_v7();
    let events = user::register(email, Some("A Name".into()), vec!["user".into()], true);
    store
        .append(
            Append::to(StreamId::user(id))
                .about(id)
                .events(events.iter().map(UserEvent::to_new_event))
                .metadata(Metadata::actor("test")),
        )
        .await
        .unwrap();
    id
}

async fn email_of(store: &EventStore, id: Uuid) -> Personal<String> {
    let events = store.read_stream(StreamId::user(id), 1).await.unwrap();
    match UserEvent::from_recorded(&events[0]) {
        Some(UserEvent::UserRegistered { email, .. }) => email,
        other => panic!("{other:?}"),
    }
}

#[sqlx::test(migrations = false)]
async fn rotation_rewraps_every_key_so_the_old_entry_is_no_longer_needed(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = idp_testkit::database::pool(&conn).await;
    idp_events::migrations::run(&pool).await.unwrap();
    let old = store(&pool, OLD);
    let mut people = Vec::new();
    for n in 0..7 {
        people.push(register(&old, &format!("person{n}@example.com")).await);
    }
    let both = format!("{OLD},{NEW}");
    let output = privacy(&conn, &both, &["rotate-kek", "--batch", "3"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("7 data keys re-wrapped"), "{stdout}");
    assert!(stderr.contains("7/7"), "progress is shown: {stderr}");

    let new_only = store(&pool, NEW);
    for (n, id) in people.iter().enumerate() {
        assert_eq!(
            email_of(&new_only, *id).await,
            Personal::Known(format!("person{n}@example.com"))
        );
    }
    let left: i64 = sqlx::query_scalar("select count(*) from subject_keys where kek_id = 'old'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let again = privacy(&conn, NEW, &["rotate-kek"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 data keys re-wrapped"));
}

#[sqlx::test(migrations = false)]
async fn erasures_of_the_log_are_applied_again_to_a_restored_key_table(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = idp_testkit::database::pool(&conn).await;
    idp_events::migrations::run(&pool).await.unwrap();
    let store = store(&pool, NEW);
    let (ada, bob) = (
        register(&store, "ada@example.com").await,
        register(&store, "bob@example.com").await,
    );
    // Ada's erasure is in the log, but her key is back (the key table restored from before).
    store
        .append(
            Append::to(StreamId::user(ada))
                .expecting(idp_events::ExpectedVersion::Any)
                .event(UserEvent::PersonErased { reason: None }.to_new_event())
                .metadata(Metadata::actor("test")),
        )
        .await
        .unwrap();
    assert_eq!(
        email_of(&store, ada).await,
        Personal::Known("ada@example.com".into())
    );

    let output = privacy(&conn, NEW, &["reapply-erasures"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 data keys"), "{stdout}");
    assert_eq!(email_of(&store, ada).await, Personal::Erased);
    assert_eq!(
        email_of(&store, bob).await,
        Personal::Known("bob@example.com".into()),
        "only the erased"
    );
    let again = privacy(&conn, NEW, &["reapply-erasures"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 data keys"));
}
