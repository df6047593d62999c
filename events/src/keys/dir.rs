//! Key directories: Ed25519 keys as `<kid>.pem`, the kid sorting last signs. Two directories
//! share the layout, one per purpose: `JWT_KEYS_DIR`, whose keys sign the API's access tokens,
//! and `SEAL_KEYS_DIR`, whose keys sign the log's seals ([`crate::seal`]). Development key rings
//! (`SECRETS_DIR`, [`super::ring`]) are written the same way. Keys made here are private to
//! their owner: files 0600, directories 0700.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{KeyError, KeyKind};

/// Whether `kid` matches `[A-Za-z0-9._-]{1,64}`.
pub fn valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The id of a key made now: the UTC time to the second (`2026-11-22T190000Z`), so that keys made
/// later sort later and sign.
pub fn new_kid() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H%M%SZ").to_string()
}

/// The `*.pem` files in `dir` as (kid, path), sorted by kid. A missing directory has none; a
/// file whose stem is not a valid kid is an error naming `kind`.
pub fn list_pem_files(dir: &Path, kind: KeyKind) -> Result<Vec<(String, PathBuf)>, KeyError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(KeyError::io(kind, dir)(e)),
    };
    let mut files = Vec::new();
    for entry in read {
        let path = entry.map_err(KeyError::io(kind, dir))?.path();
        if path.extension().is_none_or(|ext| ext != "pem") {
            continue;
        }
        if !std::fs::metadata(&path)
            .map_err(KeyError::io(kind, &path))?
            .is_file()
        {
            continue;
        }
        match path.file_stem().and_then(|s| s.to_str()) {
            Some(kid) if valid_kid(kid) => files.push((kid.to_owned(), path)),
            other => {
                return Err(KeyError::BadKid {
                    kind,
                    kid: other.map_or_else(|| path.display().to_string(), str::to_owned),
                });
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Creates `dir` and its missing parents, 0700 on unix. A directory that exists keeps its mode:
/// it is the operator's.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `contents` to `path` as a new file readable by its owner only (0600 on unix), unless
/// a file of that name exists: returns `false` then, leaving it as it is.
///
/// The file is written aside, synced and linked into place, so a reader never sees half of it,
/// a crash leaves no truncated file, and of two processes writing the same name at once, one
/// wins and the other reads the winner's.
pub fn write_private_file_once(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".new-{}", uuid::Uuid::now_v7().simple()));
    let aside = PathBuf::from(aside);
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&aside)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::hard_link(&aside, path)
    })();
    let _ = std::fs::remove_file(&aside);
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Logs a warning when the key file `path` can be read by group or others.
pub fn warn_if_readable_by_others(path: &Path, kind: KeyKind) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "{kind} file is accessible to group or others; use mode 0600"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, kind);
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
        let list = |dir: &Path| list_pem_files(dir, KeyKind::Seal);
        assert!(list(&dir).unwrap().is_empty(), "missing directory");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.pem"), "").unwrap();
        std::fs::write(dir.join("a.pem"), "").unwrap();
        std::fs::write(dir.join("notes.txt"), "").unwrap();
        let kids: Vec<String> = list(&dir).unwrap().into_iter().map(|f| f.0).collect();
        assert_eq!(kids, ["a", "b"]);
        std::fs::write(dir.join("bad name.pem"), "").unwrap();
        assert!(matches!(
            list(&dir),
            Err(KeyError::BadKid {
                kind: KeyKind::Seal,
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_private_file_is_written_once_for_its_owner_only_and_never_replaced() {
        let dir = std::env::temp_dir().join(format!("idp-key-dir-{}", uuid::Uuid::now_v7()));
        let nested = dir.join("keys");
        create_private_dir(&nested).unwrap();
        let file = nested.join("k.pem");
        assert!(write_private_file_once(&file, b"first").unwrap());
        assert!(!write_private_file_once(&file, b"second").unwrap());
        assert_eq!(std::fs::read(&file).unwrap(), b"first");
        let names: Vec<_> = std::fs::read_dir(&nested).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing left aside");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(&nested), 0o700);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn new_key_ids_are_valid() {
        assert!(valid_kid(&new_kid()));
    }
}
