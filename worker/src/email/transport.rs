//! Hands rendered emails to an SMTP relay or writes them to an outbox directory, with a commit
//! hook that lets the caller record the hand-over at the last moment before it becomes
//! irreversible.
//!
//! # Why the commit hook
//!
//! The `send_email` job records "handed over" in the event log through [`Mailer::send`]'s
//! [`HandOver`], once the server has accepted the sender, the recipient and the `DATA` command.
//! The record is written in two steps: [`HandOver::prepare`] writes it inside an open database
//! transaction (a conflict or a database failure abandons the message, and the server discards
//! a transaction whose final dot never came); then the transaction's `COMMIT` and the message
//! with its final `.` are written back to back, the `COMMIT` first, and both answers awaited
//! together. A worker killed before those two writes leaves no record and no delivery; killed
//! after them, it leaves both (the database and the mail server act on what reached them). Only
//! a kill in the microseconds between the two writes can leave a record of a message that never
//! arrived. Awaiting the commit before writing the dot would widen that gap to the commit's whole
//! round trip and disk flush: milliseconds, enough to lose messages when a busy worker dies.
//!
//! # `SMTP_URL`
//!
//! | URL | connection |
//! |---|---|
//! | `smtp://host[:port]` | plain text, port 25 by default; `STARTTLS` is not attempted (local relays, test sinks) |
//! | `smtp://host[:port]?tls=opportunistic` | `STARTTLS` when the server offers it, plain text otherwise; port 587 by default |
//! | `smtp://host[:port]?tls=required` | `STARTTLS`, failing when the server does not offer it; port 587 by default |
//! | `smtps://host[:port]` | implicit TLS from the first byte; port 465 by default |
//!
//! Any of them may carry `user:password@` (percent-encoded) for `AUTH PLAIN`/`LOGIN`. Certificates
//! are checked against the Mozilla roots (webpki-roots). The password is never logged, never part
//! of [`Mailer::describe`] and never printed by `Debug`.
//!
//! # Errors
//!
//! 5xx replies to `MAIL`, `RCPT`, `DATA` or the end of data are [`SendError::Permanent`]; 4xx
//! replies, and connection, timeout, TLS and I/O failures are [`SendError::Transient`]. Failures
//! while opening a connection (greeting, `EHLO`, `STARTTLS`, `AUTH`) are transient whatever their
//! code: they concern our relay, not this message, and must not fail the email for good. A
//! timeout or broken connection after the whole message was written is
//! [`SendError::Unanswered`]: the server may have accepted it. An address that does not parse is
//! permanent. Error texts are short, name the SMTP step and reply, and never contain the
//! recipient's address (they end up in events and logs).
//!
//! # Building a message
//!
//! [`OutgoingEmail::build`] turns an email into a message and never panics, whatever the log
//! holds: an address lettre refuses is a [`BuildError`], and a display name that cannot go
//! into a header ([`super::usable_display_name`], or one lettre cannot write) is left out, so
//! the message goes to the address alone.

use std::fmt::{self, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message};

use super::display_name::usable_display_name;
use super::outbox::OutboxDir;
use super::smtp::SmtpSender;
use super::templates::Rendered;

/// An email ready to be sent.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    /// The `Message-ID` without angle brackets, e.g. `0190c3e2-...@idp`. Chosen by the caller and
    /// stable across retries, so receivers and the outbox can recognise a repeat.
    pub message_id: String,
    /// The `From` mailbox, e.g. `idp <no-reply@idp.localhost>`.
    pub from: String,
    /// The recipient's address.
    pub to: String,
    /// The recipient's name for the `To` header; left out when it cannot be used there.
    pub to_name: Option<String>,
    /// Subject and bodies.
    pub rendered: Rendered,
}

/// An email built into a message, ready for [`Mailer::send_built`].
#[derive(Debug, Clone)]
pub struct BuiltEmail {
    message_id: String,
    recipient: String,
    message: Message,
}

/// Why an email cannot be built into a message: retrying cannot help. The texts never contain
/// an address (they end up in events and logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The `Message-ID` is empty, has no `@`, or has spaces, controls or angle brackets.
    #[error("the message id is not of the form left@right")]
    MessageId,
    /// The sender (`EMAIL_FROM`) is not a mailbox lettre can write.
    #[error("the sender address is not valid")]
    Sender,
    /// The recipient's address is not one lettre accepts.
    #[error("the recipient address is not valid")]
    Recipient,
    /// lettre refused the message (or failed while building it).
    #[error("the message could not be built: {0}")]
    Message(String),
}

/// Sends emails through SMTP or into an outbox directory. Cheap to clone: clones share the SMTP
/// connection pool.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Smtp(Arc<SmtpSender>),
    Outbox(OutboxDir),
}

