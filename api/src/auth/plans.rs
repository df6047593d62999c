//! Plans: what an account may do per minute, how many live projects it may have and what they
//! may cost per month. Plans are configuration (`PLANS`, `DEFAULT_PLAN`); which plan an account
//! is on is an event (`PlanChanged` on its `plan-<uuid>` stream).

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The plans idp has when `PLANS` is not set.
pub const DEFAULT_PLANS: &str = r#"{"free":{"requests_per_minute":600,"live_projects":10,"monthly_spend_cents":2000},"pro":{"requests_per_minute":6000,"live_projects":100,"monthly_spend_cents":50000}}"#;

/// The most requests a minute a plan may allow: one a microsecond, the finest the shared
/// buckets count.
pub const MAX_REQUESTS_PER_MINUTE: u32 = 60_000_000;

/// What one plan allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Requests per minute on authenticated routes, per account (and at most that per key).
    pub requests_per_minute: u32,
    /// Live projects (not being deleted or deleted) at once.
    pub live_projects: u32,
    /// The most the account's live projects may cost per month, in cents; its holder may set
    /// a lower cap of their own.
    pub monthly_spend_cents: u64,
}

/// Every configured plan, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plans(BTreeMap<String, Plan>);

impl Plans {
    /// The plan called `name`.
    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.0.get(name)
    }

    /// Every plan's name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl FromStr for Plans {
    type Err = String;

    /// A JSON object of plans by name, each `{"requests_per_minute": n, "live_projects": n,
    /// "monthly_spend_cents": n}`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let plans: BTreeMap<String, Plan> = serde_json::from_str(s)
            .map_err(|e| format!("expected a JSON object of plans by name: {e}"))?;
        if plans.is_empty() {
            return Err("at least one plan is needed".into());
        }
        for (name, plan) in &plans {
            let label = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !label {
                return Err(format!("plan name {name:?}: 1 to 32 of a-z, 0-9, - and _"));
            }
            if !(1..=MAX_REQUESTS_PER_MINUTE).contains(&plan.requests_per_minute) {
                return Err(format!(
                    "plan {name}: requests_per_minute must be 1 to {MAX_REQUESTS_PER_MINUTE}"
                ));
            }
        }
        Ok(Self(plans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plans_are_free_and_pro_and_free_allows_ten_projects() {
        let plans: Plans = DEFAULT_PLANS.parse().unwrap();
        assert_eq!(plans.names().collect::<Vec<_>>(), ["free", "pro"]);
        assert_eq!(plans.get("free").unwrap().live_projects, 10);
        assert!(plans.get("enterprise").is_none());
    }

    #[test]
    fn plans_that_cannot_work_are_refused_with_the_reason() {
        let refused = |s: &str| s.parse::<Plans>().unwrap_err();
        assert!(refused("{}").contains("at least one plan"));
        assert!(refused("[1]").contains("JSON object"));
        assert!(
            refused(
                r#"{"Free":{"requests_per_minute":1,"live_projects":1,"monthly_spend_cents":0}}"#
            )
            .contains("plan name")
        );
        assert!(
            refused(
                r#"{"free":{"requests_per_minute":0,"live_projects":1,"monthly_spend_cents":0}}"#
            )
            .contains("1 to 60000000")
        );
        assert!(
            refused(r#"{"free":{"requests_per_minute":60000001,"live_projects":1,"monthly_spend_cents":0}}"#)
                .contains("1 to 60000000")
        );
        assert!(
            r#"{"free":{"requests_per_minute":60000000,"live_projects":1,"monthly_spend_cents":0}}"#
                .parse::<Plans>()
                .is_ok()
        );
        assert!(
            refused(r#"{"free":{"requests_per_minute":1,"live_projects":1}}"#)
                .contains("monthly_spend_cents")
        );
        assert!(refused(r#"{"free":{"requests_per_minute":1,"live_projects":1,"monthly_spend_cents":0,"x":1}}"#)
            .contains("unknown field"));
    }
}
