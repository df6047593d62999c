//! A person's own sessions over real HTTP: the list from two devices, ending another device's
//! session (its tokens refused at once), ending all the others, what `SESSION_BINDING` does to
//! a refresh from elsewhere, and the new-device email, delivered to a real SMTP server, whose
//! link ends the session it is about.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::identity::PASSWORD;
use common::worker::start_worker_mailing;
use common::{TestApp, spawn_app};
use idp_testkit::database::pool;
use idp_testkit::log::count_events;
use idp_testkit::smtp::SmtpSink;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";

/// Loopback is the trusted proxy: `X-Forwarded-For` names the client.
const PROXY_ARGS: [&str; 2] = ["--trusted-proxies", "127.0.0.1"];

/// A device: its user agent and its address.
#[derive(Clone, Copy)]
struct Device {
    agent: &'static str,
    ip: &'static str,
}

const LAPTOP: Device = Device {
    agent: FIREFOX,
    ip: "203.0.113.7",
};
const PHONE: Device = Device {
    agent: SAFARI,
    ip: "198.51.100.9",
};

/// Calls the API from `device`; the status and the JSON body.
async fn call_from(
    app: &TestApp,
    device: Device,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    if let Some(body) = &body {
        idp_ops::test_logs::remember_secrets_in(body);
    }
    app.call_with(
        &[("user-agent", device.agent), ("x-forwarded-for", device.ip)],
        method,
        path,
        token,
        body,
    )
    .await
}

