//! `audit_view`: the audit trail as a table. One row per event of the log, saying who did what,
//! when and from where, queryable by actor, by the account concerned, by time and by type.
//!
//! Every event gets a row, whatever its context: identity events get a summary written for
//! people, others a generic one. Payloads are never copied, only the metadata's actor and
//! client details and a summary built from known fields, so secrets cannot reach this table.
//! An identity event whose payload cannot be read still gets its row (with a generic summary
//! and a warning in the log): a gap in the audit trail would be worse than a vague line.
//!
//! Rows are gathered per batch and inserted in one statement in [`BatchHandler::write`];
//! the position is the key and a row already there is kept, so replays change nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use idp_events::identity::login::FailureReason;
use idp_events::identity::session::{RevokeReason, SessionEvent};
use idp_events::identity::user::UserEvent;
use idp_events::privacy::fields::known_text;
use idp_events::subscription::{Batch, BatchHandler, HandlerError, SubscriptionOptions};
use idp_events::{Category, EventTypes, RecordedEvent, StreamId};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Sessions whose account [`AuditView`] remembers; the memory starts over when full.
const SESSIONS_REMEMBERED: usize = 100_000;

/// The projection.
#[derive(Debug, Default)]
pub struct AuditView {
    /// Rows of the batch in progress.
    batch: Batch<AuditEntry>,
    /// The account of sessions seen lately (session stream -> user). A session's account never
    /// changes, so this is never stale; it saves looking up in the log the start of a session
    /// whose later events arrive in a later batch.
    sessions: Mutex<HashMap<String, Uuid>>,
}

impl super::Projection for AuditView {
    // The inherent constant, which callers use without importing the trait.
    const NAME: &'static str = AuditView::NAME;

    fn options() -> SubscriptionOptions {
        super::set_based_options()
    }
}

impl AuditView {
    /// Subscription name.
    pub const NAME: &'static str = "audit_view";

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Uuid>> {
        // Every entry is a fact, whatever a panic interrupted.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The account of every entry: sessions resolved from the batch itself, then from memory,
    /// then from the log.
    async fn subjects(
        &self,
        conn: &mut PgConnection,
        entries: &[AuditEntry],
    ) -> Result<Vec<Option<Uuid>>, sqlx::Error> {
        let mut accounts: HashMap<String, Uuid> = entries
            .iter()
            .filter_map(|e| match e.subject {
                Subject::Known(Some(user)) if e.category == Some(Category::Session) => {
                    Some((e.stream_id.clone(), user))
                }
                _ => None,
            })
            .collect();
        let mut missing: Vec<&str> = Vec::new();
        {
            let remembered = self.sessions();
            for e in entries {
                if let Subject::SessionOf(stream) = &e.subject
                    && !accounts.contains_key(stream)
                {
                    match remembered.get(stream) {
                        Some(user) => {
                            accounts.insert(stream.clone(), *user);
                        }
                        None => missing.push(stream),
                    }
                }
            }
        }
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            accounts.extend(session_accounts(conn, &missing).await?);
        }
        let subjects = entries
            .iter()
            .map(|e| match &e.subject {
                Subject::Known(user) => *user,
                Subject::SessionOf(stream) => accounts.get(stream).copied(),
            })
            .collect();
        let mut remembered = self.sessions();
        if remembered.len() + accounts.len() > SESSIONS_REMEMBERED {
            remembered.clear();
        }
        remembered.extend(accounts);
        Ok(subjects)
    }
}

/// Whose account an event concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    /// Known from the event itself (or known to be nobody's).
    Known(Option<Uuid>),
    /// An event of session stream `.0` other than its start: the session's account.
    SessionOf(String),
}

/// A row of `audit_view`: what one event contributes to a batch of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    position: i64,
    event_id: Uuid,
    recorded_at: DateTime<Utc>,
    stream_id: String,
    /// The category of `stream_id`, if it names one.
    category: Option<Category>,
    event_type: String,
    actor: Option<String>,
    subject: Subject,
    client_ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    summary: String,
}

/// A text field of the metadata; missing or not a string: none. Fields are read one by one, so
/// one malformed field does not hide the others.
fn meta_text(metadata: &Value, key: &str) -> Option<String> {
    metadata.get(key)?.as_str().map(str::to_owned)
}

