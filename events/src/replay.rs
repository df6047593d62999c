//! Replay for audits: a stream's history cut at a point in time (or log position), and the state
//! of its aggregate folded from exactly those events.
//!
//! The aggregate is chosen by the stream's prefix (`user-`, `session-`, `login-`, `project-`,
//! `job-`, `breaker-`), and its state is returned as JSON so callers (the admin API, the
//! `idp-worker replay` command) need not know every aggregate. Nothing here holds secrets: the
//! log has none (password hashes and refresh tokens live in their own tables).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::RecordedEvent;
use crate::identity::session::{RevokeReason, SessionEvent};
use crate::identity::user::User;
use crate::jobs::{BreakerEvent, BreakerState, Job};
use crate::project::project::Project;

/// Longest stream id accepted for a look-up, in characters.
pub const MAX_STREAM_ID_LEN: usize = 200;

/// Why a stream id is refused before it is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// Nothing to look up.
    #[error("the stream id is empty")]
    Empty,
    /// Longer than [`MAX_STREAM_ID_LEN`].
    #[error("the stream id is longer than {MAX_STREAM_ID_LEN} characters")]
    TooLong,
    /// Holds a control or whitespace character.
    #[error("the stream id may hold only printable characters without whitespace")]
    NotPrintable,
}

/// Checks that `stream_id` could name a stream: 1 to [`MAX_STREAM_ID_LEN`] printable characters,
/// no whitespace.
pub fn check_stream_id(stream_id: &str) -> Result<(), StreamIdError> {
    if stream_id.is_empty() {
        return Err(StreamIdError::Empty);
    }
    if stream_id.chars().count() > MAX_STREAM_ID_LEN {
        return Err(StreamIdError::TooLong);
    }
    if stream_id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(StreamIdError::NotPrintable);
    }
    Ok(())
}

/// `raw` as a stream id, if [`check_stream_id`] accepts it (a command-line value parser).
pub fn parse_stream_id(raw: &str) -> Result<String, StreamIdError> {
    check_stream_id(raw).map(|()| raw.to_owned())
}

/// Where to cut a stream's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Events recorded at or before this instant.
    Time(DateTime<Utc>),
    /// Events at or before this log position.
    Position(i64),
}

impl Until {
    /// True if `event` is on this side of the cut.
    pub fn includes(self, event: &RecordedEvent) -> bool {
        match self {
            Self::Time(at) => event.recorded_at <= at,
            Self::Position(position) => event.position <= position,
        }
    }
}

/// `--until` or `as_of` that is neither an RFC 3339 time nor a log position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is neither an RFC 3339 time (such as 2026-01-31T12:00:00Z) nor a log position (a whole number)"
)]
pub struct UntilError(pub String);

impl FromStr for Until {
    type Err = UntilError;

    /// A whole number is a log position; anything else must be an RFC 3339 time.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Self::Position)
                .map_err(|_| UntilError(s.to_owned()));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|at| Self::Time(at.with_timezone(&Utc)))
            .map_err(|_| UntilError(s.to_owned()))
    }
}

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Time(at) => f.write_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Self::Position(position) => write!(f, "position {position}"),
        }
    }
}

/// The beginning of a stream's history (`events` in stream order) up to `until`.
///
/// The cut is a prefix: it ends before the first event past `until`. A state is only ever
/// folded from a prefix of its stream, so even if two concurrent writers recorded their
/// timestamps out of order, the events returned are ones that really followed each other.
pub fn events_until(events: &[RecordedEvent], until: Until) -> &[RecordedEvent] {
    let end = events
        .iter()
        .position(|event| !until.includes(event))
        .unwrap_or(events.len());
    events.split_at(end).0
}

