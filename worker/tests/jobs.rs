//! Events to jobs over a real RabbitMQ, email over a real SMTP server: delivery end to end,
//! retries, the circuit breaker, dead letters and an administrator's retry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use idp_events::StreamId;
use std::collections::HashMap;
use std::time::Duration;

use common::harness::{
    self, ADMIN_EMAIL, ADMIN_PASSWORD, job_events, register_user, start_api, start_worker,
};
use idp_events::jobs::{BreakerEvent, JobEvent};
use idp_testkit::broker::unique_prefix;
use idp_testkit::clock::wait_until;
use idp_testkit::log::count_events;
use idp_testkit::metrics::exclusive_metrics;
use idp_testkit::smtp::SmtpSink;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const PASSWORD: &str = "a long enough password for tests";

fn link_token(text: &str) -> String {
    let start = text.find("token=").expect("the email has a token link") + "token=".len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_registration_emails_a_link_that_verifies_the_account_and_then_login_works(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let _registry = exclusive_metrics().await;
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let api = start_api(&conn).await;
    let worker = start_worker(
        &conn,
        &prefix,
        Some(&sink.url()),
        &["--metrics-sample-secs", "1"],
    )
    .await;

    let response = api
        .post(
            "/v1/auth/register",
            json!({ "email": "ada@example.com", "password": PASSWORD, "display_name": "Ada" }),
        )
        .await;
    assert_eq!(response.status(), 202);

    let mail = sink.wait_for_messages(1, Duration::from_secs(30)).await;
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].rcpt_tos, vec!["ada@example.com".to_owned()]);
    let text = mail[0].text.clone().expect("a text part");
    assert!(mail[0].html.is_some(), "an HTML part too");
    assert!(
        text.contains("http://idp.test/verify-email?token="),
        "{text}"
    );

    // Unverified accounts cannot sign in; the link's token verifies it.
    let denied = api
        .post(
            "/v1/auth/login",
            json!({ "email": "ada@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(denied.status(), 401);
    let verified = api
        .post(
            "/v1/auth/verify-email",
            json!({ "token": link_token(&text) }),
        )
        .await;
    assert_eq!(verified.status(), 200, "{}", verified.text().await.unwrap());
    api.token("ada@example.com", PASSWORD).await;

    // The outcome is on the record, caused by the request.
    let pool = PgPoolOptions::new()
        .connect_with(conn.clone())
        .await
        .unwrap();
    wait_until("EmailSent", Duration::from_secs(10), || async {
        count_events(&pool, "EmailSent").await == 1
    })
    .await;

    // The job, lag and breaker metrics are exported. (Sampled gauges are waited for: a worker
    // that ran before in this process may have left its own values.)
    let metrics_url = format!("http://127.0.0.1:{}/metrics", worker.port);
    wait_until(
        "lag and breaker metrics",
        Duration::from_secs(10),
        || async {
            let body = reqwest::get(&metrics_url)
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            body.contains("idp_projection_lag_events")
                && body.contains("idp_dispatcher_backlog")
                && body.contains(r#"idp_db_pool_connections{binary="idp-worker",state="idle"}"#)
                && body.contains("idp_circuit_breaker_state{breaker=\"smtp\"} 0")
        },
    )
    .await;
    let body = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "idp_jobs_started_total{queue=\"email\"}",
        "idp_jobs_succeeded_total{queue=\"email\"}",
        "idp_job_duration_seconds_bucket",
        "idp_circuit_breaker_state{breaker=\"smtp\"} 0",
        "idp_projection_lag_seconds",
        r#"idp_db_pool_max_connections{binary="idp-worker"}"#,
        r#"idp_http_requests_total{route="/metrics",method="GET",status="200"}"#,
        r#"binary="idp-worker"} 1"#,
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }

    worker.stop().await;
    api.stop().await;
    harness::delete_queues(&prefix).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refusing_mail_server_gets_backed_off_retries_then_the_breaker_opens_the_job_is_dead_lettered_and_an_admin_retry_delivers_it_once(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let _registry = exclusive_metrics().await;
    let sink = SmtpSink::start().await;
    sink.refuse(451, None).await;
    let prefix = unique_prefix();
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let api = start_api(&conn).await;
    let worker = start_worker(
        &conn,
        &prefix,
        Some(&sink.url()),
        &[
            "--metrics-sample-secs",
            "1",
            "--job-max-attempts",
            "4",
            "--job-backoff-base-ms",
            "100",
            "--job-backoff-cap-ms",
            "300",
            "--breaker-failure-threshold",
            "3",
            // Long enough that the administrator's retry below starts while it is still open.
            "--breaker-open-ms",
            "1500",
        ],
    )
    .await;

    let (_, cause) = register_user(&store, "grace@example.com").await;
    wait_until("the dead letter", Duration::from_secs(30), || async {
        job_events(&store, cause)
            .await
            .iter()
            .any(|(e, _)| matches!(e, JobEvent::JobDeadLettered { .. }))
    })
    .await;

    // Four attempts, each failure recorded with the delay that followed it, and the delays
    // actually waited within the full-jitter bounds.
    let events = job_events(&store, cause).await;
    let failures: Vec<_> = events
        .iter()
        .filter_map(|(e, r)| match e {
            JobEvent::EmailDeliveryFailed {
                attempt,
                permanent,
                retry_in_ms,
                error,
            } => Some((
                *attempt,
                *permanent,
                *retry_in_ms,
                error.clone(),
                r.recorded_at,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "{events:?}"
    );
    assert!(failures.iter().all(|f| !f.1), "451 is transient");
    for (i, failure) in failures.iter().enumerate().take(3) {
        let ceiling = (100_u64 << i).min(300);
        let delay = failure.2.expect("a retry is scheduled");
        assert!(
            delay <= ceiling,
            "attempt {}: {delay} ms > {ceiling} ms",
            failure.0
        );
        let waited = (failures[i + 1].4 - failure.4).num_milliseconds();
        assert!(
            waited >= i64::try_from(delay).unwrap(),
            "waited {waited} ms before attempt {}, scheduled {delay} ms",
            failure.0 + 1
        );
    }
    assert_eq!(failures[3].2, None, "no retry after the last attempt");
    // The breaker opened after three failures, so the fourth attempt was refused without
    // reaching the server.
    assert!(
        failures[3].3.contains("circuit breaker smtp is open"),
        "{:?}",
        failures[3].3
    );
    assert_eq!(sink.stats().await.refused, 3);
    let breaker: Vec<BreakerEvent> = store
        .read_stream(StreamId::breaker("smtp").as_str(), 1)
        .await
        .unwrap()
        .iter()
        .filter_map(BreakerEvent::from_recorded)
        .collect();
    assert!(
        matches!(
            breaker.first(),
            Some(BreakerEvent::CircuitOpened { failures: 3, .. })
        ),
        "{breaker:?}"
    );

    // The dead letter is listed for administrators, and sending it back delivers it once the
    // server accepts again.
    let token = api.token(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let listed: serde_json::Value = api
        .client
        .get(api.url("/v1/admin/jobs/dead"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["reason"], "rejected");
    assert_eq!(items[0]["attempts"], 4);
    let job_id = items[0]["job_id"].as_str().unwrap().to_owned();
    // Operators see it waiting on the metrics too (sampled every second here).
    let metrics_url = format!("http://127.0.0.1:{}/metrics", worker.port);
    let dead_letters = |expected: &'static str| {
        let metrics_url = metrics_url.clone();
        async move {
            reqwest::get(&metrics_url)
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains(&format!(
                    "idp_jobs_dead_letters{{queue=\"email\"}} {expected}"
                ))
        }
    };
    wait_until(
        "the dead letter on /metrics",
        Duration::from_secs(10),
        || dead_letters("1"),
    )
    .await;

    sink.accept().await;
    let retried = api
        .client
        .post(api.url(&format!("/v1/admin/jobs/{job_id}/retry")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 202);
    let again = api
        .client
        .post(api.url(&format!("/v1/admin/jobs/{job_id}/retry")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "a job already sent back is not dead");

    let mail = sink.wait_for_messages(1, Duration::from_secs(30)).await;
    assert_eq!(mail.len(), 1);
    wait_until("the breaker to close", Duration::from_secs(30), || async {
        store
            .read_stream(StreamId::breaker("smtp").as_str(), 1)
            .await
            .unwrap()
            .iter()
            .filter_map(BreakerEvent::from_recorded)
            .any(|e| e == BreakerEvent::CircuitClosed)
    })
    .await;
    let ready: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/health/ready", worker.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(ready["breakers"]["smtp"], "closed", "{ready}");
    let remaining: i64 = sqlx::query_scalar("select count(*) from dead_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(remaining, 0);
    wait_until(
        "no dead letter on /metrics",
        Duration::from_secs(10),
        || dead_letters("0"),
    )
    .await;

    worker.stop().await;
    let mail = sink.messages().await;
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for m in &mail {
        *by_id.entry(m.message_id.clone()).or_default() += 1;
    }
    assert!(by_id.values().all(|n| *n == 1), "{by_id:?}");
    api.stop().await;
    harness::delete_queues(&prefix).await;
}
