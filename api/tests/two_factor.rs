//! Two-factor sign-in over real HTTP against a fresh database: enrolment with a code computed
//! here from the returned secret, sign-in with a challenge and a code, replay and drift,
//! recovery codes, lockout after five wrong codes, turning it off, an administrator's reset,
//! `MFA_REQUIRED_ROLES`, and bad input answered with one uniform refusal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::identity::PASSWORD;
use common::worker::start_worker;
use common::{ADMIN_ARGS, ADMIN_PASSWORD, TestApp, spawn_app};
use idp_testkit::clock::wait_until;
use idp_testkit::database::pool;
use idp_testkit::log::count_events;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

/// Calls the API; the status and the JSON body (`null` when empty).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    idp_ops::test_logs::remember_secrets_in(&body);
    app.call(method, path, token, (!body.is_null()).then_some(body))
        .await
}

/// The authenticator app: codes of the base32 `secret`, computed independently of idp.
struct App(TOTP);

impl App {
    fn new(secret: &str) -> Self {
        let bytes = Secret::Encoded(secret.to_owned()).to_bytes().unwrap();
        Self(TOTP::new_unchecked(
            Algorithm::SHA1,
            6,
            1,
            30,
            bytes,
            None,
            String::new(),
        ))
    }

    /// The code of `step` steps from now.
    fn code(&self, step: i64) -> String {
        self.0
            .generate(u64::try_from(now_step() + step).unwrap() * 30)
    }

    /// A code that is none of the codes within two steps of now.
    fn wrong_code(&self) -> String {
        let near: Vec<String> = (-2..=2).map(|s| self.code(s)).collect();
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !near.contains(c))
            .unwrap()
    }
}

fn now_step() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(30)
}

/// Waits, if needed, until at least `secs` seconds of the current 30-second step remain, so
/// a sequence of codes computed from "now" means the same step to idp.
async fn with_step_left(secs: i64) {
    let into = chrono::Utc::now().timestamp().rem_euclid(30);
    if 30 - into < secs {
        tokio::time::sleep(Duration::from_secs(u64::try_from(30 - into + 1).unwrap())).await;
    }
}

/// A verified account signed in; its id and access token.
async fn signed_in(app: &TestApp, pool: &PgPool, email: &str) -> (Uuid, String) {
    let token = app.verified_user(pool, email, PASSWORD).await;
    let (_, me) = call(app, Method::GET, "/v1/auth/me", Some(&token), Value::Null).await;
    (me["id"].as_str().unwrap().parse().unwrap(), token)
}