/// The state of `stream_id`'s aggregate folded from `events` (the stream's events in order, or a
/// prefix of them), as JSON.
///
/// `None` when the stream is not one of an aggregate this module knows (by its prefix and id),
/// or when `events` is empty: the stream had no state yet.
pub fn state_of(stream_id: &str, events: &[RecordedEvent]) -> Option<Value> {
    if events.is_empty() {
        return None;
    }
    let uuid_after = |prefix: &str| {
        stream_id
            .strip_prefix(prefix)
            .and_then(|id| Uuid::parse_str(id).ok())
    };
    let state = if let Some(id) = uuid_after("user-") {
        serde_json::to_value(User::fold(id, events))
    } else if let Some(id) = uuid_after("session-") {
        serde_json::to_value(SessionState::fold(id, events))
    } else if stream_id.starts_with("login-") {
        serde_json::to_value(LoginState::fold(events))
    } else if let Some(id) = uuid_after("project-") {
        serde_json::to_value(Project::fold(id, events))
    } else if uuid_after("job-").is_some() {
        serde_json::to_value(Job::fold(events))
    } else if let Some(name) = stream_id.strip_prefix("breaker-").filter(|n| !n.is_empty()) {
        serde_json::to_value(CircuitState::fold(name, events))
    } else {
        return None;
    };
    state.ok()
}

/// A session (sign-in) as folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct SessionState {
    /// The session's id.
    id: Uuid,
    /// Who signed in.
    user_id: Option<Uuid>,
    /// When.
    started_at: Option<DateTime<Utc>>,
    /// When the refresh token chain ends at the latest.
    expires_at: Option<DateTime<Utc>>,
    /// Refresh token rotations so far.
    generation: u32,
    /// When the refresh token was last rotated.
    refreshed_at: Option<DateTime<Utc>>,
    /// When a rotated refresh token was presented again, if ever.
    reuse_detected_at: Option<DateTime<Utc>>,
    /// Why the session ended, if it did.
    revoked: Option<RevokeReason>,
    /// When it ended.
    revoked_at: Option<DateTime<Utc>>,
    /// Stream version.
    version: i64,
}

impl SessionState {
    fn fold(id: Uuid, events: &[RecordedEvent]) -> Self {
        let mut session = Self {
            id,
            ..Self::default()
        };
        for event in events {
            let at = Some(event.recorded_at);
            match SessionEvent::from_recorded(event) {
                Some(SessionEvent::SessionStarted {
                    user_id,
                    expires_at,
                }) => {
                    session.user_id = Some(user_id);
                    session.expires_at = Some(expires_at);
                    session.started_at = at;
                }
                Some(SessionEvent::SessionRefreshed { generation }) => {
                    session.generation = generation;
                    session.refreshed_at = at;
                }
                Some(SessionEvent::RefreshTokenReuseDetected { .. }) => {
                    session.reuse_detected_at = at;
                }
                // The first revocation ends the session; later ones change nothing.
                Some(SessionEvent::SessionRevoked { reason }) if session.revoked.is_none() => {
                    session.revoked = Some(reason);
                    session.revoked_at = at;
                }
                Some(SessionEvent::SessionRevoked { .. }) | None => {}
            }
            session.version = event.stream_version;
        }
        session
    }
}

/// The sign-in attempts of one account (or one unknown address), as folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct LoginState {
    /// Successful sign-ins.
    succeeded: u64,
    /// Failed sign-ins.
    failed: u64,
    /// Failed sign-ins by reason (`wrong_password`, `locked`, ...).
    failures_by_reason: BTreeMap<String, u64>,
    /// Failed sign-ins since the last success.
    failures_since_success: u64,
    /// When the last sign-in succeeded.
    last_success_at: Option<DateTime<Utc>>,
    /// The session the last successful sign-in started.
    last_session_id: Option<Uuid>,
    /// When the last sign-in failed.
    last_failure_at: Option<DateTime<Utc>>,
    /// Why it failed.
    last_failure_reason: Option<String>,
    /// Stream version.
    version: i64,
}

