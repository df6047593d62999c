//! Federated sign-in benchmark: `scripts/bench federation` runs it against a scratch database.
//!
//! Starts `oidc-provider` (the OpenID Certified Node.js provider the tests use) and the real
//! API in this process, signs a browser in once at the provider, and then, `BENCH_SAMPLES`
//! times, alternates:
//!
//! - a **callback**: the API's start, the provider's authorization (its session skips the
//!   form), then `GET /v1/auth/oidc/{provider}/callback` timed alone: the flow's checks, the code
//!   exchange at the provider's token endpoint, discovery from cache, the `id_token`'s
//!   validation, the account lookup and the session with its events;
//! - a **bare token request** to the same token endpoint, with a code of its own: what the
//!   provider's part of a callback costs, measured beside it.
//!
//! The table shows both and, per pair, the callback minus the bare request: idp's own time.
//!
//! Environment: `DATABASE_URL` (wiped: a scratch database), `BENCH_SAMPLES` (default 300).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idp_testkit::oidc_provider::OidcProvider;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod support;

use support::{BenchApi, env_u64, percentile};

/// What the API believes its public base is; the browser takes redirects there to the API.
const PUBLIC_BASE: &str = "http://127.0.0.1:9";

struct Browser {
    client: reqwest::Client,
    api: String,
}

impl Browser {
    /// The `Location` of a redirect answer to GET `url`.
    async fn redirect(&self, url: &str) -> anyhow::Result<String> {
        let response = self.client.get(url).send().await?;
        if !response.status().is_redirection() {
            bail!("GET {url} answered {}", response.status());
        }
        let location = response
            .headers()
            .get("location")
            .context("a redirect without Location")?
            .to_str()?;
        Ok(reqwest::Url::parse(url)?.join(location)?.to_string())
    }

    /// Follows redirects from `url` to the first one on `prefix`; signs in at the provider's
    /// form as `login` if it shows one.
    async fn follow_to(
        &self,
        mut url: String,
        prefix: &str,
        login: &str,
    ) -> anyhow::Result<String> {
        for _ in 0..20 {
            let response = self.client.get(&url).send().await?;
            if response.status().is_redirection() {
                let location = response.headers()["location"].to_str()?.to_owned();
                let next = reqwest::Url::parse(&url)?.join(&location)?.to_string();
                if next.starts_with(prefix) {
                    return Ok(next);
                }
                url = next;
                continue;
            }
            let html = response.text().await?;
            let action = html
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .with_context(|| format!("no form at {url}: {html}"))?;
            let action = reqwest::Url::parse(&url)?.join(action)?.to_string();
            let posted = self
                .client
                .post(&action)
                .form(&[("login", login), ("password", OidcProvider::PASSWORD)])
                .send()
                .await?;
            let location = posted.headers()["location"].to_str()?.to_owned();
            url = reqwest::Url::parse(&action)?.join(&location)?.to_string();
        }
        bail!("too many redirects")
    }

    /// One callback, timed: start and authorize untimed, then the callback alone.
    async fn callback(&self) -> anyhow::Result<Duration> {
        let to = self
            .redirect(&format!("{}/v1/auth/oidc/corp/start", self.api))
            .await?;
        let callback = self.follow_to(to, PUBLIC_BASE, "bench").await?;
        let callback = callback.replacen(PUBLIC_BASE, &self.api, 1);
        let started = Instant::now();
        let response = self.client.get(&callback).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let took = started.elapsed();
        if status != 200 || !body["access_token"].is_string() {
            bail!("the callback answered {status}: {body}");
        }
        Ok(took)
    }

    /// One bare token request to `provider`, timed, with a code of its own.
    async fn bare_token(&self, provider: &OidcProvider) -> anyhow::Result<Duration> {
        let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let redirect_uri = format!("{PUBLIC_BASE}/bare");
        let mut authorize = reqwest::Url::parse(&format!("{}/auth", provider.issuer))?;
        authorize
            .query_pairs_mut()
            .append_pair("client_id", OidcProvider::CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid email profile")
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("state", "bench")
            .append_pair("nonce", "bench")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let back = self
            .follow_to(authorize.to_string(), &redirect_uri, "bench")
            .await?;
        let code = reqwest::Url::parse(&back)?
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .context("no code")?;
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/token", provider.issuer))
            .basic_auth(OidcProvider::CLIENT_ID, Some(OidcProvider::CLIENT_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &verifier),
            ])
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let took = started.elapsed();
        if status != 200 || !body["id_token"].is_string() {
            bail!("the token endpoint answered {status}: {body}");
        }
        Ok(took)
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let samples = env_u64("BENCH_SAMPLES", 300) as usize;
    let url = support::database_url();
    support::scratch_database(&url).await?;
    let provider = OidcProvider::start().await;
    provider
        .put_account("bench", "bench@example.test", true)
        .await;
    let providers = json!([{"id": "corp", "kind": "oidc", "issuer": provider.issuer,
                            "client_id": OidcProvider::CLIENT_ID,
                            "client_secret": OidcProvider::CLIENT_SECRET,
                            "trust_email_verified": true}])
    .to_string();
    let api = BenchApi::start_with(
        &url,
        &[
            "--auth-providers",
            &providers,
            "--public-base-url",
            PUBLIC_BASE,
        ],
    )
    .await?;
    let browser = Browser {
        client: reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        api: api.base.clone(),
    };
    // Warm up: the first sign-in makes the account and the provider's session.
    for _ in 0..20 {
        browser.callback().await?;
        browser.bare_token(&provider).await?;
    }
    let mut callbacks = Vec::with_capacity(samples);
    let mut tokens = Vec::with_capacity(samples);
    let mut own = Vec::with_capacity(samples);
    for _ in 0..samples {
        let callback = browser.callback().await?;
        let token = browser.bare_token(&provider).await?;
        callbacks.push(callback);
        tokens.push(token);
        own.push(callback.saturating_sub(token));
    }
    println!(
        "\nfederated sign-in: {samples} callbacks against oidc-provider on this machine, each beside a bare token request\n"
    );
    println!(
        "{:<58} {:>9} {:>9} {:>9}",
        "measurement", "p50 ms", "p99 ms", "max ms"
    );
    for (name, values) in [
        ("provider token endpoint, bare (baseline)", &mut tokens),
        ("GET /v1/auth/oidc/corp/callback, whole", &mut callbacks),
        (
            "callback minus its pair's bare token request (idp's own)",
            &mut own,
        ),
    ] {
        println!(
            "{name:<58} {:>9.2} {:>9.2} {:>9.2}",
            percentile(values, 0.50),
            percentile(values, 0.99),
            percentile(values, 1.0)
        );
    }
    let own_p99 = percentile(&mut own, 0.99);
    println!(
        "\nidp's own p99: {own_p99:.2} ms (target <= 50 ms: {})",
        if own_p99 <= 50.0 { "met" } else { "not met" }
    );
    api.stop().await?;
    Ok(())
}
