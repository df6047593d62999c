//! The SMTP side of [`super::Mailer`]: a small pool of lettre's low-level connections, driven one
//! command at a time so that the caller's hand-over can be recorded between `DATA` and the
//! message.
//!
//! lettre's `AsyncSmtpTransport` sends a whole transaction in one call and so offers no such
//! window; its `AsyncSmtpConnection` does, but has no command timeouts and no pool, which is what
//! this module adds.

use std::fmt::{self, Display};
use std::pin::pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::future::maybe_done;
use lettre::Message;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use percent_encoding::percent_decode_str;
use tokio::sync::Semaphore;
use url::Url;

use super::transport::{Delivered, HandOver, MailerConfigError, SendError, without_address};

/// Idle connections older than this are closed rather than reused: servers drop idle clients
/// after a few minutes, and a pool should not hold sockets nobody uses.
pub(super) const MAX_IDLE: Duration = Duration::from_secs(60);

/// An SMTP server and a pool of connections to it.
pub(super) struct SmtpSender {
    server: Server,
    timeout: Duration,
    hello: ClientId,
    /// One permit per connection that may be open at once.
    slots: Semaphore,
    pool_size: usize,
    idle: Mutex<Vec<Idle>>,
    /// Set once the task that closes stale idle connections runs.
    reaper: OnceLock<()>,
}

struct Server {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
}

#[derive(Clone)]
enum Security {
    Plain,
    StartTlsOpportunistic(TlsParameters),
    StartTlsRequired(TlsParameters),
    Implicit(TlsParameters),
}

struct Idle {
    connection: AsyncSmtpConnection,
    since: Instant,
}

/// Why one SMTP step failed.
enum StepError {
    /// The server answered 4xx or 5xx; the connection is still in sync.
    Reply(SmtpError),
    /// The connection is unusable: I/O error, timeout, garbage.
    Broken(String),
}

impl StepError {
    /// A reply that closes the connection (421) counts as broken for reuse purposes.
    fn connection_usable(&self) -> bool {
        match self {
            Self::Reply(error) => error.status().map(u16::from) != Some(421),
            Self::Broken(_) => false,
        }
    }
}

impl SmtpSender {
    pub(super) fn new(
        url: &str,
        timeout: Duration,
        pool_size: usize,
    ) -> Result<Self, MailerConfigError> {
        let pool_size = pool_size.max(1);
        Ok(Self {
            server: Server::parse(url)?,
            timeout,
            hello: ClientId::default(),
            slots: Semaphore::new(pool_size),
            pool_size,
            idle: Mutex::new(Vec::with_capacity(pool_size)),
            reaper: OnceLock::new(),
        })
    }

    pub(super) fn describe(&self) -> String {
        let Server {
            host,
            port,
            security,
            ..
        } = &self.server;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        match security {
            Security::Plain => format!("smtp://{host}:{port}"),
            Security::StartTlsOpportunistic(_) => {
                format!("smtp://{host}:{port}?tls=opportunistic")
            }
            Security::StartTlsRequired(_) => format!("smtp://{host}:{port}?tls=required"),
            Security::Implicit(_) => format!("smtps://{host}:{port}"),
        }
    }

    /// One SMTP transaction for `message`, with `hand_over` prepared between `DATA` and the
    /// body, and committed as the body goes out. `recipient` is only used to keep it out of
    /// error texts.
    pub(super) async fn send<H: HandOver>(
        self: &Arc<Self>,
        message: &Message,
        recipient: &str,
        hand_over: H,
    ) -> Result<Delivered, SendError<H::Error>> {
        self.start_reaper();
        let body = message.formatted();
        let transient = |step: &str, error: &str| {
            SendError::Transient(format!("{step}: {}", without_address(error, recipient)))
        };
        let refused = |step: &str, error: StepError| match error {
            StepError::Reply(reply) => {
                let text = format!(
                    "{step}: {}",
                    without_address(&reply_text(&reply), recipient)
                );
                if reply.is_permanent() {
                    SendError::Permanent(text)
                } else {
                    SendError::Transient(text)
                }
            }
            StepError::Broken(why) => transient(step, &why),
        };

        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| transient("connect", "the mailer is shut down"))?;

