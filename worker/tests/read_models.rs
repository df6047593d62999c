//! The `users_directory` and `audit_view` read models and the lag gauges against a real
//! PostgreSQL. Histories are written the way the API writes them: decisions of the identity
//! aggregates appended with the request's metadata.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idp_events::StreamId;
use std::time::Duration;

use chrono::{DateTime, Utc};
use idp_events::backoff::Backoff;
use idp_events::identity::login::{self, FailureReason};
use idp_events::identity::session::{RevokeReason, SessionEvent};
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::subscription::{self, Handler, Subscription, SubscriptionOptions};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, NewEvent};
use idp_testkit::log::{await_visible, catch_up, last_committed};
use idp_worker::lag;
use idp_worker::projections::{self, AuditView, UsersDirectory};
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const IP: &str = "203.0.113.7";
const AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) idp-tests";

/// Tiny batches, so appends of several events are split across batches; quick retries.
fn small_batches() -> SubscriptionOptions {
    SubscriptionOptions {
        batch_size: 3,
        poll_interval: Duration::from_millis(50),
        standby_interval: Duration::from_millis(50),
        max_attempts: 2,
        retry: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    }
}

fn request(actor: &str) -> Metadata {
    let request_id = Uuid::now_v7();
    Metadata {
        actor: Some(actor.to_owned()),
        request_id: Some(request_id.to_string()),
        correlation_id: Some(request_id),
        causation_id: None,
        client_ip: Some(IP.into()),
        user_agent: Some(AGENT.into()),
        api_key_id: None,
    }
}

fn actor(id: Uuid) -> String {
    format!("user-{id}")
}

