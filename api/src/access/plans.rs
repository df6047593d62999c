//! Each account's plan and spend cap, what it uses, and the quota check of a project request.
//!
//! The quota check runs in the transaction that records the project, under a transaction lock
//! of the owner's: concurrent requests of one owner are checked one after the other, each
//! seeing the projects the ones before it recorded, so together they cannot overshoot.

use idp_events::identity::plan::PlanEvent;
use idp_events::{Append, ExpectedVersion, Metadata, StreamId};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Access;
use crate::auth::plans::Plan;
use crate::error::ApiError;

/// Project statuses that count as live (not being deleted, not deleted).
const LIVE_STATUSES: &str = "('requested', 'provisioning', 'ready', 'failed')";

/// An account's plan.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"plan": "free", "requests_per_minute": 600, "live_projects": 10, "monthly_spend_cents": 2000, "spend_cap_cents": 1000}))]
pub struct PlanView {
    /// The plan's name.
    pub plan: String,
    /// Requests per minute on authenticated routes.
    pub requests_per_minute: u32,
    /// Live projects at once.
    pub live_projects: u32,
    /// The plan's monthly spend ceiling, in cents.
    pub monthly_spend_cents: u64,
    /// The holder's own lower cap, if they set one.
    pub spend_cap_cents: Option<u64>,
}

/// One limit: what is used and what is allowed.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Usage {
    /// In use now.
    pub used: u64,
    /// Allowed.
    pub limit: u64,
}

/// An account's usage and limits.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"plan": "free", "requests_per_minute": 600, "live_projects": {"used": 3, "limit": 10},
                          "monthly_spend_cents": {"used": 600, "limit": 1000}, "plan_monthly_spend_cents": 2000, "spend_cap_cents": 1000}))]
pub struct LimitsView {
    /// The plan's name.
    pub plan: String,
    /// Requests per minute on authenticated routes (see the `RateLimit-*` headers for what is
    /// left).
    pub requests_per_minute: u32,
    /// Live projects.
    pub live_projects: Usage,
    /// What the live projects cost per month, in cents, against the lower of the plan's
    /// ceiling and the holder's own cap.
    pub monthly_spend_cents: Usage,
    /// The plan's ceiling.
    pub plan_monthly_spend_cents: u64,
    /// The holder's own cap, if any.
    pub spend_cap_cents: Option<u64>,
}

/// An account's plan row: the plan's name and the holder's cap.
#[derive(Debug, Clone, Default)]
struct Chosen {
    plan: Option<String>,
    cap: Option<u64>,
}

impl Access {
    async fn chosen(&self, conn: &mut PgConnection, account: Uuid) -> Result<Chosen, ApiError> {
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("select plan, spend_cap_cents from account_plans where account_id = $1")
                .bind(account)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(row.map_or_else(Chosen::default, |(plan, cap)| Chosen {
            plan: Some(plan),
            cap: cap.and_then(|c| u64::try_from(c).ok()),
        }))
    }

