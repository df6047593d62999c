//! An email address as identity uses it: the key of an account (one account per address) and
//! where its links are sent, so every address is normalised the same way before it is compared,
//! reserved or recorded.

use std::fmt;

/// Longest address, in bytes (RFC 5321's limit on a path, less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest local part (before the `@`), in bytes.
pub const MAX_LOCAL_PART_BYTES: usize = 64;

/// A normalised email address: trimmed, lower-cased, plausibly shaped (a non-empty local part
/// of at most [`MAX_LOCAL_PART_BYTES`], one `@`, a domain that neither starts nor ends with a
/// dot, no whitespace or control characters, 3 to [`MAX_EMAIL_BYTES`] bytes in all).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why an address was refused; the text is safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Not shaped like an address.
    #[error("not a valid email address")]
    Malformed,
}

impl Email {
    /// Parses and normalises an address.
    ///
    /// # Errors
    /// [`EmailError::Malformed`] when it is not shaped like an address.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let email = raw.trim().to_lowercase();
        if email.len() < 3
            || email.len() > MAX_EMAIL_BYTES
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(EmailError::Malformed);
        }
        let (local, domain) = email.split_once('@').ok_or(EmailError::Malformed)?;
        if local.is_empty()
            || local.len() > MAX_LOCAL_PART_BYTES
            || domain.is_empty()
            || domain.contains('@')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(EmailError::Malformed);
        }
        Ok(Self(email))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        let email = Email::parse("  Ada.Lovelace@Example.COM \n").unwrap();
        assert_eq!(email.as_str(), "ada.lovelace@example.com");
        assert_eq!(email.to_string(), "ada.lovelace@example.com");
        assert_eq!(Email::parse("a@b").unwrap().as_str(), "a@b");
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason_safe_to_show() {
        for bad in [
            "",
            "ab",
            "no-at-sign",
            "@example.com",
            "ada@",
            "ada@@example.com",
            "ada@exa@mple.com",
            "ada@.example.com",
            "ada@example.com.",
            "ada lovelace@example.com",
            "ada@exam\tple.com",
            "ada\u{0}@example.com",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError::Malformed), "{bad:?}");
        }
        assert_eq!(
            EmailError::Malformed.to_string(),
            "not a valid email address"
        );
    }

    #[test]
    fn the_length_limits_hold_at_their_edges() {
        let local = "a".repeat(MAX_LOCAL_PART_BYTES);
        assert!(Email::parse(&format!("{local}@example.com")).is_ok());
        assert!(Email::parse(&format!("{local}a@example.com")).is_err());
        let domain = format!("{}.com", "d".repeat(MAX_EMAIL_BYTES - 6));
        assert_eq!(format!("a@{domain}").len(), MAX_EMAIL_BYTES);
        assert!(Email::parse(&format!("a@{domain}")).is_ok());
        assert!(Email::parse(&format!("ab@{domain}")).is_err());
    }
}
