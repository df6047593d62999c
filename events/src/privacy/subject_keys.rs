//! The `subject_keys` table: one data key per person, created with their first personal field,
//! destroyed by their erasure.
//!
//! Keys that open are read from the table on every use and never kept: once an erasure has
//! committed, no process can open that person's fields again. Keys that seal single-event
//! appends outside a transaction are kept unwrapped in memory for at most
//! [`SEALING_KEY_TTL`] (so such an append is one statement, as one without personal data is);
//! that statement inserts only while every kept person's key row is still there
//! (the event store's guarded insert), so an erasure committed in any process refuses the next append
//! about the person, as it does without the kept key.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use chrono::NaiveDate;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::cipher::{CipherError, DataKey, KeyEncryptionKeys, WrappedKey};

/// Errors of the key table. Messages name subjects and key ids, never key material.
#[derive(Debug, thiserror::Error)]
pub enum SubjectKeysError {
    /// The database failed.
    #[error("subject keys: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored key does not unwrap: its key-encryption key is not in the ring, or the ring's
    /// entry of that id is not the one that wrapped it.
    #[error(
        "the data key of subject {subject} does not unwrap ({source}): PERSONAL_DATA_KEYS must hold the key-encryption key it was wrapped with"
    )]
    Unwrap {
        /// The subject whose key failed.
        subject: Uuid,
        /// Why.
        #[source]
        source: CipherError,
    },
    /// The subject is erased: nothing personal may be written about them again.
    #[error("subject {0} is erased")]
    Erased(Uuid),
}

/// How long a key that seals stays in memory.
pub const SEALING_KEY_TTL: Duration = Duration::from_secs(60);
/// At most this many sealing keys are kept (more: the oldest half is dropped).
const SEALING_KEYS_KEPT: usize = 10_000;

/// Unwrapped keys that seal (never open), each with when it was taken.
#[derive(Default)]
struct SealingKeys(Mutex<HashMap<Uuid, (DataKey, Instant)>>);

impl SealingKeys {
    fn get(&self, subject: Uuid) -> Option<DataKey> {
        let kept = self.0.lock().ok()?;
        kept.get(&subject)
            .filter(|(_, taken)| taken.elapsed() < SEALING_KEY_TTL)
            .map(|(key, _)| key.clone())
    }

    fn put(&self, subject: Uuid, key: &DataKey) {
        let Ok(mut kept) = self.0.lock() else { return };
        if kept.len() >= SEALING_KEYS_KEPT {
            let now = Instant::now();
            kept.retain(|_, (_, taken)| now.duration_since(*taken) < SEALING_KEY_TTL / 2);
        }
        if kept.len() < SEALING_KEYS_KEPT {
            kept.insert(subject, (key.clone(), Instant::now()));
        }
    }

    fn remove(&self, subject: Uuid) {
        if let Ok(mut kept) = self.0.lock() {
            kept.remove(&subject);
        }
    }
}

impl std::fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKeys(..)")
    }
}

/// The data keys of people, wrapped by the key-encryption keys of configuration.
#[derive(Debug, Clone)]
pub struct SubjectKeys {
    pool: PgPool,
    keks: KeyEncryptionKeys,
    sealing: Arc<SealingKeys>,
}

type Row = (Uuid, Option<String>, Option<Vec<u8>>);

impl SubjectKeys {
    /// Keys in `pool`'s `subject_keys`, wrapped by `keks`.
    pub fn new(pool: PgPool, keks: KeyEncryptionKeys) -> Self {
        Self {
            pool,
            keks,
            sealing: Arc::default(),
        }
    }

    /// The key-encryption keys.
    pub fn keks(&self) -> &KeyEncryptionKeys {
        &self.keks
    }

    /// The key of `subject` from its stored columns, read with other rows (`None`: it has no
    /// key, or it is destroyed).
    pub(crate) fn unwrap_stored(
        &self,
        subject: Uuid,
        kek_id: Option<String>,
        wrapped: Option<Vec<u8>>,
    ) -> Result<Option<DataKey>, SubjectKeysError> {
        Ok(self
            .unwrap_row((subject, kek_id, wrapped))?
            .map(|(_, key)| key))
    }

    fn unwrap_row(
        &self,
        (subject, kek_id, wrapped): Row,
    ) -> Result<Option<(Uuid, DataKey)>, SubjectKeysError> {
        let (Some(kek_id), Some(bytes)) = (kek_id, wrapped) else {
            return Ok(None);
        };
        let key = self
            .keks
            .unwrap_key(subject, &WrappedKey { kek_id, bytes })
            .map_err(|source| SubjectKeysError::Unwrap { subject, source })?;
        Ok(Some((subject, key)))
    }