    /// The plan of `account`.
    pub async fn plan_view(&self, account: Uuid) -> Result<PlanView, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let chosen = self.chosen(&mut conn, account).await?;
        let (name, plan) = self.plan(chosen.plan.as_deref());
        Ok(view(name, &plan, chosen.cap))
    }

    /// What `account` uses and may use.
    pub async fn limits(&self, account: Uuid) -> Result<LimitsView, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let chosen = self.chosen(&mut conn, account).await?;
        let (live, spend) = usage(&mut conn, account).await?;
        let (name, plan) = self.plan(chosen.plan.as_deref());
        Ok(LimitsView {
            plan: name.to_owned(),
            requests_per_minute: plan.requests_per_minute,
            live_projects: Usage {
                used: live,
                limit: u64::from(plan.live_projects),
            },
            monthly_spend_cents: Usage {
                used: spend,
                limit: spend_limit(&plan, chosen.cap),
            },
            plan_monthly_spend_cents: plan.monthly_spend_cents,
            spend_cap_cents: chosen.cap,
        })
    }

    /// Sets `account`'s own monthly spend cap (`None`: the plan's ceiling). A cap above the
    /// ceiling is refused (422); one below what the live projects cost already is kept, and
    /// refuses new projects without touching those that exist.
    pub async fn set_spend_cap(
        &self,
        metadata: Metadata,
        account: Uuid,
        cap: Option<u64>,
    ) -> Result<LimitsView, ApiError> {
        let mut tx = self.pool.begin().await?;
        lock_account(&mut tx, account).await?;
        let chosen = self.chosen(&mut tx, account).await?;
        let (name, plan) = self.plan(chosen.plan.as_deref());
        if let Some(cap) = cap
            && cap > plan.monthly_spend_cents
        {
            return Err(ApiError::Unprocessable(format!(
                "spend_cap_cents: at most the plan's ceiling, {} ({name})",
                plan.monthly_spend_cents
            )));
        }
        if cap != chosen.cap {
            let name = name.to_owned();
            self.record(
                &mut tx,
                metadata,
                account,
                &PlanEvent::SpendCapChanged { cap_cents: cap },
                &name,
                cap,
            )
            .await?;
        }
        tx.commit().await?;
        self.limits(account).await
    }

    /// Puts `account` on `plan` (422 for a plan that is not configured). The account's own
    /// cap stays; the lower of it and the new ceiling applies.
    pub async fn change_plan(
        &self,
        metadata: Metadata,
        account: Uuid,
        plan: &str,
    ) -> Result<PlanView, ApiError> {
        let Some(limits) = self.plans.get(plan).copied() else {
            return Err(ApiError::Unprocessable(format!(
                "plan: there is no plan {plan:?}; plans: {}",
                self.plans.names().collect::<Vec<_>>().join(", ")
            )));
        };
        let mut tx = self.pool.begin().await?;
        lock_account(&mut tx, account).await?;
        let chosen = self.chosen(&mut tx, account).await?;
        if chosen.plan.as_deref() != Some(plan) {
            self.record(
                &mut tx,
                metadata,
                account,
                &PlanEvent::PlanChanged {
                    plan: plan.to_owned(),
                },
                plan,
                chosen.cap,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(view(plan, &limits, chosen.cap))
    }

    async fn record(
        &self,
        tx: &mut PgConnection,
        metadata: Metadata,
        account: Uuid,
        event: &PlanEvent,
        plan: &str,
        cap: Option<u64>,
    ) -> Result<(), ApiError> {
        let outcome = self
            .store
            .append_in(
                &mut *tx,
                Append::to(StreamId::plan(account))
                    .expecting(ExpectedVersion::Any)
                    .event(event.to_new_event())
                    .metadata(metadata),
            )
            .await?;
        sqlx::query(
            "insert into account_plans (account_id, plan, spend_cap_cents, changed_at)
             values ($1, $2, $3, $4)
             on conflict (account_id) do update
                set plan = excluded.plan, spend_cap_cents = excluded.spend_cap_cents,
                    changed_at = excluded.changed_at",
        )
        .bind(account)
        .bind(plan)
        .bind(cap.map(|c| i64::try_from(c).unwrap_or(i64::MAX)))
        .bind(outcome.recorded_at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Refuses (402) a new project of `owner` costing `cost_cents` a month that would take it
    /// past its live-project quota or its spend cap. Runs in the transaction that records the
    /// project, and holds the owner's lock until it ends.
    pub async fn check_project_quota(
        &self,
        tx: &mut PgConnection,
        owner: Uuid,
        cost_cents: u64,
    ) -> Result<(), ApiError> {
        lock_account(tx, owner).await?;
        let chosen = self.chosen(tx, owner).await?;
        let (_, plan) = self.plan(chosen.plan.as_deref());
        let (live, spend) = usage(tx, owner).await?;
        let quota = u64::from(plan.live_projects);
        if live + 1 > quota {
            return Err(ApiError::QuotaExceeded {
                limit: "live_projects",
                usage: live,
                requested: 1,
                cap: quota,
            });
        }
        let cap = spend_limit(&plan, chosen.cap);
        if spend.saturating_add(cost_cents) > cap {
            return Err(ApiError::QuotaExceeded {
                limit: "monthly_spend_cents",
                usage: spend,
                requested: cost_cents,
                cap,
            });
        }
        Ok(())
    }
}

fn view(name: &str, plan: &Plan, cap: Option<u64>) -> PlanView {
    PlanView {
        plan: name.to_owned(),
        requests_per_minute: plan.requests_per_minute,
        live_projects: plan.live_projects,
        monthly_spend_cents: plan.monthly_spend_cents,
        spend_cap_cents: cap,
    }
}

/// The lower of the plan's ceiling and the holder's cap.
fn spend_limit(plan: &Plan, cap: Option<u64>) -> u64 {
    cap.map_or(plan.monthly_spend_cents, |cap| {
        cap.min(plan.monthly_spend_cents)
    })
}

/// `owner`'s live projects and what they cost per month.
async fn usage(conn: &mut PgConnection, owner: Uuid) -> Result<(u64, u64), ApiError> {
    let (live, spend): (i64, i64) = sqlx::query_as(&format!(
        "select count(*), coalesce(sum(monthly_cost_cents), 0)::int8
           from projects where owner_id = $1 and status in {LIVE_STATUSES}"
    ))
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        u64::try_from(live).unwrap_or_default(),
        u64::try_from(spend).unwrap_or_default(),
    ))
}

/// Serialises the plan changes and quota checks of one account.
async fn lock_account(tx: &mut PgConnection, account: Uuid) -> Result<(), sqlx::Error> {
    idp_ops::database::lock_until_commit(tx, &format!("plan/{account}")).await
}
