//! Authenticated encryption of personal fields, and the wrapping of the keys they are under.
//!
//! A field is sealed with XChaCha20-Poly1305 under its person's [`DataKey`] with a random
//! 192-bit nonce (random nonces of that size never repeat in practice, so no counter has to be
//! kept across processes). The associated data names where the ciphertext belongs (for a field:
//! its event id and path), so a ciphertext copied into another event or field does not open.
//!
//! Data keys are stored wrapped (sealed the same way) under a key-encryption key, with the id
//! of that key: [`KeyEncryptionKeys`] is a ring from configuration whose last entry wraps new
//! keys and whose every entry still unwraps, so rotating means adding an entry, re-wrapping
//! every data key (`idp-worker privacy rotate-kek`) and then removing the old entry.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, ExposeSecretMut as _, SecretBox};
use sha2::Sha256;
use uuid::Uuid;

use crate::keys::SecretKeys;

/// Length of a key, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a nonce, in bytes; a sealed value starts with its nonce.
pub const NONCE_LEN: usize = 24;
/// Length of the authentication tag that ends a sealed value.
pub const TAG_LEN: usize = 16;

/// Why a value could not be opened or a key not be unwrapped. Never carries key material or
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// The value is not a sealed value of this format.
    #[error("not a sealed value")]
    Malformed,
    /// The key, the associated data or the ciphertext is not the one it was sealed with: the
    /// value was sealed under another key, for another place, or changed.
    #[error("the value does not open under this key for this place")]
    Refused,
    /// A wrapped key names a key-encryption key the ring does not hold.
    #[error("no key-encryption key {0:?} in the ring")]
    UnknownKek(String),
}

/// A 256-bit key: a person's data key, or a key-encryption key derived from a ring entry.
/// `Debug` does not show it; it is zeroed when dropped.
pub struct DataKey(SecretBox<[u8; KEY_LEN]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = Box::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(key.as_mut());
        Self(SecretBox::new(key))
    }

    /// The key of these bytes, if they are a key's length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CipherError> {
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CipherError::Malformed)?;
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.expose_secret().into())
    }

    /// `plaintext` sealed for `aad`: nonce, ciphertext and tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        let Ok(ciphertext) = self.cipher().encrypt(&XNonce::from(nonce), payload) else {
            unreachable!("XChaCha20-Poly1305 encrypts any message shorter than 256 GiB")
        };
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// The plaintext of a value [`DataKey::seal`] made for the same `aad` under this key.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CipherError::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CipherError::Malformed)?;
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CipherError::Refused)
    }

    /// The key that needs every one of `keys`: with one key, that key; with several, one
    /// derived from all of them in order (HKDF-SHA256), so destroying any one of them makes
    /// what it sealed unreadable. Metadata about a person is sealed under their key combined
    /// with the key of its retention period.
    pub fn combine(keys: &[&DataKey]) -> Self {
        if let [one] = keys {
            return (*one).clone();
        }
        let mut ikm = secrecy::SecretBox::new(Box::new(Vec::with_capacity(keys.len() * KEY_LEN)));
        for key in keys {
            ikm.expose_secret_mut().extend_from_slice(key.bytes());
        }
        let hkdf = Hkdf::<Sha256>::new(None, ikm.expose_secret());
        let mut okm = Box::new([0u8; KEY_LEN]);
        let Ok(()) = hkdf.expand(b"idp/combined-key/v1", okm.as_mut()) else {
            unreachable!("HKDF-SHA256 expands to 32 bytes")
        };
        Self(SecretBox::new(okm))
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Clone for DataKey {
    fn clone(&self) -> Self {
        Self(SecretBox::new(Box::new(*self.bytes())))
    }
}

/// A data key as stored: sealed under the key-encryption key `kek_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The id of the key-encryption key that wrapped it (a ring entry's id).
    pub kek_id: String,
    /// The sealed key.
    pub bytes: Vec<u8>,
}

/// The key-encryption keys: one per entry of their ring (`PERSONAL_DATA_KEYS`), each derived
/// from the entry's secret with HKDF-SHA256, so the secret itself never encrypts anything.
/// The last entry wraps; every entry unwraps.
#[derive(Debug, Clone)]
pub struct KeyEncryptionKeys {
    keys: Vec<(String, DataKey)>,
}

impl KeyEncryptionKeys {
    const INFO: &'static [u8] = b"idp/personal-data/key-encryption-key/v1";

    /// The keys of `ring`, in its order.
    pub fn from_ring(ring: &SecretKeys) -> Self {
        let keys = ring
            .iter()
            .map(|entry| {
                let hkdf = Hkdf::<Sha256>::new(None, entry.secret());
                let mut okm = Box::new([0u8; KEY_LEN]);
                let Ok(()) = hkdf.expand(Self::INFO, okm.as_mut()) else {
                    unreachable!("HKDF-SHA256 expands to 32 bytes")
                };
                (entry.id().to_owned(), DataKey(SecretBox::new(okm)))
            })
            .collect();
        Self { keys }
    }

    /// The id of the key that wraps new keys.
    pub fn current_id(&self) -> &str {
        self.keys.last().map_or("", |(id, _)| id.as_str())
    }

    /// Whether the ring holds the key `kek_id`.
    pub fn holds(&self, kek_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == kek_id)
    }

    /// `key` wrapped for `subject` under the current key-encryption key.
    pub fn wrap_key(&self, subject: Uuid, key: &DataKey) -> WrappedKey {
        let Some((kek_id, kek)) = self.keys.last() else {
            unreachable!("a ring is never empty")
        };
        WrappedKey {
            kek_id: kek_id.clone(),
            bytes: kek.seal(&Self::aad(subject), key.bytes()),
        }
    }

    /// The data key of `subject` that `wrapped` holds.
    pub fn unwrap_key(&self, subject: Uuid, wrapped: &WrappedKey) -> Result<DataKey, CipherError> {
        let (_, kek) = self
            .keys
            .iter()
            .find(|(id, _)| *id == wrapped.kek_id)
            .ok_or_else(|| CipherError::UnknownKek(wrapped.kek_id.clone()))?;
        let bytes = SecretBox::new(Box::new(kek.open(&Self::aad(subject), &wrapped.bytes)?));
        DataKey::from_slice(bytes.expose_secret())
    }

    /// A wrapped key opens only for the subject it was made for.
    fn aad(subject: Uuid) -> Vec<u8> {
        let mut aad = b"idp/subject-key/v1:".to_vec();
        aad.extend_from_slice(subject.as_bytes());
        aad
    }
}

#[cfg(test)]
#[path = "cipher_tests.rs"]
mod tests;
