//! Account administration: locks, roles, sessions and verification emails by an administrator, the guard
//! that always leaves an administrator who can sign in, and the administrator ensured at start.

use chrono::{DateTime, Utc};
use idp_events::identity::email::Email;
use idp_events::identity::session::RevokeReason;
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::{Append, ExpectedVersion, Metadata, StreamId};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::register::NewAccount;
use super::sessions::lock_sessions;
use super::{Identity, IdentityError, LockOutcome, reset_failures, set_admin};
use crate::auth::password;
use crate::extract::ClientContext;

/// The advisory lock (transaction-level, one fixed key) under which every change that could
/// leave no administrator who can sign in counts the administrators and appends: demotions and
/// locks. Two administrators demoting or locking each other at once are thus serialised, and
/// the second sees the first's change.
const ADMINS_GUARD: &str = "idp.admin_accounts";

impl Identity {
    /// Lifts the lock of `user_id` (an administrator's action, recorded with them as actor).
    pub async fn unlock(
        &self,
        ctx: &ClientContext,
        admin: &str,
        user_id: Uuid,
    ) -> Result<(), IdentityError> {
        let account = self.load_user(user_id).await?;
        let events = user::unlock(&account, Utc::now())?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::user(user_id))
                    .about(user_id)
                    .expecting(ExpectedVersion::after(account.version))
                    .events(events.iter().map(UserEvent::to_new_event))
                    .metadata(ctx.metadata(admin)),
            )
            .await?;
        reset_failures(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sends `user_id` the verification link again, for an administrator (a person whose first
    /// email went astray): `VerificationRequested` with the administrator as actor. Refused for
    /// an address already verified (409) and an erased person (410).
    pub async fn resend_verification_for(
        &self,
        ctx: &ClientContext,
        admin: &str,
        user_id: Uuid,
    ) -> Result<(), IdentityError> {
        let account = self.load_user(user_id).await?;
        if account.erased {
            return Err(IdentityError::Erased);
        }
        let events = user::request_verification(&account);
        if events.is_empty() {
            return Err(IdentityError::AlreadyVerified);
        }
        self.append_user(&account, &events, ctx.metadata(admin))
            .await
    }

    /// Locks `user_id` for an administrator (`None`: until an administrator unlocks it): no
    /// sign-in, and every session of the account ends at once. Refused with a conflict for the
    /// last administrator who can sign in.
    pub async fn lock(
        &self,
        ctx: &ClientContext,
        admin: &str,
        user_id: Uuid,
        until: Option<DateTime<Utc>>,
    ) -> Result<LockOutcome, IdentityError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let (account, other_admins) = self.guard_admins(&mut tx, user_id).await?;
        lock_sessions(&mut tx, user_id).await?;
        let events = user::lock(&account, until, Utc::now(), other_admins)?;
        let meta = ctx.metadata(admin);
        self.append_user_in(&mut tx, &account, &events, meta.clone())
            .await?;
        let sessions_revoked = self
            .revoke_all(&mut tx, user_id, None, RevokeReason::Admin, &meta)
            .await?;
        tx.commit().await?;
        let locked_until = events
            .iter()
            .find_map(|e| match e {
                UserEvent::AccountLocked { until, .. } => Some(*until),
                _ => None,
            })
            .or(account.locked_until)
            .unwrap_or_else(user::indefinitely);
        Ok(LockOutcome {
            locked_until,
            sessions_revoked,
        })
    }

    /// Replaces the roles of `user_id` for an administrator and returns them as they are now.
    /// Refused with a conflict when it would leave no administrator who can sign in.
    pub async fn change_roles(
        &self,
        ctx: &ClientContext,
        admin: &str,
        user_id: Uuid,
        roles: &[String],
    ) -> Result<Vec<String>, IdentityError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let (account, other_admins) = self.guard_admins(&mut tx, user_id).await?;
        // `change_roles` counts the account itself among the administrators.
        let events = user::change_roles(&account, roles, other_admins.saturating_add(1))?;
        self.append_user_in(&mut tx, &account, &events, ctx.metadata(admin))
            .await?;
        tx.commit().await?;
        let mut after = account;
        for event in &events {
            after.apply(event, Uuid::nil(), Utc::now());
        }
        let mut roles = after.roles;
        roles.sort();
        Ok(roles)
    }

    /// Ends every session of `user_id` for an administrator and says how many there were.
    pub async fn revoke_sessions(
        &self,
        ctx: &ClientContext,
        admin: &str,
        user_id: Uuid,
    ) -> Result<usize, IdentityError> {
        self.load_user(user_id).await?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let revoked = self
            .revoke_all(
                &mut tx,
                user_id,
                None,
                RevokeReason::Admin,
                &ctx.metadata(admin),
            )
            .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Takes [`ADMINS_GUARD`] for the rest of `conn`'s transaction, then reads, inside it,
    /// account `user_id` and how many other administrators can sign in now (verified, not
    /// locked). Administrators are listed by `admin_accounts`; only their streams are folded.
    pub(super) async fn guard_admins(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
    ) -> Result<(User, usize), IdentityError> {
        idp_ops::database::lock_until_commit(conn, ADMINS_GUARD).await?;
        let admins: Vec<Uuid> =
            sqlx::query_scalar("select user_id from admin_accounts where user_id <> $1")
                .bind(user_id)
                .fetch_all(&mut *conn)
                .await?;
        let streams: Vec<StreamId> = std::iter::once(user_id)
            .chain(admins.iter().copied())
            .map(StreamId::user)
            .collect();
        let mut histories = self
            .store
            .read_streams_in(conn, &streams)
            .await?
            .into_iter();
        let account = User::fold(user_id, &histories.next().unwrap_or_default());
        if !account.exists() {
            return Err(IdentityError::NotFound);
        }
        let now = Utc::now();
        let other_admins = admins
            .into_iter()
            .zip(histories)
            .map(|(id, events)| User::fold(id, &events))
            .filter(|a| a.has_role(user::ROLE_ADMIN) && a.email_verified && !a.is_locked(now))
            .count();
        Ok((account, other_admins))
    }

    /// Makes sure `email` is an administrator: creates a verified administrator who signs in
    /// with `password` when no account holds the address, and leaves an existing administrator
    /// alone (only healing `admin_accounts`). Any other account holding the address is refused:
    /// whoever registered it first must not become administrator, nor keep their password for
    /// it. Safe to run from several instances.
    pub async fn ensure_admin(
        &self,
        email: &Email,
        password: &str,
    ) -> Result<(), AdminBootstrapError> {
        let meta = Metadata::actor("system");
        for _ in 0..3 {
            if let Some(id) = self.user_id_by_email(email).await? {
                let account = self.load_user(id).await?;
                if !account.has_role(user::ROLE_ADMIN) {
                    return Err(AdminBootstrapError::TakenByAnotherAccount { user_id: id });
                }
                let mut conn = self.pool.acquire().await?;
                let mut tx = conn.begin().await?;
                set_admin(&mut tx, id, true).await?;
                tx.commit().await?;
                return Ok(());
            }
            password::validate(password).map_err(AdminBootstrapError::WeakPassword)?;
            let hash = self.hasher.hash(password).await?;
            let roles = vec![user::ROLE_USER.to_owned(), user::ROLE_ADMIN.to_owned()];
            match self
                .create_account(
                    NewAccount {
                        id: Uuid::now_v7(),
                        email,
                        display_name: None,
                        roles,
                        verified: true,
                        password_hash: Some(&hash),
                        identity: None,
                    },
                    &meta,
                )
                .await
            {
                Err(err) if err.is_conflict() => continue,
                other => return other.map_err(AdminBootstrapError::from),
            }
        }
        Err(AdminBootstrapError::KeptChanging)
    }
}