impl LoginState {
    fn fold(events: &[RecordedEvent]) -> Self {
        let mut logins = Self::default();
        for event in events {
            match event.event_type.as_str() {
                "LoginSucceeded" => {
                    logins.succeeded += 1;
                    logins.failures_since_success = 0;
                    logins.last_success_at = Some(event.recorded_at);
                    logins.last_session_id = event
                        .data
                        .get("session_id")
                        .and_then(Value::as_str)
                        .and_then(|id| Uuid::parse_str(id).ok());
                }
                "LoginFailed" => {
                    let reason = event
                        .data
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_owned();
                    logins.failed += 1;
                    logins.failures_since_success += 1;
                    logins.last_failure_at = Some(event.recorded_at);
                    *logins.failures_by_reason.entry(reason.clone()).or_default() += 1;
                    logins.last_failure_reason = Some(reason);
                }
                _ => {}
            }
            logins.version = event.stream_version;
        }
        logins
    }
}

/// A circuit breaker as folded from its stream of transitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct CircuitState {
    /// The breaker's name (the downstream it guards).
    name: String,
    /// Where it stands.
    state: BreakerState,
    /// Consecutive failures that last opened it.
    failures: u32,
    /// When a trial call is allowed, while open.
    retry_at: Option<DateTime<Utc>>,
    /// The failure that last opened it.
    last_error: Option<String>,
    /// How many times it opened.
    times_opened: u32,
    /// When it last changed state.
    changed_at: Option<DateTime<Utc>>,
    /// Stream version.
    version: i64,
}

