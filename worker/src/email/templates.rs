//! What each email we send says: subject, plain text and HTML, rendered from the templates in
//! `worker/templates/email/` (embedded in the binary, so a deployed worker needs no files).
//!
//! Each kind has `<name>.txt`, which holds the subject (`{% block subject %}`) and the plain text,
//! and `<name>.html`; both extend a layout that greets the recipient. HTML output is autoescaped:
//! a display name is whatever the user typed at sign-up.

use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior};

/// An email we send, with what only this kind needs. Links come from [`super::Links`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailKind {
    /// "Confirm your email address", with the verification link.
    Verification {
        /// `{PUBLIC_BASE_URL}/verify-email?token=...`
        link: String,
    },
    /// Someone tried to register an address that already has an account: sign in or reset if it
    /// was you, otherwise ignore it. Sent instead of a second verification email, so sign-up does
    /// not reveal which addresses have accounts.
    DuplicateRegistration {
        /// `{PUBLIC_BASE_URL}/sign-in`
        sign_in_link: String,
        /// `{PUBLIC_BASE_URL}/forgot-password` or a reset link.
        reset_link: String,
    },
    /// The link to choose a new password; it expires and can be ignored.
    PasswordReset {
        /// `{PUBLIC_BASE_URL}/reset-password?token=...`
        link: String,
    },
    /// The account is locked until `until`: after too many failed sign-ins, or by an
    /// administrator (`by_admin`), whose lock a password reset does not lift, so that email does
    /// not offer one.
    AccountLocked {
        /// When the lock ends; shown in RFC 3339, UTC, or as "until an administrator unlocks
        /// it" for an indefinite lock.
        until: DateTime<Utc>,
        /// Whether an administrator locked the account.
        by_admin: bool,
        /// Where to reset the password if the attempts were not the user's.
        reset_link: String,
    },
    /// The password was changed; reset it if that was not the user.
    PasswordChanged {
        /// Where to reset the password if the change was not the user's.
        reset_link: String,
    },
    /// An administrator removed the second factor; reset the password if the person did not
    /// ask for it.
    SecondFactorReset {
        /// Where to reset the password.
        reset_link: String,
    },
    /// A sign-in from a device the account had not used lately: when, which device, from
    /// which network, and a link that ends that session.
    NewDevice {
        /// When the sign-in happened.
        at: DateTime<Utc>,
        /// The device as shown to people, e.g. `Firefox on Linux`.
        device: String,
        /// The client's network (IPv4 /24 or IPv6 /48).
        network: String,
        /// `{PUBLIC_BASE_URL}/revoke-session?token=...`
        revoke_link: String,
        /// Where to reset the password.
        reset_link: String,
    },
}

impl EmailKind {
    /// The stable name of this kind, used for template files, metrics labels and events.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Verification { .. } => "verification",
            Self::DuplicateRegistration { .. } => "duplicate_registration",
            Self::PasswordReset { .. } => "password_reset",
            Self::AccountLocked { .. } => "account_locked",
            Self::PasswordChanged { .. } => "password_changed",
            Self::SecondFactorReset { .. } => "second_factor_reset",
            Self::NewDevice { .. } => "new_device",
        }
    }

    /// The template variables of this kind (besides the greeting and the product name).
    fn variables(&self) -> Vec<(&'static str, Value)> {
        match self {
            Self::Verification { link } | Self::PasswordReset { link } => {
                vec![("link", Value::from(link.as_str()))]
            }
            Self::DuplicateRegistration {
                sign_in_link,
                reset_link,
            } => vec![
                ("sign_in_link", Value::from(sign_in_link.as_str())),
                ("reset_link", Value::from(reset_link.as_str())),
            ],
            Self::AccountLocked {
                until,
                by_admin,
                reset_link,
            } => vec![
                (
                    "until",
                    Value::from(until.to_rfc3339_opts(SecondsFormat::Secs, true)),
                ),
                (
                    "indefinite",
                    Value::from(*until >= idp_events::identity::user::indefinitely()),
                ),
                ("by_admin", Value::from(*by_admin)),
                ("reset_link", Value::from(reset_link.as_str())),
            ],
            Self::PasswordChanged { reset_link } | Self::SecondFactorReset { reset_link } => {
                vec![("reset_link", Value::from(reset_link.as_str()))]
            }
            Self::NewDevice {
                at,
                device,
                network,
                revoke_link,
                reset_link,
            } => vec![
                (
                    "at",
                    Value::from(at.to_rfc3339_opts(SecondsFormat::Secs, true)),
                ),
                ("device", Value::from(device.as_str())),
                ("network", Value::from(network.as_str())),
                ("revoke_link", Value::from(revoke_link.as_str())),
                ("reset_link", Value::from(reset_link.as_str())),
            ],
        }
    }
}