/// What the server (or the outbox) said when it took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The server's final reply, e.g. `250 2.0.0 Ok: queued as 4F2A1`, or the path of the
    /// `.eml` file written to the outbox.
    pub reply: String,
}

/// Records that a message is handed over, in two steps (see the module documentation).
///
/// Any `Future<Output = Result<(), E>>` is a hand-over whose whole work happens in `prepare` and
/// whose commit is empty: the message goes out only after it completed.
pub trait HandOver: Send {
    /// Why recording failed.
    type Error: Send;
    /// Makes the prepared record durable.
    type Commit: Future<Output = Result<(), Self::Error>> + Send;

    /// Writes the record without making it durable; failing abandons the message.
    fn prepare(self) -> impl Future<Output = Result<Self::Commit, Self::Error>> + Send;
}

impl<F, E> HandOver for F
where
    F: Future<Output = Result<(), E>> + Send,
    E: Send,
{
    type Error = E;
    type Commit = std::future::Ready<Result<(), E>>;

    async fn prepare(self) -> Result<Self::Commit, E> {
        self.await?;
        Ok(std::future::ready(Ok(())))
    }
}

/// Why an email was not sent.
///
/// `Permanent` and `Transient` can also come after the hand-over committed, when the server
/// refused the message at the end of data (then nothing was delivered); `Unanswered` always
/// comes after it. The caller knows whether its commit ran, and records the failure accordingly.
#[derive(Debug, thiserror::Error)]
pub enum SendError<E> {
    /// Retrying will not help: a 5xx reply or an address that does not parse.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// Retrying later may help: a 4xx reply, a timeout, a broken connection.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The whole message was handed over after `commit`, but the server's answer never came
    /// (the connection broke or timed out): it may have been delivered.
    #[error("no answer after the message was handed over: {0}")]
    Unanswered(String),
    /// Recording the hand-over failed. When preparing failed, the transaction was abandoned
    /// before the final dot and nothing was delivered; when the commit failed, the server
    /// refused the message or did not answer.
    #[error("not committed: {0}")]
    NotCommitted(E),
    /// The server accepted the message (`reply`) but the commit of its hand-over failed: it was
    /// delivered, and the record of that is the caller's to write.
    #[error("delivered, but the hand-over was not recorded: {error}")]
    Unrecorded {
        /// The server's reply.
        reply: String,
        /// Why the commit failed.
        error: E,
    },
}

/// The mailer's configuration is unusable; reported at start.
#[derive(Debug, thiserror::Error)]
pub enum MailerConfigError {
    /// `SMTP_URL` does not describe an SMTP server we can talk to.
    #[error("SMTP_URL {0}")]
    SmtpUrl(String),
    /// The outbox directory could not be created.
    #[error("could not create the outbox directory {dir}: {source}")]
    Outbox {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Mailer {
    /// A mailer for the SMTP server at `url` (see the module documentation for its forms).
    /// `timeout` bounds opening a connection and each SMTP command; at most `pool_size` (at least
    /// one) connections are open at once, and idle ones are reused.
    pub fn smtp(url: &str, timeout: Duration, pool_size: usize) -> Result<Self, MailerConfigError> {
        Ok(Self {
            transport: Transport::Smtp(Arc::new(SmtpSender::new(url, timeout, pool_size)?)),
        })
    }

    /// A mailer that writes each message to `<dir>/<message id>.eml`, creating `dir` if needed.
    pub fn outbox(dir: PathBuf) -> Result<Self, MailerConfigError> {
        Ok(Self {
            transport: Transport::Outbox(OutboxDir::new(dir)?),
        })
    }

    /// Where emails go, for logs: `smtp://mail.example.com:587?tls=required` (never credentials)
    /// or `outbox /var/idp/mail`.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp(sender) => sender.describe(),
            Transport::Outbox(outbox) => outbox.describe(),
        }
    }

    /// Sends `email`. `hand_over` is prepared after the server accepted the sender, the
    /// recipient and the `DATA` command (354); its commit and the message with the final `.` are
    /// then written back to back. If preparing fails, the SMTP transaction is abandoned (the
    /// connection is dropped before the final dot, so the server discards it) and
    /// [`SendError::NotCommitted`] is returned: nothing was delivered. `hand_over` is not used at
    /// all when the server refuses earlier. In outbox mode, the hand-over is prepared and
    /// committed after the file is written and before it is renamed into place.
    pub async fn send<H: HandOver>(
        &self,
        email: &OutgoingEmail,
        hand_over: H,
    ) -> Result<Delivered, SendError<H::Error>> {
        let built = email
            .build()
            .map_err(|err| SendError::Permanent(err.to_string()))?;
        self.send_built(&built, hand_over).await
    }

