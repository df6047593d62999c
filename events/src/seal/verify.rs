//! The audit: every stream chain and every seal recomputed against the events now in the log,
//! reading in big keyset batches while the last batch is hashed.

use std::time::Instant;

use futures::{Stream, StreamExt as _};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use super::format::{Seal, events_digest};
use super::keys::PublicKeys;
use super::report::{Anchor, AuditReport, SealProblem, SealProblemKind, VerifyOptions};
use super::store::{SealError, seal_from_row};
use super::{DEFAULT_BATCH_SIZE, ENTRY_LEN, GENESIS};
use crate::chain::{BreakKind, ChainBreak, canonical_body, link_hash};
use crate::event::Cursor;

/// Why verification could not run to its end (problems in the log are not errors: they are
/// in the [`AuditReport`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The database failed.
    #[error("database error while verifying the log: {0}")]
    Database(#[from] sqlx::Error),
    /// A verification task died.
    #[error("verification was interrupted: {0}")]
    Interrupted(String),
}

/// Recomputes every stream chain ([`crate::chain`]) and every seal, reading the log in big
/// keyset batches (the database reads the next batch while this process hashes the last).
///
/// Chains are walked in one repeatable-read snapshot. Seals are checked against the events
/// below the commit-safe horizon taken at the start; seals made after it are left for the next
/// run. Each walk stops at its first problem.
pub async fn verify_log(
    pool: &PgPool,
    keys: &PublicKeys,
    options: &VerifyOptions,
) -> Result<AuditReport, VerifyError> {
    let started = Instant::now();
    let batch = if options.batch_size > 0 {
        options.batch_size
    } else {
        DEFAULT_BATCH_SIZE
    };
    let horizon: i64 =
        sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
    let prefix = options.stream_prefix.clone().unwrap_or_default();
    let (chains, seals) = tokio::try_join!(
        verify_chains(pool, prefix, batch),
        verify_seals(pool, keys, horizon, options.expect_seal, batch)
    )?;
    Ok(AuditReport {
        streams: chains.streams,
        events: chains.events,
        seals: seals.seals,
        sealed_events: seals.sealed_events,
        unsealed: seals.unsealed,
        last_seal: seals.last_seal,
        chain_break: chains.broken,
        seal_problem: seals.problem,
        duration: started.elapsed(),
    })
}

// --- stream chains ---

/// One batch of full rows in stream order. `$1` prefix, `$2/$3` keyset, `$4` limit.
const CHAIN_BATCH: &str = "
select position, event_id, stream_id, stream_version, event_type, schema_version, data, metadata,
       recorded_at, hash
  from events
 where (stream_id, stream_version) > ($2, $3) and starts_with(stream_id, $1)
 order by stream_id, stream_version
 limit $4";

/// Where a walk over the stream chains stands between batches.
#[derive(Debug, Default)]
struct ChainWalk {
    streams: u64,
    events: u64,
    current: Option<String>,
    previous: Option<[u8; 32]>,
    expected: i64,
    broken: Option<ChainBreak>,
}

impl ChainWalk {
    /// Checks the links of `rows` (in stream order, continuing the previous batch).
    fn check(&mut self, rows: &[PgRow]) -> Result<(), sqlx::Error> {
        for row in rows {
            let stream_id: &str = row.try_get(2)?;
            if self.current.as_deref() != Some(stream_id) {
                self.streams += 1;
                self.current = Some(stream_id.to_owned());
                self.previous = None;
                self.expected = 1;
            }
            self.events += 1;
            let position: i64 = row.try_get(0)?;
            let stream_version: i64 = row.try_get(3)?;
            if stream_version != self.expected {
                self.broken = Some(ChainBreak {
                    stream_id: stream_id.to_owned(),
                    stream_version,
                    position,
                    kind: BreakKind::MissingVersion {
                        expected: self.expected,
                    },
                });
                return Ok(());
            }
            let data: Value = row.try_get(6)?;
            let metadata: Value = row.try_get(7)?;
            let body = canonical_body(
                row.try_get(1)?,
                row.try_get::<&str, _>(4)?,
                row.try_get(5)?,
                &data,
                &metadata,
                row.try_get(8)?,
            );
            let computed = link_hash(
                self.previous.as_ref().map(<[u8; 32]>::as_slice),
                stream_id,
                stream_version,
                &body,
            );
            let stored: &[u8] = row.try_get(9)?;
            if stored != computed {
                self.broken = Some(ChainBreak {
                    stream_id: stream_id.to_owned(),
                    stream_version,
                    position,
                    kind: BreakKind::HashMismatch,
                });
                return Ok(());
            }
            self.previous = Some(computed);
            self.expected += 1;
        }
        Ok(())
    }
}

