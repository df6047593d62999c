//! Subscriptions against a real PostgreSQL: exactly-once effects, crash recovery, single active
//! runner with takeover, parking of poison events, resets, batch handlers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idp_events::backoff::Backoff;
use idp_events::subscription::{
    self, BatchHandler, Handler, HandlerError, RunnerState, Subscription, SubscriptionOptions,
};
use idp_events::{Append, EventStore, NewEvent, RecordedEvent};
use idp_testkit::log::{await_visible, catch_up, last_committed};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A read model: per stream, the sum of `n` and how many events were applied, plus which
/// runner applied the last one.
#[derive(Clone)]
struct Ledger {
    table: &'static str,
    runner: &'static str,
    /// Events (by `n`) that fail, with how many times they fail before succeeding
    /// (`u32::MAX` = always).
    failures: Arc<Mutex<HashMap<i64, u32>>>,
    /// If set, handling the event with this `n` blocks until the test ends.
    hang_on: Option<i64>,
    reached: Arc<tokio::sync::Notify>,
}

impl Ledger {
    fn new(table: &'static str, runner: &'static str) -> Self {
        Self {
            table,
            runner,
            failures: Arc::default(),
            hang_on: None,
            reached: Arc::default(),
        }
    }

    async fn create(&self, pool: &PgPool) {
        sqlx::query(&format!(
            "create table {} (stream_id text primary key, total bigint not null, applied bigint not null, runner text not null)",
            self.table
        ))
        .execute(pool)
        .await
        .unwrap();
    }
}

impl Handler for Ledger {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let n = event.data["n"].as_i64().unwrap_or_default();
        if let Some(left) = self.failures.lock().unwrap().get_mut(&n)
            && *left > 0
        {
            *left = left.saturating_sub(if *left == u32::MAX { 0 } else { 1 });
            return Err(HandlerError::msg(format!("cannot apply n={n}")));
        }
        sqlx::query(&format!(
            "insert into {t} (stream_id, total, applied, runner) values ($1, $2, 1, $3)
             on conflict (stream_id) do update
                set total = {t}.total + excluded.total, applied = {t}.applied + 1, runner = excluded.runner",
            t = self.table
        ))
        .bind(&event.stream_id)
        .bind(n)
        .bind(self.runner)
        .execute(&mut *conn)
        .await?;
        if self.hang_on == Some(n) {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(&format!("delete from {}", self.table))
            .execute(conn)
            .await?;
        Ok(())
    }
}

fn fast_options() -> SubscriptionOptions {
    SubscriptionOptions {
        batch_size: 50,
        poll_interval: Duration::from_millis(200),
        standby_interval: Duration::from_millis(50),
        max_attempts: 3,
        retry: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    }
}

async fn append_numbers(store: &EventStore, streams: i64, per_stream: i64) {
    for s in 0..streams {
        let events =
            (0..per_stream).map(|i| NewEvent::new("Counted", json!({ "n": s * 1000 + i })));
        store
            .append(Append::to(format!("ledger-{s}")).events(events))
            .await
            .unwrap();
    }
}

