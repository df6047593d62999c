//! Rate limits of the authenticated routes, by plan: per account, and per API key.
//!
//! Each limit is a GCRA bucket in `rate_limit_buckets`, the table the sign-in limits use, so
//! every API instance draws from the same bucket. An instance does not ask the database for
//! each request: it takes a lease of several hits at once (`rate_limit_lease`, one statement)
//! and spends it in memory. A lease is a fiftieth of the limit (at least one hit) and is given
//! up unspent after [`LEASE_LIFETIME`], so what instances hold back from each other stays
//! within a few percent of the limit, and a request costs a round trip once per lease. A bucket
//! found empty is not asked again until it has room for a hit: meanwhile its requests are
//! answered 429 from memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How long a lease's unspent hits may be spent.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// Share of a limit one lease takes.
const LEASE_DIVISOR: u32 = 50;

/// The window of every plan's limit.
const WINDOW: Duration = Duration::from_secs(60);

/// Buckets kept in memory after their last use, before they are dropped.
const IDLE_BUCKET: Duration = Duration::from_secs(120);

/// Whose requests a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counted {
    /// Every request of one account (a person or a service account).
    Account(Uuid),
    /// Every request made with one API key.
    Key(Uuid),
}

impl Counted {
    fn bucket(self) -> String {
        match self {
            Self::Account(id) => format!("plan:account:{id}"),
            Self::Key(id) => format!("plan:key:{id}"),
        }
    }
}

/// Where a limit stands, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    /// Requests per minute.
    pub limit: u32,
    /// Requests left before the limit is reached (as this instance knows it).
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Under the limit.
    Allowed(RateStatus),
    /// Over it: try again in `retry_after` (whole seconds, at least one).
    Limited {
        /// Where the limit stands.
        status: RateStatus,
        /// Time until the bucket has room for a request.
        retry_after: Duration,
    },
}

impl RateDecision {
    /// Where the limit stands.
    pub fn status(&self) -> RateStatus {
        match self {
            Self::Allowed(status) | Self::Limited { status, .. } => *status,
        }
    }

    /// The tighter of two decisions: a refusal over an allowance, the fewer remaining.
    #[must_use]
    pub fn tighter(self, other: Self) -> Self {
        match (self, other) {
            (Self::Allowed(a), Self::Allowed(b)) => {
                Self::Allowed(if b.remaining < a.remaining { b } else { a })
            }
            (Self::Limited { retry_after: a, .. }, Self::Limited { retry_after: b, .. }) => {
                if b > a { other } else { self }
            }
            (Self::Limited { .. }, Self::Allowed(_)) => self,
            (Self::Allowed(_), Self::Limited { .. }) => other,
        }
    }
}

/// One bucket as this instance holds it.
#[derive(Debug)]
struct Lease {
    /// Hits leased and not spent yet.
    tokens: u32,
    /// When they were leased.
    taken_at: Instant,
    /// The bucket's room left after the lease, when it was taken.
    room_after: u32,
    /// When the bucket is full again, as of the lease.
    full_at: Instant,
    /// The bucket had no room: ask again at this time, not before.
    empty_until: Option<Instant>,
    /// The limit the lease was taken under (a plan change starts a new lease).
    per_minute: u32,
    /// Last request counted.
    used_at: Instant,
}

/// The per-plan limits of one API instance.
#[derive(Debug, Clone)]
pub struct RequestLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    enabled: bool,
    buckets: Mutex<HashMap<Counted, Arc<tokio::sync::Mutex<Option<Lease>>>>>,
    checks: AtomicU64,
}

