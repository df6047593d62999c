//! Registering an account, and confirming its address (and with it the registration the link
//! was sent for).

use chrono::Utc;
use idp_events::identity::email::Email;
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::identity::user::{self, UserEvent};
use idp_events::{Append, AppendError, Metadata, StreamId};
use sqlx::Connection;
use uuid::Uuid;

use super::{EMAIL_SCOPE, Identity, IdentityError, roles_grant_admin, set_admin};
use crate::auth::password;
use crate::extract::ClientContext;

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
                        id,
                        email,
                        display_name.clone(),
                        vec![user::ROLE_USER.into()],
                        false,
                        &hash,
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

    /// Creates account `id` holding `email`, with its password hash, and lists it among the
    /// administrators if `roles` make it one. [`IdentityError::EmailTaken`] if another account
    /// holds the address.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_account(
        &self,
        id: Uuid,
        email: &Email,
        display_name: Option<String>,
        roles: Vec<String>,
        verified: bool,
        password_hash: &str,
        metadata: &Metadata,
    ) -> Result<(), IdentityError> {
        let events = user::register(email.as_str(), display_name, roles, verified);
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
        sqlx::query("insert into credentials (user_id, password_hash) values ($1, $2)")
            .bind(id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
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
            let moved = sqlx::query(
                "update credentials c set password_hash = p.password_hash, updated_at = now()
                   from pending_registrations p
                  where p.registration_id = $1 and c.user_id = p.user_id and p.user_id = $2",
            )
            .bind(registration)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved != 1 {
                return Err(IdentityError::MissingPendingPassword(registration));
            }
        }
        sqlx::query("delete from pending_registrations where user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
