//! Federated sign-in, the account side: finding or making the account of an identity an
//! external provider asserted, linking and unlinking identities, and the one-time codes that
//! hand a finished sign-in to a front end. (The protocol side, OpenID Connect and GitHub, is
//! `crate::federation`.)
//!
//! An identity is found by the blind index of its provider's subject (`external_identities`);
//! the subject and address themselves are only in the log, sealed under the person's key. A
//! first sign-in makes an account, or links an existing one when the provider asserts a
//! verified address and is trusted for linking (`trust_email_verified`); otherwise the person
//! signs in with their password and links from their account.

use chrono::{DateTime, Utc};
use idp_events::StreamId;
use idp_events::identity::email::Email;
use idp_events::identity::login::FailureReason;
use idp_events::identity::user::{self, User, UserEvent};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::register::NewAccount;
use super::sign_in::FederatedSession;
use super::{Identity, IdentityError, SignIn};
use crate::auth::tokens;
use crate::extract::ClientContext;

/// How long a `login_code` can be exchanged for tokens.
pub const LOGIN_CODE_TTL_SECS: i64 = 60;

/// Who an external identity provider says the person is. Personal data: `Debug` shows only the
/// provider.
#[derive(Clone)]
pub struct Assertion {
    /// The provider's id (`AUTH_PROVIDERS`).
    pub provider: String,
    /// The provider's stable id of the person.
    pub subject: String,
    /// The address the provider gave, if any (and well-formed).
    pub email: Option<Email>,
    /// Whether the provider asserted the address as verified *and* is trusted for that
    /// (`trust_email_verified`).
    pub email_trusted: bool,
    /// A name to show, if the provider gave one.
    pub name: Option<String>,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("provider", &self.provider)
            .field("email_trusted", &self.email_trusted)
            .finish_non_exhaustive()
    }
}

/// A linked identity as its owner and administrators see it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "0193a0c4-5b1e-7c3a-9f1d-2a4b6c8d0e21", "provider": "github", "email": "ada@example.com",
                          "linked_at": "2026-12-01T10:00:00Z", "last_used_at": "2026-12-07T09:00:00Z"}))]
pub struct IdentityView {
    /// The link's id (`DELETE /v1/account/identities/{id}`).
    pub id: Uuid,
    /// The provider's id.
    pub provider: String,
    /// The address the provider gave when it was linked.
    pub email: Option<String>,
    /// When it was linked.
    pub linked_at: DateTime<Utc>,
    /// When it last signed in.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl Identity {
    /// The account of `assertion`: the one its identity is linked to; else, on a first sign-in,
    /// an existing account of its address (trusted providers only) or a new one. Refuses an
    /// account that is locked, erased or not verified, as a password sign-in would, after the
    /// same rate limit per client address.
    pub async fn federated_account(
        &self,
        ctx: &ClientContext,
        assertion: &Assertion,
    ) -> Result<User, IdentityError> {
        let _turn = self.shares.turn(&ctx.ip_key()).await;
        self.limit(&[(
            self.rate_key("login:ip", &ctx.ip_key()),
            self.limits.login_per_ip,
        )])
        .await?;
        let mut found = None;
        for _ in 0..3 {
            let outcome = match self
                .user_of_identity(&assertion.provider, &assertion.subject)
                .await?
            {
                Some(user_id) => self.load_user(user_id).await,
                None => self.first_federated_sign_in(ctx, assertion).await,
            };
            match outcome {
                // Someone made the account or linked the identity meanwhile (the same person's
                // other tab, say): look again.
                Err(err) if err.is_conflict() || matches!(err, IdentityError::IdentityTaken(_)) => {
                    continue;
                }
                other => {
                    found = Some(other?);
                    break;
                }
            }
        }
        let account = found.ok_or(IdentityError::KeptChanging)?;
        let meta = ctx.metadata(StreamId::user(account.id));
        if account.erased {
            return Err(IdentityError::InvalidCredentials);
        }
        if account.is_locked(Utc::now()) {
            self.record_failure(&account, FailureReason::Locked, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "locked").increment(1);
            return Err(IdentityError::InvalidCredentials);
        }
        if !account.email_verified {
            self.record_failure(&account, FailureReason::Unverified, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "unverified").increment(1);
            return Err(IdentityError::EmailUnverified);
        }
        sqlx::query(
            "update external_identities set last_used_at = now()
              where provider = $1 and user_id = $2",
        )
        .bind(&assertion.provider)
        .bind(account.id)
        .execute(&self.pool)
        .await?;
        Ok(account)
    }

