//! Requests for an email about an account (the verification link again, a password reset)
//! that send nothing: no account has the address, or the account needs no such email now.
//!
//! They are recorded under the address's keyed digest ([`super::address_digest`]), in a stream
//! of their own, so that such a request does the same work as one that sends an email (a
//! stream read and an append): neither the answer nor its timing tells whether an address has
//! an account, or what state it is in.

use serde::{Deserialize, Serialize};

use crate::NewEvent;

/// Which email was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requested {
    /// The verification link again.
    Verification,
    /// A password reset link.
    PasswordReset,
}

/// Why nothing was sent (recorded, never told to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unanswered {
    /// No account has the address.
    UnknownAccount,
    /// The account needs no such email (verified already; locked by an administrator).
    NothingToSend,
}

/// An email request that sent nothing.
pub fn unanswered(requested: Requested, reason: Unanswered, email_digest: &str) -> NewEvent {
    NewEvent::new(
        "EmailRequestUnanswered",
        serde_json::json!({ "requested": requested, "reason": reason, "email_digest": email_digest }),
    )
}
