//! Rate limits shared by every API instance: token buckets in PostgreSQL, kept by the generic
//! cell rate algorithm (GCRA).
//!
//! A limit of `max` per `window` lets a client with a full bucket make `max` requests at once,
//! then one every `window / max`: the bucket refills at its limit's rate, continuously, so there
//! is no window boundary at which a client could spend its allowance twice. Each bucket is one
//! row holding one time, its theoretical arrival time (`tat`): an allowed hit moves it one
//! emission interval (`window / max`) later, and a hit is allowed while that keeps it within one
//! window of now. Each check is one statement that decides and books every bucket of a request,
//! so N instances behind a load balancer enforce one limit. Full buckets are deleted now and then.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// At most `max` hits at once, refilled at `max` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Hits allowed at once (the bucket's size), and per window once it is spent.
    pub max: u32,
    /// The time in which a spent bucket fills again.
    pub window: Duration,
}

impl Limit {
    /// The time one hit books: `window / max` (at least a microsecond).
    pub fn emission(&self) -> Duration {
        (self.window / self.max.max(1)).max(Duration::from_micros(1))
    }
}

impl std::str::FromStr for Limit {
    type Err = String;

    /// `<max>/<seconds>s`, e.g. `20/60s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (max, window) = s
            .split_once('/')
            .ok_or_else(|| format!("expected <max>/<seconds>s, e.g. 20/60s, got {s:?}"))?;
        let max: u32 = max
            .trim()
            .parse()
            .map_err(|_| format!("bad count in {s:?}"))?;
        let secs: u64 = window
            .trim()
            .trim_end_matches('s')
            .parse()
            .map_err(|_| format!("bad window in {s:?}"))?;
        if max == 0 || secs == 0 {
            return Err(format!("count and window must be positive in {s:?}"));
        }
        Ok(Self {
            max,
            window: Duration::from_secs(secs),
        })
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Under the limit.
    Allowed,
    /// Over the limit until the bucket has room for one more hit.
    Limited {
        /// Time until the bucket has room for one more hit (at least a second).
        retry_after: Duration,
    },
}

/// Counts hits per bucket in the database.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    pool: PgPool,
    checks: Arc<AtomicU64>,
}

