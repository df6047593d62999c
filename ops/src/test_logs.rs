//! Logs of test runs, kept for the secret scan (`scripts/scan-test-logs`).
//!
//! When `IDP_TEST_LOG_DIR` is set (`scripts/test` sets it), every test process writes the
//! production JSON log lines of the code under test to `<dir>/<exe>-<pid>.jsonl`, spawned
//! binaries write theirs beside them, and test harnesses record the passwords, tokens and email
//! addresses they use in `<dir>/secrets-<pid>.tsv`. The scan then proves none of them reached a
//! log. Without the variable, logs go to the test's captured output at `TEST_LOG` (default
//! `warn`) and nothing is recorded.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;

use crate::config::LogFormat;

/// What test processes log when their logs are kept: everything of idp at `debug`, so the scan
/// sees more than production would write.
pub const KEPT_FILTER: &str = "debug,sqlx=warn,lapin=info,hyper=info,hyper_util=info,h2=info,reqwest=info,rustls=info,tower=info,apalis=info,apalis_core=info,tokio_util=info";

/// The directory, if logs are kept.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os("IDP_TEST_LOG_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

fn process_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into())
}

/// Installs the logging of a test process (once; later calls do nothing).
pub fn init() {
    let _ = match dir() {
        Some(dir) => {
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{}-{}.jsonl", process_name(), std::process::id()));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => {
                    crate::telemetry::init_with(LogFormat::Json, KEPT_FILTER, Mutex::new(file))
                }
                Err(_) => Ok(()),
            }
        }
        None => {
            let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
            crate::telemetry::init_with(
                LogFormat::Text,
                &filter,
                tracing_subscriber::fmt::TestWriter::default(),
            )
        }
    };
}

/// When logs are kept, makes a spawned idp binary log JSON at [`KEPT_FILTER`] to a file beside
/// them (its standard error); otherwise leaves the command as the caller set it up.
pub fn child(command: &mut std::process::Command, name: &str) {
    let file = dir().and_then(|dir| {
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!(
            "{name}-child-of-{}-{}.jsonl",
            std::process::id(),
            next_child()
        ));
        File::create(path).ok()
    });
    if let Some(file) = file {
        command
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", KEPT_FILTER)
            .stderr(Stdio::from(file));
    }
}

fn next_child() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Records a secret the scan must not find in any log: a password, a token or an email address.
/// Values shorter than 8 characters are too likely to occur by chance and are not recorded.
pub fn remember_secret(kind: &str, value: &str) {
    let Some(dir) = dir() else { return };
    if value.len() < 8 || value.contains(['\t', '\n']) {
        return;
    }
    static FILE: Mutex<Option<File>> = Mutex::new(None);
    let Ok(mut guard) = FILE.lock() else { return };
    if guard.is_none() {
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("secrets-{}.tsv", std::process::id()));
        *guard = OpenOptions::new().create(true).append(true).open(path).ok();
    }
    if let Some(file) = guard.as_mut() {
        let _ = writeln!(file, "{kind}\t{value}");
    }
}

/// Records every secret in a JSON request or response body: values of password and token
/// fields, and email addresses.
pub fn remember_secrets_in(body: &serde_json::Value) {
    match body {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if let serde_json::Value::String(text) = value {
                    let key = key.to_ascii_lowercase();
                    if key.contains("password") {
                        remember_secret("password", text);
                    } else if key.contains("token") {
                        remember_secret("token", text);
                    } else if key.contains("email") {
                        remember_secret("email", text);
                    }
                } else {
                    remember_secrets_in(value);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(remember_secrets_in),
        _ => {}
    }
}
