//! Seals: tamper evidence across the whole log, and the audit that rechecks it.
//!
//! The per-stream hash chain ([`crate::chain`]) shows an edited event, but not one whose stream
//! chain was recomputed by whoever edited it, nor a whole stream removed, nor events reordered
//! across streams. Seals close that gap. At intervals the worker's sealer takes the events
//! committed since the last seal, in commit-safe order `(transaction_id, position)`, and writes a
//! seal over them:
//!
//! - `entries` = for each event: position (8 bytes big-endian) || chain hash (32 bytes);
//! - `events_digest` = `sha256(previous seal hash || entries)` (32 zero bytes before seal 1);
//! - `seal_hash` = `sha256` over every field of the seal ([`SealFields::hash`]);
//! - `signature` = Ed25519 over `"idp-seal-v1" || 0x00 || seal_hash` with the seal key named
//!   `key_id`.
//!
//! Seal keys have a directory of their own, `SEAL_KEYS_DIR`, laid out like the access-token
//! keys' ([`crate::key_dir`]): `<kid>.pem` files, the private key whose name sorts last signs.
//! No access-token key signs a seal, so whoever can seal cannot mint access tokens. Verifiers
//! need only the public halves: [`PublicKeys::load_dir`] reads SPKI public PEMs as well as
//! private PKCS#8 ones, and [`SealSigner::load_dir`] skips public ones.
//!
//! [`verify_log`] recomputes every stream chain and every seal: the seal chain's links, each
//! seal's hash and signature, and each seal's entries against the events now in its range. It
//! names the first problem: a stream and version, or a seal and position. The entries are kept
//! only so that the verifier can name the exact event that differs; the signed digest is what
//! proves the log untouched, so an attacker who also rewrites the entries is still caught.
//!
//! The latest seal ([`latest`]) is small and can be copied out of the database; checking a copy
//! against the log ([`Anchor`]) also catches seals cut off at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use futures::{Stream, StreamExt as _};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::mpsc;

use crate::chain::{BreakKind, ChainBreak, canonical_body, link_hash};
use crate::event::Cursor;
use crate::key_dir::{self, KeyDirError};

/// Name and version of the seal format; the first bytes of every seal hash and signed message.
pub const FORMAT: &str = "idp-seal-v1";

/// The "previous seal hash" of seal 1.
pub const GENESIS: [u8; 32] = [0; 32];

/// Bytes one sealed event adds to a seal's entries: position (8) and chain hash (32).
pub const ENTRY_LEN: usize = 40;

/// Most events in one seal unless the caller says otherwise (4 MB of entries).
pub const DEFAULT_MAX_EVENTS: i64 = 100_000;

/// Events per batch read by the verifier.
pub const DEFAULT_BATCH_SIZE: i64 = 20_000;

/// Advisory lock class of sealing.
const LOCK_CLASS: i32 = 1_768_974_883;

/// The session advisory lock `(class, key)` a sealer runner holds while it is the active one.
pub const RUNNER_LOCK: (i32, i32) = (LOCK_CLASS, 1);

/// Transaction lock taken by every sealing round, so that two sealers never fork the chain.
const ROUND_LOCK: i32 = 2;

// ---------------------------------------------------------------------------------------------
// Pure computation.

/// The bytes one event adds to a seal: its position and chain hash.
pub fn entry(position: i64, hash: &[u8; 32]) -> [u8; ENTRY_LEN] {
    let mut out = [0_u8; ENTRY_LEN];
    out[..8].copy_from_slice(&position.to_be_bytes());
    out[8..].copy_from_slice(hash);
    out
}

/// `sha256(previous || entries)`: what a seal says about the events it covers.
pub fn events_digest(previous: &[u8; 32], entries: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(entries);
    hasher.finalize().into()
}

/// The message a seal's signature covers: `FORMAT || 0x00 || seal_hash`.
pub fn signed_message(seal_hash: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(FORMAT.len() + 1 + 32);
    message.extend_from_slice(FORMAT.as_bytes());
    message.push(0);
    message.extend_from_slice(seal_hash);
    message
}

/// What a seal states, before it is hashed and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealFields {
    /// 1, 2, 3, ... without gaps.
    pub seal_number: i64,
    /// The first sealed event.
    pub from: Cursor,
    /// The last sealed event.
    pub to: Cursor,
    /// How many events the seal covers (at least one).
    pub event_count: i64,
    /// `sha256(previous_hash || entries)`.
    pub events_digest: [u8; 32],
    /// The previous seal's `seal_hash`, or [`GENESIS`] for seal 1.
    pub previous_hash: [u8; 32],
    /// The signing key's id (the file stem of its PEM in `SEAL_KEYS_DIR`).
    pub key_id: String,
    /// When the seal was made (microsecond precision, as stored).
    pub created_at: DateTime<Utc>,
}

