//! Identity use cases: each loads what its decision needs, decides with the pure functions of
//! `idp_events::identity`, and appends the resulting events together with the inline state they
//! imply (credentials, login counters, sessions) in one transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use idp_events::identity::address_digest;
use idp_events::identity::email_request::{self, Requested, Unanswered};
use idp_events::identity::login::{self, FailureReason};
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::identity::session::{self, RevokeReason, SessionEvent};
use idp_events::identity::user::{self, User, UserError, UserEvent};
use idp_events::secret_keys::SecretKeys;
use idp_events::{Append, AppendError, EventStore, ExpectedVersion, Metadata};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::auth::password::{self, ClientShares, Hasher};
use crate::auth::rate_limit::{Decision, Limit, RateLimiter};
use crate::auth::tokens::{self, Tokens};
use crate::config::IdentityConfig;
use crate::error::ApiError;
use crate::extract::ClientContext;

/// A normalised email address: trimmed, lower-cased, plausibly shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an address; the reason is safe to show.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let email = raw.trim().to_lowercase();
        let invalid = || ApiError::Unprocessable("email: not a valid email address".into());
        if email.len() < 3
            || email.len() > 254
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        if local.is_empty()
            || local.len() > 64
            || domain.is_empty()
            || domain.contains('@')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tokens answered by a sign-in or a refresh.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// Signed JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque token to get the next pair; it works once.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// The caller's own account.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Profile {
    /// Account id.
    pub id: Uuid,
    /// Email address.
    pub email: String,
    /// Name to show.
    pub display_name: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Whether the address is confirmed.
    pub email_verified: bool,
    /// When the account was created.
    pub created_at: Option<DateTime<Utc>>,
}

/// An administrator's lock, as it stands after the request.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LockOutcome {
    /// End of the lock (9999-12-31T23:59:59Z: until an administrator unlocks the account).
    pub locked_until: DateTime<Utc>,
    /// How many sessions of the account this request ended.
    pub sessions_revoked: usize,
}

/// The advisory lock (transaction-level, one fixed key) under which every change that could
/// leave no administrator who can sign in counts the administrators and appends: demotions and
/// locks. Two administrators demoting or locking each other at once are thus serialised, and
/// the second sees the first's change.
const ADMINS_GUARD: &str = "idp.admin_accounts";

/// The advisory lock of one account's sessions: a sign-in takes it shared, ending all of the
/// account's sessions takes it exclusively. So a sign-in racing an administrator's lock either
/// commits first (and its session is ended with the others) or starts after (and sees the lock).
fn sessions_lock(user_id: Uuid) -> String {
    format!("idp.sessions.{user_id}")
}

