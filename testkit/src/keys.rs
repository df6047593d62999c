//! The key rings every test API and worker is configured with, so that a test can compute
//! what either would (the token in a verification email, a project database's password).

use idp_events::keys::SecretKeys;

/// The key of one-time tokens shared by the test API and worker.
pub const TOKEN_SECRET: &str = "test-token-secret-0123456789abcdef0123456789";
/// The email-token key ring of test apps: one key whose secret is [`TOKEN_SECRET`].
pub const EMAIL_TOKEN_KEYS: &str = "test:test-token-secret-0123456789abcdef0123456789";
/// The secret of the project-database key ring of test apps.
pub const DATABASE_SECRET: &str = "test-database-secret-0123456789abcdef01234567";
/// The project-database key ring of test apps: one key whose secret is [`DATABASE_SECRET`].
pub const PROJECT_DATABASE_KEYS: &str = "test:test-database-secret-0123456789abcdef01234567";
/// The address-digest key ring of test apps.
pub const ADDRESS_DIGEST_KEYS: &str = "test:test-address-digest-secret-0123456789abcdef";

/// The email-token key ring of test apps.
pub fn email_keys() -> SecretKeys {
    SecretKeys::single("test", TOKEN_SECRET.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rings_hold_their_secrets_under_the_test_key_id() {
        assert_eq!(EMAIL_TOKEN_KEYS, format!("test:{TOKEN_SECRET}"));
        assert_eq!(PROJECT_DATABASE_KEYS, format!("test:{DATABASE_SECRET}"));
    }
}