impl SealFields {
    /// The seal hash: `sha256(FORMAT || 0x00 || seal_number || from.transaction_id ||
    /// from.position || to.transaction_id || to.position || event_count (each 8 bytes
    /// big-endian) || events_digest || previous_hash || len(key_id) (4 bytes big-endian) ||
    /// key_id || created_at in microseconds since 1970 (8 bytes big-endian))`.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(FORMAT.as_bytes());
        hasher.update([0]);
        for n in [
            self.seal_number,
            self.from.transaction_id,
            self.from.position,
            self.to.transaction_id,
            self.to.position,
            self.event_count,
        ] {
            hasher.update(n.to_be_bytes());
        }
        hasher.update(self.events_digest);
        hasher.update(self.previous_hash);
        let kid_len = u32::try_from(self.key_id.len()).unwrap_or(u32::MAX);
        hasher.update(kid_len.to_be_bytes());
        hasher.update(self.key_id.as_bytes());
        hasher.update(self.created_at.timestamp_micros().to_be_bytes());
        hasher.finalize().into()
    }
}

/// A signed seal, as stored (without its entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// What the seal states.
    pub fields: SealFields,
    /// [`SealFields::hash`] of the fields, as stored.
    pub seal_hash: [u8; 32],
    /// Ed25519 signature over [`signed_message`] of the seal hash, as stored.
    pub signature: [u8; 64],
}

