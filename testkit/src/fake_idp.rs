//! Two identity providers written for the tests, real HTTP servers on 127.0.0.1:
//!
//! - [`MisbehavingIssuer`]: an OpenID Connect issuer (discovery, JWKS, authorization code flow
//!   with PKCE, ES256 ID tokens, userinfo) that misbehaves on request ([`Defect`]): tokens
//!   signed by the wrong key or not at all, for someone else, expired, with the wrong nonce or
//!   issuer, refused grants, denied authorizations.
//! - [`FakeGithub`]: GitHub's OAuth web flow and the REST endpoints of the signed-in user, laid
//!   out as GitHub Enterprise Server lays them out (the web flow under `/login/oauth`, the REST
//!   API under `/api/v3`), with GitHub's quirks: token errors answered with HTTP 200, a
//!   `User-Agent` required, the addresses of `/user/emails` only for tokens with `user:email`.
//!
//! Both keep one account at a time (the one a new authorization signs in) and record what the
//! tests need to check: token requests, the query of the last authorization.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

/// How long the ID and access tokens of [`MisbehavingIssuer`] are valid, in seconds.
pub const TOKEN_LIFETIME: i64 = 300;

/// The issuer that [`Defect::WrongIssuer`] puts in ID tokens.
pub const WRONG_ISSUER: &str = "https://attacker.example.test";

/// The audience (and authorized party) that [`Defect::WrongAudience`] puts in ID tokens.
pub const WRONG_AUDIENCE: &str = "someone-else";

/// The nonce that [`Defect::WrongNonce`] puts in ID tokens.
pub const WRONG_NONCE: &str = "not-the-nonce-you-sent";

/// How [`MisbehavingIssuer`] misbehaves; one at a time, from [`MisbehavingIssuer::set_defect`]
/// on. The ID token defects apply to the tokens issued after it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Defect {
    /// Behaves.
    #[default]
    None,
    /// The ID token is signed by another P-256 key, under the `kid` of the published one.
    WrongKey,
    /// The ID token is unsecured: header `{"alg":"none"}`, an empty signature
    /// (`<b64 header>.<b64 payload>.`).
    AlgNone,
    /// The ID token's `aud` and `azp` are [`WRONG_AUDIENCE`].
    WrongAudience,
    /// The ID token's `iat` and `exp` are an hour earlier than they should be (`exp` 55 minutes
    /// in the past).
    Expired,
    /// The ID token's `nonce` is [`WRONG_NONCE`], whatever the client sent.
    WrongNonce,
    /// The ID token's `iss` is [`WRONG_ISSUER`].
    WrongIssuer,
    /// The token endpoint refuses every grant: 400 `{"error":"invalid_grant",...}`.
    InvalidGrant,
    /// The authorization endpoint redirects back with `error=access_denied`.
    AccessDenied,
}

/// The account an authorization signs in.
#[derive(Debug, Clone)]
struct Account {
    subject: String,
    email: String,
    email_verified: bool,
    name: String,
}

/// An authorization code of the issuer, until it is used.
#[derive(Debug)]
struct IssuerGrant {
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    account: Account,
}

#[derive(Debug)]
struct IssuerState {
    issuer: String,
    client_id: String,
    client_secret: String,
    kid: String,
    key: SigningKey,
    /// Signs the ID tokens of [`Defect::WrongKey`]; never published.
    wrong_key: SigningKey,
    defect: Defect,
    account: Account,
    codes: HashMap<String, IssuerGrant>,
    access_tokens: HashMap<String, Account>,
    token_requests: u64,
    last_authorize_query: Option<Vec<(String, String)>>,
}

type SharedIssuer = Arc<Mutex<IssuerState>>;

/// A running OpenID Connect issuer for one client, which misbehaves on request; stops when
/// dropped.
///
/// Its endpoints, under [`issuer`](Self::issuer): `/.well-known/openid-configuration`, `/jwks`
/// (one P-256 key, made at start), `/authorize`, `/token` (`client_secret_basic` or
/// `client_secret_post`; single-use codes; `redirect_uri` and PKCE `S256` checked) and
/// `/userinfo` (the claims of the account, for a bearer access token).
#[derive(Debug)]
pub struct MisbehavingIssuer {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    state: SharedIssuer,
    task: tokio::task::JoinHandle<()>,
}

impl MisbehavingIssuer {
    /// An issuer for the client `client_id` authenticated by `client_secret`, behaving
    /// ([`Defect::None`]), signing in the account `subject-1` (`person@example.test`, verified).
    pub async fn start(client_id: &str, client_secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(IssuerState {
            issuer: format!("http://127.0.0.1:{port}"),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            kid: format!("es256-{}", uuid::Uuid::new_v4().simple()),
            key: generate_key(),
            wrong_key: generate_key(),
            defect: Defect::None,
            account: Account {
                subject: "subject-1".to_owned(),
                email: "person@example.test".to_owned(),
                email_verified: true,
                name: "Person Example".to_owned(),
            },
            codes: HashMap::new(),
            access_tokens: HashMap::new(),
            token_requests: 0,
            last_authorize_query: None,
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(issuer_discovery))
            .route("/jwks", get(issuer_jwks))
            .route("/authorize", get(issuer_authorize))
            .route("/token", post(issuer_token))
            .route("/userinfo", get(issuer_userinfo).post(issuer_userinfo))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, state, task }
    }

