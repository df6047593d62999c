//! The `repository` driver: a git repository on local disk for each project, scaffolded with
//! the template's rendered files in one initial commit on `main`.
//!
//! The repository lives at `<root>/<project name>-<first 8 hex digits of the id>`. It is built
//! in a temporary sibling directory and renamed into place, so the final path either does not
//! exist or holds a complete repository: a run that finds it (with a commit) is done, a crash
//! half-way leaves only a temporary directory (removed by `deprovision`), and of two concurrent
//! runs the second rename fails and that run returns the winner's repository. A final path that
//! is there but is not a repository with a commit (after a power loss, say) is moved aside to
//! `.broken-…` and built again.
//!
//! git runs as a command (`tokio::process`), with the system and global configuration ignored
//! and identity, default branch, signing and hooks set on the command line, so what it builds
//! does not depend on the machine's or the user's git settings.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use serde_json::json;
use tokio::fs;
use tokio::process::Command;
use uuid::Uuid;

use super::{DriverError, StepInput};

/// The branch of the initial commit.
const BRANCH: &str = "main";

/// Creates and removes projects' git repositories under one directory.
#[derive(Debug, Clone)]
pub struct RepositoryDriver {
    root: PathBuf,
}

impl RepositoryDriver {
    /// A driver keeping repositories under `root` (created when missing).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where the project's repository is (or will be).
    pub fn repository_path(&self, input: &StepInput<'_>) -> Result<PathBuf, DriverError> {
        Ok(self.root.join(dir_name(input)?))
    }

    /// Builds the project's repository unless it exists. Returns `{"path", "commit", "branch"}`.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn provision(&self, input: &StepInput<'_>) -> Result<serde_json::Value, DriverError> {
        let dir_name = dir_name(input)?;
        let files = input
            .files
            .iter()
            .map(|(path, content)| Ok((relative_path(path)?, content.as_str())))
            .collect::<Result<Vec<_>, DriverError>>()?;
        let target = self.root.join(&dir_name);
        fs::create_dir_all(&self.root)
            .await
            .map_err(|e| io_failed("creating the repositories directory", &e))?;

        if let Some(commit) = self.existing(&target, &dir_name).await? {
            return Ok(outputs(&target, &commit));
        }

        let staging = self.root.join(sibling_name(".tmp", &dir_name));
        let message = format!(
            "Scaffold {} from template {} v{}",
            input.project_name, input.template, input.template_version
        );
        if let Err(e) = build(&staging, &files, &message).await {
            let _ = remove_path(&staging).await;
            return Err(e);
        }
        if let Err(e) = fs::rename(&staging, &target).await {
            let _ = remove_path(&staging).await;
            // A concurrent run renamed its repository into place first: use that one.
            if let Some(commit) = head(&target).await? {
                return Ok(outputs(&target, &commit));
            }
            return Err(io_failed("moving the repository into place", &e));
        }
        let commit = head(&target).await?.ok_or_else(|| {
            DriverError::Transient(format!(
                "repository: {} has no commit after it was moved into place",
                target.display()
            ))
        })?;
        Ok(outputs(&target, &commit))
    }

    /// Removes the project's repository and any temporary or broken leftovers of it; missing
    /// is fine.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn deprovision(&self, input: &StepInput<'_>) -> Result<(), DriverError> {
        let dir_name = dir_name(input)?;
        remove_path(&self.root.join(&dir_name))
            .await
            .map_err(|e| io_failed("removing the repository", &e))?;
        let mut entries = match fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_failed("listing the repositories directory", &e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_failed("listing the repositories directory", &e))?
        {
            let name = entry.file_name();
            if is_leftover_of(&name, &dir_name) {
                remove_path(&entry.path())
                    .await
                    .map_err(|e| io_failed("removing a leftover of the repository", &e))?;
            }
        }
        Ok(())
    }

    /// The commit of a complete repository at `target`; a broken one is moved aside.
    async fn existing(&self, target: &Path, dir_name: &str) -> Result<Option<String>, DriverError> {
        match fs::symlink_metadata(target).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_failed("looking for the repository", &e)),
            Ok(_) => {}
        }
        if let Some(commit) = head(target).await? {
            return Ok(Some(commit));
        }
        let aside = self.root.join(sibling_name(".broken", dir_name));
        tracing::warn!(
            repository.path = %target.display(),
            moved_to = %aside.display(),
            "the repository directory has no commit; moving it aside and building it again"
        );
        match fs::rename(target, &aside).await {
            // A concurrent run moved it first.
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_failed("moving a broken repository aside", &e))
            }
            _ => Ok(None),
        }
    }
}

/// `<project name>-<first 8 hex digits of the id>`; the name is checked once more because it
/// becomes a path.
fn dir_name(input: &StepInput<'_>) -> Result<String, DriverError> {
    let name = input.project_name;
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !valid {
        return Err(DriverError::Permanent(format!(
            "repository: the project name {name:?} is not a DNS label"
        )));
    }
    let id = input.project_id.simple().to_string();
    Ok(format!("{name}-{}", &id[..8]))
}

/// `<prefix>-<dir name>-<32 random hex digits>`.
fn sibling_name(prefix: &str, dir_name: &str) -> String {
    format!("{prefix}-{dir_name}-{}", Uuid::new_v4().simple())
}

/// Whether `name` is a temporary or moved-aside directory of `dir_name` (and not of another
/// project whose directory name merely starts the same way).
fn is_leftover_of(name: &OsStr, dir_name: &str) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    [".tmp-", ".broken-"].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(dir_name))
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|random| {
                random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit())
            })
    })
}

