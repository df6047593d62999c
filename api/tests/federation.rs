//! Federated sign-in over real HTTP against real servers: `oidc-provider` (the OpenID
//! Certified Node.js provider, run from scripts/oidc-provider) with its login form driven as a
//! browser would, an OpenID Connect issuer that misbehaves on request, and a server speaking
//! GitHub's OAuth and REST endpoints. First sign-ins make accounts, later ones find them,
//! verified addresses of trusted providers link, others do not; attacks on the flow are
//! refused each with its problem; identities are listed, linked, unlinked and erased.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::identity::PASSWORD;
use common::{ADMIN_ARGS, ADMIN_EMAIL, ADMIN_PASSWORD, TestApp, spawn_app};
use idp_testkit::database::pool;
use idp_testkit::fake_idp::{Defect, FakeGithub, MisbehavingIssuer};
use idp_testkit::oidc_provider::OidcProvider;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// What `PUBLIC_BASE_URL` says in these tests: providers redirect the browser there, and the
/// browser below takes such a redirect to the API under test.
const PUBLIC_BASE: &str = "http://127.0.0.1:9";

/// A browser: a cookie jar, redirects followed by hand, the provider's login form filled in.
struct Browser {
    client: reqwest::Client,
    api_base: String,
}

/// Where a flow ended: the API's answer to the callback.
struct Landing {
    status: u16,
    location: Option<String>,
    body: Value,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            api_base: app.url(""),
        }
    }

    /// `url` on the API if it is on `PUBLIC_BASE`.
    fn to_api(&self, url: &str) -> Option<String> {
        url.strip_prefix(PUBLIC_BASE)
            .map(|rest| format!("{}{rest}", self.api_base.trim_end_matches('/')))
    }

    /// The URL of the provider the API's `start` sends the browser to (its cookie kept).
    async fn start(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.api_base.trim_end_matches('/')))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| format!("{:?}", response.headers()));
        (status, location)
    }

    /// Follows `url` through the provider (signing in as `login` when its form asks) to the
    /// callback, and the callback on the API.
    async fn follow(&self, mut url: String, login: &str) -> Landing {
        let mut form: Option<(String, Vec<(String, String)>)> = None;
        for _ in 0..20 {
            let response = match form.take() {
                Some((action, fields)) => self.client.post(&action).form(&fields).send().await,
                None => self.client.get(&url).send().await,
            }
            .unwrap();
            let status = response.status();
            if status.is_redirection() {
                let next = response.headers()["location"].to_str().unwrap().to_owned();
                let next = reqwest::Url::parse(&url)
                    .unwrap()
                    .join(&next)
                    .unwrap()
                    .to_string();
                if let Some(callback) = self.to_api(&next) {
                    return self.land(&callback).await;
                }
                url = next;
                continue;
            }
            let text = response.text().await.unwrap();
            let Some(action) = form_action(&text) else {
                panic!("the provider answered {status} at {url}: {text}");
            };
            let action = reqwest::Url::parse(&url)
                .unwrap()
                .join(&action)
                .unwrap()
                .to_string();
            form = Some((
                action,
                vec![
                    ("login".into(), login.into()),
                    ("password".into(), OidcProvider::PASSWORD.into()),
                ],
            ));
        }
        panic!("more than 20 redirects from {url}");
    }

    /// GETs the callback `url` on the API.
    async fn land(&self, url: &str) -> Landing {
        let response = self.client.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        Landing {
            status,
            location,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    /// Links provider `id`'s account `login` to the holder of `token`: the API's answer to the
    /// link's callback.
    async fn link(&self, app: &TestApp, token: &str, id: &str, login: &str) -> Landing {
        let response = self
            .client
            .post(app.url(&format!("/v1/account/identities/{id}/link")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let started: Value = response.json().await.unwrap();
        self.follow(
            started["authorization_url"].as_str().unwrap().to_owned(),
            login,
        )
        .await
    }

    /// A whole sign-in with provider `id` as `login`, from the start.
    async fn sign_in(&self, id: &str, login: &str) -> Landing {
        let (status, to) = self.start(&format!("/v1/auth/oidc/{id}/start")).await;
        assert_eq!(status, 303, "{to}");
        self.follow(to, login).await
    }
}

/// The `action` of the first form of an HTML page.
fn form_action(html: &str) -> Option<String> {
    let at = html.find("<form")?;
    let rest = &html[at..];
    let start = rest.find("action=\"")? + "action=\"".len();
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].replace("&amp;", "&"))
}

/// The problem type of an answer, without its prefix.
fn problem(body: &Value) -> &str {
    body["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("https://idp.dev/problems/"))
        .unwrap_or("")
}

/// The API with `providers` (a JSON list) and `extra` flags.
async fn app_with(conn: &PgConnectOptions, providers: &Value, extra: &[&str]) -> TestApp {
    let providers = providers.to_string();
    let mut args = vec![
        "--auth-providers",
        providers.as_str(),
        "--public-base-url",
        PUBLIC_BASE,
    ];
    args.extend_from_slice(extra);
    spawn_app(conn, &args).await
}

/// The `oidc-provider` entry of `AUTH_PROVIDERS`.
fn corp(provider: &OidcProvider, trusted: bool) -> Value {
    json!({"id": "corp", "kind": "oidc", "issuer": provider.issuer, "display_name": "Corp SSO",
           "client_id": OidcProvider::CLIENT_ID, "client_secret": OidcProvider::CLIENT_SECRET,
           "trust_email_verified": trusted})
}

/// `oidc-provider` with account `login` (address `<login>@corp.example`, `verified` there),
/// and the API with it as provider `corp` (`trusted` for linking) and `extra` flags.
async fn corp_app(
    conn: &PgConnectOptions,
    login: &str,
    verified: bool,
    trusted: bool,
    extra: &[&str],
) -> (OidcProvider, TestApp) {
    let provider = OidcProvider::start().await;
    let email = format!("{login}@corp.example");
    idp_ops::test_logs::remember_secret("email", &email);
    provider.put_account(login, &email, verified).await;
    let app = app_with(conn, &json!([corp(&provider, trusted)]), extra).await;
    (provider, app)
}

fn db(conn: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(conn.clone())
}

/// The caller's account id.
async fn me(app: &TestApp, token: &str) -> Uuid {
    let (status, me) = app
        .call(Method::GET, "/v1/auth/me", Some(token), None)
        .await;
    assert_eq!(status, 200, "{me}");
    me["id"].as_str().unwrap().parse().unwrap()
}

/// The access token of a sign-in's answer.
fn access_token(landing: &Landing) -> String {
    assert_eq!(landing.status, 200, "{}", landing.body);
    let token = landing.body["access_token"].as_str().unwrap().to_owned();
    idp_ops::test_logs::remember_secret("token", &token);
    token
}

async fn events_of_type(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("select count(*) from events where event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_first_sign_in_makes_the_account_and_the_next_one_finds_it(
    _: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let (provider, app) = corp_app(&conn, "alice", true, true, &[]).await;
    let email = "alice@corp.example";
    let pool = db(&conn);

    let (status, listed) = app
        .call(Method::GET, "/v1/auth/providers", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["providers"],
        json!([{"id": "corp", "kind": "oidc", "display_name": "Corp SSO",
                "start_url": format!("{PUBLIC_BASE}/v1/auth/oidc/corp/start")}])
    );

    let browser = Browser::new(&app);
    let first = browser.sign_in("corp", "alice").await;
    let token = access_token(&first);
    assert!(first.body["refresh_token"].is_string());
    let alice = me(&app, &token).await;
    let (_, profile) = app
        .call(Method::GET, "/v1/auth/me", Some(&token), None)
        .await;
    assert_eq!(profile["email"], email);
    assert_eq!(profile["email_verified"], true);
    assert_eq!(events_of_type(&pool, "UserRegistered").await, 1);
    assert_eq!(events_of_type(&pool, "ExternalIdentityLinked").await, 1);

    // The same browser: the provider's session skips its form; the same account signs in.
    let second = browser.sign_in("corp", "alice").await;
    assert_eq!(me(&app, &access_token(&second)).await, alice);
    // A new browser signs in at the form again, to the same account.
    let third = Browser::new(&app).sign_in("corp", "alice").await;
    assert_eq!(me(&app, &access_token(&third)).await, alice);
    assert_eq!(events_of_type(&pool, "UserRegistered").await, 1);
    assert_eq!(provider.stats().await.logins, 2);

    // The sign-ins are recorded as any other, naming the provider.
    let providers: Vec<String> = sqlx::query_scalar(
        "select data->>'provider' from events where event_type = 'LoginSucceeded'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(providers, ["corp", "corp", "corp"]);

    // Neither the address nor the subject is in the clear, in the log or beside it.
    let clear: i64 = sqlx::query_scalar(
        "select count(*) from events where data::text like '%alice@corp%' or data::text like '%\"alice\"%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(clear, 0);
    let index: String = sqlx::query_scalar("select subject_index from external_identities")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!index.contains("alice"), "{index}");

    // The owner sees the link; no password was ever set, so it cannot go.
    let (status, identities) = app
        .call(Method::GET, "/v1/account/identities", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(identities["identities"][0]["provider"], "corp");
    assert_eq!(identities["identities"][0]["email"], email);
    assert!(identities["identities"][0]["last_used_at"].is_string());
    let id = identities["identities"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, refused) = app
        .call(
            Method::DELETE,
            &format!("/v1/account/identities/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("last way to sign in"),
        "{refused}"
    );
    // Disabled at the provider: the next sign-in is refused there, and so here.
    provider.disable_account("alice").await;
    let refused = browser.sign_in("corp", "alice").await;
    assert_eq!(
        (refused.status, problem(&refused.body)),
        (401, "provider-refused"),
        "{}",
        refused.body
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("access_denied")
    );
    // Nor can it sign in with a password it does not have.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 401);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_verified_address_of_a_trusted_provider_links_to_the_password_account(
    _: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let (_provider, app) = corp_app(&conn, "bob", true, true, &ADMIN_ARGS).await;
    let email = "bob@corp.example";
    let pool = pool(&conn).await;
    let password_token = app.verified_user(&pool, email, PASSWORD).await;
    let bob = me(&app, &password_token).await;

    let landing = Browser::new(&app).sign_in("corp", "bob").await;
    assert_eq!(me(&app, &access_token(&landing)).await, bob);
    assert_eq!(events_of_type(&pool, "UserRegistered").await, 2); // bob and the administrator

    // Administrators see the link in the user view.
    let admin = app.token(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (status, user) = app
        .call(
            Method::GET,
            &format!("/v1/admin/users/{bob}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["identities"][0]["provider"], "corp");
    assert_eq!(user["identities"][0]["email"], email);

    // With a password left, the identity can be unlinked; then the next federated sign-in
    // links it again (the provider is trusted).
    let id = user["identities"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/account/identities/{id}"),
            Some(&password_token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, identities) = app
        .call(
            Method::GET,
            "/v1/account/identities",
            Some(&password_token),
            None,
        )
        .await;
    assert_eq!(identities["identities"], json!([]));
    assert_eq!(events_of_type(&pool, "ExternalIdentityUnlinked").await, 1);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/account/identities/{id}"),
            Some(&password_token),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unverified_address_does_not_link_until_the_person_links_it_signed_in(
    _: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let (_provider, app) = corp_app(&conn, "carol", false, true, &[]).await;
    let email = "carol@corp.example";
    let pool = pool(&conn).await;
    let token = app.verified_user(&pool, email, PASSWORD).await;
    let carol = me(&app, &token).await;

    let refused = Browser::new(&app).sign_in("corp", "carol").await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(problem(&refused.body), "link-required");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("/v1/account/identities/corp/link")
    );
    assert_eq!(events_of_type(&pool, "ExternalIdentityLinked").await, 0);

    // Signed in with the password, the person links it from the account.
    let browser = Browser::new(&app);
    let linked = browser.link(&app, &token, "corp", "carol").await;
    assert_eq!(linked.status, 200, "{}", linked.body);
    assert_eq!(linked.body["provider"], "corp");
    // Now the provider signs carol in.
    let landing = browser.sign_in("corp", "carol").await;
    assert_eq!(me(&app, &access_token(&landing)).await, carol);

    // Without a session, nothing is linked.
    let (status, _) = app
        .call(Method::POST, "/v1/account/identities/corp/link", None, None)
        .await;
    assert_eq!(status, 401);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_untrusted_provider_makes_accounts_that_confirm_their_address(
    _: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let (_provider, app) = corp_app(&conn, "dan", true, false, &[]).await;
    let email = "dan@corp.example";
    let pool = pool(&conn).await;
    // Not trusted for it: the provider's "verified" proves nothing here; idp asks.
    let first = Browser::new(&app).sign_in("corp", "dan").await;
    assert_eq!(first.status, 403, "{}", first.body);
    assert_eq!(problem(&first.body), "email-unverified");
    assert_eq!(events_of_type(&pool, "VerificationRequested").await, 1);
    let link = common::identity::latest_token(
        &pool,
        "VerificationRequested",
        email,
        common::identity::Purpose::VerifyEmail,
    )
    .await;
    let verified = app
        .post("/v1/auth/verify-email", json!({ "token": link }))
        .await;
    assert_eq!(verified.status(), 200);
    let second = Browser::new(&app).sign_in("corp", "dan").await;
    access_token(&second);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_return_to_gets_a_login_code_that_works_once(_: PgPoolOptions, conn: PgConnectOptions) {
    let (_provider, app) = corp_app(&conn, "erin", true, true, &[]).await;
    let browser = Browser::new(&app);

    let (status, to) = browser
        .start(
            "/v1/auth/oidc/corp/start?return_to=http%3A%2F%2F127.0.0.1%3A9%2Fsigned-in%3Ftab%3D1",
        )
        .await;
    assert_eq!(status, 303);
    let landing = browser.follow(to, "erin").await;
    assert_eq!(landing.status, 303, "{}", landing.body);
    let location = landing.location.unwrap();
    let url = reqwest::Url::parse(&location).unwrap();
    assert_eq!(url.path(), "/signed-in");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs[0], ("tab".to_owned(), "1".to_owned()));
    assert_eq!(pairs[1].0, "login_code");
    let code = pairs[1].1.clone();
    idp_ops::test_logs::remember_secret("token", &code);

    let (status, pair) = app
        .call(
            Method::POST,
            "/v1/auth/oidc/exchange",
            None,
            Some(json!({ "login_code": code })),
        )
        .await;
    assert_eq!(status, 200, "{pair}");
    let token = pair["access_token"].as_str().unwrap();
    idp_ops::test_logs::remember_secret("token", token);
    me(&app, token).await;
    let (status, again) = app
        .call(
            Method::POST,
            "/v1/auth/oidc/exchange",
            None,
            Some(json!({ "login_code": code })),
        )
        .await;
    assert_eq!(status, 401, "{again}");
    assert_eq!(problem(&again), "login-code-refused");

    // A code lives 60 seconds: one a second past its end is refused.
    let (_, to) = browser
        .start("/v1/auth/oidc/corp/start?return_to=http%3A%2F%2F127.0.0.1%3A9%2F")
        .await;
    let landing = browser.follow(to, "erin").await;
    let code = param(&landing.location.unwrap(), "login_code");
    idp_ops::test_logs::remember_secret("token", &code);
    let db = db(&conn);
    let left: f64 = sqlx::query_scalar(
        "select extract(epoch from expires_at - now())::float8 from federated_login_codes",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!((55.0..=60.0).contains(&left), "{left}");
    sqlx::query("update federated_login_codes set expires_at = now() - interval '1 second'")
        .execute(&db)
        .await
        .unwrap();
    let (status, expired) = app
        .call(
            Method::POST,
            "/v1/auth/oidc/exchange",
            None,
            Some(json!({ "login_code": code })),
        )
        .await;
    assert_eq!((status, problem(&expired)), (401, "login-code-refused"));

    // No open redirect: another origin, a scheme that is not http(s), credentials.
    for refused in [
        "https%3A%2F%2Fevil.example%2F",
        "http%3A%2F%2F127.0.0.1%3A10%2F",
        "javascript%3Aalert(1)",
        "%2Fsigned-in",
        "http%3A%2F%2Fuser%40127.0.0.1%3A9%2F",
    ] {
        let (status, body) = app
            .call(
                Method::GET,
                &format!("/v1/auth/oidc/corp/start?return_to={refused}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, 400, "{refused}: {body}");
        assert_eq!(problem(&body), "return-to-refused", "{refused}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_person_with_a_second_factor_still_needs_it(_: PgPoolOptions, conn: PgConnectOptions) {
    let (_provider, app) = corp_app(&conn, "fay", true, true, &[]).await;
    let email = "fay@corp.example";
    let pool = pool(&conn).await;
    let token = app.verified_user(&pool, email, PASSWORD).await;
    let (status, enrolment) = app
        .call(
            Method::POST,
            "/v1/auth/2fa/enable-init",
            Some(&token),
            Some(json!({ "password": PASSWORD })),
        )
        .await;
    assert_eq!(status, 200);
    let secret = enrolment["secret"].as_str().unwrap();
    idp_ops::test_logs::remember_secret("totp secret", secret);
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        totp_rs::Secret::Encoded(secret.to_owned())
            .to_bytes()
            .unwrap(),
        None,
        String::new(),
    );
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/2fa/enable-complete",
            Some(&token),
            Some(json!({ "code": totp.generate_current().unwrap() })),
        )
        .await;
    assert_eq!(status, 200);

    let landing = Browser::new(&app).sign_in("corp", "fay").await;
    assert_eq!(landing.status, 200, "{}", landing.body);
    assert_eq!(landing.body["status"], "mfa_required");
    assert!(landing.body.get("access_token").is_none());
    let challenge = landing.body["challenge"].as_str().unwrap();
    idp_ops::test_logs::remember_secret("token", challenge);
    // The code of the next step (one step of drift is allowed): the enrolment spent the
    // current one.
    let step = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 30;
    let (status, pair) = app
        .call(
            Method::POST,
            "/v1/auth/2fa/verify",
            None,
            Some(json!({ "challenge": challenge, "code": totp.generate(step) })),
        )
        .await;
    assert_eq!(status, 200, "{pair}");
    idp_ops::test_logs::remember_secret("token", pair["access_token"].as_str().unwrap());
    // The session the second step started is a federated one, bounded like the others.
    let bounded: bool = sqlx::query_scalar(
        "select expires_at < now() + interval '12 hours 1 minute' from sessions
          order by created_at desc limit 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(bounded);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_provider_session_lasts_at_most_provider_session_max_age(
    _: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let issuer = MisbehavingIssuer::start("idp", "idp-secret").await;
    idp_ops::test_logs::remember_secret("email", "person@example.test");
    let providers = json!([{"id": "fake", "kind": "oidc", "issuer": issuer.issuer(),
                            "client_id": "idp", "client_secret": "idp-secret", "trust_email_verified": true}]);
    let app = app_with(&conn, &providers, &["--provider-session-max-age", "120"]).await;
    let pool = db(&conn);
    let landing = Browser::new(&app).sign_in("fake", "").await;
    access_token(&landing);
    let left: f64 =
        sqlx::query_scalar("select extract(epoch from expires_at - now())::float8 from sessions")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!((100.0..=120.0).contains(&left), "{left}");
    // The authorization request was a code flow with PKCE S256, a state and a nonce.
    let query = issuer.last_authorize_query().unwrap();
    let value = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(value("response_type").as_deref(), Some("code"));
    assert_eq!(value("code_challenge_method").as_deref(), Some("S256"));
    assert!(value("code_challenge").is_some_and(|c| c.len() == 43));
    assert!(value("nonce").is_some_and(|n| n.len() >= 43));
    assert!(value("state").is_some_and(|s| s.len() >= 43));
    assert_eq!(
        value("redirect_uri").as_deref(),
        Some("http://127.0.0.1:9/v1/auth/oidc/fake/callback")
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn forged_tokens_and_broken_flows_are_refused(_: PgPoolOptions, conn: PgConnectOptions) {
    let issuer = MisbehavingIssuer::start("idp", "idp-secret").await;
    let other = MisbehavingIssuer::start("idp", "idp-secret").await;
    idp_ops::test_logs::remember_secret("email", "person@example.test");
    let entry = |id: &str, issuer: &MisbehavingIssuer, enabled: bool| {
        json!({"id": id, "kind": "oidc", "issuer": issuer.issuer(), "client_id": "idp",
               "client_secret": "idp-secret", "trust_email_verified": true, "enabled": enabled})
    };
    let providers = json!([
        entry("fake", &issuer, true),
        entry("other", &other, true),
        entry("off", &issuer, false)
    ]);
    let app = app_with(&conn, &providers, &[]).await;
    let pool = db(&conn);

    // Each defect of the id_token, each refusal of the provider: its problem, and no account.
    for (defect, status, kind, detail) in [
        (Defect::WrongKey, 401, "id-token-invalid", "signature"),
        (Defect::AlgNone, 401, "id-token-invalid", "alg none"),
        (
            Defect::WrongAudience,
            401,
            "id-token-invalid",
            "another audience",
        ),
        (Defect::Expired, 401, "id-token-invalid", "expired"),
        (Defect::WrongNonce, 401, "id-token-invalid", "nonce"),
        (
            Defect::WrongIssuer,
            401,
            "id-token-invalid",
            "another issuer",
        ),
        (
            Defect::InvalidGrant,
            401,
            "provider-refused",
            "invalid_grant",
        ),
        (
            Defect::AccessDenied,
            401,
            "provider-refused",
            "access_denied",
        ),
    ] {
        issuer.set_defect(defect);
        let landing = Browser::new(&app).sign_in("fake", "").await;
        assert_eq!(landing.status, status, "{defect:?}: {}", landing.body);
        assert_eq!(problem(&landing.body), kind, "{defect:?}: {}", landing.body);
        let text = landing.body["detail"].as_str().unwrap_or_default();
        assert!(text.contains(detail), "{defect:?}: {text}");
    }
    assert_eq!(events_of_type(&pool, "UserRegistered").await, 0);
    issuer.set_defect(Defect::None);

    // A callback without the browser's cookie, without its state, with another state.
    let browser = Browser::new(&app);
    for (change, detail) in [
        ("no cookie", "no sign-in was started in this browser"),
        ("no state", "has no state"),
        ("other state", "state does not match"),
    ] {
        let (_, to) = browser.start("/v1/auth/oidc/fake/start").await;
        let callback = provider_redirect(&browser, &to).await;
        let landing = match change {
            "no cookie" => Browser::new(&app).land(&callback).await,
            "no state" => browser.land(&strip_param(&callback, "state")).await,
            _ => {
                browser
                    .land(&replace_param(&callback, "state", "forged"))
                    .await
            }
        };
        assert_eq!(
            (landing.status, problem(&landing.body)),
            (400, "federation-state-invalid"),
            "{change}: {}",
            landing.body
        );
        let text = landing.body["detail"].as_str().unwrap();
        assert!(text.contains(detail), "{change}: {text}");
    }
    // A flow completes once: the whole callback replayed, cookie and all, is refused.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let started = plain
        .get(app.url("/v1/auth/oidc/fake/start"))
        .send()
        .await
        .unwrap();
    let cookie = started.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let to = started.headers()["location"].to_str().unwrap().to_owned();
    let callback = provider_redirect(&browser, &to).await;
    let first = plain
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let replay = plain
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    let body: Value = replay.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("completed already"),
        "{body}"
    );
    // The code replayed in a new flow: the provider refuses it.
    let code = param(&callback, "code");
    let (_, to) = browser.start("/v1/auth/oidc/fake/start").await;
    let fresh = provider_redirect(&browser, &to).await;
    let landing = browser.land(&replace_param(&fresh, "code", &code)).await;
    assert_eq!(
        (landing.status, problem(&landing.body)),
        (401, "provider-refused"),
        "{}",
        landing.body
    );

    // Provider A's callback with provider B's flow.
    let (_, to) = browser.start("/v1/auth/oidc/other/start").await;
    let of_other = provider_redirect(&browser, &to).await;
    let landing = browser
        .land(&of_other.replace("/oidc/other/", "/oidc/fake/"))
        .await;
    assert_eq!(landing.status, 400, "{}", landing.body);
    assert!(
        landing.body["detail"]
            .as_str()
            .unwrap()
            .contains("another provider")
    );

    // A disabled provider is not listed and does not start or end a sign-in.
    let (_, listed) = app
        .call(Method::GET, "/v1/auth/providers", None, None)
        .await;
    let ids: Vec<&str> = listed["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fake", "other"]);
    for path in [
        "/v1/auth/oidc/off/start",
        "/v1/auth/oidc/off/callback?code=x&state=y",
    ] {
        let (status, body) = app.call(Method::GET, path, None, None).await;
        assert_eq!(
            (status, problem(&body)),
            (403, "provider-disabled"),
            "{path}"
        );
    }
    let (status, _) = app
        .call(Method::GET, "/v1/auth/oidc/nobody/start", None, None)
        .await;
    assert_eq!(status, 404);
}

/// Follows the provider's redirects from `to` until the one to the callback; that callback
/// on the API, not called.
async fn provider_redirect(browser: &Browser, to: &str) -> String {
    let mut url = to.to_owned();
    for _ in 0..10 {
        let response = browser.client.get(&url).send().await.unwrap();
        assert!(response.status().is_redirection(), "{url}");
        let next = response.headers()["location"].to_str().unwrap().to_owned();
        if let Some(callback) = browser.to_api(&next) {
            return callback;
        }
        url = next;
    }
    panic!("no callback from {to}");
}

fn param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

fn strip_param(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(kept);
    parsed.into()
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.into()
}

#[sqlx::test(migrations = "../migrations")]
async fn github_signs_in_with_its_user_and_email_endpoints(
    _: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let github = FakeGithub::start("gh-client", "gh-secret").await;
    let email = "octo@example.test";
    idp_ops::test_logs::remember_secret("email", email);
    github.set_user(
        4242,
        "octo",
        "Octo Cat",
        &[("old@example.test", false, true), (email, true, true)],
    );
    let providers = json!([{"id": "github", "kind": "github", "issuer": github.web_url(),
                            "api_url": github.api_url(), "client_id": "gh-client",
                            "client_secret": "gh-secret", "trust_email_verified": true,
                            "display_name": "GitHub"}]);
    let app = app_with(&conn, &providers, &[]).await;
    let browser = Browser::new(&app);
    let landing = browser.sign_in("github", "").await;
    let token = access_token(&landing);
    let (_, profile) = app
        .call(Method::GET, "/v1/auth/me", Some(&token), None)
        .await;
    assert_eq!(profile["email"], email);
    assert_eq!(profile["display_name"], "Octo Cat");
    let user = me(&app, &token).await;
    // The same GitHub user, renamed and with another primary address: the same account.
    github.set_user(
        4242,
        "octo-renamed",
        "Octo",
        &[(email, false, true), ("new@example.test", true, true)],
    );
    idp_ops::test_logs::remember_secret("email", "new@example.test");
    let again = browser.sign_in("github", "").await;
    assert_eq!(me(&app, &access_token(&again)).await, user);
    assert_eq!(github.token_requests(), 2);

    // Suspended at GitHub: the next sign-in is refused.
    github.suspend();
    let refused = browser.sign_in("github", "").await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(problem(&refused.body), "provider-refused");
}

#[sqlx::test(migrations = "../migrations")]
async fn domains_locks_and_erasure_decide_who_signs_in(_: PgPoolOptions, conn: PgConnectOptions) {
    let issuer = MisbehavingIssuer::start("idp", "idp-secret").await;
    for email in ["person@example.test", "someone@other.test"] {
        idp_ops::test_logs::remember_secret("email", email);
    }
    let providers = json!([{"id": "fake", "kind": "oidc", "issuer": issuer.issuer(),
                            "client_id": "idp", "client_secret": "idp-secret",
                            "trust_email_verified": true, "allowed_domains": ["example.test"]}]);
    let app = app_with(&conn, &providers, &ADMIN_ARGS).await;
    let pool = db(&conn);
    let admin = app.token(ADMIN_EMAIL, ADMIN_PASSWORD).await;

    issuer.set_account("subject-2", "someone@other.test", true);
    let landing = Browser::new(&app).sign_in("fake", "").await;
    assert_eq!(
        (landing.status, problem(&landing.body)),
        (403, "email-domain-refused")
    );
    issuer.set_account("subject-3", "person@example.test", false);
    let landing = Browser::new(&app).sign_in("fake", "").await;
    assert_eq!(
        (landing.status, problem(&landing.body)),
        (403, "email-domain-refused")
    );

    issuer.set_account("subject-1", "person@example.test", true);
    let landing = Browser::new(&app).sign_in("fake", "").await;
    let person = me(&app, &access_token(&landing)).await;

    // Locked by an administrator: refused as a password sign-in is.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{person}/lock"),
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let landing = Browser::new(&app).sign_in("fake", "").await;
    assert_eq!(
        (landing.status, problem(&landing.body)),
        (401, "invalid-credentials")
    );
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{person}/unlock"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);

    // Erased: the identity goes with the person; the provider's account signs up anew.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{person}/erase"),
            Some(&admin),
            Some(json!({"reason": "asked by the person"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rows: i64 = sqlx::query_scalar("select count(*) from external_identities")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let landing = Browser::new(&app).sign_in("fake", "").await;
    let newcomer = me(&app, &access_token(&landing)).await;
    assert_ne!(newcomer, person);
}

#[sqlx::test(migrations = "../migrations")]
async fn federated_sign_ins_share_the_sign_in_rate_limit(_: PgPoolOptions, conn: PgConnectOptions) {
    let issuer = MisbehavingIssuer::start("idp", "idp-secret").await;
    idp_ops::test_logs::remember_secret("email", "person@example.test");
    let providers = json!([{"id": "fake", "kind": "oidc", "issuer": issuer.issuer(),
                            "client_id": "idp", "client_secret": "idp-secret", "trust_email_verified": true}]);
    let app = app_with(&conn, &providers, &["--rate-limit-login-per-ip", "2/600s"]).await;
    for _ in 0..2 {
        access_token(&Browser::new(&app).sign_in("fake", "").await);
    }
    let limited = Browser::new(&app).sign_in("fake", "").await;
    assert_eq!(limited.status, 429, "{}", limited.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn misconfigured_providers_stop_the_api(_: PgPoolOptions, conn: PgConnectOptions) {
    for (providers, needle) in [
        (
            json!([{"id": "corp", "kind": "oidc", "issuer": "http://idp.example.com",
                    "client_id": "c", "client_secret": "s"}]),
            "plain http",
        ),
        (
            json!([{"id": "corp", "kind": "oidc", "client_id": "c", "client_secret": "s"}]),
            "issuer: is required",
        ),
    ] {
        let providers = providers.to_string();
        let config = <idp_api::config::Config as clap::Parser>::try_parse_from(
            idp_testkit::settings::api_args(
                &idp_testkit::database::database_url(&conn),
                &idp_testkit::settings::temp_dir("keys"),
            )
            .into_iter()
            .chain([
                "--amqp-url".to_owned(),
                idp_testkit::broker::amqp_url(),
                "--auth-providers".to_owned(),
                providers,
            ]),
        )
        .unwrap();
        let err = idp_api::startup::Application::build(&config)
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains(needle), "{err}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn identities_are_their_owners_alone(_: PgPoolOptions, conn: PgConnectOptions) {
    let issuer = MisbehavingIssuer::start("idp", "idp-secret").await;
    idp_ops::test_logs::remember_secret("email", "person@example.test");
    idp_ops::test_logs::remember_secret("email", "other@example.test");
    let providers = json!([{"id": "fake", "kind": "oidc", "issuer": issuer.issuer(),
                            "client_id": "idp", "client_secret": "idp-secret", "trust_email_verified": true}]);
    let app = app_with(&conn, &providers, &[]).await;
    let pool = pool(&conn).await;
    let owner = access_token(&Browser::new(&app).sign_in("fake", "").await);
    let (_, listed) = app
        .call(Method::GET, "/v1/account/identities", Some(&owner), None)
        .await;
    let id = listed["identities"][0]["id"].as_str().unwrap().to_owned();
    let other = app
        .verified_user(&pool, "other@example.test", PASSWORD)
        .await;
    // Another person neither sees nor unlinks it.
    let (_, theirs) = app
        .call(Method::GET, "/v1/account/identities", Some(&other), None)
        .await;
    assert_eq!(theirs["identities"], json!([]));
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/account/identities/{id}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // The provider's account is the owner's: linking it to another account is refused.
    let landing = Browser::new(&app).link(&app, &other, "fake", "").await;
    assert_eq!(landing.status, 409, "{}", landing.body);
    // Without a token, and with an API key (a session's business), nothing.
    for path in ["/v1/account/identities"] {
        let (status, _) = app.call(Method::GET, path, None, None).await;
        assert_eq!(status, 401);
    }
    let (status, key) = app
        .call(
            Method::POST,
            "/v1/account/api-keys",
            Some(&owner),
            Some(json!({"name": "ci", "scopes": ["projects:read"]})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    idp_ops::test_logs::remember_secret("token", &key);
    for (method, path) in [
        (Method::GET, "/v1/account/identities".to_owned()),
        (Method::POST, "/v1/account/identities/fake/link".to_owned()),
        (Method::DELETE, format!("/v1/account/identities/{id}")),
    ] {
        let (status, body) = app.call(method, &path, Some(&key), None).await;
        assert_eq!(
            (status, problem(&body)),
            (403, "session-required"),
            "{path}"
        );
    }
    // Garbage ids are no identity of the caller's.
    let (status, _) = app
        .call(
            Method::DELETE,
            "/v1/account/identities/not-an-id",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrations = "../migrations")]
async fn providers_can_come_from_a_file(_: PgPoolOptions, conn: PgConnectOptions) {
    let github = FakeGithub::start("gh-client", "gh-secret").await;
    let file = idp_testkit::settings::temp_dir("providers").join("providers.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        json!([{"id": "github", "kind": "github", "issuer": github.web_url(),
                "api_url": github.api_url(), "client_id": "gh-client", "client_secret": "gh-secret"}])
        .to_string(),
    )
    .unwrap();
    let path = file.display().to_string();
    let app = spawn_app(
        &conn,
        &[
            "--auth-providers-file",
            &path,
            "--public-base-url",
            PUBLIC_BASE,
        ],
    )
    .await;
    let (_, listed) = app
        .call(Method::GET, "/v1/auth/providers", None, None)
        .await;
    assert_eq!(listed["providers"][0]["id"], "github");
    assert_eq!(listed["providers"][0]["kind"], "github");
    // Both at once is a mistake.
    let config = <idp_api::config::Config as clap::Parser>::try_parse_from(
        idp_testkit::settings::api_args(
            &idp_testkit::database::database_url(&conn),
            &idp_testkit::settings::temp_dir("keys"),
        )
        .into_iter()
        .chain(
            [
                "--amqp-url",
                &idp_testkit::broker::amqp_url(),
                "--auth-providers-file",
                &path,
                "--auth-providers",
                "[]",
            ]
            .map(str::to_owned),
        ),
    )
    .unwrap();
    let err = idp_api::startup::Application::build(&config)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("not both"), "{err}");
}

#[sqlx::test(migrations = "../migrations")]
async fn two_first_sign_ins_at_once_make_one_account(_: PgPoolOptions, conn: PgConnectOptions) {
    let issuer = MisbehavingIssuer::start("idp", "idp-secret").await;
    idp_ops::test_logs::remember_secret("email", "person@example.test");
    let providers = json!([{"id": "fake", "kind": "oidc", "issuer": issuer.issuer(),
                            "client_id": "idp", "client_secret": "idp-secret", "trust_email_verified": true}]);
    let app = app_with(&conn, &providers, &[]).await;
    let (first, second) = (Browser::new(&app), Browser::new(&app));
    let (_, to) = first.start("/v1/auth/oidc/fake/start").await;
    let one = provider_redirect(&first, &to).await;
    let (_, to) = second.start("/v1/auth/oidc/fake/start").await;
    let two = provider_redirect(&second, &to).await;
    let (a, b) = tokio::join!(first.land(&one), second.land(&two));
    let (a, b) = (
        me(&app, &access_token(&a)).await,
        me(&app, &access_token(&b)).await,
    );
    assert_eq!(a, b);
    assert_eq!(events_of_type(&db(&conn), "UserRegistered").await, 1);
}
