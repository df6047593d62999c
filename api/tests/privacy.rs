//! Personal data end to end, with the real API and worker on a test's own database: a person
//! registers, signs in from a known address and agent, requests a project, is exported, then
//! erases themselves; afterwards a dump of the whole database holds none of their address,
//! name, client address or agent, and neither does the outbox; their tokens are refused, the
//! log and a seal made before the erasure still verify, administrators' event query and export
//! show `"[erased]"`, and the address registers again as a new account. An erasure racing
//! sign-ins and refreshes leaves no session. Bad input and repeated erasures are answered as
//! documented.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::worker::start_worker_with;
use common::{ADMIN_ARGS, TestApp, spawn_app};
use idp_events::seal::{Anchor, PublicKeys, VerifyOptions};
use idp_testkit::clock::wait_until;
use idp_testkit::database::database_url;
use idp_testkit::settings::seal_keys_dir;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

const EMAIL: &str = "Ada.Erasable@example.com";
const NAME: &str = "Ada Erasable";
const IP: &str = "198.51.100.23";
const AGENT: &str = "Erasable-Agent/7.1";
const PASSWORD: &str = "a long enough password for tests";

/// Calls the API as a client at [`IP`] with [`AGENT`] (the app trusts loopback proxies); the
/// status and the JSON body (`null` when empty).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    app.call_with(
        &[("x-forwarded-for", IP), ("user-agent", AGENT)],
        method,
        path,
        token,
        body,
    )
    .await
}

