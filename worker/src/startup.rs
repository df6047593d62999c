//! Building and running the worker: the same code path for `main` and for tests.

use std::sync::Arc;

use anyhow::Context;
use idp_events::EventStore;
use idp_ops::health::{BrokerProbe, Health};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::projections;

/// A built worker, bound to its health address, not yet running.
#[derive(Debug)]
pub struct Worker {
    listener: TcpListener,
    pool: PgPool,
    health: Health,
}

impl Worker {
    /// Connects to the database (waiting for it up to 30 s), applies migrations and binds
    /// `WORKER_ADDR`.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        idp_ops::metrics::install("idp-worker");
        let pool = idp_ops::database::connect(&config.common).await?;
        idp_events::migrations::run(&pool)
            .await
            .context("while applying database migrations")?;
        let broker = Arc::new(BrokerProbe::new(config.common.amqp_url.clone()));
        let listener = TcpListener::bind(config.worker_addr)
            .await
            .with_context(|| format!("while binding WORKER_ADDR {}", config.worker_addr))?;
        Ok(Self {
            listener,
            health: Health::new(pool.clone(), broker),
            pool,
        })
    }

    /// The port of the health listener.
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Runs the projections and the health listener until `shutdown` is cancelled; batches in
    /// progress are finished first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "idp-worker health listener up");
        let store = EventStore::new(self.pool.clone());
        let mut tasks = JoinSet::new();

        let http_shutdown = shutdown.clone();
        let router = idp_ops::health::router(self.health);
        let listener = self.listener;
        tasks.spawn(async move {
            if let Err(err) = axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
            {
                tracing::error!(error = %err, "health listener failed");
            }
        });

        projections::spawn_all(&store, &mut tasks, &shutdown);

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