    /// The issuer identifier, `http://127.0.0.1:<port>` (no trailing slash): the discovery
    /// document is at `{issuer}/.well-known/openid-configuration`.
    pub fn issuer(&self) -> String {
        self.state.lock().unwrap().issuer.clone()
    }

    /// Misbehaves so from now on ([`Defect::None`] to behave again).
    pub fn set_defect(&self, defect: Defect) {
        self.state.lock().unwrap().defect = defect;
    }

    /// The account the next authorizations sign in (codes already issued keep theirs).
    pub fn set_account(&self, subject: &str, email: &str, email_verified: bool) {
        let mut state = self.state.lock().unwrap();
        state.account.subject = subject.to_owned();
        state.account.email = email.to_owned();
        state.account.email_verified = email_verified;
    }

    /// The requests the token endpoint received, refused ones included.
    pub fn token_requests(&self) -> u64 {
        self.state.lock().unwrap().token_requests
    }

    /// The query of the last request to `/authorize` (refused or not), as its pairs in order,
    /// decoded.
    pub fn last_authorize_query(&self) -> Option<Vec<(String, String)>> {
        self.state.lock().unwrap().last_authorize_query.clone()
    }
}

impl Drop for MisbehavingIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IssuerState {
    /// The ID token of `grant`, as the current defect makes it.
    fn id_token(&self, grant: &IssuerGrant) -> String {
        let shift = if self.defect == Defect::Expired {
            3600
        } else {
            0
        };
        let iat = chrono::Utc::now().timestamp() - shift;
        let audience = if self.defect == Defect::WrongAudience {
            WRONG_AUDIENCE
        } else {
            &self.client_id
        };
        let issuer = if self.defect == Defect::WrongIssuer {
            WRONG_ISSUER
        } else {
            &self.issuer
        };
        let mut claims = json!({
            "iss": issuer,
            "sub": grant.account.subject,
            "aud": audience,
            "azp": audience,
            "iat": iat,
            "exp": iat + TOKEN_LIFETIME,
            "email": grant.account.email,
            "email_verified": grant.account.email_verified,
            "name": grant.account.name,
        });
        let nonce = if self.defect == Defect::WrongNonce {
            Some(WRONG_NONCE)
        } else {
            grant.nonce.as_deref()
        };
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        if self.defect == Defect::AlgNone {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
            return format!("{header}.{payload}.");
        }
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        let signing_input = format!("{header}.{payload}");
        let key = if self.defect == Defect::WrongKey {
            &self.wrong_key
        } else {
            &self.key
        };
        let signature: Signature = key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// Whether the token request authenticates the client: HTTP Basic (each part
    /// form-urlencoded before base64, as RFC 6749 2.3.1 says, or raw) or `client_secret_post`.
    fn authenticates(&self, headers: &HeaderMap, form: &[(String, String)]) -> bool {
        authenticates(&self.client_id, &self.client_secret, headers, form)
    }
}

async fn issuer_discovery(State(state): State<SharedIssuer>) -> Response {
    let issuer = state.lock().unwrap().issuer.clone();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "iss", "sub", "aud", "azp", "exp", "iat", "nonce", "email", "email_verified", "name"
        ],
    }))
    .into_response()
}

async fn issuer_jwks(State(state): State<SharedIssuer>) -> Response {
    let state = state.lock().unwrap();
    let point = state.key.verifying_key().to_encoded_point(false);
    Json(json!({
        "keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            "kid": state.kid,
            "use": "sig",
            "alg": "ES256",
        }]
    }))
    .into_response()
}

async fn issuer_authorize(
    State(state): State<SharedIssuer>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = pairs(query.unwrap_or_default().as_bytes());
    let mut state = state.lock().unwrap();
    state.last_authorize_query = Some(query.clone());
    if param(&query, "client_id") != Some(state.client_id.as_str()) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let redirect_uri = match param(&query, "redirect_uri").map(Url::parse) {
        Some(Ok(url)) if url.fragment().is_none() => url,
        Some(_) => return (StatusCode::BAD_REQUEST, "invalid redirect_uri").into_response(),
        None => return (StatusCode::BAD_REQUEST, "missing redirect_uri").into_response(),
    };
    // From here on, errors go back to the client, with its state.
    let state_param = param(&query, "state");
    let error = |error: &str, description: &str| {
        let mut answer = vec![("error", error), ("error_description", description)];
        answer.extend(state_param.map(|s| ("state", s)));
        redirect(with_query(&redirect_uri, &answer))
    };
    if param(&query, "response_type") != Some("code") {
        return error(
            "unsupported_response_type",
            "Only the authorization code flow (response_type=code) is supported.",
        );
    }
    if !param(&query, "scope").is_some_and(|s| s.split(' ').any(|s| s == "openid")) {
        return error("invalid_scope", "The scope must include openid.");
    }
    let code_challenge = param(&query, "code_challenge");
    if code_challenge.is_some() && param(&query, "code_challenge_method") != Some("S256") {
        return error(
            "invalid_request",
            "Only the code challenge method S256 is supported.",
        );
    }
    if state.defect == Defect::AccessDenied {
        return error(
            "access_denied",
            "The resource owner denied the request (Defect::AccessDenied).",
        );
    }
    let code = random_token();
    let grant = IssuerGrant {
        redirect_uri: param(&query, "redirect_uri").unwrap().to_owned(),
        nonce: param(&query, "nonce").map(str::to_owned),
        code_challenge: code_challenge.map(str::to_owned),
        account: state.account.clone(),
    };
    state.codes.insert(code.clone(), grant);
    let mut answer = vec![("code", code.as_str())];
    answer.extend(state_param.map(|s| ("state", s)));
    redirect(with_query(&redirect_uri, &answer))
}