    /// The key under which `subject`'s new personal fields are sealed, created if they have
    /// none yet, in the caller's transaction (so a key made for an append that rolls back is
    /// rolled back with it). [`SubjectKeysError::Erased`] once the subject is erased.
    pub async fn for_writing_in(
        &self,
        conn: &mut PgConnection,
        subject: Uuid,
    ) -> Result<DataKey, SubjectKeysError> {
        self.get_or_create(conn, subject, None)
            .await?
            .ok_or(SubjectKeysError::Erased(subject))
    }

    /// The key of `day`'s metadata ([`period_subject`]), created if the day has none yet, in
    /// the caller's transaction; `None` once the day is past its retention and its key
    /// destroyed (what would be sealed under it is not kept).
    pub async fn for_period_in(
        &self,
        conn: &mut PgConnection,
        day: NaiveDate,
    ) -> Result<Option<DataKey>, SubjectKeysError> {
        self.get_or_create(conn, period_subject(day), Some(day))
            .await
    }

    /// As [`SubjectKeys::for_writing_in`] on a connection outside a transaction (a key it
    /// creates commits at once), through the keys kept for sealing: `true` with a key taken
    /// from memory, whose row the append must find still there (the event store's guarded insert).
    pub(crate) async fn for_sealing(
        &self,
        conn: &mut PgConnection,
        subject: Uuid,
    ) -> Result<(DataKey, bool), SubjectKeysError> {
        if let Some(key) = self.sealing.get(subject) {
            return Ok((key, true));
        }
        let key = self.for_writing_in(conn, subject).await?;
        self.sealing.put(subject, &key);
        Ok((key, false))
    }

    /// As [`SubjectKeys::for_period_in`] outside a transaction, through the keys kept for
    /// sealing. A day's key is destroyed only once the day is past its retention, so a kept
    /// key of today needs no check.
    pub(crate) async fn for_period_sealing(
        &self,
        conn: &mut PgConnection,
        day: NaiveDate,
    ) -> Result<Option<DataKey>, SubjectKeysError> {
        let subject = period_subject(day);
        if let Some(key) = self.sealing.get(subject) {
            return Ok(Some(key));
        }
        let key = self.for_period_in(conn, day).await?;
        if let Some(key) = &key {
            self.sealing.put(subject, key);
        }
        Ok(key)
    }

    /// Drops the kept sealing key of `subject` (its row was found gone).
    pub(crate) fn forget_sealing(&self, subject: Uuid) {
        self.sealing.remove(subject);
    }

    /// The key of `subject`, created (for `day`'s metadata, with `day`) if it has none;
    /// `None` once destroyed.
    async fn get_or_create(
        &self,
        conn: &mut PgConnection,
        subject: Uuid,
        day: Option<NaiveDate>,
    ) -> Result<Option<DataKey>, SubjectKeysError> {
        for _ in 0..2 {
            let row: Option<Row> = sqlx::query_as(
                "select subject_id, kek_id, wrapped from subject_keys where subject_id = $1",
            )
            .bind(subject)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = row {
                return Ok(self.unwrap_row(row)?.map(|(_, key)| key));
            }
            let key = DataKey::generate();
            let wrapped = self.keks.wrap_key(subject, &key);
            let created = sqlx::query(
                "insert into subject_keys (subject_id, kek_id, wrapped, period_day)
                 values ($1, $2, $3, $4) on conflict do nothing",
            )
            .bind(subject)
            .bind(&wrapped.kek_id)
            .bind(&wrapped.bytes)
            .bind(day)
            .execute(&mut *conn)
            .await?;
            if created.rows_affected() == 1 {
                return Ok(Some(key));
            }
            // Another transaction created it first: read theirs.
        }
        Err(SubjectKeysError::Database(sqlx::Error::RowNotFound))
    }

