//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from 1 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus handle, installing the global recorder on first use. Later calls
/// (several applications in one test process) share it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours then stays unused, and
            // /metrics renders an empty page rather than failing the process.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Installs the recorder (if not yet) and records the build's version as
/// `idp_build_info{version, binary} 1`. Call at start, before anything records metrics.
pub fn install(binary: &'static str) {
    handle();
    metrics::gauge!("idp_build_info", "version" => env!("CARGO_PKG_VERSION"), "binary" => binary)
        .set(1.0);
}

/// Counts and times every HTTP request: `idp_http_requests_total{route, method, status}`,
/// `idp_http_request_duration_seconds{route, method, status}` (until the response's head, so a
/// streamed body is not counted) and `idp_http_requests_in_flight`. `route` is the matched route
/// template (`/v1/projects/{id}`), never the raw path, so ids do not multiply the series;
/// requests that match no route count as `unmatched`. Install with `Router::layer` so the
/// matched route is known.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route: SharedString = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| SharedString::from(path.as_str().to_owned()))
        .unwrap_or(SharedString::const_str("unmatched"));
    let method = method_label(request.method());
    let started = Instant::now();
    let in_flight = InFlight::enter();
    let response = next.run(request).await;
    drop(in_flight);
    let status = SharedString::from(response.status().as_u16().to_string());
    let labels = [
        ("route", route),
        ("method", SharedString::const_str(method)),
        ("status", status),
    ];
    metrics::counter!("idp_http_requests_total", &labels).increment(1);
    metrics::histogram!("idp_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label; methods the API does not use are grouped, so a client cannot create
/// series at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Holds one count of `idp_http_requests_in_flight` while a request is handled, also when the
/// client goes away and the handler is dropped.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("idp_http_requests_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("idp_http_requests_in_flight").decrement(1.0);
    }
}

/// How often [`watch_pool`] samples the pool.
const POOL_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes the database pool's use every second until the pool is closed:
/// `idp_db_pool_connections{binary, state="idle"|"in_use"}` and
/// `idp_db_pool_max_connections{binary}`.
pub fn watch_pool(pool: PgPool, binary: &'static str) {
    tokio::spawn(async move {
        let max = f64::from(pool.options().get_max_connections());
        metrics::gauge!("idp_db_pool_max_connections", "binary" => binary).set(max);
        let mut ticker = tokio::time::interval(POOL_SAMPLE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !pool.is_closed() {
            ticker.tick().await;
            let size = f64::from(pool.size());
            let idle = pool.num_idle() as f64;
            metrics::gauge!("idp_db_pool_connections", "binary" => binary, "state" => "idle")
                .set(idle);
            metrics::gauge!("idp_db_pool_connections", "binary" => binary, "state" => "in_use")
                .set((size - idle).max(0.0));
        }
    });
}
