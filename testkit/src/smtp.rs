//! A real SMTP server for tests: starts `scripts/smtp-sink.py` on free ports and talks to its
//! control API, so tests can see what arrived and make the server refuse or stall.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/smtp-sink.py");

/// A running `smtp-sink.py`, killed when dropped.
#[derive(Debug)]
pub struct SmtpSink {
    /// The SMTP port on 127.0.0.1.
    pub smtp_port: u16,
    http: String,
    client: reqwest::Client,
    /// Held for its `kill_on_drop`: the sink ends with this value.
    _child: Child,
}

/// A message the sink accepted, as its control API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceivedMail {
    /// The `Message-ID` header, angle brackets included.
    pub message_id: String,
    /// The envelope sender.
    pub mail_from: String,
    /// The envelope recipients.
    pub rcpt_tos: Vec<String>,
    /// The decoded `Subject`.
    pub subject: String,
    /// The `From` header, RFC 2047 words decoded.
    pub from: String,
    /// The `To` header, RFC 2047 words decoded.
    pub to: String,
    /// The text/plain part, with `\n` line ends.
    pub text: Option<String>,
    /// The text/html part, with `\n` line ends.
    pub html: Option<String>,
    /// When the sink accepted it (Unix time).
    pub received_at: f64,
}

/// The sink's counters since it started or was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SinkStats {
    /// Messages accepted at the end of DATA.
    pub accepted: u64,
    /// Messages refused at the end of DATA.
    pub refused: u64,
    /// SMTP connections opened to the sink.
    pub connections: u64,
    /// DATA commands answered with 354, whether the data then came or not.
    pub data_started: u64,
}

#[derive(Deserialize)]
struct Ports {
    smtp_port: u16,
    http_port: u16,
}

impl SmtpSink {
    /// Starts the sink (`$PYTHON` or `python3`) and waits until it listens.
    pub async fn start() -> Self {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(SCRIPT)
            .args(["--smtp-port", "0", "--http-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {python} {SCRIPT}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let status = child.try_wait().ok().flatten();
            panic!(
                "smtp-sink.py did not report its ports (exit status {status:?}; exit 3 means \
                 aiosmtpd is missing: python3 -m pip install -r scripts/requirements-test.txt)"
            );
        }
        let ports: Ports = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("smtp-sink.py printed {line:?}: {e}"));
        Self {
            smtp_port: ports.smtp_port,
            http: format!("http://127.0.0.1:{}", ports.http_port),
            client: reqwest::Client::new(),
            _child: child,
        }
    }

    /// `smtp://127.0.0.1:PORT`, for `Mailer::smtp`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.smtp_port)
    }

    /// Every message accepted so far, oldest first.
    pub async fn messages(&self) -> Vec<ReceivedMail> {
        self.get("/messages").await
    }

    /// The sink's counters.
    pub async fn stats(&self) -> SinkStats {
        self.get("/stats").await
    }

    /// Waits until at least `n` messages have arrived and returns them all; panics after
    /// `timeout` saying how many came. Polls the (small) counters, then fetches the messages once.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let accepted = self.stats().await.accepted;
            if usize::try_from(accepted).is_ok_and(|accepted| accepted >= n) {
                return self.messages().await;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("expected {n} messages within {timeout:?}, the sink has {accepted}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Answers the end of DATA with `code` (e.g. 451 or 550), for the next `times` messages or
    /// until [`accept`](Self::accept).
    pub async fn refuse(&self, code: u16, times: Option<u32>) {
        self.post("/mode", json!({ "refuse": code, "times": times }))
            .await;
    }

    /// Accepts every message again.
    pub async fn accept(&self) {
        self.post("/mode", json!({ "refuse": null })).await;
    }

    /// Waits `delay` before answering the end of DATA.
    pub async fn delay(&self, delay: Duration) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.post("/mode", json!({ "delay_ms": delay_ms })).await;
    }

    /// Forgets messages and counters, and accepts everything without delay.
    pub async fn reset(&self) {
        self.post("/reset", json!({})).await;
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> T {
        self.client
            .get(format!("{}{path}", self.http))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("GET {path} on smtp-sink failed: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on smtp-sink returned bad JSON: {e}"))
    }

    async fn post(&self, path: &str, body: serde_json::Value) {
        self.client
            .post(format!("{}{path}", self.http))
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("POST {path} on smtp-sink failed: {e}"));
    }
}
