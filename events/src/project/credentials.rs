//! The password of a project's database login: derived from a key of the
//! `PROJECT_DATABASE_KEYS` ring and the project id, never stored. The worker sets it when it
//! provisions the login (so running the step twice sets the same one) and records, in the
//! database step's output, the id of the key it used ([`PASSWORD_KEY_ID`]); the API derives it
//! again with that same key to hand it to the owner, once.
//!
//! The key id only selects the key and is not part of the HMAC input: the password is a function
//! of the key's secret and the project, so a secret re-listed under another id still derives the
//! password it always did, and what the log records (an id) is enough to find it again. A
//! rotation is a new key appended to the ring plus `idp-worker harden-databases
//! --rotate-passwords`, which sets every login's password with the new key and records its id
//! (`DatabasePasswordRotated`); until then each login keeps the password of the key recorded
//! for it, so that key must stay in the ring.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::keys::SecretKeys;

/// The field of a database step's output that names the key which derived the login's password.
pub const PASSWORD_KEY_ID: &str = "password_key_id";

/// The login password of project `project_id`'s database: 43 characters of base64url (256 bits).
pub fn database_password(secret: &[u8], project_id: Uuid) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(b"project-database-password:");
    mac.update(project_id.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The id of the key that derived the password of the login in a database step's `output`, if
/// the output records one (outputs recorded before key ids were do not).
pub fn password_key_id(output: &serde_json::Value) -> Option<&str> {
    output.get(PASSWORD_KEY_ID)?.as_str()
}

/// Why the password of a recorded login cannot be derived again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordedPasswordError {
    /// The output names no key: the login was set up before key ids were recorded, from a
    /// secret that is no longer configured.
    #[error("the database login was set up before its password key was recorded")]
    NoKeyRecorded,
    /// The output names a key that the ring no longer holds (removed too early).
    #[error("the key {0:?} that derived the database login's password is no longer configured")]
    KeyNotConfigured(String),
}

/// The password of project `project_id`'s login as a database step recorded it in `output`:
/// derived with the key the output names, which need not be the ring's current one.
pub fn recorded_database_password(
    keys: &SecretKeys,
    project_id: Uuid,
    output: &serde_json::Value,
) -> Result<String, RecordedPasswordError> {
    let id = password_key_id(output).ok_or(RecordedPasswordError::NoKeyRecorded)?;
    let key = keys
        .get(id)
        .ok_or_else(|| RecordedPasswordError::KeyNotConfigured(id.to_owned()))?;
    Ok(database_password(key.secret(), project_id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    const OLD: &str = "old-secret-0123456789abcdef0123456789";
    const NEW: &str = "new-secret-0123456789abcdef0123456789";

    #[test]
    fn the_password_is_stable_per_project_and_differs_between_projects_and_secrets() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(database_password(b"s", a), database_password(b"s", a));
        assert_ne!(database_password(b"s", a), database_password(b"s", b));
        assert_ne!(database_password(b"s", a), database_password(b"t", a));
        let password = database_password(b"s", a);
        assert_eq!(password.len(), 43);
        assert!(
            password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn a_recorded_login_is_derived_with_the_key_it_names_not_the_current_one() {
        let ring =
            SecretKeys::parse("PROJECT_DATABASE_KEYS", &format!("old:{OLD},new:{NEW}")).unwrap();
        let project = Uuid::from_u128(7);

        let old = recorded_database_password(&ring, project, &json!({ "password_key_id": "old" }));
        let new = recorded_database_password(&ring, project, &json!({ "password_key_id": "new" }));

        assert_eq!(old.unwrap(), database_password(OLD.as_bytes(), project));
        assert_eq!(new.unwrap(), database_password(NEW.as_bytes(), project));
    }

    #[test]
    fn a_login_without_a_key_id_or_with_a_retired_key_has_no_password() {
        let ring = SecretKeys::parse("PROJECT_DATABASE_KEYS", &format!("new:{NEW}")).unwrap();
        let project = Uuid::from_u128(7);

        assert_eq!(
            recorded_database_password(&ring, project, &json!({ "database": "p_x" })),
            Err(RecordedPasswordError::NoKeyRecorded)
        );
        assert_eq!(
            recorded_database_password(&ring, project, &json!({ "password_key_id": "old" })),
            Err(RecordedPasswordError::KeyNotConfigured("old".into()))
        );
        assert_eq!(password_key_id(&json!({ "password_key_id": 3 })), None);
    }
}
