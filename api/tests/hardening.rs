//! What an attacker's review of idp found, each reproduced from the outside: the administrator
//! bootstrap, what the public listener tells, what a caller can make the hasher do, names and
//! request ids that must not reach the log or headers, registrations of another's address,
//! email requests that must not tell addresses apart, and client addresses behind proxies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use common::identity::{PASSWORD, verification_token};
use common::{ADMIN_ARGS, ADMIN_EMAIL, TestApp, spawn_app};
use idp_testkit::clock::median;
use idp_testkit::database::pool;
use idp_testkit::log::count_events;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// A POST from the client address `client`, as a trusted proxy on loopback would forward it.
async fn post_from(app: &TestApp, client: &str, path: &str, body: Value) -> reqwest::Response {
    idp_ops::test_logs::remember_secrets_in(&body);
    app.client
        .post(app.url(path))
        .header("x-forwarded-for", client)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// One sign-in of `legit@example.com` from its own address; how long it took.
async fn legit(app: &TestApp) -> Duration {
    let started = Instant::now();
    let response = post_from(
        app,
        "198.51.100.1",
        "/v1/auth/login",
        json!({ "email": "legit@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(response.status(), 200);
    started.elapsed()
}

#[sqlx::test(migrations = false)]
async fn an_admin_email_registered_by_someone_else_stops_start_up_and_hands_over_nothing(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let squatter_password = "the squatter's passphrase";
    let registered = app
        .post(
            "/v1/auth/register",
            json!({ "email": ADMIN_EMAIL, "password": squatter_password }),
        )
        .await;
    assert_eq!(registered.status(), 202);
    let keys = app.keys_dir.clone();
    app.stop().await;

    let mut args =
        idp_testkit::settings::api_args(&idp_testkit::database::database_url(&conn), &keys);
    args.extend(ADMIN_ARGS.iter().map(|a| (*a).to_owned()));
    let config = idp_api::config::Config::try_parse_from(args).unwrap();
    let refused = idp_api::startup::Application::build(&config)
        .await
        .expect_err("start-up must refuse");
    let message = refused.to_string();
    assert!(message.contains("ADMIN_EMAIL"), "{message}");
    assert!(message.contains("not an administrator"), "{message}");

    let pool = pool(&conn).await;
    assert_eq!(
        count_events(&pool, "RolesChanged").await,
        0,
        "no role was granted"
    );
    assert_eq!(
        count_events(&pool, "EmailVerified").await,
        0,
        "nothing was verified"
    );
    let admins: i64 = sqlx::query_scalar("select count(*) from admin_accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(admins, 0);
    let _ = std::fs::remove_dir_all(&keys);
}

#[sqlx::test(migrations = false)]
async fn the_public_listener_serves_no_metrics_and_only_a_bare_readiness(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let wrong = app
        .post(
            "/v1/auth/login",
            json!({ "email": "nobody@example.com", "password": "wrong password 123" }),
        )
        .await;
    assert_eq!(wrong.status(), 401);

    let public_metrics = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(public_metrics.status(), 404);
    let ready: Value = reqwest::get(app.url("/health/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready,
        json!({ "status": "ready" }),
        "nothing but the status"
    );
    assert_eq!(
        reqwest::get(app.url("/health/live"))
            .await
            .unwrap()
            .status(),
        200
    );

    let internal = reqwest::get(app.internal_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        internal.contains(r#"idp_auth_logins_total{outcome="unknown_account"}"#),
        "{internal}"
    );
    let detailed: Value = reqwest::get(app.internal_url("/health/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detailed["checks"][0]["name"], "database");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_malformed_sign_in_address_is_answered_at_once_without_hashing(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    // Warm up connections, so the timing below is the request's own.
    let _ = app
        .post("/v1/auth/login", json!({ "email": "x", "password": "y" }))
        .await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let response = app
            .post(
                "/v1/auth/login",
                json!({ "email": "not an address", "password": "whatever it is 123" }),
            )
            .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().starts_with("email:"));
    }
    // No sign-in was attempted: an attempt records `LoginFailed` (this test's database is its
    // own; the metrics registry is the process's, which `cargo test` shares between tests).
    let pool = pool(&conn).await;
    assert_eq!(count_events(&pool, "LoginFailed").await, 0);
    // A verification costs tens of milliseconds; these answers cost none.
    assert!(slowest < Duration::from_millis(15), "slowest {slowest:?}");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn computations_beyond_the_hashing_queue_are_shed_with_a_quick_503(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(
        &conn,
        &[
            "--argon2-max-queue",
            "0",
            "--trusted-proxies",
            "127.0.0.1/32",
            "--rate-limit-login-per-account",
            "1000/60s",
        ],
    )
    .await;
    // From many addresses at once, so no per-client turn-taking or limit holds them back.
    let attempts = (0..40).map(|i| {
        let app = &app;
        async move {
            let started = Instant::now();
            let response = post_from(
                app,
                &format!("198.18.{}.{}", i / 200, i % 200 + 1),
                "/v1/auth/login",
                json!({ "email": format!("user{i}@example.com"), "password": "wrong password 123" }),
            )
            .await;
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body, started.elapsed())
        }
    });
    let answers = futures::future::join_all(attempts).await;
    let shed: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert!(
        !shed.is_empty(),
        "with no queue, concurrent sign-ins are shed"
    );
    assert!(
        answers.iter().all(|a| a.0 == 503 || a.0 == 401),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    for (_, retry_after, body, took) in shed {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["type"], "https://idp.dev/problems/overloaded");
        assert!(*took < Duration::from_secs(2), "shed quickly: {took:?}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_flood_from_one_address_does_not_slow_another_addresss_sign_ins(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // On a runtime of its own, as in production: the flood's client is not the server's.
    let app = common::spawn_app_on_own_runtime(
        &conn,
        &[
            "--trusted-proxies",
            "127.0.0.1/32",
            "--rate-limit-login-per-account",
            "1000/60s",
            "--rate-limit-login-per-ip",
            "120/60s",
            "--database-max-connections",
            "20",
        ],
    )
    .await;
    let pool = pool(&conn).await;
    app.verified_user(&pool, "legit@example.com", PASSWORD)
        .await;
    let mut quiet = Vec::new();
    // RATE_LIMIT_LOGIN_PER_IP (120/60s here) holds for the legitimate address too: 5 + 100
    // sign-ins; the flood's address passes it after 120 attempts.
    for _ in 0..5 {
        quiet.push(legit(&app).await);
    }
    // 400 concurrent attempts from one address, with passwords and addresses of every kind.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(400)
        .build()
        .unwrap();
    let base = app.base.clone();
    // The attacker is another client: its own thread, not this test's one. It keeps 400
    // attempts in flight until the legitimate client has its samples, so that every sample is
    // taken under the flood and the p99 of 100 samples is a p99, not the largest of a few.
    let flooding = Arc::new(AtomicBool::new(true));
    let still_flooding = flooding.clone();
    let flood = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut statuses = Vec::new();
            while still_flooding.load(Ordering::Relaxed) {
                let attempts = (0..400).map(|i| {
                    let client = client.clone();
                    let base = base.clone();
                    async move {
                        let email = if i % 2 == 0 {
                            format!("victim{i}@example.com")
                        } else {
                            "not an address".to_owned()
                        };
                        client
                            .post(format!("{base}/v1/auth/login"))
                            .header("x-forwarded-for", "203.0.113.66")
                            .json(&json!({ "email": email, "password": "guessing 123456" }))
                            .send()
                            .await
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0)
                    }
                });
                statuses.extend(futures::future::join_all(attempts).await);
            }
            statuses
        })
    });
    let flood_started = Instant::now();
    let mut loaded = Vec::new();
    while loaded.len() < 100 {
        loaded.push(legit(&app).await);
    }
    flooding.store(false, Ordering::Relaxed);
    let statuses = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    eprintln!("during the flood, in order: {loaded:?}");
    loaded.sort();
    let p99 = loaded[(loaded.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "legitimate sign-ins: median {:.1} ms alone, {:.1} ms during the flood, p99 {p99:?} ({} samples)",
        median(quiet) * 1e3,
        median(loaded.clone()) * 1e3,
        loaded.len()
    );
    assert!(
        statuses.iter().all(|s| [401, 422, 429].contains(s)),
        "the flood gets quick refusals: {statuses:?}"
    );
    // Malformed addresses are answered before any limit is counted; every other attempt of the
    // flood's address beyond what its limit allows (120, refilled at 2/s) is refused 429.
    let malformed = statuses.iter().filter(|s| **s == 422).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    let allowed = 120 + 2 * (flood_started.elapsed().as_secs() as usize + 1);
    assert!(
        limited + allowed >= statuses.len() - malformed && limited > 0,
        "the flood's address is limited: {limited} of {} refused 429",
        statuses.len() - malformed
    );
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn display_names_with_control_or_format_characters_are_refused_naming_the_field(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &["--rate-limit-email-per-ip", "100/60s"]).await;
    for name in [
        "Ada\nBcc: eve@example.com",
        "Ada\u{202e}",
        "zero\u{200b}width",
        "a\u{2028}b",
    ] {
        let response = app
            .post(
                "/v1/auth/register",
                json!({ "email": "ada@example.com", "password": PASSWORD, "display_name": name }),
            )
            .await;
        assert_eq!(response.status(), 422, "{name:?}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .starts_with("display_name:"),
            "{problem}"
        );
    }
    let plain = app
        .post(
            "/v1/auth/register",
            json!({ "email": "ada@example.com", "password": PASSWORD, "display_name": "Zoë Ñandú" }),
        )
        .await;
    assert_eq!(plain.status(), 202);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_huge_or_odd_request_id_is_replaced_and_correlation_ids_are_always_the_servers(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &["--rate-limit-email-per-ip", "100/60s"]).await;
    let pool = pool(&conn).await;
    let register = |email: &'static str, request_id: String| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/v1/auth/register"))
                .header("x-request-id", request_id)
                .json(&json!({ "email": email, "password": PASSWORD }))
                .send()
                .await
                .unwrap()
        }
    };
    let metadata_of = |email: &'static str| {
        let pool = &pool;
        async move {
            let mut events =
                idp_testkit::log::events_with(pool, "UserRegistered", "email", email).await;
            let mut metadata = events.remove(0).metadata;
            idp_events::privacy::fields::unmark(&mut metadata);
            metadata
        }
    };

    let huge = "a".repeat(200_000);
    let response = register("huge@example.com", huge.clone()).await;
    assert_eq!(response.status(), 202);
    let answered = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        Uuid::parse_str(&answered).is_ok(),
        "replaced by one of ours"
    );
    let metadata = metadata_of("huge@example.com").await;
    assert_eq!(metadata["request_id"], answered);
    assert!(metadata.to_string().len() < 1_000, "nothing huge is stored");

    let odd = register("odd@example.com", "has spaces; and=more".into()).await;
    let answered = odd.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(answered, "has spaces; and=more");
    assert!(Uuid::parse_str(&answered).is_ok());

    let limit = "r".repeat(64);
    let kept = register("kept@example.com", limit.clone()).await;
    assert_eq!(
        kept.headers()["x-request-id"],
        limit.as_str(),
        "64 is allowed"
    );
    let over = register("over@example.com", "r".repeat(65)).await;
    assert_ne!(over.headers()["x-request-id"], "r".repeat(65).as_str());

    // A client's UUID is kept as its request id but never becomes the correlation id.
    let chosen = Uuid::now_v7();
    let response = register("chosen@example.com", chosen.to_string()).await;
    assert_eq!(
        response.headers()["x-request-id"],
        chosen.to_string().as_str()
    );
    let metadata = metadata_of("chosen@example.com").await;
    assert_eq!(metadata["request_id"], chosen.to_string());
    let correlation = metadata["correlation_id"].as_str().unwrap();
    assert_ne!(correlation, chosen.to_string());
    assert!(Uuid::parse_str(correlation).is_ok());
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn registering_one_address_from_many_addresses_is_limited_per_address(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &["--trusted-proxies", "127.0.0.1/32"]).await;
    let pool = pool(&conn).await;
    app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let mut statuses = Vec::new();
    for i in 1..=8 {
        let response = post_from(
            &app,
            &format!("192.0.2.{i}"),
            "/v1/auth/register",
            json!({ "email": "ada@example.com", "password": "another long passphrase" }),
        )
        .await;
        statuses.push(response.status().as_u16());
    }
    // RATE_LIMIT_EMAIL_PER_ACCOUNT is 3/600s; the first registration counted too.
    assert_eq!(statuses, [202, 202, 429, 429, 429, 429, 429, 429]);
    assert_eq!(
        count_events(&pool, "DuplicateRegistrationAttempted").await,
        2
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_address_registered_by_someone_else_first_gets_its_owners_password_once_verified(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &["--rate-limit-email-per-ip", "100/60s"]).await;
    let pool = pool(&conn).await;
    let squatter = "the squatter's passphrase";
    let squatted = app
        .post(
            "/v1/auth/register",
            json!({ "email": "ada@example.com", "password": squatter, "display_name": "Eve" }),
        )
        .await;
    assert_eq!(squatted.status(), 202);
    let own = app
        .post(
            "/v1/auth/register",
            json!({ "email": "ada@example.com", "password": PASSWORD, "display_name": "Ada" }),
        )
        .await;
    assert_eq!(own.status(), 202);
    assert_eq!(count_events(&pool, "UserRegistered").await, 1);
    assert_eq!(count_events(&pool, "RegistrationRepeated").await, 1);

    // The owner uses the link of the registration they made (the second).
    let token = verification_token(&pool, "ada@example.com", 1).await;
    let verified = app
        .post("/v1/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(verified.status(), 200);
    let login = |password: &'static str| {
        let app = &app;
        async move {
            app.post(
                "/v1/auth/login",
                json!({ "email": "ada@example.com", "password": password }),
            )
            .await
        }
    };
    assert_eq!(
        login(squatter).await.status(),
        401,
        "the squatter's password"
    );
    let pair: Value = login(PASSWORD).await.json().await.unwrap();
    let me: Value = app
        .get_auth("/v1/auth/me", pair["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["display_name"], "Ada");
    assert_eq!(me["email_verified"], true);

    // The squatter's link (sent to the owner's mailbox) is spent too.
    let first = verification_token(&pool, "ada@example.com", 0).await;
    let spent = app
        .post("/v1/auth/verify-email", json!({ "token": first }))
        .await;
    assert_eq!(spent.status(), 422);
    let pending: i64 = sqlx::query_scalar("select count(*) from pending_registrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "no password waits once the account is verified");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn register_resend_and_forgot_password_take_as_long_for_known_and_unknown_addresses(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let unlimited = "100000/60s";
    let app = spawn_app(
        &conn,
        &[
            "--rate-limit-email-per-ip",
            unlimited,
            "--rate-limit-email-per-account",
            unlimited,
        ],
    )
    .await;
    let pool = pool(&conn).await;
    app.verified_user(&pool, "known@example.com", PASSWORD)
        .await;
    let unverified = app
        .post(
            "/v1/auth/register",
            json!({ "email": "pending@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(unverified.status(), 202);
    // Background load: other clients keep the API busy while the timings are taken.
    let busy = {
        let base = app.base.clone();
        let client = app.client.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let _ = client
                    .post(format!("{base}/v1/auth/password/forgot"))
                    .json(&json!({ "email": format!("load{}@example.com", i % 50) }))
                    .send()
                    .await;
            }
        })
    };
    let timed = |path: &'static str, body: Value| {
        let app = &app;
        async move {
            let started = Instant::now();
            let response = app.post(path, body).await;
            assert_eq!(response.status(), 202, "{path}");
            started.elapsed()
        }
    };
    for (path, known) in [
        ("/v1/auth/password/forgot", "known@example.com"),
        ("/v1/auth/resend-verification", "pending@example.com"),
        ("/v1/auth/register", "known@example.com"),
    ] {
        let (mut k, mut u) = (Vec::new(), Vec::new());
        for round in 0..60 {
            let body = |email: String| {
                if path.ends_with("register") {
                    json!({ "email": email, "password": PASSWORD })
                } else {
                    json!({ "email": email })
                }
            };
            // Alternately first, so neither kind always follows the other's background work.
            let unknown = body(format!("nobody{round}-{}@example.com", path.len()));
            if round % 2 == 0 {
                u.push(timed(path, unknown).await);
                k.push(timed(path, body(known.to_owned())).await);
            } else {
                k.push(timed(path, body(known.to_owned())).await);
                u.push(timed(path, unknown).await);
            }
        }
        let (k, u) = (median(k), median(u));
        eprintln!(
            "{path}: median known {:.2} ms, unknown {:.2} ms",
            k * 1e3,
            u * 1e3
        );
        assert!(
            (u / k - 1.0).abs() <= 0.2,
            "{path}: known {k:.4}s vs unknown {u:.4}s"
        );
    }
    busy.abort();
    // Requests that sent nothing are still on record (once carried out, just after their
    // answer), under a keyed digest of the address.
    let deadline = Instant::now() + Duration::from_secs(10);
    let unanswered: Vec<Value> = loop {
        let found: Vec<Value> = sqlx::query_scalar(
            "select data from events where event_type = 'EmailRequestUnanswered' limit 5",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!unanswered.is_empty());
    assert!(
        !unanswered.iter().any(|d| d.to_string().contains("nobody")),
        "no address in the log"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn forwarded_addresses_count_only_from_trusted_proxies_and_ipv6_by_its_64(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let untrusted = spawn_app(&conn, &[]).await;
    let pool = pool(&conn).await;
    let response = post_from(
        &untrusted,
        "203.0.113.9",
        "/v1/auth/register",
        json!({ "email": "a@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(response.status(), 202);
    let ip = client_ip_of(&pool, "a@example.com").await;
    assert_eq!(
        ip, "127.0.0.1",
        "X-Forwarded-For is ignored from anyone not trusted"
    );
    untrusted.stop().await;

    let trusted = spawn_app(
        &conn,
        &[
            "--trusted-proxies",
            "127.0.0.0/8",
            "--rate-limit-login-per-ip",
            "2/60s",
            "--rate-limit-login-per-account",
            "1000/60s",
        ],
    )
    .await;
    let response = post_from(
        &trusted,
        "203.0.113.9, 127.0.0.5",
        "/v1/auth/register",
        json!({ "email": "b@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(response.status(), 202);
    let ip = client_ip_of(&pool, "b@example.com").await;
    assert_eq!(ip, "203.0.113.9", "the nearest hop that is not a proxy");

    let attempt = |client: &'static str| {
        let trusted = &trusted;
        async move {
            post_from(
                trusted,
                client,
                "/v1/auth/login",
                json!({ "email": "b@example.com", "password": "wrong password 123" }),
            )
            .await
            .status()
            .as_u16()
        }
    };
    // Three addresses of one /64 share one limit of two; another /64 has its own.
    assert_eq!(attempt("2001:db8:1:2::1").await, 401);
    assert_eq!(attempt("2001:db8:1:2:ffff::9").await, 401);
    assert_eq!(attempt("2001:db8:1:2:abcd::2").await, 429);
    assert_eq!(attempt("2001:db8:1:3::1").await, 401);
    trusted.stop().await;
}

// The key-encryption keys come from configuration: a ring that does not unwrap the stored data
// keys (the entry missing, or the same id with another secret) stops start-up, naming the
// variable and the key id, before any request could find personal values unreadable.
#[sqlx::test(migrations = false)]
async fn a_wrong_personal_data_key_ring_stops_start_up(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let db = idp_testkit::database::database_url(&conn);
    let build = |ring: &'static str| {
        let config = idp_api::config::Config::try_parse_from([
            "idp-api",
            "--database-url",
            &db,
            "--api-addr",
            "127.0.0.1:0",
            "--api-internal-addr",
            "127.0.0.1:0",
            "--personal-data-keys",
            ring,
        ])
        .unwrap();
        async move {
            idp_api::startup::Application::build(&config)
                .await
                .map(drop)
        }
    };
    const RIGHT: &str = "k1:right-secret-right-secret-right-secret-1";
    build(RIGHT)
        .await
        .expect("a fresh database starts with any ring");
    let pool = pool(&conn).await;
    let ring = idp_events::keys::SecretKeys::parse("PERSONAL_DATA_KEYS", RIGHT).unwrap();
    let keys = idp_events::privacy::SubjectKeys::new(
        pool.clone(),
        idp_events::privacy::KeyEncryptionKeys::from_ring(&ring),
    );
    let mut db_conn = pool.acquire().await.unwrap();
    keys.for_writing_in(&mut db_conn, Uuid::now_v7())
        .await
        .unwrap();

    build(RIGHT).await.expect("the ring that wrapped the keys");
    build("k1:right-secret-right-secret-right-secret-1,k2:second-secret-second-secret-secon")
        .await
        .expect("a rotated ring that still holds the old entry");
    for wrong in [
        "k2:second-secret-second-secret-secon",
        "k1:wrong-secret-wrong-secret-wrong-secret-1",
    ] {
        let error = format!("{:#}", build(wrong).await.unwrap_err());
        assert!(error.contains("PERSONAL_DATA_KEYS"), "{error}");
        assert!(!error.contains("secret"), "no key material in {error}");
    }
    let missing = format!(
        "{:#}",
        build("k2:second-secret-second-secret-secon")
            .await
            .unwrap_err()
    );
    assert!(
        missing.contains("\"k1\""),
        "names the entry it needs: {missing}"
    );
}

/// The client address recorded with the registration of `email`, opened.
async fn client_ip_of(pool: &sqlx::PgPool, email: &str) -> String {
    let events = idp_testkit::log::events_with(pool, "UserRegistered", "email", email).await;
    idp_events::privacy::fields::known_text(&events[0].metadata["client_ip"])
        .unwrap()
        .to_owned()
}
