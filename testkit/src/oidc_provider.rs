//! A real OpenID Connect provider for tests: starts `scripts/oidc-provider/server.mjs`, panva's
//! `oidc-provider` (OpenID Certified) run with Node.js on a free port of 127.0.0.1, and talks
//! to its control API, so tests can make accounts, disable them and count token requests.
//!
//! The provider has one confidential client, [`OidcProvider::CLIENT_ID`] with
//! [`OidcProvider::CLIENT_SECRET`] (`client_secret_basic`; `client_secret_post` works too), for
//! the authorization code flow with PKCE (`S256`, required), scopes `openid email profile`, and
//! any `http://127.0.0.1:PORT/...` or `http://localhost:PORT/...` redirect URI. A browser signs
//! in at `/interaction/UID`: a form posted to `/interaction/UID/login` with the fields `login`
//! (the account's id or email) and `password` ([`OidcProvider::PASSWORD`] unless set). Consent
//! is never asked. A wrong password shows the form again (200); a disabled account ends the
//! authorization with `error=access_denied` at the redirect URI, also when the browser's session
//! is already signed in as it. The session cookie makes a second authorization skip the form.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The provider's npm package: `server.mjs`, the lockfile and, once installed, `node_modules`.
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/oidc-provider");
/// The provider's entry point.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/oidc-provider/server.mjs"
);

/// A running `oidc-provider`, killed when dropped.
#[derive(Debug)]
pub struct OidcProvider {
    /// The issuer, `http://127.0.0.1:PORT` (no trailing slash), as its discovery document and
    /// ID tokens say it.
    pub issuer: String,
    /// The port on 127.0.0.1.
    pub port: u16,
    client: reqwest::Client,
    /// Held for its `kill_on_drop`: the provider ends with this value.
    _child: Child,
}

/// The provider's counters since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ProviderStats {
    /// POST requests to the token endpoint, whatever their outcome.
    pub token_requests: u64,
    /// Requests to the authorization endpoint (`/auth`; not its resumption after a sign-in).
    pub authorization_requests: u64,
    /// Successful sign-ins at the login form.
    pub logins: u64,
}

/// The line `server.mjs` prints once it listens.
#[derive(Deserialize)]
struct Started {
    port: u16,
    issuer: String,
}

impl OidcProvider {
    /// The client id of the provider's one client.
    pub const CLIENT_ID: &'static str = "idp-test";
    /// That client's secret.
    pub const CLIENT_SECRET: &'static str = "idp-test-secret";
    /// The password of accounts made by [`put_account`](Self::put_account).
    pub const PASSWORD: &'static str = "pass";

    /// Starts the provider (`$NODE` or `node`) and waits until it listens. Panics if the npm
    /// packages are not installed (`scripts/test` installs them).
    pub async fn start() -> Self {
        let modules = Path::new(DIR).join("node_modules");
        assert!(
            modules.is_dir(),
            "{} is missing: scripts/test installs it, or run  npm ci  in scripts/oidc-provider",
            modules.display()
        );
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .arg(SCRIPT)
            .args(["--port", "0"])
            .args(["--client-id", Self::CLIENT_ID])
            .args(["--client-secret", Self::CLIENT_SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {node} {SCRIPT}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let status = child.try_wait().ok().flatten();
            panic!(
                "oidc-provider's server.mjs did not report its port (exit status {status:?}; \
                 its output is above)"
            );
        }
        let started: Started = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("oidc-provider's server.mjs printed {line:?}: {e}"));
        Self {
            issuer: started.issuer,
            port: started.port,
            client: reqwest::Client::new(),
            _child: child,
        }
    }

