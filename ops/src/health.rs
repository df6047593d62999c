//! Liveness, readiness and metrics endpoints, served by both binaries.
//!
//! - `GET /health/live`: 200 while the process runs.
//! - `GET /health/ready`: 200 when the database and the broker answer, else 503 naming the part
//!   that does not. A process that can serve without the broker (the API: its writes go to the
//!   log, which the worker publishes from) marks it optional: the broker down then makes the
//!   report `degraded`, still 200, so a load balancer keeps the process in rotation. Circuit
//!   breakers are reported but never make a process unready.
//! - `GET /metrics`: Prometheus text.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::{Connection, PgPool};
use tokio::sync::Mutex;

use crate::config::AmqpUrl;

/// How long one readiness check may take before it counts as down. The checks run at once, so
/// readiness answers within this (plus a little), well inside any request timeout.
const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// Knows how to reach the broker, keeping one connection open between checks.
pub struct BrokerProbe {
    url: AmqpUrl,
    connection: Mutex<Option<lapin::Connection>>,
}

impl std::fmt::Debug for BrokerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerProbe")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl BrokerProbe {
    /// A probe of the broker at `url`; connects lazily.
    pub fn new(url: AmqpUrl) -> Self {
        Self {
            url,
            connection: Mutex::new(None),
        }
    }

    /// Ok when a connection to the broker is open (opening one if needed).
    pub async fn check(&self) -> Result<(), String> {
        let mut connection = self.connection.lock().await;
        if let Some(conn) = connection.as_ref()
            && conn.status().connected()
        {
            return Ok(());
        }
        *connection = None;
        let connect =
            lapin::Connection::connect(self.url.expose(), lapin::ConnectionProperties::default());
        match tokio::time::timeout(CHECK_TIMEOUT, connect).await {
            Ok(Ok(conn)) => {
                *connection = Some(conn);
                Ok(())
            }
            Ok(Err(err)) => Err(format!("cannot connect: {err}")),
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

/// How long the database check's query through the pool may take.
const DATABASE_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the database check's own connection attempt may take, when the pool could not run
/// the query; both together stay within [`CHECK_TIMEOUT`].
const DATABASE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Checks the database with a trivial query. When the pool cannot run it (no connection within
/// a second, or a broken one), the reason comes from a connection attempt of its own, since the
/// pool only reports that it timed out: `cannot connect: ... Connection refused` while the
/// server is down, `cannot connect: no answer within 500ms` when the network drops packets.
pub async fn check_database(pool: &PgPool) -> Result<(), String> {
    let query = sqlx::query("select 1").execute(pool);
    match tokio::time::timeout(DATABASE_QUERY_TIMEOUT, query).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) if !crate::database::is_unavailable(&err) => {
            Err(format!("query failed: {err}"))
        }
        Ok(Err(_)) | Err(_) => Err(diagnose_database(pool).await),
    }
}

/// Why the pool has no working connection, found with a connection of its own.
async fn diagnose_database(pool: &PgPool) -> String {
    let options = pool.connect_options();
    let connect = sqlx::PgConnection::connect_with(&options);
    match tokio::time::timeout(DATABASE_CONNECT_TIMEOUT, connect).await {
        Ok(Err(err)) => format!("cannot connect: {err}"),
        Err(_) => format!("cannot connect: no answer within {DATABASE_CONNECT_TIMEOUT:?}"),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            format!(
                "the server accepts connections, but no pooled connection answered within \
                 {DATABASE_QUERY_TIMEOUT:?} (all in use, or broken)"
            )
        }
    }
}

/// What the health endpoints check.
#[derive(Debug, Clone)]
pub struct Health {
    pool: PgPool,
    broker: Arc<BrokerProbe>,
    broker_required: bool,
}

impl Health {
    /// Health over the given database pool and broker; both are needed to be ready.
    pub fn new(pool: PgPool, broker: Arc<BrokerProbe>) -> Self {
        Self {
            pool,
            broker,
            broker_required: true,
        }
    }

    /// The broker is checked and reported, but its absence only makes the report `degraded`.
    #[must_use]
    pub fn with_optional_broker(mut self) -> Self {
        self.broker_required = false;
        self
    }

    /// Runs every readiness check concurrently.
    pub async fn readiness(&self) -> Readiness {
        let (database, broker, breakers) = tokio::join!(
            check_database(&self.pool),
            self.broker.check(),
            breaker_states(&self.pool)
        );
        let mut report = Readiness::from_checks(vec![
            ("database", database, true),
            ("broker", broker, self.broker_required),
        ]);
        report.breakers = breakers;
        report
    }
}

/// The state of one dependency.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `up` or `down`.
    pub status: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The readiness report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// `ready`; `degraded` (still ready) when only optional checks are down; or `not_ready`.
    pub status: &'static str,
    /// Every check, in a stable order.
    pub checks: Vec<Check>,
    /// State of each circuit breaker shared by the workers (`closed`, `open`, `half_open`). An
    /// open breaker does not make a process unready: it already refuses calls to the failing
    /// system, and everything else still works.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub breakers: BTreeMap<String, String>,
}

/// The circuit breakers as stored, or nothing when they cannot be read (the database check
/// reports that).
async fn breaker_states(pool: &PgPool) -> BTreeMap<String, String> {
    let query = sqlx::query_as::<_, (String, String)>("select name, state from circuit_breakers");
    match tokio::time::timeout(DATABASE_QUERY_TIMEOUT, query.fetch_all(pool)).await {
        Ok(Ok(rows)) => rows.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

impl Readiness {
    /// Builds a report from named results, each required for readiness or not.
    pub fn from_checks(results: Vec<(&'static str, Result<(), String>, bool)>) -> Self {
        let required_down = results
            .iter()
            .any(|(_, result, required)| *required && result.is_err());
        let any_down = results.iter().any(|(_, result, _)| result.is_err());
        let checks: Vec<Check> = results
            .into_iter()
            .map(|(name, result, _)| match result {
                Ok(()) => Check {
                    name,
                    status: "up",
                    detail: None,
                },
                Err(detail) => Check {
                    name,
                    status: "down",
                    detail: Some(detail),
                },
            })
            .collect();
        Self {
            status: if required_down {
                "not_ready"
            } else if any_down {
                "degraded"
            } else {
                "ready"
            },
            checks,
            breakers: BTreeMap::new(),
        }
    }

    /// True when every required check is up.
    pub fn is_ready(&self) -> bool {
        self.status != "not_ready"
    }
}

/// `/health/live`, the detailed `/health/ready` and `/metrics`: for an internal listener only
/// (the report names what is down and why; the metrics tell sign-in refusals apart).
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// `/health/live` and a bare `/health/ready` (only `{"status": ...}` and the status code), for
/// load balancers on a public listener.
pub fn public_router(health: Health) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(bare_ready))
        .with_state(health)
}

async fn bare_ready(State(health): State<Health>) -> Response {
    let report = health.readiness().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({ "status": report.status }))).into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

async fn ready(State(health): State<Health>) -> Response {
    let report = health.readiness().await;
    for check in report.checks.iter().filter(|c| c.status == "down") {
        tracing::warn!(check = check.name, detail = ?check.detail, "readiness check failed");
    }
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

async fn metrics() -> Response {
    crate::telemetry::publish_dropped_lines();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
}
