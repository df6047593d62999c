//! Asymmetric key pairs (Ed25519) in key directories ([`super::dir`]): private keys as PKCS#8
//! PEM, public keys as SPKI PEM, generated private to their owner. The access-token ring of the
//! API and the seal keys both read and make their keys here; each keeps its own directory and
//! decides which files sign.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use secrecy::{ExposeSecret as _, SecretString};

use super::dir::{self, create_private_dir, list_pem_files, write_private_file_once};
use super::{KeyError, KeyKind};

/// What a key file holds. The private key is zeroed when dropped and its `Debug` shows only
/// the public half.
#[derive(Debug)]
pub enum KeyFile {
    /// A PKCS#8 PEM Ed25519 private key: it signs (and verifies).
    Private(SigningKey),
    /// An SPKI PEM Ed25519 public key: it only verifies.
    Public(VerifyingKey),
}

impl KeyFile {
    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            Self::Private(key) => key.verifying_key(),
            Self::Public(key) => *key,
        }
    }
}

/// The PEM label of SPKI public keys.
const PUBLIC_KEY_LABEL: &str = "-----BEGIN PUBLIC KEY-----";

/// A fresh random Ed25519 private key.
pub fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// `key` as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn private_pem(key: &SigningKey, kind: KeyKind) -> Result<SecretString, KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate {
            kind,
            reason: e.to_string(),
        })?;
    Ok(SecretString::from(pem.as_str()))
}

/// A public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_pem(key: &VerifyingKey) -> Option<String> {
    key.to_public_key_pem(LineEnding::LF).ok()
}

/// Parses a PEM: an SPKI public key when its label says so, else a PKCS#8 private key.
/// `origin` names it in errors (a path, or `inline key <kid>`).
pub fn parse_pem(pem: &str, kind: KeyKind, origin: &str) -> Result<KeyFile, KeyError> {
    let bad = |reason: String| KeyError::BadPem {
        kind,
        origin: origin.to_owned(),
        reason,
    };
    // The label decides, so that the error names what the file claims to be.
    if pem.trim_start().starts_with(PUBLIC_KEY_LABEL) {
        VerifyingKey::from_public_key_pem(pem)
            .map(KeyFile::Public)
            .map_err(|e| bad(format!("not an Ed25519 SPKI public key: {e}")))
    } else {
        SigningKey::from_pkcs8_pem(pem)
            .map(KeyFile::Private)
            .map_err(|e| bad(format!("not an Ed25519 PKCS#8 private key: {e}")))
    }
}

/// Parses a PKCS#8 PEM Ed25519 private key; a public key is refused.
pub fn parse_private_pem(pem: &str, kind: KeyKind, origin: &str) -> Result<SigningKey, KeyError> {
    match parse_pem(pem, kind, origin)? {
        KeyFile::Private(key) => Ok(key),
        KeyFile::Public(_) => Err(KeyError::BadPem {
            kind,
            origin: origin.to_owned(),
            reason: "a public key cannot sign".into(),
        }),
    }
}

/// Reads the key file `path` (see [`parse_pem`]); warns when it holds a private key that group
/// or others may read.
pub fn read_key_file(path: &Path, kind: KeyKind) -> Result<KeyFile, KeyError> {
    let pem = SecretString::from(std::fs::read_to_string(path).map_err(KeyError::io(kind, path))?);
    let file = parse_pem(pem.expose_secret(), kind, &path.display().to_string())?;
    if matches!(file, KeyFile::Private(_)) {
        dir::warn_if_readable_by_others(path, kind);
    }
    Ok(file)
}

/// Every key in `dir` as (kid, key), sorted by kid. A missing directory has none.
pub fn load_dir(dir: &Path, kind: KeyKind) -> Result<Vec<(String, KeyFile)>, KeyError> {
    list_pem_files(dir, kind)?
        .into_iter()
        .map(|(kid, path)| Ok((kid, read_key_file(&path, kind)?)))
        .collect()
}

/// Writes a fresh private key to `dir` as `<kid>.pem` (the directory created 0700 if missing,
/// the file 0600) and returns its path. A file of that name already there is left as it is:
/// of two processes generating under the same name at once, both then read the winner's.
pub fn generate_in(dir: &Path, kid: &str, kind: KeyKind) -> Result<PathBuf, KeyError> {
    if !dir::valid_kid(kid) {
        return Err(KeyError::BadKid {
            kind,
            kid: kid.to_owned(),
        });
    }
    create_private_dir(dir).map_err(KeyError::io(kind, dir))?;
    let pem = private_pem(&generate(), kind)?;
    let path = dir.join(format!("{kid}.pem"));
    write_private_file_once(&path, pem.expose_secret().as_bytes())
        .map_err(KeyError::io(kind, &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("idp-signing-{}", uuid::Uuid::now_v7())))
    }

    #[test]
    fn a_private_pem_parses_back_and_a_public_pem_only_verifies() {
        let key = generate();
        let pem = private_pem(&key, KeyKind::Seal).unwrap();
        assert!(
            pem.expose_secret()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let parsed = parse_private_pem(pem.expose_secret(), KeyKind::Seal, "inline").unwrap();
        assert_eq!(parsed.verifying_key(), key.verifying_key());

        let public = public_pem(&key.verifying_key()).unwrap();
        let file = parse_pem(&public, KeyKind::Seal, "inline").unwrap();
        assert!(matches!(file, KeyFile::Public(_)));
        assert_eq!(file.verifying_key(), key.verifying_key());
        assert!(matches!(
            parse_private_pem(&public, KeyKind::AccessToken, "inline"),
            Err(KeyError::BadPem {
                kind: KeyKind::AccessToken,
                ..
            })
        ));
        assert!(!format!("{pem:?}").contains("PRIVATE"));
        assert!(!format!("{:?}", KeyFile::Private(key)).contains("secret"));
    }

    #[test]
    fn generated_keys_are_private_files_that_load_back_by_kid() {
        let dir = temp_dir();
        let keys = dir.0.join("keys");
        let path = generate_in(&keys, "k1", KeyKind::Seal).unwrap();
        assert_eq!(path, keys.join("k1.pem"));
        let first = std::fs::read(&path).unwrap();
        generate_in(&keys, "k1", KeyKind::Seal).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first, "never replaced");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&keys), 0o700);
        }
        let loaded = load_dir(&keys, KeyKind::Seal).unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(matches!(&loaded[0], (kid, KeyFile::Private(_)) if kid == "k1"));
        assert!(matches!(
            generate_in(&keys, "bad kid", KeyKind::Seal),
            Err(KeyError::BadKid { .. })
        ));
    }
}
