//! Building and running the worker: the same code path for `main` and for tests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::Monitor;
use idp_events::backoff::Backoff;
use idp_events::project::Catalogue;
use idp_events::subscription::{Subscription, SubscriptionOptions};
use idp_ops::health::{BrokerProbe, Health};
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::broker::{Publisher, Topology};
use crate::config::{Config, EmailConfig};
use crate::dispatcher::{self, Dispatcher};
use crate::email::Mailer;
use crate::jobs::forget_mail::ForgetMail;
use crate::jobs::provision_project::{Drivers, ProvisionJobs, ProvisionProject, ProvisionSettings};
use crate::jobs::send_email::{EmailJobs, SendEmail};
use crate::jobs::{self, RetryPolicy};
use crate::provision::drivers::{DatabaseDriver, RepositoryDriver, WebhookDriver};
use crate::{lag, projections};

/// How long in-flight jobs may take to finish at shutdown before they are abandoned (their
/// messages go back to the queue when the connection closes).
const JOB_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A built worker, bound to its health address, not yet running.
#[derive(Debug)]
pub struct Worker {
    listener: TcpListener,
    pool: PgPool,
    health: Health,
    config: Config,
    mailer: Mailer,
    catalogue: Catalogue,
    drivers: Drivers,
}

/// How long one webhook call may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker {
    /// Connects to the database (waiting for it up to 30 s), applies migrations, checks the
    /// mail settings and the seal key (generating a development one if allowed) and binds
    /// `WORKER_ADDR`.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        idp_ops::metrics::install("idp-worker");
        // Before any connection: a worker that could never seal must not start.
        let seal_signer = crate::sealer::prepare_signing_key(config)?;
        tracing::info!(
            dir = %config.common.seal_keys_dir.display(),
            kid = %seal_signer.key_id(),
            "seals are signed with the key"
        );
        let pool = idp_ops::database::connect(&config.common).await?;
        idp_ops::metrics::watch_pool(pool.clone(), "idp-worker");
        idp_events::migrations::run(&pool)
            .await
            .context("while applying database migrations")?;
        let mailer = mailer(&config.email)?;
        let catalogue = config.common.catalogue()?;
        let drivers = drivers(config, &pool)?;
        let broker = Arc::new(BrokerProbe::new(config.common.amqp_url.clone()));
        let listener = TcpListener::bind(config.worker_addr)
            .await
            .with_context(|| format!("while binding WORKER_ADDR {}", config.worker_addr))?;
        Ok(Self {
            listener,
            health: Health::new(pool.clone(), broker),
            pool,
            config: config.clone(),
            mailer,
            catalogue,
            drivers,
        })
    }

    /// The port of the health listener.
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Runs the projections, the dispatcher, the job workers and the health listener until
    /// `shutdown` is cancelled; batches and jobs in progress are finished first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "idp-worker health listener up");
        let store = self
            .config
            .common
            .event_store(self.pool.clone())
            .await
            .context("while setting up the keys of personal data (PERSONAL_DATA_KEYS)")?;
        let jobs_config = &self.config.jobs;
        let topology = Topology::new(self.config.common.amqp_url.clone(), jobs_config);
        let mut tasks = JoinSet::new();

        let router = idp_ops::health::router(self.health)
            .layer(axum::middleware::from_fn(idp_ops::metrics::track_http));
        let listener = idp_ops::shutdown::GracefulListener::new(self.listener, shutdown.clone())
            .context("while reading WORKER_ADDR's listening address")?;
        let http_stopped = listener.stopped();
        tasks.spawn(async move {
            if let Err(err) = axum::serve(listener, router)
                .with_graceful_shutdown(http_stopped)
                .await
            {
                tracing::error!(error = %err, "health listener failed");
            }
        });

        projections::spawn_all(&store, &mut tasks, &shutdown);

        let dispatcher = Subscription::new(
            dispatcher::NAME,
            Dispatcher::new(Publisher::new(topology.clone())),
            &store,
        )
        .with_options(SubscriptionOptions {
            batch_size: jobs_config.dispatcher_batch_size,
            ..SubscriptionOptions::default()
        });
        let token = shutdown.clone();
        tasks.spawn(async move { dispatcher.run(token).await });

        let interval = Duration::from_secs(jobs_config.metrics_sample_secs);
        tasks.spawn(lag::run(self.pool.clone(), interval, shutdown.clone()));
        tasks.spawn(crate::housekeeping::run(
            self.pool.clone(),
            Duration::from_secs(jobs_config.idempotency_key_ttl_hours * 3600),
            shutdown.clone(),
        ));
        if let Some(keys) = store.subject_keys() {
            tasks.spawn(crate::housekeeping::run_retention(
                self.pool.clone(),
                keys.clone(),
                jobs_config.pii_metadata_retention_days,
                shutdown.clone(),
            ));
        }
        let sealer = crate::sealer::SealerSettings::from_config(&self.config);
        tasks.spawn(crate::sealer::run(
            self.pool.clone(),
            sealer,
            shutdown.clone(),
        ));
        tasks.spawn(sample_breakers(
            self.pool.clone(),
            interval,
            shutdown.clone(),
        ));

        let breaker = Breaker::new(
            "smtp",
            store.clone(),
            jobs_config.breaker_failure_threshold,
            Duration::from_millis(jobs_config.breaker_open_ms),
        );
        let retry = RetryPolicy {
            max_attempts: jobs_config.job_max_attempts,
            backoff: Backoff::new(
                Duration::from_millis(jobs_config.job_backoff_base_ms),
                Duration::from_millis(jobs_config.job_backoff_cap_ms),
            ),
        };
        // Jobs sleeping between attempts stop at shutdown and hand their message back.
        let jobs_shutdown = shutdown.child_token();
        let email_keys = Arc::new(self.config.common.email_token_ring()?);
        let provision_jobs = Arc::new(ProvisionJobs::new(
            store.clone(),
            self.catalogue,
            self.drivers,
            ProvisionSettings {
                retry: RetryPolicy {
                    max_attempts: self.config.provision.provision_max_attempts,
                    backoff: Backoff::new(
                        Duration::from_millis(self.config.provision.provision_backoff_base_ms),
                        Duration::from_millis(self.config.provision.provision_backoff_cap_ms),
                    ),
                },
                step_timeout: Duration::from_millis(
                    self.config.provision.provision_step_timeout_ms,
                ),
                breaker_threshold: jobs_config.breaker_failure_threshold,
                breaker_open: Duration::from_millis(jobs_config.breaker_open_ms),
            },
            jobs_shutdown.clone(),
        ));
        let email_jobs = Arc::new(EmailJobs::new(
            store.clone(),
            self.mailer,
            breaker,
            retry,
            &self.config.email,
            email_keys,
            jobs_shutdown.clone(),
        )?);
        let monitor = Monitor::new();
        let monitor = jobs::register::<SendEmail>(
            monitor,
            &topology,
            &store,
            Arc::clone(&email_jobs),
            jobs_config.job_concurrency,
        );
        let monitor = jobs::register::<ForgetMail>(monitor, &topology, &store, email_jobs, 1);
        let monitor = jobs::register::<ProvisionProject>(
            monitor,
            &topology,
            &store,
            provision_jobs,
            self.config.provision.provision_concurrency,
        );
        let monitor = monitor
            .should_restart(|_ctx, err| {
                tracing::warn!(error = %err, "job worker stopped; restarting it");
                true
            })
            .shutdown_timeout(JOB_SHUTDOWN_TIMEOUT);
        let monitor_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let signal = async move {
                monitor_shutdown.cancelled().await;
                jobs_shutdown.cancel();
                Ok(())
            };
            if let Err(err) = monitor.run_with_signal(signal).await {
                tracing::error!(error = %err, "job monitor failed");
            }
        });

        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(error = %err, "worker task panicked");
                shutdown.cancel();
            }
        }
        self.pool.close().await;
        tracing::info!("idp-worker stopped");
        Ok(())
    }
}

