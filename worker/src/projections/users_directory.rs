//! `users_directory`: one row per account, so administrators can list, search, filter and sort
//! accounts without folding every user stream.
//!
//! Sources: the user streams (`user-<uuid>`), the failed sign-ins of the login streams
//! (`login-<uuid>`) and the `SessionStarted` event that opens every session (a successful
//! sign-in). Status rule (also written at the table in the migration): `locked` from
//! `AccountLocked` until `AccountUnlocked`, `PasswordReset` or a sign-in after `locked_until`;
//! otherwise `active` once the address is verified, `unverified` before. A lock that ran out
//! without any of these leaves the row `locked`: whether a lock is in force is a query-time
//! question, `status = 'locked' and locked_until > now()`.
//!
//! Events are gathered per batch and written set-based in [`BatchHandler::write`]: one read
//! of the rows the batch touches, a fold in memory, one upsert. Each row remembers the position
//! of the last user-stream and login-stream event applied to it and skips events at or before
//! them, so applying an event twice changes nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use idp_events::identity::login::FailureReason;
use idp_events::identity::session::SessionEvent;
use idp_events::identity::user::UserEvent;
use idp_events::privacy::ERASED;
use idp_events::subscription::{Batch, BatchHandler, HandlerError, SubscriptionOptions};
use idp_events::{Category, EventTypes, RecordedEvent, StreamId};
use sqlx::PgConnection;
use uuid::Uuid;

/// The projection.
#[derive(Debug, Default)]
pub struct UsersDirectory {
    /// Changes of the batch in progress, in commit order.
    batch: Batch<Change>,
}

impl UsersDirectory {
    /// Subscription name.
    pub const NAME: &'static str = "users_directory";
}

impl super::Projection for UsersDirectory {
    // The inherent constant, which callers use without importing the trait.
    const NAME: &'static str = UsersDirectory::NAME;

    fn options() -> SubscriptionOptions {
        super::set_based_options()
    }
}

/// What an event says about an account.
#[derive(Debug, Clone, PartialEq)]
enum Fact {
    User(UserEvent),
    LoginFailed(FailureReason),
    SignedIn,
}

/// A fact about one account, with where and when the log recorded it: what one event
/// contributes to a batch of the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    user_id: Uuid,
    position: i64,
    at: DateTime<Utc>,
    fact: Fact,
}

#[derive(serde::Deserialize)]
struct LoginFailedData {
    reason: FailureReason,
}

/// The change `event` makes to the directory; `None` for events the directory does not follow
/// (other contexts, other event types). Only an event of a followed type on a followed stream
/// that cannot be decoded is an error.
fn change_of(event: &RecordedEvent) -> Result<Option<Change>, HandlerError> {
    let undecodable = || {
        HandlerError::msg(format!(
            "{} at position {} cannot be decoded",
            event.event_type, event.position
        ))
    };
    let Ok(stream) = StreamId::parse(&event.stream_id) else {
        return Ok(None);
    };
    let (user_id, fact) = match (stream.category(), stream.uuid()) {
        (Category::User, Some(user_id)) => {
            if !UserEvent::has_type(&event.event_type) {
                return Ok(None);
            }
            let decoded = UserEvent::from_recorded(event).ok_or_else(undecodable)?;
            (user_id, Fact::User(decoded))
        }
        (Category::Login, Some(user_id)) => {
            if event.event_type != "LoginFailed" {
                return Ok(None);
            }
            let data: LoginFailedData =
                serde_json::from_value(event.data.clone()).map_err(|_| undecodable())?;
            (user_id, Fact::LoginFailed(data.reason))
        }
        (Category::Session, _) if event.event_type == "SessionStarted" => {
            match SessionEvent::from_recorded(event) {
                Some(SessionEvent::SessionStarted { user_id, .. }) => (user_id, Fact::SignedIn),
                _ => return Err(undecodable()),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(Change {
        user_id,
        position: event.position,
        at: event.recorded_at,
        fact,
    }))
}

/// Where an account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Unverified,
    Active,
    Locked,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unverified => "unverified",
            Self::Active => "active",
            Self::Locked => "locked",
        }
    }
}

