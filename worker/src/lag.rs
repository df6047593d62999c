//! How far each subscription is behind the log, as Prometheus gauges: a read model that falls
//! behind (or a dispatcher whose backlog grows) shows on a dashboard before anyone notices stale
//! reads.
//!
//! "Behind" follows the order subscriptions read in, `(transaction_id, position)`: an event
//! counts if it comes after the checkpoint in that order. Counting by position alone would
//! count forever an event of an older transaction that committed after newer ones, since the
//! subscription handles it before them and its checkpoint ends at a lower position.

use std::collections::BTreeSet;
use std::time::Duration;

use idp_events::Cursor;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

/// Events behind are counted up to this many, so the query's cost is bounded however far
/// behind a subscription is (a gauge at the cap means "at least this many").
pub const COUNT_CAP: i64 = 100_000;

/// The subscription of the dispatcher, whose lag is also its backlog of jobs to publish.
pub const DISPATCHER: &str = "dispatcher";

/// Where one subscription stands against the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    /// The subscription's name.
    pub subscription: String,
    /// Its checkpoint.
    pub checkpoint: Cursor,
    /// Events committed after the checkpoint, at most [`COUNT_CAP`].
    pub events: i64,
    /// Age of the oldest event after the checkpoint, in seconds; 0 when caught up.
    pub seconds: f64,
}

/// One query for every subscription: for each checkpoint, the events after it (counted up to
/// the cap) and the age of the first of them, both walking the commit-order index.
const SAMPLE: &str = "
select c.name,
       c.transaction_id::text::bigint as transaction_id,
       c.position,
       (select count(*) from (
            select 1 from events e
             where (e.transaction_id, e.position) > (c.transaction_id, c.position)
             limit $1) as behind) as events,
       coalesce(extract(epoch from now() - (
            select e.recorded_at from events e
             where (e.transaction_id, e.position) > (c.transaction_id, c.position)
             order by e.transaction_id, e.position
             limit 1))::float8, 0) as seconds
  from subscription_checkpoints c
 order by c.name";

/// The lag of every subscription that has a checkpoint.
pub async fn sample(pool: &PgPool) -> Result<Vec<Lag>, sqlx::Error> {
    let rows = sqlx::query(SAMPLE).bind(COUNT_CAP).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(Lag {
                subscription: row.try_get("name")?,
                checkpoint: Cursor {
                    transaction_id: row.try_get("transaction_id")?,
                    position: row.try_get("position")?,
                },
                events: row.try_get("events")?,
                // The appending clock and the database clock may differ a little.
                seconds: row.try_get::<f64, _>("seconds")?.max(0.0),
            })
        })
        .collect()
}

/// Sets the gauges `idp_projection_lag_events{subscription}`,
/// `idp_projection_lag_seconds{subscription}` and, if the dispatcher has a checkpoint,
/// `idp_dispatcher_backlog`.
#[allow(clippy::cast_precision_loss)] // counts are capped far below 2^52
pub fn record(lags: &[Lag]) {
    for lag in lags {
        metrics::gauge!("idp_projection_lag_events", "subscription" => lag.subscription.clone())
            .set(lag.events as f64);
        metrics::gauge!("idp_projection_lag_seconds", "subscription" => lag.subscription.clone())
            .set(lag.seconds);
        if lag.subscription == DISPATCHER {
            metrics::gauge!("idp_dispatcher_backlog").set(lag.events as f64);
        }
    }
}

/// Samples every `interval` and records the gauges, until `shutdown` is cancelled. A failed
/// sample is logged and the loop goes on.
pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dead_letter_queues = BTreeSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sampled = tokio::select! {
            () = shutdown.cancelled() => break,
            sampled = sample(&pool) => sampled,
        };
        match sampled {
            Ok(lags) => record(&lags),
            Err(err) => tracing::warn!(error = %err, "could not sample projection lag"),
        }
        match dead_letters(&pool).await {
            Ok(counts) => record_dead_letters(&counts, &mut dead_letter_queues),
            Err(err) => tracing::warn!(error = %err, "could not count dead letters"),
        }
    }
}

/// Dead letters waiting for an administrator, per queue.
async fn dead_letters(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("select queue, count(*) from dead_jobs group by queue")
        .fetch_all(pool)
        .await
}

/// Sets `idp_jobs_dead_letters{queue}`; a queue seen before and now empty goes back to 0.
#[allow(clippy::cast_precision_loss)] // counts are far below 2^52
fn record_dead_letters(counts: &[(String, i64)], seen: &mut BTreeSet<String>) {
    for queue in seen.iter() {
        if !counts.iter().any(|(q, _)| q == queue) {
            metrics::gauge!("idp_jobs_dead_letters", "queue" => queue.clone()).set(0.0);
        }
    }
    for (queue, count) in counts {
        metrics::gauge!("idp_jobs_dead_letters", "queue" => queue.clone()).set(*count as f64);
        seen.insert(queue.clone());
    }
}
