//! Sign-in attempts: high-volume facts kept in a stream per account (`login-<user uuid>`), so the
//! user's own stream stays short.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::NewEvent;

/// Why a sign-in failed (recorded, never told to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The password did not match.
    WrongPassword,
    /// The email address is not verified yet.
    Unverified,
    /// The account is locked.
    Locked,
    /// No account has this address.
    UnknownAccount,
}

/// A successful sign-in that started `session_id`.
pub fn succeeded(session_id: Uuid) -> NewEvent {
    NewEvent::new(
        "LoginSucceeded",
        serde_json::json!({ "session_id": session_id }),
    )
}

/// A failed sign-in.
pub fn failed(reason: FailureReason) -> NewEvent {
    NewEvent::new("LoginFailed", serde_json::json!({ "reason": reason }))
}

/// A failed sign-in for an address no account has; `email_digest` is the address's keyed
/// digest in hex. (Events recorded before digests were keyed carry `email_sha256`, a plain
/// SHA-256, instead.)
pub fn failed_unknown(email_digest: &str) -> NewEvent {
    NewEvent::new(
        "LoginFailed",
        serde_json::json!({ "reason": FailureReason::UnknownAccount, "email_digest": email_digest }),
    )
}
