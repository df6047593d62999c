//! Consent: a person agrees to or withdraws from a configured purpose (`CONSENT_PURPOSES`),
//! recorded in their stream as `ConsentGiven` / `ConsentWithdrawn` with the version of the
//! purpose's text.

use std::collections::BTreeMap;

use idp_events::identity::consent::{Purpose, Purposes};
use idp_events::identity::user::{self, Consent};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Identity, IdentityError};
use crate::extract::ClientContext;

/// One purpose as a person sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({"purpose": "product_news", "current_version": "2026-11", "given": true,
    "version": "2026-11", "decided_at": "2026-12-01T10:00:00Z"}))]
pub struct ConsentView {
    /// The purpose.
    pub purpose: String,
    /// The version of its text in force; absent for a purpose no longer configured.
    pub current_version: Option<String>,
    /// Whether the person agrees to the text in force. `false` also when they agreed to an
    /// older version of it: then they are to be asked again.
    pub given: bool,
    /// The version of the text they agreed to (or had agreed to, once withdrawn); absent when
    /// they never decided.
    pub version: Option<String>,
    /// When they last decided.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub decided_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ConsentView {
    fn of(purpose: &str, current: Option<&str>, decided: Option<&Consent>) -> Self {
        Self {
            purpose: purpose.to_owned(),
            current_version: current.map(str::to_owned),
            given: decided.is_some_and(|c| c.given && Some(c.version.as_str()) == current),
            version: decided.map(|c| c.version.clone()),
            decided_at: decided.map(|c| c.at),
        }
    }
}

/// Every configured purpose, in the configured order, then every purpose decided earlier that
/// is no longer configured.
pub fn consent_views(purposes: &Purposes, decided: &BTreeMap<String, Consent>) -> Vec<ConsentView> {
    let mut views: Vec<ConsentView> = purposes
        .iter()
        .map(|p| ConsentView::of(&p.name, Some(&p.version), decided.get(&p.name)))
        .collect();
    views.extend(
        decided
            .iter()
            .filter(|(name, _)| purposes.get(name).is_none())
            .map(|(name, consent)| ConsentView::of(name, None, Some(consent))),
    );
    views
}

impl Identity {
    /// What `user_id` decided about each purpose.
    pub async fn consents(
        &self,
        user_id: Uuid,
        purposes: &Purposes,
    ) -> Result<Vec<ConsentView>, IdentityError> {
        let account = self.load_user(user_id).await?;
        Ok(consent_views(purposes, &account.consents))
    }

    /// `user_id` agrees to `purpose` (`given`, to version `version` of its text) or withdraws,
    /// recorded with `actor`; the purpose as it stands afterwards. Deciding what is decided
    /// already records nothing.
    pub async fn decide_consent(
        &self,
        ctx: &ClientContext,
        actor: &str,
        user_id: Uuid,
        purpose: &Purpose,
        given: bool,
        version: Option<&str>,
    ) -> Result<ConsentView, IdentityError> {
        for _ in 0..3 {
            let account = self.load_user(user_id).await?;
            let events = user::decide_consent(&account, purpose, given, version)?;
            match self
                .append_user(&account, &events, ctx.metadata(actor))
                .await
            {
                // The account changed meanwhile (a sign-in, another decision): decide again.
                Err(err) if err.is_conflict() => continue,
                Err(err) => return Err(err),
                Ok(()) => {}
            }
            let mut after = account;
            for event in &events {
                after.apply(event, Uuid::nil(), chrono::Utc::now());
            }
            return Ok(ConsentView::of(
                &purpose.name,
                Some(&purpose.version),
                after.consents.get(&purpose.name),
            ));
        }
        Err(IdentityError::KeptChanging)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consent_to_an_older_text_is_not_given_and_unconfigured_purposes_come_last() {
        let purposes: Purposes = "news:2,analytics:1".parse().unwrap();
        let at = chrono::Utc::now();
        let decided = BTreeMap::from([
            (
                "news".to_owned(),
                Consent {
                    given: true,
                    version: "1".into(),
                    at,
                },
            ),
            (
                "old".to_owned(),
                Consent {
                    given: true,
                    version: "7".into(),
                    at,
                },
            ),
        ]);
        let views = consent_views(&purposes, &decided);
        let names: Vec<&str> = views.iter().map(|v| v.purpose.as_str()).collect();
        assert_eq!(names, ["news", "analytics", "old"]);
        assert!(
            !views[0].given,
            "agreed to version 1, version 2 is in force"
        );
        assert_eq!(views[0].version.as_deref(), Some("1"));
        assert_eq!(views[1].version, None);
        assert_eq!(views[2].current_version, None);
        assert!(!views[2].given);
    }
}
