//! Housekeeping: forgets `Idempotency-Key`s of `POST /v1/projects` once their time to live has
//! passed (`IDEMPOTENCY_KEY_TTL_HOURS`), so the table does not grow forever. A key is kept at
//! least that long; a request repeating it later is a new request. Every worker runs this; the
//! deletes are idempotent, so several at once only repeat each other.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement, so one run never holds a long lock or a huge transaction.
const BATCH: i64 = 10_000;

/// How often expired keys are looked for.
const EVERY: Duration = Duration::from_secs(600);

/// Deletes the keys created more than `ttl` ago; how many.
pub async fn expire_idempotency_keys(pool: &PgPool, ttl: Duration) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let done = sqlx::query(
            "delete from idempotency_keys
              where ctid = any(array(
                  select ctid from idempotency_keys
                   where created_at < now() - make_interval(secs => $1)
                   limit $2))",
        )
        .bind(ttl.as_secs_f64())
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += done;
        if done < BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// Expires keys now and every ten minutes until `shutdown` is cancelled. A failed round is
/// logged and the next one tries again.
pub async fn run(pool: PgPool, ttl: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match expire_idempotency_keys(&pool, ttl).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys removed"),
            Err(err) => tracing::warn!(error = %err, "could not remove expired idempotency keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrations = "../migrations")]
    async fn keys_older_than_their_time_to_live_are_removed_and_younger_ones_kept(pool: PgPool) {
        let owner = uuid::Uuid::now_v7();
        for (key, age_hours) in [("old-1", 30), ("old-2", 25), ("young", 23), ("new", 0)] {
            sqlx::query(
                "insert into idempotency_keys (owner_id, key, request_hash, status, response, created_at)
                 values ($1, $2, '\\x00', 202, '{}', now() - make_interval(hours => $3))",
            )
            .bind(owner)
            .bind(key)
            .bind(age_hours)
            .execute(&pool)
            .await
            .unwrap();
        }
        let ttl = Duration::from_secs(24 * 3600);
        assert_eq!(expire_idempotency_keys(&pool, ttl).await.unwrap(), 2);
        let left: Vec<String> = sqlx::query_scalar("select key from idempotency_keys order by key")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(left, ["new", "young"]);
        assert_eq!(
            expire_idempotency_keys(&pool, ttl).await.unwrap(),
            0,
            "idempotent"
        );
    }
}
