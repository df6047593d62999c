//! The shapes of events going into and coming out of the log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::privacy::Personal;

/// What the writer believes the stream's current version is. Versions start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
    /// Append whatever the stream's version is (writers are still serialised per stream).
    Any,
}

impl ExpectedVersion {
    /// What to expect of a stream folded to `version` (0 when it has no events yet).
    pub fn after(version: u64) -> Self {
        match version {
            0 => Self::NoStream,
            version => Self::Exact(version),
        }
    }

    /// The stream version the database must find, or `None` for [`ExpectedVersion::Any`].
    pub(crate) fn as_db(self) -> Option<i64> {
        match self {
            Self::NoStream => Some(0),
            Self::Exact(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
            Self::Any => None,
        }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Identity of the event and idempotency key for everything downstream (UUID v7).
    pub event_id: Uuid,
    /// Stable past-tense name, e.g. `UserRegistered`.
    pub event_type: String,
    /// Version of the payload's shape, starting at 1; see [`crate::Upcasters`].
    pub schema_version: i32,
    /// The payload.
    pub data: Value,
}

impl NewEvent {
    /// An event of schema version 1 with a fresh time-ordered id.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
        }
    }

    /// Sets the schema version of the payload.
    #[must_use]
    pub fn with_schema_version(mut self, schema_version: i32) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Sets the event id, for callers that derive ids deterministically (idempotent effects).
    #[must_use]
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }
}

/// Who caused an event, and in answer to what. Stored as the event's `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// The acting principal: `user-<uuid>`, `system`, `worker`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The HTTP request that caused the event, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Shared by every event of one business flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event that directly caused this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Client address as seen by the API: personal, sealed under the key of the append's
    /// person and of its day, so it is gone when either is destroyed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<Personal<String>>,
    /// Client user agent as seen by the API: personal, like the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Personal<String>>,
    /// The API key the request was made with, if it was made with one (else a signed-in
    /// session's access token, or no credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<Uuid>,
}

impl Metadata {
    /// Metadata naming only an actor.
    pub fn actor(actor: impl Into<String>) -> Self {
        Self {
            actor: Some(actor.into()),
            ..Self::default()
        }
    }
}

/// A position in commit-safe log order: events are read ordered by the transaction that wrote
/// them, then by their position. `Cursor::START` is before every event.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cursor {
    /// The writing transaction's id (`xid8`).
    pub transaction_id: i64,
    /// The event's global position.
    pub position: i64,
}

impl Cursor {
    /// Before the first event.
    pub const START: Cursor = Cursor {
        transaction_id: 0,
        position: 0,
    };
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedEvent {
    /// Global order of insertion.
    pub position: i64,
    /// The transaction that wrote the event.
    pub transaction_id: i64,
    /// The event's identity.
    pub event_id: Uuid,
    /// The stream (aggregate) it belongs to, e.g. `user-<uuid>`.
    pub stream_id: String,
    /// Its version within the stream, from 1.
    pub stream_version: i64,
    /// Past-tense event name.
    pub event_type: String,
    /// Payload shape version (after upcasting, when read through an upcasting reader).
    pub schema_version: i32,
    /// The payload.
    pub data: Value,
    /// Actor, request, correlation and causation ids, client details.
    pub metadata: Value,
    /// When it was appended.
    pub recorded_at: DateTime<Utc>,
    /// Link of the stream's hash chain (SHA-256).
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
}

impl RecordedEvent {
    /// The cursor just after this event.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }

    /// The metadata as its typed form; unknown fields are ignored, malformed ones yield defaults.
    pub fn typed_metadata(&self) -> Metadata {
        Metadata::deserialize(&self.metadata).unwrap_or_default()
    }
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(bytes))
}