async fn issuer_token(
    State(state): State<SharedIssuer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    state.token_requests += 1;
    let form = pairs(&body);
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The body must be application/x-www-form-urlencoded.",
        );
    }
    if !state.authenticates(&headers, &form) {
        let mut answer = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        );
        answer.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"fake-idp\""),
        );
        return answer;
    }
    if state.defect == Defect::InvalidGrant {
        return invalid_grant("The grant is refused (Defect::InvalidGrant).");
    }
    if param(&form, "grant_type") != Some("authorization_code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only grant_type=authorization_code is supported.",
        );
    }
    let Some(code) = param(&form, "code") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing code.");
    };
    // Used once, whatever the outcome.
    let Some(grant) = state.codes.remove(code) else {
        return invalid_grant("The authorization code is unknown or was already used.");
    };
    if param(&form, "redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return invalid_grant("The redirect_uri differs from the one of the authorization.");
    }
    match (&grant.code_challenge, param(&form, "code_verifier")) {
        (None, None) => {}
        (Some(challenge), Some(verifier)) if s256(verifier) == *challenge => {}
        (Some(_), Some(_)) => return invalid_grant("PKCE verification failed."),
        (Some(_), None) => return invalid_grant("Missing code_verifier."),
        (None, Some(_)) => {
            return invalid_grant("A code_verifier without a code_challenge at authorization.");
        }
    }
    let access_token = random_token();
    state
        .access_tokens
        .insert(access_token.clone(), grant.account.clone());
    let id_token = state.id_token(&grant);
    no_store(
        StatusCode::OK,
        json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "id_token": id_token,
        }),
    )
}

async fn issuer_userinfo(State(state): State<SharedIssuer>, headers: HeaderMap) -> Response {
    let state = state.lock().unwrap();
    let account = bearer(&headers, &["bearer"]).and_then(|t| state.access_tokens.get(&t));
    let Some(account) = account else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response();
    };
    Json(json!({
        "sub": account.subject,
        "email": account.email,
        "email_verified": account.email_verified,
        "name": account.name,
    }))
    .into_response()
}

/// A P-256 key from 32 random bytes (again when they are not a valid scalar).
fn generate_key() -> SigningKey {
    loop {
        if let Ok(key) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
            return key;
        }
    }
}

/// The pairs of a query or form body, decoded, in order.
fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

/// The first value of `name`.
fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// 256 random bits, base64url.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The PKCE S256 challenge of `verifier`: base64url-no-pad(SHA-256(verifier)).
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `url` with `params` appended to its query (an existing query kept).
fn with_query(url: &Url, params: &[(&str, &str)]) -> Url {
    let mut url = url.clone();
    url.query_pairs_mut().extend_pairs(params);
    url
}

