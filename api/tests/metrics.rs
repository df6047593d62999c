//! `/metrics` of the API: HTTP requests by route, method and status with their latency, sign-in
//! outcomes, events appended by type, the database pool and the build.
//!
//! The registry is the process's: each test holds it ([`idp_testkit::metrics::exclusive_metrics`]) and checks
//! what its own requests added to a page fetched before them, so the tests hold whether they
//! share one process (`cargo test`) or not (nextest).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

mod common;

use common::{ADMIN_ARGS, ADMIN_EMAIL, spawn_app};
use idp_testkit::metrics::exclusive_metrics;

/// The API's `/metrics` page.
async fn metrics(app: &common::TestApp) -> String {
    app.client
        .get(app.internal_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series whose name and labels are exactly `series` (as rendered).
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

/// How much the series `series` grew from page `before` to page `after` (a series not yet on a
/// page counts as 0).
fn delta(before: &str, after: &str, series: &str) -> f64 {
    value(after, series).unwrap_or(0.0) - value(before, series).unwrap_or(0.0)
}

#[sqlx::test(migrations = false)]
async fn requests_are_counted_and_timed_by_route_template_method_and_status(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let _registry = exclusive_metrics().await;
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let before = metrics(&app).await;
    let admin = app.admin_token().await;
    let missing = uuid::Uuid::now_v7();
    for _ in 0..3 {
        let response = app
            .get_auth(&format!("/v1/projects/{missing}"), &admin)
            .await;
        assert_eq!(response.status(), 404);
    }
    assert_eq!(app.get_auth("/v1/auth/me", &admin).await.status(), 200);
    assert_eq!(
        app.get_auth("/v1/auth/me", "not a token").await.status(),
        401
    );
    assert_eq!(app.get_auth("/no/such/route", &admin).await.status(), 404);
    let wrong = app
        .post(
            "/v1/auth/login",
            json!({ "email": ADMIN_EMAIL, "password": "not the admin password" }),
        )
        .await;
    assert_eq!(wrong.status(), 401);

    let page = metrics(&app).await;
    let project = r#"route="/v1/projects/{id}",method="GET",status="404""#;
    assert_eq!(
        delta(
            &before,
            &page,
            &format!("idp_http_requests_total{{{project}}}")
        ),
        3.0,
        "requests are labelled with the route template, not the raw path:\n{page}"
    );
    assert!(
        !page.contains(&missing.to_string()),
        "no series carries an id from a path"
    );
    assert_eq!(
        delta(
            &before,
            &page,
            &format!("idp_http_request_duration_seconds_count{{{project}}}")
        ),
        3.0
    );
    assert!(
        page.contains(&format!(
            "idp_http_request_duration_seconds_bucket{{{project},le=\"0.05\"}}"
        )),
        "latency is a histogram"
    );
    for series in [
        r#"idp_http_requests_total{route="/v1/auth/me",method="GET",status="200"}"#,
        r#"idp_http_requests_total{route="/v1/auth/me",method="GET",status="401"}"#,
        r#"idp_http_requests_total{route="unmatched",method="GET",status="404"}"#,
        r#"idp_http_requests_total{route="/v1/auth/login",method="POST",status="200"}"#,
        r#"idp_http_requests_total{route="/v1/auth/login",method="POST",status="401"}"#,
        r#"idp_auth_logins_total{outcome="success"}"#,
        r#"idp_auth_logins_total{outcome="failure"}"#,
        r#"idp_events_appended_total{event_type="LoginSucceeded"}"#,
        r#"idp_events_appended_total{event_type="LoginFailed"}"#,
    ] {
        assert_eq!(delta(&before, &page, series), 1.0, "{series}:\n{page}");
    }
    // Nothing is in flight while the page renders: the internal listener's own requests are
    // not API traffic and are not counted (and no other app of the process runs).
    assert_eq!(value(&page, "idp_http_requests_in_flight"), Some(0.0));
    assert!(
        page.contains(&format!(
            "idp_build_info{{version=\"{}\",binary=\"idp-api\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{page}"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_database_pool_in_use_is_published(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let _registry = exclusive_metrics().await;
    let app = spawn_app(&conn, &["--database-max-connections", "7"]).await;
    // The sampler publishes the size at once, then the use every second. An app that ran
    // before in this process may have left its gauges: wait for this app's size.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = metrics(&app).await;
        let max = value(&page, r#"idp_db_pool_max_connections{binary="idp-api"}"#);
        let idle = value(
            &page,
            r#"idp_db_pool_connections{binary="idp-api",state="idle"}"#,
        );
        if max == Some(7.0) && idle.is_some() {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "no pool gauges of a pool of 7:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let in_use = value(
        &page,
        r#"idp_db_pool_connections{binary="idp-api",state="in_use"}"#,
    )
    .expect("in-use gauge");
    assert!((0.0..=7.0).contains(&in_use), "{in_use}");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn refused_sign_ins_count_as_rate_limited(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let _registry = exclusive_metrics().await;
    let app = spawn_app(&conn, &["--rate-limit-login-per-account", "2/60s"]).await;
    let before = metrics(&app).await;
    let mut limited = 0;
    for _ in 0..4 {
        let response = app
            .post(
                "/v1/auth/login",
                json!({ "email": "nobody@example.com", "password": "some password here" }),
            )
            .await;
        if response.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 1, "the account limit never refused");
    let page = metrics(&app).await;
    assert_eq!(
        delta(
            &before,
            &page,
            r#"idp_auth_logins_total{outcome="rate_limited"}"#
        ),
        f64::from(limited)
    );
    app.stop().await;
}
