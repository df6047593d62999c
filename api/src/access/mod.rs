//! Machine callers and plans: service accounts, API keys, the plan each account is on, the
//! quotas it sets (live projects, monthly spend) and the per-plan rate limits of every
//! authenticated route.
//!
//! Each kind of record is an aggregate of its own in the log (`service-account-<uuid>`,
//! `api-key-<uuid>`, `plan-<uuid>`) with an inline table written in the same transaction as its
//! events (`service_accounts`, `api_keys`, `account_plans`), which requests read.

pub mod api_keys;
pub mod plans;
pub mod service_accounts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use idp_events::EventStore;
use idp_events::identity::api_key::Scope;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::plans::{Plan, Plans};
use crate::auth::request_limits::{Counted, RateDecision, RequestLimiter};
use crate::error::ApiError;

/// How often a key's `last_used_at` is written at most, per API instance.
const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

/// The service of machine callers and plans.
#[derive(Debug, Clone)]
pub struct Access {
    store: EventStore,
    pool: PgPool,
    plans: Arc<Plans>,
    /// `DEFAULT_PLAN` and what it allows.
    default_plan: (Arc<str>, Plan),
    limiter: RequestLimiter,
    /// When each key's use was last written, so a busy key costs one write a minute.
    last_used: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

/// An API key found valid, and what its owner is.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    /// The key.
    pub key_id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// Whether the owner is a service account.
    pub service_account: bool,
    /// The key's scopes.
    pub scopes: Vec<Scope>,
    /// The owner's plan.
    pub plan: String,
    /// The owner's roles if a service account (a person's are folded from their stream when a
    /// route needs them).
    pub roles: Vec<String>,
}

impl Access {
    /// The service over `store`, with the configured plans (`default_plan` must be one) and
    /// the request limiter.
    pub fn new(
        store: EventStore,
        plans: Plans,
        default_plan: &str,
        limiter: RequestLimiter,
    ) -> anyhow::Result<Self> {
        let Some(default) = plans.get(default_plan).copied() else {
            anyhow::bail!(
                "DEFAULT_PLAN={default_plan:?} is not one of the plans of PLANS ({})",
                plans.names().collect::<Vec<_>>().join(", ")
            );
        };
        Ok(Self {
            pool: store.pool().clone(),
            store,
            plans: Arc::new(plans),
            default_plan: (default_plan.into(), default),
            limiter,
            last_used: Arc::default(),
        })
    }

    /// The plans.
    pub fn plans(&self) -> &Plans {
        &self.plans
    }

    /// The plan of accounts that were put on none.
    pub fn default_plan(&self) -> &str {
        &self.default_plan.0
    }

    /// The plan called `name` (as stored for an account) and what it allows; the default
    /// plan for an account on none, or on a plan no longer configured.
    pub fn plan<'a>(&'a self, name: Option<&'a str>) -> (&'a str, Plan) {
        if let Some((name, plan)) = name.and_then(|n| Some((n, *self.plans.get(n)?))) {
            return (name, plan);
        }
        (&self.default_plan.0, self.default_plan.1)
    }

    /// Counts a request of `account` (with `key`, if made with one) under the plan `plan`:
    /// the tighter of the account's and the key's limits. `None` when limits are off.
    pub async fn count_request(
        &self,
        account: Uuid,
        key: Option<Uuid>,
        plan: Option<&str>,
    ) -> Result<Option<RateDecision>, ApiError> {
        if !self.limiter.enabled() {
            return Ok(None);
        }
        let per_minute = self.plan(plan).1.requests_per_minute;
        let mut decision = self
            .limiter
            .check(Counted::Account(account), per_minute)
            .await?;
        if let Some(key) = key {
            let by_key = self.limiter.check(Counted::Key(key), per_minute).await?;
            decision = decision.tighter(by_key);
        }
        Ok(Some(decision))
    }

    /// The holder of the key whose hash is `hash`, if it is neither revoked nor expired.
    pub async fn key_holder(&self, hash: &[u8; 32]) -> Result<Option<KeyHolder>, ApiError> {
        let row: Option<KeyRow> = sqlx::query_as(
            "select k.key_id, k.owner_id, k.service_account, k.scopes, p.plan, s.roles
                   from api_keys k
                   left join account_plans p on p.account_id = k.owner_id
                   left join service_accounts s on s.account_id = k.owner_id
                  where k.key_hash = $1 and k.revoked_at is null
                    and (k.expires_at is null or k.expires_at > now())",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        let Some(KeyRow {
            key_id,
            owner_id,
            service_account,
            scopes,
            plan,
            roles,
        }) = row
        else {
            return Ok(None);
        };
        self.note_use(key_id);
        Ok(Some(KeyHolder {
            key_id,
            owner_id,
            service_account,
            scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            plan: self.plan(plan.as_deref()).0.to_owned(),
            roles: roles.unwrap_or_default(),
        }))
    }

    /// Writes that `key_id` was used, at most once a minute per key, after the request.
    fn note_use(&self, key_id: Uuid) {
        let now = Instant::now();
        {
            let mut last = self
                .last_used
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last
                .get(&key_id)
                .is_some_and(|at| now.duration_since(*at) < LAST_USED_RESOLUTION)
            {
                return;
            }
            if last.len() > 100_000 {
                last.retain(|_, at| now.duration_since(*at) < LAST_USED_RESOLUTION);
            }
            last.insert(key_id, now);
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(err) =
                sqlx::query("update api_keys set last_used_at = now() where key_id = $1")
                    .bind(key_id)
                    .execute(&pool)
                    .await
            {
                tracing::debug!(error = %err, "the key's last use was not written");
            }
        });
    }
}

/// A working key's row, with its owner's plan and (for a service account) roles.
#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    key_id: Uuid,
    owner_id: Uuid,
    service_account: bool,
    scopes: Vec<String>,
    plan: Option<String>,
    roles: Option<Vec<String>>,
}
