//! Roles over real HTTP: the permission tables of `docs/identity.md` are the grants in force,
//! and every route of them answers each role (and a caller without a token) as they say; the
//! verification email an administrator sends again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{ADMIN_ARGS, TestApp, spawn_app};
use idp_api::auth::permissions::{GRANTS, Permission};
use idp_events::identity::user::ROLES;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

const PASSWORD: &str = "a long enough password for tests";

/// The two tables of the Roles section of `docs/identity.md`.
struct Tables {
    /// Permission → the roles that have it.
    grants: BTreeMap<String, BTreeSet<String>>,
    /// Method, path and the permission it needs, in the table's order.
    routes: Vec<(Method, String, String)>,
}

impl Tables {
    fn read() -> Self {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/identity.md"))
                .unwrap();
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Roles\n"))
            .expect("a Roles section");
        let cells = |line: &str| -> Vec<String> {
            line.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        };
        let unquote = |cell: &str| cell.split('`').nth(1).unwrap_or_default().to_owned();
        let mut header = Vec::new();
        let mut grants = BTreeMap::new();
        let mut routes = Vec::new();
        for line in section.lines().filter(|l| l.starts_with('|')) {
            let row = cells(line);
            if row[0] == "Permission" {
                header = row[1..].iter().map(|r| unquote(r)).collect();
            } else if row.len() == 1 + header.len() && row[0].starts_with('`') && row.len() > 2 {
                let roles = header
                    .iter()
                    .zip(&row[1..])
                    .filter(|(_, cell)| *cell == "yes")
                    .map(|(role, _)| role.clone())
                    .collect();
                grants.insert(unquote(&row[0]), roles);
            } else if row.len() == 2 && row[0].starts_with('`') {
                let route = unquote(&row[0]);
                let (method, path) = route.split_once(' ').unwrap();
                routes.push((method.parse().unwrap(), path.to_owned(), unquote(&row[1])));
            }
        }
        assert_eq!(header, ROLES, "the grants table has a column per role");
        Self { grants, routes }
    }

    fn allows(&self, role: &str, permission: &str) -> bool {
        self.grants[permission].contains(role)
    }
}

#[test]
fn the_documented_grants_are_the_grants_in_force() {
    let tables = Tables::read();
    let names: BTreeSet<_> = Permission::ALL
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(
        tables.grants.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "one row per permission"
    );
    for (role, permissions) in GRANTS {
        for permission in Permission::ALL {
            assert_eq!(
                tables.allows(role, permission.name()),
                permissions.contains(permission),
                "{role} and {}",
                permission.name()
            );
        }
    }
    for (_, _, permission) in &tables.routes {
        assert!(
            names.contains(permission),
            "unknown permission {permission}"
        );
    }
}

