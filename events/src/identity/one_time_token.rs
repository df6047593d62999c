//! One-time tokens (email verification, password reset, ending a session from a new-device
//! email) that are never stored.
//!
//! A token is `base64url(event_id || HMAC-SHA256(key, purpose || event_id))`, where the event
//! is the one that asked for the token (`VerificationRequested`, `PasswordResetRequested`) and
//! the key is the current one of the email-token ring (`EMAIL_TOKEN_KEYS`, see
//! [`crate::keys`]); every key of the ring still opens the tokens it made. The
//! API can check a presented token, and the worker that sends the email can recompute it from
//! the event, without the log ever holding a usable secret: reading the log is not enough to
//! forge or recover a token without the server key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::keys::SecretKeys;

type HmacSha256 = Hmac<Sha256>;

/// What a token is for; a token for one purpose never opens another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Confirms an email address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
    /// Ends the session a new-device email is about.
    RevokeSession,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::VerifyEmail => b"idp/verify-email/v1",
            Self::ResetPassword => b"idp/reset-password/v1",
            Self::RevokeSession => b"idp/revoke-session/v1",
        }
    }
}

/// The token was not made by this server for this purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid or expired token")]
pub struct InvalidToken;

fn mac(secret: &[u8], purpose: Purpose, event_id: Uuid) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(purpose.label());
    mac.update(event_id.as_bytes());
    mac
}

/// The token for the event `event_id`, made with the ring's current key.
pub fn issue(keys: &SecretKeys, purpose: Purpose, event_id: Uuid) -> String {
    let tag = mac(keys.current().secret(), purpose, event_id)
        .finalize()
        .into_bytes();
    let mut raw = Vec::with_capacity(48);
    raw.extend_from_slice(event_id.as_bytes());
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The event id a genuine token was made for by any key of the ring (each tag compared in
/// constant time).
pub fn open(keys: &SecretKeys, purpose: Purpose, token: &str) -> Result<Uuid, InvalidToken> {
    if token.len() != 64 {
        return Err(InvalidToken);
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidToken)?;
    let (id, tag) = raw.split_at(16);
    let event_id = Uuid::from_slice(id).map_err(|_| InvalidToken)?;
    keys.iter()
        .any(|key| {
            mac(key.secret(), purpose, event_id)
                .verify_slice(tag)
                .is_ok()
        })
        .then_some(event_id)
        .ok_or(InvalidToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(secret: &[u8]) -> SecretKeys {
        SecretKeys::single("k", secret)
    }

    #[test]
    fn a_token_made_by_an_older_key_of_the_ring_still_opens_and_new_ones_use_the_current() {
        let id = Uuid::now_v7();
        let old = SecretKeys::parse("T", "old:0123456789abcdef0123456789abcdef-old").unwrap();
        let rotated = SecretKeys::parse(
            "T",
            "old:0123456789abcdef0123456789abcdef-old,new:0123456789abcdef0123456789abcdef-new",
        )
        .unwrap();
        let token = issue(&old, Purpose::VerifyEmail, id);
        assert_eq!(open(&rotated, Purpose::VerifyEmail, &token), Ok(id));
        let fresh = issue(&rotated, Purpose::VerifyEmail, id);
        assert_ne!(fresh, token);
        assert_eq!(open(&old, Purpose::VerifyEmail, &fresh), Err(InvalidToken));
    }

    #[test]
    fn a_token_opens_to_its_event_for_its_purpose_only() {
        let id = Uuid::now_v7();
        let token = issue(&ring(b"key"), Purpose::VerifyEmail, id);
        assert_eq!(token.len(), 64);
        assert_eq!(open(&ring(b"key"), Purpose::VerifyEmail, &token), Ok(id));
        assert_eq!(
            open(&ring(b"key"), Purpose::ResetPassword, &token),
            Err(InvalidToken)
        );
        assert_eq!(
            open(&ring(b"other key"), Purpose::VerifyEmail, &token),
            Err(InvalidToken)
        );
    }

    #[test]
    fn tampered_or_malformed_tokens_are_refused() {
        let token = issue(&ring(b"key"), Purpose::ResetPassword, Uuid::now_v7());
        let mut bytes = token.into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            open(&ring(b"key"), Purpose::ResetPassword, &tampered),
            Err(InvalidToken)
        );
        assert_eq!(
            open(&ring(b"key"), Purpose::ResetPassword, ""),
            Err(InvalidToken)
        );
        assert_eq!(
            open(&ring(b"key"), Purpose::ResetPassword, &"!".repeat(64)),
            Err(InvalidToken)
        );
    }
}
