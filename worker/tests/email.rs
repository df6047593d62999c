//! The mailer against a real SMTP server (`scripts/smtp-sink.py`) and a real outbox directory,
//! and the `send_email` job against names and addresses already in the log that the API would
//! refuse today.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::harness::{self, job_events, register_named_user, start_worker};
use idp_events::jobs::JobEvent;
use idp_testkit::broker::unique_prefix;
use idp_testkit::clock::wait_until;
use idp_testkit::log::count_events;
use idp_testkit::smtp::SmtpSink;
use idp_worker::email::{EmailKind, HandOver, Links, Mailer, OutgoingEmail, SendError, render};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);
const RECIPIENT: &str = "ada@example.com";

fn mailer(sink: &SmtpSink) -> Mailer {
    Mailer::smtp(&sink.url(), Duration::from_secs(5), 4).unwrap()
}

fn verification(message_id: &str, to: &str) -> OutgoingEmail {
    let links = Links::new("https://id.example.com/").unwrap();
    let kind = EmailKind::Verification {
        link: links.verification("dG9rZW4tZm9yLWFkYQ"),
    };
    OutgoingEmail {
        message_id: message_id.to_owned(),
        from: "idp <no-reply@idp.localhost>".into(),
        to: to.to_owned(),
        to_name: Some("Ada Lovelace".into()),
        rendered: render(&kind, Some("Ada"), "idp").unwrap(),
    }
}

fn unique_id() -> String {
    format!("{}@idp", uuid::Uuid::now_v7())
}

async fn committed() -> Result<(), Infallible> {
    Ok(())
}

#[tokio::test]
async fn a_verification_email_arrives_with_its_message_id_both_parts_and_the_link() {
    let sink = SmtpSink::start().await;
    let id = unique_id();

    let delivered = mailer(&sink)
        .send(&verification(&id, RECIPIENT), committed())
        .await
        .unwrap();

    assert!(delivered.reply.starts_with("250 "), "{}", delivered.reply);
    let messages = sink.wait_for_messages(1, WAIT).await;
    let mail = &messages[0];
    assert_eq!(mail.message_id, format!("<{id}>"));
    assert_eq!(mail.mail_from, "no-reply@idp.localhost");
    assert_eq!(mail.rcpt_tos, [RECIPIENT]);
    assert_eq!(mail.to, "\"Ada Lovelace\" <ada@example.com>");
    assert_eq!(mail.subject, "Confirm your email address");
    let link = "https://id.example.com/verify-email?token=dG9rZW4tZm9yLWFkYQ";
    let text = mail.text.as_deref().expect("a text/plain part");
    let html = mail.html.as_deref().expect("a text/html part");
    assert!(text.starts_with("Hi Ada,\n\n"), "{text}");
    assert!(text.contains(link), "{text}");
    assert!(html.contains(&format!("href=\"{link}\"")), "{html}");
}

#[tokio::test]
async fn a_failed_commit_returns_not_committed_and_the_server_discards_the_message() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink);

    let result = mailer
        .send(&verification(&unique_id(), RECIPIENT), async {
            Err::<(), _>("the event log is unavailable")
        })
        .await;

    assert!(
        matches!(
            result,
            Err(SendError::NotCommitted("the event log is unavailable"))
        ),
        "{result:?}"
    );
    // The transaction reached the data phase and stopped there.
    assert_eq!(sink.stats().await.data_started, 1);
    // A later message arrives alone: the abandoned one never completes.
    let later = unique_id();
    mailer
        .send(&verification(&later, RECIPIENT), committed())
        .await
        .unwrap();
    let messages = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].message_id, format!("<{later}>"));
    assert_eq!(sink.stats().await.accepted, 1);
}