        // MAIL FROM, on an idle connection if there is one. The server may have closed it while
        // it was idle; then open a new one and try once more.
        let (mut connection, reused) = match self.checkout() {
            Some(connection) => (connection, true),
            None => (
                self.open().await.map_err(|e| transient("connect", &e))?,
                false,
            ),
        };
        let mail = match mail_command(&connection, message, &body) {
            Ok(mail) => mail,
            Err(reason) => {
                self.checkin(connection);
                return Err(SendError::Permanent(reason));
            }
        };
        if let Err(error) = self.command(&mut connection, mail).await {
            if !reused || error.connection_usable() {
                self.after_refusal(connection, &error).await;
                return Err(refused("MAIL FROM", error));
            }
            tracing::debug!("idle SMTP connection was closed by the server; reconnecting");
            connection = self.open().await.map_err(|e| transient("connect", &e))?;
            let mail = mail_command(&connection, message, &body).map_err(SendError::Permanent)?;
            if let Err(error) = self.command(&mut connection, mail).await {
                self.after_refusal(connection, &error).await;
                return Err(refused("MAIL FROM", error));
            }
        }

        for address in message.envelope().to() {
            if let Err(error) = self
                .command(&mut connection, Rcpt::new(address.clone(), vec![]))
                .await
            {
                self.after_refusal(connection, &error).await;
                return Err(refused("RCPT TO", error));
            }
        }
        if let Err(error) = self.command(&mut connection, Data).await {
            self.after_refusal(connection, &error).await;
            return Err(refused("DATA", error));
        }

        // The server waits for the message now. If preparing the record fails, dropping the
        // connection before the final dot makes the server discard the transaction (RSET would
        // be read as message text at this point).
        let commit = match hand_over.prepare().await {
            Ok(commit) => commit,
            Err(error) => {
                drop(connection);
                return Err(SendError::NotCommitted(error));
            }
        };

        let (committed, answer) = {
            let end_of_data = async {
                match String::from_utf8(dot_stuffed(&body)) {
                    Ok(data) => connection.command(data).await,
                    Err(_) => connection.message(&body).await,
                }
            };
            let mut commit = pin!(maybe_done(commit));
            let mut answer = pin!(maybe_done(tokio::time::timeout(self.timeout, end_of_data)));
            // The commit's first poll writes its COMMIT to the database, the answer's first poll
            // the message and its final dot to the server: back to back, in this order, with
            // nothing awaited in between (the transport module's documentation says why).
            let _ = futures::poll!(commit.as_mut());
            let _ = futures::poll!(answer.as_mut());
            futures::future::join(commit.as_mut(), answer.as_mut()).await;
            match (commit.as_mut().take_output(), answer.as_mut().take_output()) {
                (Some(committed), Some(answer)) => (committed, answer),
                _ => unreachable!("a completed join has both outputs"),
            }
        };

