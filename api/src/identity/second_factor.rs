//! Two-factor sign-in: enrolling a TOTP authenticator, recovery codes, the second step of a
//! sign-in, turning it off, and an administrator's reset.
//!
//! The secret and the codes live beside the log (`second_factors`, `recovery_codes`,
//! `mfa_challenges`); the events say only what happened. The secret is sealed under the
//! person's data key, so erasing the person shreds it. Every refusal of the second step is
//! the same [`IdentityError::SecondFactorRefused`], whatever its reason.

use chrono::{DateTime, Utc};
use idp_events::identity::login::{self, FailureReason, SecondFactorMethod};
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::privacy::DataKey;
use idp_events::{Append, ExpectedVersion, Metadata, StreamId};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::sessions::lock_sessions_shared;
use super::sign_in::FederatedSession;
use super::{Identity, IdentityError, TokenPair};
use crate::auth::second_factor::{
    self as factor, CHALLENGE_TTL, TotpSecret, accept, new_recovery_codes, open_secret,
    recovery_code_digest, seal_secret, step_of,
};
use crate::auth::tokens;
use crate::extract::{AuthUser, ClientContext};

/// What a sign-in answers: tokens, or (the account has a second factor) a challenge.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SignIn {
    /// Signed in.
    Tokens(TokenPair),
    /// The password was right; a code is needed.
    SecondFactorRequired(SecondFactorChallenge),
}

/// The second step a sign-in waits for: the account has a second factor.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "mfa_required", "challenge": "Yk3v0m1f0S6yWm2Q0Yb0u5Zl9cXw4tR7uI1oP3q2Vb8", "expires_in": 300}))]
pub struct SecondFactorChallenge {
    /// Always `mfa_required`.
    pub status: &'static str,
    /// Give it, with a code, to `POST /v1/auth/2fa/verify` (or, with a recovery code, to
    /// `POST /v1/auth/recovery-login`); it works for one completed sign-in.
    pub challenge: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// What an authenticator app needs to enrol: the secret, as text, URI and QR code. Shown
/// once; a new `enable-init` replaces it until `enable-complete`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
                          "otpauth_uri": "otpauth://totp/idp:ada%40example.com?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=idp",
                          "qr_svg": "<?xml version=\"1.0\" standalone=\"yes\"?><svg xmlns=\"http://www.w3.org/2000/svg\" ...</svg>"}))]
pub struct Enrolment {
    /// The secret in base32 (RFC 4648, no padding), to type in by hand.
    pub secret: String,
    /// The `otpauth://totp/` URI (SHA-1, 6 digits, 30 s).
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document drawn by idp.
    pub qr_svg: String,
}

/// A stored second factor, locked for the caller's transaction.
struct Stored {
    secret: TotpSecret,
    enabled: bool,
    last_step: i64,
}

impl Identity {
    /// The data key of `user_id` for the second factor's secret, in `conn`'s transaction.
    async fn factor_key(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
    ) -> Result<DataKey, IdentityError> {
        let keys = self.subject_keys()?;
        keys.for_writing_in(conn, user_id)
            .await
            .map_err(|e| match e {
                idp_events::privacy::SubjectKeysError::Erased(_) => IdentityError::Erased,
                other => IdentityError::PersonalData(other.to_string()),
            })
    }

    /// The second factor of `user_id`, locked until the transaction ends; `None` without one.
    async fn stored_factor(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
    ) -> Result<Option<Stored>, IdentityError> {
        let row: Option<(Vec<u8>, bool, i64)> = sqlx::query_as(
            "select secret, enabled_at is not null, last_step from second_factors
              where user_id = $1 for update",
        )
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((sealed, enabled, last_step)) = row else {
            return Ok(None);
        };
        let key = self.factor_key(conn, user_id).await?;
        let secret = open_secret(&key, user_id, &sealed)
            .map_err(|e| IdentityError::PersonalData(format!("second factor secret: {e}")))?;
        Ok(Some(Stored {
            secret,
            enabled,
            last_step,
        }))
    }

