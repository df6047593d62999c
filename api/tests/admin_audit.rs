//! `/v1/admin/audit/*` over HTTP: verification of an intact and of a tampered log, the latest
//! signed seal (checkable without idp), and access control. Seals are made here with the
//! library's sealing round, as the worker's sealer would, with a seal key of their own whose
//! private half the API never sees: its `SEAL_KEYS_DIR` holds the public half only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::spawn_app;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use idp_events::seal::{self, SealSigner};
use idp_events::{Append, NewEvent};
use idp_testkit::database::superuser;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The worker's seal key: kept beside the API's `SEAL_KEYS_DIR`, which gets only the public
/// half (as `idp-worker seal-public-keys` writes it).
fn worker_seal_key(app: &common::TestApp) -> SealSigner {
    let private = worker_seal_keys_dir(app);
    let signer = match SealSigner::load_dir(&private).unwrap() {
        Some(signer) => signer,
        None => SealSigner::generate_in(&private).unwrap(),
    };
    std::fs::create_dir_all(&app.seal_keys_dir).unwrap();
    std::fs::write(
        app.seal_keys_dir.join(format!("{}.pem", signer.key_id())),
        seal::public_pem(&signer.verifying_key()).unwrap(),
    )
    .unwrap();
    signer
}

/// Where the worker's private seal key is, away from the API.
fn worker_seal_keys_dir(app: &common::TestApp) -> std::path::PathBuf {
    app.seal_keys_dir.with_extension("worker")
}

/// Stops `app` and removes the worker's seal key beside it.
async fn stop(app: common::TestApp) {
    let _ = std::fs::remove_dir_all(worker_seal_keys_dir(&app));
    app.stop().await;
}

/// Seals every committed event with the worker's seal key, as the worker's sealer does.
/// Rounds only seal below the commit-safe horizon, which other tests' transactions may hold
/// back for a moment.
async fn seal_all(app: &common::TestApp, pool: &PgPool) {
    seal_all_with(&worker_seal_key(app), pool).await;
}