    /// A first sign-in of `assertion`'s identity: a new account, or an existing one of its
    /// address when the provider is trusted for it.
    async fn first_federated_sign_in(
        &self,
        ctx: &ClientContext,
        assertion: &Assertion,
    ) -> Result<User, IdentityError> {
        let Some(email) = &assertion.email else {
            return Err(IdentityError::ProviderEmailMissing);
        };
        let Some(owner) = self.user_id_by_email(email).await? else {
            let id = Uuid::now_v7();
            self.create_account(
                NewAccount {
                    id,
                    email,
                    display_name: assertion.name.clone(),
                    roles: vec![user::ROLE_USER.into()],
                    verified: assertion.email_trusted,
                    password_hash: None,
                    identity: Some(assertion),
                },
                &ctx.metadata(StreamId::user(id)),
            )
            .await?;
            metrics::counter!("idp_federated_accounts_total", "outcome" => "created").increment(1);
            return self.load_user(id).await;
        };
        if !assertion.email_trusted {
            return Err(IdentityError::LinkRequired(assertion.provider.clone()));
        }
        let account = self.load_user(owner).await?;
        let identity_id = Uuid::now_v7();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let events = if account.email_verified {
            user::link_identity(
                &account,
                identity_id,
                &assertion.provider,
                &assertion.subject,
                Some(email.as_str()),
            )?
        } else {
            // Whoever made the unverified account proved nothing; the provider proved the
            // address: the account becomes this person's, without the password it had.
            for sql in [
                "delete from credentials where user_id = $1",
                "delete from pending_registrations where user_id = $1",
                "delete from external_identities where user_id = $1",
            ] {
                sqlx::query(sql).bind(owner).execute(&mut *tx).await?;
            }
            user::claim_by_provider(
                &account,
                identity_id,
                &assertion.provider,
                &assertion.subject,
                email.as_str(),
            )
        };
        self.record_link(&mut tx, ctx, &account, &events, identity_id, assertion)
            .await?;
        tx.commit().await?;
        metrics::counter!("idp_federated_accounts_total", "outcome" => "linked").increment(1);
        self.load_user(owner).await
    }

    /// Ends a federated sign-in of `account`: the second-factor challenge if it has one on,
    /// else a session bounded by `session`.
    pub async fn finish_federated(
        &self,
        ctx: &ClientContext,
        account: &User,
        session: &FederatedSession,
    ) -> Result<SignIn, IdentityError> {
        let meta = ctx.metadata(StreamId::user(account.id));
        if account.second_factor {
            metrics::counter!("idp_auth_logins_total", "outcome" => "second_factor_required")
                .increment(1);
            return self.challenge(account, meta, Some(session)).await;
        }
        let pair = self
            .start_session(account, ctx, None, Some(session))
            .await?;
        metrics::counter!("idp_auth_logins_total", "outcome" => "success").increment(1);
        Ok(SignIn::Tokens(pair))
    }

    /// A one-time code for [`Identity::exchange_login_code`], valid for
    /// [`LOGIN_CODE_TTL_SECS`], that finishes the federated sign-in of `user_id`.
    pub async fn issue_login_code(
        &self,
        user_id: Uuid,
        session: &FederatedSession,
    ) -> Result<String, IdentityError> {
        let (code, digest) = tokens::new_opaque_token();
        sqlx::query(
            "with expired as (
                 delete from federated_login_codes where expires_at < now() - interval '1 hour'
             )
             insert into federated_login_codes
                    (code_digest, user_id, provider, session_expires_at, expires_at)
             values ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(&digest)
        .bind(user_id)
        .bind(&session.provider)
        .bind(session.session_until)
        .bind(LOGIN_CODE_TTL_SECS as f64)
        .execute(&self.pool)
        .await?;
        Ok(code)
    }

