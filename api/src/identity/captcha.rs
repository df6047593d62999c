//! Adaptive CAPTCHA: after `CAPTCHA_AFTER_FAILURES` failed sign-ins within the hour for an
//! account or from a client address, sign-in, registration and the email requests (forgotten
//! password, verification link again) need a CAPTCHA token the provider accepts.
//!
//! The failures are counted per address whether or not an account has it, and checked before
//! anything about the account is looked up, so being asked for a CAPTCHA says nothing about an
//! account existing. Off unless `CAPTCHA_VERIFY_URL` is set: then nothing is counted either.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idp_events::identity::email::Email;

use super::{Identity, IdentityError};
use crate::auth::captcha::{CaptchaError, Verifier};
use crate::extract::ClientContext;

/// How long a failed sign-in counts (in SQL).
const FAILURE_MEMORY: &str = "interval '1 hour'";

/// The CAPTCHA policy of an [`Identity`].
#[derive(Debug)]
pub struct Captcha {
    verifier: Verifier,
    after_failures: u32,
    /// Failures counted, to sweep old rows now and then.
    counted: AtomicU64,
}

impl Captcha {
    /// Ask for a token once an account or an address has `after_failures` failures.
    pub fn new(verifier: Verifier, after_failures: u32) -> Self {
        Self {
            verifier,
            after_failures,
            counted: AtomicU64::new(0),
        }
    }
}

impl Identity {
    /// The same service, asking for CAPTCHAs as `captcha` says.
    #[must_use]
    pub fn with_captcha(mut self, captcha: Captcha) -> Self {
        self.captcha = Some(Arc::new(captcha));
        self
    }

    /// The failure counters a request of `ctx` about `email` reads and adds to: the account's
    /// and the client address's, under blind indexes.
    fn failure_keys(&self, ctx: &ClientContext, email: &Email) -> Vec<String> {
        vec![
            self.rate_key("failures:account", email.as_str()),
            self.rate_key("failures:ip", &ctx.ip_key()),
        ]
    }

    /// Lets the request go on if the account and the address have fewer failures than the
    /// threshold, or if `token` is a CAPTCHA token the provider accepts. Refused: no token
    /// ([`IdentityError::CaptchaRequired`]), a refused one ([`IdentityError::CaptchaRefused`]),
    /// the provider unreachable ([`IdentityError::CaptchaUnavailable`]: fail closed).
    pub(super) async fn pass_captcha(
        &self,
        ctx: &ClientContext,
        email: &Email,
        token: Option<&str>,
    ) -> Result<(), IdentityError> {
        let Some(captcha) = &self.captcha else {
            return Ok(());
        };
        let failures: i32 = sqlx::query_scalar(&format!(
            "select coalesce(max(failures), 0) from sign_in_failures
              where key = any($1) and last_failure_at > now() - {FAILURE_MEMORY}"
        ))
        .bind(self.failure_keys(ctx, email))
        .fetch_one(&self.pool)
        .await?;
        if u32::try_from(failures).unwrap_or(0) < captcha.after_failures {
            return Ok(());
        }
        let outcome = match token.filter(|t| !t.is_empty()) {
            None => Err(IdentityError::CaptchaRequired),
            Some(token) => match captcha.verifier.verify(token, ctx.ip).await {
                Ok(()) => Ok(()),
                Err(CaptchaError::Refused) => Err(IdentityError::CaptchaRefused),
                Err(CaptchaError::Unavailable(why)) => {
                    tracing::warn!(reason = %why, "the CAPTCHA provider cannot be asked; refusing");
                    Err(IdentityError::CaptchaUnavailable)
                }
            },
        };
        let label = match &outcome {
            Ok(()) => "passed",
            Err(IdentityError::CaptchaRequired) => "required",
            Err(IdentityError::CaptchaRefused) => "refused",
            Err(_) => "unavailable",
        };
        metrics::counter!("idp_auth_captcha_total", "outcome" => label).increment(1);
        outcome
    }

    /// Counts a failed sign-in of the client of `ctx` for `email` (both counters).
    pub(super) async fn count_sign_in_failure(
        &self,
        ctx: &ClientContext,
        email: &Email,
    ) -> Result<(), IdentityError> {
        let Some(captcha) = &self.captcha else {
            return Ok(());
        };
        sqlx::query(&format!(
            "insert into sign_in_failures (key, failures, last_failure_at)
             select key, 1, now() from unnest($1::text[]) as key
             on conflict (key) do update
                set failures = case when sign_in_failures.last_failure_at > now() - {FAILURE_MEMORY}
                                    then sign_in_failures.failures + 1 else 1 end,
                    last_failure_at = now()"
        ))
        .bind(self.failure_keys(ctx, email))
        .execute(&self.pool)
        .await?;
        if captcha.counted.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
            let swept = sqlx::query(&format!(
                "delete from sign_in_failures where last_failure_at < now() - {FAILURE_MEMORY}"
            ))
            .execute(&self.pool)
            .await;
            if let Err(err) = swept {
                tracing::debug!(error = %err, "sign-in failure sweep failed");
            }
        }
        Ok(())
    }

    /// Forgets the failures of `email`'s account after it signed in (the address's stay: one
    /// good account must not clear the way for guesses at others).
    pub(super) async fn forget_account_failures(&self, email: &Email) -> Result<(), IdentityError> {
        if self.captcha.is_none() {
            return Ok(());
        }
        sqlx::query("delete from sign_in_failures where key = $1")
            .bind(self.rate_key("failures:account", email.as_str()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