/// Every row of `table`, all columns, in a stable order.
async fn snapshot(pool: &PgPool, table: &str, order: &str) -> Vec<Value> {
    sqlx::query_scalar(&format!(
        "select to_jsonb(t) from {table} t order by {order}"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn directory_row(pool: &PgPool, id: Uuid) -> Value {
    sqlx::query_scalar("select to_jsonb(t) from users_directory t where user_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The columns of `audit_view` that come from an event's metadata.
#[derive(Debug, sqlx::FromRow)]
struct Audited {
    event_type: String,
    actor: Option<String>,
    subject_user_id: Option<Uuid>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    correlation_id: Option<Uuid>,
}

fn time(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap()
}

/// Identity traffic written as the API writes it, with both read models following along in
/// small batches.
struct Scenario {
    store: EventStore,
    directory: Subscription<UsersDirectory>,
    audit: Subscription<AuditView>,
}

impl Scenario {
    fn new(pool: &PgPool) -> Self {
        let store = idp_testkit::keys::event_store(pool.clone());
        Self {
            directory: projections::users_directory(&store).with_options(small_batches()),
            audit: projections::audit_view(&store).with_options(small_batches()),
            store,
        }
    }

    /// Lets both projections handle whatever is visible now.
    async fn follow(&self) {
        catch_up(&self.directory).await;
        catch_up(&self.audit).await;
    }

    async fn user(&self, id: Uuid) -> User {
        let events = self
            .store
            .read_stream(StreamId::user(id).as_str(), 1)
            .await
            .unwrap();
        User::fold(id, &events)
    }

    /// Appends what `decide` makes of the account's current state.
    async fn on_user(
        &self,
        id: Uuid,
        by: &str,
        decide: impl FnOnce(&User) -> Vec<UserEvent>,
    ) -> Vec<UserEvent> {
        let account = self.user(id).await;
        let events = decide(&account);
        if !events.is_empty() {
            self.store
                .append(
                    Append::to(StreamId::user(id))
                        .about(id)
                        .expecting(ExpectedVersion::after(account.version))
                        .events(events.iter().map(UserEvent::to_new_event))
                        .metadata(request(by)),
                )
                .await
                .unwrap();
        }
        events
    }

    /// Registers an account, with a password hash stored beside the events as the API does.
    async fn register(&self, email: &str, name: Option<&str>, admin: bool, verified: bool) -> Uuid {
        let id = Uuid::now_v7();
        let mut roles = vec![user::ROLE_USER.to_owned()];
        if admin {
            roles.push(user::ROLE_ADMIN.to_owned());
        }
        let events = user::register(email, name.map(str::to_owned), roles, verified);
        let mut conn = self.store.pool().acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::user(id))
                    .about(id)
                    .events(events.iter().map(UserEvent::to_new_event))
                    .claim("email", email)
                    .metadata(request(&actor(id))),
            )
            .await
            .unwrap();
        sqlx::query("insert into credentials (user_id, password_hash) values ($1, $2)")
            .bind(id)
            .bind(password_hash(id))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        id
    }

    async fn verify(&self, id: Uuid) {
        self.on_user(id, &actor(id), |u| {
            let (token, _) = u.pending_verification.unwrap();
            user::verify_email(u, token, Utc::now()).unwrap()
        })
        .await;
    }

    /// A successful sign-in: the session stream starts with the success and the session.
    async fn sign_in(&self, id: Uuid) -> Uuid {
        let session_id = Uuid::now_v7();
        self.store
            .append(
                Append::to(StreamId::session(session_id))
                    .event(login::succeeded(session_id))
                    .event(
                        SessionEvent::SessionStarted {
                            user_id: id,
                            expires_at: Utc::now() + chrono::Duration::days(30),
                        }
                        .to_new_event(),
                    )
                    .metadata(request(&actor(id))),
            )
            .await
            .unwrap();
        session_id
    }

    async fn on_session(&self, session_id: Uuid, by: Uuid, events: &[SessionEvent]) {
        self.store
            .append(
                Append::to(StreamId::session(session_id))
                    .expecting(ExpectedVersion::Any)
                    .events(events.iter().map(SessionEvent::to_new_event))
                    .metadata(request(&actor(by))),
            )
            .await
            .unwrap();
    }

    /// A refused sign-in; the `failures`-th wrong password in a row may lock the account.
    /// Returns the lock's end if it did.
    async fn fail(&self, id: Uuid, reason: FailureReason, failures: u32) -> Option<DateTime<Utc>> {
        self.store
            .append(
                Append::to(StreamId::login(id))
                    .expecting(ExpectedVersion::Any)
                    .event(login::failed(reason))
                    .metadata(request(&actor(id))),
            )
            .await
            .unwrap();
        let lock = self
            .on_user(id, &actor(id), |u| {
                user::failed_login(u, failures, Utc::now())
            })
            .await;
        lock.into_iter().find_map(|e| match e {
            UserEvent::AccountLocked { until, .. } => Some(until),
            _ => None,
        })
    }

    async fn wrong_passwords(&self, id: Uuid, n: u32) -> Option<DateTime<Utc>> {
        let mut until = None;
        for failures in 1..=n {
            until = until.or(self.fail(id, FailureReason::WrongPassword, failures).await);
        }
        until
    }
}

fn password_hash(id: Uuid) -> String {
    format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${}", id.simple())
}

/// The accounts of [`history`] whose rows the tests look at.
struct Cast {
    root: Uuid,
    ada: Uuid,
    bob: Uuid,
    bob_locked_until: DateTime<Utc>,
    cy: Uuid,
    dee: Uuid,
    eve: Uuid,
    accounts: usize,
}

/// A realistic mix of identity traffic, with the projections following after each step.
async fn history(s: &Scenario) -> Cast {
    let root = s.register("root@example.com", None, true, true).await;
    let ada = s
        .register("ada@example.com", Some("Ada Lovelace"), false, false)
        .await;
    s.follow().await;
    s.verify(ada).await;
    let ada_session = s.sign_in(ada).await;
    s.on_session(
        ada_session,
        ada,
        &[SessionEvent::SessionRefreshed { generation: 2 }],
    )
    .await;
    s.follow().await;
    s.on_user(ada, &actor(root), |u| {
        user::change_roles(u, &["admin".into(), "user".into()], 1).unwrap()
    })
    .await;

    let bob = s
        .register("bob@example.com", Some("Bob"), false, false)
        .await;
    s.verify(bob).await;
    s.follow().await;
    let bob_locked_until = s.wrong_passwords(bob, 5).await.expect("bob is locked");
    s.fail(bob, FailureReason::Locked, 0).await;
    s.follow().await;

    let cy = s.register("cy@example.com", None, false, false).await;
    s.on_user(cy, "anonymous", user::request_verification).await;
    s.fail(cy, FailureReason::Unverified, 0).await;

    let dee = s
        .register("dee@example.com", Some("Dee"), false, true)
        .await;
    s.wrong_passwords(dee, 5).await.expect("dee is locked");
    s.follow().await;
    s.on_user(dee, &actor(root), |u| user::unlock(u, Utc::now()).unwrap())
        .await;
    s.wrong_passwords(dee, 2).await;

    let eve = s
        .register("eve@example.com", Some("Eve"), false, true)
        .await;
    let eve_session = s.sign_in(eve).await;
    s.on_user(eve, "anonymous", user::request_reset).await;
    s.follow().await;
    s.on_user(eve, &actor(eve), |u| {
        let (reset_id, _) = u.pending_reset.unwrap();
        user::reset_password(u, reset_id, Utc::now()).unwrap()
    })
    .await;
    s.on_session(
        eve_session,
        eve,
        &[SessionEvent::SessionRevoked {
            reason: RevokeReason::PasswordReset,
        }],
    )
    .await;

    // An attempt on an address nobody has, and another context's events.
    s.store
        .append(
            Append::to(StreamId::login_unknown("5d41402abc4b2a76b9719d911017c592"))
                .expecting(ExpectedVersion::Any)
                .event(login::failed_unknown("5d41402abc4b2a76b9719d911017c592"))
                .metadata(request("anonymous")),
        )
        .await
        .unwrap();
    s.store
        .append(
            Append::to(format!("project-{}", Uuid::now_v7()))
                .event(NewEvent::new(
                    "ProjectRequested",
                    json!({ "name": "payments", "template": "service" }),
                ))
                .metadata(request(&actor(ada))),
        )
        .await
        .unwrap();

    for i in 0..20 {
        let id = s
            .register(&format!("user{i}@example.com"), None, false, i % 4 != 0)
            .await;
        if i % 2 == 0 {
            let session_id = s.sign_in(id).await;
            s.on_session(
                session_id,
                id,
                &[SessionEvent::SessionRevoked {
                    reason: RevokeReason::Logout,
                }],
            )
            .await;
        }
        if i % 5 == 4 {
            s.follow().await;
        }
    }
    await_visible(&s.store).await;
    s.follow().await;
    Cast {
        root,
        ada,
        bob,
        bob_locked_until,
        cy,
        dee,
        eve,
        accounts: 26,
    }
}

async fn rebuild<H: Handler>(pool: &PgPool, sub: &Subscription<H>) {
    subscription::reset(pool, sub.name(), sub.handler())
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(catch_up(sub).await, u64::try_from(events).unwrap());
}

#[sqlx::test(migrations = "../migrations")]
async fn rebuilding_users_directory_from_zero_gives_exactly_what_incremental_processing_gave(
    pool: PgPool,
) {
    let s = Scenario::new(&pool);
    let cast = history(&s).await;
    let incremental = snapshot(&pool, "users_directory", "user_id").await;
    assert_eq!(incremental.len(), cast.accounts);

    // From zero, in the default batch size this time.
    let replay = projections::users_directory(&s.store);
    rebuild(&pool, &replay).await;
    assert_eq!(
        snapshot(&pool, "users_directory", "user_id").await,
        incremental
    );

    let root = directory_row(&pool, cast.root).await;
    assert_eq!(root["roles"], json!(["user", "admin"]));
    assert_eq!(root["status"], "active");

    let ada = directory_row(&pool, cast.ada).await;
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(ada["display_name"], "Ada Lovelace");
    assert_eq!(ada["roles"], json!(["admin", "user"]));
    assert_eq!(ada["status"], "active");
    assert!(time(&ada["email_verified_at"]) >= time(&ada["created_at"]));
    assert!(time(&ada["last_login_at"]) >= time(&ada["email_verified_at"]));

    let bob = directory_row(&pool, cast.bob).await;
    assert_eq!(bob["status"], "locked");
    let until = time(&bob["locked_until"]);
    assert!((until - cast.bob_locked_until).abs() < chrono::Duration::milliseconds(1));
    assert_eq!(
        (&bob["lock_count"], &bob["failed_logins"]),
        (&json!(1), &json!(0))
    );
    assert!(bob["last_login_at"].is_null());

    let cy = directory_row(&pool, cast.cy).await;
    assert_eq!(cy["status"], "unverified");
    assert!(cy["email_verified_at"].is_null());
    assert_eq!(cy["failed_logins"], 0, "only wrong passwords count");

    let dee = directory_row(&pool, cast.dee).await;
    assert_eq!(dee["status"], "active", "unlocked by an administrator");
    assert!(dee["locked_until"].is_null());
    assert_eq!(
        (&dee["lock_count"], &dee["failed_logins"]),
        (&json!(1), &json!(2))
    );

    let eve = directory_row(&pool, cast.eve).await;
    assert!(time(&eve["password_changed_at"]) > time(&eve["created_at"]));
    assert!(eve["last_login_at"].is_string());

    let unverified: i64 =
        sqlx::query_scalar("select count(*) from users_directory where status = 'unverified'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unverified, 1 + 5, "cy, and user0, user4, ... user16");
}

#[sqlx::test(migrations = "../migrations")]
async fn rebuilding_audit_view_from_zero_gives_exactly_what_incremental_processing_gave(
    pool: PgPool,
) {
    let s = Scenario::new(&pool);
    let cast = history(&s).await;
    let incremental = snapshot(&pool, "audit_view", "position").await;
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        incremental.len(),
        usize::try_from(events).unwrap(),
        "one row per event"
    );

    let replay = projections::audit_view(&s.store);
    rebuild(&pool, &replay).await;
    assert_eq!(snapshot(&pool, "audit_view", "position").await, incremental);

    // Every event of a session names the session's account, even where the batch began
    // after the session's start.
    let orphans: i64 = sqlx::query_scalar(
        "select count(*) from audit_view where stream_id like 'session-%' and subject_user_id is null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    let ada_trail: Vec<(String, String)> = sqlx::query_as(
        "select event_type, summary from audit_view where subject_user_id = $1 order by position",
    )
    .bind(cast.ada)
    .fetch_all(&pool)
    .await
    .unwrap();
    let types: Vec<&str> = ada_trail.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "UserRegistered",
            "VerificationRequested",
            "EmailVerified",
            "LoginSucceeded",
            "SessionStarted",
            "SessionRefreshed",
            "RolesChanged",
        ]
    );
    assert_eq!(ada_trail[0].1, "registered with roles user");
    assert_eq!(ada_trail[6].1, "roles changed to admin, user");

    let (by, summary): (String, String) = sqlx::query_as(
        "select actor, summary from audit_view where subject_user_id = $1 and event_type = 'AccountUnlocked'",
    )
    .bind(cast.dee)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (by, summary.as_str()),
        (actor(cast.root), "account unlocked")
    );
    let locked: String = sqlx::query_scalar(
        "select summary from audit_view where subject_user_id = $1 and event_type = 'AccountLocked'",
    )
    .bind(cast.bob)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(locked.starts_with("account locked until 20"), "{locked}");
    let generic: String =
        sqlx::query_scalar("select summary from audit_view where event_type = 'ProjectRequested'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        generic.starts_with("ProjectRequested on project-"),
        "{generic}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn audit_view_has_the_actor_ip_and_user_agent_of_an_event_and_no_password_hash(pool: PgPool) {
    let s = Scenario::new(&pool);
    let shutdown = CancellationToken::new();
    let running = {
        let (directory, audit) = (
            projections::users_directory(&s.store),
            projections::audit_view(&s.store),
        );
        let token = shutdown.clone();
        tokio::spawn(async move {
            tokio::join!(directory.run(token.clone()), audit.run(token.clone()));
        })
    };

    let ada = s
        .register("ada@example.com", Some("Ada"), false, true)
        .await;
    let session_id = s.sign_in(ada).await;
    // Another context's event carrying a secret of its own.
    let token_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    s.store
        .append(
            Append::to(format!("api-key-{}", Uuid::now_v7()))
                .event(NewEvent::new(
                    "ApiKeyIssued",
                    json!({ "owner": ada, "token_hash": token_hash }),
                ))
                .metadata(request(&actor(ada))),
        )
        .await
        .unwrap();
    let last = last_committed(&pool).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while subscription::checkpoint(&pool, AuditView::NAME)
            .await
            .unwrap()
            != last
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the running audit_view caught up within 10 s");

    let rows: Vec<Audited> = sqlx::query_as(
        "select event_type, actor, subject_user_id, client_ip, user_agent, correlation_id
           from audit_view order by position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "UserRegistered",
            "EmailVerified",
            "LoginSucceeded",
            "SessionStarted",
            "ApiKeyIssued"
        ]
    );
    for row in &rows {
        let what = &row.event_type;
        assert_eq!(row.actor.as_deref(), Some(actor(ada).as_str()), "{what}");
        assert_eq!(row.client_ip.as_deref(), Some(IP), "{what}");
        assert_eq!(row.user_agent.as_deref(), Some(AGENT), "{what}");
        assert!(row.correlation_id.is_some(), "{what}");
    }
    assert!(
        rows[..4].iter().all(|r| r.subject_user_id == Some(ada)),
        "{rows:?}"
    );
    assert_eq!(rows[4].subject_user_id, None, "another context's event");
    let stored: Uuid = sqlx::query_scalar(
        "select subject_user_id from audit_view where stream_id = $1 and event_type = 'LoginSucceeded'",
    )
    .bind(StreamId::session(session_id).to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, ada);

    let hash = password_hash(ada);
    let leaks: i64 = sqlx::query_scalar(
        "select count(*) from audit_view t
          where strpos(to_jsonb(t)::text, $1) > 0 or strpos(to_jsonb(t)::text, $2) > 0
             or to_jsonb(t)::text like '%argon2%'",
    )
    .bind(&hash)
    .bind(token_hash)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaks, 0, "no password or token hash in the audit view");
    let stored_hash: String =
        sqlx::query_scalar("select password_hash from credentials where user_id = $1")
            .bind(ada)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored_hash, hash, "the hash exists, beside the log");

    // The directory followed the same events while running.
    tokio::time::timeout(Duration::from_secs(10), async {
        while subscription::checkpoint(&pool, UsersDirectory::NAME)
            .await
            .unwrap()
            != last
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the running users_directory caught up within 10 s");
    let row = directory_row(&pool, ada).await;
    assert_eq!(
        (&row["status"], row["last_login_at"].is_string()),
        (&json!("active"), true)
    );

    shutdown.cancel();
    running.await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn events_of_other_contexts_are_ignored_and_a_malformed_account_event_is_parked(
    pool: PgPool,
) {
    let s = Scenario::new(&pool);
    let ada = s.register("ada@example.com", None, false, true).await;
    let foreign = [
        (
            "crm-contact-9",
            NewEvent::new("UserRegistered", json!({ "name": 42 })),
        ),
        (
            "crm-contact-9",
            NewEvent::new("SessionStarted", json!("not an object")),
        ),
        (
            "billing-7",
            NewEvent::new("LoginFailed", json!({ "card": "declined" })),
        ),
    ];
    for (stream, event) in foreign {
        s.store
            .append(
                Append::to(stream)
                    .expecting(ExpectedVersion::Any)
                    .event(event),
            )
            .await
            .unwrap();
    }
    let ada_stream = StreamId::user(ada);
    s.store
        .append(
            Append::to(ada_stream.as_str())
                .expecting(ExpectedVersion::Any)
                .event(NewEvent::new("AvatarUploaded", json!([1, 2, 3]))),
        )
        .await
        .unwrap();
    let malformed = s
        .store
        .append(
            Append::to(ada_stream.as_str())
                .expecting(ExpectedVersion::Any)
                .event(NewEvent::new("AccountLocked", json!({ "until": "soon" }))),
        )
        .await
        .unwrap();
    s.on_user(ada, "anonymous", user::request_reset).await;
    await_visible(&s.store).await;
    s.follow().await;

    let parked: Vec<(String, i64)> =
        sqlx::query_as("select subscription, position from failed_events order by subscription")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        parked,
        [(UsersDirectory::NAME.to_owned(), malformed.positions[0])],
        "only the directory's own malformed event is parked"
    );
    let last = last_committed(&pool).await;
    for name in [UsersDirectory::NAME, AuditView::NAME] {
        assert_eq!(
            subscription::checkpoint(&pool, name).await.unwrap(),
            last,
            "{name}"
        );
    }
    let rows = snapshot(&pool, "users_directory", "user_id").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "active");
    let unreadable: String =
        sqlx::query_scalar("select summary from audit_view where position = $1")
            .bind(malformed.positions[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        unreadable.ends_with("(payload not understood)"),
        "{unreadable}"
    );
    let audited: i64 = sqlx::query_scalar("select count(*) from audit_view")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audited, 2 + 3 + 3, "every event is audited");
}

