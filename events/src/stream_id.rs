//! Stream ids: `<category>-<key>`, the one place that knows how they are spelled.
//!
//! Every stream of the log belongs to one [`Category`]; the key is a UUID for aggregates
//! (users, sessions, projects, jobs) and a keyed digest or a name for the others. Code builds
//! ids with the constructors here and reads them back with [`StreamId::parse`], never with
//! `format!` or `strip_prefix`.

use std::fmt;

use uuid::Uuid;

/// What kind of stream an id names: the part of the id before the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `user-<uuid>`: an account.
    User,
    /// `session-<uuid>`: one signed-in session.
    Session,
    /// `login-<uuid>`: the sign-in attempts of one account.
    Login,
    /// `login-unknown-<digest>`: sign-in attempts for an address no account has.
    LoginUnknown,
    /// `email-request-<digest>`: resend and forgot-password requests for an address.
    EmailRequest,
    /// `project-<uuid>`: a project and its provisioning.
    Project,
    /// `job-<uuid>`: one job (its attempts, dead letter and retries).
    Job,
    /// `breaker-<name>`: a circuit breaker's transitions.
    Breaker,
    /// `service-account-<uuid>`: a non-human account.
    ServiceAccount,
    /// `api-key-<uuid>`: one API key of a person or a service account.
    ApiKey,
    /// `plan-<uuid>`: the plan and spend cap of the account with that id.
    Plan,
}

impl Category {
    /// Every category, longest prefix first where one prefix starts another.
    pub const ALL: [Self; 11] = [
        Self::User,
        Self::Session,
        Self::LoginUnknown,
        Self::Login,
        Self::EmailRequest,
        Self::Project,
        Self::Job,
        Self::Breaker,
        Self::ServiceAccount,
        Self::ApiKey,
        Self::Plan,
    ];

    /// The category's name as the log spells it (the id without its `-<key>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Session => "session",
            Self::Login => "login",
            Self::LoginUnknown => "login-unknown",
            Self::EmailRequest => "email-request",
            Self::Project => "project",
            Self::Job => "job",
            Self::Breaker => "breaker",
            Self::ServiceAccount => "service-account",
            Self::ApiKey => "api-key",
            Self::Plan => "plan",
        }
    }

    /// Whether the key of this category is a UUID.
    fn keyed_by_uuid(self) -> bool {
        matches!(
            self,
            Self::User
                | Self::Session
                | Self::Login
                | Self::Project
                | Self::Job
                | Self::ServiceAccount
                | Self::ApiKey
                | Self::Plan
        )
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream id that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// The id starts with no known category.
    #[error("stream id {0:?} names no known category")]
    UnknownCategory(String),
    /// The category wants a UUID and the key is not one.
    #[error("stream id {0:?} does not end in a UUID")]
    NotAUuid(String),
    /// The key is empty.
    #[error("stream id {0:?} has no key")]
    EmptyKey(String),
}

/// The id of one stream of the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    category: Category,
    id: String,
}

impl StreamId {
    fn new(category: Category, key: impl fmt::Display) -> Self {
        Self {
            category,
            id: format!("{category}-{key}"),
        }
    }

    /// The stream of account `id`.
    pub fn user(id: Uuid) -> Self {
        Self::new(Category::User, id)
    }

    /// The stream of session `id`.
    pub fn session(id: Uuid) -> Self {
        Self::new(Category::Session, id)
    }

    /// The sign-in attempts of account `id`.
    pub fn login(id: Uuid) -> Self {
        Self::new(Category::Login, id)
    }

    /// Sign-in attempts for an address no account has, named by the address's keyed digest.
    pub fn login_unknown(digest: &str) -> Self {
        Self::new(Category::LoginUnknown, digest)
    }

    /// Email requests (resend, forgot-password) for an address, named by its keyed digest.
    pub fn email_request(digest: &str) -> Self {
        Self::new(Category::EmailRequest, digest)
    }

    /// The stream of project `id`.
    pub fn project(id: Uuid) -> Self {
        Self::new(Category::Project, id)
    }

    /// The stream of job `id`.
    pub fn job(id: Uuid) -> Self {
        Self::new(Category::Job, id)
    }

    /// The transitions of the circuit breaker called `name`.
    pub fn breaker(name: &str) -> Self {
        Self::new(Category::Breaker, name)
    }

    /// The stream of service account `id`.
    pub fn service_account(id: Uuid) -> Self {
        Self::new(Category::ServiceAccount, id)
    }

    /// The stream of API key `id`.
    pub fn api_key(id: Uuid) -> Self {
        Self::new(Category::ApiKey, id)
    }

    /// The plan of account `id` (a person's or a service account's).
    pub fn plan(account_id: Uuid) -> Self {
        Self::new(Category::Plan, account_id)
    }

    /// Reads a stream id as the log stores it.
    ///
    /// # Errors
    /// When the id names no known category, has no key, or a category keyed by UUID has
    /// something else.
    pub fn parse(id: &str) -> Result<Self, StreamIdError> {
        // `login-unknown-x` also starts with `login-`: ALL lists the longer prefix first.
        let (category, key) = Category::ALL
            .into_iter()
            .find_map(|category| {
                let key = id.strip_prefix(category.as_str())?.strip_prefix('-')?;
                Some((category, key))
            })
            .ok_or_else(|| StreamIdError::UnknownCategory(id.to_owned()))?;
        if key.is_empty() {
            return Err(StreamIdError::EmptyKey(id.to_owned()));
        }
        // A UUID key must be a UUID, spelled as the constructors spell it.
        if category.keyed_by_uuid()
            && Uuid::parse_str(key).map(|u| u.to_string()).ok().as_deref() != Some(key)
        {
            return Err(StreamIdError::NotAUuid(id.to_owned()));
        }
        Ok(Self {
            category,
            id: id.to_owned(),
        })
    }

