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

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message};

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
    /// The recipient's name for the `To` header.
    pub to_name: Option<String>,
    /// Subject and bodies.
    pub rendered: Rendered,
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
        let message = build_message(email).map_err(SendError::Permanent)?;
        match &self.transport {
            Transport::Smtp(sender) => sender.send(&message, &email.to, hand_over).await,
            Transport::Outbox(outbox) => {
                outbox
                    .write(&email.message_id, &message.formatted(), hand_over)
                    .await
            }
        }
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Mailer").field(&self.describe()).finish()
    }
}

/// A multipart/alternative message (text, then HTML) with the caller's `Message-ID`. The error is
/// the reason for a permanent failure, without the addresses.
fn build_message(email: &OutgoingEmail) -> Result<Message, String> {
    let id = &email.message_id;
    if id.is_empty()
        || !id.contains('@')
        || id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'))
    {
        return Err("the message id is not of the form left@right".into());
    }
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|_| String::from("the sender address is not valid"))?;
    let to: Address = email
        .to
        .trim()
        .parse()
        .map_err(|_| String::from("the recipient address is not valid"))?;
    let to_name = email
        .to_name
        .as_deref()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    let rendered = &email.rendered;
    Message::builder()
        .message_id(Some(format!("<{id}>")))
        .date_now()
        .from(from)
        .to(Mailbox::new(to_name, to))
        .subject(rendered.subject.as_str())
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .map_err(|e| format!("the message could not be built: {e}"))
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

    #[test]
    fn a_message_carries_the_callers_message_id_and_both_bodies() {
        let formatted = String::from_utf8(build_message(&email()).unwrap().formatted()).unwrap();
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
        let reason = build_message(&bad).unwrap_err();
        assert_eq!(reason, "the recipient address is not valid");

        let mut bad = email();
        bad.message_id = "<x@y>".into();
        assert!(build_message(&bad).is_err());
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