impl RequestLimiter {
    /// A limiter over `pool`; when not `enabled` every request is allowed and no header is
    /// sent (`RATE_LIMIT_REQUESTS=false`).
    pub fn new(pool: PgPool, enabled: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                enabled,
                buckets: Mutex::default(),
                checks: AtomicU64::new(0),
            }),
        }
    }

    /// Whether requests are limited at all.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Counts a request against `counted`'s bucket of `per_minute` requests a minute.
    ///
    /// # Errors
    /// When a lease cannot be taken from the database.
    pub async fn check(
        &self,
        counted: Counted,
        per_minute: u32,
    ) -> Result<RateDecision, sqlx::Error> {
        let per_minute = per_minute.max(1);
        let bucket = self.bucket(counted);
        let mut lease = bucket.lock().await;
        let now = Instant::now();
        if let Some(held) = lease.as_mut().filter(|l| l.per_minute == per_minute) {
            held.used_at = now;
            if held.tokens > 0 && now.duration_since(held.taken_at) < LEASE_LIFETIME {
                held.tokens -= 1;
                return Ok(RateDecision::Allowed(held.status(now)));
            }
            if let Some(until) = held.empty_until.filter(|until| *until > now) {
                return Ok(RateDecision::Limited {
                    status: held.status(now),
                    retry_after: whole_seconds(until - now),
                });
            }
        }
        let fresh = self.lease(counted, per_minute).await?;
        let decision = if fresh.tokens > 0 {
            let mut fresh = fresh;
            fresh.tokens -= 1;
            let status = fresh.status(Instant::now());
            *lease = Some(fresh);
            RateDecision::Allowed(status)
        } else {
            let now = Instant::now();
            let retry_after = fresh
                .empty_until
                .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
            let status = fresh.status(now);
            *lease = Some(fresh);
            RateDecision::Limited {
                status,
                retry_after: whole_seconds(retry_after),
            }
        };
        drop(lease);
        if self.inner.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            self.forget_idle();
        }
        Ok(decision)
    }

    fn bucket(&self, counted: Counted) -> Arc<tokio::sync::Mutex<Option<Lease>>> {
        let mut buckets = self
            .inner
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(buckets.entry(counted).or_default())
    }

    /// Takes a lease from the shared bucket.
    async fn lease(&self, counted: Counted, per_minute: u32) -> Result<Lease, sqlx::Error> {
        // The database keeps times to the microsecond: a finer emission would be none at all.
        let emission = (WINDOW / per_minute).max(Duration::from_micros(1));
        let want = (per_minute / LEASE_DIVISOR).max(1);
        let (granted, next_tat, now): (i32, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
            "select granted, next_tat, now() from rate_limit_lease($1, $2,
                    $3 * interval '1 microsecond', $4 * interval '1 microsecond')",
        )
        .bind(counted.bucket())
        .bind(i32::try_from(want).unwrap_or(i32::MAX))
        .bind(micros(emission))
        .bind(micros(WINDOW))
        .fetch_one(&self.inner.pool)
        .await?;
        let taken_at = Instant::now();
        // The bucket's state, read as durations from the database's clock.
        let ahead = (next_tat - now).to_std().unwrap_or_default();
        let room = WINDOW.saturating_sub(ahead).as_micros() / emission.as_micros().max(1);
        let empty_until = (granted == 0).then(|| {
            // Room for one hit comes when the arrival time is one emission within the window.
            taken_at + (ahead + emission).saturating_sub(WINDOW)
        });
        Ok(Lease {
            tokens: u32::try_from(granted).unwrap_or_default(),
            taken_at,
            room_after: u32::try_from(room).unwrap_or(u32::MAX),
            full_at: taken_at + ahead,
            empty_until,
            per_minute,
            used_at: taken_at,
        })
    }

    /// Drops buckets nobody used lately (their leases have gone stale anyway).
    fn forget_idle(&self) {
        let now = Instant::now();
        let mut buckets = self
            .inner
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        buckets.retain(|_, lease| match lease.try_lock() {
            Ok(lease) => lease
                .as_ref()
                .is_some_and(|l| now.duration_since(l.used_at) < IDLE_BUCKET),
            // In use right now.
            Err(_) => true,
        });
    }
}