    /// Checks the password of a signed-in caller re-entering it, under the per-account limit.
    pub(super) async fn reauthenticate(
        &self,
        user_id: Uuid,
        password: &str,
    ) -> Result<(), IdentityError> {
        self.limit(&[(
            format!("login:account-id:{user_id}"),
            self.limits.login_per_account,
        )])
        .await?;
        if !self.verify_password(user_id, password).await?.matches {
            return Err(IdentityError::Unauthorized);
        }
        Ok(())
    }

    /// Starts enrolling a second factor: a new secret (replacing one whose enrolment was not
    /// completed), answered once. Needs the password again; refused while one is on.
    pub async fn enrol_second_factor(
        &self,
        ctx: &ClientContext,
        caller: &AuthUser,
        password: &str,
    ) -> Result<Enrolment, IdentityError> {
        self.reauthenticate(caller.user_id, password).await?;
        let account = self.load_user(caller.user_id).await?;
        let secret = TotpSecret::generate();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let key = self.factor_key(&mut tx, account.id).await?;
        let stored = sqlx::query(
            "insert into second_factors (user_id, secret) values ($1, $2)
             on conflict (user_id) do update
                set secret = excluded.secret, created_at = now(), last_step = 0, failures = 0
              where second_factors.enabled_at is null",
        )
        .bind(account.id)
        .bind(seal_secret(&key, account.id, &secret))
        .execute(&mut *tx)
        .await?;
        if stored.rows_affected() == 0 {
            return Err(IdentityError::SecondFactorState(
                "a second factor is on already: turn it off first (POST /v1/auth/2fa/disable)",
            ));
        }
        self.append_user_in(
            &mut tx,
            &account,
            &[UserEvent::SecondFactorEnrolmentStarted],
            ctx.metadata(caller.actor()),
        )
        .await?;
        tx.commit().await?;
        let otpauth_uri = secret.otpauth_uri(&self.mfa_issuer, &account.email);
        let qr_svg = factor::qr_svg(&otpauth_uri).unwrap_or_default();
        Ok(Enrolment {
            secret: secret.base32(),
            otpauth_uri,
            qr_svg,
        })
    }

    /// Completes an enrolment with a code of the new secret: sign-ins ask for a code from now
    /// on. Answers the recovery codes, once.
    pub async fn complete_second_factor(
        &self,
        ctx: &ClientContext,
        caller: &AuthUser,
        code: &str,
    ) -> Result<Vec<String>, IdentityError> {
        let account = self.load_user(caller.user_id).await?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let stored = match self.stored_factor(&mut tx, account.id).await? {
            Some(stored) if !stored.enabled => stored,
            Some(_) => {
                return Err(IdentityError::SecondFactorState(
                    "the second factor is on already",
                ));
            }
            None => {
                return Err(IdentityError::SecondFactorState(
                    "no enrolment is in progress: start one (POST /v1/auth/2fa/enable-init)",
                ));
            }
        };
        let now_step = step_of(Utc::now().timestamp());
        let Some(step) = accept(&stored.secret, code, now_step, stored.last_step) else {
            return Err(IdentityError::invalid(
                "code",
                "not a current code of the new secret",
            ));
        };
        sqlx::query(
            "update second_factors set enabled_at = now(), last_step = $2, failures = 0
              where user_id = $1",
        )
        .bind(account.id)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        let codes = replace_recovery_codes(&mut tx, account.id).await?;
        self.append_user_in(
            &mut tx,
            &account,
            &[
                UserEvent::SecondFactorEnabled,
                UserEvent::RecoveryCodesGenerated {
                    count: u32::try_from(codes.len()).unwrap_or(u32::MAX),
                },
            ],
            ctx.metadata(caller.actor()),
        )
        .await?;
        tx.commit().await?;
        Ok(codes)
    }

