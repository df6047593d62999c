//! Sealing: reading the events committed since the last seal and writing the next seal over
//! them, in one transaction under a lock so the chain never forks; reading stored seals.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, PgPool, Row};

use super::format::{Seal, SealFields, events_digest};
use super::keys::SealSigner;
use super::{ENTRY_LEN, GENESIS, LOCK_CLASS, ROUND_LOCK};
use crate::event::Cursor;

/// Why a seal could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The database failed.
    #[error("database error while sealing: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored seal does not have the shape every seal has.
    #[error("seal {seal_number} is malformed: {reason}")]
    Malformed {
        /// The seal.
        seal_number: i64,
        /// What is wrong.
        reason: String,
    },
}

const SEAL_COLUMNS: &str = "seal_number, from_transaction_id::text::bigint, from_position,
        to_transaction_id::text::bigint, to_position, event_count, events_digest, previous_hash,
        seal_hash, signature, key_id, created_at";

// In the two queries below the table is aliased `e` so that `order by e.transaction_id` sorts
// by the column (and walks its index), not by the bigint cast the select list names alike.

/// The events to seal next: committed (below the commit-safe horizon), after `$1/$2`.
const PENDING: &str = "
select e.transaction_id::text::bigint, e.position, e.hash from events e
 where (e.transaction_id, e.position) > (($1::bigint)::text::xid8, $2)
   and e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 order by e.transaction_id, e.position
 limit $3";

const INSERT_SEAL: &str = "
insert into seals (seal_number, from_transaction_id, from_position, to_transaction_id,
                   to_position, event_count, events_digest, previous_hash, seal_hash, signature,
                   key_id, created_at, entries)
values ($1, ($2::bigint)::text::xid8, $3, ($4::bigint)::text::xid8, $5, $6, $7, $8, $9, $10, $11,
        $12, $13)";

/// Seals up to `max_events` events committed since the last seal, in one transaction, and
/// returns the new seal; `None` (and nothing written) when there is nothing new. Concurrent
/// callers are serialised on a transaction-level advisory lock, so the chain never forks.
pub async fn seal_next(
    conn: &mut PgConnection,
    signer: &SealSigner,
    max_events: i64,
) -> Result<Option<Seal>, SealError> {
    let mut tx = conn.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(ROUND_LOCK)
        .execute(&mut *tx)
        .await?;
    let last = latest_on(&mut tx).await?;
    let (seal_number, after, previous_hash) = match &last {
        Some(seal) => (seal.fields.seal_number + 1, seal.fields.to, seal.seal_hash),
        None => (1, Cursor::START, GENESIS),
    };
    let rows = sqlx::query(PENDING)
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(max_events.max(1))
        .fetch_all(&mut *tx)
        .await?;
    let (Some(first), Some(last_row)) = (rows.first(), rows.last()) else {
        // Ended here, not on drop: a dropped transaction rolls back only when its connection
        // is next used, and would hold the round lock until then.
        tx.rollback().await?;
        return Ok(None);
    };
    let cursor_of = |row: &PgRow| -> Result<Cursor, sqlx::Error> {
        Ok(Cursor {
            transaction_id: row.try_get(0)?,
            position: row.try_get(1)?,
        })
    };
    let (from, to) = (cursor_of(first)?, cursor_of(last_row)?);
    let mut entries = Vec::with_capacity(rows.len() * ENTRY_LEN);
    for row in &rows {
        let position: i64 = row.try_get(1)?;
        let hash: &[u8] = row.try_get(2)?;
        entries.extend_from_slice(&position.to_be_bytes());
        entries.extend_from_slice(hash);
    }
    let event_count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let seal = signer.sign(SealFields {
        seal_number,
        from,
        to,
        event_count,
        events_digest: events_digest(&previous_hash, &entries),
        previous_hash,
        key_id: String::new(),
        created_at: now_micros(),
    });
    let f = &seal.fields;
    sqlx::query(INSERT_SEAL)
        .bind(f.seal_number)
        .bind(f.from.transaction_id)
        .bind(f.from.position)
        .bind(f.to.transaction_id)
        .bind(f.to.position)
        .bind(f.event_count)
        .bind(&f.events_digest[..])
        .bind(&f.previous_hash[..])
        .bind(&seal.seal_hash[..])
        .bind(&seal.signature[..])
        .bind(&f.key_id)
        .bind(f.created_at)
        .bind(entries)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(seal))
}

/// Seals everything committed since the last seal, `max_events` per seal; returns the new
/// seals (none when there was nothing new).
pub async fn seal_pending(
    conn: &mut PgConnection,
    signer: &SealSigner,
    max_events: i64,
) -> Result<Vec<Seal>, SealError> {
    let mut made = Vec::new();
    while let Some(seal) = seal_next(conn, signer, max_events).await? {
        made.push(seal);
    }
    Ok(made)
}

/// The latest seal, if any.
pub async fn latest(pool: &PgPool) -> Result<Option<Seal>, SealError> {
    let mut conn = pool.acquire().await?;
    latest_on(&mut conn).await
}

async fn latest_on(conn: &mut PgConnection) -> Result<Option<Seal>, SealError> {
    let row = sqlx::query(&format!(
        "select {SEAL_COLUMNS} from seals order by seal_number desc limit 1"
    ))
    .fetch_optional(conn)
    .await?;
    row.map(|row| seal_from_row(&row)).transpose()
}

pub(super) fn seal_from_row(row: &PgRow) -> Result<Seal, SealError> {
    let seal_number: i64 = row.try_get(0)?;
    let bytes = |index: usize, name: &str| -> Result<Vec<u8>, SealError> {
        row.try_get::<Vec<u8>, _>(index)
            .map_err(|e| SealError::Malformed {
                seal_number,
                reason: format!("{name}: {e}"),
            })
    };
    let array32 = |index, name| -> Result<[u8; 32], SealError> {
        <[u8; 32]>::try_from(bytes(index, name)?).map_err(|_| SealError::Malformed {
            seal_number,
            reason: format!("{name} is not 32 bytes"),
        })
    };
    Ok(Seal {
        fields: SealFields {
            seal_number,
            from: Cursor {
                transaction_id: row.try_get(1)?,
                position: row.try_get(2)?,
            },
            to: Cursor {
                transaction_id: row.try_get(3)?,
                position: row.try_get(4)?,
            },
            event_count: row.try_get(5)?,
            events_digest: array32(6, "events_digest")?,
            previous_hash: array32(7, "previous_hash")?,
            key_id: row.try_get(10)?,
            created_at: row.try_get(11)?,
        },
        seal_hash: array32(8, "seal_hash")?,
        signature: <[u8; 64]>::try_from(bytes(9, "signature")?).map_err(|_| {
            SealError::Malformed {
                seal_number,
                reason: "signature is not 64 bytes".into(),
            }
        })?,
    })
}

/// Now, at the microsecond precision PostgreSQL stores, so the hashed time is the stored time.
pub(super) fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