#[tokio::test]
async fn the_server_does_not_have_the_message_until_the_commit_returns() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink);
    let (entered_tx, entered_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let email = verification(&unique_id(), RECIPIENT);

    let send = tokio::spawn(async move {
        mailer
            .send(&email, async move {
                entered_tx.send(()).unwrap();
                release_rx.await.map_err(|_| "released without a go")
            })
            .await
    });

    tokio::time::timeout(WAIT, entered_rx)
        .await
        .expect("commit was called")
        .unwrap();
    let while_committing = sink.stats().await;
    assert_eq!(while_committing.data_started, 1, "DATA was accepted first");
    assert!(sink.messages().await.is_empty());

    release_tx.send(()).unwrap();
    let delivered = send.await.unwrap();
    assert!(delivered.is_ok(), "{delivered:?}");
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn a_550_at_the_end_of_data_is_permanent_and_does_not_quote_the_recipient() {
    let sink = SmtpSink::start().await;
    sink.refuse(550, None).await;
    let commit_ran = AtomicBool::new(false);

    let result = mailer(&sink)
        .send(&verification(&unique_id(), RECIPIENT), async {
            commit_ran.store(true, Ordering::SeqCst);
            Ok::<(), Infallible>(())
        })
        .await;

    let Err(SendError::Permanent(reason)) = result else {
        panic!("expected a permanent failure, got {result:?}");
    };
    assert!(reason.starts_with("end of DATA: 550 "), "{reason}");
    assert!(!reason.contains(RECIPIENT), "{reason}");
    assert!(
        commit_ran.load(Ordering::SeqCst),
        "the refusal came after the commit"
    );
    assert_eq!(sink.stats().await.refused, 1);
    assert!(sink.messages().await.is_empty());
}

#[tokio::test]
async fn a_451_at_the_end_of_data_is_transient_and_the_next_attempt_goes_through() {
    let sink = SmtpSink::start().await;
    sink.refuse(451, Some(1)).await;
    let mailer = mailer(&sink);
    let email = verification(&unique_id(), RECIPIENT);

    let first = mailer.send(&email, committed()).await;
    let Err(SendError::Transient(reason)) = first else {
        panic!("expected a transient failure, got {first:?}");
    };
    assert!(reason.starts_with("end of DATA: 451 "), "{reason}");

    mailer.send(&email, committed()).await.unwrap();
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
    let stats = sink.stats().await;
    assert_eq!((stats.refused, stats.accepted), (1, 1));
    assert_eq!(
        stats.connections, 1,
        "a refusal does not cost the connection"
    );
}

#[tokio::test]
async fn a_connection_to_a_closed_port_is_transient_and_never_commits() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mailer = Mailer::smtp(
        &format!("smtp://127.0.0.1:{port}"),
        Duration::from_secs(5),
        1,
    )
    .unwrap();
    let commit_ran = AtomicBool::new(false);

    let result = mailer
        .send(&verification(&unique_id(), RECIPIENT), async {
            commit_ran.store(true, Ordering::SeqCst);
            Ok::<(), Infallible>(())
        })
        .await;

    let Err(SendError::Transient(reason)) = result else {
        panic!("expected a transient failure, got {result:?}");
    };
    assert!(reason.starts_with("connect: "), "{reason}");
    assert!(!commit_ran.load(Ordering::SeqCst));
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_unanswered_and_the_mailer_recovers() {
    let sink = SmtpSink::start().await;
    sink.delay(Duration::from_millis(1_500)).await;
    let mailer = Mailer::smtp(&sink.url(), Duration::from_millis(200), 1).unwrap();

    let result = mailer
        .send(&verification(&unique_id(), RECIPIENT), committed())
        .await;
    let Err(SendError::Unanswered(reason)) = result else {
        panic!("expected no answer, got {result:?}");
    };
    assert_eq!(reason, "end of DATA: no answer within 200 ms");

    sink.reset().await;
    let id = unique_id();
    mailer
        .send(&verification(&id, RECIPIENT), committed())
        .await
        .unwrap();
    let messages = sink.wait_for_messages(1, WAIT).await;
    assert!(messages.iter().any(|m| m.message_id == format!("<{id}>")));
    assert_eq!(
        sink.stats().await.connections,
        1,
        "a fresh connection after the timeout"
    );
}

#[tokio::test]
async fn an_unparseable_recipient_is_permanent_and_never_reaches_the_server() {
    let sink = SmtpSink::start().await;

    let result = mailer(&sink)
        .send(&verification(&unique_id(), "ada at example"), committed())
        .await;

    let Err(SendError::Permanent(reason)) = result else {
        panic!("expected a permanent failure, got {result:?}");
    };
    assert_eq!(reason, "the recipient address is not valid");
    assert_eq!(sink.stats().await.connections, 0);
}

#[tokio::test]
async fn a_name_with_a_line_break_is_left_out_of_the_to_header_and_the_message_arrives() {
    let sink = SmtpSink::start().await;
    let mut email = verification(&unique_id(), RECIPIENT);
    email.to_name = Some("Ada\r\nBcc: eve@example.com".into());

    mailer(&sink).send(&email, committed()).await.unwrap();

    let messages = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(messages[0].to, RECIPIENT);
    assert_eq!(messages[0].rcpt_tos, [RECIPIENT]);
}

#[tokio::test]
async fn connections_are_reused_so_fifty_messages_open_far_fewer_than_fifty() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink);

    for _ in 0..25 {
        mailer
            .send(&verification(&unique_id(), RECIPIENT), committed())
            .await
            .unwrap();
    }
    let emails: Vec<_> = (0..25)
        .map(|_| verification(&unique_id(), RECIPIENT))
        .collect();
    let concurrent = emails.iter().map(|email| mailer.send(email, committed()));
    for result in futures::future::join_all(concurrent).await {
        result.unwrap();
    }

    assert_eq!(sink.wait_for_messages(50, WAIT).await.len(), 50);
    let connections = sink.stats().await.connections;
    assert!(
        (1..=4).contains(&connections),
        "50 messages over {connections} connections with a pool of 4"
    );
}

