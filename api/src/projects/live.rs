//! Following a project's stream live: one task per API process looks after every open event
//! stream, so that thousands of open streams cost the database a handful of queries a second,
//! not one each.
//!
//! The task LISTENs for the store's notifications, which announce appended positions (usually
//! before their transactions commit). Once an announced position is visible, and also every
//! [`CHECK_INTERVAL`] in case a notification was lost, it reads in one query the current
//! version of every followed stream and wakes only the followers whose stream moved, which then
//! read their own new events. In the same round it looks up, in one query, which followed
//! sessions have ended: their streams close within a round.
//!
//! The task also counts streams per user: at most `SSE_MAX_STREAMS_PER_USER` at once per
//! process.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idp_events::project::{Project, ProjectEvent};
use idp_events::{EventStore, NOTIFY_CHANNEL, RecordedEvent};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the followed streams' versions and sessions are checked when no notification
/// asked for it; also the longest a stream of a revoked session stays open.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// First pause before looking again whether an announced event is committed yet.
const RECHECK_MIN: Duration = Duration::from_millis(2);

/// Least time between two checks caused by notifications.
const WAKE_SPACING: Duration = Duration::from_millis(10);

/// Pause before the listener connects again after losing its connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The process's followers of the log.
///
/// The task starts with the first follower, so a process nobody follows holds no extra
/// connection. [`LogWatch::shutdown`] ends it and every follower (open event streams would
/// otherwise keep a graceful shutdown waiting forever).
#[derive(Debug, Clone)]
pub struct LogWatch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    max_per_user: usize,
    registry: Mutex<Registry>,
    /// Asks the checking loop for a round now.
    check_now: Notify,
    started: AtomicBool,
    stop: CancellationToken,
}

/// Who follows what.
#[derive(Debug, Default)]
struct Registry {
    /// Per followed stream: the latest version seen (followers wait for it to change) and how
    /// many follow it.
    streams: HashMap<String, (watch::Sender<i64>, usize)>,
    /// Per session with open streams: cancelled when it ends, and how many streams it has.
    sessions: HashMap<Uuid, (CancellationToken, usize)>,
    /// Open streams per user.
    users: HashMap<Uuid, usize>,
}

/// The user has as many open streams as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at most {0} event streams may be open at once")]
pub struct TooManyStreams(pub usize);

/// One open stream's place in the [`LogWatch`]: its wake-ups and its end. Dropping it gives
/// the place back.
#[derive(Debug)]
pub struct Subscription {
    inner: Arc<Inner>,
    user_id: Uuid,
    session_id: Uuid,
    stream: String,
    version: watch::Receiver<i64>,
    ended: CancellationToken,
}

impl LogWatch {
    /// A watch whose task will use connections of `pool`, allowing `max_per_user` open streams
    /// per user.
    pub fn new(pool: PgPool, max_per_user: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                max_per_user: max_per_user.max(1),
                registry: Mutex::default(),
                check_now: Notify::new(),
                started: AtomicBool::new(false),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Follows `stream` for `user_id` in session `session_id`; starts the task. Subscribe
    /// before reading the stream, so that no append after the read goes unnoticed.
    pub fn follow(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        stream: String,
    ) -> Result<Subscription, TooManyStreams> {
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(listen(Arc::clone(&self.inner)));
            tokio::spawn(check_rounds(Arc::clone(&self.inner)));
        }
        let mut registry = self.inner.lock();
        let open = registry.users.entry(user_id).or_default();
        if *open >= self.inner.max_per_user {
            return Err(TooManyStreams(self.inner.max_per_user));
        }
        *open += 1;
        let (sender, followers) = registry
            .streams
            .entry(stream.clone())
            .or_insert_with(|| (watch::Sender::new(0), 0));
        *followers += 1;
        let version = sender.subscribe();
        let (ended, streams) = registry
            .sessions
            .entry(session_id)
            .or_insert_with(|| (self.inner.stop.child_token(), 0));
        *streams += 1;
        let ended = ended.clone();
        drop(registry);
        Ok(Subscription {
            inner: Arc::clone(&self.inner),
            user_id,
            session_id,
            stream,
            version,
            ended,
        })
    }

    /// Ends the task and every follower.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }

    /// How many streams are open (all users).
    pub fn open_streams(&self) -> usize {
        self.inner.lock().users.values().sum()
    }
}

