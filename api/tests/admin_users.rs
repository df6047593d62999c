//! User administration end to end: the API and the worker (whose `users_directory` feeds the
//! list) against a test's own database: search, filters, order and paging; one account; lock,
//! unlock, roles and session revocation; the last administrator; who may call what; and every
//! action on the record with the administrator as actor.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use idp_events::StreamId;
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::worker::{TestWorker, start_worker};
use common::{TestApp, spawn_app};
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata};
use idp_testkit::clock::wait_until;
use idp_testkit::keys::email_keys;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

const PASSWORD: &str = "a long enough password for tests";
const DEADLINE: Duration = Duration::from_secs(30);
/// The first administrator: an address of its own domain, which searches below tell apart.
const ADMIN_EMAIL: &str = "admin@idp.test";
const ADMIN_PASSWORD: &str = "an admin password that is long";

/// The API, the worker, the database, and the first administrator signed in.
struct Setup {
    api: TestApp,
    worker: TestWorker,
    pool: PgPool,
    store: EventStore,
    root: Uuid,
    root_token: String,
}

impl Setup {
    async fn start(conn: &PgConnectOptions) -> Self {
        let pool = idp_testkit::database::pool(conn).await;
        let api = spawn_app(
            conn,
            &[
                "--admin-email",
                ADMIN_EMAIL,
                "--admin-password",
                ADMIN_PASSWORD,
            ],
        )
        .await;
        let worker = start_worker(conn).await;
        let (root_token, _) = sign_in(&api, ADMIN_EMAIL, ADMIN_PASSWORD).await;
        let root = user_id(&api, &root_token).await;
        Self {
            api,
            worker,
            store: idp_testkit::keys::event_store(pool.clone()),
            pool,
            root,
            root_token,
        }
    }

    async fn stop(self) {
        self.worker.stop().await;
        self.api.stop().await;
    }