/// A row of `users_directory`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Entry {
    user_id: Uuid,
    email: String,
    display_name: Option<String>,
    roles: Vec<String>,
    email_verified_at: Option<DateTime<Utc>>,
    locked_until: Option<DateTime<Utc>>,
    lock_count: i32,
    failed_logins: i32,
    created_at: DateTime<Utc>,
    last_login_at: Option<DateTime<Utc>>,
    password_changed_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    last_position: i64,
    login_position: i64,
}

impl Entry {
    fn status(&self) -> Status {
        if self.locked_until.is_some() {
            Status::Locked
        } else if self.email_verified_at.is_some() {
            Status::Active
        } else {
            Status::Unverified
        }
    }

    fn registered(
        change: &Change,
        email: &str,
        display_name: Option<&str>,
        roles: &[String],
    ) -> Self {
        Self {
            user_id: change.user_id,
            email: email.to_owned(),
            display_name: display_name.map(str::to_owned),
            roles: roles.to_vec(),
            email_verified_at: None,
            locked_until: None,
            lock_count: 0,
            failed_logins: 0,
            created_at: change.at,
            last_login_at: None,
            password_changed_at: Some(change.at),
            updated_at: change.at,
            last_position: change.position,
            login_position: 0,
        }
    }
}

/// Applies `change` to the account's row (`None`: no row yet) and says whether it changed.
/// Facts about an account the directory has no registration for are ignored: they cannot
/// happen in a consistent log, and a row needs the registration's email and time.
fn apply(entry: &mut Option<Entry>, change: &Change) -> bool {
    if let Fact::User(UserEvent::UserRegistered {
        email,
        display_name,
        roles,
    }) = &change.fact
    {
        if entry
            .as_ref()
            .is_some_and(|e| change.position <= e.last_position)
        {
            return false;
        }
        *entry = Some(Entry::registered(
            change,
            email.known().map_or(ERASED, String::as_str),
            display_name
                .as_ref()
                .map(|name| name.known().map_or(ERASED, String::as_str)),
            roles,
        ));
        return true;
    }
    let Some(e) = entry.as_mut() else {
        return false;
    };
    match &change.fact {
        Fact::User(event) => {
            if change.position <= e.last_position {
                return false;
            }
            e.last_position = change.position;
            apply_user_event(e, event, change.at);
        }
        Fact::LoginFailed(reason) => {
            if change.position <= e.login_position {
                return false;
            }
            e.login_position = change.position;
            // As the API's lockout counts: wrong passwords only.
            if *reason == FailureReason::WrongPassword {
                e.failed_logins = e.failed_logins.saturating_add(1);
            }
        }
        Fact::SignedIn => {
            e.last_login_at = Some(e.last_login_at.map_or(change.at, |t| t.max(change.at)));
            e.failed_logins = 0;
            // A sign-in is only let through once the lock has ended.
            if e.locked_until.is_some_and(|until| change.at >= until) {
                e.locked_until = None;
            }
        }
    }
    e.updated_at = e.updated_at.max(change.at);
    true
}

fn apply_user_event(e: &mut Entry, event: &UserEvent, at: DateTime<Utc>) {
    match event {
        // Handled by `apply`, which may create the row.
        UserEvent::UserRegistered { .. } => {}
        UserEvent::EmailVerified { .. } => {
            e.email_verified_at.get_or_insert(at);
        }
        UserEvent::PasswordReset { .. } => {
            e.password_changed_at = Some(at);
            e.failed_logins = 0;
            // A reset proves control of the mailbox and ends a lock (as the aggregate says).
            e.locked_until = None;
        }
        UserEvent::PasswordChanged => {
            e.password_changed_at = Some(at);
            e.failed_logins = 0;
        }
        UserEvent::PendingRegistrationConfirmed { display_name, .. } => {
            e.display_name = display_name
                .as_ref()
                .map(|name| name.known().map_or_else(|| ERASED.to_owned(), Clone::clone));
            e.password_changed_at = Some(at);
        }
        UserEvent::RolesChanged { roles } => e.roles.clone_from(roles),
        UserEvent::AccountLocked { until, lock_count } => {
            e.locked_until = Some(*until);
            e.lock_count = i32::try_from(*lock_count).unwrap_or(i32::MAX);
            e.failed_logins = 0;
        }
        UserEvent::AccountUnlocked => {
            e.locked_until = None;
            e.failed_logins = 0;
        }
        UserEvent::PersonErased { .. } => {
            e.email = ERASED.to_owned();
            e.display_name = None;
        }
        UserEvent::VerificationRequested { .. }
        | UserEvent::PersonalDataExported
        | UserEvent::ConsentGiven { .. }
        | UserEvent::ConsentWithdrawn { .. }
        | UserEvent::RegistrationRepeated { .. }
        | UserEvent::DuplicateRegistrationAttempted { .. }
        | UserEvent::PasswordResetRequested { .. }
        | UserEvent::PasswordRehashed
        | UserEvent::SecondFactorEnrolmentStarted
        | UserEvent::SecondFactorEnabled
        | UserEvent::SecondFactorDisabled
        | UserEvent::SecondFactorReset { .. }
        | UserEvent::RecoveryCodesGenerated { .. }
        | UserEvent::RecoveryCodeUsed { .. }
        | UserEvent::SecondFactorLocked { .. }
        | UserEvent::NewDeviceSignedIn { .. }
        | UserEvent::ExternalIdentityLinked { .. }
        | UserEvent::ExternalIdentityUnlinked { .. } => {}
    }
}

