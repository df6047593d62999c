//! Operational plumbing shared by `idp-api` and `idp-worker`: the configuration both read,
//! structured logging, Prometheus metrics, health and readiness checks, and graceful shutdown.
//!
//! It exists so the two binaries behave the same way for operators without either depending on
//! the other.

pub mod config;
pub mod database;
pub mod health;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod test_logs;