impl Inner {
    /// The registry; a panic elsewhere while it was held leaves it usable (it holds counts).
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.inner.lock();
        if let Some(open) = registry.users.get_mut(&self.user_id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                registry.users.remove(&self.user_id);
            }
        }
        if let Some((_, followers)) = registry.streams.get_mut(&self.stream) {
            *followers = followers.saturating_sub(1);
            if *followers == 0 {
                registry.streams.remove(&self.stream);
            }
        }
        if let Some((_, streams)) = registry.sessions.get_mut(&self.session_id) {
            *streams = streams.saturating_sub(1);
            if *streams == 0 {
                registry.sessions.remove(&self.session_id);
            }
        }
    }
}

/// LISTENs on the store's channel and asks for a check round once an announced position is
/// visible, until shutdown or until the pool is closed. Connection losses are logged and
/// retried; the rounds go on meanwhile.
async fn listen(inner: Arc<Inner>) {
    loop {
        let outcome = tokio::select! {
            () = inner.stop.cancelled() => return,
            outcome = listen_once(&inner) => outcome,
        };
        match outcome {
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(error = %error, "event log listener lost its connection; event streams are checked every second meanwhile");
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
    // Notifications sent before LISTEN took effect were missed: look once.
    inner.check_now.notify_one();
    // Appends are announced as they are written, usually before their transaction commits, so
    // a check at once would find nothing new. The check waits until the announced position is
    // visible instead, looking again at growing intervals.
    let mut announced: Option<i64> = None;
    let mut recheck = RECHECK_MIN;
    let mut last_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            received = listener.try_recv() => match received? {
                Some(note) => match note.payload().parse::<i64>() {
                    Ok(position) => {
                        announced = Some(announced.map_or(position, |a| a.max(position)));
                        // Busy logs announce every millisecond; followers need not read as often.
                        recheck = WAKE_SPACING.saturating_sub(last_check.elapsed());
                    }
                    Err(_) => inner.check_now.notify_one(),
                },
                // The connection was lost and is back: notifications may have been lost.
                None => inner.check_now.notify_one(),
            },
            () = tokio::time::sleep(recheck), if announced.is_some() => {
                let position = announced.unwrap_or_default();
                let visible = is_visible(&inner.pool, position).await.unwrap_or(true);
                if visible || recheck >= CHECK_INTERVAL {
                    // Visible, or never will be (rolled back) as far as waiting here goes: the
                    // rounds look anyway.
                    inner.check_now.notify_one();
                    last_check = tokio::time::Instant::now();
                    announced = None;
                } else {
                    recheck = (recheck * 2).clamp(RECHECK_MIN, CHECK_INTERVAL);
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

/// Check rounds, every [`CHECK_INTERVAL`] and whenever the listener asks, until shutdown.
async fn check_rounds(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = inner.check_now.notified() => {}
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        if let Err(error) = check_round(&inner).await {
            if matches!(error, sqlx::Error::PoolClosed) {
                return;
            }
            tracing::warn!(error = %error, "event streams could not be checked; trying again");
        }
    }
}

/// One round: wakes the followers of every stream that moved, and ends the streams of
/// sessions that ended (revoked, expired or gone). Two queries, however many streams are open.
async fn check_round(inner: &Inner) -> Result<(), sqlx::Error> {
    let (streams, sessions): (Vec<String>, Vec<Uuid>) = {
        let registry = inner.lock();
        (
            registry.streams.keys().cloned().collect(),
            registry.sessions.keys().copied().collect(),
        )
    };
    if !streams.is_empty() {
        let versions: Vec<(String, i64)> = sqlx::query_as(
            "select stream_id, max(stream_version) from events
              where stream_id = any($1) group by stream_id",
        )
        .bind(&streams)
        .fetch_all(&inner.pool)
        .await?;
        let registry = inner.lock();
        for (stream, version) in versions {
            if let Some((sender, _)) = registry.streams.get(&stream) {
                sender.send_if_modified(|seen| {
                    let moved = version > *seen;
                    if moved {
                        *seen = version;
                    }
                    moved
                });
            }
        }
    }
    if !sessions.is_empty() {
        let active: Vec<Uuid> = sqlx::query_scalar(
            // A stream opened with an API key follows the key as it would a session.
            "select session_id from sessions
              where session_id = any($1) and revoked_at is null and expires_at > now()
             union all
             select key_id from api_keys
              where key_id = any($1) and revoked_at is null
                and (expires_at is null or expires_at > now())",
        )
        .bind(&sessions)
        .fetch_all(&inner.pool)
        .await?;
        let registry = inner.lock();
        for session in sessions.iter().filter(|s| !active.contains(s)) {
            if let Some((ended, _)) = registry.sessions.get(session) {
                ended.cancel();
            }
        }
    }
    Ok(())
}

/// A follower of one project's stream: hands out the events after a resume point, then waits
/// for more, and ends once everything read was handed out and the project is in a final status,
/// or when its session ends.
#[derive(Debug)]
pub struct Follower {
    store: EventStore,
    subscription: Subscription,
    /// The project as folded from every event read so far.
    project: Project,
    /// The version of the last event read.
    version: i64,
    /// Read, not yet handed out.
    pending: VecDeque<RecordedEvent>,
}

impl Follower {
    /// A follower through `subscription` whose stream's events so far are `history`, handing
    /// out those from index `resume_at` on. The subscription must have been taken before
    /// `history` was read.
    pub fn new(
        store: EventStore,
        subscription: Subscription,
        project: Project,
        history: Vec<RecordedEvent>,
        resume_at: usize,
    ) -> Self {
        let version = history.last().map_or(0, |e| e.stream_version);
        Self {
            store,
            subscription,
            project,
            version,
            pending: history.into_iter().skip(resume_at).collect(),
        }
    }

    /// The next event to hand out, or `None` when the stream should end: the project is in a
    /// final status and every event read was handed out, the session ended, the process is
    /// shutting down, or the log cannot be read (the client resumes with `Last-Event-ID`).
    pub async fn next(&mut self) -> Option<RecordedEvent> {
        loop {
            if self.subscription.ended.is_cancelled() {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.project.status.is_final() {
                return None;
            }
            if !self.wait().await {
                return None;
            }
            let stream = &self.subscription.stream;
            match self.store.read_stream(stream, self.version + 1).await {
                Ok(events) => self.take(events),
                Err(error) => {
                    tracing::warn!(error = %error, stream.id = %stream, "ending an event stream: the log cannot be read");
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

    /// Until the stream is seen beyond what was read (true), or the stream must end (false).
    async fn wait(&mut self) -> bool {
        loop {
            if *self.subscription.version.borrow_and_update() > self.version {
                return true;
            }
            tokio::select! {
                changed = self.subscription.version.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                () = self.subscription.ended.cancelled() => return false,
            }
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
    use idp_events::StreamId;

    fn recorded(version: i64, event: &ProjectEvent) -> RecordedEvent {
        let new = event.to_new_event();
        RecordedEvent {
            position: 100 + version,
            transaction_id: 1,
            event_id: new.event_id,
            stream_id: StreamId::project(Uuid::nil()).into(),
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
            monthly_cost_cents: 0,
        }
    }

    fn lazy_pool() -> PgPool {
        PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/none")
            .unwrap()
    }

    /// A follower that never reaches the database (the pool connects lazily, and the tests
    /// only take what was handed in).
    fn follower(history: Vec<RecordedEvent>, resume_at: usize) -> Follower {
        let pool = lazy_pool();
        let watch = LogWatch::new(pool.clone(), 4);
        let subscription = watch
            .follow(
                Uuid::nil(),
                Uuid::nil(),
                StreamId::project(Uuid::nil()).into(),
            )
            .unwrap();
        let project = Project::fold(Uuid::nil(), &history);
        Follower::new(
            EventStore::new(pool),
            subscription,
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
    async fn streams_per_user_are_capped_and_a_closed_one_frees_its_place() {
        let watch = LogWatch::new(lazy_pool(), 2);
        let (ada, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let first = watch.follow(ada, ada, "project-a".into()).unwrap();
        let _second = watch.follow(ada, ada, "project-a".into()).unwrap();
        assert_eq!(
            watch.follow(ada, ada, "project-b".into()).unwrap_err(),
            TooManyStreams(2)
        );
        let _other = watch.follow(bob, bob, "project-a".into()).unwrap();
        assert_eq!(watch.open_streams(), 3);
        drop(first);
        assert_eq!(watch.open_streams(), 2);
        assert!(watch.follow(ada, ada, "project-b".into()).is_ok());
    }

    #[tokio::test]
    async fn shutdown_ends_a_waiting_follower() {
        let mut follower = follower(vec![recorded(1, &requested())], 1);
        follower.subscription.inner.stop.cancel();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), follower.next())
                .await
                .unwrap()
                .is_none()
        );
    }
}