/// Enrols a second factor for the holder of `token` (whose password is `password`), completed
/// with the code of `step` steps from now; the authenticator and the recovery codes.
async fn enrol_with(app: &TestApp, token: &str, password: &str, step: i64) -> (App, Vec<String>) {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/auth/2fa/enable-init",
        Some(token),
        json!({ "password": password }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let secret = body["secret"].as_str().unwrap();
    idp_ops::test_logs::remember_secret("totp secret", secret);
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/idp:"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(body["qr_svg"].as_str().unwrap().contains("<svg"));
    let authenticator = App::new(secret);
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/auth/2fa/enable-complete",
        Some(token),
        json!({ "code": authenticator.code(step) }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    for code in &codes {
        idp_ops::test_logs::remember_secret("recovery code", code);
    }
    (authenticator, codes)
}

/// [`enrol_with`] for an account whose password is [`PASSWORD`].
async fn enrol(app: &TestApp, token: &str) -> (App, Vec<String>) {
    enrol_with(app, token, PASSWORD, 0).await
}

/// Signs in with the password; the challenge it answers (which must be one).
async fn challenge(app: &TestApp, email: &str) -> String {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/auth/login",
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "mfa_required", "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    assert_eq!(body["expires_in"], 300);
    let challenge = body["challenge"].as_str().unwrap().to_owned();
    idp_ops::test_logs::remember_secret("challenge", &challenge);
    challenge
}

async fn verify(app: &TestApp, challenge: &str, code: &str) -> (u16, Value) {
    call(
        app,
        Method::POST,
        "/v1/auth/2fa/verify",
        None,
        json!({ "challenge": challenge, "code": code }),
    )
    .await
}

async fn recover(app: &TestApp, challenge: &str, code: &str) -> (u16, Value) {
    call(
        app,
        Method::POST,
        "/v1/auth/recovery-login",
        None,
        json!({ "challenge": challenge, "recovery_code": code }),
    )
    .await
}

/// What a refusal says, without its request id: every refusal of the second step is this.
fn refusal(status: u16, body: &Value) -> (u16, Value) {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("request_id");
        map.remove("instance");
    }
    (status, body)
}

fn uniform() -> (u16, Value) {
    (
        401,
        json!({
            "type": "https://idp.dev/problems/second-factor-refused",
            "title": "Unauthorized",
            "status": 401,
            "detail": "the challenge or the code is not valid (wrong, used or expired), or the second factor cannot be used now; sign in again",
        }),
    )
}

#[sqlx::test(migrations = false)]
async fn the_whole_totp_life(_opts: PgPoolOptions, conn: PgConnectOptions) {
    let app = spawn_app(&conn, &[]).await;
    let pool = pool(&conn).await;
    let email = "totp.life@example.com";
    let (user_id, token) = signed_in(&app, &pool, email).await;

    // Enrolment: a wrong first code is refused and leaves it off; the right one turns it on.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/auth/2fa/enable-init",
        Some(&token),
        json!({ "password": "not the password at all" }),
    )
    .await;
    assert_eq!(status, 401, "a wrong password: {body}");
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/auth/2fa/enable-complete",
        Some(&token),
        json!({ "code": "123456" }),
    )
    .await;
    assert_eq!(status, 409, "no enrolment in progress");
    // From here to turning it off, every code is computed for one and the same step.
    with_step_left(25).await;
    // Enrolled with a code one step back: drift of one step back is accepted.
    let (authenticator, recovery) = enrol_with(&app, &token, PASSWORD, -1).await;
    assert_eq!(recovery.len(), 10);
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/auth/2fa/enable-init",
        Some(&token),
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 409, "on already");

    // The secret is stored only sealed: its base32 and its bytes are nowhere in the database.
    let stored: Vec<u8> =
        sqlx::query_scalar("select secret from second_factors where user_id = $1")
            .bind(user_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let secret_bytes = authenticator.0.secret.clone();
    assert!(
        !stored
            .windows(secret_bytes.len())
            .any(|w| w == secret_bytes)
    );
    let log_text: String = sqlx::query_scalar(
        "select coalesce(string_agg(data::text || metadata::text, ''), '') from events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!log_text.contains(&authenticator.0.get_secret_base32()));
    for code in &recovery {
        assert!(!log_text.contains(code.as_str()));
    }

    // Sign-in: the password alone gives a challenge, no tokens.
    let first = challenge(&app, email).await;
    // The enrolment's code (one step back) was used: replaying it is refused.
    let (status, body) = verify(&app, &first, &authenticator.code(-1)).await;
    assert_eq!(refusal(status, &body), uniform(), "replayed");
    // Two steps ahead is outside the window.
    let (status, body) = verify(&app, &first, &authenticator.code(2)).await;
    assert_eq!(refusal(status, &body), uniform(), "two steps of drift");
    let (status, body) = verify(&app, &first, &authenticator.code(0)).await;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    idp_ops::test_logs::remember_secrets_in(&body);
    let (status, _) = call(&app, Method::GET, "/v1/auth/me", Some(&access), Value::Null).await;
    assert_eq!(status, 200);
    // The challenge worked once, and the code too.
    let (status, body) = verify(&app, &first, &authenticator.code(1)).await;
    assert_eq!(refusal(status, &body), uniform(), "a used challenge");
    let second = challenge(&app, email).await;
    let (status, body) = verify(&app, &second, &authenticator.code(0)).await;
    assert_eq!(refusal(status, &body), uniform(), "a used code");

    // Recovery codes: each works once, typed however.
    let third = challenge(&app, email).await;
    let (status, body) = recover(&app, &third, &recovery[0].to_uppercase()).await;
    assert_eq!(status, 200, "{body}");
    let fourth = challenge(&app, email).await;
    let (status, body) = recover(&app, &fourth, &recovery[0]).await;
    assert_eq!(refusal(status, &body), uniform(), "a used recovery code");
    // Regenerating replaces the whole set.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/auth/2fa/recovery-codes",
        Some(&token),
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let fresh: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    fresh
        .iter()
        .for_each(|c| idp_ops::test_logs::remember_secret("recovery code", c));
    assert_eq!(fresh.len(), 10);
    let (status, body) = recover(&app, &fourth, &recovery[1]).await;
    assert_eq!(refusal(status, &body), uniform(), "an old set's code");
    let (status, body) = recover(&app, &fourth, &fresh[0]).await;
    assert_eq!(status, 200, "{body}");

    // Turning it off needs the password and a code later than the last one used; one step
    // ahead is accepted.
    let disable = |password: &'static str, code: String| {
        let (app, token) = (&app, &token);
        async move {
            call(
                app,
                Method::POST,
                "/v1/auth/2fa/disable",
                Some(token),
                json!({ "password": password, "code": code }),
            )
            .await
        }
    };
    let (status, _) = disable(PASSWORD, authenticator.wrong_code()).await;
    assert_eq!(status, 401, "a wrong code");
    let (status, _) = disable("not the password at all", authenticator.code(1)).await;
    assert_eq!(status, 401, "a wrong password");
    let (status, body) = disable(PASSWORD, authenticator.code(1)).await;
    assert_eq!(status, 204, "one step of drift: {body}");
    let (status, _) = disable(PASSWORD, authenticator.code(1)).await;
    assert_eq!(status, 409, "off already");
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/auth/login",
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string(), "tokens at once: {body}");
    idp_ops::test_logs::remember_secrets_in(&body);

    // Every step is an event with its actor.
    for (event_type, n) in [
        ("SecondFactorEnrolmentStarted", 1),
        ("SecondFactorEnabled", 1),
        ("RecoveryCodesGenerated", 2),
        ("RecoveryCodeUsed", 2),
        ("SecondFactorDisabled", 1),
        ("SecondFactorRequired", 4),
        ("SecondFactorLocked", 0),
    ] {
        assert_eq!(count_events(&pool, event_type).await, n, "{event_type}");
    }
    let actor: String = sqlx::query_scalar(
        "select metadata->>'actor' from events where event_type = 'SecondFactorEnabled'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(actor, format!("user-{user_id}"));
    let methods: Vec<String> = sqlx::query_scalar(
        "select data->>'second_factor' from events
          where event_type = 'LoginSucceeded' and data ? 'second_factor' order by position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        methods,
        ["totp", "recovery_code", "recovery_code"],
        "how each sign-in was completed"
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from second_factors")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0,
        "the secret is gone"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn five_wrong_codes_lock_the_second_factor_with_the_same_refusal(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let pool = pool(&conn).await;
    let email = "totp.lockout@example.com";
    let (user_id, token) = signed_in(&app, &pool, email).await;
    let (authenticator, recovery) = enrol(&app, &token).await;
    let challenge_token = challenge(&app, email).await;
    let wrong = authenticator.wrong_code();
    for attempt in 1..=4 {
        let (status, body) = verify(&app, &challenge_token, &wrong).await;
        assert_eq!(refusal(status, &body), uniform(), "attempt {attempt}");
        assert_eq!(count_events(&pool, "SecondFactorLocked").await, 0);
    }
    // The fifth wrong code locks; from then on even the right code is refused alike.
    let (status, body) = verify(&app, &challenge_token, &wrong).await;
    assert_eq!(refusal(status, &body), uniform());
    assert_eq!(count_events(&pool, "SecondFactorLocked").await, 1);
    let until: String = sqlx::query_scalar(
        "select data->>'until' from events where event_type = 'SecondFactorLocked'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let until: chrono::DateTime<chrono::Utc> = until.parse().unwrap();
    let length = until - chrono::Utc::now();
    assert!(
        length > chrono::Duration::minutes(4) && length <= chrono::Duration::minutes(5),
        "{length}"
    );
    with_step_left(5).await;
    let (status, body) = verify(&app, &challenge_token, &authenticator.code(0)).await;
    assert_eq!(
        refusal(status, &body),
        uniform(),
        "locked: the right code too"
    );
    let fresh = challenge(&app, email).await;
    let (status, body) = verify(&app, &fresh, &authenticator.code(0)).await;
    assert_eq!(
        refusal(status, &body),
        uniform(),
        "locked: a new challenge too"
    );
    // Recovery codes are refused while locked as well (the lock is on the second factor).
    let (status, body) = recover(&app, &fresh, &recovery[0]).await;
    assert_eq!(
        refusal(status, &body),
        uniform(),
        "locked: a recovery code too"
    );
    let reasons: Vec<String> = sqlx::query_scalar(
        "select data->>'reason' from events
          where stream_id = $1 and event_type = 'LoginFailed' order by position",
    )
    .bind(format!("login-{user_id}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        reasons,
        [
            "wrong_code",
            "wrong_code",
            "wrong_code",
            "wrong_code",
            "wrong_code",
            "second_factor_locked",
            "second_factor_locked",
            "second_factor_locked"
        ]
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn bad_challenges_and_codes_get_the_one_refusal_and_never_a_500(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let pool = pool(&conn).await;
    let (_, alice) = signed_in(&app, &pool, "alice.2fa@example.com").await;
    let (_, bob) = signed_in(&app, &pool, "bob.2fa@example.com").await;
    let (alice_app, _) = enrol(&app, &alice).await;
    let (bob_app, _) = enrol(&app, &bob).await;
    let bobs = challenge(&app, "bob.2fa@example.com").await;
    let long = "9".repeat(10_000);
    for (challenge_token, code, what) in [
        ("", "123456", "an empty challenge"),
        ("not-a-challenge", "123456", "a made-up challenge"),
        (long.as_str(), "123456", "a long challenge"),
        ("\u{0}\u{ffff}", "123456", "odd characters"),
        (bobs.as_str(), "", "an empty code"),
        (bobs.as_str(), "12345", "five digits"),
        (bobs.as_str(), "1234567", "seven digits"),
        (bobs.as_str(), "12 456", "a space"),
        (bobs.as_str(), "١٢٣٤٥٦", "other digits"),
        (bobs.as_str(), long.as_str(), "a long code"),
    ] {
        let (status, body) = verify(&app, challenge_token, code).await;
        assert_eq!(refusal(status, &body), uniform(), "{what}");
    }
    // Alice's code does not complete Bob's challenge.
    with_step_left(5).await;
    let (status, body) = verify(&app, &bobs, &alice_app.code(0)).await;
    assert_eq!(refusal(status, &body), uniform(), "another account's code");
    // An expired challenge.
    sqlx::query("update mfa_challenges set expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body) = verify(&app, &bobs, &bob_app.code(0)).await;
    assert_eq!(refusal(status, &body), uniform(), "expired");
    // Wrong shapes are the schema's 422s, not a 500.
    for body in [
        json!({}),
        json!({"challenge": 1, "code": 2}),
        json!({"challenge": "x"}),
    ] {
        let (status, _) = call(&app, Method::POST, "/v1/auth/2fa/verify", None, body).await;
        assert_eq!(status, 422);
    }
    // Without a token, the signed-in routes are 401s.
    for path in [
        "/v1/auth/2fa/enable-init",
        "/v1/auth/2fa/enable-complete",
        "/v1/auth/2fa/disable",
        "/v1/auth/2fa/recovery-codes",
    ] {
        let (status, _) = call(&app, Method::POST, path, None, json!({})).await;
        assert_eq!(status, 401, "{path}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_administrator_resets_a_second_factor_and_the_person_is_told(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &ADMIN_ARGS).await;
    let worker = start_worker(&conn).await;
    let pool = pool(&conn).await;
    let email = "lost.phone@example.com";
    let (user_id, token) = signed_in(&app, &pool, email).await;
    let (other_id, other) = signed_in(&app, &pool, "someone.else@example.com").await;
    enrol(&app, &token).await;
    let admin = app.admin_token().await;
    let path = format!("/v1/admin/users/{user_id}/reset-2fa");
    for (caller, expected) in [(None, 401), (Some(other.as_str()), 403)] {
        let (status, _) = call(&app, Method::POST, &path, caller, Value::Null).await;
        assert_eq!(status, expected);
    }
    let (status, body) = call(&app, Method::POST, &path, Some(&admin), Value::Null).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = call(&app, Method::POST, &path, Some(&admin), Value::Null).await;
    assert_eq!(status, 409, "nothing left to reset");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/admin/users/{other_id}/reset-2fa"),
        Some(&admin),
        Value::Null,
    )
    .await;
    assert_eq!(status, 409, "never had one");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/admin/users/{}/reset-2fa", Uuid::now_v7()),
        Some(&admin),
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    // The password alone signs in again.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/auth/login",
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string(), "{body}");
    idp_ops::test_logs::remember_secrets_in(&body);
    let actor: String = sqlx::query_scalar(
        "select metadata->>'actor' from events where event_type = 'SecondFactorReset'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (_, me) = call(&app, Method::GET, "/v1/auth/me", Some(&admin), Value::Null).await;
    assert_eq!(actor, format!("user-{}", me["id"].as_str().unwrap()));
    // The person is emailed.
    let outbox = worker.outbox();
    wait_until("the reset notice", Duration::from_secs(20), || {
        let outbox = outbox.clone();
        async move {
            std::fs::read_dir(&outbox)
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| {
                    std::fs::read_to_string(entry.path()).is_ok_and(|mail| {
                        mail.contains("To: lost.phone@example.com")
                            && mail.contains("Two-factor sign-in was turned off")
                    })
                })
        }
    })
    .await;
    worker.stop().await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn required_roles_must_enrol_before_anything_else(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let mut args = ADMIN_ARGS.to_vec();
    args.extend(["--mfa-required-roles", "admin"]);
    let app = spawn_app(&conn, &args).await;
    let pool = pool(&conn).await;
    let (_, user) = signed_in(&app, &pool, "plain.user@example.com").await;
    let admin = app.admin_token().await;
    // A plain user is not concerned.
    let (status, _) = call(&app, Method::GET, "/v1/auth/me", Some(&user), Value::Null).await;
    assert_eq!(status, 200);
    // The administrator is refused everything but enrolment, with a problem that says so.
    for path in ["/v1/auth/me", "/v1/admin/users", "/v1/admin/events"] {
        let (status, body) = call(&app, Method::GET, path, Some(&admin), Value::Null).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(
            body["type"], "https://idp.dev/problems/second-factor-enrolment-required",
            "{path}"
        );
    }
    enrol_with(&app, &admin, ADMIN_PASSWORD, 0).await;
    for path in ["/v1/auth/me", "/v1/admin/users"] {
        let (status, body) = call(&app, Method::GET, path, Some(&admin), Value::Null).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn erasing_the_person_shreds_their_second_factor(
    _opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let app = spawn_app(&conn, &[]).await;
    let pool = pool(&conn).await;
    let email = "shredded.2fa@example.com";
    let (user_id, token) = signed_in(&app, &pool, email).await;
    enrol(&app, &token).await;
    let pending = challenge(&app, email).await;
    let (status, body) = call(
        &app,
        Method::DELETE,
        "/v1/account",
        Some(&token),
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for table in ["second_factors", "recovery_codes", "mfa_challenges"] {
        let left: i64 =
            sqlx::query_scalar(&format!("select count(*) from {table} where user_id = $1"))
                .bind(user_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(left, 0, "{table}");
    }
    let (status, body) = verify(&app, &pending, "123456").await;
    assert_eq!(refusal(status, &body), uniform());
    app.stop().await;
}