    /// Sends an email built beforehand, as [`Mailer::send`] does.
    pub async fn send_built<H: HandOver>(
        &self,
        email: &BuiltEmail,
        hand_over: H,
    ) -> Result<Delivered, SendError<H::Error>> {
        match &self.transport {
            Transport::Smtp(sender) => {
                sender
                    .send(&email.message, &email.recipient, hand_over)
                    .await
            }
            Transport::Outbox(outbox) => {
                outbox
                    .write(&email.message_id, &email.message.formatted(), hand_over)
                    .await
            }
        }
    }

    /// Removes what this mailer keeps of message `message_id`: its outbox file; `false` when
    /// nothing was kept (an SMTP mailer keeps nothing, the message has left).
    ///
    /// # Errors
    /// When the file exists and cannot be removed.
    pub async fn forget(&self, message_id: &str) -> std::io::Result<bool> {
        match &self.transport {
            Transport::Smtp(_) => Ok(false),
            Transport::Outbox(outbox) => outbox.remove(message_id).await,
        }
    }

    /// Whether this mailer keeps the messages it sends (an outbox does).
    pub fn keeps_messages(&self) -> bool {
        matches!(self.transport, Transport::Outbox(_))
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Mailer").field(&self.describe()).finish()
    }
}

impl OutgoingEmail {
    /// A multipart/alternative message (text, then HTML) with the caller's `Message-ID`, to
    /// the recipient's name and address, or to the address alone when the name cannot go into
    /// a header. Never panics.
    pub fn build(&self) -> Result<BuiltEmail, BuildError> {
        let id = &self.message_id;
        if id.is_empty()
            || !id.contains('@')
            || id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'))
        {
            return Err(BuildError::MessageId);
        }
        let from = sender_mailbox(&self.from)?;
        let to: Address = self.to.trim().parse().map_err(|_| BuildError::Recipient)?;
        let named = self
            .to_name
            .as_deref()
            .and_then(usable_display_name)
            .map(|name| Mailbox::new(Some(name.to_owned()), to.clone()))
            .filter(writes_as_header);
        let to_mailbox = named.unwrap_or_else(|| Mailbox::new(None, to.clone()));
        let rendered = &self.rendered;
        // lettre panics on some input while writing headers (a name with a line break, for one).
        // The checks above keep such input out; this keeps any other case a refused message
        // rather than a panic that kills the job and keeps it from ever being recorded.
        let built = catch_unwind(AssertUnwindSafe(|| {
            Message::builder()
                .message_id(Some(format!("<{id}>")))
                .date_now()
                .from(from)
                .to(to_mailbox)
                .subject(rendered.subject.as_str())
                .multipart(MultiPart::alternative_plain_html(
                    rendered.text.clone(),
                    rendered.html.clone(),
                ))
        }));
        let message = match built {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => return Err(BuildError::Message(e.to_string())),
            Err(_) => {
                return Err(BuildError::Message(
                    "lettre failed while building it".into(),
                ));
            }
        };
        Ok(BuiltEmail {
            message_id: id.clone(),
            recipient: to.to_string(),
            message,
        })
    }
}

/// The domain of the sender `from` (e.g. `idp <no-reply@idp.localhost>`), checked as
/// [`OutgoingEmail::build`] will use it: a worker checks `EMAIL_FROM` with it at start.
pub fn sender_domain(from: &str) -> Result<String, BuildError> {
    sender_mailbox(from).map(|mailbox| mailbox.email.domain().to_owned())
}

fn sender_mailbox(from: &str) -> Result<Mailbox, BuildError> {
    from.parse::<Mailbox>()
        .ok()
        .filter(|mailbox| {
            mailbox
                .name
                .as_deref()
                .is_none_or(|name| usable_display_name(name).is_some())
        })
        .filter(writes_as_header)
        .ok_or(BuildError::Sender)
}

/// Whether lettre can write `mailbox` into a header: its `Display` fails on what it cannot
/// write, and the header builder turns that failure into a panic.
fn writes_as_header(mailbox: &Mailbox) -> bool {
    let mut written = String::new();
    write!(written, "{mailbox}").is_ok()
}

