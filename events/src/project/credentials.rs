//! The password of a project's database login: derived from a server secret and the project id,
//! never stored. The worker sets it when it provisions the login (so running the step twice
//! sets the same one); the API derives it again to hand it to the owner, once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
