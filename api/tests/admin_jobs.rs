//! `/v1/admin/jobs/*` over HTTP: access control and input errors. The worker's tests cover a
//! real dead letter being listed and sent back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::spawn_app;
use idp_events::StreamId;
use idp_events::jobs::JobEvent;
use idp_events::{Append, Metadata};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

#[sqlx::test(migrations = false)]
async fn dead_jobs_are_for_admins_only_and_bad_paging_is_a_400(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let anonymous = app
        .client
        .get(app.url("/v1/admin/jobs/dead"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // A plain user: register, verify through the log's token, sign in.
    let pool = PgPoolOptions::new()
        .connect_with(conn.clone())
        .await
        .unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let user = app
        .verified_user(&pool, "bob@example.com", "a long enough password")
        .await;
    let listed = app.get_auth("/v1/admin/jobs/dead", &user).await;
    assert_eq!(listed.status(), 403);
    let retried = app
        .client
        .post(app.url(&format!("/v1/admin/jobs/{}/retry", Uuid::new_v4())))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 403);

    let admin = app.token("root@example.com", "the admin passphrase").await;
    let empty: Value = app
        .get_auth("/v1/admin/jobs/dead", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!({ "items": [], "next_cursor": null }));
    for bad in [
        "?limit=0",
        "?limit=201",
        "?cursor=not-a-cursor",
        "?limit=abc",
    ] {
        let response = app
            .get_auth(&format!("/v1/admin/jobs/dead{bad}"), &admin)
            .await;
        assert_eq!(response.status(), 400, "{bad}");
    }

    // Unknown job: 404. A job that is not dead: 409.
    let unknown = app
        .client
        .post(app.url(&format!("/v1/admin/jobs/{}/retry", Uuid::new_v4())))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let job = Uuid::new_v4();
    store
        .append(
            Append::to(StreamId::job(job))
                .event(
                    JobEvent::EmailSent {
                        attempt: 1,
                        message_id: "m@idp".into(),
                        template: "verification".into(),
                        confirmed: true,
                    }
                    .to_new_event(),
                )
                .metadata(Metadata::actor("worker")),
        )
        .await
        .unwrap();
    let alive = app
        .client
        .post(app.url(&format!("/v1/admin/jobs/{job}/retry")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 409);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn dead_jobs_page_newest_first_with_a_cursor(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let app = spawn_app(&conn, &common::ADMIN_ARGS).await;
    let pool = PgPoolOptions::new()
        .connect_with(conn.clone())
        .await
        .unwrap();
    for i in 0..5 {
        sqlx::query(
            "insert into dead_jobs (job_id, queue, kind, reason, attempts, payload, dead_lettered_at)
             values ($1, 'email', 'send_email', 'rejected', 5, '{}', now() - $2 * interval '1 minute')",
        )
        .bind(Uuid::new_v4())
        .bind(f64::from(i))
        .execute(&pool)
        .await
        .unwrap();
    }
    let admin = app.token("root@example.com", "the admin passphrase").await;
    let first: Value = app
        .get_auth("/v1/admin/jobs/dead?limit=3", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get_auth(
            &format!("/v1/admin/jobs/dead?limit=3&cursor={cursor}"),
            &admin,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert!(second["next_cursor"].is_null());
    let times: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|j| j["dead_lettered_at"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(times, sorted, "newest first, nothing repeated");
    app.stop().await;
}
