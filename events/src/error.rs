//! Errors of the event store.
//!
//! Policy: variants that describe the caller's decision being refused (a version clash, a taken
//! reservation, a malformed event) are domain errors that the API maps to 4xx answers. Anything
//! else is [`AppendError::Database`] / [`ReadError::Database`]: infrastructure, logged once where
//! it is handled and answered with a generic 5xx.

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream is not at the version the writer decided on. HTTP 409.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream written to.
        stream_id: String,
        /// The version the writer expected (0 = no stream).
        expected: i64,
        /// The stream's actual version.
        actual: i64,
    },
    /// A unique value (an email, a project name) is already held by another stream. HTTP 409.
    #[error("{scope} is already taken")]
    ReservationTaken {
        /// What kind of value, e.g. `email`.
        scope: String,
    },
    /// One of the events (by id) is already in the log: the append was a repeat.
    #[error("an event with this id is already in the log")]
    DuplicateEvent,
    /// Nothing to append.
    #[error("an append needs at least one event")]
    Empty,
    /// The event cannot be stored as given (for example a NUL character in its JSON).
    #[error("the event cannot be stored: {0}")]
    InvalidEvent(String),
    /// Personal data could not be sealed: the person is erased, or their key is unavailable.
    #[error("personal data cannot be stored: {0}")]
    Personal(#[source] crate::privacy::SubjectKeysError),
    /// The database failed; not the caller's fault.
    #[error("the event log is unavailable")]
    Database(#[source] sqlx::Error),
}

impl AppendError {
    pub(crate) fn from_db(stream_id: &str, expected: Option<i64>, err: sqlx::Error) -> Self {
        let Some(db) = err.as_database_error() else {
            return Self::Database(err);
        };
        match db.code().as_deref() {
            Some("IE001") => Self::Conflict {
                stream_id: stream_id.to_owned(),
                expected: expected.unwrap_or_default(),
                actual: detail_of(db).and_then(|d| d.parse().ok()).unwrap_or(-1),
            },
            Some("IE002") => Self::ReservationTaken {
                scope: detail_of(db).unwrap_or_default(),
            },
            // A second writer raced past the advisory lock (cannot happen through idp_append,
            // but keep the contract if the table is written another way).
            Some("23505") if db.constraint() == Some("events_stream_version_key") => {
                Self::Conflict {
                    stream_id: stream_id.to_owned(),
                    expected: expected.unwrap_or_default(),
                    actual: -1,
                }
            }
            Some("23505") if db.constraint() == Some("events_event_id_key") => Self::DuplicateEvent,
            // 22P05: untranslatable character (NUL in JSON text), 22023/22P02: invalid JSON value.
            Some("22P05") | Some("22023") | Some("22P02") => {
                Self::InvalidEvent(db.message().to_owned())
            }
            _ => Self::Database(err),
        }
    }
}

fn detail_of(db: &dyn sqlx::error::DatabaseError) -> Option<String> {
    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| pg.detail())
        .map(str::to_owned)
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database failed.
    #[error("the event log is unavailable")]
    Database(#[from] sqlx::Error),
    /// The keys of personal fields could not be read or unwrapped.
    #[error("personal data keys are unavailable: {0}")]
    Keys(#[from] crate::privacy::SubjectKeysError),
}