async fn seal_all_with(signer: &SealSigner, pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        seal::seal_pending(&mut conn, signer, 1000).await.unwrap();
        let unsealed: i64 = sqlx::query_scalar(
            "select count(*) from events e
              where not exists (select 1 from seals s
                                 where (e.transaction_id, e.position) <= (s.to_transaction_id, s.to_position))",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if unsealed == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the log was not sealed within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn report(app: &common::TestApp, admin: &str, query: &str) -> Value {
    let response = app
        .get_auth(&format!("/v1/admin/audit/verify{query}"), admin)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

#[sqlx::test(migrations = false)]
async fn audit_routes_are_for_admins_only(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    for path in ["/v1/admin/audit/verify", "/v1/admin/audit/seal"] {
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
    }

    // A plain user: register, verify through the log's token, sign in.
    let pool = PgPoolOptions::new()
        .connect_with(conn.clone())
        .await
        .unwrap();
    let user = app
        .verified_user(&pool, "bob@example.com", "a long enough password")
        .await;
    for path in ["/v1/admin/audit/verify", "/v1/admin/audit/seal"] {
        assert_eq!(app.get_auth(path, &user).await.status(), 403, "{path}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_seal_route_answers_404_before_the_first_seal_then_a_seal_checkable_without_idp(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let admin = app.token("root@example.com", "the admin passphrase").await;
    let missing = app.get_auth("/v1/admin/audit/seal", &admin).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );

    let pool = PgPoolOptions::new()
        .connect_with(conn.clone())
        .await
        .unwrap();
    seal_all(&app, &pool).await;
    let latest = seal::latest(&pool).await.unwrap().unwrap();
    let response = app.get_auth("/v1/admin/audit/seal", &admin).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["format"], "idp-seal-v1");
    assert_eq!(body["seal_number"], latest.fields.seal_number);
    assert_eq!(body["event_count"], latest.fields.event_count);
    assert_eq!(body["to"]["position"], latest.fields.to.position);
    assert_eq!(body["seal_hash"], hex::encode(latest.seal_hash));
    assert_eq!(
        body["anchor"],
        format!(
            "{}:{}",
            latest.fields.seal_number,
            hex::encode(latest.seal_hash)
        )
    );
    assert_eq!(body["public_key"]["kid"], body["key_id"]);
    // ... from a directory of public keys only.
    for entry in std::fs::read_dir(&app.seal_keys_dir).unwrap() {
        let pem = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    }

    // The seal hash follows from the published fields, and the published key signed it.
    let hash: [u8; 32] = hex::decode(body["seal_hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let fields = seal::SealFields {
        seal_number: body["seal_number"].as_i64().unwrap(),
        from: idp_events::Cursor {
            transaction_id: body["from"]["transaction_id"].as_i64().unwrap(),
            position: body["from"]["position"].as_i64().unwrap(),
        },
        to: idp_events::Cursor {
            transaction_id: body["to"]["transaction_id"].as_i64().unwrap(),
            position: body["to"]["position"].as_i64().unwrap(),
        },
        event_count: body["event_count"].as_i64().unwrap(),
        events_digest: hex::decode(body["events_digest"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
        previous_hash: hex::decode(body["previous_hash"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
        key_id: body["key_id"].as_str().unwrap().to_owned(),
        created_at: serde_json::from_value(body["created_at"].clone()).unwrap(),
    };
    assert_eq!(fields.hash(), hash);
    let from_pem =
        VerifyingKey::from_public_key_pem(body["public_key"]["pem"].as_str().unwrap()).unwrap();
    let x = URL_SAFE_NO_PAD
        .decode(body["public_key"]["jwk"]["x"].as_str().unwrap())
        .unwrap();
    assert_eq!(from_pem.to_bytes().as_slice(), x.as_slice());
    let signature = STANDARD
        .decode(body["signature"].as_str().unwrap())
        .unwrap();
    let mut message = b"idp-seal-v1\0".to_vec();
    message.extend_from_slice(&hash);
    from_pem
        .verify(&message, &Signature::from_slice(&signature).unwrap())
        .unwrap();
    stop(app).await;
}

#[sqlx::test(migrations = false)]
async fn verify_reports_an_intact_log_then_names_an_edited_event_and_a_forged_seal(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let admin = app.token("root@example.com", "the admin passphrase").await;
    let pool = PgPoolOptions::new()
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    store
        .append(
            Append::to("thing-1")
                .events((0..3).map(|i| NewEvent::new("Touched", json!({ "i": i })))),
        )
        .await
        .unwrap();
    seal_all(&app, &pool).await;
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();

    let intact = report(&app, &admin, "").await;
    assert_eq!(intact["intact"], true, "{intact}");
    assert_eq!(intact["events"], events);
    assert_eq!(intact["sealed_events"], events);
    assert!(intact["seals"].as_u64().unwrap() >= 1, "{intact}");
    assert_eq!(intact["first_problem"], Value::Null);
    assert!(intact["duration_ms"].is_u64());
    let prefixed = report(&app, &admin, "?stream_prefix=thing-").await;
    assert_eq!(
        (prefixed["streams"].as_u64(), prefixed["events"].as_u64()),
        (Some(1), Some(3))
    );

    // A seal kept outside the database that the log does not hold.
    let cut = report(
        &app,
        &admin,
        &format!("?expect_seal=999:{}", hex::encode([0_u8; 32])),
    )
    .await;
    assert_eq!(cut["intact"], false);
    assert_eq!(cut["first_problem"]["kind"], "seal_anchor_missing");
    assert_eq!(cut["first_problem"]["seal"], 999);

    // Nothing new is sealed yet: one more event is counted as unsealed, not as a problem.
    store
        .append(
            Append::to("thing-1")
                .expecting(idp_events::ExpectedVersion::Exact(3))
                .event(NewEvent::new("Touched", json!({ "i": 3 }))),
        )
        .await
        .unwrap();
    let later = report(&app, &admin, "").await;
    assert_eq!(
        (later["intact"].as_bool(), later["unsealed"].as_u64()),
        (Some(true), Some(1))
    );

    let mut superuser = superuser(&conn).await;
    sqlx::query(
        "update events set data = '{\"i\": 42}' where stream_id = 'thing-1' and stream_version = 2",
    )
    .execute(&mut superuser)
    .await
    .unwrap();
    let broken = report(&app, &admin, "").await;
    assert_eq!(broken["intact"], false);
    let problem = &broken["first_problem"];
    assert_eq!(problem["kind"], "chain_hash_mismatch");
    assert_eq!(problem["stream"], "thing-1");
    assert_eq!(problem["version"], 2);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("stream thing-1 version 2"),
        "{problem}"
    );

    let latest = seal::latest(&pool).await.unwrap().unwrap();
    sqlx::query("update seals set event_count = event_count + 1 where seal_number = $1")
        .bind(latest.fields.seal_number)
        .execute(&mut superuser)
        .await
        .unwrap();
    let forged = report(&app, &admin, "").await;
    let problems = forged["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{forged}");
    assert_eq!(problems[1]["kind"], "seal_hash_mismatch");
    assert_eq!(problems[1]["seal"], latest.fields.seal_number);

    for bad in ["?expect_seal=nope", "?unknown=1"] {
        let response = app
            .get_auth(&format!("/v1/admin/audit/verify{bad}"), &admin)
            .await;
        assert_eq!(response.status(), 400, "{bad}");
    }
    stop(app).await;
}

#[sqlx::test(migrations = false)]
async fn a_seal_signed_with_the_access_token_key_is_reported_as_an_unknown_key(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let admin = app.token("root@example.com", "the admin passphrase").await;
    let pool = PgPoolOptions::new()
        .connect_with(conn.clone())
        .await
        .unwrap();
    // As the worker sealed before seals had keys of their own; the API's seal keys are its
    // own public ones.
    let access_token_key = SealSigner::load_dir(&app.keys_dir).unwrap().unwrap();
    seal_all_with(&access_token_key, &pool).await;
    let seal_key = worker_seal_key(&app);
    assert_ne!(seal_key.key_id(), access_token_key.key_id());

    let report = report(&app, &admin, "").await;
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["first_problem"]["kind"], "seal_unknown_key");
    assert_eq!(report["first_problem"]["seal"], 1);
    let latest = app.get_auth("/v1/admin/audit/seal", &admin).await;
    let body: Value = latest.json().await.unwrap();
    assert_eq!(body["key_id"], access_token_key.key_id());
    assert_eq!(
        body["public_key"],
        Value::Null,
        "the access-token key is no seal key"
    );
    stop(app).await;
}
