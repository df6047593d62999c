//! Time in tests: waiting for a condition with a deadline instead of sleeping, statistics of
//! timings, and instants written as the API writes them.

use std::time::{Duration, Instant};

/// Waits until `check` holds, polling, for at most `timeout`; panics naming `what` after that.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The median of `samples`, in seconds (the upper one of an even count).
pub fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64()
}

/// `at` as the API writes and reads instants: RFC 3339, UTC, whole microseconds.
pub fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_sample_whatever_the_order() {
        let ms = Duration::from_millis;
        assert!((median(vec![ms(30), ms(10), ms(20)]) - 0.020).abs() < 1e-9);
        assert!((median(vec![ms(40), ms(10), ms(30), ms(20)]) - 0.030).abs() < 1e-9);
    }

    #[test]
    fn instants_are_written_in_utc_with_microseconds() {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(rfc3339(at), "2023-11-14T22:13:20.123456Z");
    }

    #[tokio::test]
    async fn a_condition_that_holds_at_once_returns_at_once() {
        wait_until("nothing", Duration::from_millis(1), || async { true }).await;
    }
}
