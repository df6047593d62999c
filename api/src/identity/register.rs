//! Registering an account, and confirming its address (and with it the registration the link
//! was sent for).

use chrono::Utc;
use idp_events::identity::email::Email;
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::identity::user::{self, UserEvent};
use idp_events::{Append, AppendError, Metadata, StreamId};
use sqlx::Connection;
use uuid::Uuid;

use super::federated::Assertion;
use super::{EMAIL_SCOPE, Identity, IdentityError, roles_grant_admin, set_admin};
use crate::auth::password;
use crate::extract::ClientContext;

/// An account to create ([`Identity::create_account`]).
pub(super) struct NewAccount<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its address.
    pub email: &'a Email,
    /// A name to show.
    pub display_name: Option<String>,
    /// Its roles.
    pub roles: Vec<String>,
    /// Whether the address counts as confirmed already.
    pub verified: bool,
    /// The hash of its password (`None`: it signs in through a provider only).
    pub password_hash: Option<&'a str>,
    /// The provider identity it is made for, linked with it.
    pub identity: Option<&'a Assertion>,
}

impl Identity {
    /// Registers an account. A taken address gets, instead, a pending registration of its own
    /// if its account is unverified, or a notice to its owner if verified. All three answer the
    /// same after the same work: the limits, one hash, one lookup and one transaction.
    pub async fn register(
        &self,
        ctx: &ClientContext,
        email: &Email,
        password: &str,
        display_name: Option<String>,
        captcha_token: Option<&str>,
    ) -> Result<(), IdentityError> {
        password::validate(password).map_err(|e| IdentityError::weak_password("password", &e))?;
        let turn = self.shares.turn(&ctx.ip_key()).await;
        self.limit(&[
            (
                self.rate_key("register:ip", &ctx.ip_key()),
                self.limits.email_per_ip,
            ),
            (
                self.rate_key("register:account", email.as_str()),
                self.limits.email_per_account,
            ),
        ])
        .await?;
        self.pass_captcha(ctx, email, captcha_token).await?;
        let hash = self.hasher.hash(password).await?;
        drop(turn);
        for _ in 0..3 {
            let outcome = match self.user_id_by_email(email).await? {
                None => {
                    let id = Uuid::now_v7();
                    self.create_account(
                        NewAccount {
                            id,
                            email,
                            display_name: display_name.clone(),
                            roles: vec![user::ROLE_USER.into()],
                            verified: false,
                            password_hash: Some(&hash),
                            identity: None,
                        },
                        &ctx.metadata(StreamId::user(id)),
                    )
                    .await
                }
                Some(owner) => {
                    self.register_again(ctx, owner, display_name.clone(), &hash)
                        .await
                }
            };
            match outcome {
                // Someone registered or changed the account meanwhile: decide again.
                Err(err) if err.is_conflict() => continue,
                other => return other,
            }
        }
        Err(IdentityError::KeptChanging)
    }

    /// A registration of the address of account `owner`: see [`user::register_again`]. The
    /// pending registration's password waits in `pending_registrations`.
    async fn register_again(
        &self,
        ctx: &ClientContext,
        owner: Uuid,
        display_name: Option<String>,
        hash: &str,
    ) -> Result<(), IdentityError> {
        let account = self.load_user(owner).await?;
        let registration_id = Uuid::now_v7();
        let events = user::register_again(&account, registration_id, display_name);
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.append_user_in(&mut tx, &account, &events, ctx.metadata("anonymous"))
            .await?;
        if !account.email_verified {
            sqlx::query(
                "insert into pending_registrations (registration_id, user_id, password_hash)
                 values ($1, $2, $3)",
            )
            .bind(registration_id)
            .bind(owner)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates `account`, with its password hash or its linked identity (or both), and lists it
    /// among the administrators if its roles make it one. [`IdentityError::EmailTaken`] if
    /// another account holds the address.
    pub(super) async fn create_account(
        &self,
        account: NewAccount<'_>,
        metadata: &Metadata,
    ) -> Result<(), IdentityError> {
        let NewAccount {
            id,
            email,
            display_name,
            roles,
            verified,
            password_hash,
            identity,
        } = account;
        let mut events = user::register(email.as_str(), display_name, roles, verified);
        let identity_id = Uuid::now_v7();
        if let Some(assertion) = identity {
            events.push(user::identity_linked(
                identity_id,
                &assertion.provider,
                &assertion.subject,
                assertion.email.as_ref().map(Email::as_str),
            ));
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let appended = self
            .store
            .append_in(
                &mut tx,
                Append::to(StreamId::user(id))
                    .about(id)
                    .events(events.iter().map(UserEvent::to_new_event))
                    .claim(EMAIL_SCOPE, self.email_claim(email))
                    .metadata(metadata.clone()),
            )
            .await;
        match appended {
            Ok(_) => {}
            Err(AppendError::ReservationTaken { .. }) => {
                return Err(IdentityError::EmailTaken);
            }
            Err(other) => return Err(other.into()),
        }
        if let Some(hash) = password_hash {
            sqlx::query("insert into credentials (user_id, password_hash) values ($1, $2)")
                .bind(id)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(assertion) = identity {
            self.insert_identity(&mut tx, identity_id, id, assertion)
                .await?;
        }
        if roles_grant_admin(&events) == Some(true) {
            set_admin(&mut tx, id, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Confirms an address with the token from the verification email, and with it the
    /// registration that link was sent for: a pending registration's password replaces the
    /// account's in the same transaction.
    pub async fn verify_email(
        &self,
        ctx: &ClientContext,
        token: &str,
    ) -> Result<(), IdentityError> {
        let invalid = IdentityError::invalid_token;
        let event_id = one_time_token::open(&self.email_keys, Purpose::VerifyEmail, token)
            .map_err(|_| invalid())?;
        let user_id = self
            .user_of_event(event_id, "VerificationRequested")
            .await?
            .ok_or_else(invalid)?;
        let account = self.load_user(user_id).await?;
        let events = user::verify_email(&account, event_id, Utc::now()).map_err(|_| invalid())?;
        let registration = account.registration_of(event_id).flatten();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.append_user_in(
            &mut tx,
            &account,
            &events,
            ctx.metadata(StreamId::user(user_id)),
        )
        .await
        // The account changed since it was read: the link may have been used meanwhile.
        .map_err(|e| if e.is_conflict() { invalid() } else { e })?;
        if let Some(registration) = registration {
            // An account made by a federated sign-in has no password until then.
            let moved = sqlx::query(
                "insert into credentials (user_id, password_hash)
                 select user_id, password_hash from pending_registrations
                  where registration_id = $1 and user_id = $2
                 on conflict (user_id) do update
                    set password_hash = excluded.password_hash, updated_at = now()",
            )
            .bind(registration)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved != 1 {
                return Err(IdentityError::MissingPendingPassword(registration));
            }
            // The identities linked before went with the events (see `user::verify_email`).
            sqlx::query("delete from external_identities where user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("delete from pending_registrations where user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
