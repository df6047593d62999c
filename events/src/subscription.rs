//! Subscriptions: named cursors over the log that keep read models current.
//!
//! A [`Subscription`] feeds events, in commit-safe order, to a [`Handler`]. Guarantees:
//!
//! - **Exactly-once effect**: a batch's read-model writes and the checkpoint that covers them
//!   commit in one transaction; a crash mid-batch rolls both back and the batch is redone.
//! - **Single active runner**: a runner holds a session advisory lock named after the
//!   subscription on the connection it works on, so of N processes one works and the others
//!   stand by; if the active one dies its connection closes, the lock is freed and a standby
//!   takes over within its standby interval.
//! - **No stuck world**: an event whose handler fails `max_attempts` times (with backoff between
//!   tries) is parked in `failed_events` with its error, and the subscription moves on.
//! - **Wake-up**: LISTEN on the append channel, with polling as the fallback (a notification is a
//!   hint; the cursor query is the truth).
//! - **Batches**: a [`BatchHandler`] turns each event into items and writes a batch's items
//!   together before its checkpoint commits; the subscription keeps the items of exactly one
//!   batch transaction, so a redone batch starts empty.
//! - **Rebuild**: [`reset`] empties the read model and rewinds the checkpoint in one transaction;
//!   whichever runner is active then replays from the start, because checkpoints are written
//!   compare-and-set and a runner that finds its checkpoint moved reloads it.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::ReadError;
use crate::event::{Cursor, RecordedEvent};
use crate::store::{Codec, EventStore, NOTIFY_CHANNEL, Opening, read_all_in};

/// First delay before looking again for an announced but not yet visible event.
const RECHECK_MIN: Duration = Duration::from_millis(2);

/// Advisory lock class of subscriptions (the second key is `hashtext(name)`).
const LOCK_CLASS: i32 = 1_768_974_882;

/// Why a handler could not apply an event. The subscription retries, then parks the event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(Box<dyn std::error::Error + Send + Sync>);

impl HandlerError {
    /// A handler error with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self(message.into().into())
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(err: sqlx::Error) -> Self {
        Self(Box::new(err))
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(err: serde_json::Error) -> Self {
        Self(Box::new(err))
    }
}

/// A read model kept by a subscription.
pub trait Handler: Send + Sync + 'static {
    /// Whether the handler reads the personal values of events' metadata (the client address
    /// and user agent). A handler that does not gets them as stored, sealed, and spares the
    /// subscription opening two values of nearly every event.
    const OPENS_METADATA: bool = true;

    /// Applies one event. `conn` is inside the batch's transaction: write the read model
    /// through it so the writes commit with the checkpoint.
    fn handle(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Empties the read model, before a replay from the start. Runs in the reset transaction.
    fn reset(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called when a batch transaction begins, including when a batch is redone after a
    /// failure: a handler that buffers work per batch forgets it here.
    fn begin_batch(&self) {}

    /// Called after every event of a batch was handled and before the batch's checkpoint
    /// commits, for work that must be done before the checkpoint moves (publishing to a
    /// broker, set-based writes of buffered rows). An error rolls the batch back and ends
    /// the session; the runner reconnects with backoff and redoes the batch.
    fn before_commit(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = conn;
        std::future::ready(Ok(()))
    }
}

/// The items a [`BatchHandler`] gathered in the batch in progress. A handler keeps one as a
/// field and hands it out from [`BatchHandler::batch`]; the subscription fills and empties it.
#[derive(Debug)]
pub struct Batch<T>(Mutex<Vec<T>>);

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T> Batch<T> {
    fn items(&self) -> MutexGuard<'_, Vec<T>> {
        // A panic while holding the lock leaves only a buffer behind, which the next batch
        // clears anyway.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.items())
    }
}

/// A read model (or an outbox) that is written a batch at a time: each event is turned into
/// items as the batch is read, and the batch's items are written together just before its
/// checkpoint commits (one set-based statement, one round of broker confirms).
///
/// Every `BatchHandler` is a [`Handler`]. The subscription hands [`BatchHandler::write`] the
/// items of exactly one batch transaction: a batch that is redone after a failure, or after
/// its prefix was kept, starts empty again.
pub trait BatchHandler: Send + Sync + 'static {
    /// What one event contributes to a batch.
    type Item: Send + 'static;

