//! Passwords: a reset with the link from an email, and a change by the signed-in owner. Both
//! end sessions (all of them, or all but the caller's).

use chrono::Utc;
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::identity::session::RevokeReason;
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::{Append, ExpectedVersion, Metadata, StreamId};
use sqlx::Connection;
use uuid::Uuid;

use super::sessions::lock_sessions;
use super::{Identity, IdentityError, reset_failures};
use crate::auth::password;
use crate::extract::ClientContext;

impl Identity {
    /// Sets a new password with the token from the reset email; every session ends.
    pub async fn reset_password(
        &self,
        ctx: &ClientContext,
        token: &str,
        new_password: &str,
    ) -> Result<(), IdentityError> {
        let invalid = IdentityError::invalid_token;
        let reset_id = one_time_token::open(&self.email_keys, Purpose::ResetPassword, token)
            .map_err(|_| invalid())?;
        password::validate(new_password)
            .map_err(|e| IdentityError::weak_password("new_password", &e))?;
        let user_id = self
            .user_of_event(reset_id, "PasswordResetRequested")
            .await?
            .ok_or_else(invalid)?;
        let account = self.load_user(user_id).await?;
        let events = user::reset_password(&account, reset_id, Utc::now()).map_err(|_| invalid())?;
        let hash = self.hasher.hash(new_password).await?;
        let meta = ctx.metadata(StreamId::user(user_id));
        self.replace_password(
            &account,
            &events,
            &hash,
            None,
            RevokeReason::PasswordReset,
            meta,
        )
        .await
        // The account changed since it was read: the link may have been used meanwhile.
        .map_err(|e| if e.is_conflict() { invalid() } else { e })
    }

    /// Changes the caller's password; the caller's other sessions end.
    pub async fn change_password(
        &self,
        ctx: &ClientContext,
        user_id: Uuid,
        session_id: Uuid,
        current: &str,
        new_password: &str,
    ) -> Result<(), IdentityError> {
        self.limit(&[(
            format!("login:account-id:{user_id}"),
            self.limits.login_per_account,
        )])
        .await?;
        let account = self.load_user(user_id).await?;
        let matches = self.verify_password(user_id, current).await?.matches;
        if !matches {
            return Err(IdentityError::invalid("current_password", "incorrect"));
        }
        password::validate(new_password)
            .map_err(|e| IdentityError::weak_password("new_password", &e))?;
        let hash = self.hasher.hash(new_password).await?;
        let meta = ctx.metadata(StreamId::user(user_id));
        self.replace_password(
            &account,
            &[UserEvent::PasswordChanged],
            &hash,
            Some(session_id),
            RevokeReason::PasswordChanged,
            meta,
        )
        .await
    }

    /// Appends `events` (a new password) and stores `hash` in one transaction; the failures
    /// count starts over and every session but `keep` ends.
    async fn replace_password(
        &self,
        account: &User,
        events: &[UserEvent],
        hash: &str,
        keep: Option<Uuid>,
        reason: RevokeReason,
        meta: Metadata,
    ) -> Result<(), IdentityError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        lock_sessions(&mut tx, account.id).await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::user(account.id))
                    .about(account.id)
                    .expecting(ExpectedVersion::after(account.version))
                    .events(events.iter().map(UserEvent::to_new_event))
                    .metadata(meta.clone()),
            )
            .await?;
        sqlx::query(
            "insert into credentials (user_id, password_hash) values ($1, $2)
             on conflict (user_id) do update set password_hash = excluded.password_hash, updated_at = now()",
        )
        .bind(account.id)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        reset_failures(&mut tx, account.id).await?;
        self.revoke_all(&mut tx, account.id, keep, reason, &meta)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
