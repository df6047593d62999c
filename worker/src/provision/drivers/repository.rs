//! The `repository` driver: a git repository on local disk for each project, scaffolded with
//! the template's rendered files in one initial commit on `main`.
//!
//! The repository lives at `<root>/<project name>-<project id as 32 hex digits>`: the whole id,
//! so two projects never share a folder (the first 8 hex digits of a UUIDv7 are the top of its
//! millisecond clock, the same for every project requested within about a minute). Each
//! repository carries a marker, `.git/idp-project`, holding the id of its project: inside
//! `.git`, so it is not part of the scaffolded tree (never committed, not in `git status`, not
//! carried by a clone) and git ignores it. The driver never adopts, scaffolds into or removes a
//! folder whose marker names another project: that is a permanent failure and nothing is
//! touched. A folder without a marker at the project's own path (left by a power loss, or made
//! by hand) is the project's, because no other project can have that path: with a commit it is
//! adopted and marked, without one it is moved aside like any broken repository.
//!
//! Repositories made before the marker were named `<name>-<8 hex digits>`, a name two projects
//! could share, so the driver cannot tell whose such a folder is: it neither adopts nor removes
//! one (deprovisioning logs that it left it), and an operator removes it by hand once neither
//! project of that name needs it.
//!
//! A repository is built in a temporary sibling directory, marker included, and renamed into
//! place, so the final path either does not exist or holds a complete repository: a run that
//! finds it (with a commit) is done, a crash half-way leaves only a temporary directory (removed
//! by `deprovision`), and of two concurrent runs the second rename fails and that run returns
//! the winner's repository. A final path that is there but is not a repository with a commit
//! (after a power loss, say) is moved aside to `.broken-…` and built again. Temporary and
//! moved-aside directories are named after the full folder name, and so the full id, and carry
//! their own markers, which `deprovision` checks like the repository's.
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
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use uuid::Uuid;

use super::{DriverError, StepInput};

/// The branch of the initial commit.
const BRANCH: &str = "main";

/// The file in a repository's `.git` that holds the id of the project it belongs to.
const MARKER: &str = "idp-project";

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
        let project = input.project_id;
        let files = input
            .files
            .iter()
            .map(|(path, content)| Ok((relative_path(path)?, content.as_str())))
            .collect::<Result<Vec<_>, DriverError>>()?;
        let target = self.root.join(&dir_name);
        fs::create_dir_all(&self.root)
            .await
            .map_err(|e| io_failed("creating the repositories directory", &e))?;

        if let Some(commit) = self.existing(&target, &dir_name, project).await? {
            return Ok(outputs(&target, &commit));
        }

        let staging = self.root.join(sibling_name(".tmp", &dir_name));
        let message = format!(
            "Scaffold {} from template {} v{}",
            input.project_name, input.template, input.template_version
        );
        if let Err(e) = build(&staging, &files, &message, project).await {
            let _ = remove_path(&staging).await;
            return Err(e);
        }
        if let Err(e) = fs::rename(&staging, &target).await {
            let _ = remove_path(&staging).await;
            // A concurrent run renamed its repository into place first: use that one.
            if claim_of(&target, project).await? == Claim::Ours
                && let Some(commit) = head(&target).await?
            {
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
    /// is fine. Refuses, removing nothing, if any of them is marked as another project's.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn deprovision(&self, input: &StepInput<'_>) -> Result<(), DriverError> {
        let dir_name = dir_name(input)?;
        let project = input.project_id;
        let mut doomed = vec![self.root.join(&dir_name)];
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
            if is_leftover_of(&entry.file_name(), &dir_name) {
                doomed.push(entry.path());
            }
        }
        // Every marker first, so that a refusal leaves everything as it was.
        for path in &doomed {
            if let Claim::Other(other) = claim_of(path, project).await? {
                return Err(foreign(path, &other, project));
            }
        }
        for path in &doomed {
            remove_path(path)
                .await
                .map_err(|e| io_failed("removing the repository or a leftover of it", &e))?;
        }
        let legacy = self.root.join(legacy_dir_name(input));
        if fs::symlink_metadata(&legacy).await.is_ok() {
            tracing::warn!(
                repository.path = %legacy.display(),
                "left a repository at the path of earlier versions in place: it has no marker \
                 and may be another project's of the same name; remove it by hand once neither \
                 needs it"
            );
        }
        Ok(())
    }

    /// The commit of a complete repository of the project at `target`: an unmarked one is
    /// adopted and marked (no other project can have this path), one without a commit is moved
    /// aside, and one marked as another project's is refused.
    async fn existing(
        &self,
        target: &Path,
        dir_name: &str,
        project: Uuid,
    ) -> Result<Option<String>, DriverError> {
        match fs::symlink_metadata(target).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_failed("looking for the repository", &e)),
            Ok(_) => {}
        }
        let claim = claim_of(target, project).await?;
        if let Claim::Other(other) = &claim {
            return Err(foreign(target, other, project));
        }
        if let Some(commit) = head(target).await? {
            if claim == Claim::Unclaimed {
                tracing::warn!(
                    repository.path = %target.display(),
                    "adopting a repository without a marker at the project's own path"
                );
                write_marker(target, project).await?;
            }
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

/// Whose a folder is, by its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// The marker names this project.
    Ours,
    /// No marker, or an empty one (a power loss before its content reached the disk).
    Unclaimed,
    /// The marker names another project, or something that is not a project id: what it says.
    Other(String),
}