/// Replaces every occurrence of `address` (ignoring ASCII case) in `text` with `<recipient>`, and
/// keeps the result short: servers like to quote the recipient in their replies.
pub(super) fn without_address(text: &str, address: &str) -> String {
    const MAX_CHARS: usize = 200;
    let address = address.trim();
    let mut out = String::with_capacity(text.len());
    if address.is_empty() {
        out.push_str(text);
    } else {
        let haystack = text.to_ascii_lowercase();
        let needle = address.to_ascii_lowercase();
        let mut rest = 0;
        for (start, _) in haystack.match_indices(&needle) {
            out.push_str(&text[rest..start]);
            out.push_str("<recipient>");
            rest = start + needle.len();
        }
        out.push_str(&text[rest..]);
    }
    if out.chars().count() > MAX_CHARS {
        out = out.chars().take(MAX_CHARS).collect::<String>() + "...";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> OutgoingEmail {
        OutgoingEmail {
            message_id: "0190c3e2-7f4e-7c55-9a3e-1d2a3b4c5d6e@idp".into(),
            from: "idp <no-reply@idp.localhost>".into(),
            to: "ada@example.com".into(),
            to_name: Some("Ada Lovelace".into()),
            rendered: Rendered {
                subject: "Confirm your email address".into(),
                text: "Hi Ada,\n".into(),
                html: "<p>Hi Ada,</p>\n".into(),
            },
        }
    }

    fn formatted(email: &OutgoingEmail) -> String {
        String::from_utf8(email.build().unwrap().message.formatted()).unwrap()
    }

    #[test]
    fn a_message_carries_the_callers_message_id_and_both_bodies() {
        let formatted = formatted(&email());
        assert!(formatted.contains("Message-ID: <0190c3e2-7f4e-7c55-9a3e-1d2a3b4c5d6e@idp>\r\n"));
        assert!(formatted.contains("To: \"Ada Lovelace\" <ada@example.com>\r\n"));
        assert!(formatted.contains("From: idp <no-reply@idp.localhost>\r\n"));
        assert!(formatted.contains("Date: "));
        assert!(formatted.contains("multipart/alternative"));
        assert!(formatted.contains("text/plain"));
        assert!(formatted.contains("text/html"));
    }

    #[test]
    fn addresses_that_do_not_parse_are_named_without_being_quoted() {
        let mut bad = email();
        bad.to = "not an address".into();
        let reason = bad.build().unwrap_err();
        assert_eq!(reason.to_string(), "the recipient address is not valid");

        let mut bad = email();
        bad.message_id = "<x@y>".into();
        assert_eq!(bad.build().unwrap_err(), BuildError::MessageId);
    }

    #[test]
    fn a_name_that_cannot_go_into_a_header_is_left_out_and_the_message_still_builds() {
        for name in [
            "Ada\nBcc: eve@example.com",
            "Ada\r\nBcc: eve@example.com",
            "Ada\u{2028}Lovelace",
            "\u{202e}ecalevoL adA",
            "Ada\u{0}",
            " ",
        ] {
            let mut named = email();
            named.to_name = Some(name.into());
            let formatted = formatted(&named);
            assert!(formatted.contains("To: ada@example.com\r\n"), "{name:?}");
            assert!(!formatted.contains("Bcc"), "{name:?}");
        }
    }

    #[test]
    fn names_with_quotes_commas_and_non_ascii_letters_stay_in_the_header() {
        let mut named = email();
        named.to_name = Some("Lovelace, \"Ada\" Jānis".into());
        let formatted = formatted(&named);
        let to = formatted
            .lines()
            .find(|line| line.starts_with("To: "))
            .unwrap();
        assert!(to.ends_with("<ada@example.com>"), "{to}");
        assert!(to.contains("=?utf-8?"), "encoded, not raw: {to}");
    }

    #[test]
    fn addresses_the_api_accepted_but_lettre_refuses_are_a_build_error_not_a_panic() {
        for address in [
            "ada@example..com",
            "ada,lovelace@example.com",
            "a(b)@example.com",
        ] {
            let mut bad = email();
            bad.to = address.into();
            assert_eq!(bad.build().unwrap_err(), BuildError::Recipient, "{address}");
        }
    }

    #[test]
    fn a_sender_lettre_cannot_write_is_refused_with_its_domain_check() {
        assert_eq!(
            sender_domain("idp <no-reply@idp.localhost>").unwrap(),
            "idp.localhost"
        );
        for bad in ["not a mailbox", "idp\r\n <no-reply@idp.localhost>", ""] {
            assert_eq!(sender_domain(bad), Err(BuildError::Sender), "{bad:?}");
        }
    }

    #[test]
    fn replies_quoting_the_recipient_are_redacted() {
        assert_eq!(
            without_address(
                "550 5.1.1 <Ada@Example.com>: Recipient address rejected",
                "ada@example.com"
            ),
            "550 5.1.1 <<recipient>>: Recipient address rejected"
        );
        let long = "x".repeat(500);
        assert_eq!(without_address(&long, "a@b").chars().count(), 203);
    }

    #[test]
    fn debug_and_describe_never_show_the_smtp_password() {
        let mailer = Mailer::smtp(
            "smtp://mailer:s3cr%40t@mail.example.com:2525",
            Duration::from_secs(5),
            2,
        )
        .unwrap();
        assert_eq!(mailer.describe(), "smtp://mail.example.com:2525");
        let debug = format!("{mailer:?}");
        assert!(!debug.contains("s3cr"), "{debug}");
        assert!(!debug.contains("mailer:"), "{debug}");
    }
}
