//! The seal format: what one sealed event adds, the digest over a seal's events, the fields a
//! seal states, and the hash and signature over them. Pure computation.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{ENTRY_LEN, FORMAT};
use crate::event::Cursor;

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
    /// The previous seal's `seal_hash`, or [`super::GENESIS`] for seal 1.
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
