//! Personal fields on their way into and out of the log ([`crate::privacy`]).
//!
//! Writing: an append whose events or metadata hold a [`Personal`](crate::privacy::Personal)
//! value is about one person (`Append::about`); the store takes that person's data key in the
//! append's own transaction and seals every such value before the events are hashed, so the
//! chain and the seals cover the ciphertext. An append with personal data but no person, or
//! with a store that has no key-encryption keys, is refused: nothing personal is ever stored
//! in the clear.
//!
//! Reading: every read of the store opens the sealed values of the events it returns with one
//! query for the keys of their people, before upcasting (a value is bound to the place it was
//! written at). A value whose key is destroyed reads as `"[erased]"`.

use std::collections::{BTreeSet, HashMap};

use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::{AppendError, ReadError};
use crate::event::RecordedEvent;
use crate::privacy::fields::{Place, has_personal, open_fields, sealed_subjects};
use crate::privacy::{DataKey, SubjectKeys};
use crate::upcast::Upcasters;

/// The key an append's personal values are sealed under, and whose it is.
pub(crate) struct Sealing {
    pub(crate) subjects: Vec<Uuid>,
    pub(crate) key: DataKey,
}

/// Turns stored rows into events as readers see them, and seals what appends write.
#[derive(Debug, Default)]
pub(crate) struct Codec {
    pub(crate) upcasters: Upcasters,
    pub(crate) personal: Option<SubjectKeys>,
}

impl Codec {
    /// The sealing of an append about `subject` whose events or metadata are `parts`, if any
    /// of them holds a personal value. Runs in the append's transaction.
    pub(crate) async fn sealing<'a>(
        &self,
        conn: &mut PgConnection,
        subject: Option<Uuid>,
        mut parts: impl Iterator<Item = &'a serde_json::Value>,
    ) -> Result<Option<Sealing>, AppendError> {
        if !parts.any(has_personal) {
            return Ok(None);
        }
        let Some(keys) = &self.personal else {
            return Err(AppendError::InvalidEvent(
                "personal data cannot be stored without key-encryption keys (PERSONAL_DATA_KEYS)"
                    .into(),
            ));
        };
        let Some(subject) = subject else {
            return Err(AppendError::InvalidEvent(
                "personal data must be about someone (Append::about)".into(),
            ));
        };
        let key = keys
            .for_writing_in(conn, subject)
            .await
            .map_err(AppendError::Personal)?;
        Ok(Some(Sealing {
            subjects: vec![subject],
            key,
        }))
    }

    /// Events from rows with the `events` columns: personal values opened (with the keys read
    /// on `conn`, or the key table's pool), then upcast.
    pub(crate) async fn decode(
        &self,
        conn: Option<&mut PgConnection>,
        rows: &[PgRow],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = rows
            .iter()
            .map(RecordedEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.open(conn, &mut events).await?;
        for event in &mut events {
            self.upcasters.apply(event);
        }
        Ok(events)
    }

    /// Opens the sealed values of `events` in place.
    async fn open(
        &self,
        conn: Option<&mut PgConnection>,
        events: &mut [RecordedEvent],
    ) -> Result<(), ReadError> {
        let mut subjects = BTreeSet::new();
        for event in events.iter() {
            sealed_subjects(&event.data, &mut subjects);
            sealed_subjects(&event.metadata, &mut subjects);
        }
        if subjects.is_empty() {
            return Ok(());
        }
        let subjects: Vec<Uuid> = subjects.into_iter().collect();
        let keys: HashMap<Uuid, DataKey> = match (&self.personal, conn) {
            (Some(keys), Some(conn)) => keys.for_reading_in(conn, &subjects).await?,
            (Some(keys), None) => keys.for_reading(&subjects).await?,
            (None, _) => HashMap::new(),
        };
        let key_of = |ids: &[Uuid]| {
            let found: Option<Vec<&DataKey>> = ids.iter().map(|id| keys.get(id)).collect();
            found.map(|keys| DataKey::combine(&keys))
        };
        for event in events {
            let data = open_fields(&mut event.data, Place::Data(event.event_id), &key_of);
            let metadata = open_fields(
                &mut event.metadata,
                Place::Metadata {
                    stream_id: &event.stream_id,
                    recorded_at: event.recorded_at,
                },
                &key_of,
            );
            let refused = data.refused + metadata.refused;
            if refused > 0 {
                tracing::warn!(
                    event.id = %event.event_id,
                    refused,
                    "personal values that do not open at their place read as erased"
                );
            }
        }
        Ok(())
    }
}
