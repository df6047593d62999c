//! Signing keys for access tokens: loading, development generation, rotation and the JWKS document.
//!
//! Keys are Ed25519 private keys in PKCS#8 PEM files, one per file, named `<kid>.pem`. The key
//! whose name sorts last signs new tokens; every key in the ring verifies, so a rotated-out key
//! stays valid for the tokens it signed until it is removed (remove it once the longest access
//! token lifetime has passed since the rotation).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use idp_events::key_dir::{self, KeyDirError};
use jsonwebtoken::{DecodingKey, EncodingKey};

/// Errors loading or generating signing keys. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file or directory failed.
    #[error("signing key I/O on {path}: {source}", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key is not a PKCS#8 PEM Ed25519 private key.
    #[error("invalid signing key {origin}: {reason}")]
    BadPem {
        /// Where the key came from: the file path, or `inline key <kid>`.
        origin: String,
        /// Why it was rejected (no key material).
        reason: String,
    },
    /// A key id (file stem) does not match `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid signing key id {kid:?} (expected [A-Za-z0-9._-]{{1,64}})")]
    BadKid {
        /// The rejected key id.
        kid: String,
    },
    /// Two keys have the same key id.
    #[error("duplicate signing key id {kid:?}")]
    DuplicateKid {
        /// The repeated key id.
        kid: String,
    },
    /// The key directory holds no key and generation is disabled.
    #[error("no signing keys (*.pem) in {dir} and key generation is disabled", dir = dir.display())]
    NoKeys {
        /// The key directory.
        dir: PathBuf,
    },
    /// An empty list of keys was given.
    #[error("no signing keys given")]
    Empty,
    /// Encoding a freshly generated key failed.
    #[error("cannot encode generated signing key: {0}")]
    Generate(String),
}

/// One key of the ring.
struct Entry {
    kid: String,
    /// The raw 32-byte Ed25519 public key.
    public: [u8; 32],
    decoding: DecodingKey,
}

/// The key ring: the newest key signs, every key verifies.
pub struct KeyRing {
    /// Every key, the signing key last.
    entries: Vec<Entry>,
    /// The private key of the last entry.
    signing: EncodingKey,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "kids",
                &self
                    .entries
                    .iter()
                    .map(|e| e.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("signing_kid", &self.signing_kid())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads every `*.pem` file in `dir` (PKCS#8 Ed25519 private keys; kid = file stem, which must
    /// match `[A-Za-z0-9._-]{1,64}`).
    ///
    /// The key whose file name sorts last signs (name keys by creation time, e.g.
    /// `2026-11-22T190000Z.pem`).
    ///
    /// If the directory has no key (or does not exist) and `generate` is true, creates the
    /// directory (0700 on unix) and a new key file (0600) named after the current UTC time, logs
    /// at info level that a development key was generated (path and kid only), and uses it.
    /// If there is no key and `generate` is false, returns [`KeyError::NoKeys`].
    pub fn load_dir(dir: &Path, generate: bool) -> Result<Self, KeyError> {
        let mut files = list_pem_files(dir)?;
        if files.is_empty() {
            if !generate {
                return Err(KeyError::NoKeys {
                    dir: dir.to_path_buf(),
                });
            }
            let (kid, path) = write_generated_key(dir)?;
            tracing::info!(
                path = %path.display(),
                kid = %kid,
                "generated a development signing key for access tokens"
            );
            files = list_pem_files(dir)?;
            if files.is_empty() {
                return Err(KeyError::NoKeys {
                    dir: dir.to_path_buf(),
                });
            }
        }

        let mut keys = Vec::with_capacity(files.len());
        for (kid, path) in files {
            warn_if_readable_by_others(&path);
            let pem = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
                path: path.clone(),
                source,
            })?;
            keys.push((kid, pem, path.display().to_string()));
        }
        Self::build(keys)
    }

    /// A ring from PEM strings (kid, pem) for tests or keys given inline; the last signs.
    pub fn from_pems(keys: &[(String, String)]) -> Result<Self, KeyError> {
        Self::build(
            keys.iter()
                .map(|(kid, pem)| (kid.clone(), pem.clone(), format!("inline key {kid:?}")))
                .collect(),
        )
    }

    /// Generates a fresh Ed25519 key, returning (kid, pkcs8 pem) — used by `load_dir` and tests.
    ///
    /// The kid is the current UTC time to the second, e.g. `2026-11-22T190000Z`, so that kids of
    /// keys generated later sort later.
    pub fn generate_pem() -> Result<(String, String), KeyError> {
        let seed = rand::random::<[u8; 32]>();
        let key = SigningKey::from_bytes(&seed);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let kid = chrono::Utc::now().format("%Y-%m-%dT%H%M%SZ").to_string();
        Ok((kid, pem.to_string()))
    }