/// The marker inside a repository's `.git`.
fn marker_path(repository: &Path) -> PathBuf {
    repository.join(".git").join(MARKER)
}

/// Whose the folder `dir` is, for `project`.
async fn claim_of(dir: &Path, project: Uuid) -> Result<Claim, DriverError> {
    let text = match fs::read_to_string(marker_path(dir)).await {
        Ok(text) => text,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Claim::Unclaimed);
        }
        // Not UTF-8: written by something else.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Ok(Claim::Other("unreadable text".into()));
        }
        Err(e) => return Err(io_failed("reading the repository's marker", &e)),
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(Claim::Unclaimed);
    }
    Ok(match Uuid::parse_str(text) {
        Ok(id) if id == project => Claim::Ours,
        _ => Claim::Other(text.chars().take(64).collect()),
    })
}

/// The permanent refusal to touch another project's folder.
fn foreign(path: &Path, other: &str, project: Uuid) -> DriverError {
    DriverError::Permanent(format!(
        "repository: {} is marked as project {other:?}'s, not {project}'s; it is neither \
         adopted, scaffolded into nor removed",
        path.display()
    ))
}

/// Writes the marker of `project` into the repository at `repository`: aside and renamed into
/// place, so it is either absent or whole.
async fn write_marker(repository: &Path, project: Uuid) -> Result<(), DriverError> {
    let marker = marker_path(repository);
    let aside = marker.with_extension(format!("tmp-{}", Uuid::new_v4().simple()));
    let written = async {
        let mut file = fs::File::create(&aside).await?;
        file.write_all(format!("{project}\n").as_bytes()).await?;
        file.sync_all().await?;
        fs::rename(&aside, &marker).await
    };
    if let Err(e) = written.await {
        let _ = fs::remove_file(&aside).await;
        return Err(io_failed("writing the repository's marker", &e));
    }
    Ok(())
}

/// `<project name>-<the id as 32 hex digits>`; the name is checked once more because it
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
    Ok(format!("{name}-{}", input.project_id.simple()))
}

/// The folder name of earlier versions, `<project name>-<first 8 hex digits of the id>`, which
/// projects of one name requested close together share.
fn legacy_dir_name(input: &StepInput<'_>) -> String {
    let id = input.project_id.simple().to_string();
    format!("{}-{}", input.project_name, &id[..8])
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

/// Writes the files into a new directory `staging`, commits them and marks the repository as
/// `project`'s.
async fn build(
    staging: &Path,
    files: &[(PathBuf, &str)],
    message: &str,
    project: Uuid,
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
    write_marker(staging, project).await?;
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
    fn leftovers_are_recognised_by_the_full_folder_name_only() {
        let random = Uuid::new_v4().simple().to_string();
        let id = "0190f4c28a1e7c3b9d2a5e6f7a8b9c0d";
        let dir = format!("web-{id}");
        let ours = format!(".tmp-{dir}-{random}");
        let broken = format!(".broken-{dir}-{random}");
        // Another project of the same name, requested in the same millisecond.
        let same_clock = format!(".tmp-web-0190f4c28a1effffffffffffffffffff-{random}");
        let longer_name = format!(".tmp-{dir}-x-{id}-{random}");
        let old_style = format!(".tmp-web-0190f4c2-{random}");
        assert!(is_leftover_of(OsStr::new(&ours), &dir));
        assert!(is_leftover_of(OsStr::new(&broken), &dir));
        for other in [&same_clock, &longer_name, &old_style, &dir] {
            assert!(!is_leftover_of(OsStr::new(other), &dir), "{other}");
        }
    }
}