    /// The stream's category.
    pub fn category(&self) -> Category {
        self.category
    }

    /// The part after `<category>-`.
    pub fn key(&self) -> &str {
        &self.id[self.category.as_str().len() + 1..]
    }

    /// The UUID of an aggregate stream (user, session, login, project, job).
    pub fn uuid(&self) -> Option<Uuid> {
        if self.category.keyed_by_uuid() {
            Uuid::parse_str(self.key()).ok()
        } else {
            None
        }
    }

    /// The account id, if this is a user stream.
    pub fn user_id(&self) -> Option<Uuid> {
        self.uuid_of(Category::User)
    }

    /// The project id, if this is a project stream.
    pub fn project_id(&self) -> Option<Uuid> {
        self.uuid_of(Category::Project)
    }

    /// The job id, if this is a job stream.
    pub fn job_id(&self) -> Option<Uuid> {
        self.uuid_of(Category::Job)
    }

    fn uuid_of(&self, category: Category) -> Option<Uuid> {
        (self.category == category).then(|| self.uuid()).flatten()
    }

    /// The id as the log stores it.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> Self {
        id.id
    }
}

impl From<&StreamId> for String {
    fn from(id: &StreamId) -> Self {
        id.id.clone()
    }
}

impl PartialEq<str> for StreamId {
    fn eq(&self, other: &str) -> bool {
        self.id == other
    }
}

impl PartialEq<&str> for StreamId {
    fn eq(&self, other: &&str) -> bool {
        self.id == *other
    }
}

impl std::str::FromStr for StreamId {
    type Err = StreamIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constructor_round_trips_through_parse() {
        let id = Uuid::now_v7();
        for stream in [
            StreamId::user(id),
            StreamId::session(id),
            StreamId::login(id),
            StreamId::login_unknown("0123abcd"),
            StreamId::email_request("0123abcd"),
            StreamId::project(id),
            StreamId::job(id),
            StreamId::breaker("smtp"),
        ] {
            assert_eq!(StreamId::parse(stream.as_str()), Ok(stream.clone()));
        }
    }

    #[test]
    fn categories_cover_every_constructor_once() {
        let id = Uuid::nil();
        let mut seen: Vec<Category> = [
            StreamId::user(id),
            StreamId::session(id),
            StreamId::login(id),
            StreamId::login_unknown("d"),
            StreamId::email_request("d"),
            StreamId::project(id),
            StreamId::job(id),
            StreamId::breaker("b"),
            StreamId::service_account(id),
            StreamId::api_key(id),
            StreamId::plan(id),
        ]
        .iter()
        .map(StreamId::category)
        .collect();
        seen.sort();
        let mut all = Category::ALL.to_vec();
        all.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn ids_are_spelled_as_the_log_has_always_spelled_them() {
        let id = Uuid::nil();
        assert_eq!(StreamId::user(id).as_str(), format!("user-{id}"));
        assert_eq!(StreamId::project(id).to_string(), format!("project-{id}"));
        assert_eq!(String::from(StreamId::job(id)), format!("job-{id}"));
        assert_eq!(StreamId::login_unknown("ab").as_str(), "login-unknown-ab");
        assert_eq!(StreamId::email_request("ab").as_str(), "email-request-ab");
        assert_eq!(StreamId::breaker("smtp").as_str(), "breaker-smtp");
    }

    #[test]
    fn the_longer_category_wins_and_keys_are_checked() {
        let unknown = StreamId::parse("login-unknown-abc").unwrap();
        assert_eq!(unknown.category(), Category::LoginUnknown);
        assert_eq!(unknown.key(), "abc");
        assert_eq!(unknown.uuid(), None);
        let id = Uuid::now_v7();
        let login = StreamId::parse(&format!("login-{id}")).unwrap();
        assert_eq!(
            (login.category(), login.uuid()),
            (Category::Login, Some(id))
        );
        assert_eq!(login.user_id(), None, "a login stream is not a user stream");
        assert_eq!(StreamId::user(id).user_id(), Some(id));
        assert_eq!(StreamId::user(id).project_id(), None);
        assert_eq!(StreamId::project(id).project_id(), Some(id));
        assert_eq!(StreamId::job(id).job_id(), Some(id));
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        assert!(matches!(
            StreamId::parse("users-1"),
            Err(StreamIdError::UnknownCategory(_))
        ));
        assert!(matches!(
            StreamId::parse("user"),
            Err(StreamIdError::UnknownCategory(_))
        ));
        assert!(matches!(
            StreamId::parse("user-"),
            Err(StreamIdError::EmptyKey(_))
        ));
        assert!(matches!(
            StreamId::parse("user-42"),
            Err(StreamIdError::NotAUuid(_))
        ));
        assert!(matches!(
            StreamId::parse("login-unknown-"),
            Err(StreamIdError::EmptyKey(_))
        ));
        let upper = format!("user-{}", Uuid::now_v7())
            .to_uppercase()
            .replacen("USER", "user", 1);
        assert!(
            matches!(StreamId::parse(&upper), Err(StreamIdError::NotAUuid(_))),
            "one spelling per id: {upper}"
        );
    }
}
