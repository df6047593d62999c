//! Adaptive CAPTCHA: after `CAPTCHA_AFTER_FAILURES` failed sign-ins of an account or from a
//! client address, sign-in, registration and the email requests need a `captcha_token`, which
//! the provider's siteverify endpoint must accept (Cloudflare Turnstile, hCaptcha and reCAPTCHA
//! share the protocol: a form POST of `secret`, `response` and `remoteip`, answered with JSON
//! whose `success` says yes or no).
//!
//! Whether a CAPTCHA is needed depends on the failures counted, never on whether the account
//! exists: failures of an address no account has are counted under its pseudonym like a real
//! account's. A verifier that cannot be reached, or answers with anything but a verdict, fails
//! closed: the request is refused with 503 rather than let through unchecked.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// How long a siteverify call may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest token passed on to the provider (Turnstile's are up to 2048 characters).
pub const MAX_TOKEN_LEN: usize = 4096;

/// The CAPTCHA settings in force.
#[derive(Clone)]
pub struct Captcha {
    /// Failures after which a token is needed.
    pub after_failures: u32,
    verify_url: Url,
    secret: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Captcha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captcha")
            .field("after_failures", &self.after_failures)
            .field("verify_url", &self.verify_url.as_str())
            .finish_non_exhaustive()
    }
}

/// What became of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider accepted it.
    Passed,
    /// The provider refused it (wrong, expired, used already, or for another site).
    Refused,
}

/// The provider could not give a verdict (unreachable, slow, or an answer that is not one).
#[derive(Debug, thiserror::Error)]
#[error("the CAPTCHA verifier gave no verdict: {0}")]
pub struct VerifierDown(String);

#[derive(Debug, Deserialize)]
struct SiteVerify {
    success: bool,
}

impl Captcha {
    /// The settings; `None` (no CAPTCHA ever) without a verify URL or with no failure
    /// threshold.
    pub fn new(
        after_failures: u32,
        verify_url: Option<&Url>,
        secret: Option<&SecretString>,
    ) -> Result<Option<Self>, String> {
        let Some(verify_url) = verify_url else {
            return Ok(None);
        };
        if after_failures == 0 {
            return Ok(None);
        }
        let secret = secret
            .map(ExposeSecret::expose_secret)
            .filter(|s| !s.trim().is_empty())
            .ok_or("CAPTCHA_VERIFY_URL is set but CAPTCHA_SECRET is not")?;
        let client = reqwest::Client::builder()
            .timeout(VERIFY_TIMEOUT)
            .build()
            .map_err(|e| format!("CAPTCHA client: {e}"))?;
        Ok(Some(Self {
            after_failures,
            verify_url: verify_url.clone(),
            secret: secret.to_owned(),
            client,
        }))
    }

    /// Asks the provider about `token`, presented from `remote_ip`.
    pub async fn verify(
        &self,
        token: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<Verdict, VerifierDown> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(Verdict::Refused);
        }
        let mut form = vec![
            ("secret", self.secret.clone()),
            ("response", token.to_owned()),
        ];
        if let Some(ip) = remote_ip {
            form.push(("remoteip", ip.to_string()));
        }
        let started = std::time::Instant::now();
        let answer = self
            .client
            .post(self.verify_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| VerifierDown(e.without_url().to_string()))?;
        metrics::histogram!("idp_captcha_verify_seconds").record(started.elapsed().as_secs_f64());
        if !answer.status().is_success() {
            return Err(VerifierDown(format!("status {}", answer.status())));
        }
        let verdict: SiteVerify = answer
            .json()
            .await
            .map_err(|e| VerifierDown(format!("not a siteverify answer: {}", e.without_url())))?;
        Ok(if verdict.success {
            Verdict::Passed
        } else {
            Verdict::Refused
        })
    }
}