fn lag_of<'a>(lags: &'a [lag::Lag], name: &str) -> &'a lag::Lag {
    lags.iter()
        .find(|l| l.subscription == name)
        .unwrap_or_else(|| panic!("no lag for {name}: {lags:?}"))
}

#[sqlx::test(migrations = "../migrations")]
async fn lag_sample_reports_the_events_behind_and_zero_once_caught_up(pool: PgPool) {
    let s = Scenario::new(&pool);
    sqlx::query("insert into subscription_checkpoints (name) values ($1)")
        .bind(lag::DISPATCHER)
        .execute(&pool)
        .await
        .unwrap();
    for i in 0..5 {
        s.register(&format!("user{i}@example.com"), None, false, false)
            .await;
    }
    await_visible(&s.store).await;
    catch_up(&s.directory).await;
    let lags = lag::sample(&pool).await.unwrap();
    let caught_up = lag_of(&lags, UsersDirectory::NAME);
    assert_eq!((caught_up.events, caught_up.seconds), (0, 0.0));
    assert_eq!(
        lag_of(&lags, lag::DISPATCHER).events,
        10,
        "never ran: the whole log"
    );

    for i in 5..12 {
        s.register(&format!("user{i}@example.com"), None, false, true)
            .await;
    }
    let behind = lag::sample(&pool).await.unwrap();
    let directory = lag_of(&behind, UsersDirectory::NAME);
    assert_eq!(directory.events, 14, "7 registrations of 2 events");
    assert!(directory.seconds > 0.0, "{directory:?}");
    assert!(
        directory.seconds < 60.0,
        "the age of the first event behind: {directory:?}"
    );

    await_visible(&s.store).await;
    catch_up(&s.directory).await;
    let after = lag::sample(&pool).await.unwrap();
    assert_eq!(lag_of(&after, UsersDirectory::NAME).events, 0);
    assert_eq!(lag_of(&after, UsersDirectory::NAME).seconds, 0.0);
    assert_eq!(lag_of(&after, lag::DISPATCHER).events, 24);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_event_of_an_older_transaction_that_committed_last_is_not_counted_as_lag_once_handled(
    pool: PgPool,
) {
    let store = idp_testkit::keys::event_store(pool.clone());
    let directory = projections::users_directory(&store);
    let mut older = pool.acquire().await.unwrap();
    let mut older = older.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    // A newer transaction appends and commits first, then the older one appends after it.
    let newer = store
        .append(Append::to("thing-1").event(NewEvent::new("ThingHappened", json!({}))))
        .await
        .unwrap();
    let late = store
        .append_in(
            &mut older,
            Append::to("thing-2").event(NewEvent::new("ThingHappened", json!({}))),
        )
        .await
        .unwrap();
    older.commit().await.unwrap();
    assert!(late.positions[0] > newer.positions[0]);

    await_visible(&store).await;
    assert_eq!(catch_up(&directory).await, 2);
    let checkpoint = subscription::checkpoint(&pool, UsersDirectory::NAME)
        .await
        .unwrap();
    assert_eq!(
        checkpoint.position, newer.positions[0],
        "commit order ends at the newer transaction's event"
    );
    let lags = lag::sample(&pool).await.unwrap();
    assert_eq!(lag_of(&lags, UsersDirectory::NAME).events, 0);
}
