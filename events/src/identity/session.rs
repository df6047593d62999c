//! The session aggregate: one sign-in and its chain of rotated refresh tokens (a token family).
//!
//! The stream is `session-<uuid>`. Refresh tokens are stored only as SHA-256 hashes, and only in
//! the API's session table; the events carry no token material.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{NewEvent, RecordedEvent};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The user signed out.
    Logout,
    /// The password was reset: every session ends.
    PasswordReset,
    /// The password was changed: the other sessions end.
    PasswordChanged,
    /// A rotated refresh token was presented again: the family is compromised.
    RefreshTokenReuse,
    /// An administrator ended it.
    Admin,
    /// The person was erased.
    Erased,
    /// The person ended it from their list of sessions (one, or all but the current one).
    Owner,
    /// The person followed the link of the new-device email about it.
    NewDeviceNotice,
    /// A refresh came from another network or user agent than the session started from
    /// (`SESSION_BINDING`).
    BindingBroken,
}

/// Events of a session's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum SessionEvent {
    /// A user signed in.
    SessionStarted {
        /// Who.
        user_id: Uuid,
        /// When the refresh token chain ends at the latest.
        expires_at: DateTime<Utc>,
    },
    /// The refresh token was rotated.
    SessionRefreshed {
        /// How many rotations so far.
        generation: u32,
    },
    /// An already rotated refresh token was presented.
    RefreshTokenReuseDetected {
        /// The generation of the presented token.
        generation: u32,
    },
    /// The session ended.
    SessionRevoked {
        /// Why.
        reason: RevokeReason,
    },
}

impl SessionEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        super::to_new_event(self)
    }

    /// The event read back from the log, if it is a session event.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        super::from_recorded(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_events_carry_their_type_name() {
        let e = SessionEvent::SessionRevoked {
            reason: RevokeReason::RefreshTokenReuse,
        }
        .to_new_event();
        assert_eq!(e.event_type, "SessionRevoked");
        assert_eq!(e.data, serde_json::json!({"reason": "refresh_token_reuse"}));
    }
}