        match (committed, answer) {
            (Ok(()), Ok(Ok(reply))) => {
                self.checkin(connection);
                Ok(Delivered {
                    reply: without_address(&response_text(&reply), recipient),
                })
            }
            (Err(error), Ok(Ok(reply))) => {
                self.checkin(connection);
                Err(SendError::Unrecorded {
                    reply: without_address(&response_text(&reply), recipient),
                    error,
                })
            }
            (Err(error), _) => Err(SendError::NotCommitted(error)),
            (Ok(()), Ok(Err(error))) if error.is_permanent() || error.is_transient() => {
                // The transaction is over either way; the connection can carry the next one.
                let error = StepError::Reply(error);
                if error.connection_usable() {
                    self.checkin(connection);
                }
                Err(refused("end of DATA", error))
            }
            // The server has the whole message but its answer never came: it may have
            // accepted it.
            (Ok(()), Ok(Err(error))) => Err(SendError::Unanswered(format!(
                "end of DATA: {}",
                without_address(&error.to_string(), recipient)
            ))),
            (Ok(()), Err(_)) => Err(SendError::Unanswered(format!(
                "end of DATA: {}",
                self.timed_out()
            ))),
        }
    }

    /// Opens a connection: greeting, `EHLO`, TLS as configured, `AUTH` when credentials are set.
    async fn open(&self) -> Result<AsyncSmtpConnection, String> {
        let Server {
            host,
            port,
            security,
            credentials,
        } = &self.server;
        let implicit = match security {
            Security::Implicit(tls) => Some(tls.clone()),
            _ => None,
        };
        let connect = async {
            let mut connection = AsyncSmtpConnection::connect_tokio1(
                (host.as_str(), *port),
                Some(self.timeout),
                &self.hello,
                implicit,
                None,
            )
            .await?;
            match security {
                Security::StartTlsRequired(tls) => {
                    connection.starttls(tls.clone(), &self.hello).await?;
                }
                Security::StartTlsOpportunistic(tls) if connection.can_starttls() => {
                    connection.starttls(tls.clone(), &self.hello).await?;
                }
                _ => {}
            }
            if let Some(credentials) = credentials {
                connection.auth(DEFAULT_MECHANISMS, credentials).await?;
            }
            Ok::<_, SmtpError>(connection)
        };
        let connection = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| match e.status() {
                Some(_) => reply_text(&e),
                None => e.to_string(),
            })?;
        metrics::counter!("idp_smtp_connections_opened_total").increment(1);
        tracing::debug!(smtp.server = %self.describe(), "SMTP connection opened");
        Ok(connection)
    }

    async fn command<C: Display>(
        &self,
        connection: &mut AsyncSmtpConnection,
        command: C,
    ) -> Result<Response, StepError> {
        match tokio::time::timeout(self.timeout, connection.command(command)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_permanent() || error.is_transient() => {
                Err(StepError::Reply(error))
            }
            Ok(Err(error)) => Err(StepError::Broken(error.to_string())),
            Err(_) => Err(StepError::Broken(self.timed_out())),
        }
    }

    /// After a refused `MAIL`, `RCPT` or `DATA`: reset the transaction and keep the connection
    /// when the server is still talking to us.
    async fn after_refusal(&self, mut connection: AsyncSmtpConnection, error: &StepError) {
        if error.connection_usable() && self.command(&mut connection, Rset).await.is_ok() {
            self.checkin(connection);
        }
    }

    fn checkout(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(candidate) = idle.pop() {
            if candidate.since.elapsed() < MAX_IDLE && !candidate.connection.has_broken() {
                return Some(candidate.connection);
            }
        }
        None
    }

    fn checkin(&self, connection: AsyncSmtpConnection) {
        if connection.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.pool_size {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections once they are stale, even when no email comes to trigger it. The
    /// task holds only a weak reference and ends with the last clone of the mailer.
    fn start_reaper(self: &Arc<Self>) {
        self.reaper.get_or_init(|| {
            let sender = Arc::downgrade(self);
            tokio::spawn(reap_idle_connections(sender));
        });
    }

    fn timed_out(&self) -> String {
        format!("no answer within {} ms", self.timeout.as_millis())
    }
}

async fn reap_idle_connections(sender: Weak<SmtpSender>) {
    let mut ticks = tokio::time::interval(MAX_IDLE / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(sender) = sender.upgrade() else {
            return;
        };
        let stale: Vec<Idle> = {
            let mut idle = sender.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let (stale, fresh) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|candidate| candidate.since.elapsed() >= MAX_IDLE);
            *idle = fresh;
            stale
        };
        for mut candidate in stale {
            // A polite QUIT; the socket closes when the connection is dropped either way.
            let _ = tokio::time::timeout(sender.timeout, candidate.connection.command(Quit)).await;
        }
    }
}

/// The data phase in one write: the message with dots doubled at the start of lines, then
/// `CRLF . CRLF`. lettre's `message()` writes the final dot separately; with Nagle's algorithm and
/// delayed ACKs that small second write waits about 40 ms for the server's ACK, on every message.
/// (`command()` writes its argument at once and reads the reply, which is all the data phase
/// needs.) Like lettre, a line starts only after CRLF.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut line_start = true;
    let mut previous = 0u8;
    for &byte in message {
        if line_start && byte == b'.' {
            data.push(b'.');
        }
        data.push(byte);
        line_start = previous == b'\r' && byte == b'\n';
        previous = byte;
    }
    data.extend_from_slice(b"\r\n.\r\n");
    data
}