    /// As [`Handler::OPENS_METADATA`].
    const OPENS_METADATA: bool = true;

    /// Where the items of the batch in progress are kept.
    fn batch(&self) -> &Batch<Self::Item>;

    /// Adds what `event` contributes to the batch to `items` (often nothing). An error fails
    /// the event like [`Handler::handle`] does: it is retried, then parked.
    fn gather(
        &self,
        event: &RecordedEvent,
        items: &mut Vec<Self::Item>,
    ) -> Result<(), HandlerError>;

    /// Writes the batch's items (in log order, never none) through `conn`, inside the batch's
    /// transaction. An error rolls the batch back, as [`Handler::before_commit`] says.
    fn write(
        &self,
        conn: &mut PgConnection,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Empties the read model, before a replay from the start ([`Handler::reset`]).
    fn reset(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<B: BatchHandler> Handler for B {
    const OPENS_METADATA: bool = <B as BatchHandler>::OPENS_METADATA;

    fn handle(
        &self,
        _conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let gathered = self.gather(event, &mut self.batch().items());
        std::future::ready(gathered)
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        drop(self.batch().take());
        BatchHandler::reset(self, conn).await
    }

    fn begin_batch(&self) {
        self.batch().items().clear();
    }

    async fn before_commit(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        let items = self.batch().take();
        if items.is_empty() {
            return Ok(());
        }
        self.write(conn, items).await
    }
}

/// Tuning of a subscription runner.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// Events per batch (and per transaction).
    pub batch_size: i64,
    /// How long to wait for a notification before looking anyway.
    pub poll_interval: Duration,
    /// How often a standby runner tries to become active.
    pub standby_interval: Duration,
    /// Tries per event before it is parked.
    pub max_attempts: u32,
    /// Backoff between tries of a failing event, and between reconnects.
    pub retry: Backoff,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            standby_interval: Duration::from_secs(1),
            max_attempts: 5,
            retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// Where a runner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Not connected yet, or reconnecting after an error.
    Starting,
    /// Waiting for the active runner of this name to go away.
    Standby,
    /// Holding the lock and processing events.
    Active,
    /// Stopped after shutdown.
    Stopped,
}

/// Errors that interrupt a runner's session (it reconnects after them).
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The database failed.
    #[error("database error in subscription: {0}")]
    Database(#[from] sqlx::Error),
    /// Resetting the read model failed.
    #[error("the read model could not be reset: {0}")]
    Reset(HandlerError),
    /// The handler could not finish a batch (see [`Handler::before_commit`]).
    #[error("the batch could not be finished: {0}")]
    Batch(HandlerError),
    /// The keys of the events' personal values could not be read.
    #[error("personal data keys are unavailable: {0}")]
    Keys(crate::privacy::SubjectKeysError),
}

impl From<ReadError> for SubscriptionError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Database(e) => Self::Database(e),
            ReadError::Keys(e) => Self::Keys(e),
        }
    }
}

/// A batch being read in the background ([`Subscription::prefetch`]).
type Prefetch = tokio::task::JoinHandle<Result<Vec<RecordedEvent>, ReadError>>;

/// A named subscription with its handler.
#[derive(Debug)]
pub struct Subscription<H> {
    name: String,
    handler: Arc<H>,
    pool: PgPool,
    codec: Arc<Codec>,
    options: SubscriptionOptions,
    state: watch::Sender<RunnerState>,
}

impl<H: Handler> Subscription<H> {
    /// What this subscription opens of the events it reads.
    const OPENING: Opening = if H::OPENS_METADATA {
        Opening::All
    } else {
        Opening::Data
    };

