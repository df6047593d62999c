//! Requests for an email about an account (the verification link again, a password reset),
//! answered before they are carried out so that neither the answer nor its timing tells
//! whether the address has an account.

use chrono::Utc;
use idp_events::identity::address_digest;
use idp_events::identity::email::Email;
use idp_events::identity::email_request::{self, Requested, Unanswered};
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::{Append, ExpectedVersion, StreamId};
use uuid::Uuid;

use super::{Identity, IdentityError};
use crate::extract::ClientContext;

impl Identity {
    /// Sends another verification email if the account exists and is unverified.
    pub async fn resend_verification(
        &self,
        ctx: &ClientContext,
        email: &Email,
        captcha_token: Option<&str>,
    ) -> Result<(), IdentityError> {
        self.request_email(
            ctx,
            email,
            captcha_token,
            Requested::Verification,
            user::request_verification,
        )
        .await
    }

    /// Sends a reset email if the account exists, unless an administrator's lock is in force
    /// (the reset would be refused).
    pub async fn forgot_password(
        &self,
        ctx: &ClientContext,
        email: &Email,
        captcha_token: Option<&str>,
    ) -> Result<(), IdentityError> {
        self.request_email(
            ctx,
            email,
            captcha_token,
            Requested::PasswordReset,
            |account| {
                if account.is_locked_by_admin(Utc::now()) {
                    Vec::new()
                } else {
                    user::request_reset(account)
                }
            },
        )
        .await
    }

    /// A rate-limited request for an email about an account, answered as soon as it passed
    /// the limits (and the CAPTCHA, when failures call for one): what becomes of it (an email; or nothing, because no account has the address
    /// or it needs no such email) is carried out afterwards, so neither the answer nor its
    /// timing tells anything about the address. A request that cannot be carried out (the
    /// database is away) is logged; its sender gets no email and asks again.
    async fn request_email(
        &self,
        ctx: &ClientContext,
        email: &Email,
        captcha_token: Option<&str>,
        requested: Requested,
        decide: fn(&User) -> Vec<UserEvent>,
    ) -> Result<(), IdentityError> {
        let turn = self.shares.turn(&ctx.ip_key()).await;
        self.limit(&[
            (
                self.rate_key("email:ip", &ctx.ip_key()),
                self.limits.email_per_ip,
            ),
            (
                self.rate_key("email:account", email.as_str()),
                self.limits.email_per_account,
            ),
        ])
        .await?;
        self.pass_captcha(ctx, email, captcha_token).await?;
        let this = self.clone();
        let (ctx, email) = (ctx.clone(), email.clone());
        self.background.spawn(async move {
            // The client's turn lasts until its request is carried out.
            let _turn = turn;
            if let Err(error) = this
                .carry_out_email_request(&ctx, &email, requested, decide)
                .await
            {
                tracing::warn!(error = %error, ?requested, "an email request could not be carried out");
            }
        });
        Ok(())
    }

    /// Carries out an email request: the events `decide` makes for the account, or, when it
    /// makes none or there is no account, an `EmailRequestUnanswered` under the address's keyed
    /// digest, so that the log shows every request.
    async fn carry_out_email_request(
        &self,
        ctx: &ClientContext,
        email: &Email,
        requested: Requested,
        decide: fn(&User) -> Vec<UserEvent>,
    ) -> Result<(), IdentityError> {
        let (account, events) = match self.user_id_by_email(email).await? {
            Some(id) => {
                let account = self.load_user(id).await?;
                let events = decide(&account);
                (Some(account), events)
            }
            None => (None, Vec::new()),
        };
        match account {
            Some(account) if !events.is_empty() => {
                self.append_user(&account, &events, ctx.metadata("anonymous"))
                    .await
            }
            account => {
                let reason = if account.is_some() {
                    Unanswered::NothingToSend
                } else {
                    Unanswered::UnknownAccount
                };
                let digest = address_digest::digest(&self.address_digest_keys, email.as_str());
                let stream = StreamId::email_request(&address_digest::stream_name(&digest));
                // The caller's details are sealed under the digest's pseudonym and the day, so
                // this append costs what an answered request's costs.
                let pseudonym = Uuid::from_slice(&digest[..16]).unwrap_or_default();
                if account.is_none() {
                    // An account's request reads the keys of its personal fields: the same
                    // lookup here, as a dummy hash stands in for a missing password.
                    if let Some(keys) = self.store.subject_keys() {
                        keys.for_reading(&[pseudonym])
                            .await
                            .map_err(|e| IdentityError::PersonalData(e.to_string()))?;
                    }
                }
                self.store
                    .append(
                        Append::to(stream)
                            .about(pseudonym)
                            .expecting(ExpectedVersion::Any)
                            .event(email_request::unanswered(
                                requested,
                                reason,
                                &hex::encode(digest),
                            ))
                            .metadata(ctx.metadata("anonymous")),
                    )
                    .await?;
                Ok(())
            }
        }
    }
}