    /// The client id, [`CLIENT_ID`](Self::CLIENT_ID).
    pub fn client_id(&self) -> &'static str {
        Self::CLIENT_ID
    }

    /// The client secret, [`CLIENT_SECRET`](Self::CLIENT_SECRET).
    pub fn client_secret(&self) -> &'static str {
        Self::CLIENT_SECRET
    }

    /// `ISSUER/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// Creates or replaces the account `id` (the ID token's `sub`): enabled, with this email,
    /// no name and the password [`PASSWORD`](Self::PASSWORD).
    pub async fn put_account(&self, id: &str, email: &str, email_verified: bool) {
        self.update_account(
            id,
            json!({
                "email": email,
                "email_verified": email_verified,
                "name": null,
                "password": Self::PASSWORD,
                "disabled": false,
            }),
        )
        .await;
    }

    /// Sets some fields of the account `id`, making it if there is none: any of `email`,
    /// `email_verified`, `name`, `password`, `disabled` (`email` or `name` null removes that
    /// claim). Fields left out keep their value.
    pub async fn update_account(&self, id: &str, fields: serde_json::Value) {
        let path = format!("/test/accounts/{}", url_segment(id));
        self.client
            .put(format!("{}{path}", self.issuer))
            .json(&fields)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("PUT {path} on oidc-provider failed: {e}"));
    }

    /// Disables the account `id`: it can no longer sign in, and a browser signed in as it is
    /// sent back with `error=access_denied`.
    pub async fn disable_account(&self, id: &str) {
        self.update_account(id, json!({ "disabled": true })).await;
    }

    /// Enables the account `id` again.
    pub async fn enable_account(&self, id: &str) {
        self.update_account(id, json!({ "disabled": false })).await;
    }

    /// How many POST requests reached the token endpoint.
    pub async fn token_requests(&self) -> u64 {
        self.stats().await.token_requests
    }

    /// The provider's counters.
    pub async fn stats(&self) -> ProviderStats {
        let path = "/test/stats";
        self.client
            .get(format!("{}{path}", self.issuer))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("GET {path} on oidc-provider failed: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on oidc-provider returned bad JSON: {e}"))
    }
}

