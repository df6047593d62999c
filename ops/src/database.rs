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
/// database starts. Acquiring a connection later waits at most `DATABASE_ACQUIRE_TIMEOUT_SECS`
/// (opening one included), so a request never hangs on a database that went away: it fails
/// with an error that [`is_unavailable`] recognises.
pub async fn connect(config: &CommonConfig) -> Result<PgPool, ConnectError> {
    let options = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(config.database_acquire_timeout_secs))
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

/// True when `err` means the database cannot be reached or is going away (so retrying later may
/// work), not that the statement or the code is wrong: no connection within the acquire
/// timeout, a broken or refused connection, and the SQLSTATEs a server sends while it stops,
/// starts or is overloaded (class 08 connection exceptions, 57P01 admin shutdown, 57P02 crash
/// shutdown, 57P03 cannot connect now, 53300 too many connections).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_unavailable_code(&code)),
        _ => false,
    }
}

fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// Takes the transaction-level advisory lock named `name` (hashed to a key), held until the
/// transaction on `conn` ends: what serialises decisions about one thing across API instances.
pub async fn lock_until_commit(
    conn: &mut sqlx::PgConnection,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailability_and_statement_errors_are_not() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        for code in ["57P01", "57P02", "57P03", "53300", "08006", "08001"] {
            assert!(is_unavailable_code(code), "{code}");
        }
        for code in ["23505", "40001", "42P01", "IE001", "57014"] {
            assert!(!is_unavailable_code(code), "{code}");
        }
    }
}
