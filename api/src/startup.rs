//! Building and running the API: the same code path for `main` and for tests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use idp_events::EventStore;
use idp_ops::health::{BrokerProbe, Health};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::error::{REQUEST_ID, problem};
use crate::routes;

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The event log.
    pub store: EventStore,
}

/// A built API, bound to its address, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    pool: PgPool,
}

impl Application {
    /// Connects to the database (waiting for it up to 30 s), applies migrations and binds.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        idp_ops::metrics::install("idp-api");
        let pool = connect(config).await?;
        idp_events::migrations::run(&pool)
            .await
            .context("while applying database migrations")?;
        let broker = Arc::new(BrokerProbe::new(config.common.amqp_url.clone()));
        let listener = TcpListener::bind(config.api_addr)
            .await
            .with_context(|| format!("while binding API_ADDR {}", config.api_addr))?;
        let state = AppState {
            store: EventStore::new(pool.clone()),
        };
        let router = app(
            state,
            Health::new(pool.clone(), broker),
            Duration::from_secs(config.request_timeout_secs),
        );
        Ok(Self {
            listener,
            router,
            pool,
        })
    }

    /// The port bound (useful when `API_ADDR` asked for port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "idp-api listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("while serving HTTP")?;
        self.pool.close().await;
        tracing::info!("idp-api stopped");
        Ok(())
    }
}

/// The router with its middleware.
pub fn app(_state: AppState, health: Health, request_timeout: Duration) -> Router {
    routes::router(health)
        .layer(middleware::from_fn(scope_request_id))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, request_timeout))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
}

/// Makes the request id available to error responses built anywhere in the handler.
async fn scope_request_id(request: Request, next: Next) -> Response {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && response.headers().get("content-type").is_none()
    {
        // The timeout layer's bare 503 becomes a problem document too.
        return REQUEST_ID
            .scope(id, async {
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    Some("the request took too long".into()),
                )
            })
            .await;
    }
    response
}

async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    idp_ops::database::connect(&config.common)
        .await
        .with_context(|| {
            format!(
                "while connecting to DATABASE_URL {}",
                config.common.database_url
            )
        })
}
