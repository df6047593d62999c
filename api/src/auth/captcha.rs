//! CAPTCHA tokens checked with a siteverify-compatible provider (Cloudflare Turnstile, hCaptcha
//! and reCAPTCHA share the protocol): a form POST of `secret`, `response` (the token) and
//! `remoteip`, answered `{"success": bool, "error-codes": [...]}`.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// How long the provider may take to answer before the check fails closed.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest token a request may carry (Turnstile's are at most 2048 characters); the routes
/// refuse longer ones before any is passed on.
pub const MAX_TOKEN_LEN: usize = 2048;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptchaError {
    /// The provider refused the token (wrong, expired, used, or for another site).
    #[error("the CAPTCHA token was refused")]
    Refused,
    /// The provider could not be asked, or refused idp's own credentials: the check fails
    /// closed.
    #[error("the CAPTCHA provider cannot be asked: {0}")]
    Unavailable(String),
}

/// The provider's answer.
#[derive(Debug, Deserialize)]
struct SiteVerify {
    success: bool,
    #[serde(default, rename = "error-codes")]
    error_codes: Vec<String>,
}

/// Checks tokens with one provider.
#[derive(Clone)]
pub struct Verifier {
    client: reqwest::Client,
    url: Url,
    secret: SecretString,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier of `url` (`CAPTCHA_VERIFY_URL`) with idp's `secret` (`CAPTCHA_SECRET`).
    pub fn new(url: Url, secret: SecretString) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(VERIFY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            url,
            secret,
        })
    }

    /// Asks the provider whether `token`, solved by the client at `remote_ip`, is good.
    pub async fn verify(&self, token: &str, remote_ip: Option<IpAddr>) -> Result<(), CaptchaError> {
        let remote_ip = remote_ip.map(|ip| ip.to_string());
        let mut form = vec![("secret", self.secret.expose_secret()), ("response", token)];
        if let Some(ip) = remote_ip.as_deref() {
            form.push(("remoteip", ip));
        }
        let answer = self
            .client
            .post(self.url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| CaptchaError::Unavailable(without_url(&e)))?;
        if !answer.status().is_success() {
            return Err(CaptchaError::Unavailable(format!(
                "it answered {}",
                answer.status()
            )));
        }
        let verdict: SiteVerify = answer.json().await.map_err(|e| {
            CaptchaError::Unavailable(format!("unreadable answer: {}", without_url(&e)))
        })?;
        if verdict.success {
            return Ok(());
        }
        // The provider refusing idp itself is a misconfiguration, not the client's fault.
        if verdict
            .error_codes
            .iter()
            .any(|code| code == "missing-input-secret" || code == "invalid-input-secret")
        {
            return Err(CaptchaError::Unavailable(
                "it refused CAPTCHA_SECRET".to_owned(),
            ));
        }
        Err(CaptchaError::Refused)
    }
}

/// A request error without its URL (the error's text is logged).
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_decode() {
        "not a siteverify answer"
    } else {
        "request failed"
    };
    kind.to_owned()
}
