//! Positions bounding a time range: a bisection over positions, checked against the BRIN index
//! over `(recorded_at, position)`, with planner settings that keep that check cheap.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::QueryError;

/// Bounds `(first, last)` on the positions of the events recorded in `[from, to)`, at most
/// `horizon`.
///
/// Pages go in position order, but with a time filter the planner either walks the primary key
/// from the start of the log up to the range (it assumes matches spread evenly) or sorts the
/// whole range. Bounded positions turn either into a walk over the range itself. Times follow
/// positions only roughly (`recorded_at` is the appending process's clock, read just before
/// its insert), so the bounds come in two steps: a binary search over positions (about 20
/// primary-key probes) guesses where the range starts and ends, then the BRIN index over
/// `(recorded_at, position)` looks for events of the range beyond the guesses, reading only the
/// few blocks where both can lie. The bounds are exact however disordered the times are; only
/// the cost grows with the disorder.
pub(super) async fn positions(
    conn: &mut PgConnection,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    horizon: i64,
) -> Result<(i64, i64), QueryError> {
    // Guesses: `below`, a position recorded before the range (0: none); `above`, one recorded
    // after it (beyond the horizon: none).
    let (below, above): (Option<i64>, Option<i64>) = guesses(from, to, horizon)
        .build_query_as()
        .persistent(false)
        .fetch_one(&mut *conn)
        .await?;
    let below = below.unwrap_or(0);
    let above = above.unwrap_or(horizon + 1);
    if below == 0 && above > horizon {
        return Ok((0, horizon));
    }

    // The planner cannot tell that this BRIN scan reads a handful of blocks (it takes the two
    // conditions for independent) and would walk the primary key over half the log instead:
    // bitmap scans only, and none of the start-up costs of JIT and parallel workers that its
    // cost estimate would call for, in this one transaction.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(BITMAP_SCANS_ONLY).execute(&mut *tx).await?;
    let (earlier, later): (Option<i64>, Option<i64>) = stragglers(from, to, below, above)
        .build_query_as()
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let first = earlier.unwrap_or(below);
    let last = if above > horizon {
        horizon
    } else {
        later.unwrap_or(above)
    };
    Ok((first, last))
}

/// Planner settings for the rest of the transaction: bitmap scans only, no JIT, no parallel
/// workers.
const BITMAP_SCANS_ONLY: &str = "select set_config('enable_seqscan', 'off', true),
        set_config('enable_indexscan', 'off', true),
        set_config('enable_indexonlyscan', 'off', true),
        set_config('max_parallel_workers_per_gather', '0', true),
        set_config('jit', 'off', true)";

/// `select (below, above)`: the bisections' guesses at a position recorded before `from` and
/// one recorded at or after `to`.
fn guesses(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    horizon: i64,
) -> QueryBuilder<'static, Postgres> {
    let mut guess = QueryBuilder::new("with recursive ");
    push_crossing_search(&mut guess, "before_range", from, horizon);
    guess.push(", ");
    push_crossing_search(&mut guess, "after_range", to, horizon);
    guess.push(" select (select max(lo) from before_range), (select min(hi) from after_range)");
    guess
}

/// `select (earlier, later)`: the first event of the range below `below` and the last above
/// `above`, if any.
fn stragglers(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    below: i64,
    above: i64,
) -> QueryBuilder<'static, Postgres> {
    let mut check = QueryBuilder::new("select (select min(position) from events where true");
    push_time_range(&mut check, from, to);
    check.push(" and position < ").push_bind(below);
    check.push("), (select max(position) from events where true");
    push_time_range(&mut check, from, to);
    check.push(" and position > ").push_bind(above);
    check.push(")");
    check
}

/// A recursive CTE `name(lo, hi)` bisecting `0..=horizon + 1` for where the log crosses
/// `instant`: the event at or before `lo` was recorded before it, the one at or before `hi` at
/// or after it, as far as the probes saw. Without an instant, no rows.
fn push_crossing_search(
    query: &mut QueryBuilder<'_, Postgres>,
    name: &str,
    instant: Option<DateTime<Utc>>,
    horizon: i64,
) {
    query.push(format!("{name}(lo, hi) as (select 0::bigint, "));
    query.push_bind(horizon + 1);
    query.push("::bigint where ");
    query.push_bind(instant);
    query.push(
        "::timestamptz is not null
         union all
         select case when probe.at is null or probe.at < ",
    );
    query.push_bind(instant);
    query.push(
        " then (s.lo + s.hi) / 2 else s.lo end,
                case when probe.at is null or probe.at < ",
    );
    query.push_bind(instant);
    query.push(format!(
        " then s.hi else (s.lo + s.hi) / 2 end
           from {name} s
           left join lateral (select e.recorded_at as at from events e
                               where e.position <= (s.lo + s.hi) / 2
                               order by e.position desc limit 1) probe on true
          where s.hi - s.lo > 1)"
    ));
}

fn push_time_range(
    query: &mut QueryBuilder<'_, Postgres>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) {
    if let Some(from) = from {
        query.push(" and recorded_at >= ").push_bind(from);
    }
    if let Some(to) = to {
        query.push(" and recorded_at < ").push_bind(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bisections_run_in_one_statement_and_skip_an_open_end() {
        let sql = guesses(None, Some(Utc::now()), 10).into_sql();
        assert!(sql.starts_with("with recursive before_range(lo, hi) as"));
        assert!(sql.contains(", after_range(lo, hi) as"));
        assert!(sql.ends_with(
            " select (select max(lo) from before_range), (select min(hi) from after_range)"
        ));
        // horizon + 1, instant, instant, instant, for each of the two searches.
        assert_eq!(sql.matches('$').count(), 8);
    }

    #[test]
    fn the_straggler_check_looks_beyond_both_guesses() {
        let sql = stragglers(Some(Utc::now()), None, 5, 9).into_sql();
        assert_eq!(
            sql,
            "select (select min(position) from events where true and recorded_at >= $1 \
             and position < $2), (select max(position) from events where true \
             and recorded_at >= $3 and position > $4)"
        );
    }
}
