//! Project names, parsed once at the edge: they become database, role and repository names, so
//! they follow the strictest of those rules (a DNS label).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest name allowed (a DNS label's limit; also below Postgres' 63-byte identifiers).
pub const MAX_NAME_LEN: usize = 63;

/// A valid project name: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a letter and
/// not ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectName(String);

/// Why a string is not a valid name. The messages are meant for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("the name is empty")]
    Empty,
    /// More than [`MAX_NAME_LEN`] characters.
    #[error("the name is {length} characters long; at most 63 are allowed")]
    TooLong {
        /// How many characters it has.
        length: usize,
    },
    /// A character outside `a-z`, `0-9` and `-`.
    #[error(
        "the name contains {character:?}; only lowercase letters a-z, digits 0-9 and '-' are allowed"
    )]
    InvalidCharacter {
        /// The first offending character.
        character: char,
    },
    /// The first character is a digit or `-`.
    #[error("the name must start with a lowercase letter a-z")]
    MustStartWithLetter,
    /// The last character is `-`.
    #[error("the name must not end with '-'")]
    EndsWithHyphen,
}

impl ProjectName {
    /// Parses a name, saying what is wrong with it if it is not valid.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_label(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the DNS-label rules; shared with template and step names.
pub(crate) fn check_label(name: &str) -> Result<(), NameError> {
    let length = name.chars().count();
    if length == 0 {
        return Err(NameError::Empty);
    }
    if length > MAX_NAME_LEN {
        return Err(NameError::TooLong { length });
    }
    if let Some(character) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::InvalidCharacter { character });
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::MustStartWithLetter);
    }
    if name.ends_with('-') {
        return Err(NameError::EndsWithHyphen);
    }
    Ok(())
}

impl TryFrom<String> for ProjectName {
    type Error = NameError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        check_label(&name)?;
        Ok(Self(name))
    }
}

impl From<ProjectName> for String {
    fn from(name: ProjectName) -> Self {
        name.0
    }
}

impl AsRef<str> for ProjectName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_label_is_a_valid_name() {
        for name in ["a", "billing", "billing-api-2", &"a".repeat(63)] {
            assert_eq!(
                ProjectName::parse(name).map(|n| n.to_string()),
                Ok(name.to_owned())
            );
        }
    }

    #[test]
    fn each_broken_rule_is_named() {
        assert_eq!(ProjectName::parse(""), Err(NameError::Empty));
        assert_eq!(
            ProjectName::parse(&"a".repeat(64)),
            Err(NameError::TooLong { length: 64 })
        );
        assert_eq!(
            ProjectName::parse("Billing"),
            Err(NameError::InvalidCharacter { character: 'B' })
        );
        assert_eq!(
            ProjectName::parse("billing_api"),
            Err(NameError::InvalidCharacter { character: '_' })
        );
        assert_eq!(
            ProjectName::parse("café"),
            Err(NameError::InvalidCharacter { character: 'é' })
        );
        assert_eq!(
            ProjectName::parse("2fa"),
            Err(NameError::MustStartWithLetter)
        );
        assert_eq!(
            ProjectName::parse("-api"),
            Err(NameError::MustStartWithLetter)
        );
        assert_eq!(ProjectName::parse("api-"), Err(NameError::EndsWithHyphen));
    }

    #[test]
    fn the_messages_say_what_is_wrong_in_plain_words() {
        assert_eq!(
            NameError::InvalidCharacter { character: '_' }.to_string(),
            "the name contains '_'; only lowercase letters a-z, digits 0-9 and '-' are allowed"
        );
        assert_eq!(
            NameError::TooLong { length: 70 }.to_string(),
            "the name is 70 characters long; at most 63 are allowed"
        );
    }

    #[test]
    fn serde_is_a_plain_string_validated_on_the_way_in() {
        let name = ProjectName::parse("billing").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"billing\"");
        assert_eq!(
            serde_json::from_str::<ProjectName>("\"billing\"").unwrap(),
            name
        );
        let error = serde_json::from_str::<ProjectName>("\"Billing\"").unwrap_err();
        assert!(
            error.to_string().contains("only lowercase letters"),
            "{error}"
        );
    }
}
