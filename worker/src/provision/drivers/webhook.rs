//! The `webhook` driver: tells a configured URL that a project was provisioned or deleted, with
//! a signed JSON POST.
//!
//! Each request carries `Idempotency-Key: <project id>-<event>`, the same on every retry, so the
//! receiver can drop repeats; `X-Idp-Timestamp` (Unix seconds); and, when a secret is set,
//! `X-Idp-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` (see
//! [`signature`]), which lets the receiver check origin and integrity and refuse stale replays.
//! Redirects are not followed: a 3xx is a misconfigured URL.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use url::Url;
use uuid::Uuid;

use super::{DriverError, StepInput};

type HmacSha256 = Hmac<Sha256>;

/// The event of a provisioned project.
pub const PROVISIONED: &str = "project.provisioned";
/// The event of a deleted project.
pub const DELETED: &str = "project.deleted";

/// The value of `X-Idp-Signature` for a request: `sha256=` and the hex HMAC-SHA256 of
/// `"<timestamp>.<body>"` under `secret`. A receiver recomputes it from the raw body and the
/// `X-Idp-Timestamp` header and compares (in constant time).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body of a webhook request.
#[derive(Serialize)]
struct Payload<'a> {
    event: &'a str,
    project_id: Uuid,
    name: &'a str,
    owner_id: Uuid,
    template: &'a str,
    template_version: u32,
    parameters: &'a BTreeMap<String, String>,
}

/// Posts project events to one URL.
#[derive(Clone)]
pub struct WebhookDriver {
    url: Option<Url>,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    /// Building fails only when TLS cannot be set up; that is reported at the first call.
    client: Result<reqwest::Client, String>,
}

impl fmt::Debug for WebhookDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookDriver")
            .field("url", &self.url.as_ref().map(redacted))
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookDriver {
    /// A driver posting to `url` (none: not configured), signing with `secret` (none or empty:
    /// unsigned), giving up on a request after `timeout`.
    pub fn new(url: Option<Url>, secret: Option<Vec<u8>>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("idp-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string());
        Self {
            url,
            secret: secret.filter(|secret| !secret.is_empty()),
            timeout,
            client,
        }
    }

    /// Whether a URL is configured (otherwise the step is skipped).
    pub fn is_configured(&self) -> bool {
        self.url.is_some()
    }

    /// Posts `project.provisioned`. Returns `{"status": <HTTP status>}`.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn provision(&self, input: &StepInput<'_>) -> Result<serde_json::Value, DriverError> {
        let status = self.post(input, PROVISIONED).await?;
        Ok(json!({ "status": status.as_u16() }))
    }

    /// Posts `project.deleted`.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn deprovision(&self, input: &StepInput<'_>) -> Result<(), DriverError> {
        self.post(input, DELETED).await.map(|_| ())
    }

    async fn post(&self, input: &StepInput<'_>, event: &str) -> Result<StatusCode, DriverError> {
        let Some(url) = &self.url else {
            return Err(DriverError::Permanent("no webhook URL configured".into()));
        };
        let client = self.client.as_ref().map_err(|e| {
            DriverError::Permanent(format!("webhook: the HTTP client cannot be set up: {e}"))
        })?;
        let body = serde_json::to_vec(&Payload {
            event,
            project_id: input.project_id,
            name: input.project_name,
            owner_id: input.owner_id,
            template: input.template,
            template_version: input.template_version,
            parameters: input.parameters,
        })
        .map_err(|e| DriverError::Permanent(format!("webhook: encoding the body failed: {e}")))?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or_default()
            .to_string();

        let mut request = client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", format!("{}-{event}", input.project_id))
            .header("X-Idp-Timestamp", &timestamp);
        if let Some(secret) = &self.secret {
            request = request.header("X-Idp-Signature", signature(secret, &timestamp, &body));
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| self.request_failed(url, e))?;

        let status = response.status();
        let code = status.as_u16();
        if status.is_success() {
            Ok(status)
        } else if matches!(code, 408 | 425 | 429) || status.is_server_error() {
            Err(DriverError::Transient(format!("webhook answered {code}")))
        } else {
            Err(DriverError::Permanent(format!("webhook answered {code}")))
        }
    }

    /// The request got no answer. The text names the URL without credentials or query (which
    /// may carry a token) and never the secret.
    fn request_failed(&self, url: &Url, error: reqwest::Error) -> DriverError {
        let target = redacted(url);
        if error.is_timeout() {
            return DriverError::Transient(format!(
                "webhook POST to {target}: no answer within {} ms",
                self.timeout.as_millis()
            ));
        }
        let permanent = error.is_builder();
        let error = error.without_url();
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        let message = format!("webhook POST to {target} failed: {reason}");
        if permanent {
            DriverError::Permanent(message)
        } else {
            DriverError::Transient(message)
        }
    }
}

/// The URL without user, password, query and fragment.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_of_timestamp_dot_body() {
        // HMAC-SHA256("key", "1.{}"), computed independently with openssl.
        assert_eq!(
            signature(b"key", "1", b"{}"),
            "sha256=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn described_urls_have_no_credentials_or_query() {
        let url = Url::parse("https://user:hunter2@hooks.example.com/in?token=abc#x").unwrap();
        assert_eq!(redacted(&url), "https://hooks.example.com/in");
    }

    #[test]
    fn debug_output_hides_the_secret_and_the_credentials() {
        let url = Url::parse("https://user:hunter2@hooks.example.com/in").unwrap();
        let driver =
            WebhookDriver::new(Some(url), Some(b"s3cret".to_vec()), Duration::from_secs(1));
        let debug = format!("{driver:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret"),
            "{debug}"
        );
    }
}