/// 302 to `location`.
fn redirect(location: Url) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// JSON that must not be cached (RFC 6749 5.1).
fn no_store(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

/// An error of the token endpoint (RFC 6749 5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    no_store(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// Form-urlencoding undone: `+` is a space, `%XX` a byte.
fn form_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(&value.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The user id and password of an HTTP Basic `Authorization`, as sent.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let credentials = String::from_utf8(STANDARD.decode(credentials.trim()).ok()?).ok()?;
    let (id, secret) = credentials.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Whether a token request authenticates the client `client_id`: by HTTP Basic (each part
/// form-urlencoded or raw; a `client_id` in the body, if any, the same) or by `client_id` and
/// `client_secret` in the body.
fn authenticates(
    client_id: &str,
    client_secret: &str,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> bool {
    let matches = |sent: &str, expected: &str| sent == expected || form_decode(sent) == expected;
    match basic_credentials(headers) {
        Some((id, secret)) => {
            matches(&id, client_id)
                && matches(&secret, client_secret)
                && param(form, "client_id").is_none_or(|id| id == client_id)
        }
        None => {
            param(form, "client_id") == Some(client_id)
                && param(form, "client_secret") == Some(client_secret)
        }
    }
}

/// The token of an `Authorization: <scheme> <token>` whose scheme (case-insensitive) is one of
/// `schemes` (lowercase).
fn bearer(headers: &HeaderMap, schemes: &[&str]) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    schemes
        .contains(&scheme.to_ascii_lowercase().as_str())
        .then(|| token.trim().to_owned())
}

/// GitHub's documentation of the errors of its token endpoint.
const GITHUB_TOKEN_ERRORS: &str = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors";

/// The user a GitHub authorization signs in.
#[derive(Debug, Clone)]
struct GithubUser {
    id: u64,
    login: String,
    name: String,
    /// Address, primary, verified.
    emails: Vec<(String, bool, bool)>,
}

/// An authorization code of GitHub, until it is used.
#[derive(Debug)]
struct GithubGrant {
    redirect_uri: String,
    code_challenge: Option<String>,
    scopes: Vec<String>,
    user: GithubUser,
}

/// An access token of GitHub.
#[derive(Debug)]
struct GithubToken {
    scopes: Vec<String>,
    user: GithubUser,
}

#[derive(Debug)]
struct GithubState {
    web_url: String,
    client_id: String,
    client_secret: String,
    user: GithubUser,
    suspended: bool,
    codes: HashMap<String, GithubGrant>,
    tokens: HashMap<String, GithubToken>,
    token_requests: u64,
}

type SharedGithub = Arc<Mutex<GithubState>>;

/// A running GitHub for one OAuth app, as GitHub Enterprise Server lays it out; stops when
/// dropped.
///
/// The web flow: `GET {web_url}/login/oauth/authorize` (302 back with `code` and `state`, PKCE
/// `S256` optional) and `POST {web_url}/login/oauth/access_token` (JSON with `Accept:
/// application/json`, else form-encoded; errors with HTTP 200, as GitHub answers them). The
/// REST API: `GET {api_url}/user` and `GET {api_url}/user/emails` (the latter needs the
/// `user:email` or `user` scope, else 404 as on GitHub), with `Authorization: Bearer <token>`
/// or `token <token>` and a `User-Agent`.
#[derive(Debug)]
pub struct FakeGithub {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    state: SharedGithub,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGithub {
    /// GitHub with the OAuth app `client_id` authenticated by `client_secret`, signing in the
    /// user 4242 `octocat` (`The Octocat`, one primary verified address `octocat@example.test`).
    pub async fn start(client_id: &str, client_secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(GithubState {
            web_url: format!("http://127.0.0.1:{port}"),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            user: GithubUser {
                id: 4242,
                login: "octocat".to_owned(),
                name: "The Octocat".to_owned(),
                emails: vec![("octocat@example.test".to_owned(), true, true)],
            },
            suspended: false,
            codes: HashMap::new(),
            tokens: HashMap::new(),
            token_requests: 0,
        }));
        let app = Router::new()
            .route("/login/oauth/authorize", get(github_authorize))
            .route("/login/oauth/access_token", post(github_access_token))
            .route("/api/v3/user", get(github_user))
            .route("/api/v3/user/emails", get(github_emails))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, state, task }
    }

    /// The web host, `http://127.0.0.1:<port>`: the OAuth endpoints are
    /// `{web_url}/login/oauth/authorize` and `{web_url}/login/oauth/access_token`.
    pub fn web_url(&self) -> String {
        self.state.lock().unwrap().web_url.clone()
    }

    /// The REST API, `{web_url}/api/v3` (no trailing slash).
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.web_url())
    }

    /// The user the next authorizations sign in (codes and tokens already issued keep theirs):
    /// `emails` as (address, primary, verified); the primary one is the public one.
    pub fn set_user(&self, id: u64, login: &str, name: &str, emails: &[(&str, bool, bool)]) {
        self.state.lock().unwrap().user = GithubUser {
            id,
            login: login.to_owned(),
            name: name.to_owned(),
            emails: emails
                .iter()
                .map(|&(email, primary, verified)| (email.to_owned(), primary, verified))
                .collect(),
        };
    }

    /// Suspends the account: from now on `/user` and `/user/emails` answer 403 `{"message":
    /// "Sorry. Your account was suspended.", ...}` to every token (the web flow still works).
    pub fn suspend(&self) {
        self.state.lock().unwrap().suspended = true;
    }

    /// The requests the token endpoint received, refused ones included.
    pub fn token_requests(&self) -> u64 {
        self.state.lock().unwrap().token_requests
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn github_authorize(
    State(state): State<SharedGithub>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = pairs(query.unwrap_or_default().as_bytes());
    let mut state = state.lock().unwrap();
    if param(&query, "client_id") != Some(state.client_id.as_str()) {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    // GitHub falls back on the app's callback URL; this app has none.
    let Some(Ok(redirect_uri)) = param(&query, "redirect_uri").map(Url::parse) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri missing or invalid").into_response();
    };
    let code_challenge = param(&query, "code_challenge");
    if code_challenge.is_some() && param(&query, "code_challenge_method") != Some("S256") {
        return (
            StatusCode::BAD_REQUEST,
            "code_challenge_method must be S256",
        )
            .into_response();
    }
    let scopes = param(&query, "scope")
        .unwrap_or_default()
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let code: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    let grant = GithubGrant {
        redirect_uri: param(&query, "redirect_uri").unwrap().to_owned(),
        code_challenge: code_challenge.map(str::to_owned),
        scopes,
        user: state.user.clone(),
    };
    state.codes.insert(code.clone(), grant);
    let mut answer = vec![("code", code.as_str())];
    answer.extend(param(&query, "state").map(|s| ("state", s)));
    redirect(with_query(&redirect_uri, &answer))
}

async fn github_access_token(
    State(state): State<SharedGithub>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    state.token_requests += 1;
    // GitHub takes the parameters in the query string as well as in the body.
    let mut form = pairs(query.unwrap_or_default().as_bytes());
    form.extend(pairs(&body));
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let answer = |pairs: &[(&str, &str)]| {
        if json {
            let object: serde_json::Map<String, Value> = pairs
                .iter()
                .map(|&(k, v)| (k.to_owned(), json!(v)))
                .collect();
            Json(Value::Object(object)).into_response()
        } else {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            (
                [(
                    header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded; charset=utf-8",
                )],
                body,
            )
                .into_response()
        }
    };
    // Errors are answered with 200, as GitHub does.
    let error = |error: &str, description: &str, anchor: &str| {
        answer(&[
            ("error", error),
            ("error_description", description),
            ("error_uri", &format!("{GITHUB_TOKEN_ERRORS}#{anchor}")),
        ])
    };
    if !authenticates(&state.client_id, &state.client_secret, &headers, &form) {
        return error(
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
            "incorrect-client-credentials",
        );
    }
    let bad_code = || {
        error(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
            "bad-verification-code",
        )
    };
    if param(&form, "grant_type").is_some_and(|g| g != "authorization_code") {
        return error(
            "unsupported_grant_type",
            "The grant type is not supported.",
            "unsupported-grant-type",
        );
    }
    // Used once, whatever the outcome.
    let Some(grant) = param(&form, "code").and_then(|code| state.codes.remove(code)) else {
        return bad_code();
    };
    if param(&form, "redirect_uri").is_some_and(|uri| uri != grant.redirect_uri) {
        return error(
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
            "redirect-uri-mismatch2",
        );
    }
    if let Some(challenge) = &grant.code_challenge
        && param(&form, "code_verifier").map(s256).as_ref() != Some(challenge)
    {
        return bad_code();
    }
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(36)
        .map(char::from)
        .collect();
    let token = format!("gho_{token}");
    let scope = grant.scopes.join(",");
    state.tokens.insert(
        token.clone(),
        GithubToken {
            scopes: grant.scopes,
            user: grant.user,
        },
    );
    answer(&[
        ("access_token", &token),
        ("token_type", "bearer"),
        ("scope", &scope),
    ])
}

/// A GitHub REST error.
fn github_error(status: StatusCode, message: &str, documentation_url: &str) -> Response {
    (
        status,
        Json(json!({
            "message": message,
            "documentation_url": documentation_url,
            "status": status.as_u16().to_string(),
        })),
    )
        .into_response()
}

/// The token of a REST request, checked as GitHub checks it, or the answer refusing it.
fn github_caller<'a>(
    state: &'a GithubState,
    headers: &HeaderMap,
) -> Result<&'a GithubToken, Box<Response>> {
    if !headers.contains_key(header::USER_AGENT) {
        return Err(Box::new(
            (
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a \
             User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). \
             Check https://developer.github.com for other possible causes.\n",
        )
            .into_response(),
        ));
    }
    let Some(token) = bearer(headers, &["bearer", "token"]).and_then(|t| state.tokens.get(&t))
    else {
        return Err(Box::new(github_error(
            StatusCode::UNAUTHORIZED,
            "Bad credentials",
            "https://docs.github.com/rest",
        )));
    };
    if state.suspended {
        return Err(Box::new(github_error(
            StatusCode::FORBIDDEN,
            "Sorry. Your account was suspended.",
            "https://docs.github.com/rest",
        )));
    }
    Ok(token)
}

