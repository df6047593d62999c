//! Sessions: rotating refresh tokens (a reused one ends its family, one from elsewhere ends a
//! bound session), signing out, a person's own list of sessions and ending them, the link of a
//! new-device email, and ending the sessions of an account, under the lock that keeps sign-ins
//! from racing past it.

use chrono::{DateTime, Utc};
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::identity::session::{RevokeReason, SessionEvent};
use idp_events::{Append, ExpectedVersion, Metadata, StreamId};
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::{Identity, IdentityError, TokenPair};
use crate::auth::tokens;
use crate::client_device::ClientDevice;
use crate::config::SessionBinding;
use crate::extract::ClientContext;

/// One of a person's active sessions, as their list shows it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SessionView {
    /// Session id.
    pub id: Uuid,
    /// When the sign-in started it.
    pub created_at: DateTime<Utc>,
    /// Its last sign-in or refresh (access tokens are used without touching the session).
    pub last_used_at: DateTime<Utc>,
    /// The device, from the user agent: e.g. `Firefox on Linux`; `unknown device` when the
    /// agent said nothing recognisable (or the session is older than the list).
    pub device: String,
    /// Approximate location: the network of the sign-in's address, its IPv4 /24 or IPv6 /48
    /// (`null` when unknown).
    pub network: Option<String>,
    /// Whether this is the session of the calling token.
    pub current: bool,
}

/// How many of the caller's other sessions `revoke-others` ended.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct OtherSessionsRevoked {
    /// Sessions ended by this request.
    pub revoked: usize,
}

