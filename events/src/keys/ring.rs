//! Secret key rings, one per purpose: the MAC of one-time email tokens (`EMAIL_TOKEN_KEYS`),
//! the derivation of project database passwords (`PROJECT_DATABASE_KEYS`), the keyed digest
//! that names streams of sign-ins to unknown addresses (`ADDRESS_DIGEST_KEYS`), the wrapping of
//! each person's data key (`PERSONAL_DATA_KEYS`, see [`crate::privacy`]). No key serves
//! two purposes.
//!
//! A ring is a list of `<key id>:<secret>` entries (separated by commas or new lines). The last
//! entry is current: it makes everything new. Every entry still checks what it made, so a key
//! is rotated by appending a new entry and, once nothing the old key made is still in use,
//! removing the old one.
//!
//! A ring comes from its environment variable or, in development, from a file of the same
//! format under `SECRETS_DIR` that the first process to need it generates (each binary that
//! shares a ring reads the same file).

use std::fmt;
use std::path::Path;

use secrecy::{ExposeSecret as _, SecretSlice, SecretString};

use super::dir::{create_private_dir, new_kid, valid_kid, write_private_file_once};
use super::{KeyError, KeyKind};

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// One key of a ring. `Debug` shows only its id; the secret is zeroed when dropped.
#[derive(Clone)]
pub struct SecretKey {
    id: String,
    secret: SecretSlice<u8>,
}

