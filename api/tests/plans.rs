//! Plans over real HTTP: the live-project quota and the spend cap at their edges (one request
//! at a time and 20 at once), the caller's own cap, plan changes, and the per-plan rate limits
//! with their headers, on one API instance and on two.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_ARGS, TestApp, spawn_app};
use idp_events::project::{Project, ProjectEvent, read_model};
use idp_events::{Metadata, StreamId};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const PASSWORD: &str = "a long enough password for tests";

/// A `PLANS` value with one plan, `test`, and the flags that make it the default.
fn one_plan(per_minute: u32, live: u32, spend: u64) -> Vec<String> {
    vec![
        "--plans".into(),
        format!(
            r#"{{"test":{{"requests_per_minute":{per_minute},"live_projects":{live},"monthly_spend_cents":{spend}}},"big":{{"requests_per_minute":100000,"live_projects":1000,"monthly_spend_cents":10000000}}}}"#
        ),
        "--default-plan".into(),
        "test".into(),
    ]
}

async fn app_with(conn: &PgConnectOptions, plan: &[String]) -> TestApp {
    let mut args: Vec<&str> = ADMIN_ARGS.to_vec();
    args.extend(plan.iter().map(String::as_str));
    spawn_app(conn, &args).await
}

async fn request_project(app: &TestApp, token: &str, name: &str, template: &str) -> (u16, Value) {
    app.call(
        Method::POST,
        "/v1/projects",
        Some(token),
        Some(json!({ "name": name, "template": template })),
    )
    .await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_live_project_quota_refuses_with_402_at_its_edge_and_deleting_frees_a_place(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = app_with(&conn, &one_plan(1000, 3, 1_000_000)).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, body) = request_project(&app, &token, &format!("p{n}"), "static-site").await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, refused) = request_project(&app, &token, "p3", "static-site").await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["type"], "https://idp.dev/problems/quota-exceeded");
    assert_eq!(refused["limit"], "live_projects");
    assert_eq!(refused["usage"], 3);
    assert_eq!(refused["cap"], 3);
    let projects: i64 = sqlx::query_scalar("select count(*) from projects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(projects, 3, "a refused request created something");

    let (status, limits) = app
        .call(Method::GET, "/v1/account/limits", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(limits["live_projects"], json!({ "used": 3, "limit": 3 }));
    assert_eq!(limits["plan"], "test");

    // As the worker would once provisioning is done; then the owner deletes it.
    let id: uuid::Uuid = ids[0].parse().unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let history = store
        .read_stream(StreamId::project(id).as_str(), 1)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    read_model::record(
        &store,
        &mut tx,
        &Project::fold(id, &history),
        &[ProjectEvent::ProjectReady],
        Metadata::actor("worker"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("/v1/projects/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = request_project(&app, &token, "p3", "static-site").await;
    assert_eq!(status, 202, "deleting did not free a place: {body}");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn twenty_requests_at_once_on_the_free_plan_create_exactly_ten_projects(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // The default plans: `free` allows 10 live projects (and 20.00 a month: ten services).
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let (status, plan) = app
        .call(Method::GET, "/v1/account/plan", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(plan["plan"], "free");
    assert_eq!(plan["live_projects"], 10);
    let app = Arc::new(app);
    let requests = (0..20).map(|n| {
        let app = Arc::clone(&app);
        let token = token.clone();
        tokio::spawn(async move {
            request_project(&app, &token, &format!("svc-{n}"), "service")
                .await
                .0
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 402).count(),
        10,
        "{statuses:?}"
    );
    let live: i64 = sqlx::query_scalar("select count(*) from projects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, 10);
    Arc::into_inner(app).unwrap().stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_spend_cap_refuses_at_its_edge_and_a_lower_own_cap_touches_no_project(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // `service` costs 200 a month, `static-site` 50.
    let app = app_with(&conn, &one_plan(1000, 100, 450)).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    for name in ["a", "b"] {
        let (status, body) = request_project(&app, &token, name, "service").await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, refused) = request_project(&app, &token, "c", "service").await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["limit"], "monthly_spend_cents");
    assert_eq!(refused["usage"], 400);
    assert_eq!(refused["cap"], 450);
    // 400 + 50 is exactly the ceiling.
    let (status, body) = request_project(&app, &token, "d", "static-site").await;
    assert_eq!(status, 202, "{body}");

    // The person lowers their cap below what they spend: nothing existing changes, nothing new.
    let (status, limits) = app
        .call(
            Method::PUT,
            "/v1/account/limits",
            Some(&token),
            Some(json!({ "spend_cap_cents": 100 })),
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        limits["monthly_spend_cents"],
        json!({ "used": 450, "limit": 100 })
    );
    assert_eq!(limits["spend_cap_cents"], 100);
    let (status, refused) = request_project(&app, &token, "e", "static-site").await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["cap"], 100);
    let (_, page) = app
        .call(Method::GET, "/v1/projects", Some(&token), None)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    // Not above the plan's ceiling; null goes back to it.
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/account/limits",
            Some(&token),
            Some(json!({ "spend_cap_cents": 451 })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, limits) = app
        .call(
            Method::PUT,
            "/v1/account/limits",
            Some(&token),
            Some(json!({ "spend_cap_cents": null })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(limits["monthly_spend_cents"]["limit"], 450);
    let recorded: Vec<String> = sqlx::query_scalar(
        "select event_type from events where stream_id like 'plan-%' order by position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, ["SpendCapChanged", "SpendCapChanged"]);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_billing_administrator_changes_plans_and_people_cannot(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = app_with(&conn, &one_plan(1000, 1, 1_000_000)).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let billing = app
        .verified_user(&pool, "billing@example.com", PASSWORD)
        .await;
    let id_of = |token: String| {
        let app = &app;
        async move {
            let (_, me) = app
                .call(Method::GET, "/v1/auth/me", Some(&token), None)
                .await;
            me["id"].as_str().unwrap().to_owned()
        }
    };
    let ada = id_of(token.clone()).await;
    let billing_id = id_of(billing.clone()).await;
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("/v1/admin/users/{billing_id}/roles"),
            Some(&admin),
            Some(json!({ "roles": ["user", "billing_admin"] })),
        )
        .await;
    assert_eq!(status, 200);
    let path = format!("/v1/admin/users/{ada}/plan");
    let (status, _) = app
        .call(
            Method::PUT,
            &path,
            Some(&token),
            Some(json!({ "plan": "big" })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = app
        .call(
            Method::PUT,
            &path,
            Some(&billing),
            Some(json!({ "plan": "gold" })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("/v1/admin/users/{}/plan", uuid::Uuid::now_v7()),
            Some(&billing),
            Some(json!({ "plan": "big" })),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = request_project(&app, &token, "one", "static-site").await;
    assert_eq!(status, 202);
    let (status, _) = request_project(&app, &token, "two", "static-site").await;
    assert_eq!(status, 402);
    let (status, plan) = app
        .call(
            Method::PUT,
            &path,
            Some(&billing),
            Some(json!({ "plan": "big" })),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["plan"], "big");
    let (status, _) = request_project(&app, &token, "two", "static-site").await;
    assert_eq!(status, 202, "the new plan's quota is not in force");
    let (_, mine) = app
        .call(Method::GET, "/v1/account/plan", Some(&token), None)
        .await;
    assert_eq!(mine["plan"], "big");
    let actor: String = sqlx::query_scalar(
        "select metadata->>'actor' from events where event_type = 'PlanChanged'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(actor, format!("user-{billing_id}"));
    app.stop().await;
}

fn header(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_rate_limit_headers_count_down_and_the_request_past_the_limit_gets_429(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = app_with(&conn, &one_plan(30, 10, 1000)).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let mut remaining = Vec::new();
    for _ in 0..30 {
        let response = app.get_auth("/v1/projects", &token).await;
        assert_eq!(response.status(), 200);
        for name in ["ratelimit-limit", "x-ratelimit-limit"] {
            assert_eq!(header(&response, name), Some(30), "{name}");
        }
        let left = header(&response, "ratelimit-remaining").unwrap();
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some(left));
        let reset = header(&response, "ratelimit-reset").unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
        remaining.push(left);
    }
    // One request every two seconds refills the bucket: the count may stand still once.
    assert_eq!(remaining[0], 29);
    assert!(remaining.windows(2).all(|w| w[1] <= w[0]), "{remaining:?}");
    assert!(remaining[29] <= 1, "{remaining:?}");
    let mut limited = app.get_auth("/v1/projects", &token).await;
    if limited.status() == 200 {
        // The refill allowed one more.
        limited = app.get_auth("/v1/projects", &token).await;
    }
    assert_eq!(limited.status(), 429);
    let retry_after = header(&limited, "retry-after").unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(header(&limited, "ratelimit-remaining"), Some(0));
    let problem: Value = limited.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://idp.dev/problems/too-many-requests"
    );
    // Another account has its own budget; routes without a caller are not counted by plan.
    let other = app.verified_user(&pool, "bob@example.com", PASSWORD).await;
    let response = app.get_auth("/v1/projects", &other).await;
    assert_eq!(response.status(), 200);
    let open = app
        .client
        .get(app.url("/v1/auth/jwks"))
        .send()
        .await
        .unwrap();
    assert!(open.headers().get("ratelimit-limit").is_none());
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn two_api_instances_together_accept_one_accounts_plan_rate_within_ten_percent(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    // 600 a minute: 10 a second once the bucket is spent.
    let plan = one_plan(600, 10, 1000);
    let mut args: Vec<&str> = ADMIN_ARGS.to_vec();
    args.extend(plan.iter().map(String::as_str));
    let a = common::spawn_app_on_own_runtime(&conn, &args).await;
    let b = common::spawn_app_on_own_runtime(&conn, &args[ADMIN_ARGS.len()..]).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = a.verified_user(&pool, "ada@example.com", PASSWORD).await;
    // Each instance has signing keys of its own: one session per instance, one account.
    let token_b = b.token("ada@example.com", PASSWORD).await;

    let accepted = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_at = Instant::now() + Duration::from_secs(16);
    let mut workers = Vec::new();
    for (app, token) in [(&a, &token), (&b, &token_b)] {
        for _ in 0..4 {
            let client = app.client.clone();
            let url = app.url("/v1/projects");
            let token = token.clone();
            let accepted = Arc::clone(&accepted);
            let counting = Arc::clone(&counting);
            workers.push(tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let status = client
                        .get(&url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap()
                        .status();
                    if status == 200 && counting.load(Ordering::SeqCst) {
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    if status == 429 {
                        // Hammer, but do not spin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }));
        }
    }
    // The first 600 are the bucket's burst: count only once it is spent (after 6 s at most).
    tokio::time::sleep(Duration::from_secs(6)).await;
    counting.store(true, Ordering::SeqCst);
    let counted_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    counting.store(false, Ordering::SeqCst);
    let seconds = counted_from.elapsed().as_secs_f64();
    for worker in workers {
        worker.await.unwrap();
    }
    let rate = accepted.load(Ordering::SeqCst) as f64 / seconds;
    assert!(
        (9.0..=11.0).contains(&rate),
        "{rate:.2} accepted a second, the plan allows 10"
    );
    b.stop().await;
    a.stop().await;
}
