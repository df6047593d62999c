//! The identity service: registration, sign-in, sessions, passwords and account
//! administration.
//!
//! Each use case loads what its decision needs, decides with the pure functions of
//! `idp_events::identity`, and appends the resulting events together with the inline state they
//! imply (credentials, login counters, sessions, the administrator list) in one transaction. One
//! file per use case; this one holds the service and what they share. Every failure is an
//! [`IdentityError`], which becomes an HTTP answer in one place (`error.rs`).

mod admin;
mod captcha;
mod consents;
mod email_requests;
mod erasure;
mod error;
mod export;
mod federated;
mod passwords;
mod register;
mod second_factor;
mod sessions;
mod sign_in;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use idp_events::identity::email::Email;
use idp_events::identity::user::{self, User, UserEvent};
use idp_events::keys::SecretKeys;
use idp_events::privacy::blind_index::BlindIndex;
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, StreamId};
use sqlx::{PgConnection, PgPool};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use self::admin::AdminBootstrapError;
pub use self::captcha::Captcha;
pub use self::consents::{ConsentView, consent_views};
pub use self::erasure::{Eraser, ErasureOutcome};
pub use self::error::IdentityError;
pub use self::export::PersonalExport;
pub use self::federated::{Assertion, IdentityView, LOGIN_CODE_TTL_SECS};
pub use self::second_factor::{Enrolment, SecondFactorChallenge, SignIn};
pub use self::sessions::{OtherSessionsRevoked, SessionView};
pub use self::sign_in::FederatedSession;
use crate::auth::password::{self, ClientShares, Hasher};
use crate::auth::rate_limit::{Decision, Limit, RateLimiter};
use crate::auth::tokens::Tokens;
use crate::config::{IdentityConfig, SessionBinding};

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

/// A session as a request finds it ([`Identity::session_state`]).
#[derive(Debug, Clone)]
pub struct SessionState {
    /// Neither revoked nor expired.
    pub active: bool,
    /// Its account has a second factor on (only looked up when `MFA_REQUIRED_ROLES` names a
    /// role; `false` otherwise).
    pub second_factor: bool,
    /// The plan its account is on (`None`: the default plan).
    pub plan: Option<String>,
}