    /// Destroys the keys of every day before `first_kept`: the metadata sealed under them
    /// reads as erased from now on. Returns how many day keys it destroyed.
    pub async fn expire_periods_before(
        &self,
        first_kept: NaiveDate,
    ) -> Result<u64, SubjectKeysError> {
        let done = sqlx::query(
            "update subject_keys set kek_id = null, wrapped = null, erased_at = now()
              where period_day < $1 and erased_at is null",
        )
        .bind(first_kept)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The keys of `subjects` that exist and are not erased.
    pub async fn for_reading(
        &self,
        subjects: &[Uuid],
    ) -> Result<HashMap<Uuid, DataKey>, SubjectKeysError> {
        let mut conn = self.pool.acquire().await?;
        self.for_reading_in(&mut conn, subjects).await
    }

    /// As [`SubjectKeys::for_reading`], on the caller's connection.
    pub async fn for_reading_in(
        &self,
        conn: &mut PgConnection,
        subjects: &[Uuid],
    ) -> Result<HashMap<Uuid, DataKey>, SubjectKeysError> {
        if subjects.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<Row> = sqlx::query_as(
            "select subject_id, kek_id, wrapped from subject_keys
              where subject_id = any($1) and erased_at is null",
        )
        .bind(subjects)
        .fetch_all(conn)
        .await?;
        let mut keys = HashMap::with_capacity(rows.len());
        for row in rows {
            if let Some((subject, key)) = self.unwrap_row(row)? {
                keys.insert(subject, key);
            }
        }
        Ok(keys)
    }

    /// Destroys `subject`'s key in the caller's transaction; true if this call destroyed it
    /// (false: already erased). A subject that never had a key gets an erased row, so no key is
    /// ever made for them afterwards.
    pub async fn erase_in(
        &self,
        conn: &mut PgConnection,
        subject: Uuid,
    ) -> Result<bool, SubjectKeysError> {
        let destroyed: Option<Uuid> = sqlx::query_scalar(
            "insert into subject_keys (subject_id, kek_id, wrapped, erased_at)
             values ($1, null, null, now())
             on conflict (subject_id) do update
                set kek_id = null, wrapped = null, erased_at = now()
              where subject_keys.erased_at is null
             returning subject_id",
        )
        .bind(subject)
        .fetch_optional(conn)
        .await?;
        self.sealing.remove(subject);
        Ok(destroyed.is_some())
    }

    /// Destroys the key of every person the log records as erased (`PersonErased` in their
    /// `user-<uuid>` stream) whose key is not destroyed (the key table restored from a backup
    /// older than the log); returns how many it destroyed. Idempotent.
    pub async fn reapply_erasures(&self) -> Result<u64, SubjectKeysError> {
        let done = sqlx::query(
            "insert into subject_keys (subject_id, kek_id, wrapped, erased_at)
             select distinct substr(stream_id, 6)::uuid, null::text, null::bytea, now()
               from events
              where event_type = 'PersonErased'
                and stream_id ~ '^user-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
             on conflict (subject_id) do update
                set kek_id = null, wrapped = null, erased_at = now()
              where subject_keys.erased_at is null",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Whether `subject` is erased.
    pub async fn is_erased(&self, subject: Uuid) -> Result<bool, SubjectKeysError> {
        let erased: Option<bool> = sqlx::query_scalar(
            "select erased_at is not null from subject_keys where subject_id = $1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(erased.unwrap_or(false))
    }

    /// Checks at start-up that the ring can unwrap the stored keys: one key of every
    /// key-encryption key id in the table is unwrapped. A missing or wrong entry in
    /// `PERSONAL_DATA_KEYS` stops start-up here, with the id it needs, rather than at the first
    /// read of a personal field.
    pub async fn check(&self) -> Result<(), SubjectKeysError> {
        let rows: Vec<Row> = sqlx::query_as(
            "select distinct on (kek_id) subject_id, kek_id, wrapped from subject_keys
              where kek_id is not null order by kek_id, subject_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            self.unwrap_row(row)?;
        }
        Ok(())
    }

    /// Re-wraps every key that is not under the current key-encryption key, `batch` at a time
    /// (each batch one transaction), calling `progress(done, total)` after each batch. Returns
    /// how many keys it re-wrapped. Afterwards the ring's older entries are no longer needed.
    pub async fn rewrap_all(
        &self,
        batch: i64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, SubjectKeysError> {
        let current = self.keks.current_id().to_owned();
        let total: i64 = sqlx::query_scalar(
            "select count(*) from subject_keys where kek_id is not null and kek_id <> $1",
        )
        .bind(&current)
        .fetch_one(&self.pool)
        .await?;
        let total = u64::try_from(total).unwrap_or(0);
        let mut done = 0u64;
        loop {
            let mut tx = self.pool.begin().await?;
            let rows: Vec<Row> = sqlx::query_as(
                "select subject_id, kek_id, wrapped from subject_keys
                  where kek_id is not null and kek_id <> $1
                  order by subject_id limit $2 for update skip locked",
            )
            .bind(&current)
            .bind(batch.max(1))
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                tx.commit().await?;
                return Ok(done);
            }
            let mut subjects = Vec::with_capacity(rows.len());
            let mut wrapped = Vec::with_capacity(rows.len());
            for row in rows {
                if let Some((subject, key)) = self.unwrap_row(row)? {
                    wrapped.push(self.keks.wrap_key(subject, &key).bytes);
                    subjects.push(subject);
                }
            }
            sqlx::query(
                "update subject_keys k set kek_id = $1, wrapped = w.wrapped
                   from unnest($2::uuid[], $3::bytea[]) as w(subject_id, wrapped)
                  where k.subject_id = w.subject_id and k.erased_at is null",
            )
            .bind(&current)
            .bind(&subjects)
            .bind(&wrapped)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            done += subjects.len() as u64;
            progress(done, total.max(done));
        }
    }
}

/// The subject id of `day`'s metadata key: derived from the day, so every process finds the
/// same key without coordination, and never a person's id (those are random or time-ordered,
/// never name-based).
pub fn period_subject(day: NaiveDate) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("idp/metadata-period/{day}").as_bytes(),
    )
}

#[cfg(test)]
#[path = "subject_keys_tests.rs"]
mod tests;
