//! Adaptive CAPTCHA over real HTTP, checked with a real local HTTP server speaking the
//! siteverify protocol: not asked below the threshold, asked after it (for the account from any
//! address, and for the address whatever the account, known or not), a good token let through,
//! a bad one refused, and the provider away, misconfigured or failing: refused with 503.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Form, Json, Router};
use common::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const PASSWORD: &str = "a long enough password for tests";
const SECRET: &str = "siteverify-test-secret";
const GOOD: &str = "a-solved-captcha";

/// What the siteverify server was asked, each a form.
type Asked = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A siteverify server: `GOOD` passes for `SECRET`; `broken` answers 500.
async fn siteverify(broken: bool) -> (String, Asked) {
    let asked: Asked = Arc::default();
    let app = Router::new()
        .route(
            "/siteverify",
            post(
                move |State(asked): State<Asked>, Form(form): Form<HashMap<String, String>>| async move {
                    asked.lock().unwrap().push(form.clone());
                    if broken {
                        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
                    }
                    let answer = if form.get("secret").map(String::as_str) != Some(SECRET) {
                        json!({ "success": false, "error-codes": ["invalid-input-secret"] })
                    } else if form.get("response").map(String::as_str) == Some(GOOD) {
                        json!({ "success": true, "hostname": "idp.test" })
                    } else {
                        json!({ "success": false, "error-codes": ["invalid-input-response"] })
                    };
                    (StatusCode::OK, Json(answer))
                },
            ),
        )
        .with_state(asked.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/siteverify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

async fn app_asking(conn: &PgConnectOptions, url: &str, secret: &str, after: &str) -> TestApp {
    spawn_app(
        conn,
        &[
            "--captcha-verify-url",
            url,
            "--captcha-secret",
            secret,
            "--captcha-after-failures",
            after,
            "--trusted-proxies",
            "127.0.0.1/32",
            // The limits are counted before the CAPTCHA; this test asks for many emails.
            "--rate-limit-email-per-account",
            "100/60s",
        ],
    )
    .await
}

/// `path` with `body` (and `captcha_token` when given) from client address `ip`.
async fn from(
    app: &TestApp,
    ip: &str,
    path: &str,
    mut body: Value,
    token: Option<&str>,
) -> (u16, Value) {
    if let Some(token) = token {
        body["captcha_token"] = json!(token);
    }
    app.call_with(
        &[("x-forwarded-for", ip)],
        Method::POST,
        path,
        None,
        Some(body),
    )
    .await
}

async fn sign_in(
    app: &TestApp,
    ip: &str,
    email: &str,
    password: &str,
    token: Option<&str>,
) -> (u16, Value) {
    from(
        app,
        ip,
        "/v1/auth/login",
        json!({ "email": email, "password": password }),
        token,
    )
    .await
}

/// `n` sign-ins with a wrong password from `ip`, each refused as ordinary invalid credentials.
async fn fail(app: &TestApp, ip: &str, email: &str, n: usize) {
    for attempt in 1..=n {
        let (status, body) = sign_in(app, ip, email, "wrong password!", None).await;
        assert_eq!(status, 401, "failure {attempt}: {body}");
        assert_eq!(
            kind(&body),
            "https://idp.dev/problems/invalid-credentials",
            "failure {attempt}"
        );
    }
}

fn kind(body: &Value) -> &str {
    body["type"].as_str().unwrap_or_default()
}

#[sqlx::test(migrations = "../migrations")]
async fn after_the_failures_of_an_account_or_an_address_a_captcha_is_asked_for_and_checked(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let (url, asked) = siteverify(false).await;
    let app = app_asking(&conn, &url, SECRET, "3").await;
    let pool = idp_testkit::database::pool(&conn).await;
    app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    app.verified_user(&pool, "bob@example.com", PASSWORD).await;
    let required = "https://idp.dev/problems/captcha-required";

    // Below the threshold nothing is asked: the first three failures are ordinary ones.
    fail(&app, "203.0.113.1", "ada@example.com", 3).await;
    assert!(
        asked.lock().unwrap().is_empty(),
        "the provider was asked below the threshold"
    );

    // The account now needs one from any address, with the right password too.
    let (status, body) = sign_in(&app, "198.51.100.7", "ada@example.com", PASSWORD, None).await;
    assert_eq!((status, kind(&body)), (400, required), "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("captcha_token"),
        "{body}"
    );
    // Another account from that address does not.
    let (status, body) = sign_in(&app, "198.51.100.7", "bob@example.com", PASSWORD, None).await;
    assert_eq!(status, 200, "{body}");
    // A refused token is its own 401.
    let (status, body) = sign_in(
        &app,
        "198.51.100.7",
        "ada@example.com",
        PASSWORD,
        Some("forged"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(kind(&body), "https://idp.dev/problems/captcha-refused");
    {
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0]["secret"], SECRET);
        assert_eq!(asked[0]["response"], "forged");
        assert_eq!(asked[0]["remoteip"], "198.51.100.7");
    }
    // A good one lets the sign-in through, and the account's failures are forgotten.
    let (status, body) = sign_in(
        &app,
        "198.51.100.7",
        "ada@example.com",
        PASSWORD,
        Some(GOOD),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string(), "{body}");
    let (status, body) = sign_in(&app, "198.51.100.8", "ada@example.com", PASSWORD, None).await;
    assert_eq!(status, 200, "{body}");

    // The address that failed three times keeps needing one, for every account and for
    // registration and the email requests.
    let (status, body) = sign_in(&app, "203.0.113.1", "bob@example.com", PASSWORD, None).await;
    assert_eq!((status, kind(&body)), (400, required), "{body}");
    let register = json!({ "email": "carol@example.com", "password": PASSWORD });
    let (status, body) = from(
        &app,
        "203.0.113.1",
        "/v1/auth/register",
        register.clone(),
        None,
    )
    .await;
    assert_eq!((status, kind(&body)), (400, required), "{body}");
    for path in ["/v1/auth/password/forgot", "/v1/auth/resend-verification"] {
        let (status, body) = from(
            &app,
            "203.0.113.1",
            path,
            json!({ "email": "bob@example.com" }),
            None,
        )
        .await;
        assert_eq!((status, kind(&body)), (400, required), "{path}: {body}");
        let (status, body) = from(
            &app,
            "203.0.113.1",
            path,
            json!({ "email": "bob@example.com" }),
            Some("forged"),
        )
        .await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = from(
            &app,
            "203.0.113.1",
            path,
            json!({ "email": "bob@example.com" }),
            Some(GOOD),
        )
        .await;
        assert_eq!(status, 202, "{path}: {body}");
    }
    let (status, body) = from(
        &app,
        "203.0.113.1",
        "/v1/auth/register",
        register.clone(),
        Some(GOOD),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Another address registers without one.
    let dave = json!({ "email": "dave@example.com", "password": PASSWORD });
    let (status, body) = from(&app, "192.0.2.50", "/v1/auth/register", dave, None).await;
    assert_eq!(status, 202, "{body}");

    // An address no account has is counted the same: being asked says nothing about accounts.
    fail(&app, "192.0.2.1", "nobody@example.com", 3).await;
    let (status, body) = sign_in(
        &app,
        "192.0.2.2",
        "nobody@example.com",
        "wrong password!",
        None,
    )
    .await;
    assert_eq!((status, kind(&body)), (400, required), "{body}");
    let asked_before = asked.lock().unwrap().len();
    let (status, body) = sign_in(&app, "192.0.2.3", "bob@example.com", PASSWORD, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        asked.lock().unwrap().len(),
        asked_before,
        "no CAPTCHA, no question to the provider"
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_provider_that_is_away_failing_or_refusing_idp_fails_closed_with_503(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let unavailable = "https://idp.dev/problems/captcha-unavailable";
    let away = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/siteverify", listener.local_addr().unwrap())
    };
    let (failing, _) = siteverify(true).await;
    let (working, asked) = siteverify(false).await;
    for (url, secret, what) in [
        (away.as_str(), SECRET, "nothing listening"),
        (failing.as_str(), SECRET, "answering 500"),
        (working.as_str(), "not-our-secret", "refusing idp's secret"),
    ] {
        // 0: a CAPTCHA is always needed.
        let app = app_asking(&conn, url, secret, "0").await;
        let (status, body) = sign_in(&app, "203.0.113.9", "ada@example.com", PASSWORD, None).await;
        assert_eq!(status, 400, "{what}: {body}");
        let response = app
            .client
            .post(app.url("/v1/auth/login"))
            .header("x-forwarded-for", "203.0.113.9")
            .json(
                &json!({ "email": "ada@example.com", "password": PASSWORD, "captcha_token": GOOD }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{what}");
        assert_eq!(response.headers()["retry-after"], "5", "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(kind(&body), unavailable, "{what}: {body}");
        app.stop().await;
    }
    assert_eq!(
        asked.lock().unwrap().len(),
        1,
        "the working provider was asked once"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn with_the_captcha_off_a_token_is_ignored_and_failures_ask_for_none(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // Off (no CAPTCHA_VERIFY_URL): the field is accepted and ignored.
    let app = spawn_app(&conn, &[]).await;
    let pool = idp_testkit::database::pool(&conn).await;
    app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    fail(&app, "203.0.113.1", "ada@example.com", 4).await;
    // At the edge of the length limit: 2048 characters go, 2049 are refused (also when off).
    let longest = "t".repeat(2048);
    let (status, body) = sign_in(
        &app,
        "203.0.113.1",
        "ada@example.com",
        PASSWORD,
        Some(&longest),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let too_long = "t".repeat(2049);
    for (path, body) in [
        (
            "/v1/auth/login",
            json!({ "email": "ada@example.com", "password": PASSWORD }),
        ),
        (
            "/v1/auth/register",
            json!({ "email": "new@example.com", "password": PASSWORD }),
        ),
        (
            "/v1/auth/password/forgot",
            json!({ "email": "ada@example.com" }),
        ),
        (
            "/v1/auth/resend-verification",
            json!({ "email": "ada@example.com" }),
        ),
    ] {
        let (status, answer) = from(&app, "203.0.113.1", path, body, Some(&too_long)).await;
        assert_eq!(status, 422, "{path}: {answer}");
        assert_eq!(
            answer["detail"], "captcha_token: at most 2048 characters",
            "{path}"
        );
    }
    app.stop().await;
}