impl Seal {
    /// Whether `key` signed this seal's stored hash.
    pub fn signature_holds(&self, key: &VerifyingKey) -> bool {
        key.verify(
            &signed_message(&self.seal_hash),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Keys.

/// Errors loading or making seal keys. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum SealKeyError {
    /// Reading or writing the key directory or a key file failed.
    #[error("seal key I/O on {path}: {source}", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is neither a PKCS#8 PEM Ed25519 private key nor an SPKI PEM Ed25519 public key.
    #[error("invalid seal key {origin}: {reason}")]
    BadPem {
        /// The file, or `inline key <kid>`.
        origin: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A key id (file stem) does not match `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid seal key id {0:?} (expected [A-Za-z0-9._-]{{1,64}})")]
    BadKid(String),
    /// Encoding a freshly generated key failed.
    #[error("cannot encode a generated seal key: {0}")]
    Generate(String),
}

/// The key that signs new seals: the private key in `SEAL_KEYS_DIR` whose name sorts last.
pub struct SealSigner {
    key_id: String,
    key: SigningKey,
}

impl fmt::Debug for SealSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SealSigner {
    /// A signer with `key` named `key_id`.
    pub fn new(key_id: impl Into<String>, key: SigningKey) -> Result<Self, SealKeyError> {
        let key_id = key_id.into();
        if !key_dir::valid_kid(&key_id) {
            return Err(SealKeyError::BadKid(key_id));
        }
        Ok(Self { key_id, key })
    }

    /// A signer from a PKCS#8 PEM Ed25519 private key.
    pub fn from_pkcs8_pem(key_id: impl Into<String>, pem: &str) -> Result<Self, SealKeyError> {
        let key_id = key_id.into();
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| SealKeyError::BadPem {
            origin: format!("inline key {key_id:?}"),
            reason: e.to_string(),
        })?;
        Self::new(key_id, key)
    }

    /// A fresh random key (tests and benchmarks).
    pub fn generate(key_id: impl Into<String>) -> Result<Self, SealKeyError> {
        Self::new(key_id, SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// The private key in `dir` whose file name sorts last, or `None` when the directory has
    /// no private key (yet). Public keys (SPKI PEMs) are skipped: they only verify old seals.
    pub fn load_dir(dir: &Path) -> Result<Option<Self>, SealKeyError> {
        for (kid, path) in list_pem_files(dir)?.into_iter().rev() {
            if let KeyFile::Private(key) = read_key_file(&path)? {
                return Self::new(kid, key).map(Some);
            }
        }
        Ok(None)
    }

    /// Writes a new private key to `dir` (created 0700 if missing; the file 0600), named
    /// `seal-<UTC time>` so that it sorts after older seal keys and after access-token keys
    /// copied in to verify old seals (named by time alone), and returns the signer `dir` then
    /// has. Two processes generating at once end up with the same key, or with two keys
    /// of which both sign with the one sorting last.
    pub fn generate_in(dir: &Path) -> Result<Self, SealKeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SealKeyError::Io { path, source }
        };
        key_dir::create_private_dir(dir).map_err(io(dir))?;
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| SealKeyError::Generate(e.to_string()))?;
        let path = dir.join(format!("seal-{}.pem", key_dir::new_kid()));
        key_dir::write_private_file_once(&path, pem.as_bytes()).map_err(io(&path))?;
        Self::load_dir(dir)?.ok_or_else(|| SealKeyError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the generated key is not in the directory",
            ),
        })
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Hashes and signs `fields`. The key id of `fields` is replaced by this signer's.
    pub fn sign(&self, mut fields: SealFields) -> Seal {
        fields.key_id.clone_from(&self.key_id);
        let seal_hash = fields.hash();
        let signature = self.key.sign(&signed_message(&seal_hash)).to_bytes();
        Seal {
            fields,
            seal_hash,
            signature,
        }
    }
}

/// The public keys that seals may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct PublicKeys {
    keys: BTreeMap<String, VerifyingKey>,
    /// The ids of the keys read from private key files.
    from_private: Vec<String>,
}

impl PublicKeys {
    /// The keys in `dir` (`<kid>.pem`): SPKI PEM public keys, and the public halves of PKCS#8
    /// PEM private keys. A missing directory has none. Verifiers in production should be given
    /// public keys only ([`Self::private_key_ids`] names the others).
    pub fn load_dir(dir: &Path) -> Result<Self, SealKeyError> {
        let mut keys = Self::default();
        for (kid, path) in list_pem_files(dir)? {
            match read_key_file(&path)? {
                KeyFile::Public(key) => keys.insert(kid, key),
                KeyFile::Private(key) => {
                    keys.insert(kid.clone(), key.verifying_key());
                    keys.from_private.push(kid);
                }
            }
        }
        Ok(keys)
    }

    /// The Ed25519 keys of a JSON Web Key Set (`{"keys": [{"kty": "OKP", "crv": "Ed25519",
    /// "kid": .., "x": ..}]}`); other keys are skipped.
    pub fn from_jwks(jwks: &Value) -> Self {
        let mut keys = Self::default();
        for jwk in jwks["keys"].as_array().into_iter().flatten() {
            if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
                continue;
            }
            let (Some(kid), Some(x)) = (jwk["kid"].as_str(), jwk["x"].as_str()) else {
                continue;
            };
            let Some(bytes) = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                continue;
            };
            if let Ok(key) = VerifyingKey::from_bytes(&bytes) {
                keys.insert(kid.to_owned(), key);
            }
        }
        keys
    }

    /// Adds (or replaces) a key.
    pub fn insert(&mut self, key_id: impl Into<String>, key: VerifyingKey) {
        let key_id = key_id.into();
        self.from_private.retain(|id| *id != key_id);
        self.keys.insert(key_id, key);
    }

    /// The key named `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// Every key, by key id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VerifyingKey)> {
        self.keys.iter().map(|(kid, key)| (kid.as_str(), key))
    }

    /// The ids of the keys that [`Self::load_dir`] read from private key files: a verifier
    /// holding them could sign seals too.
    pub fn private_key_ids(&self) -> &[String] {
        &self.from_private
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

pub use crate::key_dir::public_jwk;

/// A public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_pem(key: &VerifyingKey) -> Option<String> {
    key.to_public_key_pem(LineEnding::LF).ok()
}

/// The `*.pem` files in `dir` as (kid, path), sorted by kid.
fn list_pem_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, SealKeyError> {
    key_dir::list_pem_files(dir).map_err(|err| match err {
        KeyDirError::Io { path, source } => SealKeyError::Io { path, source },
        KeyDirError::BadKid(kid) => SealKeyError::BadKid(kid),
    })
}

/// What a key file holds.
enum KeyFile {
    Private(SigningKey),
    Public(VerifyingKey),
}

/// The PEM label of SPKI public keys.
const PUBLIC_KEY_LABEL: &str = "-----BEGIN PUBLIC KEY-----";

fn read_key_file(path: &Path) -> Result<KeyFile, SealKeyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| SealKeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| SealKeyError::BadPem {
        origin: path.display().to_string(),
        reason,
    };
    // The label decides, so that the error names what the file claims to be.
    if pem.trim_start().starts_with(PUBLIC_KEY_LABEL) {
        VerifyingKey::from_public_key_pem(&pem)
            .map(KeyFile::Public)
            .map_err(|e| bad(format!("not an Ed25519 SPKI public key: {e}")))
    } else {
        SigningKey::from_pkcs8_pem(&pem)
            .map(KeyFile::Private)
            .map_err(|e| bad(format!("not an Ed25519 PKCS#8 private key: {e}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Sealing.

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

fn seal_from_row(row: &PgRow) -> Result<Seal, SealError> {
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
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

// ---------------------------------------------------------------------------------------------
// Verification.

/// A copy of a seal kept outside the database: the log must still hold seal `seal_number` with
/// this hash. Written `<seal_number>:<seal hash in hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The seal.
    pub seal_number: i64,
    /// Its seal hash.
    pub seal_hash: [u8; 32],
}

impl FromStr for Anchor {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let usage = || format!("expected <seal number>:<seal hash as 64 hex digits>, got {raw:?}");
        let (number, hash) = raw.split_once(':').ok_or_else(usage)?;
        let seal_number: i64 = number.trim().parse().map_err(|_| usage())?;
        let mut seal_hash = [0_u8; 32];
        hex::decode_to_slice(hash.trim(), &mut seal_hash).map_err(|_| usage())?;
        if seal_number < 1 {
            return Err(usage());
        }
        Ok(Self {
            seal_number,
            seal_hash,
        })
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only walk the chains of streams whose id starts with this (seals always cover the log).
    pub stream_prefix: Option<String>,
    /// A seal kept outside the database that the log must still hold.
    pub expect_seal: Option<Anchor>,
    /// Events per batch read; [`DEFAULT_BATCH_SIZE`] when 0.
    pub batch_size: i64,
}

/// What is wrong with a seal or with the events it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealProblemKind {
    /// A seal number is skipped: this seal was expected but another came (a seal was deleted).
    Missing {
        /// The seal number found instead.
        found: i64,
    },
    /// The seal's previous hash is not the hash of the seal before it.
    BrokenLink,
    /// The seal's range does not start after the previous seal's, or ends before it starts.
    BadRange,
    /// The stored seal hash is not the hash of the seal's fields (a field was edited).
    HashMismatch,
    /// The seal is signed with a key that is not known.
    UnknownKey {
        /// The key id it names.
        key_id: String,
    },
    /// The signature does not verify with the named key (forged or re-signed seal).
    BadSignature {
        /// The key id it names.
        key_id: String,
    },
    /// The seal's stored entries do not match its digest or its count and range.
    DigestMismatch,
    /// A stored seal cannot be read.
    Malformed(String),
    /// The event at this position has another chain hash than when sealed (edited).
    EventChanged,
    /// The event sealed at this position is gone (deleted).
    EventMissing,
    /// An event that was never sealed lies in or between sealed ranges (inserted).
    EventUnexpected,
    /// The event sealed at `sealed_at` is now at this position (reordered).
    EventMoved {
        /// Its sealed position.
        sealed_at: i64,
    },
    /// The seal differs from the copy kept outside the database.
    AnchorMismatch,
    /// The seal kept outside the database is no longer in the log (seals were cut off).
    AnchorMissing {
        /// The last seal in the log, if any.
        last: Option<i64>,
    },
}

/// The first problem found with the seals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealProblem {
    /// The seal concerned.
    pub seal_number: i64,
    /// The position concerned, for problems with events.
    pub position: Option<i64>,
    /// What is wrong.
    pub kind: SealProblemKind,
}

impl SealProblem {
    /// A stable name of the kind, e.g. `seal_event_changed`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SealProblemKind::Missing { .. } => "seal_missing",
            SealProblemKind::BrokenLink => "seal_broken_link",
            SealProblemKind::BadRange => "seal_bad_range",
            SealProblemKind::HashMismatch => "seal_hash_mismatch",
            SealProblemKind::UnknownKey { .. } => "seal_unknown_key",
            SealProblemKind::BadSignature { .. } => "seal_bad_signature",
            SealProblemKind::DigestMismatch => "seal_digest_mismatch",
            SealProblemKind::Malformed(_) => "seal_malformed",
            SealProblemKind::EventChanged => "seal_event_changed",
            SealProblemKind::EventMissing => "seal_event_missing",
            SealProblemKind::EventUnexpected => "seal_event_unexpected",
            SealProblemKind::EventMoved { .. } => "seal_event_moved",
            SealProblemKind::AnchorMismatch => "seal_anchor_mismatch",
            SealProblemKind::AnchorMissing { .. } => "seal_anchor_missing",
        }
    }
}

impl fmt::Display for SealProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.seal_number;
        let p = self.position.unwrap_or_default();
        match &self.kind {
            SealProblemKind::Missing { found } => write!(
                f,
                "seal {n} is missing (seal {found} follows seal {})",
                n - 1
            ),
            SealProblemKind::BrokenLink => write!(
                f,
                "seal {n}: its previous hash is not the hash of seal {}",
                n - 1
            ),
            SealProblemKind::BadRange => write!(
                f,
                "seal {n}: its range does not follow the range of seal {}",
                n - 1
            ),
            SealProblemKind::HashMismatch => write!(
                f,
                "seal {n}: its seal hash does not match its fields (the seal was edited)"
            ),
            SealProblemKind::UnknownKey { key_id } => {
                write!(f, "seal {n}: signed with unknown key {key_id:?}")
            }
            SealProblemKind::BadSignature { key_id } => write!(
                f,
                "seal {n}: its signature does not verify with key {key_id:?} (forged)"
            ),
            SealProblemKind::DigestMismatch => write!(
                f,
                "seal {n}: its stored entries do not match its signed digest, count or range"
            ),
            SealProblemKind::Malformed(reason) => write!(f, "seal {n} is malformed: {reason}"),
            SealProblemKind::EventChanged => write!(
                f,
                "seal {n}, position {p}: the event's chain hash differs from the sealed one (edited)"
            ),
            SealProblemKind::EventMissing => write!(
                f,
                "seal {n}, position {p}: the sealed event is missing (deleted)"
            ),
            SealProblemKind::EventUnexpected => write!(
                f,
                "seal {n}, position {p}: an event that was never sealed lies in the sealed part of the log (inserted)"
            ),
            SealProblemKind::EventMoved { sealed_at } => write!(
                f,
                "seal {n}, position {p}: the event sealed at position {sealed_at} is now at position {p} (reordered)"
            ),
            SealProblemKind::AnchorMismatch => write!(
                f,
                "seal {n}: its hash differs from the copy kept outside the database"
            ),
            SealProblemKind::AnchorMissing { last: Some(last) } => write!(
                f,
                "seal {n} is kept outside the database but the log's seals end at seal {last}"
            ),
            SealProblemKind::AnchorMissing { last: None } => write!(
                f,
                "seal {n} is kept outside the database but the log has no seals"
            ),
        }
    }
}

/// A problem of either kind, flattened for reports (JSON, CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `chain_hash_mismatch`, `chain_missing_version` or one of [`SealProblem::kind_name`].
    pub kind: &'static str,
    /// The stream, for chain breaks.
    pub stream: Option<String>,
    /// The stream version, for chain breaks (the missing one for `chain_missing_version`).
    pub version: Option<i64>,
    /// The seal, for seal problems.
    pub seal: Option<i64>,
    /// The log position concerned, when there is one.
    pub position: Option<i64>,
    /// One sentence naming the problem.
    pub detail: String,
}

impl From<&ChainBreak> for Problem {
    fn from(broken: &ChainBreak) -> Self {
        let (kind, version) = match broken.kind {
            BreakKind::HashMismatch => ("chain_hash_mismatch", broken.stream_version),
            BreakKind::MissingVersion { expected } => ("chain_missing_version", expected),
        };
        Self {
            kind,
            stream: Some(broken.stream_id.clone()),
            version: Some(version),
            seal: None,
            position: Some(broken.position),
            detail: broken.to_string(),
        }
    }
}

impl From<&SealProblem> for Problem {
    fn from(problem: &SealProblem) -> Self {
        Self {
            kind: problem.kind_name(),
            stream: None,
            version: None,
            seal: Some(problem.seal_number),
            position: problem.position,
            detail: problem.to_string(),
        }
    }
}

/// The outcome of [`verify_log`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Streams whose chains were walked.
    pub streams: u64,
    /// Events whose chain links were checked.
    pub events: u64,
    /// Seals checked.
    pub seals: u64,
    /// Events covered by the checked seals.
    pub sealed_events: u64,
    /// Committed events after the last seal (not a problem: the sealer gets to them); counted
    /// only when the seals hold.
    pub unsealed: u64,
    /// The last seal checked.
    pub last_seal: Option<i64>,
    /// The first broken stream chain link.
    pub chain_break: Option<ChainBreak>,
    /// The first problem with the seals.
    pub seal_problem: Option<SealProblem>,
    /// How long verification took.
    pub duration: Duration,
}

