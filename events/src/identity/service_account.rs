//! The service account aggregate: a non-human account (a CI pipeline, a bot) that an
//! administrator creates. It owns projects and holds roles like a person, but has no email
//! address and no password: it calls the API only with its API keys.
//!
//! The stream is `service-account-<uuid>`.

use serde::{Deserialize, Serialize};

use crate::{NewEvent, RecordedEvent};

/// Events of a service account's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum ServiceAccountEvent {
    /// An administrator (the event's actor) created the account.
    ServiceAccountCreated {
        /// Its name, unique among service accounts (label-style, `ci-preview`): a machine's
        /// name, not a person's.
        name: String,
        /// What it is for.
        description: Option<String>,
        /// Its roles.
        roles: Vec<String>,
    },
    /// Its roles were replaced.
    ServiceAccountRolesChanged {
        /// The new roles.
        roles: Vec<String>,
    },
    /// It may no longer call the API: its keys stop working at once.
    ServiceAccountDisabled,
    /// It may call the API again (with keys made from now on; disabling revoked the others).
    ServiceAccountEnabled,
    /// It is gone: its keys are revoked and its name is free. Its projects stay, for
    /// administrators to keep or delete.
    ServiceAccountDeleted,
}

impl ServiceAccountEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        super::to_new_event(self)
    }

    /// The event read back from the log, if it is a service account event.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        super::from_recorded(event)
    }
}

/// A service account as folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its name (empty before it exists).
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Its roles.
    pub roles: Vec<String>,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Whether it is deleted.
    pub deleted: bool,
    /// Events folded so far.
    pub version: u64,
}

impl ServiceAccount {
    /// The account as of `events`.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a ServiceAccountEvent>) -> Self {
        let mut account = Self::default();
        for event in events {
            account.apply(event);
        }
        account
    }

    /// The account after `event`.
    pub fn apply(&mut self, event: &ServiceAccountEvent) {
        self.version += 1;
        match event {
            ServiceAccountEvent::ServiceAccountCreated {
                name,
                description,
                roles,
            } => {
                self.name.clone_from(name);
                self.description.clone_from(description);
                self.roles.clone_from(roles);
            }
            ServiceAccountEvent::ServiceAccountRolesChanged { roles } => {
                self.roles.clone_from(roles);
            }
            ServiceAccountEvent::ServiceAccountDisabled => self.disabled = true,
            ServiceAccountEvent::ServiceAccountEnabled => self.disabled = false,
            ServiceAccountEvent::ServiceAccountDeleted => self.deleted = true,
        }
    }

    /// Whether it was created and not deleted.
    pub fn exists(&self) -> bool {
        self.version > 0 && !self.deleted
    }

    /// Whether its keys may be used now.
    pub fn active(&self) -> bool {
        self.exists() && !self.disabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_account_is_inactive_until_enabled_and_a_deleted_one_is_gone() {
        let created = ServiceAccountEvent::ServiceAccountCreated {
            name: "ci".into(),
            description: None,
            roles: vec!["user".into()],
        };
        let account = ServiceAccount::fold([&created]);
        assert!(account.active());
        let disabled =
            ServiceAccount::fold([&created, &ServiceAccountEvent::ServiceAccountDisabled]);
        assert!(disabled.exists() && !disabled.active());
        let enabled = ServiceAccount::fold([
            &created,
            &ServiceAccountEvent::ServiceAccountDisabled,
            &ServiceAccountEvent::ServiceAccountEnabled,
        ]);
        assert!(enabled.active());
        let deleted = ServiceAccount::fold([&created, &ServiceAccountEvent::ServiceAccountDeleted]);
        assert!(!deleted.exists() && !deleted.active());
        assert!(!ServiceAccount::default().exists());
    }
}