/// The reservation scope that keeps one account per email address.
const EMAIL_SCOPE: &str = "email";

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
    /// Blind indexes of addresses and rate-limit keys (`EMAIL_INDEX_KEYS`).
    pub email_index: SecretKeys,
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
    email_index: BlindIndex,
    rate_index: BlindIndex,
    /// Blind indexes of external identities (provider and subject).
    identity_index: BlindIndex,
    limits: Limits,
    session_ttl: chrono::Duration,
    /// `SESSION_BINDING`.
    session_binding: SessionBinding,
    /// `NEW_DEVICE_WINDOW_DAYS` (`None`: no notices).
    new_device_window: Option<chrono::Duration>,
    /// `MFA_ISSUER`.
    mfa_issuer: Arc<str>,
    /// `MFA_REQUIRED_ROLES`.
    mfa_required_roles: Arc<[String]>,
    /// `CAPTCHA_*` (`None`: never asked).
    captcha: Option<Arc<Captcha>>,
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
            email_index: BlindIndex::new(keys.email_index.clone(), "email"),
            identity_index: BlindIndex::new(keys.email_index.clone(), "external-identity"),
            rate_index: BlindIndex::new(keys.email_index, "rate-limit-key"),
            limits: Limits {
                login_per_ip: config.login_per_ip,
                login_per_account: config.login_per_account,
                email_per_ip: config.email_per_ip,
                email_per_account: config.email_per_account,
            },
            session_ttl: chrono::Duration::days(i64::from(config.session_ttl_days)),
            session_binding: config.session_binding,
            new_device_window: (config.new_device_window_days > 0)
                .then(|| chrono::Duration::days(i64::from(config.new_device_window_days))),
            mfa_issuer: config.mfa_issuer.as_str().into(),
            mfa_required_roles: config
                .mfa_required_roles
                .iter()
                .filter(|role| !role.is_empty())
                .cloned()
                .collect(),
            captcha: None,
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
    async fn limit(&self, buckets: &[(String, Limit)]) -> Result<(), IdentityError> {
        match self.limiter.hit_all(buckets, Utc::now()).await? {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => {
                let kind = buckets
                    .first()
                    .and_then(|(b, _)| b.split(':').next())
                    .unwrap_or("")
                    .to_owned();
                metrics::counter!("idp_rate_limited_total", "kind" => kind).increment(1);
                Err(IdentityError::RateLimited {
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
    ) -> Result<password::Verified, IdentityError> {
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

    /// Whether session `sid` is neither revoked nor expired, its account's plan, and (only
    /// asked when some role must have a second factor, `MFA_REQUIRED_ROLES`) whether its
    /// account has one on: one statement either way.
    pub async fn session_state(&self, sid: Uuid) -> Result<SessionState, IdentityError> {
        let state: Option<(bool, bool, Option<String>)> = if self.mfa_required_roles.is_empty() {
            sqlx::query_as(
                "select s.revoked_at is null and s.expires_at > now(), false, p.plan
                   from sessions s left join account_plans p on p.account_id = s.user_id
                  where s.session_id = $1",
            )
        } else {
            sqlx::query_as(
                "select s.revoked_at is null and s.expires_at > now(), f.enabled_at is not null,
                        p.plan
                   from sessions s left join second_factors f on f.user_id = s.user_id
                   left join account_plans p on p.account_id = s.user_id
                  where s.session_id = $1",
            )
        }
        .bind(sid)
        .fetch_optional(&self.pool)
        .await?;
        let (active, second_factor, plan) = state.unwrap_or((false, false, None));
        Ok(SessionState {
            active,
            second_factor,
            plan,
        })
    }

    /// Whether a holder of `roles` without a second factor must enrol one before anything
    /// else (`MFA_REQUIRED_ROLES`).
    pub fn must_enrol(&self, roles: &[String], state: &SessionState) -> bool {
        !state.second_factor && roles.iter().any(|r| self.mfa_required_roles.contains(r))
    }

    /// The account `id`, folded from its stream (NotFound if it has none).
    pub async fn load_user(&self, id: Uuid) -> Result<User, IdentityError> {
        let events = self
            .store
            .read_stream_to_fold(StreamId::user(id).as_str(), 1)
            .await?;
        let user = User::fold(id, &events);
        if !user.exists() {
            return Err(IdentityError::NotFound);
        }
        Ok(user)
    }

    /// The account holding `email`, if any: the holder of its `EMAIL_SCOPE` reservation, which
    /// holds the address's blind index (under any key of the ring), never the address.
    pub async fn user_id_by_email(&self, email: &Email) -> Result<Option<Uuid>, IdentityError> {
        for index in self.email_index.candidates(email.as_str()) {
            if let Some(holder) = self.store.holder_of(EMAIL_SCOPE, &index).await? {
                return Ok(holder.user_id());
            }
        }
        Ok(None)
    }

    /// The value of `email`'s reservation: its blind index under the current key.
    fn email_claim(&self, email: &Email) -> String {
        self.email_index.index(email.as_str())
    }

    /// The key of rate-limit bucket `kind` for `value` (an address, a client address): its
    /// blind index, so the bucket table holds neither.
    fn rate_key(&self, kind: &str, value: &str) -> String {
        format!("{kind}:{}", self.rate_index.index(value))
    }

    /// Replaces every address reservation that still holds an address in the clear (written
    /// before reservations held blind indexes) by the address's index; returns how many.
    /// Idempotent: an index holds no `@`.
    pub async fn index_clear_reservations(&self) -> Result<u64, IdentityError> {
        let clear: Vec<String> = sqlx::query_scalar(
            "select value from reservations where scope = $1 and value like '%@%'",
        )
        .bind(EMAIL_SCOPE)
        .fetch_all(&self.pool)
        .await?;
        let mut done = 0;
        for value in clear {
            let index = self.email_index.index(&value);
            done +=
                sqlx::query("update reservations set value = $3 where scope = $1 and value = $2")
                    .bind(EMAIL_SCOPE)
                    .bind(&value)
                    .bind(&index)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
        }
        Ok(done)
    }

    /// The account whose stream holds event `event_id` of type `event_type` (the event a
    /// one-time token was made from), if any.
    async fn user_of_event(
        &self,
        event_id: Uuid,
        event_type: &str,
    ) -> Result<Option<Uuid>, IdentityError> {
        let stream = self.store.stream_of_event(event_id, event_type).await?;
        Ok(stream.and_then(|stream| stream.user_id()))
    }

    /// The caller's profile.
    pub async fn profile(&self, user_id: Uuid) -> Result<Profile, IdentityError> {
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

    /// How many sessions of `user_id` are neither revoked nor expired.
    pub async fn active_sessions(&self, user_id: Uuid) -> Result<i64, IdentityError> {
        Ok(sqlx::query_scalar(
            "select count(*) from sessions where user_id = $1 and revoked_at is null and expires_at > now()",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Appends `events` to `account`'s stream in a transaction of its own, on the version it
    /// was folded to.
    async fn append_user(
        &self,
        account: &User,
        events: &[UserEvent],
        metadata: Metadata,
    ) -> Result<(), IdentityError> {
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .append(user_append(account, events, metadata))
            .await?;
        Ok(())
    }

    /// Appends `events` to `account`'s stream inside `conn`'s transaction, keeping
    /// `admin_accounts` in step with any change of roles.
    async fn append_user_in(
        &self,
        conn: &mut PgConnection,
        account: &User,
        events: &[UserEvent],
        metadata: Metadata,
    ) -> Result<(), IdentityError> {
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .append_in(&mut *conn, user_append(account, events, metadata))
            .await?;
        if let Some(admin) = roles_grant_admin(events) {
            set_admin(conn, account.id, admin).await?;
        }
        Ok(())
    }
}

/// `events` for `account`'s stream, on the version it was folded to.
fn user_append(account: &User, events: &[UserEvent], metadata: Metadata) -> Append {
    Append::to(StreamId::user(account.id))
        .about(account.id)
        .expecting(ExpectedVersion::after(account.version))
        .events(events.iter().map(UserEvent::to_new_event))
        .metadata(metadata)
}

/// Ends the run of consecutive failures of `user_id` (a success, a lock, a new password).
async fn reset_failures(conn: &mut PgConnection, user_id: Uuid) -> Result<(), IdentityError> {
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
async fn set_admin(
    conn: &mut PgConnection,
    user_id: Uuid,
    admin: bool,
) -> Result<(), IdentityError> {
    let sql = if admin {
        "insert into admin_accounts (user_id, granted_at) values ($1, now()) on conflict (user_id) do nothing"
    } else {
        "delete from admin_accounts where user_id = $1"
    };
    sqlx::query(sql).bind(user_id).execute(conn).await?;
    Ok(())
}
