//! Which display names an email may use. Names come from the log, as typed at sign-up, and the
//! log keeps them forever: one with a line break or an invisible formatting character must not
//! make every email to its owner fail (lettre refuses to write it into a header) nor reach a
//! header or a greeting, where it could forge lines. Such a name is left out: the email goes to
//! the address alone and greets without a name.

use idp_events::identity::display_name::is_plain_text;

/// `raw` trimmed, if it can address the recipient: not blank, and nowhere (not even at its ends)
/// a control character (Cc, line breaks and tabs included), a format character (Cf:
/// bidirectional overrides, zero-width characters) or a line or paragraph separator (U+2028,
/// U+2029): the rule the API applies to new names ([`is_plain_text`]). `None` means "use no
/// name".
pub fn usable_display_name(raw: &str) -> Option<&str> {
    if !is_plain_text(raw) {
        return None;
    }
    Some(raw.trim()).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_used_trimmed() {
        for (raw, used) in [
            ("Ada Lovelace", "Ada Lovelace"),
            ("  Ada  ", "Ada"),
            ("Jānis Bērziņš", "Jānis Bērziņš"),
            ("Иванов Иван", "Иванов Иван"),
            ("\"Ada\" <ada@evil>, x", "\"Ada\" <ada@evil>, x"),
            ("🦆 Duck", "🦆 Duck"),
        ] {
            assert_eq!(usable_display_name(raw), Some(used), "{raw:?}");
        }
    }

    #[test]
    fn names_with_line_breaks_controls_or_invisible_formatting_are_not_used() {
        for raw in [
            "",
            "   ",
            "Ada\nBcc: eve@example.com",
            "Ada\r\nBcc: eve@example.com",
            "Ada\r",
            "Ada\n",
            "Ada\u{0}",
            "Ada\u{7f}",
            "Ada\u{85}",
            "Ada\tLovelace",
            "Ada\u{2028}Lovelace",
            "Ada\u{2029}Lovelace",
            "moc.elpmaxe@\u{202e}ada",
            "Ada\u{200b}",
            "\u{feff}Ada",
            "Ada\u{e0041}",
        ] {
            assert_eq!(usable_display_name(raw), None, "{raw:?}");
        }
    }
}
