//! The SQL migrations of idp (the `migrations/` directory), embedded at compile time.

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

/// Every migration of idp, in order.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies the migrations that are not applied yet. Safe to run from several processes at once:
/// sqlx serialises them with an advisory lock.
pub async fn run(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}
