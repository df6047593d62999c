//! The outbox side of [`super::Mailer`]: messages become `.eml` files in a directory, for
//! development and for deployments where another program picks mail up from disk.

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
    pub(super) fn new(dir: PathBuf) -> Result<Self, MailerConfigError> {
        std::fs::create_dir_all(&dir).map_err(|source| MailerConfigError::Outbox {
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
}

async fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
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
