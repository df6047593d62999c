//! Seal keys: the signer of new seals and the public keys that verify them, from
//! `SEAL_KEYS_DIR` (laid out as every key directory is, [`crate::keys::dir`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde_json::Value;

use super::format::{Seal, SealFields, signed_message};
use crate::keys::{KeyError, KeyFile, KeyKind, dir, jwks, signing};

pub use crate::keys::jwks::public_jwk;
pub use crate::keys::signing::public_pem;

/// The kind of every error about seal keys.
const KIND: KeyKind = KeyKind::Seal;

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
    pub fn new(key_id: impl Into<String>, key: SigningKey) -> Result<Self, KeyError> {
        let key_id = key_id.into();
        if !dir::valid_kid(&key_id) {
            return Err(KeyError::BadKid {
                kind: KIND,
                kid: key_id,
            });
        }
        Ok(Self { key_id, key })
    }

    /// A signer from a PKCS#8 PEM Ed25519 private key.
    pub fn from_pkcs8_pem(key_id: impl Into<String>, pem: &str) -> Result<Self, KeyError> {
        let key_id = key_id.into();
        let key = signing::parse_private_pem(pem, KIND, &format!("inline key {key_id:?}"))?;
        Self::new(key_id, key)
    }

    /// A fresh random key (tests and benchmarks).
    pub fn generate(key_id: impl Into<String>) -> Result<Self, KeyError> {
        Self::new(key_id, signing::generate())
    }

    /// The private key in `dir` whose file name sorts last, or `None` when the directory has
    /// no private key (yet). Public keys (SPKI PEMs) are skipped: they only verify old seals.
    pub fn load_dir(dir: &Path) -> Result<Option<Self>, KeyError> {
        for (kid, path) in dir::list_pem_files(dir, KIND)?.into_iter().rev() {
            if let KeyFile::Private(key) = signing::read_key_file(&path, KIND)? {
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
    pub fn generate_in(dir: &Path) -> Result<Self, KeyError> {
        signing::generate_in(dir, &format!("seal-{}", dir::new_kid()), KIND)?;
        Self::load_dir(dir)?.ok_or_else(|| KeyError::Io {
            kind: KIND,
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
    pub fn load_dir(dir: &Path) -> Result<Self, KeyError> {
        let mut keys = Self::default();
        for (kid, file) in signing::load_dir(dir, KIND)? {
            keys.insert(kid.clone(), file.verifying_key());
            if matches!(file, KeyFile::Private(_)) {
                keys.from_private.push(kid);
            }
        }
        Ok(keys)
    }

    /// The Ed25519 keys of a JSON Web Key Set (`{"keys": [{"kty": "OKP", "crv": "Ed25519",
    /// "kid": .., "x": ..}]}`); other keys are skipped.
    pub fn from_jwks(document: &Value) -> Self {
        let mut keys = Self::default();
        for (kid, key) in jwks::ed25519_keys(document) {
            keys.insert(kid, key);
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