/// Why the administrator of `ADMIN_EMAIL` could not be ensured at start.
#[derive(Debug, thiserror::Error)]
pub enum AdminBootstrapError {
    /// Another account, not an administrator, holds the address.
    #[error(
        "ADMIN_EMAIL names an address that account {user_id} already holds, and that account is \
         not an administrator (someone may have registered the address first); idp will not make \
         it one. Set ADMIN_EMAIL to an address no account holds, or have an existing administrator \
         grant the role (PUT /v1/admin/users/{user_id}/roles) after checking who owns the account"
    )]
    TakenByAnotherAccount {
        /// The account.
        user_id: Uuid,
    },
    /// `ADMIN_PASSWORD` is not an acceptable password.
    #[error("ADMIN_PASSWORD: {0}")]
    WeakPassword(password::PasswordError),
    /// Other instances kept changing the account.
    #[error("the administrator account kept changing while it was being created; start again")]
    KeptChanging,
    /// The database or the hasher failed.
    #[error("while ensuring the ADMIN_EMAIL administrator: {0}")]
    Failed(#[from] IdentityError),
}

impl From<sqlx::Error> for AdminBootstrapError {
    fn from(err: sqlx::Error) -> Self {
        Self::Failed(err.into())
    }
}

impl From<password::HashError> for AdminBootstrapError {
    fn from(err: password::HashError) -> Self {
        Self::Failed(err.into())
    }
}