fn outbox_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("email-outbox")
        .join(uuid::Uuid::new_v4().to_string())
}

fn eml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The header section of a message, unfolded, as (name, value) pairs.
fn headers(message: &str) -> Vec<(String, String)> {
    let (head, _) = message
        .split_once("\r\n\r\n")
        .expect("headers end with an empty line");
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let (_, value) = headers.last_mut().expect("a continuation follows a header");
            value.push(' ');
            value.push_str(line.trim());
        } else {
            let (name, value) = line.split_once(':').expect("a header has a colon");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
    }
    headers
}

#[tokio::test]
async fn the_outbox_holds_a_parseable_eml_named_after_the_message_id() {
    let dir = outbox_dir();
    let mailer = Mailer::outbox(dir.clone()).unwrap();
    assert_eq!(mailer.describe(), format!("outbox {}", dir.display()));
    let id = unique_id();

    let delivered = mailer
        .send(&verification(&id, RECIPIENT), committed())
        .await
        .unwrap();

    let path = dir.join(format!("{id}.eml"));
    assert_eq!(delivered.reply, path.display().to_string());
    assert_eq!(eml_files(&dir), std::slice::from_ref(&path));
    let message = std::fs::read_to_string(&path).unwrap();
    let headers = headers(&message);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(header("Message-ID"), Some(format!("<{id}>").as_str()));
    assert_eq!(header("Subject"), Some("Confirm your email address"));
    assert_eq!(header("To"), Some("\"Ada Lovelace\" <ada@example.com>"));
    assert!(
        header("Content-Type").is_some_and(|v| v.starts_with("multipart/alternative")),
        "{headers:?}"
    );
    assert!(message.contains("Content-Type: text/plain"));
    assert!(message.contains("Content-Type: text/html"));

    // Sending the same message again replaces the file.
    mailer
        .send(&verification(&id, RECIPIENT), committed())
        .await
        .unwrap();
    assert_eq!(eml_files(&dir), std::slice::from_ref(&path));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn outbox_files_hold_live_tokens_so_only_the_worker_can_read_them() {
    let dir = outbox_dir().join("nested");
    let mailer = Mailer::outbox(dir.clone()).unwrap();
    assert_eq!(mode(&dir), 0o700, "a directory the worker creates");
    let id = unique_id();

    mailer
        .send(&verification(&id, RECIPIENT), committed())
        .await
        .unwrap();
    let path = dir.join(format!("{id}.eml"));
    assert_eq!(mode(&path), 0o600);

    // A replaced file is a new file, just as private.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    mailer
        .send(&verification(&id, RECIPIENT), committed())
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);

    // A directory that exists keeps the mode its operator chose.
    let shared = outbox_dir();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let mailer = Mailer::outbox(shared.clone()).unwrap();
    assert_eq!(mode(&shared), 0o750);
    let id = unique_id();
    mailer
        .send(&verification(&id, RECIPIENT), committed())
        .await
        .unwrap();
    assert_eq!(mode(&shared.join(format!("{id}.eml"))), 0o600);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::remove_dir_all(&shared).unwrap();
}

