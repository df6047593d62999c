//! Circuit breakers around the systems jobs reach (the mail server first), shared by every
//! worker process through one row per breaker in PostgreSQL.
//!
//! Closed: calls go through; `threshold` consecutive failures open it. Open: calls are refused
//! at once until `retry_at`. Then one process wins the trial call (half-open, with a lease so a
//! crashed prober does not wedge it); its success closes the breaker, its failure reopens it.
//! Each transition is a row update and an event in `breaker-<name>`, in one transaction, so
//! the log tells when a downstream was considered down. A call that goes through while closed
//! costs one read; a success writes only when it ends a run of failures.

use std::time::Duration;

use chrono::{DateTime, Utc};
use idp_events::jobs::{BreakerEvent, BreakerState};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, StreamId};
use sqlx::Row;

/// How long a trial call may take before another process may try.
const PROBE_LEASE: Duration = Duration::from_secs(60);

/// What the breaker allows for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: this call is the trial.
    Probe,
    /// Open: do not call until then.
    Refused {
        /// When a trial call will be allowed.
        retry_at: DateTime<Utc>,
    },
}

/// A breaker could not be read or updated.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError {
    /// The database failed.
    #[error("circuit breaker storage failed: {0}")]
    Database(#[from] sqlx::Error),
    /// Recording the transition failed.
    #[error("circuit breaker transition not recorded: {0}")]
    Append(#[from] idp_events::AppendError),
}

/// One shared circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    name: &'static str,
    store: EventStore,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    /// Breaker `name`, opening after `threshold` consecutive failures for `open_for`.
    pub fn new(name: &'static str, store: EventStore, threshold: u32, open_for: Duration) -> Self {
        Self {
            name,
            store,
            threshold: threshold.max(1),
            open_for,
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn open_for_ms(&self) -> i64 {
        i64::try_from(self.open_for.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether a call may go through now.
    pub async fn acquire(&self) -> Result<Permit, BreakerError> {
        let pool = self.store.pool();
        let row = sqlx::query(
            "select state, retry_at, retry_at <= now() as due from circuit_breakers where name = $1",
        )
        .bind(self.name)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else {
            sqlx::query(
                "insert into circuit_breakers (name) values ($1) on conflict (name) do nothing",
            )
            .bind(self.name)
            .execute(pool)
            .await?;
            self.publish(BreakerState::Closed);
            return Ok(Permit::Allowed);
        };
        let state = BreakerState::parse(row.try_get("state")?).unwrap_or(BreakerState::Closed);
        let retry_at: Option<DateTime<Utc>> = row.try_get("retry_at")?;
        let due: Option<bool> = row.try_get("due")?;
        self.publish(state);
        match (state, due.unwrap_or(true)) {
            (BreakerState::Closed, _) => Ok(Permit::Allowed),
            (_, false) => Ok(Permit::Refused {
                retry_at: retry_at.unwrap_or_else(Utc::now),
            }),
            (BreakerState::Open | BreakerState::HalfOpen, true) => self.try_probe(state).await,
        }
    }

    /// Takes the trial call if no other process took it first.
    async fn try_probe(&self, seen: BreakerState) -> Result<Permit, BreakerError> {
        let mut tx = self.store.pool().begin().await?;
        let lease_ms = i64::try_from(PROBE_LEASE.as_millis()).unwrap_or(i64::MAX);
        let taken = sqlx::query(
            "update circuit_breakers
                set state = 'half_open', retry_at = now() + $3 * interval '1 millisecond',
                    updated_at = now()
              where name = $1 and state = $2 and retry_at <= now()
              returning retry_at",
        )
        .bind(self.name)
        .bind(seen.as_str())
        .bind(lease_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = taken else {
            tx.rollback().await?;
            let retry_at = sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
                "select retry_at from circuit_breakers where name = $1",
            )
            .bind(self.name)
            .fetch_one(self.store.pool())
            .await?;
            return Ok(Permit::Refused {
                retry_at: retry_at.unwrap_or_else(Utc::now),
            });
        };
        let _: Option<DateTime<Utc>> = row.try_get("retry_at")?;
        if seen == BreakerState::Open {
            self.record(&mut tx, &BreakerEvent::CircuitHalfOpened)
                .await?;
        }
        tx.commit().await?;
        self.transitioned(BreakerState::HalfOpen);
        Ok(Permit::Probe)
    }

    /// The call went through.
    pub async fn success(&self, permit: Permit) -> Result<(), BreakerError> {
        match permit {
            Permit::Probe => {
                let mut tx = self.store.pool().begin().await?;
                let closed = sqlx::query(
                    "update circuit_breakers
                        set state = 'closed', failures = 0, retry_at = null, updated_at = now()
                      where name = $1 and state = 'half_open'",
                )
                .bind(self.name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if closed > 0 {
                    self.record(&mut tx, &BreakerEvent::CircuitClosed).await?;
                }
                tx.commit().await?;
                if closed > 0 {
                    self.transitioned(BreakerState::Closed);
                }
            }
            Permit::Allowed => {
                sqlx::query(
                    "update circuit_breakers set failures = 0, updated_at = now()
                      where name = $1 and state = 'closed' and failures > 0",
                )
                .bind(self.name)
                .execute(self.store.pool())
                .await?;
            }
            Permit::Refused { .. } => {}
        }
        Ok(())
    }

    /// The call failed in a way that says the downstream is unwell (not for the caller's
    /// mistakes, such as a refused address).
    pub async fn failure(&self, permit: Permit, error: &str) -> Result<(), BreakerError> {
        let mut tx = self.store.pool().begin().await?;
        let opened = match permit {
            Permit::Probe => {
                sqlx::query(
                    "update circuit_breakers
                    set state = 'open', failures = failures + 1, last_error = $2,
                        retry_at = now() + $3 * interval '1 millisecond', updated_at = now()
                  where name = $1 and state = 'half_open'
                  returning failures, retry_at",
                )
                .bind(self.name)
                .bind(error)
                .bind(self.open_for_ms())
                .fetch_optional(&mut *tx)
                .await?
            }
            Permit::Allowed => {
                let row = sqlx::query(
                    "update circuit_breakers
                        set failures = failures + 1, last_error = $2, updated_at = now(),
                            state = case when failures + 1 >= $3 then 'open' else state end,
                            retry_at = case when failures + 1 >= $3
                                            then now() + $4 * interval '1 millisecond'
                                            else retry_at end
                      where name = $1 and state = 'closed'
                      returning state, failures, retry_at",
                )
                .bind(self.name)
                .bind(error)
                .bind(i32::try_from(self.threshold).unwrap_or(i32::MAX))
                .bind(self.open_for_ms())
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some(row) if row.try_get::<String, _>("state")? == "open" => Some(row),
                    _ => None,
                }
            }
            Permit::Refused { .. } => None,
        };
        if let Some(row) = opened {
            let failures: i32 = row.try_get("failures")?;
            let retry_at: Option<DateTime<Utc>> = row.try_get("retry_at")?;
            let event = BreakerEvent::CircuitOpened {
                failures: u32::try_from(failures).unwrap_or_default(),
                retry_at: retry_at.unwrap_or_else(Utc::now),
                error: error.to_owned(),
            };
            self.record(&mut tx, &event).await?;
            tx.commit().await?;
            tracing::warn!(
                breaker = self.name,
                failures,
                error,
                "circuit breaker opened"
            );
            self.transitioned(BreakerState::Open);
        } else {
            tx.commit().await?;
        }
        Ok(())
    }

    async fn record(
        &self,
        tx: &mut sqlx::PgConnection,
        event: &BreakerEvent,
    ) -> Result<(), BreakerError> {
        self.store
            .append_in(
                tx,
                Append::to(StreamId::breaker(self.name))
                    .expecting(ExpectedVersion::Any)
                    .event(event.to_new_event())
                    .metadata(Metadata::actor("worker")),
            )
            .await?;
        Ok(())
    }

    fn transitioned(&self, to: BreakerState) {
        metrics::counter!("idp_circuit_breaker_transitions_total", "breaker" => self.name, "to" => to.as_str())
            .increment(1);
        self.publish(to);
    }

    fn publish(&self, state: BreakerState) {
        publish_state(self.name, state);
    }
}

/// Sets the breaker state gauge: 0 closed, 1 half-open, 2 open.
pub fn publish_state(name: &str, state: BreakerState) {
    let value = match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    metrics::gauge!("idp_circuit_breaker_state", "breaker" => name.to_owned()).set(value);
}

/// Every breaker's state as stored (for readiness and the metrics sampler).
pub async fn states(pool: &sqlx::PgPool) -> Result<Vec<(String, BreakerState)>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("select name, state from circuit_breakers order by name")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, state)| {
            let state = BreakerState::parse(&state).unwrap_or(BreakerState::Closed);
            (name, state)
        })
        .collect())
}
