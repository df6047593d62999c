//! The server's key directory (`JWT_KEYS_DIR`): Ed25519 keys as `<kid>.pem` (PKCS#8), the kid
//! sorting last signs. The API signs access tokens with it and the worker signs the log's
//! seals, so both read it the same way.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use serde_json::Value;

/// Listing the key directory failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyDirError {
    /// Reading the directory or a file's metadata failed.
    #[error("key directory I/O on {path}: {source}", path = path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file's name is not a valid key id.
    #[error("invalid key id {0:?} (expected [A-Za-z0-9._-]{{1,64}})")]
    BadKid(String),
}

/// Whether `kid` matches `[A-Za-z0-9._-]{1,64}`.
pub fn valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `*.pem` files in `dir` as (kid, path), sorted by kid. A missing directory has none.
pub fn list_pem_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, KeyDirError> {
    let io_err = |path: &Path, source| KeyDirError::Io {
        path: path.to_path_buf(),
        source,
    };
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut files = Vec::new();
    for entry in read {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if path.extension().is_none_or(|ext| ext != "pem") {
            continue;
        }
        if !std::fs::metadata(&path)
            .map_err(|e| io_err(&path, e))?
            .is_file()
        {
            continue;
        }
        match path.file_stem().and_then(|s| s.to_str()) {
            Some(kid) if valid_kid(kid) => files.push((kid.to_owned(), path)),
            other => {
                return Err(KeyDirError::BadKid(
                    other.map_or_else(|| path.display().to_string(), str::to_owned),
                ));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// A public key as a JSON Web Key (`OKP`/`Ed25519`, `alg` `EdDSA`, `use` `sig`).
pub fn public_jwk(kid: &str, key: &VerifyingKey) -> Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.to_bytes()),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn key_ids_are_short_and_plain() {
        assert!(valid_kid("2026-11-22T190000Z"));
        assert!(!valid_kid(""));
        assert!(!valid_kid("a/b"));
        assert!(!valid_kid(&"a".repeat(65)));
    }

    #[test]
    fn pem_files_are_listed_by_kid_and_a_bad_name_is_refused() {
        let dir = std::env::temp_dir().join(format!("idp-key-dir-{}", uuid::Uuid::now_v7()));
        assert!(
            list_pem_files(&dir).unwrap().is_empty(),
            "missing directory"
        );
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.pem"), "").unwrap();
        std::fs::write(dir.join("a.pem"), "").unwrap();
        std::fs::write(dir.join("notes.txt"), "").unwrap();
        let kids: Vec<String> = list_pem_files(&dir)
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(kids, ["a", "b"]);
        std::fs::write(dir.join("bad name.pem"), "").unwrap();
        assert!(matches!(list_pem_files(&dir), Err(KeyDirError::BadKid(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
