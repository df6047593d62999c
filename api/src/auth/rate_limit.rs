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
        let window_secs = i64::try_from(limit.window.as_secs())
            .unwrap_or(i64::MAX)
            .max(1);
        let start_secs = now.timestamp().div_euclid(window_secs) * window_secs;
        let window_start = Utc.timestamp_opt(start_secs, 0).single().unwrap_or(now);
        let hits: i32 = sqlx::query_scalar(
            "insert into rate_limit_hits (bucket, window_start, hits) values ($1, $2, 1)
             on conflict (bucket, window_start) do update set hits = rate_limit_hits.hits + 1
             returning hits",
        )
        .bind(bucket)
        .bind(window_start)
        .fetch_one(&self.pool)
        .await?;
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
            self.sweep().await;
        }
        if u32::try_from(hits).unwrap_or(u32::MAX) <= limit.max {
            return Ok(Decision::Allowed);
        }
        let ends = window_start + chrono::Duration::seconds(window_secs);
        let retry_after = (ends - now)
            .to_std()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_secs(1));
        Ok(Decision::Limited { retry_after })
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
