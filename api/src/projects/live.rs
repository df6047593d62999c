//! Following a project's stream live: one LISTEN connection per API process wakes every open
//! event stream, each of which then reads its own project's stream again.
//!
//! A notification is only a hint (it names no stream, and one may be lost while the listener
//! reconnects), so followers also look every [`POLL_INTERVAL`] and read by stream version, which
//! is the truth.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idp_events::project::{Project, ProjectEvent};
use idp_events::{EventStore, NOTIFY_CHANNEL, RecordedEvent};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a follower looks for new events when no notification woke it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// First pause before looking again whether an announced event is committed yet.
const RECHECK_MIN: Duration = Duration::from_millis(2);

/// Least time between two wake-ups of the followers.
const WAKE_SPACING: Duration = Duration::from_millis(10);

/// Pause before the listener connects again after losing its connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Wake-ups for followers of the log, shared by the whole process.
///
/// The listening task starts with the first follower, so a process nobody follows holds no
/// extra connection. [`LogWatch::shutdown`] ends the task and every follower (open event streams
/// would otherwise keep a graceful shutdown waiting forever).
#[derive(Debug, Clone)]
pub struct LogWatch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    /// Bumped on every notification; followers wait for it to change.
    wake: watch::Sender<u64>,
    started: AtomicBool,
    stop: CancellationToken,
}

impl LogWatch {
    /// A watch whose listener will use a connection of `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                wake: watch::Sender::new(0),
                started: AtomicBool::new(false),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// A receiver that changes whenever events may have been appended; starts the listener.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(listen(Arc::clone(&self.inner)));
        }
        self.inner.wake.subscribe()
    }

    /// Ends the listener and every follower.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }

    /// Cancelled once [`LogWatch::shutdown`] was called.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stop.clone()
    }
}

/// LISTENs on the store's channel and bumps the wake-up counter on every notification, until
/// shutdown or until the pool is closed. Connection losses are logged and retried.
async fn listen(inner: Arc<Inner>) {
    loop {
        let outcome = tokio::select! {
            () = inner.stop.cancelled() => return,
            outcome = listen_once(&inner) => outcome,
        };
        match outcome {
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(error = %error, "event log listener lost its connection; followers poll meanwhile");
            }
            Ok(()) => {}
        }
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

async fn listen_once(inner: &Inner) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(&inner.pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    // Notifications sent before LISTEN took effect were missed: have everyone look once.
    inner.wake_all();
    // Appends are announced as they are written, usually before their transaction commits, so
    // a follower woken at once would find nothing new and sleep until its next poll. Followers
    // are woken when the announced position is visible instead, looking again at growing
    // intervals (one query here rather than one per follower).
    let mut announced: Option<i64> = None;
    let mut recheck = RECHECK_MIN;
    let mut last_wake = tokio::time::Instant::now();
    loop {
        tokio::select! {
            received = listener.try_recv() => match received? {
                Some(note) => match note.payload().parse::<i64>() {
                    Ok(position) => {
                        announced = Some(announced.map_or(position, |a| a.max(position)));
                        // Busy logs announce every millisecond; followers need not read as often.
                        recheck = WAKE_SPACING.saturating_sub(last_wake.elapsed());
                    }
                    Err(_) => inner.wake_all(),
                },
                // The connection was lost and is back: notifications may have been lost.
                None => inner.wake_all(),
            },
            () = tokio::time::sleep(recheck), if announced.is_some() => {
                let position = announced.unwrap_or_default();
                let visible = is_visible(&inner.pool, position).await.unwrap_or(true);
                if visible || recheck >= POLL_INTERVAL {
                    // Visible, or never will be (rolled back) as far as waiting here goes:
                    // followers poll anyway.
                    inner.wake_all();
                    last_wake = tokio::time::Instant::now();
                    announced = None;
                } else {
                    recheck = (recheck * 2).clamp(RECHECK_MIN, POLL_INTERVAL);
                }
            }
        }
    }
}

/// Whether the event at `position` is committed (visible to a new statement).
async fn is_visible(pool: &PgPool, position: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from events where position = $1)")
        .bind(position)
        .fetch_one(pool)
        .await
}

