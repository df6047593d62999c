//! Machine callers over real HTTP: service accounts and API keys (personal and a service
//! account's) on the routes they may use and the ones they may not, on two API instances, and
//! the keys that are no keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_ARGS, TestApp, spawn_app};
use idp_testkit::proxy::Proxy;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

const PASSWORD: &str = "a long enough password for tests";

/// A service account made by the administrator, and a key of it with `scopes`: its id and key.
async fn service_account_key(
    app: &TestApp,
    admin: &str,
    name: &str,
    scopes: &[&str],
) -> (Uuid, String, Uuid) {
    let (status, account) = app
        .call(
            Method::POST,
            "/v1/admin/service-accounts",
            Some(admin),
            Some(json!({ "name": name, "description": "CI previews" })),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    let id: Uuid = account["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(account["roles"], json!(["user"]));
    let (status, made) = app
        .call(
            Method::POST,
            &format!("/v1/admin/service-accounts/{id}/api-keys"),
            Some(admin),
            Some(json!({ "name": "pipeline", "scopes": scopes })),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let key_id = made["api_key"]["id"].as_str().unwrap().parse().unwrap();
    (id, key, key_id)
}

/// A personal key of the holder of `token` with `scopes`: the key and its id.
async fn personal_key(app: &TestApp, token: &str, body: Value) -> (String, Uuid) {
    let (status, made) = app
        .call(
            Method::POST,
            "/v1/account/api-keys",
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    (
        made["key"].as_str().unwrap().to_owned(),
        made["api_key"]["id"].as_str().unwrap().parse().unwrap(),
    )
}

async fn user_id(app: &TestApp, token: &str) -> Uuid {
    let (status, me) = app
        .call(Method::GET, "/v1/auth/me", Some(token), None)
        .await;
    assert_eq!(status, 200, "{me}");
    me["id"].as_str().unwrap().parse().unwrap()
}

/// Calls `path` with `key` until it answers `want`, for at most `within`; the last status.
async fn status_within(app: &TestApp, path: &str, key: &str, want: u16, within: Duration) -> u16 {
    let deadline = Instant::now() + within;
    loop {
        let (status, _) = app.call(Method::GET, path, Some(key), None).await;
        if status == want || Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_service_accounts_key_creates_a_project_recorded_as_the_account_and_the_key(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;
    let (account, key, key_id) =
        service_account_key(&app, &admin, "ci-preview", &["projects:write"]).await;
    assert!(key.starts_with("idp_") && key.len() == 61, "{key}");

    let (status, project) = app
        .call(
            Method::POST,
            "/v1/projects",
            Some(&key),
            Some(json!({ "name": "preview-42", "template": "static-site" })),
        )
        .await;
    assert_eq!(status, 202, "{project}");
    let id = project["id"].as_str().unwrap();
    let metadata: Value = sqlx::query_scalar(
        "select metadata from events where stream_id = $1 and stream_version = 1",
    )
    .bind(format!("project-{id}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        metadata["actor"],
        json!(format!("service-account-{account}"))
    );
    assert_eq!(metadata["api_key_id"], json!(key_id.to_string()));

    // The key reads what it made (write includes read), and the account owns it.
    let (status, page) = app
        .call(Method::GET, "/v1/projects", Some(&key), None)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["owner_id"], json!(account.to_string()));
    // The key is kept only as a hash.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from api_keys where key_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&key)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    let leaked: i64 = sqlx::query_scalar(
        "select count(*) from events where data::text like '%' || $1 || '%' or metadata::text like '%' || $1 || '%'",
    )
    .bind(&key[4..])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "the key is in the log");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_key_does_only_what_its_scopes_allow_and_never_a_sessions_work(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let (read_only, _) = personal_key(
        &app,
        &token,
        json!({ "name": "dashboards", "scopes": ["projects:read"] }),
    )
    .await;
    let (status, refused) = app
        .call(
            Method::POST,
            "/v1/projects",
            Some(&read_only),
            Some(json!({ "name": "shop", "template": "static-site" })),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["type"],
        "https://idp.dev/problems/insufficient-scope"
    );
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("projects:write"),
        "{refused}"
    );
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(&read_only), None)
        .await;
    assert_eq!(status, 200);
    // Templates need their own scope.
    let (status, _) = app
        .call(Method::GET, "/v1/templates", Some(&read_only), None)
        .await;
    assert_eq!(status, 403);
    // A key cannot make keys, read sessions or change the account.
    for (method, path) in [
        (Method::GET, "/v1/account/api-keys"),
        (Method::POST, "/v1/account/api-keys"),
        (Method::GET, "/v1/account/sessions"),
        (Method::GET, "/v1/auth/me"),
        (Method::POST, "/v1/auth/2fa/enable-init"),
    ] {
        let (status, body) = app.call(method.clone(), path, Some(&read_only), None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(
            body["type"], "https://idp.dev/problems/session-required",
            "{path}"
        );
    }
    // A person's own key has no admin scope to give when their roles give it nothing.
    let (status, refused) = app
        .call(
            Method::POST,
            "/v1/account/api-keys",
            Some(&token),
            Some(json!({ "name": "ops", "scopes": ["admin"] })),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    // The list shows the key without the key.
    let (status, list) = app
        .call(Method::GET, "/v1/account/api-keys", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    let keys = list["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["scopes"], json!(["projects:read"]));
    assert!(read_only.starts_with(keys[0]["prefix"].as_str().unwrap()));
    assert!(keys[0].get("key").is_none());
    assert!(!list.to_string().contains(&read_only[12..]));
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn expired_and_revoked_keys_are_refused_by_another_instance_within_a_second(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let a = spawn_app(&conn, &ADMIN_ARGS).await;
    let b = common::spawn_app_with_keys(&conn, &[], a.keys_dir.clone()).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = a.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (expiring, _) = personal_key(
        &a,
        &token,
        json!({ "name": "short", "scopes": ["projects:read"], "expires_at": soon }),
    )
    .await;
    let (revoked, revoked_id) = personal_key(
        &a,
        &token,
        json!({ "name": "long", "scopes": ["projects:read"] }),
    )
    .await;
    for key in [&expiring, &revoked] {
        let (status, _) = b.call(Method::GET, "/v1/projects", Some(key), None).await;
        assert_eq!(status, 200);
    }

    let (status, _) = a
        .call(
            Method::DELETE,
            &format!("/v1/account/api-keys/{revoked_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let revoked_at = Instant::now();
    let status = status_within(&b, "/v1/projects", &revoked, 401, Duration::from_secs(1)).await;
    assert_eq!(
        status, 401,
        "the revoked key still works on the other instance"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    // Revoking again changes nothing; someone else's key is not there.
    let (status, _) = a
        .call(
            Method::DELETE,
            &format!("/v1/account/api-keys/{revoked_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let other = a.verified_user(&pool, "bob@example.com", PASSWORD).await;
    let (status, _) = a
        .call(
            Method::DELETE,
            &format!("/v1/account/api-keys/{revoked_id}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, 404);

    let wait = (soon - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let status = status_within(&b, "/v1/projects", &expiring, 401, Duration::from_secs(1)).await;
    assert_eq!(
        status, 401,
        "the expired key still works on the other instance"
    );
    b.stop().await;
    a.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_key_of_a_demoted_owner_loses_its_admin_rights_at_once(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;
    let token = app.verified_user(&pool, "ops@example.com", PASSWORD).await;
    let id = user_id(&app, &token).await;
    let promote = |roles: Value| {
        let app = &app;
        let admin = &admin;
        async move {
            let (status, body) = app
                .call(
                    Method::PUT,
                    &format!("/v1/admin/users/{id}/roles"),
                    Some(admin),
                    Some(json!({ "roles": roles })),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    promote(json!(["user", "admin"])).await;
    let (key, _) = personal_key(&app, &token, json!({ "name": "ops", "scopes": ["admin"] })).await;
    let (status, _) = app
        .call(Method::GET, "/v1/admin/users", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    // An admin-scoped key reads the audit too; a projects key does not administer.
    let (status, _) = app
        .call(Method::GET, "/v1/admin/audit/seal", Some(&key), None)
        .await;
    assert_ne!(status, 403);
    let (projects_key, _) = personal_key(
        &app,
        &token,
        json!({ "name": "p", "scopes": ["projects:write"] }),
    )
    .await;
    let (status, body) = app
        .call(Method::GET, "/v1/admin/users", Some(&projects_key), None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "https://idp.dev/problems/insufficient-scope");

    promote(json!(["user"])).await;
    let (status, body) = app
        .call(Method::GET, "/v1/admin/users", Some(&key), None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "https://idp.dev/problems/forbidden");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn disabling_or_deleting_a_service_account_stops_its_keys_at_once(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let admin = app.admin_token().await;
    let (account, key, _) =
        service_account_key(&app, &admin, "cleanup-bot", &["projects:read"]).await;
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    // The name is taken while the account exists.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/admin/service-accounts",
            Some(&admin),
            Some(json!({ "name": "cleanup-bot" })),
        )
        .await;
    assert_eq!(status, 409);

    let path = format!("/v1/admin/service-accounts/{account}");
    let (status, _) = app
        .call(Method::POST, &format!("{path}/disable"), Some(&admin), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(&key), None)
        .await;
    assert_eq!(status, 401, "a disabled account's key works");
    let (status, shown) = app.call(Method::GET, &path, Some(&admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["disabled"], true);
    // No key for a disabled account; once enabled, a new key works (the old one stays revoked).
    let (status, _) = app
        .call(
            Method::POST,
            &format!("{path}/api-keys"),
            Some(&admin),
            Some(json!({ "name": "again", "scopes": ["projects:read"] })),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = app
        .call(Method::POST, &format!("{path}/enable"), Some(&admin), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(&key), None)
        .await;
    assert_eq!(status, 401);
    let (status, made) = app
        .call(
            Method::POST,
            &format!("{path}/api-keys"),
            Some(&admin),
            Some(json!({ "name": "again", "scopes": ["projects:read"] })),
        )
        .await;
    assert_eq!(status, 201);
    let fresh = made["key"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(&fresh), None)
        .await;
    assert_eq!(status, 200);

    let (status, _) = app.call(Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(&fresh), None)
        .await;
    assert_eq!(status, 401, "a deleted account's key works");
    let (status, _) = app.call(Method::GET, &path, Some(&admin), None).await;
    assert_eq!(status, 404);
    let (status, list) = app
        .call(
            Method::GET,
            "/v1/admin/service-accounts",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["service_accounts"], json!([]));
    // Its name is free again.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/admin/service-accounts",
            Some(&admin),
            Some(json!({ "name": "cleanup-bot" })),
        )
        .await;
    assert_eq!(status, 201);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rotated_key_works_for_its_grace_period_beside_the_new_one(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let (old, id) = personal_key(
        &app,
        &token,
        json!({ "name": "ci", "scopes": ["projects:read"] }),
    )
    .await;
    let (status, rotated) = app
        .call(
            Method::POST,
            &format!("/v1/account/api-keys/{id}/rotate"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["api_key"]["name"], "ci");
    for key in [&old, &new] {
        let (status, _) = app.call(Method::GET, "/v1/projects", Some(key), None).await;
        assert_eq!(status, 200);
    }
    // The default grace is an hour.
    let (_, list) = app
        .call(Method::GET, "/v1/account/api-keys", Some(&token), None)
        .await;
    let old_view = list["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(id.to_string()))
        .unwrap()
        .clone();
    let until: chrono::DateTime<chrono::Utc> =
        old_view["expires_at"].as_str().unwrap().parse().unwrap();
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(59) && left <= chrono::Duration::minutes(60),
        "{left}"
    );

    // Rotating the new one with no grace stops it at once.
    let new_id = rotated["api_key"]["id"].as_str().unwrap();
    let (status, again) = app
        .call(
            Method::POST,
            &format!("/v1/account/api-keys/{new_id}/rotate"),
            Some(&token),
            Some(json!({ "grace_period_secs": 0 })),
        )
        .await;
    assert_eq!(status, 201, "{again}");
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(&new), None)
        .await;
    assert_eq!(status, 401);
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/account/api-keys/{id}/rotate"),
            Some(&token),
            Some(json!({ "grace_period_secs": 604_801 })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn keys_that_are_no_keys_and_bad_key_requests_are_clear_4xx(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let (key, _) = personal_key(
        &app,
        &token,
        json!({ "name": "ci", "scopes": ["projects:read"] }),
    )
    .await;
    let mut wrong_checksum = key.clone().into_bytes();
    wrong_checksum[30] = if wrong_checksum[30] == b'a' {
        b'b'
    } else {
        b'a'
    };
    let wrong_checksum = String::from_utf8(wrong_checksum).unwrap();
    for (bad, detail) in [
        ("idp_short", "57 letters and digits"),
        (wrong_checksum.as_str(), "checksum"),
        (&format!("{key}x"), "57 letters and digits"),
    ] {
        let (status, body) = app.call(Method::GET, "/v1/projects", Some(bad), None).await;
        assert_eq!(status, 401, "{bad}: {body}");
        assert_eq!(body["type"], "https://idp.dev/problems/malformed-api-key");
        assert!(body["detail"].as_str().unwrap().contains(detail), "{body}");
    }
    for (body, field) in [
        (
            json!({ "name": "x", "scopes": ["projects:delete"] }),
            "unknown scope",
        ),
        (json!({ "name": "x", "scopes": [] }), "scopes"),
        (json!({ "name": "", "scopes": ["projects:read"] }), "name"),
        (
            json!({ "name": "x", "scopes": ["projects:read"], "expires_at": "2020-01-01T00:00:00Z" }),
            "future",
        ),
        (
            json!({ "name": "x", "scopes": ["projects:read"], "expires_at": "soon" }),
            "expires_at",
        ),
        (
            json!({ "name": "x", "scopes": ["projects:read"], "extra": 1 }),
            "unknown field",
        ),
    ] {
        let (status, answer) = app
            .call(
                Method::POST,
                "/v1/account/api-keys",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(field),
            "{body}: {answer}"
        );
    }
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_malformed_key_is_refused_without_asking_the_database(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let proxy = Proxy::to(conn.get_host(), conn.get_port()).await;
    let through = conn.clone().port(proxy.port());
    let app = spawn_app(&through, &["--database-acquire-timeout-secs", "1"]).await;
    let key = "idp_".to_owned() + &"a".repeat(57);
    proxy.refuse().await;
    let started = Instant::now();
    let (status, body) = app
        .call(Method::GET, "/v1/projects", Some(&key), None)
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "https://idp.dev/problems/malformed-api-key");
    assert!(started.elapsed() < Duration::from_millis(500));
    // A well-formed key must be looked up, and the database is away.
    let real = idp_api::auth::api_key::generate();
    let (status, _) = app
        .call(Method::GET, "/v1/projects", Some(real.expose()), None)
        .await;
    assert_eq!(status, 503);
    proxy.restore().await;
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_account_has_at_most_fifty_working_keys(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let token = app.verified_user(&pool, "ada@example.com", PASSWORD).await;
    let mut last = None;
    for n in 0..50 {
        let (_, id) = personal_key(
            &app,
            &token,
            json!({ "name": format!("k{n}"), "scopes": ["projects:read"] }),
        )
        .await;
        last = Some(id);
    }
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/account/api-keys",
            Some(&token),
            Some(json!({ "name": "one more", "scopes": ["projects:read"] })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Rotating one is still possible (the old one is on its way out), and revoking frees a place.
    let last = last.unwrap();
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/account/api-keys/{last}/rotate"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/account/api-keys/{last}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/account/api-keys",
            Some(&token),
            Some(json!({ "name": "one more", "scopes": ["projects:read"] })),
        )
        .await;
    assert_eq!(status, 409, "the rotated key's replacement still counts");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_document_lists_the_api_key_scheme_exactly_on_the_routes_keys_may_call(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let admin = app.admin_token().await;
    let all = [
        "projects:read",
        "projects:write",
        "templates:read",
        "audit:read",
        "admin",
    ];
    let (key, _) = personal_key(&app, &admin, json!({ "name": "everything", "scopes": all })).await;
    let doc = app.openapi().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut checked = (0, 0);
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(security) = operation["security"].as_array() else {
                continue;
            };
            if !security.iter().any(|r| r.get("bearer").is_some()) {
                continue;
            }
            let listed = security.iter().any(|r| r.get("api_key").is_some());
            let concrete = path
                .replace("{stream_id}", &format!("user-{}", Uuid::now_v7()))
                .split('/')
                .map(|part| {
                    if part.starts_with('{') {
                        Uuid::now_v7().to_string()
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let method: Method = method.to_uppercase().parse().unwrap();
            let response = client
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let kind = if status == 403 {
                let body: Value = response.json().await.unwrap_or_default();
                body["type"].as_str().unwrap_or_default().to_owned()
            } else {
                String::new()
            };
            let what = format!("{method} {path}: {status} {kind}");
            if listed {
                assert!(
                    !kind.ends_with("/session-required") && !kind.ends_with("/insufficient-scope"),
                    "{what}"
                );
                assert_ne!(status, 401, "{what}");
                checked.0 += 1;
            } else {
                assert!(kind.ends_with("/session-required"), "{what}");
                checked.1 += 1;
            }
        }
    }
    assert!(checked.0 >= 30 && checked.1 >= 15, "{checked:?}");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_service_accounts_keys_act_with_its_roles_as_they_are_now(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let admin = app.admin_token().await;
    let (account, _, _) = service_account_key(&app, &admin, "auditor", &["projects:read"]).await;
    let path = format!("/v1/admin/service-accounts/{account}");
    let audit_key = json!({ "name": "audit", "scopes": ["audit:read"] });
    // Its roles give audit:read nothing to do yet.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("{path}/api-keys"),
            Some(&admin),
            Some(audit_key.clone()),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, shown) = app
        .call(
            Method::PUT,
            &format!("{path}/roles"),
            Some(&admin),
            Some(json!({ "roles": ["support"] })),
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["roles"], json!(["user", "support"]));
    let (status, made) = app
        .call(
            Method::POST,
            &format!("{path}/api-keys"),
            Some(&admin),
            Some(audit_key),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(Method::GET, "/v1/admin/events", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("{path}/roles"),
            Some(&admin),
            Some(json!({ "roles": ["user"] })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .call(Method::GET, "/v1/admin/events", Some(&key), None)
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("{path}/roles"),
            Some(&admin),
            Some(json!({ "roles": ["root"] })),
        )
        .await;
    assert_eq!(status, 422);
    app.stop().await;
}