impl Lease {
    fn status(&self, now: Instant) -> RateStatus {
        RateStatus {
            limit: self.per_minute,
            remaining: self
                .room_after
                .saturating_add(self.tokens)
                .min(self.per_minute),
            reset_secs: whole_seconds(self.full_at.saturating_duration_since(now)).as_secs(),
        }
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// `duration` rounded up to whole seconds, at least one.
fn whole_seconds(duration: Duration) -> Duration {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(remaining: u32) -> RateStatus {
        RateStatus {
            limit: 10,
            remaining,
            reset_secs: 1,
        }
    }

    #[test]
    fn the_tighter_decision_is_the_refusal_or_the_one_with_less_left() {
        let allowed = |n| RateDecision::Allowed(status(n));
        let limited = |secs| RateDecision::Limited {
            status: status(0),
            retry_after: Duration::from_secs(secs),
        };
        assert_eq!(allowed(3).tighter(allowed(5)), allowed(3));
        assert_eq!(allowed(5).tighter(allowed(3)), allowed(3));
        assert_eq!(allowed(5).tighter(limited(2)), limited(2));
        assert_eq!(limited(2).tighter(allowed(5)), limited(2));
        assert_eq!(limited(2).tighter(limited(7)), limited(7));
    }

    #[test]
    fn waits_round_up_to_whole_seconds_of_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            whole_seconds(Duration::from_millis(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(1001)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    mod db {
        use super::super::*;

        #[sqlx::test(migrations = "../migrations")]
        async fn a_bucket_allows_its_limit_and_then_refuses_with_a_wait(pool: PgPool) {
            let limiter = RequestLimiter::new(pool, true);
            let account = Counted::Account(Uuid::now_v7());
            let mut remaining = Vec::new();
            for _ in 0..60 {
                match limiter.check(account, 60).await.unwrap() {
                    RateDecision::Allowed(status) => remaining.push(status.remaining),
                    limited => panic!("refused before the limit: {limited:?}"),
                }
            }
            // One hit a second refills the bucket: the count may stand still for a hit, never
            // rise by more than the refill, and it ends near zero.
            assert_eq!(remaining[0], 59);
            assert!(remaining.windows(2).all(|w| w[1] <= w[0]), "{remaining:?}");
            assert!(remaining[59] <= 1, "{remaining:?}");
            let refused = limiter.check(account, 60).await.unwrap();
            let RateDecision::Limited {
                status,
                retry_after,
            } = refused
            else {
                panic!("the hit past the limit was allowed: {refused:?}");
            };
            assert_eq!(status.limit, 60);
            assert_eq!(status.remaining, 0);
            assert!((1..=2).contains(&retry_after.as_secs()), "{retry_after:?}");
            // Another account has a bucket of its own.
            let other = limiter
                .check(Counted::Account(Uuid::now_v7()), 60)
                .await
                .unwrap();
            assert!(matches!(other, RateDecision::Allowed(_)), "{other:?}");
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn the_largest_plan_is_counted_not_refused(pool: PgPool) {
            // Past one request a microsecond (the configuration refuses such plans) the
            // emission stays the finest the database keeps, instead of none (a division by
            // zero in the lease).
            let limiter = RequestLimiter::new(pool, true);
            let account = Counted::Account(Uuid::now_v7());
            for _ in 0..3 {
                let decision = limiter
                    .check(account, 2 * crate::auth::plans::MAX_REQUESTS_PER_MINUTE)
                    .await
                    .unwrap();
                assert!(matches!(decision, RateDecision::Allowed(_)), "{decision:?}");
            }
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn two_limiters_share_one_bucket(pool: PgPool) {
            let a = RequestLimiter::new(pool.clone(), true);
            let b = RequestLimiter::new(pool, true);
            let key = Counted::Key(Uuid::now_v7());
            let mut allowed = 0;
            for i in 0..400 {
                let limiter = if i % 2 == 0 { &a } else { &b };
                if matches!(
                    limiter.check(key, 300).await.unwrap(),
                    RateDecision::Allowed(_)
                ) {
                    allowed += 1;
                }
            }
            // 300 at once, plus what refills (5 a second) while the loop runs; what the two
            // hold back from each other is at most a lease each (6).
            assert!((288..=320).contains(&allowed), "{allowed} allowed");
        }
    }
}
