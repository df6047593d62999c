//! The test's own database: `#[sqlx::test]` creates a fresh one per test (migrated, or left
//! empty for the API to migrate at start) and hands its connection options to the test; these
//! helpers turn them into what the code under test and the test's own checks need.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// The URL of the database `conn` points at, for `--database-url` or `DATABASE_URL`.
pub fn database_url(conn: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        conn.get_username(),
        conn.get_host(),
        conn.get_port(),
        conn.get_database().unwrap_or("postgres")
    )
}

/// A small pool (4 connections) on the test's database, for the test's own queries.
pub async fn pool(conn: &PgConnectOptions) -> PgPool {
    pool_with(conn, 4).await
}

/// A pool of at most `max` connections on the test's database.
pub async fn pool_with(conn: &PgConnectOptions, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .connect_with(conn.clone())
        .await
        .unwrap()
}

/// A superuser connection whose writes skip the log's triggers, to play an attacker who
/// edits the log behind the application's back.
pub async fn superuser(conn: &PgConnectOptions) -> PgConnection {
    let mut c = PgConnection::connect_with(conn).await.unwrap();
    sqlx::query("set session_replication_role = replica")
        .execute(&mut c)
        .await
        .unwrap();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_user_host_port_and_database() {
        let conn = PgConnectOptions::new()
            .username("root")
            .host("127.0.0.1")
            .port(5433)
            .database("_sqlx_test_42");
        assert_eq!(
            database_url(&conn),
            "postgres://root@127.0.0.1:5433/_sqlx_test_42"
        );
    }
}