/// Signs in from `device`; the access and refresh tokens.
async fn sign_in(app: &TestApp, device: Device, email: &str) -> (String, String) {
    let (status, body) = call_from(
        app,
        device,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pair = (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    );
    idp_ops::test_logs::remember_secret("refresh token", &pair.1);
    pair
}

/// Refreshes from `device`; the status and the new refresh token, if any.
async fn refresh(app: &TestApp, device: Device, refresh_token: &str) -> (u16, Option<String>) {
    let (status, body) = call_from(
        app,
        device,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": refresh_token })),
    )
    .await;
    let next = body["refresh_token"].as_str().map(str::to_owned);
    if let Some(next) = &next {
        idp_ops::test_logs::remember_secret("refresh token", next);
    }
    (status, next)
}

async fn sessions(app: &TestApp, device: Device, token: &str) -> Vec<Value> {
    let (status, body) = call_from(
        app,
        device,
        Method::GET,
        "/v1/account/sessions",
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["sessions"].as_array().unwrap().clone()
}

/// How many sessions ended for `reason` (`SessionRevoked` events).
async fn revocations(db: &sqlx::PgPool, reason: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from events where event_type = 'SessionRevoked' and data->>'reason' = $1",
    )
    .bind(reason)
    .fetch_one(db)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_person_lists_their_sessions_and_ends_another_devices_at_once(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &PROXY_ARGS).await;
    let db = pool(&conn).await;
    let email = "ada@example.com";
    app.verified_user(&db, email, PASSWORD).await;
    let (laptop, _) = sign_in(&app, LAPTOP, email).await;
    let (phone, phone_refresh) = sign_in(&app, PHONE, email).await;

    // Three sessions (the first sign-in's too), newest first, each with its device.
    let listed = sessions(&app, LAPTOP, &laptop).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[0]["device"], "Safari on iOS");
    assert_eq!(listed[0]["network"], "198.51.100.0/24");
    assert_eq!(listed[0]["current"], false);
    assert_eq!(listed[1]["device"], "Firefox on Linux");
    assert_eq!(listed[1]["network"], "203.0.113.0/24");
    assert_eq!(listed[1]["current"], true);
    assert!(listed[1]["created_at"].is_string() && listed[1]["last_used_at"].is_string());
    let phone_session = listed[0]["id"].as_str().unwrap().to_owned();
    let first_session = listed[2]["id"].as_str().unwrap().to_owned();

    // Nobody else ends it: another person, no token, an id that is not one.
    let other = app.verified_user(&db, "grace@example.com", PASSWORD).await;
    let path = format!("/v1/account/sessions/{phone_session}");
    let (status, _) = call_from(&app, LAPTOP, Method::DELETE, &path, Some(&other), None).await;
    assert_eq!(status, 404);
    let (status, _) = call_from(&app, LAPTOP, Method::DELETE, &path, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = call_from(
        &app,
        LAPTOP,
        Method::DELETE,
        "/v1/account/sessions/not-a-session",
        Some(&laptop),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call(Method::GET, "/v1/auth/me", Some(&phone), None)
        .await;
    assert_eq!(status, 200, "the phone's session still works");

    // Its owner ends it from the laptop: the phone's access and refresh tokens are refused
    // at once.
    let (status, _) = call_from(&app, LAPTOP, Method::DELETE, &path, Some(&laptop), None).await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(Method::GET, "/v1/auth/me", Some(&phone), None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(refresh(&app, PHONE, &phone_refresh).await.0, 401);
    // Ending it again changes nothing.
    let (status, _) = call_from(&app, LAPTOP, Method::DELETE, &path, Some(&laptop), None).await;
    assert_eq!(status, 204);
    let listed = sessions(&app, LAPTOP, &laptop).await;
    let ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&phone_session.as_str()), "{ids:?}");
    assert_eq!(listed.len(), 2);

    // All the others: the first sign-in's session ends, the laptop's stays.
    let (status, body) = call_from(
        &app,
        LAPTOP,
        Method::POST,
        "/v1/account/sessions/revoke-others",
        Some(&laptop),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 1);
    let listed = sessions(&app, LAPTOP, &laptop).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["current"], true);
    assert_ne!(listed[0]["id"], first_session.as_str());
    let (status, _) = call_from(
        &app,
        LAPTOP,
        Method::POST,
        "/v1/account/sessions/revoke-others",
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    // Each ending is an event with its reason.
    let owner_ends = revocations(&db, "owner").await;
    assert_eq!(owner_ends, 2);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_bound_session_ends_at_a_refresh_from_another_network_or_agent(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let same_network = Device {
        agent: FIREFOX,
        ip: "203.0.113.200",
    };
    let other_network = Device {
        agent: FIREFOX,
        ip: "192.0.2.1",
    };
    let other_agent = Device {
        agent: SAFARI,
        ip: "203.0.113.7",
    };
    let db = pool(&conn).await;
    let email = "ada@example.com";

    // none: a refresh token works from anywhere.
    let app = spawn_app(&conn, &PROXY_ARGS).await;
    app.verified_user(&db, email, PASSWORD).await;
    let (_, token) = sign_in(&app, LAPTOP, email).await;
    let (status, token) = refresh(&app, other_network, &token).await;
    assert_eq!(status, 200);
    assert_eq!(refresh(&app, other_agent, &token.unwrap()).await.0, 200);
    app.stop().await;

    // network: the same /24 is fine, another one ends the session for good.
    let mut args = PROXY_ARGS.to_vec();
    args.extend(["--session-binding", "network"]);
    let app = spawn_app(&conn, &args).await;
    let (_, token) = sign_in(&app, LAPTOP, email).await;
    let (status, token) = refresh(&app, same_network, &token).await;
    assert_eq!(status, 200);
    let (status, token) = refresh(&app, other_agent, &token.unwrap()).await;
    assert_eq!(
        status, 200,
        "another agent on the same network is not checked"
    );
    let token = token.unwrap();
    assert_eq!(refresh(&app, other_network, &token).await.0, 401);
    assert_eq!(
        refresh(&app, LAPTOP, &token).await.0,
        401,
        "the session ended"
    );
    app.stop().await;

    // network+agent: another user agent ends it too.
    let mut args = PROXY_ARGS.to_vec();
    args.extend(["--session-binding", "network+agent"]);
    let app = spawn_app(&conn, &args).await;
    let (_, token) = sign_in(&app, LAPTOP, email).await;
    let (status, token) = refresh(&app, same_network, &token).await;
    assert_eq!(status, 200);
    let token = token.unwrap();
    assert_eq!(refresh(&app, other_agent, &token).await.0, 401);
    assert_eq!(refresh(&app, LAPTOP, &token).await.0, 401);
    let broken = revocations(&db, "binding_broken").await;
    assert_eq!(broken, 2);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_new_device_is_emailed_once_and_its_link_ends_that_session(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let sink = SmtpSink::start().await;
    let app = spawn_app(&conn, &PROXY_ARGS).await;
    let db = pool(&conn).await;
    let worker = start_worker_mailing(&conn, &sink.url()).await;
    let email = "ada@example.com";
    // The first sign-in has nothing to be compared with: no notice; the laptop is new.
    app.verified_user(&db, email, PASSWORD).await;
    assert_eq!(count_events(&db, "NewDeviceSignedIn").await, 0);
    sign_in(&app, LAPTOP, email).await;
    assert_eq!(count_events(&db, "NewDeviceSignedIn").await, 1);
    // Known now: the same device again, and another address of its network.
    sign_in(&app, LAPTOP, email).await;
    let nearby = Device {
        agent: FIREFOX,
        ip: "203.0.113.99",
    };
    sign_in(&app, nearby, email).await;
    assert_eq!(count_events(&db, "NewDeviceSignedIn").await, 1);
    // A new one.
    let (phone, phone_refresh) = sign_in(&app, PHONE, email).await;
    assert_eq!(count_events(&db, "NewDeviceSignedIn").await, 2);
    sign_in(&app, PHONE, email).await;
    assert_eq!(count_events(&db, "NewDeviceSignedIn").await, 2);

    // The emails: the verification, and one notice per new device.
    let mail = sink.wait_for_messages(3, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mail = if sink.messages().await.len() > mail.len() {
        sink.messages().await
    } else {
        mail
    };
    let notices: Vec<_> = mail
        .iter()
        .filter(|m| m.subject.starts_with("New sign-in"))
        .collect();
    assert_eq!(notices.len(), 2, "{mail:#?}");
    let phone_notice = notices
        .iter()
        .find(|m| m.subject.contains("Safari on iOS"))
        .expect("the phone's notice");
    let text = phone_notice.text.as_deref().unwrap();
    assert!(text.contains("198.51.100.0/24"), "{text}");
    assert!(phone_notice.rcpt_tos.contains(&email.to_owned()));
    let link = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http://idp.test/revoke-session?token="))
        .expect("the revoke link");
    let token = link.rsplit('=').next().unwrap();
    idp_ops::test_logs::remember_secret("revoke token", token);

    // The link ends the phone's session, and only that one.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/revoke-session",
            None,
            Some(json!({ "token": token })),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(Method::GET, "/v1/auth/me", Some(&phone), None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(refresh(&app, PHONE, &phone_refresh).await.0, 401);
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/revoke-session",
            None,
            Some(json!({ "token": token })),
        )
        .await;
    assert_eq!(status, 204, "the same link again changes nothing");
    let ended = revocations(&db, "new_device_notice").await;
    assert_eq!(ended, 1);
    // A token that is not one of ours.
    let mut forged = token.to_owned();
    forged.replace_range(60.., "AAAA");
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/auth/revoke-session",
            None,
            Some(json!({ "token": forged })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    worker.stop().await;
    app.stop().await;
}
