//! The worker in the test process, for tests of routes whose read models it keeps (the users
//! directory) or whose effects it carries out (emails, to its outbox or an SMTP server): on the test's
//! database, with queues of its own prefix, removed when it stops.

use clap::Parser;
use idp_testkit::broker::{amqp_url, delete_queues, unique_prefix};
use idp_testkit::database::database_url;
use idp_testkit::server::Running;
use idp_testkit::settings::{outbox_dir, worker_args};
use idp_worker::config::Config;
use idp_worker::startup::Worker;
use sqlx::postgres::PgConnectOptions;

/// A worker running inside the test process, mailing to its outbox.
pub struct TestWorker {
    /// Its queue prefix, the test's alone.
    pub prefix: String,
    running: Running,
}

/// Starts the worker on the database of `conn`, with a queue prefix of its own.
pub async fn start_worker(conn: &PgConnectOptions) -> TestWorker {
    start_worker_with(conn, &[]).await
}

/// As [`start_worker`], with `extra` arguments after the usual ones.
pub async fn start_worker_with(conn: &PgConnectOptions, extra: &[&str]) -> TestWorker {
    start(conn, None, extra).await
}

/// As [`start_worker`], sending its emails to the SMTP server at `smtp_url`.
pub async fn start_worker_mailing(conn: &PgConnectOptions, smtp_url: &str) -> TestWorker {
    start(conn, Some(smtp_url), &[]).await
}

async fn start(conn: &PgConnectOptions, smtp_url: Option<&str>, extra: &[&str]) -> TestWorker {
    idp_ops::test_logs::init();
    let prefix = unique_prefix();
    let mut args = worker_args(&database_url(conn), &amqp_url(), &prefix, smtp_url);
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let config = Config::try_parse_from(args).unwrap();
    let worker = Worker::build(&config).await.unwrap();
    TestWorker {
        prefix,
        running: Running::spawn(|stop| worker.run_until_stopped(stop)),
    }
}

impl TestWorker {
    /// Where the worker writes the emails it sends.
    pub fn outbox(&self) -> std::path::PathBuf {
        outbox_dir(&self.prefix)
    }

    /// Stops the worker (it must end cleanly) and deletes its queues.
    pub async fn stop(self) {
        self.running.stop().await;
        let queues: Vec<&str> = idp_worker::jobs::queues().collect();
        delete_queues(&self.prefix, &queues).await;
    }
}