/// A template file's path, checked: relative, without `..`, not into `.git`.
fn relative_path(raw: &str) -> Result<PathBuf, DriverError> {
    let refuse = |why: &str| {
        DriverError::Permanent(format!("repository: refusing the file path {raw:?}: {why}"))
    };
    if raw.contains('\0') {
        return Err(refuse("it contains a NUL byte"));
    }
    let mut path = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) if part.eq_ignore_ascii_case(".git") => {
                return Err(refuse("it points into .git"));
            }
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("it contains \"..\"")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("it is absolute")),
        }
    }
    if path.as_os_str().is_empty() {
        return Err(refuse("it names no file"));
    }
    Ok(path)
}

/// Writes the files into a new directory `staging` and commits them.
async fn build(
    staging: &Path,
    files: &[(PathBuf, &str)],
    message: &str,
) -> Result<(), DriverError> {
    fs::create_dir(staging)
        .await
        .map_err(|e| io_failed("creating the temporary directory", &e))?;
    for (path, content) in files {
        let path = staging.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .await
                .map_err(|e| write_failed(&e))?;
        }
        fs::write(&path, content)
            .await
            .map_err(|e| write_failed(&e))?;
    }
    git(staging, &["init", "--quiet"]).await?;
    git(staging, &["add", "--all"]).await?;
    git(
        staging,
        &["commit", "--quiet", "--allow-empty", "-m", message],
    )
    .await?;
    Ok(())
}

/// The commit `HEAD` of the repository at `dir`, or `None` when it is not one or has none.
async fn head(dir: &Path) -> Result<Option<String>, DriverError> {
    // An explicit --git-dir (relative to `-C dir`): discovery could otherwise find a
    // repository above `dir`.
    let output = git_command(dir)
        .args([
            "--git-dir=.git",
            "rev-parse",
            "--verify",
            "--quiet",
            "HEAD^{commit}",
        ])
        .output()
        .await
        .map_err(|e| spawn_failed(&e))?;
    if !output.status.success() {
        return Ok(None);
    }
    let commit = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok((!commit.is_empty()).then_some(commit))
}

/// Runs `git <args>` in `dir`; a non-zero exit is transient, with git's message.
async fn git(dir: &Path, args: &[&str]) -> Result<(), DriverError> {
    let output = git_command(dir)
        .args(args)
        .output()
        .await
        .map_err(|e| spawn_failed(&e))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut reason: String = stderr.trim().chars().take(300).collect();
    if reason.is_empty() {
        reason = output.status.to_string();
    }
    Err(DriverError::Transient(format!(
        "repository: git {} failed: {reason}",
        args.first().copied().unwrap_or_default()
    )))
}

/// `git -C <dir>` with a configuration of its own: no system or global files, no inherited
/// `GIT_*` variables, a fixed identity and branch, no signing, no hooks.
fn git_command(dir: &Path) -> Command {
    let mut command = Command::new("git");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            command.env_remove(key);
        }
    }
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=idp",
            "-c",
            "user.email=idp@localhost",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn outputs(path: &Path, commit: &str) -> serde_json::Value {
    json!({
        "path": path.display().to_string(),
        "commit": commit,
        "branch": BRANCH,
    })
}

/// Removes a directory tree, a file or a symbolic link; missing is fine.
async fn remove_path(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path).await {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).await,
        Ok(_) => fs::remove_file(path).await,
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn io_failed(step: &str, error: &io::Error) -> DriverError {
    DriverError::Transient(format!("repository: {step} failed: {error}"))
}

/// Writing a template file: paths that clash (a file where a directory must be) are the
/// template's fault and will clash again.
fn write_failed(error: &io::Error) -> DriverError {
    match error.kind() {
        io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::InvalidInput => DriverError::Permanent(format!(
            "repository: writing the template's files failed: {error}"
        )),
        _ => io_failed("writing the template's files", error),
    }
}

fn spawn_failed(error: &io::Error) -> DriverError {
    if error.kind() == io::ErrorKind::NotFound {
        DriverError::Permanent(
            "repository: the git command was not found; install git or put it on PATH".into(),
        )
    } else {
        DriverError::Transient(format!("repository: running git failed: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_without_parent_components_are_accepted() {
        assert_eq!(
            relative_path("./src/main.rs").unwrap(),
            PathBuf::from("src/main.rs")
        );
        assert_eq!(relative_path("a..b").unwrap(), PathBuf::from("a..b"));
    }

    #[test]
    fn absolute_parent_git_and_empty_paths_are_refused_as_permanent() {
        for raw in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            ".git/hooks/pre-commit",
            "",
            ".",
            "a\0b",
        ] {
            let error = relative_path(raw).unwrap_err();
            assert!(error.is_permanent(), "{raw:?}: {error}");
        }
    }

    #[test]
    fn leftovers_are_recognised_only_for_their_own_project() {
        let random = Uuid::new_v4().simple().to_string();
        let ours = format!(".tmp-web-0123abcd-{random}");
        let broken = format!(".broken-web-0123abcd-{random}");
        let other = format!(".tmp-web-0123abcd-x-89abcdef-{random}");
        assert!(is_leftover_of(OsStr::new(&ours), "web-0123abcd"));
        assert!(is_leftover_of(OsStr::new(&broken), "web-0123abcd"));
        assert!(!is_leftover_of(OsStr::new(&other), "web-0123abcd"));
        assert!(!is_leftover_of(OsStr::new("web-0123abcd"), "web-0123abcd"));
    }
}