#[tokio::test]
async fn a_failed_commit_leaves_no_file_in_the_outbox() {
    let dir = outbox_dir();
    let mailer = Mailer::outbox(dir.clone()).unwrap();

    let result = mailer
        .send(&verification(&unique_id(), RECIPIENT), async {
            Err::<(), _>("the event log is unavailable")
        })
        .await;

    assert!(
        matches!(result, Err(SendError::NotCommitted(_))),
        "{result:?}"
    );
    assert_eq!(eml_files(&dir), Vec::<PathBuf>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A hand-over whose commit fails after its record was prepared.
struct CommitFails;

impl HandOver for CommitFails {
    type Error = &'static str;
    type Commit = std::future::Ready<Result<(), &'static str>>;

    async fn prepare(self) -> Result<Self::Commit, &'static str> {
        Ok(std::future::ready(Err("the commit was lost")))
    }
}

#[tokio::test]
async fn a_commit_failing_as_the_message_goes_out_is_reported_as_delivered_but_unrecorded() {
    let sink = SmtpSink::start().await;
    let id = unique_id();

    let result = mailer(&sink)
        .send(&verification(&id, RECIPIENT), CommitFails)
        .await;

    let Err(SendError::Unrecorded { reply, error }) = result else {
        panic!("expected a delivered but unrecorded message, got {result:?}");
    };
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(error, "the commit was lost");
    let messages = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(messages[0].message_id, format!("<{id}>"));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_display_name_with_a_line_break_already_in_the_log_is_left_out_and_the_verification_email_still_arrives(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let worker = start_worker(&conn, &prefix, Some(&sink.url()), &[]).await;

    // Straight into the log, as names got there before the API refused them.
    let (_, cause) =
        register_named_user(&store, RECIPIENT, Some("Ada\r\nBcc: eve@example.com")).await;

    let messages = sink.wait_for_messages(1, Duration::from_secs(30)).await;
    let mail = &messages[0];
    assert_eq!(mail.to, RECIPIENT, "the address alone, no display name");
    assert_eq!(mail.rcpt_tos, [RECIPIENT]);
    let text = mail.text.as_deref().expect("a text/plain part");
    assert!(
        text.starts_with("Hi,\n"),
        "greeted without the name: {text}"
    );
    assert!(!text.contains("Bcc"), "{text}");
    assert!(
        text.contains("http://idp.test/verify-email?token="),
        "{text}"
    );
    wait_until("EmailSent", WAIT, || async {
        job_events(&store, cause).await.iter().any(|(e, _)| {
            matches!(
                e,
                JobEvent::EmailSent {
                    confirmed: true,
                    ..
                }
            )
        })
    })
    .await;
    assert_eq!(count_events(&pool, "EmailDeliveryFailed").await, 0);

    worker.stop().await;
    harness::delete_queues(&prefix).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_address_lettre_refuses_already_in_the_log_is_one_recorded_permanent_failure_not_a_panic_or_a_retry(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let pool = opts.connect_with(conn.clone()).await.unwrap();
    let store = idp_testkit::keys::event_store(pool.clone());
    let worker = start_worker(
        &conn,
        &prefix,
        Some(&sink.url()),
        &["--job-backoff-base-ms", "50", "--job-backoff-cap-ms", "100"],
    )
    .await;

    // The API's check let this through (no space, a dot inside the domain); lettre refuses it.
    let (_, cause) = register_named_user(&store, "ada@example..com", Some("Ada")).await;

    wait_until("the dead letter", Duration::from_secs(30), || async {
        job_events(&store, cause)
            .await
            .iter()
            .any(|(e, _)| matches!(e, JobEvent::JobDeadLettered { .. }))
    })
    .await;
    let events: Vec<JobEvent> = job_events(&store, cause)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let failures: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::EmailDeliveryFailed {
                attempt,
                permanent,
                error,
                retry_in_ms,
            } => Some((*attempt, *permanent, error.as_str(), *retry_in_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        [(1, true, "the recipient address is not valid", None)],
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            JobEvent::EmailSending { .. } | JobEvent::EmailSent { .. }
        )),
        "{events:?}"
    );
    let Some(JobEvent::JobDeadLettered { reason, .. }) = events.last() else {
        panic!("the dead letter is the last word: {events:?}");
    };
    assert_eq!(reason, "rejected", "the job gave up; it did not crash");
    assert_eq!(
        sink.stats().await.connections,
        0,
        "the server was never asked"
    );
    // Nothing tries again: the stream stays as it is.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(job_events(&store, cause).await.len(), events.len());

    worker.stop().await;
    harness::delete_queues(&prefix).await;
}
