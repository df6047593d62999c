//! The outbox side of [`super::Mailer`]: messages become `.eml` files in a directory, for
//! development and for deployments where another program picks mail up from disk.
//!
//! The files hold live one-time tokens (verification and reset links), so they are readable by
//! the worker's user only: each is created 0600, and a directory the worker creates is 0700.

use std::fmt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::transport::{Delivered, HandOver, MailerConfigError, SendError};

/// A directory that receives one `<message id>.eml` per message.
#[derive(Clone)]
pub(super) struct OutboxDir {
    dir: PathBuf,
}

impl OutboxDir {
    /// The outbox `dir`, created (0700, parents too) if missing; an existing directory keeps
    /// its mode, which is the operator's to choose.
    pub(super) fn new(dir: PathBuf) -> Result<Self, MailerConfigError> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .map_err(|source| MailerConfigError::Outbox {
                dir: dir.clone(),
                source,
            })?;
        Ok(Self { dir })
    }

    pub(super) fn describe(&self) -> String {
        format!("outbox {}", self.dir.display())
    }

    /// Writes `message` to a temporary file, records the hand-over, then renames the file into place,
    /// so a reader never sees a message whose hand-over was not recorded. Writing the same
    /// message id again replaces the file.
    pub(super) async fn write<H: HandOver>(
        &self,
        message_id: &str,
        message: &[u8],
        hand_over: H,
    ) -> Result<Delivered, SendError<H::Error>> {
        let name = file_name(message_id);
        let path = self.dir.join(&name);
        let temporary = self
            .dir
            .join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let failed = |step: &str, error: std::io::Error| {
            SendError::Transient(format!("outbox: could not {step} the message: {error}"))
        };

        if let Err(error) = write_synced(&temporary, message).await {
            remove_quietly(&temporary).await;
            return Err(failed("write", error));
        }
        let committed = match hand_over.prepare().await {
            Ok(commit) => commit.await,
            Err(error) => Err(error),
        };
        if let Err(error) = committed {
            remove_quietly(&temporary).await;
            return Err(SendError::NotCommitted(error));
        }
        if let Err(error) = tokio::fs::rename(&temporary, &path).await {
            remove_quietly(&temporary).await;
            return Err(failed("move", error));
        }
        Ok(Delivered {
            reply: path.display().to_string(),
        })
    }

    /// Removes the file of message `message_id`; `false` when there was none.
    pub(super) async fn remove(&self, message_id: &str) -> std::io::Result<bool> {
        match tokio::fs::remove_file(self.dir.join(file_name(message_id))).await {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// Writes a new file, 0600 from its creation on (not chmod-ed later: no moment where others
/// could open it), and syncs it.
async fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    file.write_all(contents).await?;
    file.sync_all().await
}

async fn remove_quietly(path: &Path) {
    if let Err(error) = tokio::fs::remove_file(path).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, path = %path.display(), "could not remove a temporary outbox file");
    }
}

/// `<message id>.eml` with anything but `[A-Za-z0-9._@+-]` replaced by `_`, and no leading dot
/// (those are our temporary files).
fn file_name(message_id: &str) -> String {
    let safe: String = message_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        "message.eml".into()
    } else {
        format!("{safe}.eml")
    }
}

impl fmt::Debug for OutboxDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OutboxDir").field(&self.dir).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape_the_outbox() {
        assert_eq!(file_name("0190c3e2@idp"), "0190c3e2@idp.eml");
        assert_eq!(file_name("../../etc/passwd"), "_.._etc_passwd.eml");
        assert_eq!(file_name("..."), "message.eml");
    }
}
