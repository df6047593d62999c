//! Structured logging through `tracing`, to standard error (standard output is left to the
//! commands that print results, such as `idp-worker replay`).
//!
//! `RUST_LOG` filters (default `info,sqlx=warn`). `LOG_FORMAT=json` writes one flat JSON object per
//! line: `timestamp`, `level`, `target`, `span`, then the fields of every enclosing span (request
//! id, correlation id, user id, job id, ...) and of the event itself. `text` is for people, in
//! colour only when standard error is a terminal (and `NO_COLOR` is unset), so logs written to
//! a file or a pipe carry no terminal escape codes.
//!
//! Personal data stays out of the logs in two ways: call sites log ids, not people, and pass
//! client addresses through [`mask_ip`]; and every line, in either format, goes through
//! [`mask_emails`] before it is written, so an address that slips into an error message is
//! still masked.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` does not parse.
    #[error("invalid RUST_LOG: {0}")]
    Filter(String),
    /// A global subscriber is already installed.
    #[error("logging is already initialised")]
    AlreadyInitialised,
}

/// Keeps the log writer running; dropping it (at the end of `main`) writes out what is queued.
#[must_use = "logs queued when the guard is dropped are written then; keep it until the end"]
#[derive(Debug)]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Lines waiting for standard error at most; beyond this, lines are dropped and counted in
/// `idp_log_lines_dropped_total` rather than making requests wait for a slow log reader.
const QUEUED_LINES: usize = 128_000;

static DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Installs the global subscriber, writing to standard error from a thread of its own, so a slow
/// reader of standard error (a log shipper, a full pipe) never holds up a request or a job. Call
/// once, at start, and keep the guard until the end of `main`.
pub fn init(format: LogFormat) -> Result<LogGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec,
        _ => DEFAULT_FILTER.to_owned(),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("idp-log-writer")
        .finish(io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    install(format, &filter, writer, use_colour(&io::stderr()))?;
    Ok(LogGuard(guard))
}

/// Whether text lines written to `stream` may carry colour codes: only on a terminal, and not
/// when `NO_COLOR` is set (<https://no-color.org>).
pub fn use_colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Publishes `idp_log_lines_dropped_total`: log lines dropped because standard error did not
/// keep up. Called before `/metrics` renders.
pub fn publish_dropped_lines() {
    if let Some(dropped) = DROPPED.get() {
        metrics::counter!("idp_log_lines_dropped_total").absolute(dropped.dropped_lines() as u64);
    }
}

/// Installs the global subscriber with `filter`, writing each line through [`mask_emails`] to
/// `writer`, without colour codes (it is a file or a pipe). The binaries use [`init`]; tests
/// use this to keep their logs in files.
pub fn init_with<W>(format: LogFormat, filter: &str, writer: W) -> Result<(), TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    install(format, filter, writer, false)
}

fn install<W>(format: LogFormat, filter: &str, writer: W, ansi: bool) -> Result<(), TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer(format, Masking(writer), ansi))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)
}

/// The layer that formats lines as `format` and writes them to `writer`; text lines carry
/// colour codes only when `ansi` is set (JSON lines never do).
fn fmt_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    }
}

/// One JSON object per event, with the fields of every enclosing span merged in (innermost
/// wins), so `request_id` and `user.id` appear on every line a request logs.
#[derive(Debug, Clone, Copy)]
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut head = Head::default();
        head.insert("timestamp", Value::String(timestamp));
        head.insert("level", Value::String(meta.level().to_string()));
        head.insert("target", Value::String(meta.target().to_owned()));
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(span_fields)) =
                    serde_json::from_str::<Value>(&formatted.fields)
                {
                    fields.extend(span_fields);
                }
            }
            if let Some(name) = innermost {
                head.insert("span", Value::String(name.to_owned()));
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        // The head first, in a fixed order, then the fields; a field cannot replace the head.
        let mut line = String::with_capacity(256);
        line.push('{');
        for (key, value) in head.iter().chain(
            fields
                .iter()
                .filter(|(key, _)| !head.contains_key(key.as_str()))
                .map(|(key, value)| (key.as_str(), value)),
        ) {
            if line.len() > 1 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(key).map_err(|_| fmt::Error)?);
            line.push(':');
            line.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// The fixed first keys of a line, in order.
#[derive(Default)]
struct Head(Vec<(&'static str, Value)>);

impl Head {
    fn insert(&mut self, key: &'static str, value: Value) {
        self.0.push((key, value));
    }
    fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| *k == key)
    }
    fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// Wraps a writer factory so every formatted line is masked before it is written.
#[derive(Debug, Clone, Copy)]
struct Masking<W>(W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for Masking<W> {
    type Writer = MaskingWriter<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskingWriter {
            buffer: Vec::with_capacity(256),
            inner: self.0.make_writer(),
        }
    }
}

/// Buffers one event's output and writes it, masked, in one call when dropped (the formatter
/// makes one writer per event).
#[derive(Debug)]
struct MaskingWriter<W: Write> {
    buffer: Vec<u8>,
    inner: W,
}

impl<W: Write> MaskingWriter<W> {
    fn flush_masked(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let masked = mask_emails(&text);
        let result = self.inner.write_all(masked.as_bytes());
        self.buffer.clear();
        result
    }
}

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_masked()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for MaskingWriter<W> {
    fn drop(&mut self) {
        // Nowhere to report a failed log write; losing the line is all that can happen.
        let _ = self.flush_masked();
    }
}

/// An email address as logs may show it: the first character of the local part and the domain
/// (`a***@example.com`).
pub fn mask_email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// A client address as logs may show it: IPv4 without its last octet (`203.0.113.x`), IPv6 with
/// only its first three groups (`2001:db8:1::x`). Anything else is hidden entirely.
pub fn mask_ip(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.x")
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::x", s[0], s[1], s[2])
        }
        Err(_) => "x".to_owned(),
    }
}