/// A REST answer, with the scopes of the token in `X-OAuth-Scopes` as GitHub sends them.
fn github_answer(token: &GithubToken, body: Value) -> Response {
    ([("x-oauth-scopes", token.scopes.join(", "))], Json(body)).into_response()
}

async fn github_user(State(state): State<SharedGithub>, headers: HeaderMap) -> Response {
    let state = state.lock().unwrap();
    let token = match github_caller(&state, &headers) {
        Ok(token) => token,
        Err(answer) => return *answer,
    };
    let user = &token.user;
    let public_email = user
        .emails
        .iter()
        .find(|(_, primary, _)| *primary)
        .map(|(email, _, _)| email.clone());
    let web = &state.web_url;
    github_answer(
        token,
        json!({
            "login": user.login,
            "id": user.id,
            "node_id": format!("U_fake{}", user.id),
            "avatar_url": format!("{web}/avatars/u/{}", user.id),
            "gravatar_id": "",
            "url": format!("{web}/api/v3/users/{}", user.login),
            "html_url": format!("{web}/{}", user.login),
            "type": "User",
            "user_view_type": "public",
            "site_admin": false,
            "name": user.name,
            "company": null,
            "blog": "",
            "location": null,
            "email": public_email,
            "hireable": null,
            "bio": null,
            "twitter_username": null,
            "public_repos": 0,
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "created_at": "2011-01-25T18:44:36Z",
            "updated_at": "2024-01-01T00:00:00Z",
        }),
    )
}