    /// A subscription named `name` over `store`'s log, with default options.
    pub fn new(name: impl Into<String>, handler: H, store: &EventStore) -> Self {
        Self {
            name: name.into(),
            handler: Arc::new(handler),
            pool: store.pool().clone(),
            codec: store.shared_codec(),
            options: SubscriptionOptions::default(),
            state: watch::Sender::new(RunnerState::Starting),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Follows the runner's state.
    pub fn state(&self) -> watch::Receiver<RunnerState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` is cancelled: waits to become the active runner, then processes
    /// events as they are committed. Database errors end the session; the runner reconnects
    /// with backoff. A batch in progress at shutdown is finished first.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut failures = 0_u32;
        while !shutdown.is_cancelled() {
            self.state.send_replace(RunnerState::Starting);
            match self.session(&shutdown).await {
                Ok(()) => break,
                Err(err) => {
                    let got_going = matches!(
                        *self.state.borrow(),
                        RunnerState::Active | RunnerState::Standby
                    );
                    failures = failures_after(failures, got_going);
                    self.set_active(false);
                    tracing::warn!(subscription = %self.name, error = %err, "subscription interrupted; reconnecting");
                    let delay = self.options.retry.delay(failures);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.set_active(false);
        self.state.send_replace(RunnerState::Stopped);
    }

    /// Processes everything committed so far and returns how many events it handled, or
    /// `None` without doing anything if another runner of this name is active (that one does
    /// the work). Used by rebuilds and tests.
    pub async fn catch_up(&self) -> Result<Option<u64>, SubscriptionError> {
        let mut conn = self.pool.acquire().await?.detach();
        if !try_lock(&mut conn, &self.name).await? {
            let _ = conn.close().await;
            return Ok(None);
        }
        let result = self.drain(&mut conn).await;
        let _ = conn.close().await;
        result.map(Some)
    }

    /// Handles batches until none is left. While one batch is handled, the next is read and
    /// opened on another connection (it starts where the batch ends), so reading and opening
    /// overlap the handler's writes; a prefetched batch that does not start where the
    /// checkpoint ended up (a reset moved it) is dropped and read again.
    async fn drain(&self, conn: &mut PgConnection) -> Result<u64, SubscriptionError> {
        let never = CancellationToken::new();
        let mut cursor = load_checkpoint(conn, &self.name).await?;
        let mut handled = 0_u64;
        let mut prefetched: Option<(Cursor, Prefetch)> = None;
        loop {
            let batch = match prefetched.take() {
                Some((from, next)) if from == cursor => match next.await {
                    Ok(read) => read?,
                    Err(_) => self.read_batch(conn, cursor).await?,
                },
                _ => self.read_batch(conn, cursor).await?,
            };
            let Some(end) = batch.last().map(RecordedEvent::cursor) else {
                return Ok(handled);
            };
            prefetched = Some((end, self.prefetch(end)));
            handled += batch.len() as u64;
            cursor = self.process_batch(conn, cursor, batch, &never).await?;
        }
    }

    async fn read_batch(
        &self,
        conn: &mut PgConnection,
        after: Cursor,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        read_all_in(
            conn,
            &self.codec,
            after,
            self.options.batch_size,
            Self::OPENING,
        )
        .await
    }

    /// Reads the batch after `after` on a connection of the pool, in the background.
    fn prefetch(&self, after: Cursor) -> Prefetch {
        let (pool, codec, limit) = (
            self.pool.clone(),
            self.codec.clone(),
            self.options.batch_size,
        );
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.map_err(ReadError::Database)?;
            read_all_in(&mut conn, &codec, after, limit, Self::OPENING).await
        })
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), SubscriptionError> {
        let mut conn = self.pool.acquire().await?.detach();
        let mut announced = false;
        loop {
            if try_lock(&mut conn, &self.name).await? {
                break;
            }
            if !announced {
                tracing::info!(subscription = %self.name, "another runner is active; standing by");
                self.state.send_replace(RunnerState::Standby);
                announced = true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.options.standby_interval) => {}
            }
        }

        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let mut cursor = load_checkpoint(&mut conn, &self.name).await?;
        tracing::info!(subscription = %self.name, position = cursor.position, "subscription active");
        self.set_active(true);
        self.state.send_replace(RunnerState::Active);

        // A notification names the last position appended. If that event is not visible yet
        // (an older transaction, possibly in another database of the cluster, is still open),
        // look again soon instead of waiting for the next notification or poll.
        let mut announced_position = 0_i64;
        let mut seen_position = cursor.position;
        let mut recheck = RECHECK_MIN;
        while !shutdown.is_cancelled() {
            let batch = self.read_batch(&mut conn, cursor).await?;
            if let Some(max) = batch.iter().map(|e| e.position).max() {
                seen_position = seen_position.max(max);
                recheck = RECHECK_MIN;
                cursor = self
                    .process_batch(&mut conn, cursor, batch, shutdown)
                    .await?;
                continue;
            }
            let wait = if announced_position > seen_position {
                let wait = recheck;
                recheck = (recheck * 2).min(self.options.poll_interval);
                wait
            } else {
                self.options.poll_interval
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                received = listener.recv() => match received {
                    Ok(note) => {
                        if let Ok(position) = note.payload().parse::<i64>() {
                            announced_position = announced_position.max(position);
                        }
                    }
                    Err(err) => {
                        tracing::debug!(subscription = %self.name, error = %err, "listener failed; polling");
                        tokio::time::sleep(self.options.poll_interval).await;
                    }
                },
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.set_active(false);
        let _ = conn.close().await;
        Ok(())
    }

    /// Handles `batch` (which follows `cursor`) and returns the cursor to continue from.
    async fn process_batch(
        &self,
        conn: &mut PgConnection,
        cursor: Cursor,
        batch: Vec<RecordedEvent>,
        shutdown: &CancellationToken,
    ) -> Result<Cursor, SubscriptionError> {
        let mut from = cursor;
        let mut start = 0;
        let mut end = batch.len();
        while start < batch.len() {
            let pending = &batch[start..end];
            let mut tx = conn.begin().await?;
            self.handler.begin_batch();
            let mut failure = None;
            for (offset, event) in pending.iter().enumerate() {
                if let Err(err) = self.handler.handle(&mut tx, event).await {
                    failure = Some((offset, err));
                    break;
                }
            }
            match failure {
                None => {
                    if let Err(err) = self.handler.before_commit(&mut tx).await {
                        tx.rollback().await?;
                        return Err(SubscriptionError::Batch(err));
                    }
                    let last = pending.last().map_or(from, RecordedEvent::cursor);
                    let now = self.commit(tx, from, last, pending.len()).await?;
                    if now != last {
                        return Ok(now); // a reset moved the checkpoint underneath us
                    }
                    from = now;
                    start = end;
                    end = batch.len();
                }
                Some((0, err)) => {
                    tx.rollback().await?;
                    let failing = &pending[0];
                    match self
                        .retry_or_park(conn, from, failing, err, shutdown)
                        .await?
                    {
                        Some(next) if next == failing.cursor() => from = next,
                        Some(next) => return Ok(next), // reset underneath us
                        None => return Ok(from),       // shutting down
                    }
                    start += 1;
                    end = batch.len();
                }
                // Keep the work before the failing event: redo and commit that prefix alone,
                // then the failing event comes first and is retried on its own.
                Some((offset, _)) => {
                    tx.rollback().await?;
                    end = start + offset;
                }
            }
        }
        Ok(from)
    }

    /// Retries `event` until it succeeds or runs out of attempts, then parks it. Returns the
    /// cursor after it, or `None` if shutdown interrupted the retries.
    async fn retry_or_park(
        &self,
        conn: &mut PgConnection,
        from: Cursor,
        event: &RecordedEvent,
        first_error: HandlerError,
        shutdown: &CancellationToken,
    ) -> Result<Option<Cursor>, SubscriptionError> {
        let mut attempts = 1_u32;
        let mut last_error = first_error;
        while attempts < self.options.max_attempts {
            tracing::warn!(
                subscription = %self.name, position = event.position, event.r#type = %event.event_type,
                attempt = attempts, error = %last_error, "handler failed; retrying"
            );
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(self.options.retry.delay(attempts)) => {}
            }
            let mut tx = conn.begin().await?;
            self.handler.begin_batch();
            match self.handler.handle(&mut tx, event).await {
                Ok(()) => {
                    if let Err(err) = self.handler.before_commit(&mut tx).await {
                        tx.rollback().await?;
                        return Err(SubscriptionError::Batch(err));
                    }
                    return Ok(Some(self.commit(tx, from, event.cursor(), 1).await?));
                }
                Err(err) => {
                    tx.rollback().await?;
                    attempts += 1;
                    last_error = err;
                }
            }
        }
        tracing::error!(
            subscription = %self.name, position = event.position, event.r#type = %event.event_type,
            attempts, error = %last_error, "event parked after repeated failures"
        );
        let mut tx = conn.begin().await?;
        sqlx::query(
            "insert into failed_events (subscription, position, event_id, event_type, attempts, error)
             values ($1, $2, $3, $4, $5, $6)
             on conflict (subscription, position) do update
                set attempts = excluded.attempts, error = excluded.error, failed_at = now()",
        )
        .bind(&self.name)
        .bind(event.position)
        .bind(event.event_id)
        .bind(&event.event_type)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(last_error.to_string())
        .execute(&mut *tx)
        .await?;
        metrics::counter!("idp_subscription_parked_total", "subscription" => self.name.clone())
            .increment(1);
        Ok(Some(self.commit(tx, from, event.cursor(), 0).await?))
    }

    /// Moves the checkpoint from `from` to `to` and commits. If the checkpoint is no longer at
    /// `from` (a reset happened), rolls back and returns the checkpoint as stored.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        from: Cursor,
        to: Cursor,
        handled: usize,
    ) -> Result<Cursor, SubscriptionError> {
        let moved = sqlx::query(
            "update subscription_checkpoints
                set transaction_id = ($4::bigint)::text::xid8, position = $5, updated_at = now()
              where name = $1 and transaction_id = ($2::bigint)::text::xid8 and position = $3",
        )
        .bind(&self.name)
        .bind(from.transaction_id)
        .bind(from.position)
        .bind(to.transaction_id)
        .bind(to.position)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            let conn = &mut *self.pool.acquire().await?;
            let stored = load_checkpoint(conn, &self.name).await?;
            tracing::info!(subscription = %self.name, position = stored.position, "checkpoint moved by a reset; continuing from it");
            return Ok(stored);
        }
        tx.commit().await?;
        metrics::counter!("idp_subscription_events_total", "subscription" => self.name.clone())
            .increment(handled as u64);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("idp_subscription_position", "subscription" => self.name.clone())
            .set(to.position as f64);
        Ok(to)
    }

    fn set_active(&self, active: bool) {
        metrics::gauge!("idp_subscription_active", "subscription" => self.name.clone())
            .set(if active { 1.0 } else { 0.0 });
    }
}

/// Empties `handler`'s read model, rewinds subscription `name` to the start and forgets its
/// parked events, in one transaction. The active runner (in this or another process) then
/// replays the log from the start.
pub async fn reset<H: Handler>(
    pool: &PgPool,
    name: &str,
    handler: &H,
) -> Result<(), SubscriptionError> {
    let mut tx = pool.begin().await?;
    ensure_checkpoint(&mut tx, name).await?;
    handler
        .reset(&mut tx)
        .await
        .map_err(SubscriptionError::Reset)?;
    sqlx::query(
        "update subscription_checkpoints set transaction_id = '0'::xid8, position = 0, updated_at = now()
          where name = $1",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from failed_events where subscription = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The stored checkpoint of subscription `name` (the start if it never ran).
pub async fn checkpoint(pool: &PgPool, name: &str) -> Result<Cursor, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    load_checkpoint(&mut conn, name).await
}

async fn ensure_checkpoint(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into subscription_checkpoints (name) values ($1) on conflict (name) do nothing",
    )
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

async fn load_checkpoint(conn: &mut PgConnection, name: &str) -> Result<Cursor, sqlx::Error> {
    ensure_checkpoint(conn, name).await?;
    let row = sqlx::query(
        "select transaction_id::text::bigint, position from subscription_checkpoints where name = $1",
    )
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(Cursor {
        transaction_id: row.try_get(0)?,
        position: row.try_get(1)?,
    })
}

/// The failure count after a session failed: a session that got going (it reached standby or
/// active) starts the count again, so the reconnect after an outage waits the shortest backoff
/// however many outages came before; failures in a row grow it.
fn failures_after(failures: u32, got_going: bool) -> u32 {
    if got_going {
        1
    } else {
        failures.saturating_add(1)
    }
}

async fn try_lock(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select pg_try_advisory_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(name)
        .fetch_one(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::failures_after;

    #[test]
    fn failures_in_a_row_grow_the_count_and_a_session_that_got_going_starts_it_again() {
        assert_eq!(failures_after(0, false), 1);
        assert_eq!(failures_after(3, false), 4);
        assert_eq!(failures_after(7, true), 1);
        assert_eq!(failures_after(u32::MAX, false), u32::MAX);
    }
}
