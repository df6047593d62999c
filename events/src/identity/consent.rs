//! Consent: the purposes a person may agree to (receiving product news, analytics...), each
//! with the version of the text they are shown, as configured (`CONSENT_PURPOSES`). What a
//! person agreed to is recorded in their stream (`ConsentGiven`, `ConsentWithdrawn`) and
//! folded into [`crate::identity::user::User::consents`].

use std::fmt;
use std::str::FromStr;

/// Longest purpose name, in characters.
pub const MAX_PURPOSE_LEN: usize = 64;
/// Longest text version, in characters.
pub const MAX_VERSION_LEN: usize = 32;

/// A purpose and the version of its text in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    /// Its name: `[a-z0-9_-]`, 1 to [`MAX_PURPOSE_LEN`] characters.
    pub name: String,
    /// The version of the text a person agrees to: `[A-Za-z0-9._-]`, 1 to
    /// [`MAX_VERSION_LEN`] characters.
    pub version: String,
}

/// The configured purposes, in the order configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purposes(Vec<Purpose>);

impl Purposes {
    /// The purpose called `name`.
    pub fn get(&self, name: &str) -> Option<&Purpose> {
        self.0.iter().find(|p| p.name == name)
    }

    /// Every purpose.
    pub fn iter(&self) -> impl Iterator<Item = &Purpose> {
        self.0.iter()
    }
}

/// Whether `name` is a well-formed purpose name.
pub fn is_purpose_name(name: &str) -> bool {
    (1..=MAX_PURPOSE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

fn is_version(version: &str) -> bool {
    (1..=MAX_VERSION_LEN).contains(&version.len())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A `CONSENT_PURPOSES` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurposesError {
    /// An entry is not `<name>:<version>` with the characters allowed.
    #[error(
        "{0:?} is not <purpose>:<text version> (purpose: 1-{MAX_PURPOSE_LEN} of a-z 0-9 _ -; version: 1-{MAX_VERSION_LEN} of A-Z a-z 0-9 . _ -)"
    )]
    Malformed(String),
    /// A purpose appears twice.
    #[error("purpose {0:?} appears twice")]
    Repeated(String),
}

impl FromStr for Purposes {
    type Err = PurposesError;

    /// `<name>:<version>,<name>:<version>,...`; empty for none.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut purposes: Vec<Purpose> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let malformed = || PurposesError::Malformed(entry.to_owned());
            let (name, version) = entry.split_once(':').ok_or_else(malformed)?;
            let (name, version) = (name.trim(), version.trim());
            if !is_purpose_name(name) || !is_version(version) {
                return Err(malformed());
            }
            if purposes.iter().any(|p| p.name == name) {
                return Err(PurposesError::Repeated(name.to_owned()));
            }
            purposes.push(Purpose {
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
        Ok(Self(purposes))
    }
}

impl fmt::Display for Purposes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|p| format!("{}:{}", p.name, p.version))
            .collect();
        f.write_str(&entries.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_parse_in_order_and_print_back() {
        let purposes: Purposes = " product_news:2026-11 , analytics:v3".parse().unwrap();
        let names: Vec<&str> = purposes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["product_news", "analytics"]);
        assert_eq!(purposes.get("analytics").unwrap().version, "v3");
        assert_eq!(purposes.get("nope"), None);
        assert_eq!(purposes.to_string(), "product_news:2026-11,analytics:v3");
        assert_eq!("".parse::<Purposes>().unwrap(), Purposes::default());
    }

    #[test]
    fn malformed_and_repeated_purposes_are_refused() {
        let longest = "a".repeat(MAX_PURPOSE_LEN);
        assert!(format!("{longest}:1").parse::<Purposes>().is_ok());
        for bad in [
            "news",
            "news:",
            ":1",
            "News:1",
            "news letter:1",
            "news:1 2",
            "news:ü",
            &format!("{longest}a:1"),
            &format!("news:{}", "1".repeat(MAX_VERSION_LEN + 1)),
        ] {
            assert!(
                matches!(bad.parse::<Purposes>(), Err(PurposesError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "news:1,news:2".parse::<Purposes>(),
            Err(PurposesError::Repeated("news".into()))
        );
    }
}