/// An account of `email`, verified and signed in, with `role` besides `user`: its id and token.
async fn account(
    app: &TestApp,
    pool: &sqlx::PgPool,
    admin: &str,
    email: &str,
    role: &str,
) -> (Uuid, String) {
    let token = app.verified_user(pool, email, PASSWORD).await;
    let (status, me) = app
        .call(Method::GET, "/v1/auth/me", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{me}");
    let id: Uuid = me["id"].as_str().unwrap().parse().unwrap();
    if role != "user" {
        let (status, answer) = app
            .call(
                Method::PUT,
                &format!("/v1/admin/users/{id}/roles"),
                Some(admin),
                Some(json!({ "roles": ["user", role] })),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    (id, token)
}

/// The status of `method path` with `token`; the body is not read (an event stream never ends).
async fn status_of(
    client: &reqwest::Client,
    app: &TestApp,
    method: &Method,
    path: &str,
    token: Option<&str>,
) -> u16 {
    let mut request = client.request(method.clone(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request = match (method.as_str(), path) {
        ("PUT", p) if p.ends_with("/roles") => request.json(&json!({ "roles": ["user"] })),
        ("POST", p) if p.ends_with("/erase") => {
            request.json(&json!({ "reason": "the permission table test" }))
        }
        _ => request,
    };
    request.send().await.unwrap().status().as_u16()
}

#[sqlx::test(migrations = "../migrations")]
async fn every_route_of_the_permission_table_answers_each_role_as_the_table_says(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let tables = Tables::read();
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;

    // Every administration route is in the table.
    let doc = app.openapi().await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if path.starts_with("/v1/admin/") && item.get(method).is_some() {
                let method: Method = method.to_uppercase().parse().unwrap();
                assert!(
                    tables
                        .routes
                        .iter()
                        .any(|(m, p, _)| *m == method && p == path),
                    "{method} {path} is not in the permission table"
                );
            }
        }
    }
    // Erasure last: the target is gone after it.
    let mut routes = tables.routes.clone();
    routes.sort_by_key(|(_, path, _)| path.ends_with("/erase"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let mut checked = 0;
    for role in ROLES {
        let (_, token) = account(
            &app,
            &pool,
            &admin,
            &format!("caller-{role}@example.com"),
            role,
        )
        .await;
        let (target, target_token) = account(
            &app,
            &pool,
            &admin,
            &format!("target-{role}@example.com"),
            "user",
        )
        .await;
        let (status, project) = app
            .call(
                Method::POST,
                "/v1/projects",
                Some(&target_token),
                Some(json!({ "name": format!("p-{}", role.replace('_', "-")), "template": "service" })),
            )
            .await;
        assert_eq!(status, 202, "{project}");
        let project = project["id"].as_str().unwrap().to_owned();

        for (method, path, permission) in &routes {
            let concrete = path
                .replace("/v1/admin/users/{id}", &format!("/v1/admin/users/{target}"))
                .replace("{stream_id}", &format!("user-{target}"))
                .replace(
                    "/v1/admin/jobs/{id}",
                    &format!("/v1/admin/jobs/{}", Uuid::now_v7()),
                )
                .replace("{id}", &project);
            let allowed = tables.allows(role, permission);
            let anonymous = status_of(&client, &app, method, &concrete, None).await;
            assert_eq!(anonymous, 401, "{method} {concrete} without a token");
            let what = format!("{method} {concrete} as {role} ({permission}: {allowed})");
            if concrete == "/v1/projects" {
                let (status, page) = app.call(Method::GET, &concrete, Some(&token), None).await;
                assert_eq!(status, 200, "{what}: {page}");
                let listed = page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["id"] == Value::String(project.clone()));
                assert_eq!(listed, allowed, "{what}: {page}");
            } else {
                let status = status_of(&client, &app, method, &concrete, Some(&token)).await;
                let may_read = tables.allows(role, "read_projects_of_others");
                match (concrete.starts_with("/v1/projects/"), allowed) {
                    (false, true) => assert!(![401, 403].contains(&status), "{what}: {status}"),
                    (false, false) => assert_eq!(status, 403, "{what}"),
                    (true, true) => assert!(![401, 403, 404].contains(&status), "{what}: {status}"),
                    // Someone else's project is not there for those who may not read it.
                    (true, false) if !may_read => assert_eq!(status, 404, "{what}"),
                    (true, false) => assert_eq!(status, 403, "{what}"),
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROLES.len() * tables.routes.len());
    assert!(
        tables.routes.len() >= 22,
        "{} routes in the table",
        tables.routes.len()
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_administrator_sends_the_verification_link_again_and_it_is_recorded_as_theirs(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let pool = idp_testkit::database::pool(&conn).await;
    let admin = app.admin_token().await;
    let (status, me) = app
        .call(Method::GET, "/v1/auth/me", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    let admin_actor = format!("user-{}", me["id"].as_str().unwrap());
    let email = "pending@example.com";
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({ "email": email, "password": PASSWORD })),
        )
        .await;
    assert_eq!(status, 202);
    let first = idp_testkit::log::events_with(&pool, "VerificationRequested", "email", email).await;
    assert_eq!(first.len(), 1);
    let id = first[0].stream_id.strip_prefix("user-").unwrap().to_owned();
    let resend = format!("/v1/admin/users/{id}/resend-verification");

    let (status, body) = app.call(Method::POST, &resend, Some(&admin), None).await;
    assert_eq!(status, 204, "{body}");
    let requested =
        idp_testkit::log::events_with(&pool, "VerificationRequested", "email", email).await;
    assert_eq!(requested.len(), 2, "one more link");
    assert_eq!(
        requested[1].metadata["actor"].as_str(),
        Some(admin_actor.as_str())
    );
    assert!(
        requested[1].metadata["request_id"].is_string(),
        "with the request id"
    );

    // Verified: nothing to send.
    let token = app
        .verified_user(&pool, "verified@example.com", PASSWORD)
        .await;
    let (_, me) = app
        .call(Method::GET, "/v1/auth/me", Some(&token), None)
        .await;
    let verified = me["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{verified}/resend-verification"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["detail"], "the address is already verified");
    // No such account; an id that is not one.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{}/resend-verification", Uuid::now_v7()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/admin/users/not-a-uuid/resend-verification",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 400);
    // Erased: gone.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{id}/erase"),
            Some(&admin),
            Some(json!({ "reason": "asked to be forgotten" })),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    let (status, body) = app.call(Method::POST, &resend, Some(&admin), None).await;
    assert_eq!(status, 410, "{body}");
    app.stop().await;
}
