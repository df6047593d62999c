//! Seals against a real PostgreSQL: the sealer seals what was committed into a chain of signed
//! seals with a key of its own (`SEAL_KEYS_DIR`, never the API's access-token keys), and
//! verification (library and `idp-worker verify`, with private or public-only key files) names
//! each kind of tampering a superuser can do behind the log's triggers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use idp_api::auth::keys::KeyRing;
use idp_events::chain::{BreakKind, canonical_body, link_hash};
use idp_events::seal::{
    self, Anchor, AuditReport, PublicKeys, Seal, SealProblem, SealProblemKind, SealSigner,
    VerifyOptions,
};
use idp_events::{Append, EventStore, ExpectedVersion, NewEvent};
use idp_testkit::database::database_url;
use idp_testkit::database::superuser;
use idp_worker::sealer::{self, SealerSettings};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

/// A seal key directory like `SEAL_KEYS_DIR` with one private key, removed on drop.
struct KeysDir(PathBuf);

impl KeysDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("idp-test-seal-keys-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kid, pem) = KeyRing::generate_pem().unwrap();
        std::fs::write(dir.join(format!("{kid}.pem")), pem).unwrap();
        Self(dir)
    }

    fn signer(&self) -> SealSigner {
        SealSigner::load_dir(&self.0).unwrap().unwrap()
    }

    fn public_keys(&self) -> PublicKeys {
        PublicKeys::load_dir(&self.0).unwrap()
    }
}

impl Drop for KeysDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn pool(opts: PgPoolOptions, conn: &PgConnectOptions) -> PgPool {
    opts.max_connections(8)
        .connect_with(conn.clone())
        .await
        .unwrap()
}