/// `MAIL FROM` with the parameters the message needs; the error is a permanent-failure reason.
fn mail_command(
    connection: &AsyncSmtpConnection,
    message: &Message,
    body: &[u8],
) -> Result<Mail, String> {
    let envelope = message.envelope();
    let mut parameters = Vec::new();
    let non_ascii_address = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|address| !AsRef::<str>::as_ref(address).is_ascii());
    if non_ascii_address {
        if !connection
            .server_info()
            .supports_feature(Extension::SmtpUtfEight)
        {
            return Err("the address needs SMTPUTF8, which the server does not offer".into());
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() {
        if !connection
            .server_info()
            .supports_feature(Extension::EightBitMime)
        {
            return Err("the message needs 8BITMIME, which the server does not offer".into());
        }
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Ok(Mail::new(envelope.from().cloned(), parameters))
}

/// `451 4.3.0 Try again later` from a negative reply.
fn reply_text(error: &SmtpError) -> String {
    let code = error.status().map(u16::from).unwrap_or_default();
    match std::error::Error::source(error) {
        Some(text) => format!("{code} {text}"),
        None => code.to_string(),
    }
}

/// `250 2.0.0 Ok: queued as X` from a positive reply.
fn response_text(response: &Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    format!("{} {}", response.code(), lines.join(" "))
        .trim_end()
        .to_owned()
}

impl Server {
    fn parse(raw: &str) -> Result<Self, MailerConfigError> {
        let invalid = |reason: String| MailerConfigError::SmtpUrl(reason);
        // url's errors never echo the input, so the password cannot leak through them.
        let url =
            Url::parse(raw.trim()).map_err(|e| invalid(format!("is not a valid URL: {e}")))?;
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| invalid("has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut tls_mode = None;
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), tls_mode) {
                ("tls", None) => tls_mode = Some(value.into_owned()),
                _ => {
                    return Err(invalid(format!(
                        "has an unknown or repeated parameter {key:?}; only tls=required or \
                         tls=opportunistic is understood"
                    )));
                }
            }
        }
        if url.path().len() > 1 || url.fragment().is_some() {
            return Err(invalid("must not have a path or fragment".into()));
        }
        let tls = || {
            TlsParameters::new(host.clone())
                .map_err(|e| invalid(format!("TLS cannot be set up for {host}: {e}")))
        };
        let (security, default_port) = match (url.scheme(), tls_mode.as_deref()) {
            ("smtp", None) => (Security::Plain, 25),
            ("smtp", Some("opportunistic")) => (Security::StartTlsOpportunistic(tls()?), 587),
            ("smtp", Some("required")) => (Security::StartTlsRequired(tls()?), 587),
            ("smtps", None) => (Security::Implicit(tls()?), 465),
            ("smtp" | "smtps", Some(other)) => {
                return Err(invalid(format!(
                    "has tls={other:?}; use tls=required or tls=opportunistic with smtp://, \
                     or smtps:// for implicit TLS"
                )));
            }
            (scheme, _) => {
                return Err(invalid(format!(
                    "has scheme {scheme:?}; expected smtp:// or smtps://"
                )));
            }
        };
        let credentials = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let decode = |part: &str| {
                percent_decode_str(part)
                    .decode_utf8()
                    .map(|decoded| decoded.into_owned())
                    .map_err(|_| invalid("has credentials that are not UTF-8 once decoded".into()))
            };
            Some(Credentials::new(
                decode(url.username())?,
                decode(url.password().unwrap_or_default())?,
            ))
        };
        Ok(Self {
            port: url.port().unwrap_or(default_port),
            host,
            security,
            credentials,
        })
    }
}

impl fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSender")
            .field("server", &self.describe())
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(url: &str) -> String {
        SmtpSender::new(url, Duration::from_secs(1), 1)
            .unwrap()
            .describe()
    }

    #[test]
    fn each_url_form_gets_its_default_port() {
        assert_eq!(
            describe("smtp://mail.example.com"),
            "smtp://mail.example.com:25"
        );
        assert_eq!(
            describe("smtp://mail.example.com?tls=required"),
            "smtp://mail.example.com:587?tls=required"
        );
        assert_eq!(
            describe("smtp://mail.example.com?tls=opportunistic"),
            "smtp://mail.example.com:587?tls=opportunistic"
        );
        assert_eq!(
            describe("smtps://mail.example.com"),
            "smtps://mail.example.com:465"
        );
        assert_eq!(describe("smtp://127.0.0.1:1025"), "smtp://127.0.0.1:1025");
        assert_eq!(describe("smtp://[::1]:1025"), "smtp://[::1]:1025");
    }

    #[test]
    fn dots_at_the_start_of_lines_are_doubled_and_the_data_ends_with_a_lone_dot() {
        assert_eq!(
            dot_stuffed(b".a\r\nb.\r\n.\r\n..c\n.d"),
            b"..a\r\nb.\r\n..\r\n...c\n.d\r\n.\r\n"
        );
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let server = Server::parse("smtp://us%40er:p%40ss+w%2Frd@mail.example.com").unwrap();
        let expected = Credentials::new("us@er".into(), "p@ss+w/rd".into());
        assert!(server.credentials == Some(expected));
    }

    #[test]
    fn other_schemes_and_parameters_are_rejected_naming_smtp_url() {
        for url in [
            "http://mail.example.com",
            "mail.example.com:25",
            "smtp://mail.example.com?tls=maybe",
            "smtps://mail.example.com?tls=required",
            "smtp://mail.example.com?timeout=5",
            "smtp://mail.example.com/path",
        ] {
            let error = SmtpSender::new(url, Duration::from_secs(1), 1)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("SMTP_URL "), "{url}: {error}");
        }
    }

    #[test]
    fn errors_about_the_url_never_contain_the_password() {
        let error = SmtpSender::new("ftp://user:hunter2@host", Duration::from_secs(1), 1)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