    /// Turns the second factor off, with the password and a current code.
    pub async fn disable_second_factor(
        &self,
        ctx: &ClientContext,
        caller: &AuthUser,
        password: &str,
        code: &str,
    ) -> Result<(), IdentityError> {
        self.reauthenticate(caller.user_id, password).await?;
        let account = self.load_user(caller.user_id).await?;
        let meta = ctx.metadata(caller.actor());
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let Some(stored) = self
            .stored_factor(&mut tx, account.id)
            .await?
            .filter(|s| s.enabled)
        else {
            return Err(IdentityError::SecondFactorState(
                "there is no second factor to turn off",
            ));
        };
        let now = Utc::now();
        let accepted = !account.is_second_factor_locked(now)
            && accept(
                &stored.secret,
                code,
                step_of(now.timestamp()),
                stored.last_step,
            )
            .is_some();
        if !accepted {
            self.count_wrong_code(tx, &account, FailureReason::WrongCode, meta)
                .await?;
            return Err(IdentityError::SecondFactorRefused);
        }
        delete_factor(&mut tx, account.id).await?;
        self.append_user_in(&mut tx, &account, &[UserEvent::SecondFactorDisabled], meta)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new set of recovery codes, replacing the old one; needs the password again.
    pub async fn regenerate_recovery_codes(
        &self,
        ctx: &ClientContext,
        caller: &AuthUser,
        password: &str,
    ) -> Result<Vec<String>, IdentityError> {
        self.reauthenticate(caller.user_id, password).await?;
        let account = self.load_user(caller.user_id).await?;
        // The account's stream says whether it is on; the append below is on the version read.
        if !account.second_factor {
            return Err(IdentityError::SecondFactorState(
                "recovery codes come with a second factor, and there is none",
            ));
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let codes = replace_recovery_codes(&mut tx, account.id).await?;
        self.append_user_in(
            &mut tx,
            &account,
            &[UserEvent::RecoveryCodesGenerated {
                count: u32::try_from(codes.len()).unwrap_or(u32::MAX),
            }],
            ctx.metadata(caller.actor()),
        )
        .await?;
        tx.commit().await?;
        Ok(codes)
    }

    /// An administrator (`actor`) removes the second factor of `user_id`; the person is told
    /// by email. Refused when there is none.
    pub async fn reset_second_factor(
        &self,
        ctx: &ClientContext,
        actor: &AuthUser,
        user_id: Uuid,
    ) -> Result<(), IdentityError> {
        let account = self.load_user(user_id).await?;
        if account.erased {
            return Err(IdentityError::Erased);
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let removed = delete_factor(&mut tx, user_id).await?;
        if !removed && !account.second_factor {
            return Err(IdentityError::SecondFactorState(
                "the account has no second factor",
            ));
        }
        self.append_user_in(
            &mut tx,
            &account,
            &[UserEvent::SecondFactorReset {
                email: account.email.clone().into(),
            }],
            ctx.metadata(actor.actor()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The first step's answer for `account`, whose password was right: a challenge for its
    /// second factor, recorded in its login stream.
    pub(super) async fn challenge(
        &self,
        account: &User,
        meta: Metadata,
        federated: Option<&FederatedSession>,
    ) -> Result<SignIn, IdentityError> {
        let (challenge, digest) = tokens::new_opaque_token();
        let challenge_id = Uuid::now_v7();
        let expires_at = Utc::now() + CHALLENGE_TTL;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // Challenges of the account that expired a day ago go with each new one.
        sqlx::query(
            "with expired as (
                 delete from mfa_challenges where user_id = $3 and expires_at < now() - interval '1 day'
             )
             insert into mfa_challenges (challenge_digest, challenge_id, user_id, expires_at,
                                         provider, session_expires_at)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&digest)
        .bind(challenge_id)
        .bind(account.id)
        .bind(expires_at)
        .bind(federated.map(|f| f.provider.as_str()))
        .bind(federated.map(|f| f.session_until))
        .execute(&mut *tx)
        .await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::login(account.id))
                    .expecting(ExpectedVersion::Any)
                    .event(login::second_factor_required(challenge_id))
                    .metadata(meta),
            )
            .await?;
        tx.commit().await?;
        Ok(SignIn::SecondFactorRequired(SecondFactorChallenge {
            status: "mfa_required",
            challenge,
            expires_in: u64::try_from(CHALLENGE_TTL.num_seconds()).unwrap_or(300),
        }))
    }

    /// The second step of a sign-in: `challenge` and a code of the authenticator app.
    pub async fn verify_second_factor(
        &self,
        ctx: &ClientContext,
        challenge: &str,
        code: &str,
    ) -> Result<TokenPair, IdentityError> {
        self.second_step(ctx, challenge, Proof::Totp(code)).await
    }

    /// The second step of a sign-in with one of the recovery codes, which then is used up.
    pub async fn recovery_login(
        &self,
        ctx: &ClientContext,
        challenge: &str,
        recovery_code: &str,
    ) -> Result<TokenPair, IdentityError> {
        self.second_step(ctx, challenge, Proof::RecoveryCode(recovery_code))
            .await
    }

    async fn second_step(
        &self,
        ctx: &ClientContext,
        challenge: &str,
        proof: Proof<'_>,
    ) -> Result<TokenPair, IdentityError> {
        // No rate limit of its own: a challenge is 256 random bits (guessing one is hopeless,
        // and each costs one indexed lookup), and wrong codes on a real one lock the second
        // factor after five. One request of a client address at a time, as for the first step.
        let _turn = self.shares.turn(&ctx.ip_key()).await;
        let digest = tokens::hash_opaque_token(challenge);
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // Read without a lock: the sessions lock comes first in every transaction that takes
        // it; the challenge is spent at the end only if no one spent it meanwhile.
        type Found = (Uuid, Uuid, Option<String>, Option<DateTime<Utc>>);
        let found: Option<Found> = sqlx::query_as(
            "select challenge_id, user_id, provider, session_expires_at from mfa_challenges
              where challenge_digest = $1 and used_at is null and expires_at > now()",
        )
        .bind(&digest)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((challenge_id, user_id, provider, session_until)) = found else {
            metrics::counter!("idp_auth_second_factor_total", "outcome" => "bad_challenge")
                .increment(1);
            return Err(IdentityError::SecondFactorRefused);
        };
        let federated = provider
            .zip(session_until)
            .map(|(provider, session_until)| FederatedSession {
                provider,
                session_until,
            });
        lock_sessions_shared(&mut tx, user_id).await?;
        let mut account = self.load_user(user_id).await?;
        let now = Utc::now();
        let meta = ctx.metadata(StreamId::user(user_id));
        if account.erased || account.is_locked(now) || !account.second_factor {
            return Err(IdentityError::SecondFactorRefused);
        }
        if account.is_second_factor_locked(now) {
            self.record_second_factor_failure(
                &mut tx,
                user_id,
                FailureReason::SecondFactorLocked,
                meta,
            )
            .await?;
            tx.commit().await?;
            metrics::counter!("idp_auth_second_factor_total", "outcome" => "locked").increment(1);
            return Err(IdentityError::SecondFactorRefused);
        }
        let (method, recovery_left) = match proof {
            Proof::Totp(code) => {
                // Locked (and opened) only here: a recovery code needs no secret.
                let Some(stored) = self
                    .stored_factor(&mut tx, user_id)
                    .await?
                    .filter(|s| s.enabled)
                else {
                    return Err(IdentityError::SecondFactorRefused);
                };
                let now_step = step_of(now.timestamp());
                let Some(step) = accept(&stored.secret, code, now_step, stored.last_step) else {
                    self.count_wrong_code(tx, &account, FailureReason::WrongCode, meta)
                        .await?;
                    return Err(IdentityError::SecondFactorRefused);
                };
                sqlx::query(
                    "update second_factors set last_step = $2, failures = 0 where user_id = $1",
                )
                .bind(user_id)
                .bind(step)
                .execute(&mut *tx)
                .await?;
                (SecondFactorMethod::Totp, None)
            }
            Proof::RecoveryCode(code) => {
                let used = sqlx::query(
                    "update recovery_codes set used_at = now()
                      where user_id = $1 and code_digest = $2 and used_at is null",
                )
                .bind(user_id)
                .bind(recovery_code_digest(code))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if used == 0 {
                    self.count_wrong_code(tx, &account, FailureReason::WrongRecoveryCode, meta)
                        .await?;
                    return Err(IdentityError::SecondFactorRefused);
                }
                sqlx::query("update second_factors set failures = 0 where user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                let left: i64 = sqlx::query_scalar(
                    "select count(*) from recovery_codes where user_id = $1 and used_at is null",
                )
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
                (
                    SecondFactorMethod::RecoveryCode,
                    Some(u32::try_from(left).unwrap_or(0)),
                )
            }
        };
        let spent = sqlx::query(
            "update mfa_challenges set used_at = now()
              where challenge_digest = $1 and used_at is null",
        )
        .bind(&digest)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent == 0 {
            // A concurrent second step with the same challenge got there first.
            metrics::counter!("idp_auth_second_factor_total", "outcome" => "bad_challenge")
                .increment(1);
            return Err(IdentityError::SecondFactorRefused);
        }
        if let Some(remaining) = recovery_left {
            self.append_user_in(
                &mut tx,
                &account,
                &[UserEvent::RecoveryCodeUsed { remaining }],
                meta.clone(),
            )
            .await?;
            // The stream is one event further (`RecoveryCodeUsed`, which changes no state).
            account.version += 1;
        }
        // The challenge is spent and the session started in one transaction: one commit.
        let started = self
            .start_session_in(&mut tx, &account, ctx, Some(method), federated.as_ref())
            .await?;
        tx.commit().await?;
        tracing::debug!(challenge.id = %challenge_id, "second factor accepted");
        metrics::counter!("idp_auth_second_factor_total", "outcome" => "success").increment(1);
        self.issue(started)
    }

    /// Records a wrong code of `account` and, at the fifth in a row, locks its second factor;
    /// commits `tx`.
    async fn count_wrong_code(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        account: &User,
        reason: FailureReason,
        meta: Metadata,
    ) -> Result<(), IdentityError> {
        self.record_second_factor_failure(&mut tx, account.id, reason, meta.clone())
            .await?;
        let failures: i32 = sqlx::query_scalar(
            "update second_factors set failures = failures + 1 where user_id = $1
             returning failures",
        )
        .bind(account.id)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(0);
        let lock =
            user::failed_second_factor(account, u32::try_from(failures).unwrap_or(0), Utc::now());
        if !lock.is_empty() {
            self.append_user_in(&mut tx, account, &lock, meta).await?;
            sqlx::query("update second_factors set failures = 0 where user_id = $1")
                .bind(account.id)
                .execute(&mut *tx)
                .await?;
            metrics::counter!("idp_auth_second_factor_lockouts_total").increment(1);
        }
        tx.commit().await?;
        metrics::counter!("idp_auth_second_factor_total", "outcome" => "failure").increment(1);
        Ok(())
    }

    async fn record_second_factor_failure(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
        reason: FailureReason,
        meta: Metadata,
    ) -> Result<(), IdentityError> {
        self.store
            .append_in(
                conn,
                Append::to(StreamId::login(user_id))
                    .expecting(ExpectedVersion::Any)
                    .event(login::failed(reason))
                    .metadata(meta),
            )
            .await?;
        Ok(())
    }
}

/// What the second step of a sign-in presents.
#[derive(Debug, Clone, Copy)]
enum Proof<'a> {
    Totp(&'a str),
    RecoveryCode(&'a str),
}

/// Replaces the recovery codes of `user_id` by a new set; answers the codes.
async fn replace_recovery_codes(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<Vec<String>, IdentityError> {
    let codes = new_recovery_codes();
    sqlx::query("delete from recovery_codes where user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let digests: Vec<Vec<u8>> = codes.iter().map(|(_, digest)| digest.clone()).collect();
    sqlx::query("insert into recovery_codes (user_id, code_digest) select $1, unnest($2::bytea[])")
        .bind(user_id)
        .bind(&digests)
        .execute(&mut *conn)
        .await?;
    Ok(codes.into_iter().map(|(shown, _)| shown).collect())
}

/// Removes the second factor of `user_id`: its secret, recovery codes and open challenges.
/// True if there was one.
pub(super) async fn delete_factor(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<bool, IdentityError> {
    let removed = sqlx::query("delete from second_factors where user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    for sql in [
        "delete from recovery_codes where user_id = $1",
        "delete from mfa_challenges where user_id = $1",
    ] {
        sqlx::query(sql).bind(user_id).execute(&mut *conn).await?;
    }
    Ok(removed > 0)
}