/// Takes [`sessions_lock`] of `user_id` exclusively until the transaction ends. Taken before
/// anything else the transaction locks (a sign-in takes it first too), so waits never cross.
async fn lock_sessions(conn: &mut PgConnection, user_id: Uuid) -> Result<(), ApiError> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(sessions_lock(user_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// Rate limits of the identity endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Logins per IP.
    pub login_per_ip: Limit,
    /// Logins per account.
    pub login_per_account: Limit,
    /// Registrations, resends, forgotten passwords per IP.
    pub email_per_ip: Limit,
    /// Resends and forgotten passwords per account.
    pub email_per_account: Limit,
}

/// The symmetric keys of the identity service, one ring per purpose.
#[derive(Debug)]
pub struct IdentityKeys {
    /// MAC of one-time email tokens (`EMAIL_TOKEN_KEYS`).
    pub email_tokens: SecretKeys,
    /// Keyed digest naming the streams of sign-ins to unknown addresses (`ADDRESS_DIGEST_KEYS`).
    pub address_digest: SecretKeys,
}

/// The identity service.
#[derive(Clone)]
pub struct Identity {
    store: EventStore,
    pool: PgPool,
    hasher: Hasher,
    shares: ClientShares,
    /// Work done after its request was answered (see [`Identity::finish_background_work`]).
    background: TaskTracker,
    tokens: Tokens,
    limiter: RateLimiter,
    email_keys: Arc<SecretKeys>,
    address_digest_keys: Arc<SecretKeys>,
    limits: Limits,
    session_ttl: chrono::Duration,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The service.
    pub fn new(
        store: EventStore,
        hasher: Hasher,
        tokens: Tokens,
        keys: IdentityKeys,
        config: &IdentityConfig,
    ) -> Self {
        let pool = store.pool().clone();
        Self {
            limiter: RateLimiter::new(pool.clone()),
            pool,
            store,
            hasher,
            shares: ClientShares::default(),
            background: TaskTracker::new(),
            tokens,
            email_keys: Arc::new(keys.email_tokens),
            address_digest_keys: Arc::new(keys.address_digest),
            limits: Limits {
                login_per_ip: config.login_per_ip,
                login_per_account: config.login_per_account,
                email_per_ip: config.email_per_ip,
                email_per_account: config.email_per_account,
            },
            session_ttl: chrono::Duration::days(i64::from(config.session_ttl_days)),
        }
    }

    /// Waits for the work done after answering (email requests) to finish; new work is still
    /// taken until this is called.
    pub async fn finish_background_work(&self) {
        self.background.close();
        self.background.wait().await;
    }

    /// Access token issuing and checking.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The password hasher.
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// The key ring of one-time email tokens.
    pub fn email_keys(&self) -> &SecretKeys {
        &self.email_keys
    }

    /// Counts one hit on each bucket (one statement) and refuses if any is over its limit.
    async fn limit(&self, buckets: &[(String, Limit)]) -> Result<(), ApiError> {
        match self.limiter.hit_all(buckets, Utc::now()).await? {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => {
                let kind = buckets
                    .first()
                    .and_then(|(b, _)| b.split(':').next())
                    .unwrap_or("")
                    .to_owned();
                metrics::counter!("idp_rate_limited_total", "kind" => kind).increment(1);
                Err(ApiError::TooManyRequests {
                    retry_after_secs: retry_after.as_secs().max(1),
                })
            }
        }
    }

    /// Reads the stored hash of `user_id` and verifies `password` against it; without a stored
    /// hash, the same work is spent on a dummy hash and the answer is "no match".
    async fn verify_password(
        &self,
        user_id: Uuid,
        password: &str,
    ) -> Result<password::Verified, ApiError> {
        let stored: Option<String> =
            sqlx::query_scalar("select password_hash from credentials where user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        match stored {
            Some(hash) => Ok(self.hasher.verify(password, &hash).await?),
            None => {
                self.hasher.verify_dummy(password).await?;
                Ok(password::Verified {
                    matches: false,
                    needs_rehash: false,
                })
            }
        }
    }

    /// A token pair for a session: a new access token and the given refresh token.
    fn token_pair(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: &[String],
        refresh_token: String,
    ) -> Result<TokenPair, ApiError> {
        let (access_token, expires_in) = self
            .tokens
            .issue_access(user_id, session_id, roles)
            .map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("while signing an access token: {e}"))
            })?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in,
        })
    }

    /// Whether session `sid` is neither revoked nor expired.
    pub async fn session_is_active(&self, sid: Uuid) -> Result<bool, ApiError> {
        let active: Option<bool> = sqlx::query_scalar(
            "select revoked_at is null and expires_at > now() from sessions where session_id = $1",
        )
        .bind(sid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(active.unwrap_or(false))
    }

    /// The account `id`, folded from its stream (NotFound if it has none).
    pub async fn load_user(&self, id: Uuid) -> Result<User, ApiError> {
        let events = self.store.read_stream(&user::stream_id(id), 1).await?;
        let user = User::fold(id, &events);
        if !user.exists() {
            return Err(ApiError::NotFound);
        }
        Ok(user)
    }

    /// The account holding `email`, if any.
    pub async fn user_id_by_email(&self, email: &Email) -> Result<Option<Uuid>, ApiError> {
        let stream: Option<String> = sqlx::query_scalar(
            "select stream_id from reservations where scope = 'email' and value = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(stream.and_then(|s| {
            s.strip_prefix("user-")
                .and_then(|id| Uuid::parse_str(id).ok())
        }))
    }

    /// Registers an account. A taken address gets, instead, a pending registration of its own
    /// if its account is unverified, or a notice to its owner if verified. All three answer the
    /// same after the same work: the limits, one hash, one lookup and one transaction.
    pub async fn register(
        &self,
        ctx: &ClientContext,
        email: &Email,
        password: &str,
        display_name: Option<String>,
    ) -> Result<(), ApiError> {
        password::validate(password)
            .map_err(|e| ApiError::Unprocessable(format!("password: {e}")))?;
        let turn = self.shares.turn(&ctx.ip_key()).await;
        self.limit(&[
            (
                format!("register:ip:{}", ctx.ip_key()),
                self.limits.email_per_ip,
            ),
            (
                format!("register:account:{}", email.as_str()),
                self.limits.email_per_account,
            ),
        ])
        .await?;
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
                        &ctx.metadata(format!("user-{id}")),
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
                Err(ApiError::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(ApiError::Conflict(
            "the account kept changing; try again".into(),
        ))
    }

    /// A registration of the address of account `owner`: see [`user::register_again`]. The
    /// pending registration's password waits in `pending_registrations`.
    async fn register_again(
        &self,
        ctx: &ClientContext,
        owner: Uuid,
        display_name: Option<String>,
        hash: &str,
    ) -> Result<(), ApiError> {
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

    #[allow(clippy::too_many_arguments)]
    async fn create_account(
        &self,
        id: Uuid,
        email: &Email,
        display_name: Option<String>,
        roles: Vec<String>,
        verified: bool,
        password_hash: &str,
        metadata: &Metadata,
    ) -> Result<(), ApiError> {
        let events = user::register(email.as_str(), display_name, roles, verified);
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let appended = self
            .store
            .append_in(
                &mut tx,
                Append::to(user::stream_id(id))
                    .events(events.iter().map(UserEvent::to_new_event))
                    .claim("email", email.as_str())
                    .metadata(metadata.clone()),
            )
            .await;
        match appended {
            Ok(_) => {}
            Err(AppendError::ReservationTaken { .. }) => {
                return Err(ApiError::Conflict("email taken".into()));
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
    pub async fn verify_email(&self, ctx: &ClientContext, token: &str) -> Result<(), ApiError> {
        let invalid = || ApiError::Unprocessable("token: invalid or expired".into());
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
            ctx.metadata(format!("user-{user_id}")),
        )
        .await
        .map_err(|e| {
            if matches!(e, ApiError::Conflict(_)) {
                invalid()
            } else {
                e
            }
        })?;
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
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the password of pending registration {registration} is missing"
                )));
            }
        }
        sqlx::query("delete from pending_registrations where user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn user_of_event(
        &self,
        event_id: Uuid,
        event_type: &str,
    ) -> Result<Option<Uuid>, ApiError> {
        let stream: Option<String> = sqlx::query_scalar(
            "select stream_id from events where event_id = $1 and event_type = $2",
        )
        .bind(event_id)
        .bind(event_type)
        .fetch_optional(&self.pool)
        .await?;
        Ok(stream.and_then(|s| {
            s.strip_prefix("user-")
                .and_then(|id| Uuid::parse_str(id).ok())
        }))
    }

    async fn append_user(
        &self,
        account: &User,
        events: &[UserEvent],
        metadata: Metadata,
    ) -> Result<(), ApiError> {
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .append(
                Append::to(user::stream_id(account.id))
                    .expecting(exact(account.version))
                    .events(events.iter().map(UserEvent::to_new_event))
                    .metadata(metadata),
            )
            .await?;
        Ok(())
    }

    /// Sends another verification email if the account exists and is unverified.
    pub async fn resend_verification(
        &self,
        ctx: &ClientContext,
        email: &Email,
    ) -> Result<(), ApiError> {
        self.request_email(
            ctx,
            email,
            Requested::Verification,
            user::request_verification,
        )
        .await
    }

    /// Sends a reset email if the account exists, unless an administrator's lock is in force
    /// (the reset would be refused).
    pub async fn forgot_password(
        &self,
        ctx: &ClientContext,
        email: &Email,
    ) -> Result<(), ApiError> {
        self.request_email(ctx, email, Requested::PasswordReset, |account| {
            if account.is_locked_by_admin(Utc::now()) {
                Vec::new()
            } else {
                user::request_reset(account)
            }
        })
        .await
    }

    /// A rate-limited request for an email about an account, answered as soon as it passed
    /// the limits: what becomes of it (an email; or nothing, because no account has the address
    /// or it needs no such email) is carried out afterwards, so neither the answer nor its
    /// timing tells anything about the address. A request that cannot be carried out (the
    /// database is away) is logged; its sender gets no email and asks again.
    async fn request_email(
        &self,
        ctx: &ClientContext,
        email: &Email,
        requested: Requested,
        decide: fn(&User) -> Vec<UserEvent>,
    ) -> Result<(), ApiError> {
        let turn = self.shares.turn(&ctx.ip_key()).await;
        self.limit(&[
            (
                format!("email:ip:{}", ctx.ip_key()),
                self.limits.email_per_ip,
            ),
            (
                format!("email:account:{}", email.as_str()),
                self.limits.email_per_account,
            ),
        ])
        .await?;
        let this = self.clone();
        let (ctx, email) = (ctx.clone(), email.clone());
        self.background.spawn(async move {
            // The client's turn lasts until its request is carried out.
            let _turn = turn;
            if let Err(error) = this
                .carry_out_email_request(&ctx, &email, requested, decide)
                .await
            {
                tracing::warn!(error = %error, ?requested, "an email request could not be carried out");
            }
        });
        Ok(())
    }

    /// Carries out an email request: the events `decide` makes for the account, or, when it
    /// makes none or there is no account, an `EmailRequestUnanswered` under the address's keyed
    /// digest, so that the log shows every request.
    async fn carry_out_email_request(
        &self,
        ctx: &ClientContext,
        email: &Email,
        requested: Requested,
        decide: fn(&User) -> Vec<UserEvent>,
    ) -> Result<(), ApiError> {
        let (account, events) = match self.user_id_by_email(email).await? {
            Some(id) => {
                let account = self.load_user(id).await?;
                let events = decide(&account);
                (Some(account), events)
            }
            None => (None, Vec::new()),
        };
        match account {
            Some(account) if !events.is_empty() => {
                self.append_user(&account, &events, ctx.metadata("anonymous"))
                    .await
            }
            account => {
                let reason = if account.is_some() {
                    Unanswered::NothingToSend
                } else {
                    Unanswered::UnknownAccount
                };
                let digest = address_digest::digest(&self.address_digest_keys, email.as_str());
                let stream =
                    email_request::unanswered_stream_id(&address_digest::stream_name(&digest));
                self.store
                    .append(
                        Append::to(stream)
                            .expecting(ExpectedVersion::Any)
                            .event(email_request::unanswered(
                                requested,
                                reason,
                                &hex::encode(digest),
                            ))
                            .metadata(ctx.metadata("anonymous")),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// Signs in. Every refusal is the same [`ApiError::InvalidCredentials`], after the same work.
    /// A malformed address is answered at once (the format rule is public; nothing is hashed);
    /// everything else passes the rate limits before any hashing.
    pub async fn login(
        &self,
        ctx: &ClientContext,
        email: &str,
        password: &str,
    ) -> Result<TokenPair, ApiError> {
        let email = &Email::parse(email)?;
        // One request of this client at a time, from before its limits are counted to the end
        // (see `ClientShares`): a flood from one address queues behind itself, not in the
        // database pool or the hasher's queue.
        let _turn = self.shares.turn(&ctx.ip_key()).await;
        self.limit(&[
            (
                format!("login:ip:{}", ctx.ip_key()),
                self.limits.login_per_ip,
            ),
            (
                format!("login:account:{}", email.as_str()),
                self.limits.login_per_account,
            ),
        ])
        .await
        .inspect_err(|err| {
            if matches!(err, ApiError::TooManyRequests { .. }) {
                metrics::counter!("idp_auth_logins_total", "outcome" => "rate_limited")
                    .increment(1);
            }
        })?;
        let Some(user_id) = self.user_id_by_email(email).await? else {
            self.refuse_unknown(ctx, email, password).await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "unknown_account").increment(1);
            return Err(ApiError::InvalidCredentials);
        };
        let account = self.load_user(user_id).await?;
        let verified = self.verify_password(user_id, password).await?;
        let now = Utc::now();
        let meta = ctx.metadata(format!("user-{user_id}"));
        if account.is_locked(now) {
            self.record_failure(&account, FailureReason::Locked, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "locked").increment(1);
            return Err(ApiError::InvalidCredentials);
        }
        if !verified.matches {
            self.record_failure(&account, FailureReason::WrongPassword, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "failure").increment(1);
            return Err(ApiError::InvalidCredentials);
        }
        if !account.email_verified {
            self.record_failure(&account, FailureReason::Unverified, meta)
                .await?;
            metrics::counter!("idp_auth_logins_total", "outcome" => "unverified").increment(1);
            return Err(ApiError::InvalidCredentials);
        }
        if verified.needs_rehash {
            self.rehash(&account, password, meta.clone()).await?;
        }
        let pair = self.start_session(&account, meta).await?;
        metrics::counter!("idp_auth_logins_total", "outcome" => "success").increment(1);
        Ok(pair)
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
    ) -> Result<(), ApiError> {
        let digest = address_digest::digest(&self.address_digest_keys, email.as_str());
        let digest_hex = hex::encode(digest);
        let stream = login::unknown_stream_id(&address_digest::stream_name(&digest));
        let pseudo_id = Uuid::from_slice(&digest[..16]).unwrap_or_default();
        self.store.stream_version(&stream).await?;
        self.verify_password(pseudo_id, password).await?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(stream)
                    .expecting(ExpectedVersion::Any)
                    .event(login::failed_unknown(&digest_hex))
                    .metadata(ctx.metadata("anonymous")),
            )
            .await?;
        count_failure(&mut tx, pseudo_id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_failure(
        &self,
        account: &User,
        reason: FailureReason,
        meta: Metadata,
    ) -> Result<(), ApiError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(login::stream_id(account.id))
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
                    Append::to(user::stream_id(account.id))
                        .expecting(exact(account.version))
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

    async fn record_failure_after_conflict(
        &self,
        user_id: Uuid,
        reason: FailureReason,
    ) -> Result<(), ApiError> {
        let account = self.load_user(user_id).await?;
        self.record_failure(&account, reason, Metadata::actor(format!("user-{user_id}")))
            .await
    }

    async fn rehash(&self, account: &User, password: &str, meta: Metadata) -> Result<(), ApiError> {
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
                Append::to(user::stream_id(account.id))
                    .expecting(ExpectedVersion::Any)
                    .event(UserEvent::PasswordRehashed.to_new_event())
                    .metadata(meta),
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn start_session(&self, account: &User, meta: Metadata) -> Result<TokenPair, ApiError> {
        let session_id = Uuid::now_v7();
        let (refresh_token, refresh_hash) = tokens::new_refresh_token();
        let expires_at = Utc::now() + self.session_ttl;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("select pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
            .bind(sessions_lock(account.id))
            .execute(&mut *tx)
            .await?;
        let version: i64 = sqlx::query_scalar(
            "select coalesce(max(stream_version), 0) from events where stream_id = $1",
        )
        .bind(user::stream_id(account.id))
        .fetch_one(&mut *tx)
        .await?;
        // The account changed since the password was checked: maybe an administrator locked it.
        let reloaded;
        let account = if version == account.version {
            account
        } else {
            reloaded = self.load_user(account.id).await?;
            if reloaded.is_locked(Utc::now()) {
                return Err(ApiError::InvalidCredentials);
            }
            &reloaded
        };
        reset_failures(&mut tx, account.id).await?;
        sqlx::query(
            "with session as (
                 insert into sessions (session_id, user_id, generation, expires_at) values ($1, $2, 1, $3)
             )
             insert into refresh_tokens (token_hash, session_id, generation) values ($4, $1, 1)",
        )
        .bind(session_id)
        .bind(account.id)
        .bind(expires_at)
        .bind(&refresh_hash)
        .execute(&mut *tx)
        .await?;
        // The success is the first event of the session it starts (failures go to the
        // account's login stream, which lockout reads).
        self.store
            .append_in(
                &mut tx,
                Append::to(session::stream_id(session_id))
                    .event(login::succeeded(session_id))
                    .event(
                        SessionEvent::SessionStarted {
                            user_id: account.id,
                            expires_at,
                        }
                        .to_new_event(),
                    )
                    .metadata(meta),
            )
            .await?;
        tx.commit().await?;
        self.token_pair(account.id, session_id, &account.roles, refresh_token)
    }

    /// Rotates a refresh token. A token already rotated ends its whole session (family).
    pub async fn refresh(
        &self,
        ctx: &ClientContext,
        refresh_token: &str,
    ) -> Result<TokenPair, ApiError> {
        let hash = tokens::hash_refresh_token(refresh_token);
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
            return Err(ApiError::Unauthorized);
        };
        let session_id: Uuid = row.try_get("session_id")?;
        let user_id: Uuid = row.try_get("user_id")?;
        let generation: i32 = row.try_get("generation")?;
        let presented: i32 = row.try_get("presented")?;
        let active: bool = row.try_get("active")?;
        let meta = ctx.metadata(format!("user-{user_id}"));
        if !active {
            return Err(ApiError::Unauthorized);
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
            return Err(ApiError::Unauthorized);
        }
        let account = self.load_user(user_id).await?;
        let (new_token, new_hash) = tokens::new_refresh_token();
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
                Append::to(session::stream_id(session_id))
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

    /// Ends session `session_id` with `events`; false if it had ended already.
    async fn revoke_in(
        &self,
        conn: &mut PgConnection,
        session_id: Uuid,
        events: &[SessionEvent],
        reason: RevokeReason,
        meta: Metadata,
    ) -> Result<bool, ApiError> {
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
                Append::to(session::stream_id(session_id))
                    .expecting(ExpectedVersion::Any)
                    .events(events.iter().map(SessionEvent::to_new_event))
                    .metadata(meta),
            )
            .await?;
        Ok(true)
    }

    /// Ends the session of a refresh token. Unknown or already ended: nothing to do.
    pub async fn logout(&self, ctx: &ClientContext, refresh_token: &str) -> Result<(), ApiError> {
        let hash = tokens::hash_refresh_token(refresh_token);
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
                ctx.metadata(format!("user-{user_id}")),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Ends the sessions of `user_id` except `keep`, inside `conn`'s transaction, and says how
    /// many. Sign-ins of the account wait until the transaction ends (see [`sessions_lock`]).
    async fn revoke_all(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
        keep: Option<Uuid>,
        reason: RevokeReason,
        meta: &Metadata,
    ) -> Result<usize, ApiError> {
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

    /// Sets a new password with the token from the reset email; every session ends.
    pub async fn reset_password(
        &self,
        ctx: &ClientContext,
        token: &str,
        new_password: &str,
    ) -> Result<(), ApiError> {
        let invalid = || ApiError::Unprocessable("token: invalid or expired".into());
        let reset_id = one_time_token::open(&self.email_keys, Purpose::ResetPassword, token)
            .map_err(|_| invalid())?;
        password::validate(new_password)
            .map_err(|e| ApiError::Unprocessable(format!("new_password: {e}")))?;
        let user_id = self
            .user_of_event(reset_id, "PasswordResetRequested")
            .await?
            .ok_or_else(invalid)?;
        let account = self.load_user(user_id).await?;
        let events = user::reset_password(&account, reset_id, Utc::now()).map_err(|_| invalid())?;
        let hash = self.hasher.hash(new_password).await?;
        let meta = ctx.metadata(format!("user-{user_id}"));
        self.replace_password(
            &account,
            &events,
            &hash,
            None,
            RevokeReason::PasswordReset,
            meta,
        )
        .await
        .map_err(|e| {
            if matches!(e, ApiError::Conflict(_)) {
                invalid()
            } else {
                e
            }
        })
    }

    /// Changes the caller's password; the caller's other sessions end.
    pub async fn change_password(
        &self,
        ctx: &ClientContext,
        user_id: Uuid,
        session_id: Uuid,
        current: &str,
        new_password: &str,
    ) -> Result<(), ApiError> {
        self.limit(&[(
            format!("login:account-id:{user_id}"),
            self.limits.login_per_account,
        )])
        .await?;
        let account = self.load_user(user_id).await?;
        let matches = self.verify_password(user_id, current).await?.matches;
        if !matches {
            return Err(ApiError::Unprocessable(
                "current_password: incorrect".into(),
            ));
        }
        password::validate(new_password)
            .map_err(|e| ApiError::Unprocessable(format!("new_password: {e}")))?;
        let hash = self.hasher.hash(new_password).await?;
        let meta = ctx.metadata(format!("user-{user_id}"));
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

    async fn replace_password(
        &self,
        account: &User,
        events: &[UserEvent],
        hash: &str,
        keep: Option<Uuid>,
        reason: RevokeReason,
        meta: Metadata,
    ) -> Result<(), ApiError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        lock_sessions(&mut tx, account.id).await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(user::stream_id(account.id))
                    .expecting(exact(account.version))
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

    /// Lifts the lock of `user_id` (an administrator's action, recorded with them as actor).
    pub async fn unlock(
        &self,
        ctx: &ClientContext,
        admin: &str,
        user_id: Uuid,
    ) -> Result<(), ApiError> {
        let account = self.load_user(user_id).await?;
        let events = user::unlock(&account, Utc::now()).map_err(domain)?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(user::stream_id(user_id))
                    .expecting(exact(account.version))
                    .events(events.iter().map(UserEvent::to_new_event))
                    .metadata(ctx.metadata(admin)),
            )
            .await?;
        reset_failures(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(())
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
    ) -> Result<LockOutcome, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let (account, other_admins) = self.guard_admins(&mut tx, user_id).await?;
        lock_sessions(&mut tx, user_id).await?;
        let events = user::lock(&account, until, Utc::now(), other_admins).map_err(domain)?;
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
    ) -> Result<Vec<String>, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let (account, other_admins) = self.guard_admins(&mut tx, user_id).await?;
        // `change_roles` counts the account itself among the administrators.
        let events =
            user::change_roles(&account, roles, other_admins.saturating_add(1)).map_err(domain)?;
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
    ) -> Result<usize, ApiError> {
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

    /// How many sessions of `user_id` are neither revoked nor expired.
    pub async fn active_sessions(&self, user_id: Uuid) -> Result<i64, ApiError> {
        Ok(sqlx::query_scalar(
            "select count(*) from sessions where user_id = $1 and revoked_at is null and expires_at > now()",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Takes [`ADMINS_GUARD`] for the rest of `conn`'s transaction, then reads, inside it,
    /// account `user_id` and how many other administrators can sign in now (verified, not
    /// locked). Administrators are listed by `admin_accounts`; only their streams are folded.
    async fn guard_admins(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
    ) -> Result<(User, usize), ApiError> {
        sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(ADMINS_GUARD)
            .execute(&mut *conn)
            .await?;
        let target = user::stream_id(user_id);
        let admins: Vec<Uuid> =
            sqlx::query_scalar("select user_id from admin_accounts where user_id <> $1")
                .bind(user_id)
                .fetch_all(&mut *conn)
                .await?;
        let mut wanted: Vec<String> = admins.into_iter().map(user::stream_id).collect();
        wanted.push(target.clone());
        let rows = sqlx::query(
            "select position, transaction_id::text::bigint as transaction_id, event_id, stream_id,
                    stream_version, event_type, schema_version, data, metadata, recorded_at, hash
               from events
              where stream_id = any($1)
              order by stream_id, stream_version",
        )
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await?;
        let mut streams: std::collections::BTreeMap<String, Vec<idp_events::RecordedEvent>> =
            std::collections::BTreeMap::new();
        for row in &rows {
            let mut event = idp_events::RecordedEvent::from_row(row)?;
            self.store.upcasters().apply(&mut event);
            streams
                .entry(event.stream_id.clone())
                .or_default()
                .push(event);
        }
        let account = User::fold(user_id, streams.get(&target).map_or(&[], Vec::as_slice));
        if !account.exists() {
            return Err(ApiError::NotFound);
        }
        let now = Utc::now();
        let other_admins = streams
            .iter()
            .filter(|(stream, _)| **stream != target)
            .filter_map(|(stream, events)| {
                let id = stream.strip_prefix("user-")?.parse().ok()?;
                Some(User::fold(id, events))
            })
            .filter(|a| a.has_role(user::ROLE_ADMIN) && a.email_verified && !a.is_locked(now))
            .count();
        Ok((account, other_admins))
    }

    /// Appends `events` to `account`'s stream inside `conn`'s transaction, keeping
    /// `admin_accounts` in step with any change of roles.
    async fn append_user_in(
        &self,
        conn: &mut PgConnection,
        account: &User,
        events: &[UserEvent],
        metadata: Metadata,
    ) -> Result<(), ApiError> {
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .append_in(
                &mut *conn,
                Append::to(user::stream_id(account.id))
                    .expecting(exact(account.version))
                    .events(events.iter().map(UserEvent::to_new_event))
                    .metadata(metadata),
            )
            .await?;
        if let Some(admin) = roles_grant_admin(events) {
            set_admin(conn, account.id, admin).await?;
        }
        Ok(())
    }

    /// The caller's profile.
    pub async fn profile(&self, user_id: Uuid) -> Result<Profile, ApiError> {
        let account = self.load_user(user_id).await?;
        Ok(Profile {
            id: account.id,
            email: account.email,
            display_name: account.display_name,
            roles: account.roles,
            email_verified: account.email_verified,
            created_at: account.registered_at,
        })
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
                .create_account(Uuid::now_v7(), email, None, roles, true, &hash, &meta)
                .await
            {
                Err(ApiError::Conflict(_)) => continue,
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
    Failed(#[from] ApiError),
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

/// Counts a wrong password for `user_id` and returns the consecutive failures so far.
async fn count_failure(conn: &mut PgConnection, user_id: Uuid) -> Result<u32, ApiError> {
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

/// Ends the run of consecutive failures of `user_id` (a success, a lock, a new password).
async fn reset_failures(conn: &mut PgConnection, user_id: Uuid) -> Result<(), ApiError> {
    sqlx::query("update login_state set consecutive_failures = 0 where user_id = $1 and consecutive_failures <> 0")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether the last event of `events` that sets roles grants `admin`; `None` if none sets roles.
fn roles_grant_admin(events: &[UserEvent]) -> Option<bool> {
    events.iter().rev().find_map(|e| match e {
        UserEvent::UserRegistered { roles, .. } | UserEvent::RolesChanged { roles } => {
            Some(roles.iter().any(|r| r == user::ROLE_ADMIN))
        }
        _ => None,
    })
}

/// Records in `admin_accounts` whether `user_id` is an administrator.
async fn set_admin(conn: &mut PgConnection, user_id: Uuid, admin: bool) -> Result<(), ApiError> {
    let sql = if admin {
        "insert into admin_accounts (user_id, granted_at) values ($1, now()) on conflict (user_id) do nothing"
    } else {
        "delete from admin_accounts where user_id = $1"
    };
    sqlx::query(sql).bind(user_id).execute(conn).await?;
    Ok(())
}

fn exact(version: i64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(u64::try_from(version).unwrap_or(0))
    }
}

fn domain(err: UserError) -> ApiError {
    match err {
        UserError::NotFound => ApiError::NotFound,
        UserError::LastAdmin | UserError::LastActiveAdmin => ApiError::Conflict(err.to_string()),
        other => ApiError::Unprocessable(other.to_string()),
    }
}
