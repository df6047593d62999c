//! The command lines of test binaries: the settings every test API and worker gets, as
//! arguments that `idp_api::config::Config` and `idp_worker::config::Config` parse. Callers
//! append their own flags after these (the API's and the worker's tests each start theirs).

use std::path::{Path, PathBuf};

use crate::keys::{
    ADDRESS_DIGEST_KEYS, EMAIL_INDEX_KEYS, EMAIL_TOKEN_KEYS, PERSONAL_DATA_KEYS,
    PROJECT_DATABASE_KEYS,
};

/// A fresh directory path under the system's temporary directory, `idp-test-<what>-<uuid>`
/// (not created).
pub fn temp_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("idp-test-{what}-{}", uuid::Uuid::now_v7()))
}

/// Where the workers of the test with queue prefix `prefix` create repositories.
pub fn repo_root(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("idp-test-repos-{prefix}"))
}

/// The seal key directory of the workers of the test with queue prefix `prefix` (the first to
/// start generates a key there).
pub fn seal_keys_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("idp-test-seal-keys-{prefix}"))
}

/// The outbox of the workers of the test with queue prefix `prefix` that send no SMTP.
pub fn outbox_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("idp-test-outbox-{prefix}"))
}

/// `idp-api` on random ports of 127.0.0.1, on `database_url`, with the access-token keys in
/// `jwt_keys_dir` and the test key rings. No broker and no seal keys: add `--amqp-url` and
/// `--seal-keys-dir` as the test needs.
pub fn api_args(database_url: &str, jwt_keys_dir: &Path) -> Vec<String> {
    [
        "idp-api",
        "--database-url",
        database_url,
        "--api-addr",
        "127.0.0.1:0",
        "--api-internal-addr",
        "127.0.0.1:0",
        "--jwt-keys-dir",
        &jwt_keys_dir.display().to_string(),
        "--email-token-keys",
        EMAIL_TOKEN_KEYS,
        "--project-database-keys",
        PROJECT_DATABASE_KEYS,
        "--address-digest-keys",
        ADDRESS_DIGEST_KEYS,
        "--personal-data-keys",
        PERSONAL_DATA_KEYS,
        "--email-index-keys",
        EMAIL_INDEX_KEYS,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `idp-worker` on a random port of 127.0.0.1, on `database_url` and `amqp_url`, with queues,
/// repositories and seal keys of `prefix` alone; mail goes to `smtp_url`, or without one to
/// the prefix's [`outbox_dir`].
pub fn worker_args(
    database_url: &str,
    amqp_url: &str,
    prefix: &str,
    smtp_url: Option<&str>,
) -> Vec<String> {
    let mut args = [
        "idp-worker",
        "--database-url",
        database_url,
        "--amqp-url",
        amqp_url,
        "--worker-addr",
        "127.0.0.1:0",
        "--amqp-prefix",
        prefix,
        "--email-token-keys",
        EMAIL_TOKEN_KEYS,
        "--project-database-keys",
        PROJECT_DATABASE_KEYS,
        "--personal-data-keys",
        PERSONAL_DATA_KEYS,
        "--public-base-url",
        "http://idp.test",
        "--provision-repo-root",
        &repo_root(prefix).display().to_string(),
        "--seal-keys-dir",
        &seal_keys_dir(prefix).display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    match smtp_url {
        Some(url) => args.extend(["--smtp-url".into(), url.into()]),
        None => args.extend([
            "--email-outbox-dir".into(),
            outbox_dir(prefix).display().to_string(),
        ]),
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn a_worker_without_smtp_mails_to_the_outbox_of_its_prefix() {
        let args = worker_args("postgres://db", "amqp://mq", "test-x", None);
        assert_eq!(args[0], "idp-worker");
        assert_eq!(value_of(&args, "--amqp-prefix"), Some("test-x"));
        assert_eq!(
            value_of(&args, "--email-outbox-dir").map(PathBuf::from),
            Some(outbox_dir("test-x"))
        );
        assert_eq!(value_of(&args, "--smtp-url"), None);
    }

    #[test]
    fn a_worker_with_smtp_has_no_outbox() {
        let args = worker_args("postgres://db", "amqp://mq", "test-x", Some("smtp://s:25"));
        assert_eq!(value_of(&args, "--smtp-url"), Some("smtp://s:25"));
        assert_eq!(value_of(&args, "--email-outbox-dir"), None);
    }

    #[test]
    fn an_api_gets_the_test_key_rings_and_its_keys_dir() {
        let args = api_args("postgres://db", Path::new("/tmp/keys"));
        assert_eq!(args[0], "idp-api");
        assert_eq!(value_of(&args, "--jwt-keys-dir"), Some("/tmp/keys"));
        assert_eq!(
            value_of(&args, "--email-token-keys"),
            Some(EMAIL_TOKEN_KEYS)
        );
        assert_eq!(value_of(&args, "--amqp-url"), None);
    }

    #[test]
    fn temporary_directories_are_fresh() {
        assert_ne!(temp_dir("keys"), temp_dir("keys"));
    }
}