/// An email ready to be put into a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, no trailing newline.
    pub subject: String,
    /// The plain-text body, ending with a newline.
    pub text: String,
    /// The HTML body, a complete document.
    pub html: String,
}

/// A template failed to render. The templates are embedded and every kind is rendered by the unit
/// tests, so this means a broken build rather than bad input.
#[derive(Debug, thiserror::Error)]
#[error("email template {template} failed to render: {source}")]
pub struct RenderError {
    template: String,
    #[source]
    source: Error,
}

/// Renders `kind` for a recipient called `display_name` (greeted by name when given and usable).
pub fn render(
    kind: &EmailKind,
    display_name: Option<&str>,
    product_name: &str,
) -> Result<Rendered, RenderError> {
    let name = kind.name();
    let display_name = display_name.and_then(super::usable_display_name);
    let mut variables = kind.variables();
    variables.push(("display_name", Value::from(display_name)));
    variables.push(("product_name", Value::from(product_name)));

    let text_name = format!("{name}.txt");
    let html_name = format!("{name}.html");
    let failed = |template: &str| {
        let template = template.to_owned();
        move |source| RenderError { template, source }
    };

    let text_template = ENVIRONMENT
        .get_template(&text_name)
        .map_err(failed(&text_name))?;
    let context: Value = variables.iter().cloned().collect();
    let mut captured = text_template
        .render_captured(&context)
        .map_err(failed(&text_name))?;
    let subject = captured
        .with_state_mut(|state| state.render_block("subject"))
        .map_err(failed(&text_name))?;
    let subject = subject_line(&subject);
    let text = captured.into_output();

    variables.push(("subject", Value::from(subject.as_str())));
    let context: Value = variables.into_iter().collect();
    let html = ENVIRONMENT
        .get_template(&html_name)
        .and_then(|template| template.render(&context))
        .map_err(failed(&html_name))?;

    Ok(Rendered {
        subject,
        text: format!("{}\n", text.trim_end()),
        html: format!("{}\n", html.trim_end()),
    })
}

/// Header-safe: one line, runs of whitespace collapsed.
fn subject_line(raw: &str) -> String {
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The embedded templates, by name.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "layout.txt",
        include_str!("../../templates/email/layout.txt"),
    ),
    (
        "layout.html",
        include_str!("../../templates/email/layout.html"),
    ),
    (
        "button.html",
        include_str!("../../templates/email/button.html"),
    ),
    (
        "verification.txt",
        include_str!("../../templates/email/verification.txt"),
    ),
    (
        "verification.html",
        include_str!("../../templates/email/verification.html"),
    ),
    (
        "duplicate_registration.txt",
        include_str!("../../templates/email/duplicate_registration.txt"),
    ),
    (
        "duplicate_registration.html",
        include_str!("../../templates/email/duplicate_registration.html"),
    ),
    (
        "password_reset.txt",
        include_str!("../../templates/email/password_reset.txt"),
    ),
    (
        "password_reset.html",
        include_str!("../../templates/email/password_reset.html"),
    ),
    (
        "account_locked.txt",
        include_str!("../../templates/email/account_locked.txt"),
    ),
    (
        "account_locked.html",
        include_str!("../../templates/email/account_locked.html"),
    ),
    (
        "password_changed.txt",
        include_str!("../../templates/email/password_changed.txt"),
    ),
    (
        "password_changed.html",
        include_str!("../../templates/email/password_changed.html"),
    ),
    (
        "second_factor_reset.txt",
        include_str!("../../templates/email/second_factor_reset.txt"),
    ),
    (
        "second_factor_reset.html",
        include_str!("../../templates/email/second_factor_reset.html"),
    ),
    (
        "new_device.txt",
        include_str!("../../templates/email/new_device.txt"),
    ),
    (
        "new_device.html",
        include_str!("../../templates/email/new_device.html"),
    ),
];

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A misspelt variable must fail the unit tests, not send "Hi ," to users.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_formatter(html_formatter);
    // Templates load on first use, so a syntax error surfaces as a `RenderError`.
    env.set_loader(|name| {
        Ok(TEMPLATES
            .iter()
            .find(|(candidate, _)| *candidate == name)
            .map(|(_, source)| (*source).to_owned()))
    });
    env
});

