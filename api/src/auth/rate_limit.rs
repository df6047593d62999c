//! Rate limits shared by every API instance: fixed-window counters in PostgreSQL.
//!
//! Each check is one upsert that counts the hit and returns the window's total, so N instances
//! behind a load balancer enforce one limit. Old windows are deleted now and then.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;

/// At most `max` hits per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Hits allowed per window.
    pub max: u32,
    /// Window length.
    pub window: Duration,
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
    /// Over the limit until the window ends.
    Limited {
        /// Time until the window ends.
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

    /// Counts a hit on every bucket in one statement; limited if any bucket is over its limit
    /// (then `retry_after` is the longest wait).
    pub async fn hit_all(
        &self,
        buckets: &[(String, Limit)],
        now: DateTime<Utc>,
    ) -> Result<Decision, sqlx::Error> {
        let mut names = Vec::with_capacity(buckets.len());
        let mut starts = Vec::with_capacity(buckets.len());
        let mut ends = Vec::with_capacity(buckets.len());
        for (bucket, limit) in buckets {
            let window_secs = i64::try_from(limit.window.as_secs())
                .unwrap_or(i64::MAX)
                .max(1);
            let start_secs = now.timestamp().div_euclid(window_secs) * window_secs;
            let start = Utc.timestamp_opt(start_secs, 0).single().unwrap_or(now);
            names.push(bucket.clone());
            starts.push(start);
            ends.push(start + chrono::Duration::seconds(window_secs));
        }
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "insert into rate_limit_hits (bucket, window_start, hits)
             select bucket, window_start, 1 from unnest($1::text[], $2::timestamptz[]) as t(bucket, window_start)
             on conflict (bucket, window_start) do update set hits = rate_limit_hits.hits + 1
             returning bucket, hits",
        )
        .bind(&names)
        .bind(&starts)
        .fetch_all(&self.pool)
        .await?;
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
            self.sweep().await;
        }
        let mut longest: Option<Duration> = None;
        for (i, (_, limit)) in buckets.iter().enumerate() {
            let hits = rows
                .iter()
                .find(|(b, _)| *b == names[i])
                .map_or(0, |(_, h)| u32::try_from(*h).unwrap_or(u32::MAX));
            if hits > limit.max {
                let wait = (ends[i] - now)
                    .to_std()
                    .unwrap_or(Duration::from_secs(1))
                    .max(Duration::from_secs(1));
                longest = Some(longest.map_or(wait, |l| l.max(wait)));
            }
        }
        Ok(match longest {
            Some(retry_after) => Decision::Limited { retry_after },
            None => Decision::Allowed,
        })
    }

    /// Deletes windows that ended more than a day ago.
    async fn sweep(&self) {
        if let Err(err) =
            sqlx::query("delete from rate_limit_hits where window_start < now() - interval '1 day'")
                .execute(&self.pool)
                .await
        {
            tracing::debug!(error = %err, "rate limit sweep failed");
        }
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
}
