//! Erasing a person: `PersonErased` and the destruction of their data key in one transaction,
//! then everything idp keeps about them beside the log.
//!
//! In the transaction that records `PersonErased` (under the sessions lock, so no sign-in or
//! refresh of the person can slip past it): the data key is destroyed (every personal field
//! ever written about them reads as `"[erased]"`), every session ends, and the rows of the
//! person in the identity tables go: credentials, login state, pending registrations, the
//! address reservation (the address can be registered again, as a new account), idempotency
//! keys, API keys, linked identities and the rate-limit buckets of their address. The read models (users directory, audit
//! view) follow from `PersonErased` in the worker, and the email worker drops what it had not
//! sent yet. Projects the person owns stay, owned by the erased account, visible to
//! administrators (their names and parameters are not personal data).

use idp_events::identity::session::RevokeReason;
use idp_events::identity::user;
use idp_events::privacy::SubjectKeys;
use sqlx::Connection;
use uuid::Uuid;

use super::{EMAIL_SCOPE, Identity, IdentityError};
use crate::extract::ClientContext;

/// Who asks for an erasure.
#[derive(Debug, Clone, Copy)]
pub enum Eraser<'a> {
    /// The person themselves, with their password re-entered.
    Themselves {
        /// The password.
        password: &'a str,
    },
    /// An administrator, with a reason.
    Administrator {
        /// The administrator's actor name (`user-<uuid>`).
        actor: &'a str,
        /// Why (recorded in `PersonErased`).
        reason: &'a str,
    },
}

/// What an erasure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ErasureOutcome {
    /// False when the person was erased already (nothing more was done).
    pub erased_now: bool,
    /// How many sessions this erasure ended.
    pub sessions_revoked: usize,
}

/// The rate-limit kinds that are keyed by an address.
const ADDRESS_LIMITS: [&str; 3] = ["login:account", "register:account", "email:account"];

impl Identity {
    /// The store's key table, to erase with.
    pub(super) fn subject_keys(&self) -> Result<&SubjectKeys, IdentityError> {
        self.store
            .subject_keys()
            .ok_or_else(|| IdentityError::PersonalData("the event store has none".into()))
    }

    /// Erases `user_id`. Idempotent: erasing an erased person records nothing more. The last
    /// administrator who can sign in cannot be erased (a conflict); a wrong password of the
    /// person themselves is [`IdentityError::Unauthorized`] and erases nothing.
    pub async fn erase(
        &self,
        ctx: &ClientContext,
        user_id: Uuid,
        eraser: Eraser<'_>,
    ) -> Result<ErasureOutcome, IdentityError> {
        let (actor, reason) = match eraser {
            Eraser::Themselves { password } => {
                self.reauthenticate(user_id, password).await?;
                (idp_events::StreamId::user(user_id).to_string(), None)
            }
            Eraser::Administrator { actor, reason } => (actor.to_owned(), Some(reason.to_owned())),
        };
        let keys = self.subject_keys()?.clone();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // The administrators' guard, then the sessions lock: the order of an administrator's
        // lock, so the two never wait on each other.
        let (account, other_admins) = self.guard_admins(&mut tx, user_id).await?;
        super::sessions::lock_sessions(&mut tx, user_id).await?;
        let events = user::erase(&account, reason, other_admins.saturating_add(1))?;
        if events.is_empty() {
            return Ok(ErasureOutcome {
                erased_now: false,
                sessions_revoked: 0,
            });
        }
        let meta = ctx.metadata(actor);
        let sessions_revoked = self
            .revoke_all(&mut tx, user_id, None, RevokeReason::Erased, &meta)
            .await?;
        self.append_user_in(&mut tx, &account, &events, meta)
            .await?;
        keys.erase_in(&mut tx, user_id)
            .await
            .map_err(|e| IdentityError::PersonalData(e.to_string()))?;
        let limits: Vec<String> = ADDRESS_LIMITS
            .iter()
            .map(|kind| self.rate_key(kind, &account.email))
            .collect();
        for sql in [
            "delete from credentials where user_id = $1",
            "delete from login_state where user_id = $1",
            "delete from pending_registrations where user_id = $1",
            "delete from idempotency_keys where owner_id = $1",
            "delete from admin_accounts where user_id = $1",
            // Their API keys stop, and their names (which the log holds sealed) go.
            "delete from api_keys where owner_id = $1",
            // Their linked identities stop signing in (the log's copy is sealed, now unreadable).
            "delete from external_identities where user_id = $1",
            "delete from federated_login_codes where user_id = $1",
            "delete from refresh_tokens t using sessions s
              where t.session_id = s.session_id and s.user_id = $1",
            "update sessions set device = null, network = null, agent_digest = null
              where user_id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
        }
        super::second_factor::delete_factor(&mut tx, user_id).await?;
        sqlx::query("delete from reservations where scope = $1 and stream_id = $2")
            .bind(EMAIL_SCOPE)
            .bind(idp_events::StreamId::user(user_id).as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("delete from rate_limit_buckets where bucket = any($1)")
            .bind(&limits)
            .execute(&mut *tx)
            .await?;
        sqlx::query("delete from sign_in_failures where key = $1")
            .bind(self.rate_key("failures:account", &account.email))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("idp_people_erased_total").increment(1);
        Ok(ErasureOutcome {
            erased_now: true,
            sessions_revoked,
        })
    }
}