impl Identity {
    /// Rotates a refresh token. A token already rotated ends its whole session (family).
    pub async fn refresh(
        &self,
        ctx: &ClientContext,
        refresh_token: &str,
    ) -> Result<TokenPair, IdentityError> {
        let hash = tokens::hash_opaque_token(refresh_token);
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let Some(row) = sqlx::query(
            "select s.session_id, s.user_id, s.generation, t.generation as presented,
                    s.revoked_at is null and s.expires_at > now() as active,
                    s.network, s.agent_digest
               from refresh_tokens t join sessions s using (session_id)
              where t.token_hash = $1
              for update of s",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(IdentityError::Unauthorized);
        };
        let session_id: Uuid = row.try_get("session_id")?;
        let user_id: Uuid = row.try_get("user_id")?;
        let generation: i32 = row.try_get("generation")?;
        let presented: i32 = row.try_get("presented")?;
        let active: bool = row.try_get("active")?;
        let meta = ctx.metadata(StreamId::user(user_id));
        if !active {
            return Err(IdentityError::Unauthorized);
        }
        if presented != generation {
            let events = [
                SessionEvent::RefreshTokenReuseDetected {
                    generation: u32::try_from(presented).unwrap_or(0),
                },
                SessionEvent::SessionRevoked {
                    reason: RevokeReason::RefreshTokenReuse,
                },
            ];
            self.revoke_in(
                &mut tx,
                session_id,
                &events,
                RevokeReason::RefreshTokenReuse,
                meta,
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(session.id = %session_id, "refresh token reuse detected; session revoked");
            metrics::counter!("idp_auth_refresh_reuse_total").increment(1);
            return Err(IdentityError::Unauthorized);
        }
        // Unbound sessions (the default) read nothing of the client.
        if self.session_binding != SessionBinding::None
            && !self.binding_holds(&row, &ClientDevice::of(ctx))?
        {
            let reason = RevokeReason::BindingBroken;
            self.end_session(&mut tx, session_id, reason, meta).await?;
            tx.commit().await?;
            tracing::info!(session.id = %session_id, "refresh from elsewhere than the session is bound to; session ended");
            metrics::counter!("idp_auth_binding_broken_total").increment(1);
            return Err(IdentityError::Unauthorized);
        }
        let account = self.load_user(user_id).await?;
        let (new_token, new_hash) = tokens::new_opaque_token();
        let next = generation + 1;
        sqlx::query(
            "insert into refresh_tokens (token_hash, session_id, generation) values ($1, $2, $3)",
        )
        .bind(&new_hash)
        .bind(session_id)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "update sessions set generation = $2, last_used_at = now() where session_id = $1",
        )
        .bind(session_id)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::session(session_id))
                    .expecting(ExpectedVersion::Any)
                    .event(
                        SessionEvent::SessionRefreshed {
                            generation: u32::try_from(next).unwrap_or(0),
                        }
                        .to_new_event(),
                    )
                    .metadata(meta),
            )
            .await?;
        tx.commit().await?;
        self.token_pair(user_id, session_id, &account.roles, new_token)
    }

    /// Whether a refresh from `device` keeps to what its session (`row`) is bound to
    /// (`SESSION_BINDING`). A session started without a known network or agent is bound to
    /// that.
    fn binding_holds(
        &self,
        row: &sqlx::postgres::PgRow,
        device: &ClientDevice,
    ) -> Result<bool, IdentityError> {
        let network = || -> Result<bool, IdentityError> {
            Ok(row.try_get::<Option<String>, _>("network")? == device.network)
        };
        let agent = || -> Result<bool, IdentityError> {
            Ok(row.try_get::<Option<Vec<u8>>, _>("agent_digest")? == device.agent_digest)
        };
        Ok(match self.session_binding {
            SessionBinding::None => true,
            SessionBinding::Network => network()?,
            SessionBinding::NetworkAndAgent => network()? && agent()?,
        })
    }

    /// The active sessions of `user_id`, newest first; `current` is the caller's.
    pub async fn sessions_of(
        &self,
        user_id: Uuid,
        current: Uuid,
    ) -> Result<Vec<SessionView>, IdentityError> {
        Ok(sqlx::query_as(
            "select session_id as id, created_at, coalesce(last_used_at, created_at) as last_used_at,
                    coalesce(device, $3) as device, network, session_id = $2 as current
               from sessions
              where user_id = $1 and revoked_at is null and expires_at > now()
              order by created_at desc",
        )
        .bind(user_id)
        .bind(current)
        .bind(crate::client_device::summary(None))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Ends session `session_id` of `user_id` at its owner's request. A session of someone
    /// else, or none, is [`IdentityError::NotFound`]; one that ended already is left as it is.
    pub async fn revoke_own_session(
        &self,
        ctx: &ClientContext,
        user_id: Uuid,
        session_id: Uuid,
    ) -> Result<(), IdentityError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let owner: Option<Uuid> =
            sqlx::query_scalar("select user_id from sessions where session_id = $1 for update")
                .bind(session_id)
                .fetch_optional(&mut *tx)
                .await?;
        if owner != Some(user_id) {
            return Err(IdentityError::NotFound);
        }
        let reason = RevokeReason::Owner;
        self.end_session(
            &mut tx,
            session_id,
            reason,
            ctx.metadata(StreamId::user(user_id)),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends every session of `user_id` but `current`, at its owner's request.
    pub async fn revoke_other_sessions(
        &self,
        ctx: &ClientContext,
        user_id: Uuid,
        current: Uuid,
    ) -> Result<OtherSessionsRevoked, IdentityError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let meta = ctx.metadata(StreamId::user(user_id));
        let revoked = self
            .revoke_all(&mut tx, user_id, Some(current), RevokeReason::Owner, &meta)
            .await?;
        tx.commit().await?;
        Ok(OtherSessionsRevoked { revoked })
    }

    /// Ends the session a new-device email is about, with the token of its link. The same
    /// link again, or for a session that ended already, ends nothing more.
    pub async fn revoke_by_notice(
        &self,
        ctx: &ClientContext,
        token: &str,
    ) -> Result<(), IdentityError> {
        let notice_id = one_time_token::open(&self.email_keys, Purpose::RevokeSession, token)
            .map_err(|_| IdentityError::invalid_token())?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let found: Option<(Uuid, Uuid)> = sqlx::query_as(
            "select session_id, user_id from sessions where notice_id = $1 for update",
        )
        .bind(notice_id)
        .fetch_optional(&mut *tx)
        .await?;
        // The notice and its session are written together: a genuine token always finds one.
        let Some((session_id, user_id)) = found else {
            return Err(IdentityError::invalid_token());
        };
        let reason = RevokeReason::NewDeviceNotice;
        self.end_session(
            &mut tx,
            session_id,
            reason,
            ctx.metadata(StreamId::user(user_id)),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends session `session_id` for `reason` (`SessionRevoked`), inside `conn`'s transaction;
    /// false if it had ended already.
    async fn end_session(
        &self,
        conn: &mut PgConnection,
        session_id: Uuid,
        reason: RevokeReason,
        meta: Metadata,
    ) -> Result<bool, IdentityError> {
        self.revoke_in(
            conn,
            session_id,
            &[SessionEvent::SessionRevoked { reason }],
            reason,
            meta,
        )
        .await
    }

    /// Ends session `session_id` with `events`, inside `conn`'s transaction; false if it had
    /// ended already.
    async fn revoke_in(
        &self,
        conn: &mut PgConnection,
        session_id: Uuid,
        events: &[SessionEvent],
        reason: RevokeReason,
        meta: Metadata,
    ) -> Result<bool, IdentityError> {
        let revoked = sqlx::query(
            "update sessions set revoked_at = now(), revoke_reason = $2 where session_id = $1 and revoked_at is null",
        )
        .bind(session_id)
        .bind(serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned)))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if revoked == 0 {
            return Ok(false);
        }
        self.store
            .append_in(
                conn,
                Append::to(StreamId::session(session_id))
                    .expecting(ExpectedVersion::Any)
                    .events(events.iter().map(SessionEvent::to_new_event))
                    .metadata(meta),
            )
            .await?;
        Ok(true)
    }

    /// Ends the session of a refresh token. Unknown or already ended: nothing to do.
    pub async fn logout(
        &self,
        ctx: &ClientContext,
        refresh_token: &str,
    ) -> Result<(), IdentityError> {
        let hash = tokens::hash_opaque_token(refresh_token);
        let row: Option<(Uuid, Uuid)> = sqlx::query_as(
            "select s.session_id, s.user_id from refresh_tokens t join sessions s using (session_id) where t.token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((session_id, user_id)) = row {
            let mut conn = self.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let reason = RevokeReason::Logout;
            self.end_session(
                &mut tx,
                session_id,
                reason,
                ctx.metadata(StreamId::user(user_id)),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Ends the sessions of `user_id` except `keep`, inside `conn`'s transaction, and says how
    /// many. Sign-ins of the account wait until the transaction ends (see [`sessions_lock`]).
    pub(super) async fn revoke_all(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
        keep: Option<Uuid>,
        reason: RevokeReason,
        meta: &Metadata,
    ) -> Result<usize, IdentityError> {
        lock_sessions(conn, user_id).await?;
        let sessions: Vec<Uuid> = sqlx::query_scalar(
            "select session_id from sessions where user_id = $1 and revoked_at is null",
        )
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut revoked = 0;
        for sid in sessions.into_iter().filter(|s| Some(*s) != keep) {
            if self.end_session(conn, sid, reason, meta.clone()).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}

/// The advisory lock of one account's sessions: a sign-in takes it shared, ending all of the
/// account's sessions takes it exclusively. So a sign-in racing an administrator's lock either
/// commits first (and its session is ended with the others) or starts after (and sees the lock).
fn sessions_lock(user_id: Uuid) -> String {
    format!("idp.sessions.{user_id}")
}

/// Takes [`sessions_lock`] of `user_id` exclusively until the transaction ends. Taken before
/// anything else the transaction locks (a sign-in takes it first too), so waits never cross.
pub(super) async fn lock_sessions(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<(), IdentityError> {
    idp_ops::database::lock_until_commit(conn, &sessions_lock(user_id)).await?;
    Ok(())
}

/// Takes [`sessions_lock`] of `user_id` shared until the transaction ends: a sign-in, which
/// waits for an exclusive holder (a lock, a password change) to finish.
pub(super) async fn lock_sessions_shared(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<(), IdentityError> {
    sqlx::query("select pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
        .bind(sessions_lock(user_id))
        .execute(conn)
        .await?;
    Ok(())
}