impl AuditReport {
    /// True when every chain and every seal held.
    pub fn is_intact(&self) -> bool {
        self.chain_break.is_none() && self.seal_problem.is_none()
    }

    /// The first problem: a broken stream chain, else a seal problem.
    pub fn first_problem(&self) -> Option<Problem> {
        self.problems().into_iter().next()
    }

    /// Every problem found: at most the first chain break and the first seal problem.
    pub fn problems(&self) -> Vec<Problem> {
        self.chain_break
            .iter()
            .map(Problem::from)
            .chain(self.seal_problem.iter().map(Problem::from))
            .collect()
    }

    /// `unsealed: N events after seal K` (or `... (no seal yet)`).
    pub fn unsealed_summary(&self) -> String {
        match self.last_seal {
            Some(last) => format!("unsealed: {} events after seal {last}", self.unsealed),
            None => format!("unsealed: {} events (no seal yet)", self.unsealed),
        }
    }
}

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
struct Sealable {
    cursor: Cursor,
    hash: [u8; 32],
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
struct OpenSeal {
    seal: Seal,
    entries: Vec<u8>,
    /// Index of the next entry expected.
    next: usize,
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
    fn feed(&mut self, event: &Sealable) -> Option<SealProblem> {
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
    fn finish(&self) -> Option<SealProblem> {
        self.entry(self.next)
            .map(|(position, _)| self.problem(position, SealProblemKind::EventMissing))
    }
}

/// Checks a seal on its own and against the seal before it: number, link, range, hash,
/// signature, and that its entries hash to its digest.
fn check_seal(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn cursor(transaction_id: i64, position: i64) -> Cursor {
        Cursor {
            transaction_id,
            position,
        }
    }

    fn entries_of(events: &[(i64, u8)]) -> Vec<u8> {
        events.iter().flat_map(|(p, n)| entry(*p, &h(*n))).collect()
    }

    /// A signed seal over `events` (position, hash byte) after `previous`.
    fn seal_over(
        signer: &SealSigner,
        previous: Option<&Seal>,
        events: &[(i64, u8)],
    ) -> (Seal, Vec<u8>) {
        let entries = entries_of(events);
        let previous_hash = previous.map_or(GENESIS, |p| p.seal_hash);
        let seal = signer.sign(SealFields {
            seal_number: previous.map_or(1, |p| p.fields.seal_number + 1),
            from: cursor(10, events[0].0),
            to: cursor(10, events[events.len() - 1].0),
            event_count: events.len() as i64,
            events_digest: events_digest(&previous_hash, &entries),
            previous_hash,
            key_id: String::new(),
            created_at: now_micros(),
        });
        (seal, entries)
    }

    fn keys_of(signer: &SealSigner) -> PublicKeys {
        let mut keys = PublicKeys::default();
        keys.insert(signer.key_id(), signer.verifying_key());
        keys
    }

    fn walk(seal: &Seal, entries: &[u8], events: &[(i64, u8)]) -> Option<SealProblem> {
        let mut open = OpenSeal {
            seal: seal.clone(),
            entries: entries.to_vec(),
            next: 0,
        };
        for (p, n) in events {
            if let Some(problem) = open.feed(&Sealable {
                cursor: cursor(10, *p),
                hash: h(*n),
            }) {
                return Some(problem);
            }
        }
        open.finish()
    }

    #[test]
    fn the_digest_depends_on_the_previous_seal_and_on_every_entry_in_order() {
        let a = entries_of(&[(1, 1), (2, 2)]);
        let swapped = entries_of(&[(2, 2), (1, 1)]);
        assert_ne!(events_digest(&GENESIS, &a), events_digest(&h(9), &a));
        assert_ne!(
            events_digest(&GENESIS, &a),
            events_digest(&GENESIS, &swapped)
        );
        assert_eq!(entry(258, &h(7))[..8], [0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn a_signed_seal_verifies_and_any_edited_field_does_not() {
        let signer = SealSigner::generate("k1").unwrap();
        let keys = keys_of(&signer);
        let (seal, entries) = seal_over(&signer, None, &[(1, 1), (2, 2)]);
        assert_eq!(check_seal(None, &seal, &entries, &keys), None);
        assert_eq!(seal.fields.key_id, "k1");

        let mut edited = seal.clone();
        edited.fields.events_digest = h(3);
        assert_eq!(
            check_seal(None, &edited, &entries, &keys),
            Some(SealProblemKind::HashMismatch)
        );
        // Rehashed after the edit: the signature no longer holds.
        edited.seal_hash = edited.fields.hash();
        assert_eq!(
            check_seal(None, &edited, &entries, &keys),
            Some(SealProblemKind::BadSignature {
                key_id: "k1".into()
            })
        );
        // Re-signed with another key under the same name.
        let mallory = SealSigner::generate("k1").unwrap();
        let forged = mallory.sign(seal.fields.clone());
        assert_eq!(
            check_seal(None, &forged, &entries, &keys),
            Some(SealProblemKind::BadSignature {
                key_id: "k1".into()
            })
        );
        let unknown = SealSigner::generate("k2")
            .unwrap()
            .sign(seal.fields.clone());
        assert_eq!(
            check_seal(None, &unknown, &entries, &keys),
            Some(SealProblemKind::UnknownKey {
                key_id: "k2".into()
            })
        );
        // Entries rewritten under a valid seal: caught by the digest.
        let other = entries_of(&[(1, 1), (2, 9)]);
        assert_eq!(
            check_seal(None, &seal, &other, &keys),
            Some(SealProblemKind::DigestMismatch)
        );
    }

    #[test]
    fn seals_must_link_and_follow_each_other() {
        let signer = SealSigner::generate("k").unwrap();
        let keys = keys_of(&signer);
        let (first, _) = seal_over(&signer, None, &[(1, 1)]);
        let (second, entries) = seal_over(&signer, Some(&first), &[(2, 2)]);
        assert_eq!(check_seal(Some(&first), &second, &entries, &keys), None);

        let (third, third_entries) = seal_over(&signer, Some(&second), &[(3, 3)]);
        assert_eq!(
            check_seal(Some(&first), &third, &third_entries, &keys),
            Some(SealProblemKind::Missing { found: 3 })
        );
        let mut unlinked = second.fields.clone();
        unlinked.previous_hash = h(5);
        let unlinked = signer.sign(unlinked);
        assert_eq!(
            check_seal(Some(&first), &unlinked, &entries, &keys),
            Some(SealProblemKind::BrokenLink)
        );
        let (overlapping, overlapping_entries) = seal_over(&signer, Some(&first), &[(1, 1)]);
        assert_eq!(
            check_seal(Some(&first), &overlapping, &overlapping_entries, &keys),
            Some(SealProblemKind::BadRange)
        );
    }

    #[test]
    fn the_walk_names_an_edited_a_deleted_an_inserted_and_a_moved_event() {
        let signer = SealSigner::generate("k").unwrap();
        let sealed = [(1, 1), (2, 2), (3, 3), (4, 4)];
        let (seal, entries) = seal_over(&signer, None, &sealed);
        assert_eq!(walk(&seal, &entries, &sealed), None);

        let problem = |events: &[(i64, u8)]| {
            let p = walk(&seal, &entries, events).unwrap();
            (p.position, p.kind)
        };
        assert_eq!(
            problem(&[(1, 1), (2, 9), (3, 3), (4, 4)]),
            (Some(2), SealProblemKind::EventChanged)
        );
        assert_eq!(
            problem(&[(1, 1), (3, 3), (4, 4)]),
            (Some(2), SealProblemKind::EventMissing)
        );
        assert_eq!(
            problem(&[(1, 1), (2, 2), (3, 3)]),
            (Some(4), SealProblemKind::EventMissing)
        );
        assert_eq!(
            problem(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]),
            (Some(5), SealProblemKind::EventUnexpected)
        );
        // Positions 2 and 3 swapped between their events.
        assert_eq!(
            problem(&[(1, 1), (2, 3), (3, 2), (4, 4)]),
            (Some(2), SealProblemKind::EventMoved { sealed_at: 3 })
        );
        // The event sealed at 2 moved to position 7 (ordered elsewhere by its transaction).
        assert_eq!(
            problem(&[(1, 1), (7, 2), (3, 3), (4, 4)]),
            (Some(7), SealProblemKind::EventMoved { sealed_at: 2 })
        );
    }

    #[test]
    fn problems_name_their_seal_and_position() {
        let problem = SealProblem {
            seal_number: 3,
            position: Some(42),
            kind: SealProblemKind::EventChanged,
        };
        let flat = Problem::from(&problem);
        assert_eq!(flat.kind, "seal_event_changed");
        assert_eq!((flat.seal, flat.position), (Some(3), Some(42)));
        assert!(
            flat.detail.starts_with("seal 3, position 42:"),
            "{}",
            flat.detail
        );

        let broken = ChainBreak {
            stream_id: "user-1".into(),
            stream_version: 4,
            position: 9,
            kind: BreakKind::MissingVersion { expected: 3 },
        };
        let flat = Problem::from(&broken);
        assert_eq!(flat.kind, "chain_missing_version");
        assert_eq!(
            (flat.stream.as_deref(), flat.version),
            (Some("user-1"), Some(3))
        );
    }

    #[test]
    fn anchors_parse_from_number_and_hex_hash() {
        let hash = hex::encode(h(0xab));
        let anchor: Anchor = format!("12:{hash}").parse().unwrap();
        assert_eq!(anchor.seal_number, 12);
        assert_eq!(anchor.seal_hash, h(0xab));
        for bad in ["12", "x:00", "0:00", &format!("1:{}", &hash[2..])] {
            assert!(bad.parse::<Anchor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_through_a_jwks_document() {
        let signer = SealSigner::generate("2026-01-01T000000Z").unwrap();
        let jwks = serde_json::json!({
            "keys": [public_jwk(signer.key_id(), &signer.verifying_key()), {"kty": "RSA"}]
        });
        let keys = PublicKeys::from_jwks(&jwks);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.get(signer.key_id()), Some(&signer.verifying_key()));
        assert!(
            public_pem(&signer.verifying_key())
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        assert!(SealSigner::generate("bad kid").is_err());
        assert!(format!("{signer:?}").len() < 80);
    }

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("idp-seal-keys-{}", uuid::Uuid::now_v7())))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn private_pem(signer_seed: u8) -> (SigningKey, String) {
        let key = SigningKey::from_bytes(&[signer_seed; 32]);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        (key, pem)
    }

    #[test]
    fn verifiers_read_public_pems_and_the_public_halves_of_private_ones() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        let (old, _) = private_pem(1);
        let (new, new_pem) = private_pem(2);
        std::fs::write(
            dir.0.join("a-old.pem"),
            public_pem(&old.verifying_key()).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.0.join("b-new.pem"), new_pem).unwrap();

        let keys = PublicKeys::load_dir(&dir.0).unwrap();
        assert_eq!(keys.get("a-old"), Some(&old.verifying_key()));
        assert_eq!(keys.get("b-new"), Some(&new.verifying_key()));
        assert_eq!(keys.private_key_ids(), ["b-new"]);
        assert_eq!(keys.iter().count(), 2);

        std::fs::write(
            dir.0.join("c-bad.pem"),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let error = PublicKeys::load_dir(&dir.0).unwrap_err().to_string();
        assert!(
            error.contains("c-bad.pem") && error.contains("SPKI"),
            "{error}"
        );
    }

    #[test]
    fn the_private_key_sorting_last_signs_and_public_keys_never_do() {
        let dir = TempDir::new();
        assert!(
            SealSigner::load_dir(&dir.0).unwrap().is_none(),
            "no directory"
        );
        std::fs::create_dir_all(&dir.0).unwrap();
        let (signing, signing_pem) = private_pem(3);
        let (other, _) = private_pem(4);
        std::fs::write(dir.0.join("2026-01-01T000000Z.pem"), signing_pem).unwrap();
        std::fs::write(
            dir.0.join("2027-01-01T000000Z.pem"),
            public_pem(&other.verifying_key()).unwrap(),
        )
        .unwrap();
        let signer = SealSigner::load_dir(&dir.0).unwrap().unwrap();
        assert_eq!(signer.key_id(), "2026-01-01T000000Z");
        assert_eq!(signer.verifying_key(), signing.verifying_key());

        let only_public = TempDir::new();
        std::fs::create_dir_all(&only_public.0).unwrap();
        std::fs::write(
            only_public.0.join("old.pem"),
            public_pem(&other.verifying_key()).unwrap(),
        )
        .unwrap();
        assert!(SealSigner::load_dir(&only_public.0).unwrap().is_none());
    }

    #[test]
    fn a_generated_key_is_private_to_its_owner_and_signs_from_then_on() {
        let dir = TempDir::new();
        let keys = dir.0.join("seal-keys");
        let generated = SealSigner::generate_in(&keys).unwrap();
        assert!(
            generated.key_id().starts_with("seal-"),
            "{}",
            generated.key_id()
        );
        let loaded = SealSigner::load_dir(&keys).unwrap().unwrap();
        assert_eq!(loaded.key_id(), generated.key_id());
        assert_eq!(loaded.verifying_key(), generated.verifying_key());
        let file = keys.join(format!("{}.pem", generated.key_id()));
        let pem = std::fs::read_to_string(&file).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(&keys), 0o700);
        }
    }
}
