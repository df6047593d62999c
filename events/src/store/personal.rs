//! Personal fields on their way into and out of the log ([`crate::privacy`]).
//!
//! Writing: an append whose events or metadata hold a [`Personal`](crate::privacy::Personal)
//! value is about one person (`Append::about`); the store takes that person's data key in the
//! append's own transaction and seals every such value before the events are hashed, so the
//! chain and the seals cover the ciphertext. Metadata values (client address, user agent) are
//! sealed under the person's key combined with the key of the append's day, which the worker
//! destroys after the retention period; once a day's key is gone, metadata written for that
//! day keeps no personal value at all. The client details belong to the append's actor when
//! that is a person (an administrator acting on someone's account), else to its subject (an
//! anonymous caller registering or signing in), else to no one (a sign-in to an address no
//! account has): then they are sealed under the day's key alone. An append with personal data but no person, or
//! with a store that has no key-encryption keys, is refused: nothing personal is ever stored
//! in the clear.
//!
//! Reading: every read of the store opens the sealed values of the events it returns with one
//! query for the keys of their people, before upcasting (a value is bound to the place it was
//! written at). A value whose key is destroyed reads as `"[erased]"`.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::{AppendError, ReadError};
use crate::event::RecordedEvent;
use crate::privacy::fields::{Opened, Place, has_personal, open_fields, sealed_subjects};
use crate::privacy::subject_keys::period_subject;
use crate::privacy::{DataKey, SubjectKeys, SubjectKeysError};
use crate::stream_id::StreamId;
use crate::upcast::Upcasters;

/// The key an append's personal values are sealed under, and whose it is.
pub(crate) struct Sealing {
    pub(crate) subjects: Vec<Uuid>,
    pub(crate) key: DataKey,
}

/// How an append's personal values are stored.
#[derive(Default)]
pub(crate) struct Sealings {
    /// For its events' data: the person's key.
    pub(crate) data: Option<Sealing>,
    /// For its metadata: the person's key and its day's combined, or `None` when the day's key
    /// is destroyed already (the values are not kept).
    pub(crate) metadata: Option<Option<Sealing>>,
    /// The people whose keys were taken from memory: the append inserts only while their key
    /// rows are still there (`INSERT_KNOWN_ONE_GUARDED`).
    pub(crate) guard: Vec<Uuid>,
}

/// Where an append takes its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// From the table, in the append's transaction.
    Table,
    /// Through the keys kept for sealing (a single-event append outside a transaction, whose
    /// statement checks the kept people's rows).
    Kept,
}

/// A person's key for sealing, from `source`; adds them to `guard` when it came from memory.
async fn person_key(
    keys: &SubjectKeys,
    conn: &mut PgConnection,
    person: Uuid,
    source: KeySource,
    guard: &mut Vec<Uuid>,
) -> Result<DataKey, SubjectKeysError> {
    match source {
        KeySource::Table => keys.for_writing_in(conn, person).await,
        KeySource::Kept => {
            let (key, kept) = keys.for_sealing(conn, person).await?;
            if kept && !guard.contains(&person) {
                guard.push(person);
            }
            Ok(key)
        }
    }
}

/// What a read opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// Data and metadata.
    All,
    /// The data only: the metadata stays as stored (its personal values sealed). For folds,
    /// which never look at metadata, and subscriptions whose handler does not
    /// ([`Handler::OPENS_METADATA`](crate::subscription::Handler::OPENS_METADATA)).
    Data,
}

/// Turns stored rows into events as readers see them, and seals what appends write.
#[derive(Debug, Default)]
pub(crate) struct Codec {
    pub(crate) upcasters: Upcasters,
    pub(crate) personal: Option<SubjectKeys>,
}

/// The person a metadata's `actor` names (`user-<uuid>`), if it names one.
fn actor_user(metadata: &serde_json::Value) -> Option<Uuid> {
    let actor = metadata.get("actor")?.as_str()?;
    StreamId::parse(actor).ok()?.user_id()
}

/// The sealing of metadata written at `recorded_at` about `owner`: under the owner's key and
/// the day's combined (the day's alone without an owner); `None` when either key is destroyed,
/// so nothing of it is kept.
/// `taken` is a key already taken in this append (the data's), reused when it is the owner's.
async fn metadata_sealing(
    keys: &SubjectKeys,
    conn: &mut PgConnection,
    owner: Option<Uuid>,
    taken: Option<&Sealing>,
    recorded_at: DateTime<Utc>,
    source: KeySource,
    guard: &mut Vec<Uuid>,
) -> Result<Option<Sealing>, AppendError> {
    let day = recorded_at.date_naive();
    let period = match source {
        KeySource::Table => keys.for_period_in(conn, day).await,
        KeySource::Kept => keys.for_period_sealing(conn, day).await,
    };
    let Some(period) = period.map_err(AppendError::Personal)? else {
        return Ok(None);
    };
    let Some(owner) = owner else {
        return Ok(Some(Sealing {
            subjects: vec![period_subject(day)],
            key: period,
        }));
    };
    let owners = match taken {
        Some(taken) if taken.subjects == [owner] => Ok(taken.key.clone()),
        _ => person_key(keys, conn, owner, source, guard).await,
    };
    match owners {
        Ok(key) => Ok(Some(Sealing {
            subjects: vec![owner, period_subject(day)],
            key: DataKey::combine(&[&key, &period]),
        })),
        Err(SubjectKeysError::Erased(_)) => Ok(None),
        Err(err) => Err(AppendError::Personal(err)),
    }
}

