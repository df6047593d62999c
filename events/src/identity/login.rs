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
    /// The password was right, but the second-factor code was wrong, malformed or used
    /// already.
    WrongCode,
    /// The password was right, but the recovery code was not an unused one of the account.
    WrongRecoveryCode,
    /// The password was right, but the second factor is locked after too many wrong codes.
    SecondFactorLocked,
}

/// How a sign-in that needed a second factor was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactorMethod {
    /// A code of the authenticator app (TOTP).
    Totp,
    /// One of the recovery codes.
    RecoveryCode,
}

/// A successful sign-in that started `session_id`.
pub fn succeeded(session_id: Uuid) -> NewEvent {
    NewEvent::new(
        "LoginSucceeded",
        serde_json::json!({ "session_id": session_id }),
    )
}

/// The password of a sign-in was right and the account has a second factor: challenge
/// `challenge_id` waits for its code.
pub fn second_factor_required(challenge_id: Uuid) -> NewEvent {
    NewEvent::new(
        "SecondFactorRequired",
        serde_json::json!({ "challenge_id": challenge_id }),
    )
}

/// A successful sign-in that started `session_id`: after a second factor (`second_factor`),
/// through an external identity provider (`provider`), either or neither.
pub fn succeeded_via(
    session_id: Uuid,
    second_factor: Option<SecondFactorMethod>,
    provider: Option<&str>,
) -> NewEvent {
    let mut data = serde_json::json!({ "session_id": session_id });
    if let Some(method) = second_factor {
        data["second_factor"] = serde_json::json!(method);
    }
    if let Some(provider) = provider {
        data["provider"] = serde_json::json!(provider);
    }
    NewEvent::new("LoginSucceeded", data)
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