type Batch<T> = Result<Vec<T>, sqlx::Error>;

/// Reads the log in stream order in one repeatable-read snapshot, a batch ahead of the caller.
fn fetch_chain_batches(pool: PgPool, prefix: String, batch: i64) -> mpsc::Receiver<Batch<PgRow>> {
    let (sender, receiver) = mpsc::channel(2);
    tokio::spawn(async move {
        let result: Result<(), sqlx::Error> = async {
            let mut tx = pool.begin().await?;
            sqlx::query("set transaction isolation level repeatable read, read only")
                .execute(&mut *tx)
                .await?;
            let mut after = (String::new(), 0_i64);
            loop {
                let rows = sqlx::query(CHAIN_BATCH)
                    .bind(&prefix)
                    .bind(&after.0)
                    .bind(after.1)
                    .bind(batch)
                    .fetch_all(&mut *tx)
                    .await?;
                let done = i64::try_from(rows.len()).unwrap_or(i64::MAX) < batch;
                if let Some(last) = rows.last() {
                    after = (last.try_get(2)?, last.try_get(3)?);
                }
                if sender.send(Ok(rows)).await.is_err() || done {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(err) = result {
            let _ = sender.send(Err(err)).await;
        }
    });
    receiver
}

async fn verify_chains(
    pool: &PgPool,
    prefix: String,
    batch: i64,
) -> Result<ChainWalk, VerifyError> {
    let mut batches = fetch_chain_batches(pool.clone(), prefix, batch);
    let mut walk = ChainWalk::default();
    while let Some(rows) = batches.recv().await {
        let rows = rows?;
        // Hashing is CPU work: off the async threads, while the next batch is being read.
        let (checked, result) = tokio::task::spawn_blocking(move || {
            let result = walk.check(&rows);
            drop(rows);
            (walk, result)
        })
        .await
        .map_err(|e| VerifyError::Interrupted(e.to_string()))?;
        walk = checked;
        result?;
        if walk.broken.is_some() {
            break;
        }
    }
    Ok(walk)
}

// --- seals ---

/// An event as the seal walk sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sealable {
    pub(super) cursor: Cursor,
    pub(super) hash: [u8; 32],
}

/// One batch of events in commit order below the horizon. `$1/$2` keyset, `$3` horizon.
const COMMIT_ORDER_BATCH: &str = "
select e.transaction_id::text::bigint, e.position, e.hash from events e
 where (e.transaction_id, e.position) > (($1::bigint)::text::xid8, $2)
   and e.transaction_id < ($3::bigint)::text::xid8
 order by e.transaction_id, e.position
 limit $4";

/// Reads `(cursor, hash)` of the events below `horizon` in commit order, a batch ahead.
fn fetch_commit_order(pool: PgPool, horizon: i64, batch: i64) -> mpsc::Receiver<Batch<Sealable>> {
    let (sender, receiver) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut after = Cursor::START;
        loop {
            let rows = sqlx::query(COMMIT_ORDER_BATCH)
                .bind(after.transaction_id)
                .bind(after.position)
                .bind(horizon)
                .bind(batch)
                .fetch_all(&pool)
                .await;
            let decoded = rows.and_then(|rows| {
                rows.iter()
                    .map(|row| {
                        let hash: &[u8] = row.try_get(2)?;
                        Ok(Sealable {
                            cursor: Cursor {
                                transaction_id: row.try_get(0)?,
                                position: row.try_get(1)?,
                            },
                            // A hash of another length cannot match any sealed one.
                            hash: <[u8; 32]>::try_from(hash).unwrap_or_default(),
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            });
            let (done, last) = match &decoded {
                Ok(events) => (
                    i64::try_from(events.len()).unwrap_or(i64::MAX) < batch,
                    events.last().map(|e| e.cursor),
                ),
                Err(_) => (true, None),
            };
            if sender.send(decoded).await.is_err() || done {
                return;
            }
            if let Some(last) = last {
                after = last;
            }
        }
    });
    receiver
}

/// A seal opened for comparison with the events in its range.
#[derive(Debug)]
pub(super) struct OpenSeal {
    pub(super) seal: Seal,
    pub(super) entries: Vec<u8>,
    /// Index of the next entry expected.
    pub(super) next: usize,
}

impl OpenSeal {
    fn len(&self) -> usize {
        self.entries.len() / ENTRY_LEN
    }

    fn entry(&self, index: usize) -> Option<(i64, &[u8])> {
        let bytes = self
            .entries
            .get(index * ENTRY_LEN..(index + 1) * ENTRY_LEN)?;
        let (position, hash) = bytes.split_at(8);
        let position = i64::from_be_bytes(position.try_into().ok()?);
        Some((position, hash))
    }

    fn entries(&self) -> impl Iterator<Item = (i64, &[u8])> {
        (0..self.len()).filter_map(|i| self.entry(i))
    }

    /// Where the event with chain hash `hash` was sealed, if in this seal.
    fn sealed_at(&self, hash: &[u8; 32]) -> Option<i64> {
        self.entries().find(|(_, h)| h == hash).map(|(p, _)| p)
    }

    fn problem(&self, position: i64, kind: SealProblemKind) -> SealProblem {
        SealProblem {
            seal_number: self.seal.fields.seal_number,
            position: Some(position),
            kind,
        }
    }

    /// An event that is not the next sealed one and whose position was not sealed here.
    fn stray(&self, position: i64, hash: &[u8; 32]) -> SealProblem {
        match self.sealed_at(hash) {
            Some(sealed_at) if sealed_at != position => {
                self.problem(position, SealProblemKind::EventMoved { sealed_at })
            }
            _ => self.problem(position, SealProblemKind::EventUnexpected),
        }
    }

    /// Compares the next event of the range with the next sealed entry.
    pub(super) fn feed(&mut self, event: &Sealable) -> Option<SealProblem> {
        let (position, hash) = (event.cursor.position, &event.hash);
        let Some((sealed_position, sealed_hash)) = self.entry(self.next) else {
            return Some(self.stray(position, hash));
        };
        if position == sealed_position && hash.as_slice() == sealed_hash {
            self.next += 1;
            return None;
        }
        let problem = if position == sealed_position {
            match self.sealed_at(hash) {
                Some(sealed_at) => {
                    self.problem(position, SealProblemKind::EventMoved { sealed_at })
                }
                None => self.problem(position, SealProblemKind::EventChanged),
            }
        } else if hash.as_slice() == sealed_hash {
            self.problem(
                position,
                SealProblemKind::EventMoved {
                    sealed_at: sealed_position,
                },
            )
        } else if self.entries().any(|(p, _)| p == position) {
            // This event was sealed later in the range: the ones before it are gone.
            self.problem(sealed_position, SealProblemKind::EventMissing)
        } else {
            self.stray(position, hash)
        };
        Some(problem)
    }

    /// After the last event of the range: every sealed entry must have been seen.
    pub(super) fn finish(&self) -> Option<SealProblem> {
        self.entry(self.next)
            .map(|(position, _)| self.problem(position, SealProblemKind::EventMissing))
    }
}

/// Checks a seal on its own and against the seal before it: number, link, range, hash,
/// signature, and that its entries hash to its digest.
pub(super) fn check_seal(
    previous: Option<&Seal>,
    seal: &Seal,
    entries: &[u8],
    keys: &PublicKeys,
) -> Option<SealProblemKind> {
    let f = &seal.fields;
    let (expected_number, expected_link) = match previous {
        Some(p) => (p.fields.seal_number + 1, p.seal_hash),
        None => (1, GENESIS),
    };
    if f.seal_number != expected_number {
        return Some(SealProblemKind::Missing {
            found: f.seal_number,
        });
    }
    if f.previous_hash != expected_link {
        return Some(SealProblemKind::BrokenLink);
    }
    if f.hash() != seal.seal_hash {
        return Some(SealProblemKind::HashMismatch);
    }
    match keys.get(&f.key_id) {
        None => {
            return Some(SealProblemKind::UnknownKey {
                key_id: f.key_id.clone(),
            });
        }
        Some(key) if !seal.signature_holds(key) => {
            return Some(SealProblemKind::BadSignature {
                key_id: f.key_id.clone(),
            });
        }
        Some(_) => {}
    }
    if previous.is_some_and(|p| f.from <= p.fields.to) || f.to < f.from {
        return Some(SealProblemKind::BadRange);
    }
    let count_ok = usize::try_from(f.event_count)
        .ok()
        .and_then(|n| n.checked_mul(ENTRY_LEN))
        == Some(entries.len());
    let position_at = |start: usize| {
        entries
            .get(start..start + 8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
    };
    let last_start = entries.len().checked_sub(ENTRY_LEN);
    let ends_ok = position_at(0) == Some(f.from.position)
        && last_start.and_then(position_at) == Some(f.to.position)
        && f.event_count > 0;
    if !count_ok || !ends_ok || events_digest(&f.previous_hash, entries) != f.events_digest {
        return Some(SealProblemKind::DigestMismatch);
    }
    None
}

/// Where the walk over the seals stands.
#[derive(Debug, Default)]
struct SealWalk {
    seals: u64,
    sealed_events: u64,
    unsealed: u64,
    last_seal: Option<i64>,
    previous: Option<Seal>,
    problem: Option<SealProblem>,
}

/// Every seal below the horizon `$1`, with its entries, in order.
const SEALS_WITH_ENTRIES: &str = "
select seal_number, from_transaction_id::text::bigint, from_position,
       to_transaction_id::text::bigint, to_position, event_count, events_digest, previous_hash,
       seal_hash, signature, key_id, created_at, entries
  from seals
 where to_transaction_id < ($1::bigint)::text::xid8
 order by seal_number";

impl SealWalk {
    /// Reads and checks the next seal; `None` after the last.
    async fn open_next<S>(
        &mut self,
        rows: &mut S,
        keys: &PublicKeys,
        anchor: Option<Anchor>,
    ) -> Result<Option<Result<OpenSeal, SealProblem>>, sqlx::Error>
    where
        S: Stream<Item = Result<PgRow, sqlx::Error>> + Unpin,
    {
        let Some(row) = rows.next().await.transpose()? else {
            return Ok(None);
        };
        let seal = match seal_from_row(&row) {
            Ok(seal) => seal,
            Err(SealError::Database(e)) => return Err(e),
            Err(SealError::Malformed {
                seal_number,
                reason,
            }) => {
                return Ok(Some(Err(SealProblem {
                    seal_number,
                    position: None,
                    kind: SealProblemKind::Malformed(reason),
                })));
            }
        };
        let entries: Vec<u8> = row.try_get(12)?;
        let number = seal.fields.seal_number;
        let expected = self
            .previous
            .as_ref()
            .map_or(1, |p| p.fields.seal_number + 1);
        if let Some(kind) = check_seal(self.previous.as_ref(), &seal, &entries, keys) {
            let seal_number = if matches!(kind, SealProblemKind::Missing { .. }) {
                expected
            } else {
                number
            };
            return Ok(Some(Err(SealProblem {
                seal_number,
                position: None,
                kind,
            })));
        }
        if let Some(anchor) = anchor.filter(|a| a.seal_number == number)
            && anchor.seal_hash != seal.seal_hash
        {
            return Ok(Some(Err(SealProblem {
                seal_number: number,
                position: None,
                kind: SealProblemKind::AnchorMismatch,
            })));
        }
        self.seals += 1;
        self.sealed_events += u64::try_from(seal.fields.event_count).unwrap_or_default();
        self.last_seal = Some(number);
        self.previous = Some(seal.clone());
        Ok(Some(Ok(OpenSeal {
            seal,
            entries,
            next: 0,
        })))
    }
}

async fn verify_seals(
    pool: &PgPool,
    keys: &PublicKeys,
    horizon: i64,
    anchor: Option<Anchor>,
    batch: i64,
) -> Result<SealWalk, VerifyError> {
    let mut walk = SealWalk::default();
    let mut rows = sqlx::query(SEALS_WITH_ENTRIES).bind(horizon).fetch(pool);
    let mut events = fetch_commit_order(pool.clone(), horizon, batch);
    let mut current: Option<OpenSeal> = None;
    let mut no_more_seals = false;

    'events: while let Some(batch) = events.recv().await {
        for event in batch? {
            loop {
                if current.is_none() && !no_more_seals {
                    match walk.open_next(&mut rows, keys, anchor).await? {
                        None => no_more_seals = true,
                        Some(Ok(open)) => current = Some(open),
                        Some(Err(problem)) => {
                            walk.problem = Some(problem);
                            break 'events;
                        }
                    }
                }
                let Some(open) = current.as_mut() else {
                    walk.unsealed += 1;
                    break;
                };
                if event.cursor > open.seal.fields.to {
                    if let Some(problem) = open.finish() {
                        walk.problem = Some(problem);
                        break 'events;
                    }
                    current = None;
                    continue;
                }
                let problem = if event.cursor < open.seal.fields.from {
                    Some(open.stray(event.cursor.position, &event.hash))
                } else {
                    open.feed(&event)
                };
                if let Some(problem) = problem {
                    walk.problem = Some(problem);
                    break 'events;
                }
                break;
            }
        }
    }
    drop(events);

    // The events ran out: the seals still open must have been complete.
    while walk.problem.is_none() {
        if let Some(open) = current.take() {
            walk.problem = open.finish();
            continue;
        }
        if no_more_seals {
            break;
        }
        match walk.open_next(&mut rows, keys, anchor).await? {
            None => no_more_seals = true,
            Some(Ok(open)) => current = Some(open),
            Some(Err(problem)) => walk.problem = Some(problem),
        }
    }
    if walk.problem.is_none() {
        // Every committed event after the last seal, also those above the horizon that the
        // walk left out (the sealer gets to them once older transactions end).
        let after = walk
            .previous
            .as_ref()
            .map_or(Cursor::START, |s| s.fields.to);
        let unsealed: i64 = sqlx::query_scalar(
            "select count(*) from events e
              where (e.transaction_id, e.position) > (($1::bigint)::text::xid8, $2)",
        )
        .bind(after.transaction_id)
        .bind(after.position)
        .fetch_one(pool)
        .await?;
        walk.unsealed = u64::try_from(unsealed).unwrap_or_default();
    }
    if walk.problem.is_none()
        && let Some(anchor) = anchor
        && walk.last_seal.is_none_or(|last| last < anchor.seal_number)
    {
        walk.problem = Some(SealProblem {
            seal_number: anchor.seal_number,
            position: None,
            kind: SealProblemKind::AnchorMissing {
                last: walk.last_seal,
            },
        });
    }
    Ok(walk)
}