/// `s` percent-encoded as one path segment (unreserved characters kept).
fn url_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            write!(out, "%{byte:02X}").expect("writing to a String cannot fail");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
    use reqwest::{Response, StatusCode};

    use super::OidcProvider;

    /// Where the client asks to be sent back; nothing listens there.
    const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
    // RFC 7636, appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    /// A browser, as far as the sign-in needs one: no redirects followed, cookies kept by name
    /// (paths ignored).
    struct Browser {
        client: reqwest::Client,
        cookies: BTreeMap<String, String>,
    }

    impl Browser {
        /// A browser with no cookies.
        fn new() -> Self {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            Self {
                client,
                cookies: BTreeMap::new(),
            }
        }

        /// Sends `request` with the cookies kept so far, and keeps those it sets.
        async fn send(&mut self, request: reqwest::RequestBuilder) -> Response {
            let cookie: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let response = request
                .header(COOKIE, cookie.join("; "))
                .send()
                .await
                .unwrap();
            for value in response.headers().get_all(SET_COOKIE) {
                let value = value.to_str().unwrap();
                let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
                let (name, cookie) = pair.split_once('=').unwrap();
                if attributes.contains("1970") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), cookie.to_owned());
                }
            }
            response
        }

        /// Where a 303 sends the browser, made absolute.
        fn location(provider: &OidcProvider, response: &Response) -> String {
            assert_eq!(response.status(), StatusCode::SEE_OTHER, "{response:?}");
            let location = response.headers()[LOCATION].to_str().unwrap();
            if location.starts_with('/') {
                format!("{}{location}", provider.issuer)
            } else {
                location.to_owned()
            }
        }

        /// Starts an authorization; returns the first URL that is not the provider's own: the
        /// redirect URI with its query, or the login form's URL when one is shown.
        async fn authorize(&mut self, provider: &OidcProvider) -> String {
            let url = format!(
                "{}/auth?client_id={}&response_type=code&scope=openid%20email%20profile\
                 &redirect_uri={REDIRECT_URI}&state=s1&nonce=n1&code_challenge={CHALLENGE}\
                 &code_challenge_method=S256",
                provider.issuer,
                OidcProvider::CLIENT_ID,
            );
            let response = self.send(self.client.get(url)).await;
            Self::location(provider, &response)
        }

        /// Posts the login form at `interaction` and follows the provider back to the redirect
        /// URI.
        async fn sign_in(
            &mut self,
            provider: &OidcProvider,
            interaction: &str,
            login: &str,
        ) -> String {
            let page = self.send(self.client.get(interaction)).await;
            assert_eq!(page.status(), StatusCode::OK);
            let page = page.text().await.unwrap();
            assert!(
                page.contains(r#"name="login""#) && page.contains(r#"name="password""#),
                "{page}"
            );
            let form = [("login", login), ("password", OidcProvider::PASSWORD)];
            let posted = self
                .send(self.client.post(format!("{interaction}/login")).form(&form))
                .await;
            let resume = Self::location(provider, &posted);
            let resumed = self.send(self.client.get(resume)).await;
            Self::location(provider, &resumed)
        }
    }

    /// The query parameter `name` of `url`.
    fn query_param(url: &str, name: &str) -> Option<String> {
        let url = url::Url::parse(url).unwrap();
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The whole code flow against the real provider, the session kept, a code replayed and
    /// a disabled account refused.
    #[tokio::test]
    async fn signs_in_with_the_code_flow_and_refuses_a_disabled_account() {
        let provider = OidcProvider::start().await;
        let client = reqwest::Client::new();
        let discovery: serde_json::Value = client
            .get(provider.discovery_url())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["issuer"], provider.issuer.as_str());
        assert_eq!(
            discovery["token_endpoint"],
            format!("{}/token", provider.issuer)
        );
        provider
            .put_account("alice", "alice@example.test", true)
            .await;

        let mut browser = Browser::new();
        let interaction = browser.authorize(&provider).await;
        assert!(interaction.starts_with(&format!("{}/interaction/", provider.issuer)));
        let callback = browser.sign_in(&provider, &interaction, "alice").await;
        assert!(callback.starts_with(REDIRECT_URI), "{callback}");
        assert_eq!(query_param(&callback, "state").as_deref(), Some("s1"));
        let code = query_param(&callback, "code").unwrap();

        let exchange = || {
            client
                .post(format!("{}/token", provider.issuer))
                .basic_auth(OidcProvider::CLIENT_ID, Some(OidcProvider::CLIENT_SECRET))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT_URI),
                    ("code_verifier", VERIFIER),
                ])
                .send()
        };
        let tokens: serde_json::Value = exchange().await.unwrap().json().await.unwrap();
        assert!(tokens["id_token"].is_string(), "{tokens}");
        let userinfo: serde_json::Value = client
            .get(discovery["userinfo_endpoint"].as_str().unwrap())
            .bearer_auth(tokens["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(userinfo["sub"], "alice");
        assert_eq!(userinfo["email"], "alice@example.test");
        assert_eq!(userinfo["email_verified"], true);
        let replay = exchange().await.unwrap();
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
        let replay: serde_json::Value = replay.json().await.unwrap();
        assert_eq!(replay["error"], "invalid_grant");
        assert_eq!(provider.token_requests().await, 2);

        // Signed in already: straight back with a code.
        let again = browser.authorize(&provider).await;
        assert!(query_param(&again, "code").is_some(), "{again}");

        provider.disable_account("alice").await;
        let interaction = browser.authorize(&provider).await;
        assert!(interaction.starts_with(&format!("{}/interaction/", provider.issuer)));
        let refused = browser.sign_in(&provider, &interaction, "alice").await;
        assert!(refused.starts_with(REDIRECT_URI), "{refused}");
        assert_eq!(
            query_param(&refused, "error").as_deref(),
            Some("access_denied")
        );
        assert_eq!(provider.stats().await.logins, 1);
    }
}