impl Inner {
    fn wake_all(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A follower of one project's stream: hands out the events after a resume point, then waits
/// for more, and ends once everything read was handed out and the project is in a final status.
#[derive(Debug)]
pub struct Follower {
    store: EventStore,
    stream: String,
    wake: watch::Receiver<u64>,
    stop: CancellationToken,
    /// The project as folded from every event read so far.
    project: Project,
    /// The version of the last event read.
    version: i64,
    /// Read, not yet handed out.
    pending: VecDeque<RecordedEvent>,
}

impl Follower {
    /// A follower of the stream `stream` whose events so far are `history`, handing out those
    /// from index `resume_at` on. `wake` must have been subscribed before `history` was read, so
    /// that no append after the read goes unnoticed.
    pub fn new(
        store: EventStore,
        watch: &LogWatch,
        wake: watch::Receiver<u64>,
        project: Project,
        history: Vec<RecordedEvent>,
        resume_at: usize,
    ) -> Self {
        let version = history.last().map_or(0, |e| e.stream_version);
        Self {
            store,
            stream: idp_events::project::stream_id(project.id),
            wake,
            stop: watch.stopping(),
            project,
            version,
            pending: history.into_iter().skip(resume_at).collect(),
        }
    }

    /// The next event to hand out, or `None` when the stream should end: the project is in a
    /// final status and every event read was handed out, the process is shutting down, or the
    /// log cannot be read (the client resumes with `Last-Event-ID`).
    pub async fn next(&mut self) -> Option<RecordedEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.project.status.is_final() || self.stop.is_cancelled() {
                return None;
            }
            self.wait().await;
            if self.stop.is_cancelled() {
                return None;
            }
            match self.store.read_stream(&self.stream, self.version + 1).await {
                Ok(events) => self.take(events),
                Err(error) => {
                    tracing::warn!(error = %error, stream.id = %self.stream, "ending an event stream: the log cannot be read");
                    return None;
                }
            }
        }
    }

    /// Queues the events that continue the stream without a gap (a later version may commit
    /// before an earlier one; the earlier one is then read next time) and folds them in.
    fn take(&mut self, events: Vec<RecordedEvent>) {
        for event in events {
            if event.stream_version != self.version + 1 {
                break;
            }
            self.version = event.stream_version;
            if let Some(e) = ProjectEvent::from_recorded(&event) {
                self.project.apply(&e, event.recorded_at);
            }
            self.pending.push_back(event);
        }
    }

    /// Until a notification, the poll interval, or shutdown.
    async fn wait(&mut self) {
        tokio::select! {
            changed = self.wake.changed() => {
                if changed.is_err() {
                    // The listener is gone: fall back to polling alone.
                    tokio::select! {
                        () = tokio::time::sleep(POLL_INTERVAL) => {}
                        () = self.stop.cancelled() => {}
                    }
                }
            }
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = self.stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::Utc;
    use idp_events::project::ProjectStatus;
    use sqlx::postgres::PgPoolOptions;
    use uuid::Uuid;

    use super::*;

    fn recorded(version: i64, event: &ProjectEvent) -> RecordedEvent {
        let new = event.to_new_event();
        RecordedEvent {
            position: 100 + version,
            transaction_id: 1,
            event_id: new.event_id,
            stream_id: idp_events::project::stream_id(Uuid::nil()),
            stream_version: version,
            event_type: new.event_type,
            schema_version: new.schema_version,
            data: new.data,
            metadata: serde_json::json!({}),
            recorded_at: Utc::now(),
            hash: vec![],
        }
    }

    fn requested() -> ProjectEvent {
        ProjectEvent::ProjectRequested {
            owner_id: Uuid::nil(),
            name: "billing".into(),
            template: "static-site".into(),
            template_version: 1,
            parameters: Default::default(),
            steps: vec![],
        }
    }

    /// A follower that never reaches the database (the pool connects lazily, and the tests
    /// only take what was handed in).
    fn follower(history: Vec<RecordedEvent>, resume_at: usize) -> Follower {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/none")
            .unwrap();
        let watch = LogWatch::new(pool.clone());
        let (_tx, wake) = watch::channel(0);
        let project = Project::fold(Uuid::nil(), &history);
        Follower::new(
            EventStore::new(pool),
            &watch,
            wake,
            project,
            history,
            resume_at,
        )
    }

    #[tokio::test]
    async fn a_settled_project_hands_out_the_rest_then_ends() {
        let history = vec![
            recorded(1, &requested()),
            recorded(2, &ProjectEvent::ProjectReady),
        ];
        let mut follower = follower(history, 1);
        assert_eq!(follower.project.status, ProjectStatus::Ready);

        assert_eq!(follower.next().await.map(|e| e.stream_version), Some(2));
        assert!(follower.next().await.is_none());
    }

    #[tokio::test]
    async fn events_after_a_gap_wait_for_the_gap_to_fill() {
        let mut follower = follower(vec![recorded(1, &requested())], 1);
        let ready = ProjectEvent::ProjectReady;

        follower.take(vec![recorded(3, &ready)]);
        assert!(follower.pending.is_empty());
        assert_eq!(follower.version, 1);

        follower.take(vec![
            recorded(2, &ProjectEvent::RetryRequested),
            recorded(3, &ready),
        ]);
        let versions: Vec<i64> = follower.pending.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, [2, 3]);
        assert_eq!(follower.project.status, ProjectStatus::Ready);
    }

    #[tokio::test]
    async fn shutdown_ends_a_waiting_follower() {
        let mut follower = follower(vec![recorded(1, &requested())], 1);
        follower.stop.cancel();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), follower.next())
                .await
                .unwrap()
                .is_none()
        );
    }
}
