//! Signing in: the limits, the password, the lockout, and the session a success starts. Every
//! refusal looks the same, after the same work.

use chrono::Utc;
use idp_events::identity::address_digest;
use idp_events::identity::email::Email;
use idp_events::identity::login::{self, FailureReason, SecondFactorMethod};
use idp_events::identity::session::SessionEvent;
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::{Append, AppendError, ExpectedVersion, Metadata, StreamId};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::sessions::lock_sessions_shared;
use super::{Identity, IdentityError, SignIn, TokenPair, reset_failures};
use crate::auth::tokens;
use crate::client_device::ClientDevice;
use crate::extract::ClientContext;

/// What a federated sign-in brings to the session it starts.
#[derive(Debug, Clone)]
pub struct FederatedSession {
    /// The provider's id.
    pub provider: String,
    /// When the session must go back to the provider (`PROVIDER_SESSION_MAX_AGE`).
    pub session_until: chrono::DateTime<Utc>,
}

/// A session started in a transaction not yet committed: what its tokens are made of.
pub(super) struct StartedSession {
    user_id: Uuid,
    session_id: Uuid,
    roles: Vec<String>,
    refresh_token: String,
}

impl Identity {
    /// Signs in. Every refusal is the same [`IdentityError::InvalidCredentials`], after the same work.
    /// A malformed address is answered at once (the format rule is public; nothing is hashed);
    /// everything else passes the rate limits, and the CAPTCHA when failures call for one,
    /// before any hashing.
    pub async fn login(
        &self,
        ctx: &ClientContext,
        email: &str,
        password: &str,
        captcha_token: Option<&str>,
    ) -> Result<SignIn, IdentityError> {
        let email = &Email::parse(email)?;
        // One request of this client at a time, from before its limits are counted to the end
        // (see `ClientShares`): a flood from one address queues behind itself, not in the
        // database pool or the hasher's queue.
        let _turn = self.shares.turn(&ctx.ip_key()).await;
        self.limit(&[
            (
                self.rate_key("login:ip", &ctx.ip_key()),
                self.limits.login_per_ip,
            ),
            (
                self.rate_key("login:account", email.as_str()),
                self.limits.login_per_account,
            ),
        ])
        .await
        .inspect_err(|err| {
            if matches!(err, IdentityError::RateLimited { .. }) {
                metrics::counter!("idp_auth_logins_total", "outcome" => "rate_limited")
                    .increment(1);
            }
        })?;
        self.pass_captcha(ctx, email, captcha_token).await?;
        let Some(user_id) = self.user_id_by_email(email).await? else {
            self.refuse_unknown(ctx, email, password).await?;
            self.count_sign_in_failure(ctx, email).await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "unknown_account").increment(1);
            return Err(IdentityError::InvalidCredentials);
        };
        let account = self.load_user(user_id).await?;
        let verified = self.verify_password(user_id, password).await?;
        if !verified.matches {
            self.count_sign_in_failure(ctx, email).await?;
        }
        let now = Utc::now();
        let meta = ctx.metadata(StreamId::user(user_id));
        if account.is_locked(now) {
            self.record_failure(&account, FailureReason::Locked, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "locked").increment(1);
            return Err(IdentityError::InvalidCredentials);
        }
        if !verified.matches {
            self.record_failure(&account, FailureReason::WrongPassword, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "failure").increment(1);
            return Err(IdentityError::InvalidCredentials);
        }
        if !account.email_verified {
            self.record_failure(&account, FailureReason::Unverified, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "unverified").increment(1);
            return Err(IdentityError::InvalidCredentials);
        }
        if verified.needs_rehash {
            self.rehash(&account, password, meta.clone()).await?;
        }
        self.forget_account_failures(email).await?;
        if account.second_factor {
            metrics::counter!("idp_auth_logins_total", "outcome" => "second_factor_required")
                .increment(1);
            return self.challenge(&account, meta, None).await;
        }
        let pair = self.start_session(&account, ctx, None, None).await?;
        metrics::counter!("idp_auth_logins_total", "outcome" => "success").increment(1);
        Ok(SignIn::Tokens(pair))
    }

    /// An attempt on an address no account has goes through the same steps as a wrong
    /// password on a real account (a stream read, a credentials read, a full verification, one
    /// transaction with an event and a counter), so neither the answer nor its timing tells
    /// the two apart. The attempt is recorded under a digest of the address.
    async fn refuse_unknown(
        &self,
        ctx: &ClientContext,
        email: &Email,
        password: &str,
    ) -> Result<(), IdentityError> {
        let digest = address_digest::digest(&self.address_digest_keys, email.as_str());
        let digest_hex = hex::encode(digest);
        let stream = StreamId::login_unknown(&address_digest::stream_name(&digest));
        let pseudo_id = Uuid::from_slice(&digest[..16]).unwrap_or_default();
        self.store.stream_version(stream.as_str()).await?;
        self.verify_password(pseudo_id, password).await?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.store
            .append_in(
                &mut tx,
                // The caller's details are sealed like a person's (under the digest's pseudonym
                // and the day), so this costs what a known account's failure costs.
                Append::to(stream)
                    .about(pseudo_id)
                    .expecting(ExpectedVersion::Any)
                    .event(login::failed_unknown(&digest_hex))
                    .metadata(ctx.metadata("anonymous")),
            )
            .await?;
        count_failure(&mut tx, pseudo_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed sign-in of `account` in its login stream and, when the failures call
    /// for it, locks the account in the same transaction.
    pub(super) async fn record_failure(
        &self,
        account: &User,
        reason: FailureReason,
        meta: Metadata,
    ) -> Result<(), IdentityError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::login(account.id))
                    .expecting(ExpectedVersion::Any)
                    .event(login::failed(reason))
                    .metadata(meta.clone()),
            )
            .await?;
        let failures = if reason == FailureReason::WrongPassword {
            count_failure(&mut tx, account.id).await?
        } else {
            0
        };
        let lock = user::failed_login(account, failures, Utc::now());
        if !lock.is_empty() {
            let locked = self
                .store
                .append_in(
                    &mut tx,
                    Append::to(StreamId::user(account.id))
                        .about(account.id)
                        .expecting(ExpectedVersion::after(account.version))
                        .events(lock.iter().map(UserEvent::to_new_event))
                        .metadata(meta),
                )
                .await;
            match locked {
                Ok(_) => {
                    reset_failures(&mut tx, account.id).await?;
                    metrics::counter!("idp_auth_lockouts_total").increment(1);
                }
                // Someone changed the account meanwhile (maybe locked it): keep the failure.
                Err(AppendError::Conflict { .. }) => {
                    tx.rollback().await?;
                    return Box::pin(self.record_failure_after_conflict(account.id, reason)).await;
                }
                Err(other) => return Err(other.into()),
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// [`Identity::record_failure`] again, on the account as it is now.
    async fn record_failure_after_conflict(
        &self,
        user_id: Uuid,
        reason: FailureReason,
    ) -> Result<(), IdentityError> {
        let account = self.load_user(user_id).await?;
        self.record_failure(&account, reason, Metadata::actor(StreamId::user(user_id)))
            .await
    }

    /// Stores a hash of `password` with the current parameters (it matched an older one).
    async fn rehash(
        &self,
        account: &User,
        password: &str,
        meta: Metadata,
    ) -> Result<(), IdentityError> {
        let hash = self.hasher.hash(password).await?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "update credentials set password_hash = $2, updated_at = now() where user_id = $1",
        )
        .bind(account.id)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::user(account.id))
                    .about(account.id)
                    .expecting(ExpectedVersion::Any)
                    .event(UserEvent::PasswordRehashed.to_new_event())
                    .metadata(meta),
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts a session of `account` from the device of `ctx`, unless an administrator locked
    /// the account since it was read; `second_factor` says how a second step completed the
    /// sign-in, if one did. A sign-in from a device the account has not used within
    /// `NEW_DEVICE_WINDOW_DAYS` records `NewDeviceSignedIn` (its owner is emailed) in the same
    /// transaction.
    pub(super) async fn start_session(
        &self,
        account: &User,
        ctx: &ClientContext,
        second_factor: Option<SecondFactorMethod>,
        federated: Option<&FederatedSession>,
    ) -> Result<TokenPair, IdentityError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        lock_sessions_shared(&mut tx, account.id).await?;
        let started = self
            .start_session_in(&mut tx, account, ctx, second_factor, federated)
            .await?;
        tx.commit().await?;
        self.issue(started)
    }

    /// The tokens of a session [`Identity::start_session_in`] started, once its transaction is
    /// committed.
    pub(super) fn issue(&self, started: StartedSession) -> Result<TokenPair, IdentityError> {
        self.token_pair(
            started.user_id,
            started.session_id,
            &started.roles,
            started.refresh_token,
        )
    }

    /// [`Identity::start_session`] in `tx`, which holds the account's sessions lock shared
    /// (taken first, `lock_sessions_shared`) and which the caller commits before it hands out
    /// the tokens ([`Identity::issue`]): the second step of a sign-in spends its challenge and
    /// starts the session in one transaction.
    /// A federated sign-in (`federated`) starts a session that ends when the provider's
    /// session bound does (`PROVIDER_SESSION_MAX_AGE`), if that comes first.
    pub(super) async fn start_session_in(
        &self,
        tx: &mut PgConnection,
        account: &User,
        ctx: &ClientContext,
        second_factor: Option<SecondFactorMethod>,
        federated: Option<&FederatedSession>,
    ) -> Result<StartedSession, IdentityError> {
        let meta = ctx.metadata(StreamId::user(account.id));
        let device = ClientDevice::of(ctx);
        let session_id = Uuid::now_v7();
        let (refresh_token, refresh_hash) = tokens::new_opaque_token();
        let now = Utc::now();
        let expires_at = match federated {
            Some(federated) => federated.session_until.min(now + self.session_ttl),
            None => now + self.session_ttl,
        };
        let seen_since = self.new_device_window.map(|window| now - window);
        let tx = &mut *tx;
        let version = self
            .store
            .stream_version_in(tx, &StreamId::user(account.id))
            .await?;
        // The account changed since the password was checked: maybe an administrator locked it.
        let reloaded;
        let account = if version == account.version {
            account
        } else {
            reloaded = self.load_user(account.id).await?;
            if reloaded.is_locked(Utc::now())
                || reloaded.erased
                || (second_factor.is_some() && !reloaded.second_factor)
            {
                return Err(IdentityError::InvalidCredentials);
            }
            &reloaded
        };
        reset_failures(tx, account.id).await?;
        // Whether the account signed in before, and from this device lately: read before the
        // new session is written (the statement's snapshot does not see its own inserts).
        let (signed_in_before, known_device): (bool, bool) = sqlx::query_as(
            "with session as (
                 insert into sessions (session_id, user_id, generation, expires_at, last_used_at,
                                       device, network, agent_digest)
                 values ($1, $2, 1, $3, now(), $5, $6, $7)
             ), token as (
                 insert into refresh_tokens (token_hash, session_id, generation) values ($4, $1, 1)
             )
             select exists (select 1 from sessions where user_id = $2),
                    $8::timestamptz is null or exists (
                        select 1 from sessions
                         where user_id = $2 and device = $5 and network is not distinct from $6
                           and coalesce(last_used_at, created_at) > $8)",
        )
        .bind(session_id)
        .bind(account.id)
        .bind(expires_at)
        .bind(&refresh_hash)
        .bind(&device.summary)
        .bind(&device.network)
        .bind(&device.agent_digest)
        .bind(seen_since)
        .fetch_one(&mut *tx)
        .await?;
        // The success is the first event of the session it starts (failures go to the
        // account's login stream, which lockout reads).
        self.store
            .append_in(
                tx,
                Append::to(StreamId::session(session_id))
                    .event(login::succeeded_via(
                        session_id,
                        second_factor,
                        federated.map(|f| f.provider.as_str()),
                    ))
                    .event(
                        SessionEvent::SessionStarted {
                            user_id: account.id,
                            expires_at,
                        }
                        .to_new_event(),
                    )
                    .metadata(meta.clone()),
            )
            .await?;
        if signed_in_before && !known_device {
            self.notice_new_device(tx, account, session_id, &device, meta)
                .await?;
        }
        Ok(StartedSession {
            user_id: account.id,
            session_id,
            roles: account.roles.clone(),
            refresh_token,
        })
    }

    /// Records `NewDeviceSignedIn` for session `session_id` of `account`, and marks the session
    /// as the one its emailed link ends.
    async fn notice_new_device(
        &self,
        conn: &mut PgConnection,
        account: &User,
        session_id: Uuid,
        device: &ClientDevice,
        meta: Metadata,
    ) -> Result<(), IdentityError> {
        let events =
            user::notice_new_device(account, session_id, &device.summary, device.network_label());
        let Some(event) = events.first().map(UserEvent::to_new_event) else {
            return Ok(());
        };
        sqlx::query("update sessions set notice_id = $2 where session_id = $1")
            .bind(session_id)
            .bind(event.event_id)
            .execute(&mut *conn)
            .await?;
        // Any version: a notice decides nothing about the account's state.
        self.store
            .append_in(
                conn,
                Append::to(StreamId::user(account.id))
                    .about(account.id)
                    .expecting(ExpectedVersion::Any)
                    .event(event)
                    .metadata(meta),
            )
            .await?;
        metrics::counter!("idp_auth_new_device_notices_total").increment(1);
        Ok(())
    }

    /// A token pair for a session: a new access token and the given refresh token.
    pub(super) fn token_pair(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: &[String],
        refresh_token: String,
    ) -> Result<TokenPair, IdentityError> {
        let (access_token, expires_in) = self
            .tokens
            .issue_access(user_id, session_id, roles)
            .map_err(IdentityError::Signing)?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in,
        })
    }
}

/// Counts a wrong password for `user_id` and returns the consecutive failures so far.
async fn count_failure(conn: &mut PgConnection, user_id: Uuid) -> Result<u32, IdentityError> {
    let failures: i32 = sqlx::query_scalar(
        "insert into login_state (user_id, consecutive_failures, last_failure_at) values ($1, 1, now())
         on conflict (user_id) do update
            set consecutive_failures = login_state.consecutive_failures + 1, last_failure_at = now()
         returning consecutive_failures",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(u32::try_from(failures).unwrap_or(0))
}