impl SecretKey {
    fn new(id: &str, secret: &[u8]) -> Self {
        Self {
            id: id.to_owned(),
            secret: SecretSlice::from(secret.to_vec()),
        }
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key material. Never log it.
    pub fn secret(&self) -> &[u8] {
        self.secret.expose_secret()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A non-empty ring of keys for one purpose; the last is current.
#[derive(Debug, Clone)]
pub struct SecretKeys {
    keys: Vec<SecretKey>,
}

impl SecretKeys {
    /// Parses `<key id>:<secret>` entries separated by commas or new lines (blank lines and
    /// lines starting with `#` are skipped); `source_name` names the variable or file in errors.
    pub fn parse(source_name: &str, spec: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<SecretKey> = Vec::new();
        let entries = spec
            .split(['\n', ','])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let bad = || KeyError::BadEntry {
                source_name: source_name.to_owned(),
                index: i + 1,
            };
            let (id, secret) = entry.split_once(':').ok_or_else(bad)?;
            let (id, secret) = (id.trim(), secret.trim());
            if !valid_kid(id) || secret.len() < MIN_SECRET_LEN {
                return Err(bad());
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::DuplicateId {
                    source_name: source_name.to_owned(),
                    id: id.to_owned(),
                });
            }
            keys.push(SecretKey::new(id, secret.as_bytes()));
        }
        if keys.is_empty() {
            return Err(KeyError::EmptyRing {
                source_name: source_name.to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// A ring of one key (tests and tools).
    pub fn single(id: &str, secret: &[u8]) -> Self {
        Self {
            keys: vec![SecretKey::new(id, secret)],
        }
    }

    /// The ring in `value` (the content of `variable`), or else the development file `file`,
    /// generated with one fresh key if it does not exist and `generate` allows it. Two
    /// processes generating at once end up with the same file: it is written aside and linked
    /// into place, and the loser reads the winner's.
    pub fn from_env_or_file(
        variable: &str,
        value: Option<&SecretString>,
        file: &Path,
        generate: bool,
    ) -> Result<Self, KeyError> {
        if let Some(value) = value {
            return Self::parse(variable, value.expose_secret());
        }
        let io = KeyError::io(KeyKind::Ring, file);
        match std::fs::read_to_string(file) {
            Ok(spec) => return Self::parse(&file.display().to_string(), &spec),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if !generate {
            return Err(KeyError::Missing {
                variable: variable.to_owned(),
                file: file.to_path_buf(),
            });
        }
        if let Some(dir) = file.parent() {
            create_private_dir(dir).map_err(KeyError::io(KeyKind::Ring, dir))?;
        }
        let entry = SecretString::from(format!("{}\n", generate_entry().expose_secret()));
        let written = write_private_file_once(file, entry.expose_secret().as_bytes())
            .map_err(KeyError::io(KeyKind::Ring, file))?;
        if written {
            tracing::info!(path = %file.display(), "generated a development key ring");
        }
        let spec = SecretString::from(
            std::fs::read_to_string(file).map_err(KeyError::io(KeyKind::Ring, file))?,
        );
        Self::parse(&file.display().to_string(), spec.expose_secret())
    }

    /// The ring in `value` (the content of `variable`), or else the development ring
    /// `<secrets_dir>/<name>.keys` (see [`SecretKeys::from_env_or_file`]).
    pub fn from_env_or_dev_ring(
        variable: &str,
        value: Option<&SecretString>,
        secrets_dir: &Path,
        name: &str,
        generate: bool,
    ) -> Result<Self, KeyError> {
        let file = secrets_dir.join(format!("{name}.keys"));
        Self::from_env_or_file(variable, value, &file, generate)
    }

    /// The current key: it makes everything new.
    pub fn current(&self) -> &SecretKey {
        // Never empty: `parse` and `single` make at least one.
        &self.keys[self.keys.len() - 1]
    }

    /// The key `id`, if the ring has it.
    pub fn get(&self, id: &str) -> Option<&SecretKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Every key, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &SecretKey> {
        self.keys.iter()
    }
}

/// A fresh entry `<UTC time as key id>:<256 random bits in hex>`, as a development file or
/// `scripts/` would write it.
pub fn generate_entry() -> SecretString {
    SecretString::from(format!(
        "{}:{}",
        new_kid(),
        hex::encode(rand::random::<[u8; 32]>())
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LONG: &str = "0123456789abcdef0123456789abcdef";

    fn secret(spec: &str) -> SecretString {
        SecretString::from(spec.to_owned())
    }

    #[test]
    fn the_last_entry_is_current_and_every_entry_is_found_by_id() {
        let ring = SecretKeys::parse("X", &format!("old:{LONG}x, new:{LONG}y\n")).unwrap();
        assert_eq!(ring.current().id(), "new");
        assert_eq!(ring.current().secret(), format!("{LONG}y").as_bytes());
        assert_eq!(
            ring.get("old").unwrap().secret(),
            format!("{LONG}x").as_bytes()
        );
        assert!(ring.get("other").is_none());
        assert_eq!(ring.iter().count(), 2);
    }

    #[test]
    fn bad_rings_are_refused_naming_the_source_and_never_the_secret() {
        let short = SecretKeys::parse("EMAIL_TOKEN_KEYS", "k:tooshort").unwrap_err();
        assert!(short.to_string().starts_with("EMAIL_TOKEN_KEYS: entry 1"));
        assert!(!short.to_string().contains("tooshort"));
        assert!(matches!(
            SecretKeys::parse("X", LONG),
            Err(KeyError::BadEntry { index: 1, .. })
        ));
        assert!(matches!(
            SecretKeys::parse("X", &format!("a b:{LONG}")),
            Err(KeyError::BadEntry { .. })
        ));
        assert!(matches!(
            SecretKeys::parse("X", &format!("a:{LONG},a:{LONG}")),
            Err(KeyError::DuplicateId { .. })
        ));
        assert!(matches!(
            SecretKeys::parse("X", " ,\n# comment\n"),
            Err(KeyError::EmptyRing { .. })
        ));
    }

    #[test]
    fn debug_output_of_a_ring_shows_key_ids_and_no_secret() {
        let ring = SecretKeys::parse("X", &format!("old:{LONG}x,new:{LONG}y")).unwrap();
        let debug = format!("{ring:?}");
        assert!(
            debug.contains("\"old\"") && debug.contains("\"new\""),
            "{debug}"
        );
        assert!(!debug.contains(LONG), "{debug}");
        let entry = generate_entry();
        assert!(!format!("{entry:?}").contains(entry.expose_secret()));
    }

    #[test]
    fn a_development_file_is_generated_once_private_and_then_read() {
        let dir = std::env::temp_dir().join(format!("idp-secrets-{}", uuid::Uuid::now_v7()));
        let file = dir.join("email-token.keys");
        let missing =
            SecretKeys::from_env_or_file("EMAIL_TOKEN_KEYS", None, &file, false).unwrap_err();
        assert!(matches!(missing, KeyError::Missing { .. }));
        assert!(
            missing
                .to_string()
                .starts_with("EMAIL_TOKEN_KEYS is required ("),
            "{missing}"
        );
        let first = SecretKeys::from_env_or_file("EMAIL_TOKEN_KEYS", None, &file, true).unwrap();
        let again = SecretKeys::from_env_or_file("EMAIL_TOKEN_KEYS", None, &file, false).unwrap();
        assert_eq!(first.current().secret(), again.current().secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let explicit = SecretKeys::from_env_or_file(
            "EMAIL_TOKEN_KEYS",
            Some(&secret(&format!("env:{LONG}"))),
            &file,
            false,
        )
        .unwrap();
        assert_eq!(explicit.current().id(), "env");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