    /// Finishes the federated sign-in a `login_code` stands for (once, within its minute).
    pub async fn exchange_login_code(
        &self,
        ctx: &ClientContext,
        code: &str,
    ) -> Result<SignIn, IdentityError> {
        let found: Option<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
            "delete from federated_login_codes where code_digest = $1 and expires_at > now()
             returning user_id, provider, session_expires_at",
        )
        .bind(tokens::hash_opaque_token(code))
        .fetch_optional(&self.pool)
        .await?;
        let Some((user_id, provider, session_until)) = found else {
            return Err(IdentityError::LoginCodeRefused);
        };
        let account = self.load_user(user_id).await?;
        if account.erased || account.is_locked(Utc::now()) {
            return Err(IdentityError::InvalidCredentials);
        }
        self.finish_federated(
            ctx,
            &account,
            &FederatedSession {
                provider,
                session_until,
            },
        )
        .await
    }

    /// Links `assertion`'s identity to the signed-in `user_id` (linking what is linked to it
    /// already changes nothing).
    pub async fn link_identity(
        &self,
        ctx: &ClientContext,
        user_id: Uuid,
        assertion: &Assertion,
    ) -> Result<IdentityView, IdentityError> {
        match self
            .user_of_identity(&assertion.provider, &assertion.subject)
            .await?
        {
            Some(holder) if holder == user_id => {}
            Some(_) => return Err(IdentityError::IdentityTaken(assertion.provider.clone())),
            None => {
                let account = self.load_user(user_id).await?;
                let identity_id = Uuid::now_v7();
                let events = user::link_identity(
                    &account,
                    identity_id,
                    &assertion.provider,
                    &assertion.subject,
                    assertion.email.as_ref().map(Email::as_str),
                )?;
                let mut conn = self.pool.acquire().await?;
                let mut tx = conn.begin().await?;
                self.record_link(&mut tx, ctx, &account, &events, identity_id, assertion)
                    .await?;
                tx.commit().await?;
            }
        }
        self.identities(user_id)
            .await?
            .into_iter()
            .find(|view| view.provider == assertion.provider)
            .ok_or(IdentityError::NotFound)
    }

    /// The identities linked to `user_id`, oldest first.
    pub async fn identities(&self, user_id: Uuid) -> Result<Vec<IdentityView>, IdentityError> {
        let account = self.load_user(user_id).await?;
        self.identities_of(&account).await
    }

    /// The identities linked to `account`, oldest first.
    pub async fn identities_of(&self, account: &User) -> Result<Vec<IdentityView>, IdentityError> {
        let used: Vec<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
            "select identity_id, last_used_at from external_identities where user_id = $1",
        )
        .bind(account.id)
        .fetch_all(&self.pool)
        .await?;
        Ok(account
            .identities
            .iter()
            .cloned()
            .map(|identity| IdentityView {
                last_used_at: used
                    .iter()
                    .find(|(id, _)| *id == identity.id)
                    .and_then(|(_, at)| *at),
                id: identity.id,
                provider: identity.provider,
                email: identity.email,
                linked_at: identity.linked_at,
            })
            .collect())
    }

    /// Unlinks identity `identity_id` of `user_id`, unless the account could then not sign in
    /// at all (no password, no other identity).
    pub async fn unlink_identity(
        &self,
        ctx: &ClientContext,
        user_id: Uuid,
        identity_id: Uuid,
    ) -> Result<(), IdentityError> {
        let account = self.load_user(user_id).await?;
        let has_password: bool =
            sqlx::query_scalar("select exists (select 1 from credentials where user_id = $1)")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?;
        let events = user::unlink_identity(&account, identity_id, has_password)?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.append_user_in(
            &mut tx,
            &account,
            &events,
            ctx.metadata(StreamId::user(user_id)),
        )
        .await?;
        sqlx::query("delete from external_identities where identity_id = $1 and user_id = $2")
            .bind(identity_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The account `subject` of `provider` is linked to, if any.
    async fn user_of_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<Uuid>, IdentityError> {
        Ok(sqlx::query_scalar(
            "select user_id from external_identities
              where provider = $1 and subject_index = any($2)",
        )
        .bind(provider)
        .bind(
            self.identity_index
                .candidates(&identity_key(provider, subject)),
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Appends `events` (which link `identity_id`) to `account`'s stream and records the link,
    /// in `conn`'s transaction.
    async fn record_link(
        &self,
        conn: &mut PgConnection,
        ctx: &ClientContext,
        account: &User,
        events: &[UserEvent],
        identity_id: Uuid,
        assertion: &Assertion,
    ) -> Result<(), IdentityError> {
        self.append_user_in(
            &mut *conn,
            account,
            events,
            ctx.metadata(StreamId::user(account.id)),
        )
        .await?;
        self.insert_identity(conn, identity_id, account.id, assertion)
            .await
    }

    /// Records the link `identity_id` of `assertion`'s identity to `user_id` in `conn`'s
    /// transaction; [`IdentityError::IdentityTaken`] if another account got it meanwhile.
    pub(super) async fn insert_identity(
        &self,
        conn: &mut PgConnection,
        identity_id: Uuid,
        user_id: Uuid,
        assertion: &Assertion,
    ) -> Result<(), IdentityError> {
        let inserted = sqlx::query(
            "insert into external_identities (identity_id, user_id, provider, subject_index)
             values ($1, $2, $3, $4)",
        )
        .bind(identity_id)
        .bind(user_id)
        .bind(&assertion.provider)
        .bind(
            self.identity_index
                .index(&identity_key(&assertion.provider, &assertion.subject)),
        )
        .execute(conn)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(IdentityError::IdentityTaken(assertion.provider.clone()))
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// What the blind index of an identity is computed over: the provider and its subject.
fn identity_key(provider: &str, subject: &str) -> String {
    format!("{provider}\n{subject}")
}
