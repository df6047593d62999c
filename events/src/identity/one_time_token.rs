//! One-time tokens (email verification, password reset) that are never stored.
//!
//! A token is `base64url(event_id || HMAC-SHA256(secret, purpose || event_id))`, where the event
//! is the one that asked for the token (`VerificationRequested`, `PasswordResetRequested`). The
//! API can check a presented token, and the worker that sends the email can recompute it from
//! the event, without the log ever holding a usable secret: reading the log is not enough to
//! forge or recover a token without the server key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// What a token is for; a token for one purpose never opens another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Confirms an email address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::VerifyEmail => b"idp/verify-email/v1",
            Self::ResetPassword => b"idp/reset-password/v1",
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

/// The token for the event `event_id`.
pub fn issue(secret: &[u8], purpose: Purpose, event_id: Uuid) -> String {
    let tag = mac(secret, purpose, event_id).finalize().into_bytes();
    let mut raw = Vec::with_capacity(48);
    raw.extend_from_slice(event_id.as_bytes());
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The event id a genuine token was made for (compared in constant time).
pub fn open(secret: &[u8], purpose: Purpose, token: &str) -> Result<Uuid, InvalidToken> {
    if token.len() != 64 {
        return Err(InvalidToken);
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidToken)?;
    let (id, tag) = raw.split_at(16);
    let event_id = Uuid::from_slice(id).map_err(|_| InvalidToken)?;
    mac(secret, purpose, event_id)
        .verify_slice(tag)
        .map_err(|_| InvalidToken)?;
    Ok(event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_to_its_event_for_its_purpose_only() {
        let id = Uuid::now_v7();
        let token = issue(b"key", Purpose::VerifyEmail, id);
        assert_eq!(token.len(), 64);
        assert_eq!(open(b"key", Purpose::VerifyEmail, &token), Ok(id));
        assert_eq!(
            open(b"key", Purpose::ResetPassword, &token),
            Err(InvalidToken)
        );
        assert_eq!(
            open(b"other key", Purpose::VerifyEmail, &token),
            Err(InvalidToken)
        );
    }

    #[test]
    fn tampered_or_malformed_tokens_are_refused() {
        let token = issue(b"key", Purpose::ResetPassword, Uuid::now_v7());
        let mut bytes = token.into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            open(b"key", Purpose::ResetPassword, &tampered),
            Err(InvalidToken)
        );
        assert_eq!(open(b"key", Purpose::ResetPassword, ""), Err(InvalidToken));
        assert_eq!(
            open(b"key", Purpose::ResetPassword, &"!".repeat(64)),
            Err(InvalidToken)
        );
    }
}