    /// Calls the API; the answer's status and JSON body (`null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.api.call(method, path, token, body).await
    }

    /// As the first administrator.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(&self.root_token), body).await
    }

    /// A page of the account list as the first administrator (the query string is `query`).
    async fn list(&self, query: &str) -> Value {
        let (status, body) = self
            .admin(Method::GET, &format!("/v1/admin/users?{query}"), None)
            .await;
        assert_eq!(status, 200, "{query}: {body}");
        body
    }

    /// The emails of the first page of `query`.
    async fn emails(&self, query: &str) -> Vec<String> {
        let mut emails: Vec<String> = self.list(query).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["email"].as_str().unwrap().to_owned())
            .collect();
        emails.sort();
        emails
    }

    /// Registers `email` through the API, verifies it with the emailed token, signs in.
    async fn member(&self, email: &str) -> (Uuid, String, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({ "email": email, "password": PASSWORD })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let event_id: Uuid =
            idp_testkit::log::events_with(&self.pool, "VerificationRequested", "email", email)
                .await[0]
                .event_id;
        let token = one_time_token::issue(&email_keys(), Purpose::VerifyEmail, event_id);
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/auth/verify-email",
                None,
                Some(json!({ "token": token })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (access, refresh) = sign_in(&self.api, email, PASSWORD).await;
        (user_id(&self.api, &access).await, access, refresh)
    }

    /// An account written straight to the log (no password), as the directory will see it.
    async fn seed(
        &self,
        email: &str,
        display_name: &str,
        roles: &[&str],
        verified: bool,
        locked_until: Option<DateTime<Utc>>,
    ) -> Uuid {
        let id = Uuid::now_v7();
        let mut events = user::register(
            email,
            Some(display_name.to_owned()),
            roles.iter().map(|r| (*r).to_owned()).collect(),
            verified,
        );
        if let Some(until) = locked_until {
            events.push(UserEvent::AccountLocked {
                until,
                lock_count: 1,
            });
        }
        self.store
            .append(
                Append::to(StreamId::user(id))
                    .about(id)
                    .expecting(ExpectedVersion::NoStream)
                    .events(events.iter().map(UserEvent::to_new_event))
                    .metadata(Metadata::actor("test")),
            )
            .await
            .unwrap();
        id
    }

    /// Replaces the roles of `id`, as the holder of `token`.
    async fn set_roles(&self, token: &str, id: Uuid, roles: Value) -> (u16, Value) {
        self.call(
            Method::PUT,
            &format!("/v1/admin/users/{id}/roles"),
            Some(token),
            Some(json!({ "roles": roles })),
        )
        .await
    }

    /// Locks `id` until unlocked, as the holder of `token`.
    async fn lock(&self, token: &str, id: Uuid) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/admin/users/{id}/lock"),
            Some(token),
            None,
        )
        .await
    }

    /// The account folded from its stream.
    async fn folded(&self, id: Uuid) -> User {
        User::fold(
            id,
            &self
                .store
                .read_stream(StreamId::user(id).as_str(), 1)
                .await
                .unwrap(),
        )
    }

    /// The actors of the `event_type` events of `stream_like` (a `like` pattern), in order.
    async fn actors(&self, stream_like: &str, event_type: &str) -> Vec<String> {
        sqlx::query_scalar(
            "select metadata->>'actor' from events
              where stream_id like $1 and event_type = $2 order by position",
        )
        .bind(stream_like)
        .bind(event_type)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// Signs in; the access and refresh tokens.
async fn sign_in(api: &TestApp, email: &str, password: &str) -> (String, String) {
    let response = api
        .post(
            "/v1/auth/login",
            json!({ "email": email, "password": password }),
        )
        .await;
    assert_eq!(response.status(), 200, "sign-in of {email}");
    let pair: Value = response.json().await.unwrap();
    (
        pair["access_token"].as_str().unwrap().to_owned(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn user_id(api: &TestApp, token: &str) -> Uuid {
    let me: Value = api
        .client
        .get(api.url("/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    me["id"].as_str().unwrap().parse().unwrap()
}

async fn refresh_status(s: &Setup, refresh_token: &str) -> u16 {
    s.call(
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": refresh_token })),
    )
    .await
    .0
}

async fn login_status(s: &Setup, email: &str) -> u16 {
    s.call(
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({ "email": email, "password": PASSWORD })),
    )
    .await
    .0
}

/// Every page of `query` with `limit` items each, following the cursors.
async fn all_pages(s: &Setup, query: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut q = format!("{query}&limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = s.list(&q).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), limit, "only a full page has a next one");
                cursor = Some(next.to_owned());
            }
            None => return ids,
        }
    }
    panic!("{query}: more than 100 pages");
}

const NAMES: [&str; 20] = [
    "alice", "brian", "carol", "david", "ellen", "frank", "grace", "henry", "irene", "jacob",
    "karen", "louis", "maria", "nancy", "oscar", "peter", "quinn", "rosie", "steve", "tracy",
];

fn surname(name: &str) -> &'static str {
    match name {
        "alice" => "Archer",
        "grace" => "Hopper",
        _ => "Smith",
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_list_searches_filters_sorts_and_pages_the_users_directory(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    // Whole microseconds, as the database keeps them.
    let future = DateTime::from_timestamp_micros(
        (Utc::now() + chrono::Duration::days(1)).timestamp_micros(),
    )
    .unwrap();
    let past = Utc::now() - chrono::Duration::hours(1);
    for name in NAMES {
        let mut first = name.chars();
        let display = format!(
            "{}{} {}",
            first.next().unwrap().to_uppercase(),
            first.as_str(),
            surname(name)
        );
        let roles: &[&str] = match name {
            "frank" | "grace" => &["admin", "user"],
            _ => &["user"],
        };
        let locked = match name {
            "grace" | "henry" => Some(future),
            "irene" => Some(past),
            _ => None,
        };
        let verified = !matches!(name, "carol" | "jacob");
        s.seed(
            &format!("{name}@example.com"),
            &display,
            roles,
            verified,
            locked,
        )
        .await;
    }
    // The last account's registration and verification are the log's last events.
    wait_until("the directory", DEADLINE, || async {
        s.list("status=active&limit=200").await["items"]
            .as_array()
            .unwrap()
            .len()
            == 17
    })
    .await;

    let everyone = s.list("limit=200").await;
    assert_eq!(everyone["items"].as_array().unwrap().len(), 21);
    assert!(everyone["next_cursor"].is_null());
    let grace = everyone["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["email"] == "grace@example.com")
        .unwrap();
    assert_eq!(grace["display_name"], "Grace Hopper");
    assert_eq!(grace["roles"], json!(["admin", "user"]));
    assert_eq!(grace["status"], "locked");
    assert_eq!(
        grace["locked_until"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        future
    );
    for field in ["id", "created_at", "email_verified_at", "last_login_at"] {
        assert!(grace.get(field).is_some(), "{field} missing: {grace}");
    }

    // Search: any part of the email or the name, whatever the case; pattern characters are
    // literal.
    assert_eq!(s.emails("q=HOPPER").await, vec!["grace@example.com"]);
    assert_eq!(s.emails("q=arch").await, vec!["alice@example.com"]);
    assert_eq!(s.emails("q=%20KAREN%20").await, vec!["karen@example.com"]);
    assert_eq!(s.emails("q=idp.TEST").await, vec![ADMIN_EMAIL]);
    assert_eq!(
        s.list("q=example.com&limit=200").await["items"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
    assert!(s.emails("q=%25").await.is_empty(), "% is literal");
    assert!(s.emails("q=_").await.is_empty(), "_ is literal");

    // Filters, alone and combined. A lock that ran out is not in force.
    assert_eq!(
        s.emails("status=locked").await,
        vec!["grace@example.com", "henry@example.com"]
    );
    assert_eq!(
        s.emails("status=unverified").await,
        vec!["carol@example.com", "jacob@example.com"]
    );
    let irene = s.list("q=irene").await["items"][0].clone();
    assert_eq!(
        (irene["status"].clone(), irene["locked_until"].clone()),
        (json!("active"), Value::Null)
    );
    assert_eq!(
        s.emails("role=admin").await,
        vec![ADMIN_EMAIL, "frank@example.com", "grace@example.com"]
    );
    assert_eq!(
        s.emails("role=admin&status=active").await,
        vec![ADMIN_EMAIL, "frank@example.com"]
    );
    assert_eq!(
        s.emails("q=example&role=admin&status=active").await,
        vec!["frank@example.com"]
    );
    assert_eq!(
        s.emails("q=example&role=admin&status=locked").await,
        vec!["grace@example.com"]
    );

    // Each order, paged by 4, gives exactly the one-page answer: no account twice, none left
    // out. Emails sort by their (distinct) names; creation follows the seeding.
    let created: Vec<String> = s.list("sort=created_at&limit=200").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["email"].as_str().unwrap().to_owned())
        .collect();
    let mut seeded: Vec<String> = NAMES.iter().map(|n| format!("{n}@example.com")).collect();
    seeded.insert(0, ADMIN_EMAIL.to_owned());
    assert_eq!(created, seeded);
    for sort in ["email", "-email", "created_at", "-created_at"] {
        let whole: Vec<String> = s.list(&format!("sort={sort}&limit=200")).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        let paged = all_pages(&s, &format!("sort={sort}"), 4).await;
        assert_eq!(paged, whole, "sort={sort}");
        assert_eq!(
            paged.iter().collect::<HashSet<_>>().len(),
            21,
            "sort={sort}"
        );
    }
    let by_email: Vec<String> = s.list("sort=email&limit=200").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["email"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = by_email.clone();
    sorted.sort();
    assert_eq!(by_email, sorted);
    let newest_first: Vec<String> = s.list("limit=200").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["email"].as_str().unwrap().to_owned())
        .collect();
    let mut oldest_first = created.clone();
    oldest_first.reverse();
    assert_eq!(newest_first, oldest_first, "newest first by default");
    // Paging composes with filters.
    assert_eq!(all_pages(&s, "status=active&sort=email", 5).await.len(), 17);

    // Bad parameters are 400 problems.
    let email_cursor = s.list("sort=email&limit=1").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    for query in [
        "limit=0".to_owned(),
        "limit=201".to_owned(),
        "limit=many".to_owned(),
        "status=asleep".to_owned(),
        "sort=name".to_owned(),
        "role=wizard".to_owned(),
        "cursor=garbage".to_owned(),
        format!("sort=created_at&cursor={email_cursor}"),
        "colour=blue".to_owned(),
        format!("q={}", "x".repeat(101)),
        // Found by the API fuzzer: a NUL reached PostgreSQL and was answered 500.
        "q=ada%00".to_owned(),
        "q=%00".to_owned(),
    ] {
        let (status, body) = s
            .admin(Method::GET, &format!("/v1/admin/users?{query}"), None)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["status"], 400, "{query}: a problem document");
    }
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn one_account_is_folded_from_its_stream_with_the_directory_fields(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let (ada, _, _) = s.member("ada@example.com").await;
    let path = format!("/v1/admin/users/{ada}");
    wait_until("the directory's sign-in", DEADLINE, || async {
        !s.admin(Method::GET, &path, None).await.1["last_login_at"].is_null()
    })
    .await;
    let (status, body) = s.admin(Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], json!(ada));
    assert_eq!(body["email"], "ada@example.com");
    assert_eq!(body["roles"], json!(["user"]));
    assert_eq!(body["status"], "active");
    assert_eq!(body["email_verified"], true);
    assert_eq!(body["locked_until"], Value::Null);
    assert_eq!(body["active_sessions"], 1);
    assert_eq!(body["failed_logins"], 0);
    assert!(body["email_verified_at"].is_string());
    assert!(body["created_at"].is_string());
    let version: i64 =
        sqlx::query_scalar("select max(stream_version) from events where stream_id = $1")
            .bind(StreamId::user(ada).to_string())
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(body["version"], version);

    // Written a moment ago, not yet in the directory: the stream still answers.
    let fresh = s.seed("bo@example.com", "Bo", &["user"], false, None).await;
    let (status, body) = s
        .admin(Method::GET, &format!("/v1/admin/users/{fresh}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "unverified");

    let (status, _) = s
        .admin(
            Method::GET,
            &format!("/v1/admin/users/{}", Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .admin(Method::GET, "/v1/admin/users/not-a-uuid", None)
        .await;
    assert_eq!(status, 400);
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_lock_refuses_sign_in_and_ends_every_session_until_an_unlock(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let (ada, access, refresh) = s.member("ada@example.com").await;
    let (_, second_refresh) = sign_in(&s.api, "ada@example.com", PASSWORD).await;
    let lock = format!("/v1/admin/users/{ada}/lock");

    // Without a body: until an administrator unlocks.
    let (status, body) = s.admin(Method::POST, &lock, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["locked_until"], "9999-12-31T23:59:59Z");
    assert_eq!(body["sessions_revoked"], 2);
    assert_eq!(
        s.call(Method::GET, "/v1/auth/me", Some(&access), None)
            .await
            .0,
        401,
        "the access token stops working at once"
    );
    assert_eq!(refresh_status(&s, &refresh).await, 401);
    assert_eq!(refresh_status(&s, &second_refresh).await, 401);
    assert_eq!(login_status(&s, "ada@example.com").await, 401);

    // A password reset would end the lock, so none is offered.
    let (status, _) = s
        .call(
            Method::POST,
            "/v1/auth/password/forgot",
            None,
            Some(json!({ "email": "ada@example.com" })),
        )
        .await;
    assert_eq!(status, 202);
    // Carried out just after the answer: as a request that sent nothing.
    wait_until("the request on record", DEADLINE, || async {
        !s.actors("email-request-%", "EmailRequestUnanswered")
            .await
            .is_empty()
    })
    .await;
    assert!(
        s.actors(StreamId::user(ada).as_str(), "PasswordResetRequested")
            .await
            .is_empty()
    );

    let (_, detail) = s
        .admin(Method::GET, &format!("/v1/admin/users/{ada}"), None)
        .await;
    assert_eq!(detail["status"], "locked");
    assert_eq!(detail["locked_by_admin"], true);
    assert_eq!(detail["active_sessions"], 0);
    wait_until("the directory's lock", DEADLINE, || async {
        s.emails("status=locked").await == vec!["ada@example.com"]
    })
    .await;
    // The owner is told an administrator locked the account (not that someone guessed at the
    // password, which would suggest the reset that cannot lift this lock).
    let outbox = s.worker.outbox();
    let subjects = || {
        std::fs::read_dir(&outbox)
            .into_iter()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .filter_map(|eml| {
                eml.lines()
                    .find_map(|line| line.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect::<Vec<_>>()
    };
    wait_until("the lock's email", DEADLINE, || async {
        subjects().iter().any(|s| s == "Your account is locked")
    })
    .await;
    assert!(
        !subjects().iter().any(|s| s.contains("temporarily")),
        "{:?}",
        subjects()
    );

    // Locking again changes nothing; a lock must end in the future; bodies are checked.
    let (status, body) = s.admin(Method::POST, &lock, Some(json!({}))).await;
    assert_eq!((status, body["sessions_revoked"].clone()), (200, json!(0)));
    assert_eq!(
        s.actors(StreamId::user(ada).as_str(), "AccountLocked")
            .await
            .len(),
        1
    );
    let (status, _) = s
        .admin(
            Method::POST,
            &lock,
            Some(json!({ "until": "2001-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = s
        .admin(Method::POST, &lock, Some(json!({ "reason": "no" })))
        .await;
    assert_eq!(status, 422, "unknown fields are refused");
    let malformed = s
        .api
        .client
        .post(s.api.url(&lock))
        .bearer_auth(&s.root_token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let (status, _) = s
        .admin(
            Method::POST,
            &format!("/v1/admin/users/{}/lock", Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // An unlock lets the owner in again.
    let (status, _) = s
        .admin(Method::POST, &format!("/v1/admin/users/{ada}/unlock"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(login_status(&s, "ada@example.com").await, 200);
    wait_until("the directory's unlock", DEADLINE, || async {
        s.emails("status=locked").await.is_empty()
    })
    .await;

    // A lock with an end holds until then.
    let until = DateTime::from_timestamp(Utc::now().timestamp() + 7200, 0)
        .unwrap()
        .to_rfc3339();
    let (status, body) = s
        .admin(Method::POST, &lock, Some(json!({ "until": until })))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["locked_until"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        until.parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(body["sessions_revoked"], 1);
    assert_eq!(login_status(&s, "ada@example.com").await, 401);
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn granting_and_removing_admin_takes_effect_on_the_next_request(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let (ada, access, _) = s.member("ada@example.com").await;
    let roles = format!("/v1/admin/users/{ada}/roles");
    let as_ada = || s.call(Method::GET, "/v1/admin/users", Some(&access), None);

    assert_eq!(as_ada().await.0, 403);
    let (status, body) = s
        .admin(
            Method::PUT,
            &roles,
            Some(json!({ "roles": ["user", "admin"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"], json!(["admin", "user"]));
    assert_eq!(
        as_ada().await.0,
        200,
        "the same token, now an administrator's"
    );
    let (status, body) = s
        .admin(Method::PUT, &roles, Some(json!({ "roles": ["user"] })))
        .await;
    assert_eq!((status, body["roles"].clone()), (200, json!(["user"])));
    assert_eq!(as_ada().await.0, 403);

    // `user` is always kept; unknown roles and shapes are refused.
    let (status, body) = s
        .admin(Method::PUT, &roles, Some(json!({ "roles": [] })))
        .await;
    assert_eq!((status, body["roles"].clone()), (200, json!(["user"])));
    let (status, body) = s
        .admin(Method::PUT, &roles, Some(json!({ "roles": ["wizard"] })))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = s
        .admin(Method::PUT, &roles, Some(json!({ "role": "admin" })))
        .await;
    assert_eq!(status, 422);
    let (status, _) = s
        .admin(
            Method::PUT,
            &format!("/v1/admin/users/{}/roles", Uuid::now_v7()),
            Some(json!({ "roles": ["user"] })),
        )
        .await;
    assert_eq!(status, 404);

    // The directory follows.
    wait_until("the directory's roles", DEADLINE, || async {
        s.emails("role=admin").await == vec![ADMIN_EMAIL]
    })
    .await;
    assert_eq!(
        s.actors(StreamId::user(ada).as_str(), "RolesChanged").await,
        vec![format!("user-{}", s.root); 2],
        "two changes; the empty list changed nothing"
    );
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn revoking_sessions_ends_every_session_of_the_account_at_once(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let (ada, access, refresh) = s.member("ada@example.com").await;
    let (other_access, other_refresh) = sign_in(&s.api, "ada@example.com", PASSWORD).await;
    let revoke = format!("/v1/admin/users/{ada}/sessions/revoke");

    let (status, body) = s.admin(Method::POST, &revoke, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_revoked"], 2);
    for token in [&access, &other_access] {
        assert_eq!(
            s.call(Method::GET, "/v1/auth/me", Some(token), None)
                .await
                .0,
            401
        );
    }
    assert_eq!(refresh_status(&s, &refresh).await, 401);
    assert_eq!(refresh_status(&s, &other_refresh).await, 401);
    let reasons: Vec<String> = sqlx::query_scalar(
        "select data->>'reason' from events where event_type = 'SessionRevoked' order by position",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(reasons, vec!["admin", "admin"]);

    // Not a lock: the owner can sign in again, and nothing is left to revoke twice.
    assert_eq!(login_status(&s, "ada@example.com").await, 200);
    let (_, body) = s.admin(Method::POST, &revoke, None).await;
    assert_eq!(body["sessions_revoked"], 1);
    let (_, body) = s.admin(Method::POST, &revoke, None).await;
    assert_eq!(body["sessions_revoked"], 0);
    let (status, _) = s
        .admin(
            Method::POST,
            &format!("/v1/admin/users/{}/sessions/revoke", Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(status, 404);
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_last_administrator_who_can_sign_in_can_be_neither_demoted_nor_locked(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let root = s.root;
    let demote_root = || s.set_roles(&s.root_token, root, json!(["user"]));
    let (status, body) = demote_root().await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["detail"],
        "the last administrator cannot lose the admin role"
    );
    let (status, body) = s.lock(&s.root_token, root).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["detail"],
        "the last administrator who can sign in cannot be locked"
    );

    // A second administrator who is locked does not count.
    let (ada, _, _) = s.member("ada@example.com").await;
    assert_eq!(
        s.set_roles(&s.root_token, ada, json!(["admin"])).await.0,
        200
    );
    assert_eq!(s.lock(&s.root_token, ada).await.0, 200);
    assert_eq!(demote_root().await.0, 409);

    // Once she can sign in again, the first administrator may step down.
    let (status, _) = s
        .admin(Method::POST, &format!("/v1/admin/users/{ada}/unlock"), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = demote_root().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(demote_root().await.0, 403, "no administrator any more");
    // The lock ended her sessions; signed in again, she is the last one.
    let (ada_token, _) = sign_in(&s.api, "ada@example.com", PASSWORD).await;
    let (status, body) = s.set_roles(&ada_token, ada, json!(["user"])).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = s.lock(&ada_token, ada).await;
    assert_eq!(status, 409, "{body}");
    let admins: Vec<Uuid> = sqlx::query_scalar("select user_id from admin_accounts")
        .fetch_all(&s.pool)
        .await
        .unwrap();
    assert_eq!(admins, vec![ada]);
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn two_administrators_demoting_or_locking_each_other_at_once_leave_exactly_one(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let (ada, ada_token, _) = s.member("ada@example.com").await;
    let tokens = [(s.root, s.root_token.clone()), (ada, ada_token)];
    let promote = |by: usize, id: Uuid| s.set_roles(&tokens[by].1, id, json!(["admin", "user"]));
    let demote_other = |by: usize| s.set_roles(&tokens[by].1, tokens[1 - by].0, json!(["user"]));
    assert_eq!(promote(0, ada).await.0, 200);

    let mut survivor = 0;
    for round in 0..6 {
        let ((a, body_a), (b, body_b)) = tokio::join!(demote_other(0), demote_other(1));
        let mut statuses = [a, b];
        statuses.sort_unstable();
        assert!(
            statuses == [200, 403] || statuses == [200, 409],
            "round {round}: {a} {body_a}, {b} {body_b}"
        );
        let mut admins = Vec::new();
        for (i, (id, _)) in tokens.iter().enumerate() {
            if s.folded(*id).await.has_role(user::ROLE_ADMIN) {
                admins.push(i);
            }
        }
        assert_eq!(admins.len(), 1, "round {round}: exactly one administrator");
        survivor = admins[0];
        let listed: Vec<Uuid> = sqlx::query_scalar("select user_id from admin_accounts")
            .fetch_all(&s.pool)
            .await
            .unwrap();
        assert_eq!(listed, vec![tokens[survivor].0], "round {round}");
        assert_eq!(promote(survivor, tokens[1 - survivor].0).await.0, 200);
    }

    // Locking each other: one lock wins, and the other administrator can still sign in.
    let lock_other = |by: usize| s.lock(&tokens[by].1, tokens[1 - by].0);
    let ((a, body_a), (b, body_b)) = tokio::join!(lock_other(survivor), lock_other(1 - survivor));
    let mut statuses = [a, b];
    statuses.sort_unstable();
    assert!(
        statuses == [200, 401] || statuses == [200, 409],
        "{a} {body_a}, {b} {body_b}"
    );
    let now = Utc::now();
    let mut locked = 0;
    for (id, _) in &tokens {
        let account = s.folded(*id).await;
        assert!(account.has_role(user::ROLE_ADMIN));
        if account.is_locked(now) {
            locked += 1;
        }
    }
    assert_eq!(locked, 1, "exactly one of them is locked");
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn non_administrators_get_403_and_anonymous_callers_401_on_every_admin_route(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let (_, user_token, _) = s.member("ada@example.com").await;
    let (status, doc) = s.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/admin/") {
            continue;
        }
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    for expected in [
        ("GET", "/v1/admin/users"),
        ("GET", "/v1/admin/users/{id}"),
        ("POST", "/v1/admin/users/{id}/lock"),
        ("POST", "/v1/admin/users/{id}/unlock"),
        ("PUT", "/v1/admin/users/{id}/roles"),
        ("POST", "/v1/admin/users/{id}/sessions/revoke"),
        ("POST", "/v1/admin/users/{id}/erase"),
        ("GET", "/v1/admin/users/{id}/export"),
        ("GET", "/v1/admin/jobs/dead"),
        ("POST", "/v1/admin/jobs/{id}/retry"),
    ] {
        assert!(
            routes.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} missing from the OpenAPI document"
        );
    }
    let target = s.root;
    for (method, path) in &routes {
        let concrete: String = path
            .split('/')
            .map(|part| {
                if part.starts_with('{') {
                    if part.contains("stream") {
                        format!("user-{target}")
                    } else {
                        target.to_string()
                    }
                } else {
                    part.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let method: Method = method.parse().unwrap();
        let body = (method == Method::PUT || method == Method::POST).then(|| json!({}));
        let (status, answer) = s
            .call(method.clone(), &concrete, Some(&user_token), body.clone())
            .await;
        assert_eq!(status, 403, "{method} {concrete} as a user: {answer}");
        let (status, answer) = s.call(method.clone(), &concrete, None, body).await;
        assert_eq!(status, 401, "{method} {concrete} anonymously: {answer}");
    }
    // Nothing was changed on the way.
    assert!(s.folded(target).await.has_role(user::ROLE_ADMIN));
    assert!(!s.folded(target).await.is_locked(Utc::now()));
    s.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn every_administrative_action_is_recorded_with_the_administrator_as_actor(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let s = Setup::start(&conn).await;
    let (ada, _, _) = s.member("ada@example.com").await;
    let me = format!("user-{}", s.root);
    let base = format!("/v1/admin/users/{ada}");
    for (method, path, body) in [
        (
            Method::PUT,
            format!("{base}/roles"),
            Some(json!({ "roles": ["admin"] })),
        ),
        (Method::POST, format!("{base}/lock"), None),
        (Method::POST, format!("{base}/unlock"), None),
    ] {
        let (status, answer) = s.admin(method.clone(), &path, body).await;
        assert!(status < 300, "{method} {path}: {status} {answer}");
    }
    sign_in(&s.api, "ada@example.com", PASSWORD).await;
    let (status, _) = s
        .admin(Method::POST, &format!("{base}/sessions/revoke"), None)
        .await;
    assert_eq!(status, 200);

    let stream = StreamId::user(ada);
    for event_type in ["RolesChanged", "AccountLocked", "AccountUnlocked"] {
        assert_eq!(
            s.actors(stream.as_str(), event_type).await,
            vec![me.clone()],
            "{event_type}"
        );
    }
    // One session ended by the lock, one by the revocation.
    assert_eq!(
        s.actors("session-%", "SessionRevoked").await,
        vec![me.clone(), me.clone()]
    );
    let metadata: Vec<Value> = sqlx::query_scalar(
        "select metadata from events
          where metadata->>'actor' = $1
            and event_type in ('RolesChanged', 'AccountLocked', 'AccountUnlocked', 'SessionRevoked')",
    )
    .bind(&me)
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(metadata.len(), 5, "{metadata:?}");
    for m in &metadata {
        assert!(m["request_id"].is_string(), "{m}");
        assert!(
            m["client_ip"]["$sealed"].is_string(),
            "the client address is kept, sealed: {m}"
        );
    }
    s.stop().await;
}