impl RateLimiter {
    /// A limiter over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            checks: Arc::default(),
        }
    }

    /// Counts a hit on `bucket` (e.g. `login:ip:10.0.0.1`) and says whether it is over `limit`.
    pub async fn hit(
        &self,
        bucket: &str,
        limit: Limit,
        now: DateTime<Utc>,
    ) -> Result<Decision, sqlx::Error> {
        self.hit_all(&[(bucket.to_owned(), limit)], now).await
    }

    /// Decides a hit on every bucket in one statement: limited if any bucket is full (then
    /// `retry_after` is the longest wait). A hit is booked on each bucket that had room for it;
    /// a bucket that was full is left as it was, so refused requests do not push a client's
    /// next allowed one further away.
    pub async fn hit_all(
        &self,
        buckets: &[(String, Limit)],
        now: DateTime<Utc>,
    ) -> Result<Decision, sqlx::Error> {
        let mut names: Vec<&str> = Vec::with_capacity(buckets.len());
        let mut emissions = Vec::with_capacity(buckets.len());
        let mut windows = Vec::with_capacity(buckets.len());
        for (bucket, limit) in buckets {
            // One statement cannot book a row twice: a bucket named twice is booked once.
            if names.contains(&bucket.as_str()) {
                continue;
            }
            names.push(bucket);
            emissions.push(micros(limit.emission()));
            windows.push(micros(limit.window));
        }
        // The outer select reads the snapshot from before the upsert, so for a refused bucket
        // it sees the `tat` that refused it: room for one more hit comes when
        // `tat + emission - window` is reached.
        let refused: Vec<(String, Option<f64>)> = sqlx::query_as(
            r#"with hit as (
                   select bucket,
                          emission_us * interval '1 microsecond' as emission,
                          window_us * interval '1 microsecond' as "window"
                     from unnest($1::text[], $2::int8[], $3::int8[]) as t(bucket, emission_us, window_us)
               ), booked as (
                   insert into rate_limit_buckets as b (bucket, tat, emission, "window")
                   select bucket, $4 + emission, emission, "window" from hit
                   on conflict (bucket) do update
                      set tat = greatest(b.tat, $4) + excluded.emission,
                          emission = excluded.emission,
                          "window" = excluded."window"
                    where greatest(b.tat, $4) + excluded.emission <= $4 + excluded."window"
                   returning bucket
               )
               select hit.bucket,
                      extract(epoch from b.tat + hit.emission - hit."window" - $4)::float8
                 from hit
                 left join booked using (bucket)
                 left join rate_limit_buckets b using (bucket)
                where booked.bucket is null"#,
        )
        .bind(&names)
        .bind(&emissions)
        .bind(&windows)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
            self.sweep(now).await;
        }
        let longest = refused.iter().map(|(_, wait)| retry_after(*wait)).max();
        Ok(match longest {
            Some(retry_after) => Decision::Limited { retry_after },
            None => Decision::Allowed,
        })
    }

    /// Deletes full buckets (those whose `tat` has passed): a missing bucket is a full one.
    async fn sweep(&self, now: DateTime<Utc>) {
        if let Err(err) = sqlx::query("delete from rate_limit_buckets where tat < $1")
            .bind(now)
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %err, "rate limit sweep failed");
        }
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The wait a refused bucket reported, in whole seconds rounded up, at least one (a bucket a
/// concurrent request created after this statement's snapshot reports none).
fn retry_after(wait_secs: Option<f64>) -> Duration {
    let secs = wait_secs.unwrap_or(1.0).ceil();
    if secs.is_finite() && secs >= 1.0 {
        Duration::from_secs_f64(secs.min(1e9))
    } else {
        Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_from_count_and_seconds() {
        assert_eq!(
            "20/60s".parse::<Limit>(),
            Ok(Limit {
                max: 20,
                window: Duration::from_secs(60)
            })
        );
        assert!("0/60s".parse::<Limit>().is_err());
        assert!("20".parse::<Limit>().is_err());
    }

    #[test]
    fn one_hit_books_the_window_divided_by_the_limit() {
        let limit: Limit = "120/60s".parse().unwrap();
        assert_eq!(limit.emission(), Duration::from_millis(500));
        let limit: Limit = "3/1s".parse().unwrap();
        assert_eq!(limit.emission(), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn waits_are_whole_seconds_and_never_zero() {
        assert_eq!(retry_after(Some(29.2)), Duration::from_secs(30));
        assert_eq!(retry_after(Some(0.000_1)), Duration::from_secs(1));
        assert_eq!(retry_after(Some(-3.0)), Duration::from_secs(1));
        assert_eq!(retry_after(None), Duration::from_secs(1));
        assert_eq!(retry_after(Some(f64::NAN)), Duration::from_secs(1));
    }

    mod in_the_database {
        use super::*;
        use chrono::TimeZone;

        fn at(secs: f64) -> DateTime<Utc> {
            let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 59).unwrap();
            start + chrono::Duration::microseconds((secs * 1e6) as i64)
        }

        fn limit(s: &str) -> Limit {
            s.parse().unwrap()
        }

        async fn hit(limiter: &RateLimiter, bucket: &str, l: &str, secs: f64) -> Decision {
            limiter
                .hit(bucket, limit(l), at(secs))
                .await
                .expect("limiter query")
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn a_full_bucket_allows_its_limit_at_once_and_refuses_the_next(pool: PgPool) {
            let limiter = RateLimiter::new(pool);
            for _ in 0..2 {
                assert_eq!(hit(&limiter, "b", "2/60s", 0.0).await, Decision::Allowed);
            }
            assert_eq!(
                hit(&limiter, "b", "2/60s", 0.0).await,
                Decision::Limited {
                    retry_after: Duration::from_secs(30)
                }
            );
        }

        // A fixed window that ended at 0:01:00 gave a client its whole allowance again one
        // second after it had spent it: the bucket gives back one hit per emission interval.
        #[sqlx::test(migrations = "../migrations")]
        async fn there_is_no_boundary_at_which_the_allowance_comes_back_whole(pool: PgPool) {
            let limiter = RateLimiter::new(pool);
            assert_eq!(hit(&limiter, "b", "2/60s", 0.0).await, Decision::Allowed);
            assert_eq!(hit(&limiter, "b", "2/60s", 0.5).await, Decision::Allowed);
            assert!(matches!(
                hit(&limiter, "b", "2/60s", 1.5).await,
                Decision::Limited { .. }
            ));
            // At 29.999 s the first hit's emission interval has not passed, at 30 s it has.
            assert!(matches!(
                hit(&limiter, "b", "2/60s", 29.999).await,
                Decision::Limited { .. }
            ));
            assert_eq!(hit(&limiter, "b", "2/60s", 30.0).await, Decision::Allowed);
            assert!(matches!(
                hit(&limiter, "b", "2/60s", 30.0).await,
                Decision::Limited { .. }
            ));
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn refused_hits_are_not_booked(pool: PgPool) {
            let limiter = RateLimiter::new(pool);
            assert_eq!(hit(&limiter, "b", "1/10s", 0.0).await, Decision::Allowed);
            for second in 1..10 {
                assert!(matches!(
                    hit(&limiter, "b", "1/10s", f64::from(second)).await,
                    Decision::Limited { .. }
                ));
            }
            assert_eq!(hit(&limiter, "b", "1/10s", 10.0).await, Decision::Allowed);
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn a_request_is_refused_by_its_fullest_bucket_and_waits_for_it(pool: PgPool) {
            let limiter = RateLimiter::new(pool);
            let buckets = [
                ("ip".to_owned(), limit("1/60s")),
                ("account".to_owned(), limit("5/60s")),
            ];
            assert_eq!(
                limiter.hit_all(&buckets, at(0.0)).await.unwrap(),
                Decision::Allowed
            );
            assert_eq!(
                limiter.hit_all(&buckets, at(1.0)).await.unwrap(),
                Decision::Limited {
                    retry_after: Duration::from_secs(59)
                }
            );
            // The account bucket had room and booked both hits: three are left of five.
            for _ in 0..3 {
                assert_eq!(
                    hit(&limiter, "account", "5/60s", 1.0).await,
                    Decision::Allowed
                );
            }
            assert!(matches!(
                hit(&limiter, "account", "5/60s", 1.0).await,
                Decision::Limited { .. }
            ));
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn buckets_are_counted_apart_and_a_name_given_twice_once(pool: PgPool) {
            let limiter = RateLimiter::new(pool);
            let twice = [
                ("b".to_owned(), limit("2/60s")),
                ("b".to_owned(), limit("2/60s")),
            ];
            assert_eq!(
                limiter.hit_all(&twice, at(0.0)).await.unwrap(),
                Decision::Allowed
            );
            assert_eq!(hit(&limiter, "b", "2/60s", 0.0).await, Decision::Allowed);
            assert_eq!(
                hit(&limiter, "other", "2/60s", 0.0).await,
                Decision::Allowed
            );
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn many_instances_booking_at_once_share_one_limit(pool: PgPool) {
            let hits = (0..40).map(|_| {
                let limiter = RateLimiter::new(pool.clone());
                tokio::spawn(async move { hit(&limiter, "b", "10/60s", 0.0).await })
            });
            let mut allowed = 0;
            for hit in hits {
                if hit.await.unwrap() == Decision::Allowed {
                    allowed += 1;
                }
            }
            assert_eq!(allowed, 10);
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn the_sweep_deletes_only_full_buckets(pool: PgPool) {
            let limiter = RateLimiter::new(pool.clone());
            hit(&limiter, "spent", "1/60s", 0.0).await;
            hit(&limiter, "refilled", "1/1s", 0.0).await;
            limiter.sweep(at(30.0)).await;
            let left: Vec<String> = sqlx::query_scalar("select bucket from rate_limit_buckets")
                .fetch_all(&pool)
                .await
                .unwrap();
            assert_eq!(left, ["spent"]);
            assert!(matches!(
                hit(&limiter, "spent", "1/60s", 30.0).await,
                Decision::Limited { .. }
            ));
        }
    }
}
