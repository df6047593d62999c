//! The API key aggregate: a long-lived credential of a person (a personal access token) or of
//! a service account, limited to some [`Scope`]s.
//!
//! The stream is `api-key-<uuid>`. The key itself is shown once, when it is made, and kept only
//! as a SHA-256 hash in the API's `api_keys` table; the events carry no key material.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::privacy::Personal;
use crate::{NewEvent, RecordedEvent};

macro_rules! scopes {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// What an API key may be used for. A key never does more than its owner's roles allow,
        /// whatever its scopes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Scope {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Scope {
            /// Every scope, in the order of the documentation.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The scope as keys and the API spell it (`projects:read`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

scopes! {
    /// Read the owner's projects, their lists and their events.
    ProjectsRead => "projects:read",
    /// Request, retry and delete the owner's projects and issue their credentials (reading
    /// them too).
    ProjectsWrite => "projects:write",
    /// Read the template catalogue.
    TemplatesRead => "templates:read",
    /// Read the event log and the audit routes, as far as the owner's roles allow.
    AuditRead => "audit:read",
    /// Everything the owner's roles allow on the administration routes.
    Admin => "admin",
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name no scope has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?}; known: projects:read, projects:write, templates:read, audit:read, admin"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Events of an API key's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum ApiKeyEvent {
    /// A key was made for the account `owner_id`.
    ApiKeyCreated {
        /// The owner: a person or a service account.
        owner_id: Uuid,
        /// Whether the owner is a service account (else a person).
        service_account: bool,
        /// What its holder called it: personal, sealed under the owner's key.
        name: Personal<String>,
        /// What it may be used for.
        scopes: Vec<Scope>,
        /// When it stops working, if ever.
        expires_at: Option<DateTime<Utc>>,
        /// The key's first characters (`idp_` and its identifier), to recognise it in lists.
        prefix: String,
        /// The key this one replaces, when made by a rotation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rotated_from: Option<Uuid>,
    },
    /// The key was rotated: `replaced_by` took its place, and it works until `valid_until`.
    ApiKeyRotated {
        /// The new key.
        replaced_by: Uuid,
        /// The end of the grace period.
        valid_until: DateTime<Utc>,
    },
    /// The key stopped working (revoked by its owner or an administrator, or its owner was
    /// disabled, deleted or erased).
    ApiKeyRevoked,
}

impl ApiKeyEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        super::to_new_event(self)
    }

    /// The event read back from the log, if it is an API key event.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        super::from_recorded(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_spelled_as_documented_and_read_back() {
        let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "projects:read",
                "projects:write",
                "templates:read",
                "audit:read",
                "admin"
            ]
        );
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(*scope));
            let json = serde_json::to_value(scope).unwrap();
            assert_eq!(serde_json::from_value::<Scope>(json).unwrap(), *scope);
        }
        assert_eq!(
            "projects:delete".parse::<Scope>(),
            Err(UnknownScope("projects:delete".into()))
        );
        assert!(serde_json::from_value::<Scope>(serde_json::json!("Admin")).is_err());
    }

    #[test]
    fn a_revoked_key_event_carries_its_type_name_and_no_data() {
        let e = ApiKeyEvent::ApiKeyRevoked.to_new_event();
        assert_eq!(e.event_type, "ApiKeyRevoked");
        assert_eq!(e.data, serde_json::json!({}));
    }
}