/// A personal metadata value as opened by the store (`None` once erased).
fn meta_personal(metadata: &Value, key: &str) -> Option<String> {
    known_text(metadata.get(key)?).map(str::to_owned)
}

fn meta_uuid(metadata: &Value, key: &str) -> Option<Uuid> {
    Uuid::parse_str(metadata.get(key)?.as_str()?).ok()
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn role_list(roles: &[String]) -> String {
    if roles.is_empty() {
        "none".to_owned()
    } else {
        roles.join(", ")
    }
}

fn user_summary(event: &UserEvent) -> String {
    match event {
        UserEvent::UserRegistered { roles, .. } => {
            format!("registered with roles {}", role_list(roles))
        }
        UserEvent::VerificationRequested { .. } => "verification email requested".to_owned(),
        UserEvent::EmailVerified {
            verification_id: Some(_),
        } => "email address verified".to_owned(),
        UserEvent::EmailVerified {
            verification_id: None,
        } => "email address marked verified without a link".to_owned(),
        UserEvent::DuplicateRegistrationAttempted { .. } => {
            "registration attempted again (the owner gets a notice)".to_owned()
        }
        UserEvent::RegistrationRepeated { .. } => {
            "registered again while unverified (a pending registration with its own link)"
                .to_owned()
        }
        UserEvent::PendingRegistrationConfirmed { .. } => {
            "a pending registration was confirmed with its link (its password and name apply)"
                .to_owned()
        }
        UserEvent::PasswordResetRequested { .. } => "password reset requested".to_owned(),
        UserEvent::PasswordReset { .. } => "password reset with an emailed link".to_owned(),
        UserEvent::PasswordChanged => "password changed".to_owned(),
        UserEvent::PasswordRehashed => "password hash upgraded to current parameters".to_owned(),
        UserEvent::RolesChanged { roles } => format!("roles changed to {}", role_list(roles)),
        UserEvent::AccountLocked { until, lock_count } => {
            format!("account locked until {} (lock {lock_count})", time(until))
        }
        UserEvent::AccountUnlocked => "account unlocked".to_owned(),
        UserEvent::PersonErased {
            reason: Some(reason),
        } => {
            format!("person erased by an administrator: {reason}")
        }
        UserEvent::PersonErased { reason: None } => "person erased at their request".to_owned(),
        UserEvent::PersonalDataExported => "personal data exported".to_owned(),
        UserEvent::ConsentGiven { purpose, version } => {
            format!("consent to {purpose} given (text version {version})")
        }
        UserEvent::ConsentWithdrawn { purpose, version } => {
            format!("consent to {purpose} withdrawn (text version {version})")
        }
        UserEvent::SecondFactorEnrolmentStarted => "second factor enrolment started".to_owned(),
        UserEvent::SecondFactorEnabled => "second factor turned on".to_owned(),
        UserEvent::SecondFactorDisabled => "second factor turned off".to_owned(),
        UserEvent::SecondFactorReset { .. } => {
            "second factor removed by an administrator".to_owned()
        }
        UserEvent::RecoveryCodesGenerated { count } => {
            format!("{count} new recovery codes replaced the old ones")
        }
        UserEvent::RecoveryCodeUsed { remaining } => {
            format!("a recovery code was used ({remaining} left)")
        }
        UserEvent::SecondFactorLocked { until, lock_count } => {
            format!(
                "second factor locked until {} (lock {lock_count})",
                time(until)
            )
        }
        UserEvent::ExternalIdentityLinked { provider, .. } => {
            format!("account of identity provider {provider} linked")
        }
        UserEvent::ExternalIdentityUnlinked { provider, .. } => {
            format!("account of identity provider {provider} unlinked")
        }
        UserEvent::NewDeviceSignedIn { session_id, .. } => {
            format!(
                "sign-in from a device new to the account (session {session_id}); owner notified"
            )
        }
    }
}

fn session_summary(event: &SessionEvent) -> String {
    match event {
        SessionEvent::SessionStarted { expires_at, .. } => {
            format!("session started, valid until {}", time(expires_at))
        }
        SessionEvent::SessionRefreshed { generation } => {
            format!("session refreshed (token generation {generation})")
        }
        SessionEvent::RefreshTokenReuseDetected { generation } => {
            format!("reuse of refresh token generation {generation} detected")
        }
        SessionEvent::SessionRevoked { reason } => format!(
            "session revoked: {}",
            match reason {
                RevokeReason::Logout => "logout",
                RevokeReason::PasswordReset => "password reset",
                RevokeReason::PasswordChanged => "password changed",
                RevokeReason::RefreshTokenReuse => "refresh token reuse",
                RevokeReason::Admin => "by an administrator",
                RevokeReason::Erased => "the person was erased",
                RevokeReason::Owner => "by its owner",
                RevokeReason::NewDeviceNotice => "from a new-device notice",
                RevokeReason::BindingBroken => "used from another network or device",
            }
        ),
    }
}

fn login_failed_summary(reason: FailureReason) -> String {
    format!(
        "login failed: {}",
        match reason {
            FailureReason::WrongPassword => "wrong password",
            FailureReason::Unverified => "address not verified",
            FailureReason::Locked => "account locked",
            FailureReason::UnknownAccount => "unknown account",
            FailureReason::WrongCode => "wrong second-factor code",
            FailureReason::WrongRecoveryCode => "wrong recovery code",
            FailureReason::SecondFactorLocked => "second factor locked",
        }
    )
}

#[derive(serde::Deserialize)]
struct LoginFailedData {
    reason: FailureReason,
}

/// The summary of an identity event; `None` for events of other contexts, `Some(Err(()))` for
/// an identity event that cannot be decoded.
fn identity_summary(
    event: &RecordedEvent,
    stream: Option<&StreamId>,
) -> Option<Result<String, ()>> {
    let kind = event.event_type.as_str();
    match stream.map(StreamId::category)? {
        Category::User if UserEvent::has_type(kind) => Some(
            UserEvent::from_recorded(event)
                .map(|e| user_summary(&e))
                .ok_or(()),
        ),
        Category::Login | Category::LoginUnknown if kind == "LoginFailed" => Some(
            serde_json::from_value::<LoginFailedData>(event.data.clone())
                .map(|d| login_failed_summary(d.reason))
                .map_err(|_| ()),
        ),
        Category::Session if kind == "LoginSucceeded" => Some(Ok("login succeeded".to_owned())),
        Category::Session if SessionEvent::has_type(kind) => Some(
            SessionEvent::from_recorded(event)
                .map(|e| session_summary(&e))
                .ok_or(()),
        ),
        _ => None,
    }
}

/// The account `event` concerns: the one of its user or login stream, or the one whose session
/// it is part of (`login-unknown-<digest>` streams and other contexts: none).
fn subject_of(event: &RecordedEvent, stream: Option<&StreamId>) -> Subject {
    let Some(stream) = stream else {
        return Subject::Known(None);
    };
    match stream.category() {
        Category::User | Category::Login => Subject::Known(stream.uuid()),
        Category::Session => {
            if event.event_type == "SessionStarted"
                && let Some(SessionEvent::SessionStarted { user_id, .. }) =
                    SessionEvent::from_recorded(event)
            {
                return Subject::Known(Some(user_id));
            }
            Subject::SessionOf(event.stream_id.clone())
        }
        _ => Subject::Known(None),
    }
}

/// The row of `event`.
fn entry_of(event: &RecordedEvent) -> AuditEntry {
    let generic = || format!("{} on {}", event.event_type, event.stream_id);
    let stream = StreamId::parse(&event.stream_id).ok();
    let summary = match identity_summary(event, stream.as_ref()) {
        Some(Ok(summary)) => summary,
        Some(Err(())) => {
            tracing::warn!(
                position = event.position, event.r#type = %event.event_type,
                "identity event with an unreadable payload; audited with a generic summary"
            );
            format!("{} (payload not understood)", generic())
        }
        None => generic(),
    };
    let meta = &event.metadata;
    AuditEntry {
        position: event.position,
        event_id: event.event_id,
        recorded_at: event.recorded_at,
        stream_id: event.stream_id.clone(),
        category: stream.as_ref().map(StreamId::category),
        event_type: event.event_type.clone(),
        actor: meta_text(meta, "actor"),
        subject: subject_of(event, stream.as_ref()),
        client_ip: meta_personal(meta, "client_ip"),
        user_agent: meta_personal(meta, "user_agent"),
        request_id: meta_text(meta, "request_id"),
        correlation_id: meta_uuid(meta, "correlation_id"),
        causation_id: meta_uuid(meta, "causation_id"),
        summary,
    }
}

/// The account of each session whose start is not in the batch, from the log (a session's
/// start commits with its first event, so it is always there). An unreadable start names no
/// account.
async fn session_accounts(
    conn: &mut PgConnection,
    sessions: &[&str],
) -> Result<HashMap<String, Uuid>, sqlx::Error> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "select stream_id, data->>'user_id' from events
          where stream_id = any($1) and event_type = 'SessionStarted'",
    )
    .bind(sessions)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(stream, user)| Some((stream, Uuid::parse_str(&user?).ok()?)))
        .collect())
}