/// Appends `n` events to `stream` (a new stream or one at version `after`), one append each,
/// so that every event has its own transaction.
async fn append(store: &EventStore, stream: &str, after: u64, n: u64) {
    for i in 0..n {
        let expected = match after + i {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        store
            .append(Append::to(stream).expecting(expected).event(NewEvent::new(
                "Touched",
                json!({ "i": after + i, "note": "x" }),
            )))
            .await
            .unwrap();
    }
}

/// Committed events that no seal covers yet.
async fn unsealed(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from events e
          where not exists (select 1 from seals s
                             where (e.transaction_id, e.position) <= (s.to_transaction_id, s.to_position))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Runs sealing rounds until every committed event is sealed. Rounds only seal below the
/// commit-safe horizon, which transactions of other tests on the same server may hold back.
async fn seal_all(pool: &PgPool, keys: &KeysDir, max_events: i64) -> Vec<Seal> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = pool.acquire().await.unwrap();
    let never = CancellationToken::new();
    // Seal only once every appended event is below the commit horizon: another test's open
    // transaction can hold the horizon back for a moment, which would split the seals
    // differently from run to run.
    loop {
        let visible: Option<bool> = sqlx::query_scalar(
            "select bool_and(transaction_id < pg_snapshot_xmin(pg_current_snapshot())) from events",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if visible.unwrap_or(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the events never passed the commit horizon"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut made = Vec::new();
    loop {
        made.extend(
            sealer::seal_once(&mut conn, &keys.0, max_events, &never)
                .await
                .unwrap(),
        );
        if unsealed(pool).await == 0 {
            return made;
        }
        assert!(
            Instant::now() < deadline,
            "the log was not sealed within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn verify(pool: &PgPool, keys: &KeysDir) -> AuditReport {
    seal::verify_log(pool, &keys.public_keys(), &VerifyOptions::default())
        .await
        .unwrap()
}

async fn position_of(pool: &PgPool, stream: &str, version: i64) -> i64 {
    sqlx::query_scalar("select position from events where stream_id = $1 and stream_version = $2")
        .bind(stream)
        .bind(version)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Edits the data of `stream`'s event `version` and recomputes the stream's chain from there,
/// as an attacker who knows the chain format would: the stream chain stays intact.
async fn edit_and_rechain(pool: &PgPool, conn: &PgConnectOptions, stream: &str, version: i64) {
    let events = idp_testkit::keys::event_store(pool.clone())
        .read_stream(stream, 1)
        .await
        .unwrap();
    let mut admin = superuser(conn).await;
    let mut previous: Option<Vec<u8>> = None;
    for mut event in events {
        if event.stream_version == version {
            event.data = json!({ "i": 999, "note": "rewritten" });
        }
        if event.stream_version >= version {
            let body = canonical_body(
                event.event_id,
                &event.event_type,
                event.schema_version,
                &event.data,
                &event.metadata,
                event.recorded_at,
            );
            let hash = link_hash(previous.as_deref(), stream, event.stream_version, &body);
            sqlx::query("update events set data = $1, hash = $2 where position = $3")
                .bind(&event.data)
                .bind(&hash[..])
                .bind(event.position)
                .execute(&mut admin)
                .await
                .unwrap();
            event.hash = hash.to_vec();
        }
        previous = Some(event.hash.clone());
    }
}

/// `idp-worker verify` with `extra` arguments; returns (success, stdout, stderr).
fn verify_command(conn: &PgConnectOptions, keys: &Path, extra: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_idp-worker"))
        .arg("verify")
        .args(extra)
        .env("DATABASE_URL", database_url(conn))
        .env("PERSONAL_DATA_KEYS", idp_testkit::keys::PERSONAL_DATA_KEYS)
        .env("SEAL_KEYS_DIR", keys)
        .env_remove("JWT_KEYS_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn seal_problem(report: &AuditReport) -> &SealProblem {
    report
        .seal_problem
        .as_ref()
        .unwrap_or_else(|| panic!("expected a seal problem in {report:?}"))
}

#[sqlx::test(migrations = "../migrations")]
async fn the_sealer_seals_what_was_committed_into_a_chain_of_seals(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    let mut c = pool.acquire().await.unwrap();
    let never = CancellationToken::new();
    assert!(
        sealer::seal_once(&mut c, &keys.0, 100, &never)
            .await
            .unwrap()
            .is_empty(),
        "an empty log gets no seal"
    );

    append(&store, "user-1", 0, 3).await;
    append(&store, "project-1", 0, 2).await;
    let seals = seal_all(&pool, &keys, 2).await;
    assert!(
        seals
            .iter()
            .all(|s| (1..=2).contains(&s.fields.event_count))
    );
    assert_eq!(seals.iter().map(|s| s.fields.event_count).sum::<i64>(), 5);
    let mut previous = seal::GENESIS;
    for (i, s) in seals.iter().enumerate() {
        assert_eq!(s.fields.seal_number, i as i64 + 1);
        assert_eq!(
            s.fields.previous_hash, previous,
            "seal {i} links to the one before"
        );
        assert_eq!(s.fields.key_id, keys.signer().key_id());
        assert!(s.signature_holds(&keys.signer().verifying_key()));
        previous = s.seal_hash;
    }
    assert_eq!(
        seal::latest(&pool).await.unwrap().as_ref(),
        seals.last(),
        "the latest seal is the last one made"
    );
    assert!(
        sealer::seal_once(&mut c, &keys.0, 100, &never)
            .await
            .unwrap()
            .is_empty(),
        "nothing new, no seal"
    );

    append(&store, "user-1", 3, 2).await;
    let more = seal_all(&pool, &keys, 100).await;
    let next = &more[0];
    assert_eq!(next.fields.seal_number, seals.len() as i64 + 1);
    assert_eq!(next.fields.previous_hash, previous);
    assert!(next.fields.from > seals.last().unwrap().fields.to);

    let report = verify(&pool, &keys).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.streams, report.events), (2, 7));
    assert_eq!(report.seals, seals.len() as u64 + more.len() as u64);
    assert_eq!((report.sealed_events, report.unsealed), (7, 0));

    // Seals are as append-only as the events.
    let refused = sqlx::query("update seals set key_id = 'x'")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    assert!(
        sqlx::query("delete from seals")
            .execute(&pool)
            .await
            .is_err()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn one_of_two_running_sealers_seals_on_its_interval_and_the_log_verifies(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    let stop = CancellationToken::new();
    let settings = SealerSettings {
        keys_dir: keys.0.clone(),
        interval: Duration::from_millis(100),
        max_events: 1000,
    };
    let runners: Vec<_> = (0..2)
        .map(|_| tokio::spawn(sealer::run(pool.clone(), settings.clone(), stop.clone())))
        .collect();

    append(&store, "user-1", 0, 4).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while unsealed(&pool).await > 0 {
        assert!(Instant::now() < deadline, "nothing sealed within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    append(&store, "user-1", 4, 2).await;
    while unsealed(&pool).await > 0 {
        assert!(Instant::now() < deadline, "nothing sealed within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let active: i64 = sqlx::query_scalar(
        "select count(*) from pg_locks
          where locktype = 'advisory' and granted and classid::int8 = $1 and objid::int8 = $2
            and database = (select oid from pg_database where datname = current_database())",
    )
    .bind(i64::from(seal::RUNNER_LOCK.0))
    .bind(i64::from(seal::RUNNER_LOCK.1))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(active, 1, "exactly one sealer is active");

    stop.cancel();
    for runner in runners {
        tokio::time::timeout(Duration::from_secs(10), runner)
            .await
            .expect("sealers stop on shutdown")
            .unwrap();
    }
    let report = verify(&pool, &keys).await;
    assert!(report.is_intact(), "{report:?}");
    assert!(report.seals >= 2, "a seal per round with news: {report:?}");
    assert_eq!((report.sealed_events, report.unsealed), (6, 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn an_intact_log_passes_the_verify_command_which_counts_unsealed_events(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    append(&store, "user-1", 0, 3).await;
    append(&store, "user-2", 0, 2).await;
    let seals = seal_all(&pool, &keys, 2).await;
    let last = seals.len();
    append(&store, "user-2", 2, 1).await;

    let (ok, stdout, stderr) = verify_command(&conn, &keys.0, &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "intact: 2 streams, 6 events, {last} seals (5 events sealed)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("unsealed: 1 events after seal {last}")),
        "{stdout}"
    );

    // The latest seal kept outside the database: still there.
    let latest = seals.last().unwrap();
    let anchor = format!(
        "{}:{}",
        latest.fields.seal_number,
        hex::encode(latest.seal_hash)
    );
    let (ok, stdout, _) = verify_command(&conn, &keys.0, &["--expect-seal", &anchor]);
    assert!(ok, "{stdout}");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_edited_event_whose_stream_chain_was_recomputed_is_caught_by_its_seal(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    append(&store, "user-1", 0, 4).await;
    append(&store, "user-2", 0, 4).await;
    seal_all(&pool, &keys, 3).await;
    let edited = position_of(&pool, "user-1", 2).await;
    let sealed_in: i64 = sqlx::query_scalar(
        "select seal_number from seals
          where from_position <= $1 and $1 <= to_position",
    )
    .bind(edited)
    .fetch_one(&pool)
    .await
    .unwrap();

    edit_and_rechain(&pool, &conn, "user-1", 2).await;

    let report = verify(&pool, &keys).await;
    assert_eq!(
        report.chain_break, None,
        "the stream chain was made to hold"
    );
    let problem = seal_problem(&report);
    assert_eq!(
        (problem.seal_number, problem.position, &problem.kind),
        (sealed_in, Some(edited), &SealProblemKind::EventChanged)
    );

    let (ok, stdout, stderr) = verify_command(&conn, &keys.0, &[]);
    assert!(!ok, "verify fails: {stdout}");
    let named = format!("seal {sealed_in}, position {edited}: the event's chain hash differs");
    assert!(stdout.contains(&format!("BROKEN: {named}")), "{stdout}");
    assert!(stderr.contains(&named), "the error names it too: {stderr}");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_edited_event_breaks_its_stream_chain_while_its_sealed_hash_still_holds(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    append(&store, "user-1", 0, 3).await;
    seal_all(&pool, &keys, 100).await;
    let mut admin = superuser(&conn).await;
    sqlx::query(
        "update events set metadata = '{\"actor\": \"mallory\"}'
          where stream_id = 'user-1' and stream_version = 2",
    )
    .execute(&mut admin)
    .await
    .unwrap();

    let report = verify(&pool, &keys).await;
    let broken = report.chain_break.clone().unwrap();
    assert_eq!(
        (
            broken.stream_id.as_str(),
            broken.stream_version,
            broken.kind
        ),
        ("user-1", 2, BreakKind::HashMismatch)
    );
    assert_eq!(
        report.seal_problem, None,
        "the stored hashes are the sealed ones"
    );
    let first = report.first_problem().unwrap();
    assert_eq!(first.kind, "chain_hash_mismatch");

    let (ok, stdout, _) = verify_command(&conn, &keys.0, &[]);
    assert!(!ok);
    assert!(
        stdout.contains("BROKEN: stream user-1 version 2"),
        "{stdout}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_deleted_event_is_named_by_its_seal_and_inside_a_stream_by_its_chain(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    append(&store, "user-1", 0, 3).await;
    append(&store, "user-2", 0, 3).await;
    seal_all(&pool, &keys, 100).await;
    let mut admin = superuser(&conn).await;

    // The last event of a stream leaves no gap in its chain: only the seal can tell.
    let last = position_of(&pool, "user-2", 3).await;
    sqlx::query("delete from events where position = $1")
        .bind(last)
        .execute(&mut admin)
        .await
        .unwrap();
    let report = verify(&pool, &keys).await;
    assert_eq!(report.chain_break, None);
    let problem = seal_problem(&report);
    assert_eq!(
        (problem.seal_number, problem.position, &problem.kind),
        (1, Some(last), &SealProblemKind::EventMissing)
    );

    // An event inside a stream: its chain names the stream and version, the seal the position.
    let middle = position_of(&pool, "user-1", 2).await;
    sqlx::query("delete from events where position = $1")
        .bind(middle)
        .execute(&mut admin)
        .await
        .unwrap();
    let report = verify(&pool, &keys).await;
    let broken = report.chain_break.clone().unwrap();
    assert_eq!(
        (broken.stream_id.as_str(), broken.kind),
        ("user-1", BreakKind::MissingVersion { expected: 2 })
    );
    let problem = seal_problem(&report);
    assert_eq!(
        (problem.seal_number, problem.position, &problem.kind),
        (1, Some(middle), &SealProblemKind::EventMissing)
    );
    let (ok, stdout, _) = verify_command(&conn, &keys.0, &[]);
    assert!(!ok);
    assert!(
        stdout.contains("BROKEN: stream user-1 version 2 is missing"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "BROKEN: seal 1, position {middle}: the sealed event is missing (deleted)"
        )),
        "{stdout}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_reordered_pair_of_events_is_named_by_its_seal(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    append(&store, "user-1", 0, 2).await;
    append(&store, "user-2", 0, 2).await;
    seal_all(&pool, &keys, 100).await;
    let a = position_of(&pool, "user-1", 2).await;
    let b = position_of(&pool, "user-2", 1).await;

    // Swap the two events' positions, keeping everything else.
    let mut admin = superuser(&conn).await;
    sqlx::raw_sql(&format!(
        "create temporary table pair as select * from events where position in ({a}, {b});
         delete from events where position in ({a}, {b});
         insert into events overriding system value
         select case position when {a} then {b} else {a} end, transaction_id, event_id,
                stream_id, stream_version, event_type, schema_version, data, metadata,
                recorded_at, hash
           from pair;"
    ))
    .execute(&mut admin)
    .await
    .unwrap();

    let report = verify(&pool, &keys).await;
    assert_eq!(
        report.chain_break, None,
        "each stream is still in version order"
    );
    let problem = seal_problem(&report);
    assert_eq!(
        (problem.seal_number, problem.position, &problem.kind),
        (1, Some(b), &SealProblemKind::EventMoved { sealed_at: a })
    );
    let (ok, stdout, _) = verify_command(&conn, &keys.0, &[]);
    assert!(!ok);
    assert!(
        stdout.contains(&format!(
            "BROKEN: seal 1, position {b}: the event sealed at position {a} is now at position {b} (reordered)"
        )),
        "{stdout}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_forged_seal_is_named_by_its_hash_or_its_signature(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    append(&store, "user-1", 0, 2).await;
    seal_all(&pool, &keys, 100).await;
    append(&store, "user-1", 2, 2).await;
    seal_all(&pool, &keys, 100).await;
    let second = seal::latest(&pool).await.unwrap().unwrap();
    let n = second.fields.seal_number;
    let mut admin = superuser(&conn).await;

    // An edited digest.
    sqlx::query("update seals set events_digest = $1 where seal_number = $2")
        .bind(&[7_u8; 32][..])
        .bind(n)
        .execute(&mut admin)
        .await
        .unwrap();
    let report = verify(&pool, &keys).await;
    assert_eq!(
        (
            seal_problem(&report).seal_number,
            &seal_problem(&report).kind
        ),
        (n, &SealProblemKind::HashMismatch)
    );
    let (ok, stdout, _) = verify_command(&conn, &keys.0, &[]);
    assert!(!ok);
    assert!(
        stdout.contains(&format!(
            "BROKEN: seal {n}: its seal hash does not match its fields"
        )),
        "{stdout}"
    );

    // A whole new seal over rewritten events, signed with the attacker's key under the real
    // key's id: every hash holds, the signature does not.
    edit_and_rechain(&pool, &conn, "user-1", 3).await;
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "select position, hash from events
          where (transaction_id, position) >= ($1::bigint::text::xid8, $2)
          order by transaction_id, position",
    )
    .bind(second.fields.from.transaction_id)
    .bind(second.fields.from.position)
    .fetch_all(&pool)
    .await
    .unwrap();
    let entries: Vec<u8> = rows
        .iter()
        .flat_map(|(p, h)| seal::entry(*p, &h.as_slice().try_into().unwrap()))
        .collect();
    let mut fields = second.fields.clone();
    fields.events_digest = seal::events_digest(&fields.previous_hash, &entries);
    let (_, mallory_pem) = KeyRing::generate_pem().unwrap();
    let forged = SealSigner::from_pkcs8_pem(fields.key_id.clone(), &mallory_pem)
        .unwrap()
        .sign(fields);
    sqlx::query(
        "update seals set events_digest = $1, seal_hash = $2, signature = $3, entries = $4
          where seal_number = $5",
    )
    .bind(&forged.fields.events_digest[..])
    .bind(&forged.seal_hash[..])
    .bind(&forged.signature[..])
    .bind(&entries)
    .bind(n)
    .execute(&mut admin)
    .await
    .unwrap();
    let report = verify(&pool, &keys).await;
    assert_eq!(report.chain_break, None);
    assert_eq!(
        (
            seal_problem(&report).seal_number,
            &seal_problem(&report).kind
        ),
        (
            n,
            &SealProblemKind::BadSignature {
                key_id: second.fields.key_id.clone()
            }
        )
    );
    let (ok, stdout, _) = verify_command(&conn, &keys.0, &[]);
    assert!(!ok);
    assert!(
        stdout.contains(&format!("BROKEN: seal {n}: its signature does not verify")),
        "{stdout}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn removed_seals_are_named_in_the_middle_by_the_chain_and_at_the_end_by_a_kept_copy(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    for round in 0..4 {
        append(&store, "user-1", round, 1).await;
        seal_all(&pool, &keys, 100).await;
    }
    let latest = seal::latest(&pool).await.unwrap().unwrap();
    let n = latest.fields.seal_number;
    assert_eq!(n, 4, "a seal per round");
    let anchor = Anchor {
        seal_number: n,
        seal_hash: latest.seal_hash,
    };
    let mut admin = superuser(&conn).await;
    sqlx::query("delete from seals where seal_number = $1")
        .bind(n)
        .execute(&mut admin)
        .await
        .unwrap();
    // Without the copy the log looks sealed up to seal n - 1 with events after it.
    let report = verify(&pool, &keys).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.last_seal, Some(n - 1));
    let options = VerifyOptions {
        expect_seal: Some(anchor),
        ..VerifyOptions::default()
    };
    let report = seal::verify_log(&pool, &keys.public_keys(), &options)
        .await
        .unwrap();
    assert_eq!(
        (
            seal_problem(&report).seal_number,
            &seal_problem(&report).kind
        ),
        (n, &SealProblemKind::AnchorMissing { last: Some(n - 1) })
    );

    sqlx::query("delete from seals where seal_number = 2")
        .execute(&mut admin)
        .await
        .unwrap();
    let report = verify(&pool, &keys).await;
    assert_eq!(
        (
            seal_problem(&report).seal_number,
            &seal_problem(&report).kind
        ),
        (2, &SealProblemKind::Missing { found: 3 })
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_running_worker_seals_with_a_key_of_its_own_never_the_access_token_key(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let prefix = idp_testkit::broker::unique_prefix();
    let api = common::harness::start_api(&conn).await;
    let seal_keys = idp_testkit::settings::seal_keys_dir(&prefix);
    assert!(!seal_keys.exists());
    let worker =
        common::harness::start_worker(&conn, &prefix, None, &["--seal-interval-secs", "1"]).await;

    append(&store, "thing-1", 0, 3).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while unsealed(&pool).await > 0 {
        assert!(Instant::now() < deadline, "nothing sealed within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;

    let seal_key = SealSigner::load_dir(&seal_keys)
        .unwrap()
        .expect("a generated seal key");
    let access_token_key = SealSigner::load_dir(&api.keys_dir).unwrap().unwrap();
    let latest = seal::latest(&pool).await.unwrap().unwrap();
    assert_eq!(latest.fields.key_id, seal_key.key_id());
    assert_ne!(latest.fields.key_id, access_token_key.key_id());
    assert!(latest.signature_holds(&seal_key.verifying_key()));
    assert!(!latest.signature_holds(&access_token_key.verifying_key()));
    let report = seal::verify_log(
        &pool,
        &PublicKeys::load_dir(&seal_keys).unwrap(),
        &VerifyOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.is_intact(), "{report:?}");

    // Generated for development, readable by the worker's user only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&seal_keys), 0o700);
        let file = seal_keys.join(format!("{}.pem", seal_key.key_id()));
        assert_eq!(mode(&file), 0o600);
    }
    api.stop().await;
    let _ = std::fs::remove_dir_all(&seal_keys);
    common::harness::delete_queues(&prefix).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_worker_has_no_jwt_keys_dir_and_without_a_seal_key_or_leave_to_generate_one_it_does_not_start(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let prefix = idp_testkit::broker::unique_prefix();
    let refused = common::harness::worker_config(&conn, &prefix, &["--jwt-keys-dir", "/tmp/x"]);
    assert!(refused.is_err(), "the worker takes no JWT_KEYS_DIR");

    let config =
        common::harness::worker_config(&conn, &prefix, &["--seal-generate-keys", "false"]).unwrap();
    let error = idp_worker::startup::Worker::build(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("SEAL_KEYS_DIR") && error.contains("SEAL_GENERATE_KEYS is false"),
        "{error}"
    );
    assert!(
        !idp_testkit::settings::seal_keys_dir(&prefix).exists(),
        "nothing generated"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_seal_signed_with_the_access_token_key_is_an_unknown_key_until_its_public_half_is_copied_in(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    // The old scheme: the worker sealed with the API's newest access-token key.
    let access_tokens =
        KeysDir(std::env::temp_dir().join(format!("idp-test-jwt-keys-{}", uuid::Uuid::now_v7())));
    let ring = KeyRing::load_dir(&access_tokens.0, true).unwrap();
    append(&store, "user-1", 0, 2).await;
    seal_all(&pool, &access_tokens, 100).await;
    let seal_keys =
        KeysDir(std::env::temp_dir().join(format!("idp-test-seal-keys-{}", uuid::Uuid::now_v7())));
    let seal_key = SealSigner::generate_in(&seal_keys.0).unwrap();
    assert_ne!(seal_key.key_id(), ring.signing_kid());

    let report = verify(&pool, &seal_keys).await;
    let problem = seal_problem(&report);
    assert_eq!(
        problem.kind,
        SealProblemKind::UnknownKey {
            key_id: ring.signing_kid().to_owned()
        }
    );
    assert_eq!(problem.kind_name(), "seal_unknown_key");
    let (ok, stdout, _) = verify_command(&conn, &seal_keys.0, &[]);
    assert!(!ok, "{stdout}");

    // Migrating: the old key's public half, under its kid, verifies the old seals; new seals
    // are signed with the seal key, which sorts after it.
    let public = seal::public_pem(&access_tokens.signer().verifying_key()).unwrap();
    std::fs::write(
        seal_keys.0.join(format!("{}.pem", ring.signing_kid())),
        public,
    )
    .unwrap();
    append(&store, "user-1", 2, 1).await;
    let new_seals = seal_all(&pool, &seal_keys, 100).await;
    assert!(
        new_seals
            .iter()
            .all(|s| s.fields.key_id == seal_key.key_id())
    );
    let (ok, stdout, stderr) = verify_command(&conn, &seal_keys.0, &[]);
    assert!(ok, "{stdout}{stderr}");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_verify_command_needs_only_the_public_halves_the_export_command_writes(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool(opts, &conn).await;
    let store = idp_testkit::keys::event_store(pool.clone());
    let keys = KeysDir::new();
    append(&store, "user-1", 0, 3).await;
    seal_all(&pool, &keys, 100).await;
    let public = KeysDir(
        std::env::temp_dir().join(format!("idp-test-seal-public-{}", uuid::Uuid::now_v7())),
    );

    let export = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_idp-worker"))
            .arg("seal-public-keys")
            .arg(out)
            .env("SEAL_KEYS_DIR", &keys.0)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let output = export(&public.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let kid = keys.signer().key_id().to_owned();
    assert!(stdout.contains(&format!("{kid}: ")), "{stdout}");
    let files: Vec<_> = std::fs::read_dir(&public.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files, [public.0.join(format!("{kid}.pem"))]);
    let pem = std::fs::read_to_string(&files[0]).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert!(!pem.contains("PRIVATE"));
    assert!(
        SealSigner::load_dir(&public.0).unwrap().is_none(),
        "cannot sign"
    );

    let (ok, stdout, stderr) = verify_command(&conn, &public.0, &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("intact: "), "{stdout}");

    // Exporting again changes nothing; another key under the same name is refused.
    assert!(export(&public.0).status.success());
    std::fs::write(
        &files[0],
        seal::public_pem(&SealSigner::generate("x").unwrap().verifying_key()).unwrap(),
    )
    .unwrap();
    let clash = export(&public.0);
    assert!(!clash.status.success());
    assert!(
        String::from_utf8_lossy(&clash.stderr).contains("already holds another key"),
        "{}",
        String::from_utf8_lossy(&clash.stderr)
    );
}
