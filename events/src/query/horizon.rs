//! The settled horizon: the position up to which the log can no longer change (see the
//! [module documentation](super)).

use std::time::Duration;

use sqlx::PgConnection;

use super::QueryError;

/// How long a read waits for the appends in flight when it started.
pub const WRITER_WAIT: Duration = Duration::from_secs(3);

/// The longest pause between two looks at the writers still open.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// The position up to which the log is settled: the last position handed out when this is
/// called, after every transaction that was then writing to `events` has ended.
///
/// # Errors
/// [`QueryError::Unsettled`] if one stays open longer than [`WRITER_WAIT`].
pub async fn settled(conn: &mut PgConnection) -> Result<i64, QueryError> {
    settled_within(conn, WRITER_WAIT).await
}

/// [`settled`], waiting at most `wait` for the writers.
///
/// # Errors
/// [`QueryError::Unsettled`] if one stays open longer than `wait`.
pub async fn settled_within(conn: &mut PgConnection, wait: Duration) -> Result<i64, QueryError> {
    // First the last position, then the writers: a position drawn before the first query was
    // drawn under a lock still held by the second, unless its transaction has ended.
    let last: Option<i64> = sqlx::query_scalar(
        "select pg_sequence_last_value(pg_get_serial_sequence('events', 'position')::regclass)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let writers: Vec<String> = sqlx::query_scalar(
        "select virtualtransaction from pg_locks
          where locktype = 'relation' and relation = 'events'::regclass
            and mode = 'RowExclusiveLock' and granted and pid is distinct from pg_backend_pid()",
    )
    .fetch_all(&mut *conn)
    .await?;
    if !writers.is_empty() {
        wait_for_writers(conn, &writers, wait).await?;
    }
    Ok(last.unwrap_or(0))
}

async fn wait_for_writers(
    conn: &mut PgConnection,
    writers: &[String],
    wait: Duration,
) -> Result<(), QueryError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    loop {
        let open: Vec<i32> = sqlx::query_scalar(
            "select coalesce(pid, 0) from pg_locks
              where locktype = 'relation' and relation = 'events'::regclass
                and mode = 'RowExclusiveLock' and virtualtransaction = any($1)",
        )
        .bind(writers)
        .fetch_all(&mut *conn)
        .await?;
        if open.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                pids = ?open,
                wait_ms = wait.as_millis() as u64,
                "transactions writing to the event log stayed open; refusing a read that could skip their events"
            );
            return Err(QueryError::Unsettled {
                writers: open.len(),
                waited: wait,
            });
        }
        tokio::time::sleep(pause).await;
        pause = next_pause(pause);
    }
}

/// Pauses double from a millisecond up to [`MAX_PAUSE`].
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_a_cap() {
        let mut pause = Duration::from_millis(1);
        let mut seen = Vec::new();
        for _ in 0..7 {
            pause = next_pause(pause);
            seen.push(pause.as_millis());
        }
        assert_eq!(seen, [2, 4, 8, 16, 20, 20, 20]);
    }
}
