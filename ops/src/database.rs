//! The database pool both binaries use.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::CommonConfig;

/// How long to keep trying to reach the database at start (it may still be starting).
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// The database could not be reached within [`CONNECT_PATIENCE`].
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to DATABASE_URL {url}: {source}")]
pub struct ConnectError {
    /// The URL, password hidden.
    url: String,
    /// The last failure.
    #[source]
    source: sqlx::Error,
}

/// Opens the pool on `DATABASE_URL`, retrying for up to [`CONNECT_PATIENCE`] while the
/// database starts. Acquiring a connection later waits at most 3 s, so a request never hangs
/// on a database that went away.
pub async fn connect(config: &CommonConfig) -> Result<PgPool, ConnectError> {
    let options = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(3))
        // A ping before every use doubles the round trips of short queries; a broken connection
        // fails its query instead (answered 503) and is then dropped from the pool.
        .test_before_acquire(false);
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    loop {
        match options
            .clone()
            .connect_with(config.database_url.options())
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(database = %config.database_url, error = %err, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(source) => {
                return Err(ConnectError {
                    url: config.database_url.to_string(),
                    source,
                });
            }
        }
    }
}
