//! A person's display name: free text people choose, which ends up in email headers and on
//! other people's screens, so it may hold no character that changes how text around it is read.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// A display name: trimmed, 1 to [`MAX_DISPLAY_NAME_CHARS`] characters, none of them a control
/// (Cc), format (Cf: bidirectional overrides, zero-width characters), line or paragraph
/// separator (Zl, Zp) character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

/// Why a display name was refused; the text is safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DisplayNameError {
    /// Longer than the limit.
    #[error("at most {MAX_DISPLAY_NAME_CHARS} characters")]
    TooLong,
    /// Holds a control, format or separator character.
    #[error("control, format and line or paragraph separator characters are not allowed")]
    ForbiddenCharacter,
}

impl DisplayName {
    /// Parses a name; blank means none.
    pub fn parse(raw: &str) -> Result<Option<Self>, DisplayNameError> {
        let name = raw.trim();
        if name.is_empty() {
            return Ok(None);
        }
        if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(DisplayNameError::TooLong);
        }
        if !is_plain_text(name) {
            return Err(DisplayNameError::ForbiddenCharacter);
        }
        Ok(Some(Self(name.to_owned())))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Whether `text` holds no control, format, line or paragraph separator character: safe to
/// put in a header or a line of its own. Names recorded before the rule existed may fail it;
/// whoever shows them checks with this.
pub fn is_plain_text(text: &str) -> bool {
    !text.chars().any(|c| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_blank_means_none() {
        assert_eq!(
            DisplayName::parse("  Ada Lovelace ")
                .unwrap()
                .unwrap()
                .as_str(),
            "Ada Lovelace"
        );
        assert_eq!(DisplayName::parse("   ").unwrap(), None);
        assert!(DisplayName::parse("Zoë Ñandú 李小龍 🙂").unwrap().is_some());
    }

    #[test]
    fn control_format_and_separator_characters_are_refused() {
        for bad in [
            "Ada\nLovelace",
            "Ada\rBcc: x@example.com",
            "tab\there",
            "nul\0",
            "del\u{7f}",
            "c1\u{85}next",
            "rtl\u{202e}txeT",
            "zero\u{200b}width",
            "bom\u{feff}",
            "soft\u{ad}hyphen",
            "line\u{2028}sep",
            "para\u{2029}sep",
            "tag\u{e0041}",
        ] {
            assert_eq!(
                DisplayName::parse(bad),
                Err(DisplayNameError::ForbiddenCharacter),
                "{bad:?}"
            );
            assert!(!is_plain_text(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_length_limit_counts_characters_at_its_edge() {
        assert!(DisplayName::parse(&"é".repeat(100)).unwrap().is_some());
        assert_eq!(
            DisplayName::parse(&"é".repeat(101)),
            Err(DisplayNameError::TooLong)
        );
    }
}