async fn github_emails(State(state): State<SharedGithub>, headers: HeaderMap) -> Response {
    let state = state.lock().unwrap();
    let token = match github_caller(&state, &headers) {
        Ok(token) => token,
        Err(answer) => return *answer,
    };
    if !token
        .scopes
        .iter()
        .any(|s| s == "user:email" || s == "user")
    {
        return github_error(
            StatusCode::NOT_FOUND,
            "Not Found",
            "https://docs.github.com/rest/users/emails#list-email-addresses-for-the-authenticated-user",
        );
    }
    let emails: Vec<Value> = token
        .user
        .emails
        .iter()
        .map(|(email, primary, verified)| {
            json!({
                "email": email,
                "primary": primary,
                "verified": verified,
                "visibility": if *primary { json!("public") } else { Value::Null },
            })
        })
        .collect();
    github_answer(token, Value::Array(emails))
}

#[cfg(test)]
mod tests {
    use super::*;

    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    const CLIENT: &str = "client-1";
    /// A secret that changes when form-urlencoded.
    const SECRET: &str = "s3cret:with/odd+chars%";
    const REDIRECT: &str = "http://127.0.0.1:9/callback?tenant=a%20b";
    const VERIFIER: &str = "a-code-verifier-of-at-least-43-characters-0123456789";

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn form_encode(value: &str) -> String {
        url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
    }

    /// The query of the redirection `answer`, checked to go back to `REDIRECT`.
    fn redirected(answer: &reqwest::Response) -> HashMap<String, String> {
        assert_eq!(answer.status(), StatusCode::FOUND);
        let location = answer.headers()[header::LOCATION].to_str().unwrap();
        let location = Url::parse(location).unwrap();
        assert_eq!(location.path(), "/callback");
        location.query_pairs().into_owned().collect()
    }

    async fn authorize(issuer: &MisbehavingIssuer, challenge: Option<&str>) -> reqwest::Response {
        let mut query = vec![
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid email profile"),
            ("state", "the-state"),
            ("nonce", "the-nonce"),
        ];
        if let Some(challenge) = challenge {
            query.extend([
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ]);
        }
        client()
            .get(format!("{}/authorize", issuer.issuer()))
            .query(&query)
            .send()
            .await
            .unwrap()
    }

    async fn authorized_code(issuer: &MisbehavingIssuer) -> String {
        let answer = authorize(issuer, Some(&s256(VERIFIER))).await;
        let query = redirected(&answer);
        assert_eq!(query["state"], "the-state");
        assert_eq!(query["tenant"], "a b");
        query["code"].clone()
    }

    /// A token request authenticated by HTTP Basic, urlencoded as RFC 6749 says.
    async fn exchange(issuer: &MisbehavingIssuer, code: &str, verifier: &str) -> reqwest::Response {
        client()
            .post(format!("{}/token", issuer.issuer()))
            .basic_auth(form_encode(CLIENT), Some(form_encode(SECRET)))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap()
    }

    async fn id_token(issuer: &MisbehavingIssuer) -> String {
        let code = authorized_code(issuer).await;
        let answer = exchange(issuer, &code, VERIFIER).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().await.unwrap();
        body["id_token"].as_str().unwrap().to_owned()
    }

    fn parts(token: &str) -> (Value, Value, String) {
        let mut parts = token.split('.');
        let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
        let claims = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
        let signature = parts.next().unwrap().to_owned();
        assert!(parts.next().is_none());
        (
            serde_json::from_slice(&header).unwrap(),
            serde_json::from_slice(&claims).unwrap(),
            signature,
        )
    }

    async fn jwks_key(issuer: &MisbehavingIssuer) -> (String, DecodingKey) {
        let jwks: JwkSet = client()
            .get(format!("{}/jwks", issuer.issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jwks.keys.len(), 1);
        let jwk = &jwks.keys[0];
        let kid = jwk.common.key_id.clone().unwrap();
        (kid, DecodingKey::from_jwk(jwk).unwrap())
    }

    fn validation(issuer: &MisbehavingIssuer) -> Validation {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[CLIENT]);
        validation.set_issuer(&[issuer.issuer()]);
        validation.leeway = 0;
        validation
    }

    #[tokio::test]
    async fn issuer_happy_flow() {
        let issuer = MisbehavingIssuer::start(CLIENT, SECRET).await;
        let base = issuer.issuer();
        assert!(!base.ends_with('/'));
        let discovery: Value = client()
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["issuer"], base);
        assert_eq!(discovery["token_endpoint"], format!("{base}/token"));
        assert_eq!(discovery["jwks_uri"], format!("{base}/jwks"));
        assert_eq!(
            discovery["code_challenge_methods_supported"],
            json!(["S256"])
        );

        let id_token = id_token(&issuer).await;
        let sent = issuer.last_authorize_query().unwrap();
        assert!(sent.contains(&("code_challenge_method".to_owned(), "S256".to_owned())));
        assert!(sent.contains(&("nonce".to_owned(), "the-nonce".to_owned())));
        assert_eq!(issuer.token_requests(), 1);

        let (kid, key) = jwks_key(&issuer).await;
        let header = jsonwebtoken::decode_header(&id_token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        let claims = jsonwebtoken::decode::<Value>(&id_token, &key, &validation(&issuer))
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "subject-1");
        assert_eq!(claims["azp"], CLIENT);
        assert_eq!(claims["nonce"], "the-nonce");
        assert_eq!(claims["email"], "person@example.test");
        assert_eq!(claims["email_verified"], true);