/// The mailer `SMTP_URL` asks for, or the outbox directory when it is unset.
fn mailer(config: &EmailConfig) -> anyhow::Result<Mailer> {
    let mailer = match &config.smtp_url {
        Some(url) => Mailer::smtp(
            url.expose_secret(),
            Duration::from_secs(config.smtp_timeout_secs),
            usize::from(config.smtp_pool_size),
        )?,
        None => Mailer::outbox(config.email_outbox_dir.clone())?,
    };
    tracing::info!(mailer = %mailer.describe(), "email goes to");
    Ok(mailer)
}

/// The `database` driver: on `PROVISION_DATABASE_URL`'s server (default: `pool`'s), keeping
/// project roles out of `pool`'s database (idp's own), with passwords from
/// `PROJECT_DATABASE_KEYS`. The server's pool connects lazily, so an unreachable
/// `PROVISION_DATABASE_URL` fails `database` steps (and opens their breaker), not the worker.
pub fn database_driver(config: &Config, pool: &PgPool) -> anyhow::Result<DatabaseDriver> {
    let provision = &config.provision;
    let keys = Arc::new(config.common.project_database_ring()?);
    let admin = match &provision.provision_database_url {
        Some(url) => PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(url.options()),
        None => pool.clone(),
    };
    Ok(DatabaseDriver::new(
        admin,
        pool.clone(),
        keys,
        provision.provision_database_connection_limit,
    ))
}

/// The provisioning drivers.
fn drivers(config: &Config, pool: &PgPool) -> anyhow::Result<Drivers> {
    let database = database_driver(config, pool)?;
    let config = &config.provision;
    Ok(Drivers {
        database,
        repository: RepositoryDriver::new(config.provision_repo_root.clone()),
        webhook: WebhookDriver::new(
            config.provision_webhook_url.clone(),
            config
                .provision_webhook_secret
                .as_ref()
                .map(|s| s.expose_secret().as_bytes().to_vec()),
            WEBHOOK_TIMEOUT,
        ),
    })
}

/// Keeps the breaker state gauges current, including breakers this process has not used.
async fn sample_breakers(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    loop {
        match crate::breaker::states(&pool).await {
            Ok(states) => {
                for (name, state) in states {
                    crate::breaker::publish_state(&name, state);
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not sample circuit breakers"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
