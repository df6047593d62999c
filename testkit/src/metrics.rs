//! Exclusive use of the process's metrics registry.

/// Holds the process's metrics registry for one test. `idp_ops::metrics` installs one recorder
/// per process, shared by every API and worker a test binary starts in process: `cargo test`
/// runs a binary's tests as threads of one process (nextest gives each test a process of its
/// own), and gauges sampled from one test's database (breaker states, dead letters) would be
/// overwritten by another's. A test that reads `/metrics` holds this for its whole run, and
/// compares counters with a page fetched before its own requests, since earlier tests of the
/// process have counted too.
pub async fn exclusive_metrics() -> tokio::sync::MutexGuard<'static, ()> {
    static REGISTRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    REGISTRY.lock().await
}
