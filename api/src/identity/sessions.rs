//! Sessions: rotating refresh tokens (a reused one ends its family), signing out, and ending
//! the sessions of an account, under the lock that keeps sign-ins from racing past it.

use idp_events::identity::session::{RevokeReason, SessionEvent};
use idp_events::{Append, ExpectedVersion, Metadata, StreamId};
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::{Identity, IdentityError, TokenPair};
use crate::auth::tokens;
use crate::extract::ClientContext;

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
                    s.revoked_at is null and s.expires_at > now() as active
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
        sqlx::query("update sessions set generation = $2 where session_id = $1")
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
            self.revoke_in(
                &mut tx,
                session_id,
                &[SessionEvent::SessionRevoked { reason }],
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
            if self
                .revoke_in(
                    conn,
                    sid,
                    &[SessionEvent::SessionRevoked { reason }],
                    reason,
                    meta.clone(),
                )
                .await?
            {
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
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(sessions_lock(user_id))
        .execute(conn)
        .await?;
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