const INSERT_ENTRIES: &str = "
insert into audit_view (position, event_id, recorded_at, stream_id, event_type, actor,
                        subject_user_id, client_ip, user_agent, request_id, correlation_id,
                        causation_id, summary)
select * from unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[],
                     $6::text[], $7::uuid[], $8::text[], $9::text[], $10::text[], $11::uuid[],
                     $12::uuid[], $13::text[])
on conflict (position) do nothing";

impl BatchHandler for AuditView {
    type Item = AuditEntry;

    fn batch(&self) -> &Batch<AuditEntry> {
        &self.batch
    }

    fn gather(
        &self,
        event: &RecordedEvent,
        entries: &mut Vec<AuditEntry>,
    ) -> Result<(), HandlerError> {
        entries.push(entry_of(event));
        Ok(())
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        entries: Vec<AuditEntry>,
    ) -> Result<(), HandlerError> {
        super::commit_without_flush_wait(&mut *conn).await?;
        let subjects = self.subjects(&mut *conn, &entries).await?;
        macro_rules! column {
            ($f:expr) => {
                entries.iter().map($f).collect::<Vec<_>>()
            };
        }
        sqlx::query(INSERT_ENTRIES)
            .bind(column!(|e| e.position))
            .bind(column!(|e| e.event_id))
            .bind(column!(|e| e.recorded_at))
            .bind(column!(|e| e.stream_id.as_str()))
            .bind(column!(|e| e.event_type.as_str()))
            .bind(column!(|e| e.actor.as_deref()))
            .bind(&subjects)
            .bind(column!(|e| e.client_ip.as_deref()))
            .bind(column!(|e| e.user_agent.as_deref()))
            .bind(column!(|e| e.request_id.as_deref()))
            .bind(column!(|e| e.correlation_id))
            .bind(column!(|e| e.causation_id))
            .bind(column!(|e| e.summary.as_str()))
            .execute(&mut *conn)
            .await?;
        // An erased person's earlier rows lose the client details the log no longer reads.
        let erased: Vec<Uuid> = entries
            .iter()
            .filter(|e| e.event_type == "PersonErased")
            .filter_map(|e| StreamId::parse(&e.stream_id).ok()?.user_id())
            .collect();
        if !erased.is_empty() {
            let actors: Vec<String> = erased
                .iter()
                .map(|id| StreamId::user(*id).to_string())
                .collect();
            sqlx::query(
                "update audit_view set client_ip = null, user_agent = null
                  where (subject_user_id = any($1) or actor = any($2))
                    and (client_ip is not null or user_agent is not null)",
            )
            .bind(&erased)
            .bind(&actors)
            .execute(conn)
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("truncate audit_view").execute(conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use idp_events::identity::login;
    use idp_events::{Metadata, NewEvent};
    use serde_json::json;

    use super::*;

    fn recorded(stream_id: &str, event: NewEvent, metadata: &Metadata) -> RecordedEvent {
        RecordedEvent {
            position: 7,
            transaction_id: 7,
            event_id: event.event_id,
            stream_id: stream_id.to_owned(),
            stream_version: 1,
            event_type: event.event_type,
            schema_version: 1,
            data: event.data,
            metadata: serde_json::to_value(metadata).unwrap(),
            recorded_at: Utc::now(),
            hash: vec![0; 32],
        }
    }

    #[test]
    fn a_row_carries_who_did_it_from_where_and_a_summary() {
        let id = Uuid::now_v7();
        let correlation = Uuid::now_v7();
        let metadata = Metadata {
            actor: Some("user-admin".into()),
            request_id: Some(correlation.to_string()),
            correlation_id: Some(correlation),
            causation_id: None,
            client_ip: Some("203.0.113.9".into()),
            user_agent: Some("curl/8.5".into()),
            api_key_id: None,
        };
        let until = DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let event = UserEvent::AccountLocked {
            until,
            lock_count: 2,
        }
        .to_new_event();
        let entry = entry_of(&recorded(StreamId::user(id).as_str(), event, &metadata));
        assert_eq!(entry.actor.as_deref(), Some("user-admin"));
        assert_eq!(entry.client_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(entry.user_agent.as_deref(), Some("curl/8.5"));
        assert_eq!(entry.correlation_id, Some(correlation));
        assert_eq!(entry.subject, Subject::Known(Some(id)));
        assert_eq!(
            entry.summary,
            "account locked until 2030-01-02T03:04:05Z (lock 2)"
        );
    }

    #[test]
    fn sign_in_attempts_name_the_account_unless_it_does_not_exist() {
        let id = Uuid::now_v7();
        let none = Metadata::default();
        let failed = entry_of(&recorded(
            StreamId::login(id).as_str(),
            login::failed(FailureReason::WrongPassword),
            &none,
        ));
        assert_eq!(
            (failed.subject, failed.summary.as_str()),
            (Subject::Known(Some(id)), "login failed: wrong password")
        );
        let unknown = entry_of(&recorded(
            StreamId::login_unknown("0123abcd").as_str(),
            login::failed_unknown("0123abcd"),
            &none,
        ));
        assert_eq!(unknown.subject, Subject::Known(None));
        assert!(!unknown.summary.contains("0123abcd"), "{}", unknown.summary);
    }

    #[test]
    fn events_of_other_contexts_get_a_generic_summary_without_their_payload() {
        let entry = entry_of(&recorded(
            "project-42",
            NewEvent::new("ApiKeyIssued", json!({ "key_hash": "c2VjcmV0" })),
            &Metadata::actor("system"),
        ));
        assert_eq!(entry.summary, "ApiKeyIssued on project-42");
        assert_eq!(entry.subject, Subject::Known(None));
        let odd = entry_of(&RecordedEvent {
            metadata: json!({ "actor": 5, "client_ip": "198.51.100.1", "correlation_id": "x" }),
            ..recorded(
                "crm-1",
                NewEvent::new("UserRegistered", json!(null)),
                &Metadata::default(),
            )
        });
        assert_eq!(
            (odd.actor, odd.client_ip.as_deref(), odd.correlation_id),
            (None, Some("198.51.100.1"), None)
        );
    }

    #[test]
    fn an_unreadable_identity_event_is_still_audited() {
        let entry = entry_of(&recorded(
            StreamId::user(Uuid::now_v7()).as_str(),
            NewEvent::new("RolesChanged", json!({ "roles": "admin" })),
            &Metadata::default(),
        ));
        assert!(
            entry.summary.ends_with("(payload not understood)"),
            "{}",
            entry.summary
        );
        assert!(matches!(entry.subject, Subject::Known(Some(_))));
    }

    #[test]
    fn a_session_names_its_account_from_its_start() {
        let id = Uuid::now_v7();
        let start = SessionEvent::SessionStarted {
            user_id: id,
            expires_at: Utc::now(),
        };
        let stream = StreamId::session(Uuid::now_v7());
        let none = Metadata::default();
        let started = entry_of(&recorded(stream.as_str(), start.to_new_event(), &none));
        assert_eq!(started.subject, Subject::Known(Some(id)));
        let refreshed = SessionEvent::SessionRefreshed { generation: 2 }.to_new_event();
        let refreshed = entry_of(&recorded(stream.as_str(), refreshed, &none));
        assert_eq!(refreshed.subject, Subject::SessionOf(stream.into()));
        assert_eq!(refreshed.summary, "session refreshed (token generation 2)");
    }
}