/// Registers [`EMAIL`] with [`NAME`], verifies it with the token the worker would mail, and
/// signs in; the account id, access and refresh tokens.
async fn register_ada(app: &TestApp, pool: &PgPool) -> (Uuid, String, String) {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/auth/register",
        None,
        Some(json!({ "email": EMAIL, "password": PASSWORD, "display_name": NAME })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let token = common::identity::latest_token(
        pool,
        "VerificationRequested",
        &EMAIL.to_lowercase(),
        common::identity::Purpose::VerifyEmail,
    )
    .await;
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/auth/verify-email",
        None,
        Some(json!({ "token": token })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, pair) = call(
        app,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({ "email": EMAIL, "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{pair}");
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let refresh = pair["refresh_token"].as_str().unwrap().to_owned();
    let (_, me) = call(app, Method::GET, "/v1/auth/me", Some(&access), None).await;
    (me["id"].as_str().unwrap().parse().unwrap(), access, refresh)
}

/// `pg_dump` of the whole test database, as text.
fn dump(conn: &PgConnectOptions) -> String {
    let output = std::process::Command::new("pg_dump")
        .arg("--dbname")
        .arg(database_url(conn))
        .output()
        .expect("pg_dump runs");
    assert!(
        output.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The text of every mail file in `outbox`.
fn mail_in(outbox: &std::path::Path) -> String {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return String::new();
    };
    entries
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The administrators' view of the person's stream: the events page and the NDJSON export.
async fn admin_views(app: &TestApp, admin: &str, user: Uuid) -> (Value, String) {
    let (status, page) = call(
        app,
        Method::GET,
        &format!("/v1/admin/events?stream=user-{user}"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let (status, export) = call(
        app,
        Method::GET,
        &format!("/v1/admin/events/export?format=ndjson&stream=user-{user}"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{export}");
    let export = match export {
        Value::String(text) => text,
        one => one.to_string(),
    };
    (page, export)
}

/// The newest seal, once one covers every event committed now (the worker seals each second).
async fn seal_covering_now(pool: &PgPool) -> Anchor {
    let last: i64 = sqlx::query_scalar("select max(position) from events")
        .fetch_one(pool)
        .await
        .unwrap();
    wait_until("a seal covers the log", Duration::from_secs(30), || async {
        let covered: Option<i64> = sqlx::query_scalar("select max(to_position) from seals")
            .fetch_one(pool)
            .await
            .unwrap();
        covered.is_some_and(|to| to >= last)
    })
    .await;
    let (number, hash): (i64, Vec<u8>) = sqlx::query_as(
        "select seal_number, seal_hash from seals order by seal_number desc limit 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    format!("{number}:{}", hex::encode(hash)).parse().unwrap()
}

/// Which of the person's values `text` holds, as written or lowercased.
fn found_in(text: &str) -> Vec<&'static str> {
    let lower = text.to_lowercase();
    [EMAIL, NAME, IP, AGENT]
        .into_iter()
        .filter(|value| text.contains(value) || lower.contains(&value.to_lowercase()))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn an_erased_person_is_gone_from_the_database_while_the_log_still_verifies(
    _opts: sqlx::postgres::PgPoolOptions,
    conn: PgConnectOptions,
) {
    let mut args = ADMIN_ARGS.to_vec();
    args.extend(["--trusted-proxies", "127.0.0.0/8"]);
    let app = spawn_app(&conn, &args).await;
    let worker = start_worker_with(&conn, &["--seal-interval-secs", "1"]).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;
    let bob = app
        .verified_user(&pool, "bob.kept@example.com", PASSWORD)
        .await;
    // The log scan of the test run (scripts/scan-test-logs) looks for these too.
    for value in [EMAIL, &EMAIL.to_lowercase(), NAME, IP, AGENT] {
        idp_ops::test_logs::remember_secret("personal", value);
    }

    let (ada, access, refresh) = register_ada(&app, &pool).await;
    let (status, project) = call(
        &app,
        Method::POST,
        "/v1/projects",
        Some(&access),
        Some(json!({ "name": "erasable", "template": "service" })),
    )
    .await;
    assert_eq!(status, 202, "{project}");
    let project_id = project["id"].as_str().unwrap().to_owned();

    // The log holds none of it in the clear, even before erasure.
    let before = dump(&conn);
    let events_only: String =
        sqlx::query_scalar("select string_agg(data::text || metadata::text, ' ') from events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(found_in(&events_only), Vec::<&str>::new());
    assert!(
        !found_in(&before).is_empty(),
        "the read models hold the person until erasure"
    );

    // The export: every event about them, decrypted, and their project.
    let (status, export) = call(&app, Method::GET, "/v1/account/export", Some(&access), None).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["format"], "idp-personal-data-export/v1");
    assert_eq!(export["person"]["email"], EMAIL.to_lowercase());
    assert_eq!(export["person"]["display_name"], NAME);
    let events = export["events"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for kind in [
        "UserRegistered",
        "VerificationRequested",
        "EmailVerified",
        "LoginSucceeded",
        "SessionStarted",
        "ProjectRequested",
        "PersonalDataExported",
    ] {
        assert!(types.contains(&kind), "{kind} missing from {types:?}");
    }
    let registered = events
        .iter()
        .find(|e| e["event_type"] == "UserRegistered")
        .unwrap();
    assert_eq!(registered["data"]["email"], EMAIL.to_lowercase());
    assert_eq!(registered["metadata"]["client_ip"], IP);
    assert_eq!(registered["metadata"]["user_agent"], AGENT);
    assert_eq!(export["projects"][0]["project_id"], project_id.as_str());

    // Administrators read the person's events opened, in the event query and its export.
    let (page, exported) = admin_views(&app, &admin, ada).await;
    let registered = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "UserRegistered")
        .unwrap();
    assert_eq!(registered["data"]["email"], EMAIL.to_lowercase());
    assert_eq!(registered["metadata"]["user_agent"], AGENT);
    assert!(exported.contains(&EMAIL.to_lowercase()), "{exported}");
    assert!(exported.contains(IP), "{exported}");
    assert!(!exported.contains("$sealed"), "{exported}");

    // The worker mailed the verification link to the outbox; the log is sealed.
    wait_until(
        "the verification email",
        Duration::from_secs(30),
        || async { mail_in(&worker.outbox()).contains(&EMAIL.to_lowercase()) },
    )
    .await;
    let sealed_before = seal_covering_now(&pool).await;

    // A wrong password erases nothing.
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/account",
        Some(&access),
        Some(json!({ "password": "not the password at all" })),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(&app, Method::GET, "/v1/auth/me", Some(&access), None).await;
    assert_eq!(status, 200, "still signed in");

    let (status, erased) = call(
        &app,
        Method::DELETE,
        "/v1/account",
        Some(&access),
        Some(json!({ "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["erased_now"], true);
    assert_eq!(erased["sessions_revoked"], 1);

    // Their tokens are refused.
    let (status, _) = call(&app, Method::GET, "/v1/auth/me", Some(&access), None).await;
    assert_eq!(status, 401, "the access token");
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": refresh })),
    )
    .await;
    assert_eq!(status, 401, "the refresh token");

    // The worker blanks the read models; then the database holds nothing of the person.
    wait_until(
        "the directory forgets the person",
        Duration::from_secs(30),
        || async {
            let email: Option<String> =
                sqlx::query_scalar("select email from users_directory where user_id = $1")
                    .bind(ada)
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            email.as_deref() == Some("[erased]")
        },
    )
    .await;
    wait_until(
        "the audit view forgets the client",
        Duration::from_secs(30),
        || async {
            let left: i64 = sqlx::query_scalar(
                "select count(*) from audit_view where client_ip = $1 or user_agent = $2",
            )
            .bind(IP)
            .bind(AGENT)
            .fetch_one(&pool)
            .await
            .unwrap();
            left == 0
        },
    )
    .await;
    wait_until(
        "the outbox forgets the person",
        Duration::from_secs(30),
        || async { found_in(&mail_in(&worker.outbox())).is_empty() },
    )
    .await;
    assert_eq!(found_in(&dump(&conn)), Vec::<&str>::new());

    // Another person still reads back.
    let (status, other) = call(&app, Method::GET, "/v1/auth/me", Some(&bob), None).await;
    assert_eq!(status, 200);
    assert_eq!(other["email"], "bob.kept@example.com");

    // What remains readable: the events, with every personal field erased; the chains verify.
    let (status, history) = call(
        &app,
        Method::GET,
        &format!("/v1/admin/streams/user-{ada}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let text = history.to_string();
    assert!(text.contains("PersonErased"), "{text}");
    assert!(text.contains("[erased]"), "{text}");
    assert_eq!(found_in(&text), Vec::<&str>::new());
    let (page, exported) = admin_views(&app, &admin, ada).await;
    for view in [page.to_string(), exported] {
        assert!(view.contains("PersonErased"), "{view}");
        assert!(view.contains("[erased]"), "{view}");
        assert!(!view.contains("$sealed"), "{view}");
        assert_eq!(found_in(&view), Vec::<&str>::new());
    }
    // `idp-worker verify --expect-seal`: every chain, every seal, and the seal made before the
    // erasure.
    let keys = PublicKeys::load_dir(&seal_keys_dir(&worker.prefix)).unwrap();
    let options = VerifyOptions {
        expect_seal: Some(sealed_before),
        ..VerifyOptions::default()
    };
    let report = idp_events::seal::verify_log(&pool, &keys, &options)
        .await
        .unwrap();
    assert!(report.is_intact(), "{:?}", report.first_problem());
    assert!(report.seals >= 1, "{report:?}");

    // Repeats and bad input.
    let path = format!("/v1/admin/users/{ada}/erase");
    let (status, again) = call(
        &app,
        Method::POST,
        &path,
        Some(&admin),
        Some(json!({ "reason": "request 7" })),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["erased_now"], false);
    let erasures = idp_testkit::log::count_events(&pool, "PersonErased").await;
    assert_eq!(erasures, 1, "erasing twice records one PersonErased");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/admin/users/{}/erase", Uuid::now_v7()),
        Some(&admin),
        Some(json!({ "reason": "request 8" })),
    )
    .await;
    assert_eq!(status, 404, "an unknown id");
    let (status, _) = call(
        &app,
        Method::POST,
        &path,
        Some(&admin),
        Some(json!({ "reason": " " })),
    )
    .await;
    assert_eq!(status, 422, "an empty reason");
    let (status, _) = call(
        &app,
        Method::POST,
        &path,
        Some(&bob),
        Some(json!({ "reason": "x" })),
    )
    .await;
    assert_eq!(status, 403, "not an administrator");
    let (status, _) = call(
        &app,
        Method::POST,
        &path,
        None,
        Some(json!({ "reason": "x" })),
    )
    .await;
    assert_eq!(status, 401, "no token");
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/v1/admin/users/{ada}/export"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 410, "nothing is left to export");

    // The address registers again, as a new account.
    let (again, _, _) = register_ada(&app, &pool).await;
    assert_ne!(again, ada);

    worker.stop().await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_last_administrator_cannot_be_erased_and_another_can_export_a_person(
    _opts: sqlx::postgres::PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;
    let (_, me) = call(&app, Method::GET, "/v1/auth/me", Some(&admin), None).await;
    let root = me["id"].as_str().unwrap();
    let (status, body) = call(
        &app,
        Method::POST,
        &format!("/v1/admin/users/{root}/erase"),
        Some(&admin),
        Some(json!({ "reason": "leaving" })),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/account",
        Some(&admin),
        Some(json!({ "password": common::ADMIN_PASSWORD })),
    )
    .await;
    assert_eq!(status, 409, "not even by themselves");

    let bob = app
        .verified_user(&pool, "bob.exported@example.com", PASSWORD)
        .await;
    let (_, bob_me) = call(&app, Method::GET, "/v1/auth/me", Some(&bob), None).await;
    let bob_id = bob_me["id"].as_str().unwrap();
    let (status, export) = call(
        &app,
        Method::GET,
        &format!("/v1/admin/users/{bob_id}/export"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(export["person"]["email"], "bob.exported@example.com");
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/v1/admin/users/{root}/export"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, 403, "a person cannot export another");
    app.stop().await;
}

/// Signs `email` in; the access and refresh tokens when the answer is 200.
async fn sign_in(app: &TestApp, email: &str) -> Option<(String, String)> {
    let (status, pair) = call(
        app,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    (status == 200).then(|| tokens_of(&pair))
}

/// Refreshes `refresh`; the new tokens when the answer is 200.
async fn refresh_of(app: &TestApp, refresh: &str) -> Option<(String, String)> {
    let (status, pair) = call(
        app,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": refresh })),
    )
    .await;
    (status == 200).then(|| tokens_of(&pair))
}

fn tokens_of(pair: &Value) -> (String, String) {
    (
        pair["access_token"].as_str().unwrap().to_owned(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[sqlx::test(migrations = false)]
async fn no_session_survives_an_erasure_racing_sign_ins_and_refreshes(
    _opts: sqlx::postgres::PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;
    for round in 0..3 {
        let email = format!("racer.{round}@example.com");
        app.verified_user(&pool, &email, PASSWORD).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                sign_in(&app, &email)
                    .await
                    .expect("signs in before the race"),
            );
        }
        let (_, me) = call(&app, Method::GET, "/v1/auth/me", Some(&held[0].0), None).await;
        let user: Uuid = me["id"].as_str().unwrap().parse().unwrap();

        // Sign-ins, refreshes and the erasure at once.
        let sign_ins = futures::future::join_all((0..4).map(|_| sign_in(&app, &email)));
        let refreshes = futures::future::join_all(held.iter().map(|(_, r)| refresh_of(&app, r)));
        let erase = format!("/v1/admin/users/{user}/erase");
        let erasure = call(
            &app,
            Method::POST,
            &erase,
            Some(&admin),
            Some(json!({ "reason": "race" })),
        );
        let (signed_in, refreshed, (status, erased)) = tokio::join!(sign_ins, refreshes, erasure);
        assert_eq!(status, 200, "{erased}");

        // Whatever won its race, nothing of it still works.
        let mut issued: Vec<(String, String)> = held;
        issued.extend(signed_in.into_iter().flatten());
        issued.extend(refreshed.into_iter().flatten());
        for (access, refresh) in &issued {
            let (status, _) = call(&app, Method::GET, "/v1/auth/me", Some(access), None).await;
            assert_eq!(status, 401, "an access token survived round {round}");
            assert_eq!(
                refresh_of(&app, refresh).await,
                None,
                "a refresh token survived round {round}"
            );
        }
        let active: i64 = sqlx::query_scalar(
            "select count(*) from sessions where user_id = $1 and revoked_at is null",
        )
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(active, 0, "round {round}");
        let tokens: i64 = sqlx::query_scalar(
            "select count(*) from refresh_tokens t join sessions s using (session_id)
              where s.user_id = $1",
        )
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(tokens, 0, "round {round}");
        assert_eq!(
            sign_in(&app, &email).await,
            None,
            "the erased person signs in"
        );
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn consents_are_given_to_the_text_in_force_withdrawn_and_exported(
    _opts: sqlx::postgres::PgPoolOptions,
    conn: PgConnectOptions,
) {
    let mut args = ADMIN_ARGS.to_vec();
    args.extend([
        "--consent-purposes",
        "product_news:2026-11,usage_analytics:3",
    ]);
    let app = spawn_app(&conn, &args).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let ada = app
        .verified_user(&pool, "ada.consents@example.com", PASSWORD)
        .await;
    let bob = app
        .verified_user(&pool, "bob.consents@example.com", PASSWORD)
        .await;
    let news = "/v1/account/consents/product_news";
    let decide = |token: Option<String>, body: Value| {
        let app = &app;
        async move { call(app, Method::PUT, news, token.as_deref(), Some(body)).await }
    };

    // Without a token, nothing.
    let (status, _) = call(&app, Method::GET, "/v1/account/consents", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = decide(None, json!({ "given": true, "version": "2026-11" })).await;
    assert_eq!(status, 401);

    let (status, listed) = call(&app, Method::GET, "/v1/account/consents", Some(&ada), None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["consents"],
        json!([
            {"purpose": "product_news", "current_version": "2026-11", "given": false, "version": null, "decided_at": null},
            {"purpose": "usage_analytics", "current_version": "3", "given": false, "version": null, "decided_at": null},
        ])
    );

    // Bad decisions change nothing.
    let (status, body) = decide(
        Some(ada.clone()),
        json!({ "given": true, "version": "2026-10" }),
    )
    .await;
    assert_eq!(status, 409, "an older text: {body}");
    let (status, _) = decide(Some(ada.clone()), json!({ "given": true })).await;
    assert_eq!(status, 422, "no version");
    let (status, _) = decide(Some(ada.clone()), json!({ "given": "yes" })).await;
    assert_eq!(status, 422, "not a boolean");
    let (status, _) = call(
        &app,
        Method::PUT,
        "/v1/account/consents/no_such_purpose",
        Some(&ada),
        Some(json!({ "given": true, "version": "1" })),
    )
    .await;
    assert_eq!(status, 404, "an unknown purpose");
    assert_eq!(
        idp_testkit::log::count_events(&pool, "ConsentGiven").await,
        0
    );

    // Given, twice: one event; withdrawn: the version they had agreed to.
    for _ in 0..2 {
        let (status, view) = decide(
            Some(ada.clone()),
            json!({ "given": true, "version": "2026-11" }),
        )
        .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["given"], true);
        assert_eq!(view["version"], "2026-11");
    }
    assert_eq!(
        idp_testkit::log::count_events(&pool, "ConsentGiven").await,
        1
    );
    let (_, bobs) = call(&app, Method::GET, "/v1/account/consents", Some(&bob), None).await;
    assert_eq!(
        bobs["consents"][0]["given"], false,
        "another person's are their own"
    );

    let (status, export) = call(&app, Method::GET, "/v1/account/export", Some(&ada), None).await;
    assert_eq!(status, 200);
    assert_eq!(export["person"]["consents"]["product_news"]["given"], true);
    assert_eq!(
        export["person"]["consents"]["product_news"]["version"],
        "2026-11"
    );
    let given = export["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "ConsentGiven")
        .unwrap();
    assert_eq!(
        given["data"],
        json!({ "purpose": "product_news", "version": "2026-11" })
    );

    let (status, view) = decide(Some(ada.clone()), json!({ "given": false })).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["given"], false);
    assert_eq!(view["version"], "2026-11");
    let (_, listed) = call(&app, Method::GET, "/v1/account/consents", Some(&ada), None).await;
    assert_eq!(listed["consents"][0]["given"], false);
    assert!(listed["consents"][0]["decided_at"].is_string());
    assert_eq!(
        idp_testkit::log::count_events(&pool, "ConsentWithdrawn").await,
        1
    );
    app.stop().await;
}