impl CircuitState {
    fn fold(name: &str, events: &[RecordedEvent]) -> Self {
        let mut breaker = Self {
            name: name.to_owned(),
            state: BreakerState::Closed,
            failures: 0,
            retry_at: None,
            last_error: None,
            times_opened: 0,
            changed_at: None,
            version: 0,
        };
        for event in events {
            if let Some(transition) = BreakerEvent::from_recorded(event) {
                breaker.changed_at = Some(event.recorded_at);
                match transition {
                    BreakerEvent::CircuitOpened {
                        failures,
                        retry_at,
                        error,
                    } => {
                        breaker.state = BreakerState::Open;
                        breaker.failures = failures;
                        breaker.retry_at = Some(retry_at);
                        breaker.last_error = Some(error);
                        breaker.times_opened += 1;
                    }
                    BreakerEvent::CircuitHalfOpened => breaker.state = BreakerState::HalfOpen,
                    BreakerEvent::CircuitClosed => {
                        breaker.state = BreakerState::Closed;
                        breaker.retry_at = None;
                    }
                }
            }
            breaker.version = event.stream_version;
        }
        breaker
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::Duration;
    use serde_json::json;

    use super::*;
    use crate::NewEvent;
    use crate::StreamId;
    use crate::identity::login;
    use crate::identity::user::UserEvent;
    use crate::jobs::JobEvent;
    use crate::project::project::ProjectEvent;

    /// `events` as stream `stream_id` recorded them, one minute apart from `start`, at log
    /// positions 10, 20, 30, ...
    fn recorded(
        stream_id: &str,
        start: DateTime<Utc>,
        events: Vec<NewEvent>,
    ) -> Vec<RecordedEvent> {
        events
            .into_iter()
            .zip(1_i64..)
            .map(|(new, version)| RecordedEvent {
                position: version * 10,
                transaction_id: version,
                event_id: new.event_id,
                stream_id: stream_id.to_owned(),
                stream_version: version,
                event_type: new.event_type,
                schema_version: new.schema_version,
                data: new.data,
                metadata: json!({ "actor": "system" }),
                recorded_at: start + Duration::minutes(version),
                hash: vec![0; 32],
            })
            .collect()
    }

    fn user_history(id: Uuid, start: DateTime<Utc>) -> Vec<RecordedEvent> {
        recorded(
            &format!("user-{id}"),
            start,
            [
                UserEvent::UserRegistered {
                    email: "ada@example.com".into(),
                    display_name: None,
                    roles: vec!["user".into()],
                },
                UserEvent::EmailVerified {
                    verification_id: None,
                },
                UserEvent::RolesChanged {
                    roles: vec!["admin".into(), "user".into()],
                },
                UserEvent::AccountLocked {
                    until: start + Duration::hours(1),
                    lock_count: 1,
                },
                UserEvent::PasswordChanged,
            ]
            .iter()
            .map(UserEvent::to_new_event)
            .collect(),
        )
    }

    #[test]
    fn a_user_stream_folds_to_the_user_at_each_cut() {
        let id = Uuid::now_v7();
        let start = Utc::now();
        let events = user_history(id, start);
        let stream = format!("user-{id}");

        let now = state_of(&stream, &events).unwrap();
        assert_eq!(now["id"], json!(id));
        assert_eq!(now["roles"], json!(["admin", "user"]));
        assert_eq!(now["lock_count"], json!(1));
        assert_eq!(now["version"], json!(5));
        assert!(now.get("password_hash").is_none());

        // Cut at the instant of the role change: it is included, the lock is not.
        let then = events_until(&events, Until::Time(start + Duration::minutes(3)));
        assert_eq!(then.len(), 3);
        let then = state_of(&stream, then).unwrap();
        assert_eq!(then["roles"], json!(["admin", "user"]));
        assert_eq!(then["locked_until"], Value::Null);
        assert_eq!(then["version"], json!(3));

        let before = state_of(&stream, events_until(&events, Until::Position(25))).unwrap();
        assert_eq!(before["roles"], json!(["user"]));
        assert_eq!(before["email_verified"], json!(true));
    }

    #[test]
    fn a_cut_before_the_first_event_has_no_state() {
        let start = Utc::now();
        let id = Uuid::now_v7();
        let events = user_history(id, start);
        let none = events_until(&events, Until::Time(start));
        assert!(none.is_empty());
        assert_eq!(state_of(&format!("user-{id}"), none), None);
        assert!(events_until(&events, Until::Position(9)).is_empty());
        assert_eq!(events_until(&events, Until::Position(i64::MAX)).len(), 5);
    }

    #[test]
    fn the_cut_is_a_prefix_even_when_timestamps_are_out_of_order() {
        let start = Utc::now();
        let mut events = user_history(Uuid::now_v7(), start);
        // Version 3 carries a later timestamp than version 4 (concurrent writers).
        events[2].recorded_at = start + Duration::minutes(10);
        let cut = events_until(&events, Until::Time(start + Duration::minutes(4)));
        assert_eq!(cut.len(), 2);
    }

    #[test]
    fn unknown_prefixes_and_malformed_ids_have_no_state() {
        let events = recorded(
            "ledger-1",
            Utc::now(),
            vec![NewEvent::new("Touched", json!({}))],
        );
        assert_eq!(state_of("ledger-1", &events), None);
        assert_eq!(state_of("user-1", &events), None);
        assert_eq!(state_of("project-not-a-uuid", &events), None);
        assert_eq!(state_of("breaker-", &events), None);
    }

    #[test]
    fn project_job_session_login_and_breaker_streams_have_states() {
        let start = Utc::now();
        let id = Uuid::now_v7();

        let project = recorded(
            &format!("project-{id}"),
            start,
            vec![
                ProjectEvent::ProjectRequested {
                    owner_id: id,
                    name: "shop".into(),
                    template: "service".into(),
                    template_version: 1,
                    parameters: BTreeMap::new(),
                    steps: vec![],
                    monthly_cost_cents: 0,
                }
                .to_new_event(),
                ProjectEvent::ProjectReady.to_new_event(),
            ],
        );
        let state = state_of(&format!("project-{id}"), &project).unwrap();
        assert_eq!(state["status"], json!("ready"));
        assert_eq!(state["name"], json!("shop"));
        let state = state_of(&format!("project-{id}"), &project[..1]).unwrap();
        assert_eq!(state["status"], json!("requested"));

        let job = recorded(
            &format!("job-{id}"),
            start,
            vec![
                JobEvent::EmailDeliveryFailed {
                    attempt: 1,
                    permanent: false,
                    error: "451".into(),
                    retry_in_ms: Some(1000),
                }
                .to_new_event(),
            ],
        );
        let state = state_of(&format!("job-{id}"), &job).unwrap();
        assert_eq!(state["failed_attempts"], json!(1));
        assert_eq!(state["done"], json!(false));

        let session = recorded(
            &format!("session-{id}"),
            start,
            vec![
                SessionEvent::SessionStarted {
                    user_id: id,
                    expires_at: start + Duration::days(30),
                }
                .to_new_event(),
                SessionEvent::SessionRefreshed { generation: 1 }.to_new_event(),
                SessionEvent::SessionRevoked {
                    reason: RevokeReason::Logout,
                }
                .to_new_event(),
            ],
        );
        let state = state_of(&format!("session-{id}"), &session).unwrap();
        assert_eq!(state["user_id"], json!(id));
        assert_eq!(state["generation"], json!(1));
        assert_eq!(state["revoked"], json!("logout"));
        let state = state_of(&format!("session-{id}"), &session[..2]).unwrap();
        assert_eq!(state["revoked"], Value::Null);

        let session_id = Uuid::now_v7();
        let logins = recorded(
            StreamId::login(id).as_str(),
            start,
            vec![
                login::failed(login::FailureReason::WrongPassword),
                login::succeeded(session_id),
                login::failed(login::FailureReason::WrongPassword),
                login::failed(login::FailureReason::Locked),
            ],
        );
        let state = state_of(StreamId::login(id).as_str(), &logins).unwrap();
        assert_eq!(state["succeeded"], json!(1));
        assert_eq!(state["failed"], json!(3));
        assert_eq!(state["failures_since_success"], json!(2));
        assert_eq!(
            state["failures_by_reason"],
            json!({ "wrong_password": 2, "locked": 1 })
        );
        assert_eq!(state["last_session_id"], json!(session_id));
        assert_eq!(state["last_failure_reason"], json!("locked"));
        assert!(state_of(StreamId::login_unknown("abc").as_str(), &logins).is_some());

        let breaker = recorded(
            "breaker-smtp",
            start,
            vec![
                BreakerEvent::CircuitOpened {
                    failures: 5,
                    retry_at: start + Duration::seconds(30),
                    error: "connection refused".into(),
                }
                .to_new_event(),
                BreakerEvent::CircuitHalfOpened.to_new_event(),
            ],
        );
        let state = state_of("breaker-smtp", &breaker).unwrap();
        assert_eq!(state["name"], json!("smtp"));
        assert_eq!(state["state"], json!("half_open"));
        assert_eq!(state["times_opened"], json!(1));
        let state = state_of("breaker-smtp", &breaker[..1]).unwrap();
        assert_eq!(state["state"], json!("open"));
    }

    #[test]
    fn until_parses_positions_and_rfc3339_times() {
        assert_eq!("42".parse(), Ok(Until::Position(42)));
        let at: Until = "2026-01-31T12:00:00+01:00".parse().unwrap();
        assert_eq!(
            at,
            Until::Time(
                DateTime::parse_from_rfc3339("2026-01-31T11:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
        for bad in ["", "yesterday", "-3", "2026-01-31", "99999999999999999999"] {
            assert!(bad.parse::<Until>().is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_ids_are_short_and_printable() {
        assert_eq!(check_stream_id("user-1"), Ok(()));
        assert_eq!(check_stream_id(""), Err(StreamIdError::Empty));
        assert_eq!(
            check_stream_id(&"x".repeat(201)),
            Err(StreamIdError::TooLong)
        );
        assert_eq!(check_stream_id(&"é".repeat(200)), Ok(()));
        assert_eq!(
            check_stream_id("user-\u{0}"),
            Err(StreamIdError::NotPrintable)
        );
        assert_eq!(check_stream_id("a b"), Err(StreamIdError::NotPrintable));
    }
}
