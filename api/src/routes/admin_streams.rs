//! `GET /v1/admin/streams/{stream_id}`: one stream's whole history, or its history up to an
//! instant with the aggregate's state as it was then (admin role required on every request).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use idp_events::RecordedEvent;
use idp_events::replay::{self, Until};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::permissions::{Permitted, ReadEvents};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/streams/{stream_id}", get(stream_history))
}

/// One event of the stream, as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    /// Global position in the log.
    pub position: i64,
    /// The event's identity.
    pub event_id: Uuid,
    /// Its version within the stream, from 1.
    pub version: i64,
    /// Past-tense event name, e.g. `RolesChanged`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Version of the payload's shape.
    pub schema_version: i32,
    /// The payload.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Actor, request, correlation and causation ids, client ip and user agent.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// When it was written.
    pub recorded_at: DateTime<Utc>,
    /// Link of the stream's hash chain (SHA-256, hex).
    pub hash: String,
}

impl From<&RecordedEvent> for StreamEvent {
    fn from(event: &RecordedEvent) -> Self {
        let mut data = event.data.clone();
        idp_events::privacy::fields::unmark(&mut data);
        let mut metadata = event.metadata.clone();
        idp_events::privacy::fields::unmark(&mut metadata);
        Self {
            position: event.position,
            event_id: event.event_id,
            version: event.stream_version,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            data,
            metadata,
            recorded_at: event.recorded_at,
            hash: hex::encode(&event.hash),
        }
    }
}

/// A stream's history and the state folded from it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"stream_id": "user-0190f4c2-7b00-7c3b-9d2a-111111111111", "version": 1,
    "events": [{"position": 1, "event_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "version": 1, "type": "UserRegistered",
                "schema_version": 1, "data": {"email": "ada@example.com", "roles": ["user"]},
                "metadata": {"actor": "user-0190f4c2-7b00-7c3b-9d2a-111111111111"},
                "recorded_at": "2026-12-01T10:00:00Z", "hash": "9f2c3b5d2b8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b"}],
    "state": {"email": "ada@example.com", "roles": ["user"], "email_verified": false}}))]
pub struct StreamHistory {
    /// The stream, e.g. `user-<uuid>`.
    pub stream_id: String,
    /// The stream's version at `as_of` (without it: now); 0 if it had no events yet.
    pub version: i64,
    /// The instant asked for, if any (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    /// The events, in stream order: all of them, or those recorded at or before `as_of`.
    pub events: Vec<StreamEvent>,
    /// The aggregate's state folded from `events` (users, sessions, logins, projects, jobs and
    /// breakers); null for other streams, or when the stream had no events yet.
    #[schema(value_type = Option<Object>)]
    pub state: Option<Value>,
}

/// Point in time of the history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Only events recorded at or before this instant (RFC 3339, e.g. `2026-01-31T12:00:00Z`;
    /// write a `+` offset as `%2B`), and the state folded from them.
    #[param(value_type = Option<DateTime<Utc>>)]
    pub as_of: Option<String>,
}

fn parse_as_of(raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "as_of {raw:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z \
                 (in a URL, write a '+' offset as %2B)"
            ))
        })
}

/// The history of one stream, and its aggregate's state, now or as of an instant.
#[utoipa::path(get, path = "/v1/admin/streams/{stream_id}", tag = "admin", security(("bearer" = [])),
    params(("stream_id" = String, Path, min_length = 1, max_length = 200, pattern = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$",
            example = "user-0190f4c2-7b00-7c3b-9d2a-111111111111",
            description = "The stream, e.g. `user-<uuid>`, `project-<uuid>` (1 to 200 characters, no whitespace or control characters)"),
           HistoryParams),
    responses((status = 200, description = "The stream's history and state", body = StreamHistory),
              (status = 400, description = "Bad stream id or as_of, or an unknown parameter"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such stream")))]
#[tracing::instrument(name = "admin.streams.history", skip_all, fields(stream.id = tracing::field::Empty))]
pub async fn stream_history(
    State(state): State<AppState>,
    Permitted { user: _admin, .. }: Permitted<ReadEvents>,
    ApiPath(stream_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<StreamHistory>, ApiError> {
    replay::check_stream_id(&stream_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::Span::current().record("stream.id", stream_id.as_str());
    let as_of = params.as_of.as_deref().map(parse_as_of).transpose()?;

    let history = state.store.read_stream(&stream_id, 1).await?;
    if history.is_empty() {
        return Err(ApiError::NotFound);
    }
    let events = match as_of {
        Some(at) => replay::events_until(&history, Until::Time(at)),
        None => &history,
    };
    Ok(Json(StreamHistory {
        version: events.last().map_or(0, |e| e.stream_version),
        as_of,
        state: replay::state_of(&stream_id, events),
        events: events.iter().map(StreamEvent::from).collect(),
        stream_id,
    }))
}