const SELECT_ENTRIES: &str = "
select user_id, email, display_name, roles, email_verified_at, locked_until, lock_count,
       failed_logins, created_at, last_login_at, password_changed_at, updated_at, last_position,
       login_position
  from users_directory
 where user_id = any($1)";

const UPSERT_ENTRIES: &str = "
insert into users_directory (user_id, email, display_name, roles, status, email_verified_at,
                             locked_until, lock_count, failed_logins, created_at, last_login_at,
                             password_changed_at, updated_at, last_position, login_position)
select t.user_id, t.email, t.display_name,
       array(select jsonb_array_elements_text(t.roles)), t.status, t.email_verified_at,
       t.locked_until, t.lock_count, t.failed_logins, t.created_at, t.last_login_at,
       t.password_changed_at, t.updated_at, t.last_position, t.login_position
  from unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::timestamptz[],
              $7::timestamptz[], $8::int[], $9::int[], $10::timestamptz[], $11::timestamptz[],
              $12::timestamptz[], $13::timestamptz[], $14::bigint[], $15::bigint[])
       as t(user_id, email, display_name, roles, status, email_verified_at, locked_until,
            lock_count, failed_logins, created_at, last_login_at, password_changed_at,
            updated_at, last_position, login_position)
on conflict (user_id) do update
   set email = excluded.email,
       display_name = excluded.display_name,
       roles = excluded.roles,
       status = excluded.status,
       email_verified_at = excluded.email_verified_at,
       locked_until = excluded.locked_until,
       lock_count = excluded.lock_count,
       failed_logins = excluded.failed_logins,
       created_at = excluded.created_at,
       last_login_at = excluded.last_login_at,
       password_changed_at = excluded.password_changed_at,
       updated_at = excluded.updated_at,
       last_position = excluded.last_position,
       login_position = excluded.login_position";