impl Codec {
    /// The sealings of an append about `subject` whose events' data are `data` and whose
    /// metadata is `metadata`, written at `recorded_at`, with keys from `source`. Runs in the
    /// append's transaction (or, with [`KeySource::Kept`], before its single statement).
    pub(crate) async fn sealing<'a>(
        &self,
        conn: &mut PgConnection,
        subject: Option<Uuid>,
        mut data: impl Iterator<Item = &'a serde_json::Value>,
        metadata: &serde_json::Value,
        recorded_at: DateTime<Utc>,
        source: KeySource,
    ) -> Result<Sealings, AppendError> {
        let in_data = data.any(has_personal);
        let in_metadata = has_personal(metadata);
        if !in_data && !in_metadata {
            return Ok(Sealings::default());
        }
        let Some(keys) = &self.personal else {
            return Err(AppendError::InvalidEvent(
                "personal data cannot be stored without key-encryption keys (PERSONAL_DATA_KEYS)"
                    .into(),
            ));
        };
        let mut sealings = Sealings::default();
        if in_data {
            let Some(subject) = subject else {
                return Err(AppendError::InvalidEvent(
                    "personal data must be about someone (Append::about)".into(),
                ));
            };
            let key = person_key(keys, conn, subject, source, &mut sealings.guard)
                .await
                .map_err(AppendError::Personal)?;
            sealings.data = Some(Sealing {
                subjects: vec![subject],
                key,
            });
        }
        if in_metadata {
            // The client details are the actor's, if the actor is a person; else (an anonymous
            // caller) the append's subject's, if it has one.
            let owner = actor_user(metadata).or(subject);
            let taken = sealings.data.as_ref();
            let mut guard = std::mem::take(&mut sealings.guard);
            let sealing =
                metadata_sealing(keys, conn, owner, taken, recorded_at, source, &mut guard).await;
            sealings.guard = guard;
            sealings.metadata = Some(sealing?);
        }
        Ok(sealings)
    }

    /// Events from rows with the `events` columns: personal values opened (with the keys read
    /// on `conn`, or the key table's pool), then upcast.
    pub(crate) async fn decode(
        &self,
        conn: Option<&mut PgConnection>,
        rows: &[PgRow],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        self.decode_parts(conn, rows, Opening::All, HashMap::new())
            .await
    }

    /// As [`Codec::decode`], opening only what `opening` says, with the keys of some subjects
    /// read already (`known`; `None`: the subject has no key, or it is destroyed).
    pub(crate) async fn decode_parts(
        &self,
        conn: Option<&mut PgConnection>,
        rows: &[PgRow],
        opening: Opening,
        known: HashMap<Uuid, Option<DataKey>>,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = rows
            .iter()
            .map(RecordedEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.open(conn, &mut events, opening, known).await?;
        for event in &mut events {
            self.upcasters.apply(event);
        }
        Ok(events)
    }

    /// Opens the sealed values of `events` in place, reading the keys `known` does not hold.
    pub(crate) async fn open(
        &self,
        conn: Option<&mut PgConnection>,
        events: &mut [RecordedEvent],
        opening: Opening,
        known: HashMap<Uuid, Option<DataKey>>,
    ) -> Result<(), ReadError> {
        let with_metadata = opening == Opening::All;
        let mut subjects = BTreeSet::new();
        for event in events.iter() {
            sealed_subjects(&event.data, &mut subjects);
            if with_metadata {
                sealed_subjects(&event.metadata, &mut subjects);
            }
        }
        if subjects.is_empty() {
            return Ok(());
        }
        let missing: Vec<Uuid> = subjects
            .into_iter()
            .filter(|subject| !known.contains_key(subject))
            .collect();
        let mut keys: HashMap<Uuid, DataKey> = match (&self.personal, conn) {
            (_, _) if missing.is_empty() => HashMap::new(),
            (Some(keys), Some(conn)) => keys.for_reading_in(conn, &missing).await?,
            (Some(keys), None) => keys.for_reading(&missing).await?,
            (None, _) => HashMap::new(),
        };
        keys.extend(
            known
                .into_iter()
                .filter_map(|(subject, key)| Some((subject, key?))),
        );
        // Combined keys are derived once per set of subjects, not once per field.
        let combined: std::cell::RefCell<HashMap<Vec<Uuid>, Option<DataKey>>> =
            std::cell::RefCell::default();
        let key_of = |ids: &[Uuid]| {
            if let Some(known) = combined.borrow().get(ids) {
                return known.clone();
            }
            let found: Option<Vec<&DataKey>> = ids.iter().map(|id| keys.get(id)).collect();
            let key = found.map(|keys| DataKey::combine(&keys));
            combined.borrow_mut().insert(ids.to_vec(), key.clone());
            key
        };
        for event in events {
            let data = open_fields(&mut event.data, Place::Data(event.event_id), &key_of);
            let metadata = if with_metadata {
                open_fields(
                    &mut event.metadata,
                    Place::Metadata {
                        stream_id: &event.stream_id,
                        recorded_at: event.recorded_at,
                    },
                    &key_of,
                )
            } else {
                Opened::default()
            };
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