/// minijinja's default HTML escaping also turns `/` into `&#x2f;`, which makes every link in the
/// HTML body unreadable to anyone (or any test) looking at the source. Escaping `& < > " '` is
/// enough for text and quoted attribute values.
fn html_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match (state.auto_escape(), value.as_str()) {
        (AutoEscape::Html, Some(text)) if !value.is_safe() => out
            .write_str(&escape_html(text))
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "could not write output")),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const VERIFY: &str = "https://idp.example.com/verify-email?token=abc-_123";
    const RESET: &str = "https://idp.example.com/reset-password?token=r3set_tok";
    const SIGN_IN: &str = "https://idp.example.com/sign-in";
    const FORGOT: &str = "https://idp.example.com/forgot-password";
    const REVOKE: &str = "https://idp.example.com/revoke-session?token=r3voke";

    fn every_kind() -> Vec<(EmailKind, Vec<&'static str>)> {
        vec![
            (
                EmailKind::Verification {
                    link: VERIFY.into(),
                },
                vec![VERIFY],
            ),
            (
                EmailKind::DuplicateRegistration {
                    sign_in_link: SIGN_IN.into(),
                    reset_link: FORGOT.into(),
                },
                vec![SIGN_IN, FORGOT],
            ),
            (EmailKind::PasswordReset { link: RESET.into() }, vec![RESET]),
            (
                EmailKind::AccountLocked {
                    until: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
                    by_admin: false,
                    reset_link: FORGOT.into(),
                },
                vec![FORGOT],
            ),
            (
                EmailKind::PasswordChanged {
                    reset_link: FORGOT.into(),
                },
                vec![FORGOT],
            ),
            (
                EmailKind::SecondFactorReset {
                    reset_link: FORGOT.into(),
                },
                vec![FORGOT],
            ),
            (
                EmailKind::NewDevice {
                    at: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
                    device: "Firefox on Linux".into(),
                    network: "203.0.113.0/24".into(),
                    revoke_link: REVOKE.into(),
                    reset_link: FORGOT.into(),
                },
                vec![REVOKE, FORGOT],
            ),
        ]
    }

    #[test]
    fn every_kind_renders_a_subject_a_text_and_an_html_body() {
        for (kind, _) in every_kind() {
            let rendered = render(&kind, Some("Ada"), "Acme ID").unwrap();
            assert!(!rendered.subject.is_empty(), "{}", kind.name());
            assert!(!rendered.subject.contains('\n'), "{}", kind.name());
            assert!(rendered.text.starts_with("Hi Ada,\n\n"), "{}", kind.name());
            assert!(!rendered.text.contains("\n\n\n"), "{}", kind.name());
            assert!(rendered.text.contains("Acme ID"), "{}", kind.name());
            assert!(
                rendered.html.starts_with("<!doctype html>"),
                "{}",
                kind.name()
            );
            assert!(
                rendered
                    .html
                    .contains(&format!("<title>{}</title>", rendered.subject)),
                "{}",
                kind.name()
            );
            assert!(!rendered.text.contains("{{"), "{}", kind.name());
            assert!(!rendered.html.contains("{%"), "{}", kind.name());
        }
    }

    #[test]
    fn every_link_appears_in_both_bodies() {
        for (kind, links) in every_kind() {
            let rendered = render(&kind, None, "Acme ID").unwrap();
            for link in links {
                assert!(rendered.text.contains(link), "{} text: {link}", kind.name());
                assert!(
                    rendered.html.contains(&format!("href=\"{link}\"")),
                    "{} html: {link}",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn a_display_name_is_escaped_in_html_but_kept_in_text() {
        let kind = EmailKind::PasswordChanged {
            reset_link: FORGOT.into(),
        };
        let name = "<script>alert('x')</script> & co";
        let rendered = render(&kind, Some(name), "Acme ID").unwrap();
        assert!(!rendered.html.contains("<script>"));
        assert!(
            rendered
                .html
                .contains("Hi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co,")
        );
        assert!(rendered.text.starts_with(&format!("Hi {name},\n")));
    }

    #[test]
    fn without_a_display_name_the_greeting_is_plain() {
        let kind = EmailKind::Verification {
            link: VERIFY.into(),
        };
        for name in [None, Some(""), Some("   ")] {
            let rendered = render(&kind, name, "Acme ID").unwrap();
            assert!(rendered.text.starts_with("Hi,\n"), "{name:?}");
            assert!(rendered.html.contains("<p>Hi,</p>"), "{name:?}");
        }
    }

    #[test]
    fn a_display_name_with_a_line_break_or_hidden_formatting_is_not_greeted() {
        let kind = EmailKind::Verification {
            link: VERIFY.into(),
        };
        for name in ["Ada\r.\r\nMAIL FROM:<x@y>", "Ada\u{202e}", "Ada\u{2028}"] {
            let rendered = render(&kind, Some(name), "Acme ID").unwrap();
            assert!(rendered.text.starts_with("Hi,\n"), "{name:?}");
            assert!(!rendered.text.contains("MAIL FROM"), "{name:?}");
            assert!(rendered.html.contains("<p>Hi,</p>"), "{name:?}");
        }
    }

    #[test]
    fn subjects_say_what_the_email_is_about() {
        let subjects: Vec<_> = every_kind()
            .into_iter()
            .map(|(kind, _)| render(&kind, None, "Acme ID").unwrap().subject)
            .collect();
        assert_eq!(
            subjects,
            [
                "Confirm your email address",
                "Someone tried to sign up with your email address",
                "Reset your password",
                "Your account is temporarily locked",
                "Your password was changed",
                "Two-factor sign-in was turned off for your account",
                "New sign-in to your account from Firefox on Linux",
            ]
        );
    }

    #[test]
    fn an_administrators_lock_names_the_administrator_and_offers_no_password_reset() {
        for (until, shown) in [
            (
                Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
                "2030-01-02T03:04:05Z",
            ),
            (
                idp_events::identity::user::indefinitely(),
                "until an administrator unlocks it",
            ),
        ] {
            let kind = EmailKind::AccountLocked {
                until,
                by_admin: true,
                reset_link: FORGOT.into(),
            };
            let rendered = render(&kind, None, "Acme ID").unwrap();
            assert_eq!(rendered.subject, "Your account is locked");
            for body in [&rendered.text, &rendered.html] {
                assert!(body.contains("An administrator has locked"), "{body}");
                assert!(body.contains(shown), "{body}");
                assert!(!body.contains(FORGOT), "no reset link: {body}");
                assert!(!body.contains("failed attempts"), "{body}");
            }
        }
    }

    #[test]
    fn a_lock_shows_its_end_in_rfc3339_utc() {
        let kind = EmailKind::AccountLocked {
            until: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
            by_admin: false,
            reset_link: FORGOT.into(),
        };
        let rendered = render(&kind, None, "Acme ID").unwrap();
        assert!(
            rendered
                .text
                .contains("locked it until 2030-01-02T03:04:05Z.")
        );
        assert!(
            rendered
                .html
                .contains("<strong>2030-01-02T03:04:05Z</strong>")
        );
    }

    #[test]
    fn a_password_reset_says_it_expires_and_can_be_ignored() {
        let rendered = render(
            &EmailKind::PasswordReset { link: RESET.into() },
            None,
            "Acme ID",
        )
        .unwrap();
        assert!(rendered.text.contains("expires"));
        assert!(rendered.text.contains("you can ignore this email"));
    }

    #[test]
    fn kinds_have_stable_names() {
        let names: Vec<_> = every_kind().iter().map(|(kind, _)| kind.name()).collect();
        assert_eq!(
            names,
            [
                "verification",
                "duplicate_registration",
                "password_reset",
                "account_locked",
                "password_changed",
                "second_factor_reset",
                "new_device"
            ]
        );
    }
}