/// Masks every email address in `text` as [`mask_email`] does. An address is a run of local-part
/// characters, `@`, and a domain with at least one dot; anything already masked stays as it is.
pub fn mask_emails(text: &str) -> Cow<'_, str> {
    if !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(offset) = text[at..].find('@') {
        let at_index = at + offset;
        let start = local_part_start(bytes, at_index);
        let end = domain_end(bytes, at_index + 1);
        let local = &text[start..at_index];
        let domain = &text[at_index + 1..end];
        let is_address = !local.is_empty() && is_domain(domain);
        let already_masked = local.len() <= 4 && local.ends_with("***");
        if is_address && !already_masked {
            out.push_str(&text[copied..start]);
            out.push_str(&mask_email(&text[start..end]));
            copied = end;
        }
        at = end.max(at_index + 1);
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b)
}

fn is_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

fn local_part_start(bytes: &[u8], at: usize) -> usize {
    let mut start = at;
    while start > 0 && is_local_byte(bytes[start - 1]) {
        start -= 1;
    }
    start
}

fn domain_end(bytes: &[u8], from: usize) -> usize {
    let mut end = from;
    while end < bytes.len() && is_domain_byte(bytes[end]) {
        end += 1;
    }
    // A sentence's full stop after an address is not part of it.
    while end > from && bytes[end - 1] == b'.' {
        end -= 1;
    }
    end
}

fn is_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty())
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_text_keep_only_their_first_letter_and_domain() {
        assert_eq!(
            mask_emails("sent to alice.smith+idp@example.com, then bob@mail.example.org."),
            "sent to a***@example.com, then b***@mail.example.org."
        );
        assert_eq!(
            mask_emails(r#"{"email":"carol@example.com"}"#),
            r#"{"email":"c***@example.com"}"#
        );
    }

    #[test]
    fn text_without_addresses_is_left_alone() {
        for text in [
            "no at sign",
            "user@localhost",
            "git@1.2",
            "@example.com",
            "a***@example.com",
            "postgres://root@127.0.0.1:5432/idp",
        ] {
            assert_eq!(mask_emails(text), text, "{text}");
        }
    }

    #[test]
    fn masking_is_idempotent() {
        let once = mask_emails("x dave@example.com y").into_owned();
        assert_eq!(mask_emails(&once), once);
    }

    #[test]
    fn client_addresses_lose_their_host_part() {
        assert_eq!(mask_ip("203.0.113.77"), "203.0.113.x");
        assert_eq!(mask_ip("2001:db8:1:2:3:4:5:6"), "2001:db8:1::x");
        assert_eq!(mask_ip("not an address"), "x");
    }

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_fields_of_every_enclosing_span_with_addresses_masked() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
                .with_writer(Masking(move || sink.clone())),
        );
        tracing::subscriber::with_default(subscriber, || {
            let http =
                tracing::info_span!("http", request_id = "r-1", user.id = tracing::field::Empty);
            let _http = http.enter();
            http.record("user.id", "u-7");
            let job = tracing::info_span!("job", job.id = 5);
            let _job = job.enter();
            tracing::info!(to = "frank@example.com", "sent to frank@example.com");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.starts_with(r#"{"timestamp":""#),
            "the timestamp comes first: {text}"
        );
        let line: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["span"], "job");
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["user.id"], "u-7");
        assert_eq!(line["job.id"], 5);
        assert_eq!(line["to"], "f***@example.com");
        assert_eq!(line["message"], "sent to f***@example.com");
    }

    /// The lines `format` writes for one event with a span, in colour when `ansi` is set.
    fn lines_written(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(fmt_layer(
            format,
            Masking(move || sink.clone()),
            ansi,
        ));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("http", request_id = "r-1");
            let _span = span.enter();
            tracing::warn!(duration_ms = 3, "slow request");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_lines_carry_colour_codes_only_for_a_terminal() {
        let plain = lines_written(LogFormat::Text, false);
        assert!(plain.contains("slow request"), "{plain:?}");
        assert!(
            !plain.contains('\x1b'),
            "no escape codes in a file: {plain:?}"
        );
        let coloured = lines_written(LogFormat::Text, true);
        assert!(
            coloured.contains('\x1b'),
            "colours on a terminal: {coloured:?}"
        );
        assert!(!lines_written(LogFormat::Json, true).contains('\x1b'));
    }

    #[test]
    fn a_file_or_a_pipe_is_written_without_colours() {
        let path = std::env::temp_dir().join(format!("idp-log-{}.txt", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        assert!(!use_colour(&file));
        drop(file);
        std::fs::remove_file(&path).unwrap();
        #[cfg(unix)]
        {
            let (reader, writer) = std::io::pipe().unwrap();
            let (reader, writer) = (
                std::os::fd::OwnedFd::from(reader),
                std::os::fd::OwnedFd::from(writer),
            );
            assert!(!use_colour(&writer) && !use_colour(&reader));
        }
    }

    #[test]
    fn the_masking_writer_masks_what_the_formatter_writes() {
        let mut sink = Vec::new();
        {
            let mut writer = MaskingWriter {
                buffer: Vec::new(),
                inner: &mut sink,
            };
            writer.write_all(b"login of erin@").unwrap();
            writer.write_all(b"example.com failed\n").unwrap();
        }
        assert_eq!(
            String::from_utf8(sink).unwrap(),
            "login of e***@example.com failed\n"
        );
    }
}
