//! Personal data in an immutable log: crypto-shredding.
//!
//! Every value about a person that an event stores is a [`Personal`] field. The store keeps it
//! only as ciphertext under the person's own data key ([`DataKey`], a random 256-bit key), so
//! destroying that key erases the value everywhere it was ever written while the events, their
//! order, their hashes and the seals stay as they are.
//!
//! - [`cipher`]: XChaCha20-Poly1305 under data keys, bound to where a ciphertext belongs
//!   (its event and field) by the associated data; data keys wrapped by key-encryption keys
//!   ([`KeyEncryptionKeys`], a ring from configuration, rotatable).
//! - [`personal`]: the [`Personal`] field type.
//! - [`fields`]: sealing the `Personal` fields of an event's JSON, and opening them again.
//! - [`subject_keys`]: the `subject_keys` table, the one place in the log's database that is
//!   not append-only: a person's key is created with their first personal field and destroyed
//!   by their erasure.
//! - [`blind_index`]: lookups by a personal value (one account per address) without storing
//!   the value.

pub mod blind_index;
pub mod cipher;
pub mod fields;
pub mod personal;
pub mod subject_keys;

pub use cipher::{CipherError, DataKey, KeyEncryptionKeys, WrappedKey};
pub use personal::{ERASED, Personal};
pub use subject_keys::{SubjectKeys, SubjectKeysError};