async fn model(pool: &PgPool, table: &str) -> Vec<(String, i64, i64)> {
    sqlx::query_as(&format!(
        "select stream_id, total, applied from {table} order by stream_id"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn expected_model(pool: &PgPool) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "select stream_id, sum((data->>'n')::bigint)::bigint, count(*) from events
          where event_type = 'Counted' group by stream_id order by stream_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_for(state: &mut watch::Receiver<RunnerState>, wanted: RunnerState) {
    tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| *s == wanted))
        .await
        .unwrap_or_else(|_| panic!("runner never reached {wanted:?}"))
        .unwrap();
}

async fn wait_until_caught_up(pool: &PgPool, name: &str, _store: &EventStore) {
    let head = last_committed(pool).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while subscription::checkpoint(pool, name).await.unwrap() != head {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the subscription caught up within 10 s");
}

async fn pool_with(opts: PgPoolOptions, conn: PgConnectOptions) -> PgPool {
    opts.max_connections(10).connect_with(conn).await.unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_runner_dropped_mid_batch_resumes_from_its_checkpoint_and_matches_a_full_replay(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool_with(opts, conn).await;
    let store = EventStore::new(pool.clone());
    append_numbers(&store, 8, 40).await; // 320 events, batches of 50

    let mut hanging = Ledger::new("ledger", "first");
    hanging.create(&pool).await;
    hanging.hang_on = Some(5 * 1000 + 10); // inside the 5th or 6th batch
    let reached = Arc::clone(&hanging.reached);
    let sub = Subscription::new("ledger", hanging, &store).with_options(fast_options());
    let task = tokio::spawn(async move { sub.run(CancellationToken::new()).await });
    tokio::time::timeout(Duration::from_secs(10), reached.notified())
        .await
        .unwrap();
    task.abort(); // the connection drops mid-transaction, like a killed process
    let _ = task.await;

    let at_crash = subscription::checkpoint(&pool, "ledger").await.unwrap();
    let applied: i64 = model(&pool, "ledger").await.iter().map(|r| r.2).sum();
    let covered: i64 = sqlx::query_scalar(
        "select count(*) from events where (transaction_id, position) <= (($1::bigint)::text::xid8, $2)",
    )
    .bind(at_crash.transaction_id)
    .bind(at_crash.position)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(covered > 0 && covered < 320, "killed mid-way: {covered}");
    assert_eq!(
        applied, covered,
        "the read model holds exactly what the checkpoint covers"
    );

    let resumed = Subscription::new("ledger", Ledger::new("ledger", "second"), &store)
        .with_options(fast_options());
    await_visible(&store).await;
    assert_eq!(
        catch_up(&resumed).await,
        u64::try_from(320 - covered).unwrap()
    );
    assert_eq!(model(&pool, "ledger").await, expected_model(&pool).await);

    // A full replay from zero into a fresh model agrees.
    let replay = Ledger::new("ledger_replay", "replay");
    replay.create(&pool).await;
    let replayed = Subscription::new("ledger-replay", replay, &store).with_options(fast_options());
    assert_eq!(catch_up(&replayed).await, 320);
    assert_eq!(
        model(&pool, "ledger_replay").await,
        model(&pool, "ledger").await
    );

    // Rebuilding (reset, replay) twice changes nothing.
    for _ in 0..2 {
        subscription::reset(&pool, "ledger", resumed.handler())
            .await
            .unwrap();
        assert!(model(&pool, "ledger").await.is_empty());
        assert_eq!(catch_up(&resumed).await, 320);
        assert_eq!(model(&pool, "ledger").await, expected_model(&pool).await);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn of_two_runners_with_one_name_one_works_and_the_other_takes_over_when_it_stops(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool_with(opts, conn).await;
    let store = EventStore::new(pool.clone());
    let a = Ledger::new("ledger", "a");
    a.create(&pool).await;
    let b = Ledger::new("ledger", "b");

    let sub_a = Arc::new(Subscription::new("ledger", a, &store).with_options(fast_options()));
    let mut state_a = sub_a.state();
    let stop_a = CancellationToken::new();
    let run_a = tokio::spawn({
        let (sub, stop) = (Arc::clone(&sub_a), stop_a.clone());
        async move { sub.run(stop).await }
    });
    wait_for(&mut state_a, RunnerState::Active).await;

    let sub_b = Arc::new(Subscription::new("ledger", b, &store).with_options(fast_options()));
    let mut state_b = sub_b.state();
    let stop_b = CancellationToken::new();
    let run_b = tokio::spawn({
        let (sub, stop) = (Arc::clone(&sub_b), stop_b.clone());
        async move { sub.run(stop).await }
    });
    wait_for(&mut state_b, RunnerState::Standby).await;

    append_numbers(&store, 3, 30).await;
    wait_until_caught_up(&pool, "ledger", &store).await;
    let runners: Vec<String> = sqlx::query_scalar("select distinct runner from ledger")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(runners, ["a"], "only the active runner worked");
    assert_eq!(*state_b.borrow(), RunnerState::Standby);

    stop_a.cancel();
    run_a.await.unwrap();
    assert_eq!(*state_a.borrow(), RunnerState::Stopped);
    wait_for(&mut state_b, RunnerState::Active).await;

    let more = (0..20).map(|i| NewEvent::new("Counted", json!({ "n": 9000 + i })));
    store
        .append(Append::to("ledger-late").events(more))
        .await
        .unwrap();
    wait_until_caught_up(&pool, "ledger", &store).await;
    let late: (i64, String) =
        sqlx::query_as("select applied, runner from ledger where stream_id = 'ledger-late'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(late, (20, "b".to_owned()), "the standby took over");
    assert_eq!(
        model(&pool, "ledger").await,
        expected_model(&pool).await,
        "nothing applied twice"
    );

    stop_b.cancel();
    run_b.await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn a_poison_event_is_parked_with_its_error_and_the_subscription_moves_on(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    append_numbers(&store, 1, 10).await;
    await_visible(&store).await;
    let ledger = Ledger::new("ledger", "a");
    ledger.create(&pool).await;
    ledger.failures.lock().unwrap().insert(4, u32::MAX); // always fails
    ledger.failures.lock().unwrap().insert(7, 2); // fails twice, then works (3 attempts allowed)
    let sub = Subscription::new("ledger", ledger, &store).with_options(fast_options());
    assert_eq!(catch_up(&sub).await, 10);

    let parked: Vec<(i64, i32, String)> = sqlx::query_as(
        "select position, attempts, error from failed_events where subscription = 'ledger'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let poison = &store.read_stream("ledger-0", 5).await.unwrap()[0];
    assert_eq!(
        parked,
        [(poison.position, 3, "cannot apply n=4".to_owned())]
    );
    let (total, applied): (i64, i64) = sqlx::query_as("select total, applied from ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (total, applied),
        ((0..10).sum::<i64>() - 4, 9),
        "every other event applied once"
    );
    assert_eq!(
        subscription::checkpoint(&pool, "ledger").await.unwrap(),
        last_committed(&pool).await
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_running_subscription_is_woken_by_appends_and_replays_after_a_reset(
    opts: PgPoolOptions,
    conn: PgConnectOptions,
) {
    let pool = pool_with(opts, conn).await;
    let store = EventStore::new(pool.clone());
    let ledger = Ledger::new("ledger", "a");
    ledger.create(&pool).await;
    let options = SubscriptionOptions {
        // Polling alone would take a minute: only the notification can wake it in time.
        poll_interval: Duration::from_secs(60),
        ..fast_options()
    };
    let sub = Arc::new(Subscription::new("ledger", ledger, &store).with_options(options));
    let mut state = sub.state();
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let (sub, stop) = (Arc::clone(&sub), stop.clone());
        async move { sub.run(stop).await }
    });
    wait_for(&mut state, RunnerState::Active).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // let it settle into waiting

    append_numbers(&store, 2, 5).await;
    wait_until_caught_up(&pool, "ledger", &store).await;
    assert_eq!(model(&pool, "ledger").await, expected_model(&pool).await);

    subscription::reset(&pool, "ledger", sub.handler())
        .await
        .unwrap();
    store
        .append(Append::to("ledger-9").event(NewEvent::new("Counted", json!({"n": 1}))))
        .await
        .unwrap();
    wait_until_caught_up(&pool, "ledger", &store).await;
    assert_eq!(
        model(&pool, "ledger").await,
        expected_model(&pool).await,
        "replayed from the start after the reset"
    );

    stop.cancel();
    run.await.unwrap();
}

/// A batch handler: gathers `n` of every `Counted` event and inserts a batch's numbers in one
/// statement; the number `fail_on.0` fails `fail_on.1` times while it is gathered.
struct Numbers {
    batch: subscription::Batch<i64>,
    fail_on: Mutex<(i64, u32)>,
    /// The numbers of every batch written, in order.
    written: Arc<Mutex<Vec<Vec<i64>>>>,
}

impl BatchHandler for Numbers {
    type Item = i64;

    fn batch(&self) -> &subscription::Batch<i64> {
        &self.batch
    }

    fn gather(&self, event: &RecordedEvent, items: &mut Vec<i64>) -> Result<(), HandlerError> {
        if event.event_type != "Counted" {
            return Ok(());
        }
        let n = event.data["n"].as_i64().unwrap_or_default();
        items.push(n);
        let mut fail_on = self.fail_on.lock().unwrap();
        if fail_on.0 == n && fail_on.1 > 0 {
            fail_on.1 -= 1;
            return Err(HandlerError::msg(format!("cannot gather n={n} yet")));
        }
        Ok(())
    }

    async fn write(&self, conn: &mut PgConnection, items: Vec<i64>) -> Result<(), HandlerError> {
        sqlx::query("insert into numbers (n) select * from unnest($1::bigint[])")
            .bind(&items)
            .execute(conn)
            .await?;
        self.written.lock().unwrap().push(items);
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("delete from numbers").execute(conn).await?;
        Ok(())
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_handler_writes_each_batch_once_and_a_redone_batch_starts_empty(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    append_numbers(&store, 1, 120).await;
    let ignored = (0..50).map(|_| NewEvent::new("Ignored", json!({})));
    store
        .append(Append::to("other-1").events(ignored))
        .await
        .unwrap();
    await_visible(&store).await;
    sqlx::query("create table numbers (n bigint primary key)")
        .execute(&pool)
        .await
        .unwrap();
    let written = Arc::new(Mutex::new(Vec::new()));
    let numbers = Numbers {
        batch: subscription::Batch::default(),
        // In the middle of the second batch (its first 20 events are gathered), and again
        // when it comes first.
        fail_on: Mutex::new((70, 2)),
        written: Arc::clone(&written),
    };
    let sub = Subscription::new("numbers", numbers, &store).with_options(fast_options());
    assert_eq!(catch_up(&sub).await, 170);

    // A primary key on `n`: an item written twice would have failed the batch.
    let stored: Vec<i64> = sqlx::query_scalar("select n from numbers order by n")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, (0..120).collect::<Vec<_>>());
    let batches = written.lock().unwrap().clone();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        [50, 20, 1, 29, 20],
        "the prefix before the failure, the failing event alone, then the rest; \
         the last batch, of ignored events only, writes nothing"
    );
    assert!(
        batches.concat().windows(2).all(|w| w[0] < w[1]),
        "{batches:?}"
    );
    let parked: i64 = sqlx::query_scalar("select count(*) from failed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "the failing event succeeded on its retry");

    subscription::reset(&pool, "numbers", sub.handler())
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("select count(*) from numbers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "a reset empties the read model");
}
