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
//! keys' ([`crate::keys::dir`]): `<kid>.pem` files, the private key whose name sorts last signs.
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
//!
//! The module's parts: the [`format`](mod@format) of a seal (pure), its [`keys`], the [`store`] that seals
//! and reads seals, the [`report`] of an audit and the audit itself ([`verify`]).

pub mod format;
pub mod keys;
pub mod report;
pub mod store;
pub mod verify;

#[cfg(test)]
mod tests;

pub use format::{Seal, SealFields, entry, events_digest, signed_message};
pub use keys::{PublicKeys, SealSigner, public_jwk, public_pem};
pub use report::{Anchor, AuditReport, Problem, SealProblem, SealProblemKind, VerifyOptions};
pub use store::{SealError, latest, seal_next, seal_pending};
pub use verify::{VerifyError, verify_log};

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