    /// The key id of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        // `build` guarantees at least one entry.
        self.entries.last().map_or("", |e| e.kid.as_str())
    }

    /// The JSON Web Key Set of all public keys:
    /// `{"keys":[{"kty":"OKP","crv":"Ed25519","x":<base64url no pad>,"kid":..,"alg":"EdDSA","use":"sig"}]}`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .entries
            .iter()
            // Every public key came from a signing key, so it is a valid point.
            .filter_map(|e| {
                let key = VerifyingKey::from_bytes(&e.public).ok()?;
                Some(key_dir::public_jwk(&e.kid, &key))
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The signing key and its kid.
    pub(crate) fn signing_key(&self) -> (&str, &EncodingKey) {
        (self.signing_kid(), &self.signing)
    }

    /// The verification key named `kid`, if the ring has it.
    pub(crate) fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.entries
            .iter()
            .find(|e| e.kid == kid)
            .map(|e| &e.decoding)
    }

    /// Builds a ring from (kid, pem, origin) triples; the last signs.
    fn build(keys: Vec<(String, String, String)>) -> Result<Self, KeyError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(keys.len());
        let mut signing = None;
        for (kid, pem, origin) in keys {
            if !key_dir::valid_kid(&kid) {
                return Err(KeyError::BadKid { kid });
            }
            if entries.iter().any(|e| e.kid == kid) {
                return Err(KeyError::DuplicateKid { kid });
            }
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::BadPem {
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
            let der = key.to_pkcs8_der().map_err(|e| KeyError::BadPem {
                origin,
                reason: e.to_string(),
            })?;
            let public = key.verifying_key().to_bytes();
            signing = Some(EncodingKey::from_ed_der(der.as_bytes()));
            entries.push(Entry {
                kid,
                public,
                decoding: DecodingKey::from_ed_der(&public),
            });
        }
        let signing = signing.ok_or(KeyError::Empty)?;
        Ok(Self { entries, signing })
    }
}

/// The `*.pem` files in `dir` as (kid, path), sorted by kid. A missing directory has none.
fn list_pem_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, KeyError> {
    key_dir::list_pem_files(dir).map_err(|err| match err {
        KeyDirError::Io { path, source } => KeyError::Io { path, source },
        KeyDirError::BadKid(kid) => KeyError::BadKid { kid },
    })
}

