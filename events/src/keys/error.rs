//! The one error of loading, parsing and making keys, whatever their purpose.

use std::fmt;
use std::path::PathBuf;

use super::ring::MIN_SECRET_LEN;

/// Which kind of key an error is about, so that its message names it as operators know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An access-token signing key (`JWT_KEYS_DIR`).
    AccessToken,
    /// A seal signing or verifying key (`SEAL_KEYS_DIR`).
    Seal,
    /// A secret key ring (`EMAIL_TOKEN_KEYS`, `PROJECT_DATABASE_KEYS`, `ADDRESS_DIGEST_KEYS`).
    Ring,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AccessToken => "signing key",
            Self::Seal => "seal key",
            Self::Ring => "key ring",
        })
    }
}

/// Errors loading, parsing or making keys: access-token keys, seal keys and secret rings.
/// Messages name the file, directory or variable, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file or directory failed.
    #[error("{kind} I/O on {path}: {source}", path = path.display())]
    Io {
        /// What kind of key.
        kind: KeyKind,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key is not the PEM it must be (PKCS#8 Ed25519 private key, or SPKI public key where
    /// those are allowed).
    #[error("invalid {kind} {origin}: {reason}")]
    BadPem {
        /// What kind of key.
        kind: KeyKind,
        /// Where the key came from: the file path, or `inline key <kid>`.
        origin: String,
        /// Why it was rejected (no key material).
        reason: String,
    },
    /// A key id (file stem) does not match `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid {kind} id {kid:?} (expected [A-Za-z0-9._-]{{1,64}})")]
    BadKid {
        /// What kind of key.
        kind: KeyKind,
        /// The rejected key id.
        kid: String,
    },
    /// Two keys have the same key id.
    #[error("duplicate {kind} id {kid:?}")]
    DuplicateKid {
        /// What kind of key.
        kind: KeyKind,
        /// The repeated key id.
        kid: String,
    },
    /// The key directory holds no key and generation is disabled.
    #[error("no {kind}s (*.pem) in {dir} and key generation is disabled", dir = dir.display())]
    NoKeys {
        /// What kind of key.
        kind: KeyKind,
        /// The key directory.
        dir: PathBuf,
    },
    /// An empty list of keys was given.
    #[error("no {kind}s given")]
    Empty {
        /// What kind of key.
        kind: KeyKind,
    },
    /// Encoding a freshly generated key failed.
    #[error("cannot encode a generated {kind}: {reason}")]
    Generate {
        /// What kind of key.
        kind: KeyKind,
        /// Why.
        reason: String,
    },
    /// A ring has no entry.
    #[error("{source_name}: no key (expected <key id>:<secret>, ...)")]
    EmptyRing {
        /// The variable or file.
        source_name: String,
    },
    /// A ring entry is not `<key id>:<secret>` with a plain id and a long enough secret.
    #[error(
        "{source_name}: entry {index} is not <key id>:<secret> with an id of [A-Za-z0-9._-]{{1,64}} and a secret of at least {MIN_SECRET_LEN} bytes"
    )]
    BadEntry {
        /// The variable or file.
        source_name: String,
        /// Which entry (1-based).
        index: usize,
    },
    /// Two entries of a ring share an id.
    #[error("{source_name}: key id {id:?} appears twice")]
    DuplicateId {
        /// The variable or file.
        source_name: String,
        /// The id.
        id: String,
    },
    /// No ring variable is set and no development file may be generated.
    #[error("{variable} is required ({file} does not exist and SECRETS_GENERATE is false)", file = file.display())]
    Missing {
        /// The variable.
        variable: String,
        /// The development file looked for.
        file: PathBuf,
    },
}

impl KeyError {
    /// An I/O error on `path` about a key of `kind`.
    pub fn io(kind: KeyKind, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { kind, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_kind_of_key_as_operators_know_it() {
        let none = KeyError::NoKeys {
            kind: KeyKind::AccessToken,
            dir: "/k".into(),
        };
        assert_eq!(
            none.to_string(),
            "no signing keys (*.pem) in /k and key generation is disabled"
        );
        let bad = KeyError::BadKid {
            kind: KeyKind::Seal,
            kid: "a b".into(),
        };
        assert_eq!(
            bad.to_string(),
            r#"invalid seal key id "a b" (expected [A-Za-z0-9._-]{1,64})"#
        );
        let io = KeyError::io(KeyKind::Ring, "/s/x.keys")(std::io::Error::other("denied"));
        assert_eq!(io.to_string(), "key ring I/O on /s/x.keys: denied");
    }
}