/// Writes `entries` in one statement.
async fn upsert(conn: &mut PgConnection, entries: &[&Entry]) -> Result<(), sqlx::Error> {
    macro_rules! column {
        ($f:expr) => {
            entries.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query(UPSERT_ENTRIES)
        .bind(column!(|e| e.user_id))
        .bind(column!(|e| e.email.as_str()))
        .bind(column!(|e| e.display_name.as_deref()))
        .bind(column!(|e| serde_json::json!(e.roles)))
        .bind(column!(|e| e.status().as_str()))
        .bind(column!(|e| e.email_verified_at))
        .bind(column!(|e| e.locked_until))
        .bind(column!(|e| e.lock_count))
        .bind(column!(|e| e.failed_logins))
        .bind(column!(|e| e.created_at))
        .bind(column!(|e| e.last_login_at))
        .bind(column!(|e| e.password_changed_at))
        .bind(column!(|e| e.updated_at))
        .bind(column!(|e| e.last_position))
        .bind(column!(|e| e.login_position))
        .execute(conn)
        .await?;
    Ok(())
}

impl BatchHandler for UsersDirectory {
    type Item = Change;
    /// The directory keeps no client details.
    const OPENS_METADATA: bool = false;

    fn batch(&self) -> &Batch<Change> {
        &self.batch
    }

    fn gather(&self, event: &RecordedEvent, changes: &mut Vec<Change>) -> Result<(), HandlerError> {
        changes.extend(change_of(event)?);
        Ok(())
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        changes: Vec<Change>,
    ) -> Result<(), HandlerError> {
        super::commit_without_flush_wait(&mut *conn).await?;
        let mut ids: Vec<Uuid> = changes.iter().map(|c| c.user_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let stored: Vec<Entry> = sqlx::query_as(SELECT_ENTRIES)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        let mut entries: HashMap<Uuid, Option<Entry>> = ids.iter().map(|id| (*id, None)).collect();
        for entry in stored {
            entries.insert(entry.user_id, Some(entry));
        }
        let mut changed: HashSet<Uuid> = HashSet::with_capacity(ids.len());
        for change in &changes {
            let entry = entries.entry(change.user_id).or_default();
            if apply(entry, change) {
                changed.insert(change.user_id);
            }
        }
        let dirty: Vec<&Entry> = ids
            .iter()
            .filter(|id| changed.contains(*id))
            .filter_map(|id| entries.get(id).and_then(Option::as_ref))
            .collect();
        if !dirty.is_empty() {
            upsert(conn, &dirty).await?;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("truncate users_directory")
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;

    use super::*;

    const ADA: Uuid = Uuid::from_u128(0xada);

    fn recorded(stream_id: &str, position: i64, event: idp_events::NewEvent) -> RecordedEvent {
        RecordedEvent {
            position,
            transaction_id: position,
            event_id: event.event_id,
            stream_id: stream_id.to_owned(),
            stream_version: 1,
            event_type: event.event_type,
            schema_version: 1,
            data: event.data,
            metadata: json!({}),
            recorded_at: Utc::now(),
            hash: vec![0; 32],
        }
    }

    fn change(position: i64, at: DateTime<Utc>, fact: Fact) -> Change {
        Change {
            user_id: ADA,
            position,
            at,
            fact,
        }
    }

    /// Folds `facts` (positions 1, 2, ... one second apart) into a row.
    fn given(facts: Vec<Fact>) -> (Option<Entry>, DateTime<Utc>) {
        let start = Utc::now();
        let mut entry = None;
        let mut at = start;
        for (i, fact) in facts.into_iter().enumerate() {
            at = start + Duration::seconds(i64::try_from(i).unwrap_or_default());
            apply(
                &mut entry,
                &change(i64::try_from(i).unwrap_or_default() + 1, at, fact),
            );
        }
        (entry, at)
    }

    fn registered() -> Fact {
        Fact::User(UserEvent::UserRegistered {
            email: "ada@example.com".into(),
            display_name: Some("Ada".into()),
            roles: vec!["user".into()],
        })
    }

    fn verified() -> Fact {
        Fact::User(UserEvent::EmailVerified {
            verification_id: None,
        })
    }

    #[test]
    fn a_new_account_is_unverified_until_its_address_is_verified() {
        let (entry, _) = given(vec![registered()]);
        assert_eq!(entry.as_ref().map(Entry::status), Some(Status::Unverified));
        let (entry, at) = given(vec![registered(), verified()]);
        let entry = entry.expect("a row");
        assert_eq!(entry.status(), Status::Active);
        assert_eq!(entry.email_verified_at, Some(at));
    }

    #[test]
    fn a_lock_holds_until_an_unlock_and_wrong_passwords_count_until_then() {
        let until = Utc::now() + Duration::hours(1);
        let wrong = || Fact::LoginFailed(FailureReason::WrongPassword);
        let (entry, _) = given(vec![registered(), verified(), wrong(), wrong()]);
        assert_eq!(entry.as_ref().map(|e| e.failed_logins), Some(2));
        let locked = Fact::User(UserEvent::AccountLocked {
            until,
            lock_count: 1,
        });
        let (entry, _) = given(vec![registered(), verified(), wrong(), locked.clone()]);
        let entry = entry.expect("a row");
        assert_eq!(
            (
                entry.status(),
                entry.locked_until,
                entry.lock_count,
                entry.failed_logins
            ),
            (Status::Locked, Some(until), 1, 0)
        );
        let (entry, _) = given(vec![
            registered(),
            verified(),
            locked,
            Fact::User(UserEvent::AccountUnlocked),
        ]);
        let entry = entry.expect("a row");
        assert_eq!((entry.status(), entry.locked_until), (Status::Active, None));
        assert_eq!(entry.lock_count, 1);
    }

    #[test]
    fn a_sign_in_after_the_lock_ended_shows_the_account_active_again() {
        let (entry, _) = given(vec![
            registered(),
            verified(),
            Fact::User(UserEvent::AccountLocked {
                until: Utc::now() - Duration::days(1),
                lock_count: 1,
            }),
            Fact::SignedIn,
        ]);
        let entry = entry.expect("a row");
        assert_eq!(entry.status(), Status::Active);
        assert!(entry.last_login_at.is_some());
    }

    #[test]
    fn an_event_applied_twice_changes_nothing() {
        let at = Utc::now();
        let mut entry = None;
        let facts = [
            change(1, at, registered()),
            change(
                2,
                at,
                Fact::User(UserEvent::RolesChanged {
                    roles: vec!["admin".into(), "user".into()],
                }),
            ),
            change(3, at, Fact::LoginFailed(FailureReason::WrongPassword)),
        ];
        for c in &facts {
            assert!(apply(&mut entry, c));
        }
        let once = entry.clone();
        for c in &facts {
            assert!(!apply(&mut entry, c), "{c:?} applied again");
        }
        assert_eq!(entry, once);
    }

    #[test]
    fn facts_about_an_unknown_account_are_ignored() {
        let mut entry = None;
        assert!(!apply(&mut entry, &change(1, Utc::now(), Fact::SignedIn)));
        assert_eq!(entry, None);
    }

    #[test]
    fn other_contexts_events_are_ignored_and_a_malformed_own_event_is_an_error() {
        let foreign = recorded(
            "crm-contact-1",
            1,
            idp_events::NewEvent::new("UserRegistered", json!({ "name": 3 })),
        );
        assert!(matches!(change_of(&foreign), Ok(None)));
        let unknown_type = recorded(
            StreamId::user(ADA).as_str(),
            2,
            idp_events::NewEvent::new("AvatarUploaded", json!([1, 2])),
        );
        assert!(matches!(change_of(&unknown_type), Ok(None)));
        let malformed = recorded(
            StreamId::user(ADA).as_str(),
            3,
            idp_events::NewEvent::new("AccountLocked", json!({ "until": "soon" })),
        );
        assert!(change_of(&malformed).is_err());
        let unknown_login = recorded(
            "login-unknown-0123456789abcdef",
            4,
            idp_events::NewEvent::new("LoginFailed", json!({ "reason": "unknown_account" })),
        );
        assert!(matches!(change_of(&unknown_login), Ok(None)));
    }

    #[test]
    fn every_user_event_type_is_followed() {
        // A payload-less event of each type: unit variants decode, the others are errors (to be
        // retried and parked), and none is ignored as a stranger's.
        for event_type in UserEvent::TYPES {
            let recorded = recorded(
                StreamId::user(ADA).as_str(),
                1,
                idp_events::NewEvent::new(*event_type, json!({})),
            );
            assert!(
                !matches!(change_of(&recorded), Ok(None)),
                "{event_type} is not followed"
            );
        }
    }

    #[test]
    fn a_user_event_becomes_the_fact_it_states() {
        let events = [
            UserEvent::UserRegistered {
                email: "ada@example.com".into(),
                display_name: Some("Ada".into()),
                roles: vec!["user".into()],
            },
            UserEvent::PendingRegistrationConfirmed {
                registration_id: Uuid::nil(),
                display_name: None,
            },
            UserEvent::PasswordChanged,
            UserEvent::AccountLocked {
                until: Utc::now(),
                lock_count: 1,
            },
        ];
        for event in events {
            let recorded = recorded(StreamId::user(ADA).as_str(), 1, event.to_new_event());
            let change = change_of(&recorded).ok().flatten();
            assert_eq!(change.map(|c| c.fact), Some(Fact::User(event)));
        }
    }
}