/// Creates `dir` if needed and writes a new key file to it, returning (kid, path).
///
/// The key is written to a temporary file first and renamed into place, so that a crash never
/// leaves a truncated `*.pem` behind.
fn write_generated_key(dir: &Path) -> Result<(String, PathBuf), KeyError> {
    create_private_dir(dir)?;
    let (kid, pem) = KeyRing::generate_pem()?;
    let path = dir.join(format!("{kid}.pem"));
    let tmp = dir.join(format!(".{kid}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    let result = (|| {
        let mut file = create_private_file(&tmp).map_err(io_err(&tmp))?;
        file.write_all(pem.as_bytes()).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| (kid, path))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Logs a warning when a key file can be read by group or others.
#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "signing key file is accessible to group or others; use mode 0600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("idp-keys-{}", uuid::Uuid::new_v4())))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn public_key_of(pem: &str) -> [u8; 32] {
        SigningKey::from_pkcs8_pem(pem)
            .unwrap()
            .verifying_key()
            .to_bytes()
    }

    #[test]
    fn jwks_lists_every_key_with_its_public_key() {
        let (_, pem_a) = KeyRing::generate_pem().unwrap();
        let (_, pem_b) = KeyRing::generate_pem().unwrap();
        let ring = KeyRing::from_pems(&[("a".into(), pem_a.clone()), ("b".into(), pem_b.clone())])
            .unwrap();
        assert_eq!(ring.signing_kid(), "b");

        let jwks = ring.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for (key, (kid, pem)) in keys.iter().zip([("a", &pem_a), ("b", &pem_b)]) {
            assert_eq!(key["kid"], kid);
            assert_eq!(key["kty"], "OKP");
            assert_eq!(key["crv"], "Ed25519");
            assert_eq!(key["alg"], "EdDSA");
            assert_eq!(key["use"], "sig");
            let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
            assert_eq!(x, public_key_of(pem));
            // Only public members.
            assert_eq!(key.as_object().unwrap().len(), 6);
        }

        // The document parses as a JWK set.
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
        assert!(set.find("a").is_some() && set.find("b").is_some());
    }

    #[test]
    fn debug_shows_kids_only() {
        let (_, pem) = KeyRing::generate_pem().unwrap();
        let ring = KeyRing::from_pems(&[("k1".into(), pem)]).unwrap();
        let debug = format!("{ring:?}");
        assert!(debug.contains("k1"), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        assert!(debug.len() < 100, "{debug}");
    }

    #[test]
    fn generated_pem_is_pkcs8_with_a_time_kid() {
        let (kid, pem) = KeyRing::generate_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        assert!(key_dir::valid_kid(&kid));
        assert!(chrono::NaiveDateTime::parse_from_str(&kid, "%Y-%m-%dT%H%M%SZ").is_ok());
        let (_, other) = KeyRing::generate_pem().unwrap();
        assert_ne!(pem, other);
    }

    #[test]
    fn from_pems_rejects_bad_input() {
        let (_, pem) = KeyRing::generate_pem().unwrap();
        assert!(matches!(KeyRing::from_pems(&[]), Err(KeyError::Empty)));
        assert!(matches!(
            KeyRing::from_pems(&[("k".into(), "not a pem".into())]),
            Err(KeyError::BadPem { .. })
        ));
        for kid in ["", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(
                matches!(
                    KeyRing::from_pems(&[(kid.to_owned(), pem.clone())]),
                    Err(KeyError::BadKid { .. })
                ),
                "{kid:?}"
            );
        }
        assert!(matches!(
            KeyRing::from_pems(&[("k".into(), pem.clone()), ("k".into(), pem.clone())]),
            Err(KeyError::DuplicateKid { .. })
        ));
        // A PEM that is not a private key.
        let public_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            KeyRing::from_pems(&[("k".into(), public_pem.into())]),
            Err(KeyError::BadPem { .. })
        ));
    }

    #[test]
    fn load_dir_generates_once_then_loads_the_same_key() {
        let dir = TempDir::new();
        let keys = dir.0.join("keys");

        let first = KeyRing::load_dir(&keys, true).unwrap();
        let kid = first.signing_kid().to_owned();
        let file = keys.join(format!("{kid}.pem"));
        assert!(file.is_file());
        let names: Vec<_> = std::fs::read_dir(&keys).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(&keys), 0o700);
        }

        let second = KeyRing::load_dir(&keys, false).unwrap();
        assert_eq!(second.signing_kid(), kid);
        assert_eq!(second.jwks(), first.jwks());
        let third = KeyRing::load_dir(&keys, true).unwrap();
        assert_eq!(third.jwks(), first.jwks());
    }

    #[test]
    fn load_dir_without_keys_and_generation_fails() {
        let dir = TempDir::new();
        assert!(matches!(
            KeyRing::load_dir(&dir.0, false),
            Err(KeyError::NoKeys { .. })
        ));
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("README.txt"), "not a key").unwrap();
        assert!(matches!(
            KeyRing::load_dir(&dir.0, false),
            Err(KeyError::NoKeys { .. })
        ));
        assert!(!dir.0.join("README.txt").with_extension("pem").exists());
    }

    #[test]
    fn load_dir_newest_name_signs_and_bad_files_are_errors() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        let (_, old) = KeyRing::generate_pem().unwrap();
        let (_, new) = KeyRing::generate_pem().unwrap();
        std::fs::write(dir.0.join("2026-11-22T190000Z.pem"), &new).unwrap();
        std::fs::write(dir.0.join("2025-01-01T000000Z.pem"), &old).unwrap();

        let ring = KeyRing::load_dir(&dir.0, false).unwrap();
        assert_eq!(ring.signing_kid(), "2026-11-22T190000Z");
        assert!(ring.decoding_key("2025-01-01T000000Z").is_some());
        assert!(ring.decoding_key("missing").is_none());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);

        std::fs::write(dir.0.join("broken.pem"), "garbage").unwrap();
        match KeyRing::load_dir(&dir.0, true) {
            Err(KeyError::BadPem { origin, .. }) => assert!(origin.ends_with("broken.pem")),
            other => panic!("expected BadPem, got {other:?}"),
        }
        std::fs::remove_file(dir.0.join("broken.pem")).unwrap();

        std::fs::write(dir.0.join("bad kid.pem"), &old).unwrap();
        assert!(matches!(
            KeyRing::load_dir(&dir.0, false),
            Err(KeyError::BadKid { .. })
        ));
    }
}
