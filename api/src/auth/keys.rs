//! The access-token key ring: the API's Ed25519 signing keys as `jsonwebtoken` keys, and the
//! JWKS document that publishes their public halves.
//!
//! Keys are Ed25519 private keys in PKCS#8 PEM files in `JWT_KEYS_DIR`, one per file, named
//! `<kid>.pem` (read and made by [`idp_events::keys`], like every server key). The key whose
//! name sorts last signs new tokens; every key in the ring verifies, so a rotated-out key stays
//! valid for the tokens it signed until it is removed (remove it once the longest access token
//! lifetime has passed since the rotation).

use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use idp_events::keys::{KeyFile, KeyKind, dir, jwks, signing};
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::ExposeSecret as _;

/// Errors loading or generating signing keys: the one key error of idp. Messages never contain
/// key material.
pub use idp_events::keys::KeyError;

/// The kind of every error about access-token keys.
const KIND: KeyKind = KeyKind::AccessToken;

/// One key of the ring.
struct Entry {
    kid: String,
    public: VerifyingKey,
    decoding: DecodingKey,
}

/// The key ring: the newest key signs, every key verifies.
pub struct KeyRing {
    /// Every key, the signing key last.
    entries: Vec<Entry>,
    /// The private key of the last entry (zeroed when dropped; `Debug` redacts it).
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
        let no_keys = || KeyError::NoKeys {
            kind: KIND,
            dir: dir.to_path_buf(),
        };
        let mut files = dir::list_pem_files(dir, KIND)?;
        if files.is_empty() {
            if !generate {
                return Err(no_keys());
            }
            let kid = dir::new_kid();
            let path = signing::generate_in(dir, &kid, KIND)?;
            tracing::info!(
                path = %path.display(),
                kid = %kid,
                "generated a development signing key for access tokens"
            );
            files = dir::list_pem_files(dir, KIND)?;
            if files.is_empty() {
                return Err(no_keys());
            }
        }
        let mut keys = Vec::with_capacity(files.len());
        for (kid, path) in files {
            let origin = path.display().to_string();
            match signing::read_key_file(&path, KIND)? {
                KeyFile::Private(key) => keys.push((kid, key, origin)),
                KeyFile::Public(_) => {
                    return Err(KeyError::BadPem {
                        kind: KIND,
                        origin,
                        reason: "a public key cannot sign access tokens".into(),
                    });
                }
            }
        }
        Self::build(keys)
    }

    /// A ring from PEM strings (kid, pem) for tests or keys given inline; the last signs.
    pub fn from_pems(keys: &[(String, String)]) -> Result<Self, KeyError> {
        let mut parsed = Vec::with_capacity(keys.len());
        for (kid, pem) in keys {
            let origin = format!("inline key {kid:?}");
            let key = signing::parse_private_pem(pem, KIND, &origin)?;
            parsed.push((kid.clone(), key, origin));
        }
        Self::build(parsed)
    }

    /// Generates a fresh Ed25519 key, returning (kid, pkcs8 pem) — for tests and tools.
    ///
    /// The kid is the current UTC time to the second, e.g. `2026-11-22T190000Z`, so that kids of
    /// keys generated later sort later.
    pub fn generate_pem() -> Result<(String, String), KeyError> {
        let pem = signing::private_pem(&signing::generate(), KIND)?;
        Ok((dir::new_kid(), pem.expose_secret().to_owned()))
    }

    /// The key id of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        // `build` guarantees at least one entry.
        self.entries.last().map_or("", |e| e.kid.as_str())
    }

    /// The JSON Web Key Set of all public keys:
    /// `{"keys":[{"kty":"OKP","crv":"Ed25519","x":<base64url no pad>,"kid":..,"alg":"EdDSA","use":"sig"}]}`.
    pub fn jwks(&self) -> serde_json::Value {
        jwks::document(self.entries.iter().map(|e| (e.kid.as_str(), &e.public)))
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

    /// Builds a ring from (kid, key, origin) triples; the last signs.
    fn build(keys: Vec<(String, SigningKey, String)>) -> Result<Self, KeyError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(keys.len());
        let mut signing = None;
        for (kid, key, origin) in keys {
            if !dir::valid_kid(&kid) {
                return Err(KeyError::BadKid { kind: KIND, kid });
            }
            if entries.iter().any(|e| e.kid == kid) {
                return Err(KeyError::DuplicateKid { kind: KIND, kid });
            }
            let der = key.to_pkcs8_der().map_err(|e| KeyError::BadPem {
                kind: KIND,
                origin,
                reason: e.to_string(),
            })?;
            let public = key.verifying_key();
            signing = Some(EncodingKey::from_ed_der(der.as_bytes()));
            entries.push(Entry {
                kid,
                decoding: DecodingKey::from_ed_der(public.as_bytes()),
                public,
            });
        }
        let signing = signing.ok_or(KeyError::Empty { kind: KIND })?;
        Ok(Self { entries, signing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    use std::path::PathBuf;

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
        assert!(dir::valid_kid(&kid));
        assert!(chrono::NaiveDateTime::parse_from_str(&kid, "%Y-%m-%dT%H%M%SZ").is_ok());
        let (_, other) = KeyRing::generate_pem().unwrap();
        assert_ne!(pem, other);
    }

    #[test]
    fn from_pems_rejects_bad_input() {
        let (_, pem) = KeyRing::generate_pem().unwrap();
        assert!(matches!(
            KeyRing::from_pems(&[]),
            Err(KeyError::Empty { .. })
        ));
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
