//! Exporting what idp holds about a person (GDPR Art. 15 and 20): every event about them with
//! their personal fields opened, their rows in the read models, and their projects.
//!
//! The events are those of their own streams (account, sign-ins), of their sessions and of the
//! projects they own, read in one query with one lookup of keys. The export is recorded as
//! `PersonalDataExported` (its actor says who asked) before anything is sent.

use chrono::{DateTime, Utc};
use idp_events::identity::user::UserEvent;
use idp_events::privacy::fields::unmark;
use idp_events::{RecordedEvent, StreamId};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Identity, IdentityError};
use crate::extract::ClientContext;

/// What an export holds, before it is written out.
#[derive(Debug)]
pub struct PersonalExport {
    /// The document's head: the person, their read-model rows and their projects.
    pub head: Value,
    /// Every event about them, oldest stream first, personal values opened.
    pub events: Vec<RecordedEvent>,
}

impl PersonalExport {
    /// The export as JSON chunks: the head's fields, then the events, `per_chunk` at a time.
    pub fn chunks(self, per_chunk: usize) -> impl Iterator<Item = String> {
        let mut head = self.head.to_string();
        // `{...}` without its closing brace, then `"events":[`.
        head.pop();
        head.push_str(",\"events\":[");
        let events = self.events;
        let per_chunk = per_chunk.max(1);
        let total = events.len();
        let mut body = Vec::with_capacity(total.div_ceil(per_chunk) + 2);
        body.push(head);
        for (n, chunk) in events.chunks(per_chunk).enumerate() {
            let mut text = String::new();
            for (i, event) in chunk.iter().enumerate() {
                if n > 0 || i > 0 {
                    text.push(',');
                }
                text.push_str(&event_json(event).to_string());
            }
            body.push(text);
        }
        body.push("]}".to_owned());
        body.into_iter()
    }
}

/// One event as the export shows it: personal values as plain values.
fn event_json(event: &RecordedEvent) -> Value {
    let mut data = event.data.clone();
    unmark(&mut data);
    let mut metadata = event.metadata.clone();
    unmark(&mut metadata);
    json!({
        "position": event.position,
        "event_id": event.event_id,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "event_type": event.event_type,
        "recorded_at": event.recorded_at,
        "data": data,
        "metadata": metadata,
    })
}

impl Identity {
    /// Everything about `user_id`, recorded as `PersonalDataExported` with `actor` as its
    /// actor. [`IdentityError::NotFound`] for no such account, [`IdentityError::Erased`] for
    /// an erased person (nothing is left to export).
    pub async fn export(
        &self,
        ctx: &ClientContext,
        actor: &str,
        user_id: Uuid,
    ) -> Result<PersonalExport, IdentityError> {
        let account = self.load_user(user_id).await?;
        if account.erased {
            return Err(IdentityError::Erased);
        }
        self.append_user(
            &account,
            &[UserEvent::PersonalDataExported],
            ctx.metadata(actor),
        )
        .await?;
        let mut conn = self.pool.acquire().await?;
        let sessions: Vec<Uuid> = sqlx::query_scalar(
            "select session_id from sessions where user_id = $1 order by session_id",
        )
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
        let projects: Vec<Value> = sqlx::query_scalar(
            "select to_jsonb(p) from projects p where owner_id = $1 order by created_at",
        )
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
        let directory: Option<Value> =
            sqlx::query_scalar("select to_jsonb(d) from users_directory d where user_id = $1")
                .bind(user_id)
                .fetch_optional(&mut *conn)
                .await?;
        let project_ids: Vec<Uuid> = projects
            .iter()
            .filter_map(|p| p.get("project_id")?.as_str()?.parse().ok())
            .collect();
        let mut streams = vec![StreamId::user(user_id), StreamId::login(user_id)];
        streams.extend(sessions.iter().map(|id| StreamId::session(*id)));
        streams.extend(project_ids.iter().map(|id| StreamId::project(*id)));
        let events: Vec<RecordedEvent> = self
            .store
            .read_streams_in(&mut conn, &streams)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let exported_at: DateTime<Utc> = Utc::now();
        let head = json!({
            "format": "idp-personal-data-export/v1",
            "exported_at": exported_at,
            "person": {
                "id": account.id,
                "email": account.email,
                "display_name": account.display_name,
                "roles": account.roles,
                "email_verified": account.email_verified,
                "registered_at": account.registered_at,
                "consents": account.consents,
            },
            "users_directory": directory,
            "projects": projects,
        });
        Ok(PersonalExport { head, events })
    }
}