        // Another account, by client_secret_post, and the userinfo of its access token.
        issuer.set_account("subject-2", "other@example.test", false);
        let code = authorized_code(&issuer).await;
        let answer: Value = client()
            .post(format!("{base}/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["token_type"], "Bearer");
        assert_eq!(answer["expires_in"], 300);
        let userinfo: Value = client()
            .get(format!("{base}/userinfo"))
            .bearer_auth(answer["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(userinfo["sub"], "subject-2");
        assert_eq!(userinfo["email_verified"], false);
        let unknown = client()
            .get(format!("{base}/userinfo"))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn issuer_refuses_replays_pkce_mismatches_and_bad_clients() {
        let issuer = MisbehavingIssuer::start(CLIENT, SECRET).await;
        let code = authorized_code(&issuer).await;
        assert_eq!(
            exchange(&issuer, &code, VERIFIER).await.status(),
            StatusCode::OK
        );
        let replay = exchange(&issuer, &code, VERIFIER).await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
        let body: Value = replay.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");

        let code = authorized_code(&issuer).await;
        let mismatch = exchange(
            &issuer,
            &code,
            "another-verifier-of-at-least-43-characters-xyz",
        )
        .await;
        assert_eq!(mismatch.status(), StatusCode::BAD_REQUEST);
        let body: Value = mismatch.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");

        let wrong_secret = client()
            .post(format!("{}/token", issuer.issuer()))
            .basic_auth(CLIENT, Some("wrong"))
            .form(&[("grant_type", "authorization_code"), ("code", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_secret.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(issuer.token_requests(), 4);

        let wrong_client = client()
            .get(format!("{}/authorize", issuer.issuer()))
            .query(&[("client_id", "other"), ("redirect_uri", REDIRECT)])
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_client.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn issuer_defects() {
        let issuer = MisbehavingIssuer::start(CLIENT, SECRET).await;
        let (kid, key) = jwks_key(&issuer).await;

        issuer.set_defect(Defect::AlgNone);
        let token = id_token(&issuer).await;
        assert!(token.ends_with('.'));
        let (header, claims, signature) = parts(&token);
        assert_eq!(header, json!({"alg": "none"}));
        assert_eq!(claims["nonce"], "the-nonce");
        assert!(signature.is_empty());

        issuer.set_defect(Defect::WrongKey);
        let token = id_token(&issuer).await;
        let (header, _, _) = parts(&token);
        assert_eq!(header["kid"], kid.as_str());
        assert_eq!(header["alg"], "ES256");
        let refused = jsonwebtoken::decode::<Value>(&token, &key, &validation(&issuer));
        assert_eq!(
            refused.unwrap_err().kind(),
            &jsonwebtoken::errors::ErrorKind::InvalidSignature
        );

        let now = chrono::Utc::now().timestamp();
        for (defect, check) in [
            (Defect::WrongAudience, "aud"),
            (Defect::Expired, "exp"),
            (Defect::WrongNonce, "nonce"),
            (Defect::WrongIssuer, "iss"),
        ] {
            issuer.set_defect(defect);
            let token = id_token(&issuer).await;
            // Well signed, wrong in one claim.
            let mut lax = validation(&issuer);
            lax.validate_aud = false;
            lax.validate_exp = false;
            lax.iss = None;
            let claims = jsonwebtoken::decode::<Value>(&token, &key, &lax)
                .unwrap()
                .claims;
            match check {
                "aud" => {
                    assert_eq!(claims["aud"], WRONG_AUDIENCE);
                    assert_eq!(claims["azp"], WRONG_AUDIENCE);
                }
                "exp" => {
                    assert!(claims["exp"].as_i64().unwrap() < now - 3000);
                    assert!(claims["iat"].as_i64().unwrap() <= now - 3600);
                }
                "nonce" => assert_eq!(claims["nonce"], WRONG_NONCE),
                _ => assert_eq!(claims["iss"], WRONG_ISSUER),
            }
            // The nonce is the client's to check; the rest, the JWT validation's.
            let strict = jsonwebtoken::decode::<Value>(&token, &key, &validation(&issuer));
            assert_eq!(strict.is_ok(), check == "nonce", "{defect:?}");
        }

        issuer.set_defect(Defect::InvalidGrant);
        let code = authorized_code(&issuer).await;
        let refused = exchange(&issuer, &code, VERIFIER).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");

        issuer.set_defect(Defect::AccessDenied);
        let query = redirected(&authorize(&issuer, Some(&s256(VERIFIER))).await);
        assert_eq!(query["error"], "access_denied");
        assert_eq!(query["state"], "the-state");
        assert_eq!(query["tenant"], "a b");
        assert!(!query.contains_key("code"));
    }

    const GH_CLIENT: &str = "Iv1.gh-client";
    const GH_SECRET: &str = "gh-secret";

    async fn github_code(github: &FakeGithub, challenge: Option<&str>) -> String {
        let mut query = vec![
            ("client_id", GH_CLIENT),
            ("redirect_uri", REDIRECT),
            ("scope", "read:user user:email"),
            ("state", "gh-state"),
        ];
        if let Some(challenge) = challenge {
            query.extend([
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ]);
        }
        let answer = client()
            .get(format!("{}/login/oauth/authorize", github.web_url()))
            .query(&query)
            .send()
            .await
            .unwrap();
        let query = redirected(&answer);
        assert_eq!(query["state"], "gh-state");
        query["code"].clone()
    }

    /// A token request with the client's credentials in the body, answered in JSON.
    async fn github_exchange(github: &FakeGithub, code: &str, verifier: Option<&str>) -> Value {
        let mut form = vec![
            ("client_id", GH_CLIENT),
            ("client_secret", GH_SECRET),
            ("code", code),
            ("redirect_uri", REDIRECT),
        ];
        form.extend(verifier.map(|v| ("code_verifier", v)));
        let answer = client()
            .post(format!("{}/login/oauth/access_token", github.web_url()))
            .header(header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        answer.json().await.unwrap()
    }

    async fn github_get(github: &FakeGithub, path: &str, token: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", github.api_url()))
            .header(header::USER_AGENT, "idp-tests")
            .header(header::AUTHORIZATION, format!("token {token}"))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn github_happy_flow() {
        let github = FakeGithub::start(GH_CLIENT, GH_SECRET).await;
        assert_eq!(github.api_url(), format!("{}/api/v3", github.web_url()));
        let code = github_code(&github, Some(&s256(VERIFIER))).await;
        let answer = github_exchange(&github, &code, Some(VERIFIER)).await;
        let token = answer["access_token"].as_str().unwrap();
        assert!(token.starts_with("gho_"));
        assert_eq!(answer["token_type"], "bearer");
        assert_eq!(answer["scope"], "read:user,user:email");

        let user = client()
            .get(format!("{}/user", github.api_url()))
            .header(header::USER_AGENT, "idp-tests")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), StatusCode::OK);
        let user: Value = user.json().await.unwrap();
        assert_eq!(user["id"], 4242);
        assert_eq!(user["login"], "octocat");
        assert_eq!(user["email"], "octocat@example.test");
        let emails: Value = github_get(&github, "/user/emails", token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            emails,
            json!([{"email": "octocat@example.test", "primary": true, "verified": true, "visibility": "public"}])
        );

        let no_agent = client()
            .get(format!("{}/user", github.api_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(no_agent.status(), StatusCode::FORBIDDEN);
        let unknown = github_get(&github, "/user", "gho_unknown").await;
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        let body: Value = unknown.json().await.unwrap();
        assert_eq!(body["message"], "Bad credentials");

        // Another user, HTTP Basic, no PKCE, a form-encoded answer.
        github.set_user(
            7,
            "hubot",
            "Hubot",
            &[
                ("hubot@old.example.test", false, true),
                ("hubot@example.test", true, false),
            ],
        );
        let code = github_code(&github, None).await;
        let answer = client()
            .post(format!("{}/login/oauth/access_token", github.web_url()))
            .basic_auth(GH_CLIENT, Some(GH_SECRET))
            .form(&[("code", code.as_str()), ("redirect_uri", REDIRECT)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let answer: HashMap<String, String> = url::form_urlencoded::parse(answer.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(answer["token_type"], "bearer");
        let token = &answer["access_token"];
        let user: Value = github_get(&github, "/user", token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(user["id"], 7);
        assert_eq!(user["email"], "hubot@example.test");
        let emails: Value = github_get(&github, "/user/emails", token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(emails[0]["visibility"], Value::Null);
        assert_eq!(emails[1]["verified"], false);
        assert_eq!(github.token_requests(), 2);

        github.suspend();
        let suspended = github_get(&github, "/user", token).await;
        assert_eq!(suspended.status(), StatusCode::FORBIDDEN);
        let body: Value = suspended.json().await.unwrap();
        assert_eq!(body["message"], "Sorry. Your account was suspended.");
    }

    #[tokio::test]
    async fn github_refuses_with_200() {
        let github = FakeGithub::start(GH_CLIENT, GH_SECRET).await;
        let code = github_code(&github, Some(&s256(VERIFIER))).await;
        assert!(github_exchange(&github, &code, Some(VERIFIER)).await["access_token"].is_string());
        let replay = github_exchange(&github, &code, Some(VERIFIER)).await;
        assert_eq!(replay["error"], "bad_verification_code");
        assert_eq!(
            replay["error_description"],
            "The code passed is incorrect or expired."
        );
        assert!(
            replay["error_uri"]
                .as_str()
                .unwrap()
                .starts_with("https://docs.github.com/")
        );

        let code = github_code(&github, Some(&s256(VERIFIER))).await;
        let mismatch = github_exchange(&github, &code, Some("not-the-verifier")).await;
        assert_eq!(mismatch["error"], "bad_verification_code");

        let code = github_code(&github, None).await;
        let wrong_secret: Value = client()
            .post(format!("{}/login/oauth/access_token", github.web_url()))
            .header(header::ACCEPT, "application/json")
            .form(&[
                ("client_id", GH_CLIENT),
                ("client_secret", "wrong"),
                ("code", &code),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(wrong_secret["error"], "incorrect_client_credentials");
        assert_eq!(github.token_requests(), 4);

        let unknown_client = client()
            .get(format!("{}/login/oauth/authorize", github.web_url()))
            .query(&[("client_id", "other"), ("redirect_uri", REDIRECT)])
            .send()
            .await
            .unwrap();
        assert_eq!(unknown_client.status(), StatusCode::NOT_FOUND);
    }
}
