//! Housekeeping: forgets `Idempotency-Key`s of `POST /v1/projects` once their time to live has
//! passed (`IDEMPOTENCY_KEY_TTL_HOURS`), so the table does not grow forever. A key is kept at
//! least that long; a request repeating it later is a new request. And it ends the retention of
//! client details (`PII_METADATA_RETENTION_DAYS`): the metadata key of every day older than
//! that is destroyed, and the audit view forgets the same details. Every worker runs this; the
//! deletes are idempotent, so several at once only repeat each other.

use std::time::Duration;

use chrono::{DateTime, Utc};
use idp_events::privacy::{SubjectKeys, SubjectKeysError};
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

/// Ends the retention of client details as of `now`: destroys the metadata keys of every day
/// before `now`'s day minus `retention_days`, and removes the client details of the audit
/// view's older rows. Returns how many day keys it destroyed.
pub async fn expire_client_details(
    pool: &PgPool,
    keys: &SubjectKeys,
    retention_days: u32,
    now: DateTime<Utc>,
) -> Result<u64, SubjectKeysError> {
    let first_kept = now.date_naive() - chrono::Days::new(u64::from(retention_days));
    let destroyed = keys.expire_periods_before(first_kept).await?;
    let since = first_kept.and_time(chrono::NaiveTime::MIN).and_utc();
    sqlx::query(
        "update audit_view set client_ip = null, user_agent = null
          where recorded_at < $1 and (client_ip is not null or user_agent is not null)",
    )
    .bind(since)
    .execute(pool)
    .await?;
    Ok(destroyed)
}

/// Ends the retention of client details now and every ten minutes until `shutdown`.
pub async fn run_retention(
    pool: PgPool,
    keys: SubjectKeys,
    retention_days: u32,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match expire_client_details(&pool, &keys, retention_days, Utc::now()).await {
            Ok(0) => {}
            Ok(days) => tracing::info!(days, "client details of days past their retention erased"),
            Err(err) => {
                tracing::warn!(error = %err, "could not end the retention of client details")
            }
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

    /// With a retention of 0 days and the clock a day ahead, yesterday's (today's) client
    /// details are gone from the events, which keep their actor and still verify.
    #[sqlx::test(migrations = "../migrations")]
    async fn client_details_older_than_their_retention_are_erased_and_the_log_verifies(
        pool: PgPool,
    ) {
        use idp_events::{Append, Metadata, NewEvent, StreamId};
        let store = idp_testkit::keys::event_store(pool.clone());
        let ada = uuid::Uuid::now_v7();
        let stream = StreamId::user(ada);
        store
            .append(
                Append::to(&stream)
                    .about(ada)
                    .event(NewEvent::new("Noted", serde_json::json!({})))
                    .metadata(Metadata {
                        actor: Some(stream.to_string()),
                        client_ip: Some("192.0.2.44".into()),
                        user_agent: Some("Retained/1.0".into()),
                        ..Metadata::default()
                    }),
            )
            .await
            .unwrap();
        let keys = store.subject_keys().unwrap();
        let now = Utc::now();
        assert_eq!(
            expire_client_details(&pool, keys, 90, now).await.unwrap(),
            0,
            "within retention: kept"
        );
        let read = store.read_stream(&stream, 1).await.unwrap();
        assert_eq!(read[0].metadata["client_ip"]["$personal"], "192.0.2.44");

        let later = now + chrono::Duration::days(1);
        assert_eq!(
            expire_client_details(&pool, keys, 0, later).await.unwrap(),
            1
        );
        let read = store.read_stream(&stream, 1).await.unwrap();
        assert_eq!(read[0].metadata["client_ip"], "[erased]");
        assert_eq!(read[0].metadata["user_agent"], "[erased]");
        assert_eq!(read[0].metadata["actor"], stream.to_string());
        let report = idp_events::chain::verify_streams(&pool, None)
            .await
            .unwrap();
        assert!(report.is_intact());
    }
}
