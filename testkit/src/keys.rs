//! The key rings every test API and worker is configured with, so that a test can compute
//! what either would (the token in a verification email, a project database's password).

use idp_events::keys::SecretKeys;
use idp_events::privacy::{KeyEncryptionKeys, SubjectKeys};
use idp_events::{EventStore, Upcasters};
use sqlx::PgPool;

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

/// The key-encryption key ring of personal data of test apps.
pub const PERSONAL_DATA_KEYS: &str = "test:test-personal-data-secret-0123456789abcdef01";
/// The email blind-index key ring of test apps.
pub const EMAIL_INDEX_KEYS: &str = "test:test-email-index-secret-0123456789abcdef0123";

/// An event store that seals and opens personal values as the test apps do
/// ([`PERSONAL_DATA_KEYS`]).
pub fn event_store(pool: PgPool) -> EventStore {
    let ring = SecretKeys::parse("PERSONAL_DATA_KEYS", PERSONAL_DATA_KEYS)
        .unwrap_or_else(|err| panic!("the test ring parses: {err}"));
    let keys = SubjectKeys::new(pool.clone(), KeyEncryptionKeys::from_ring(&ring));
    EventStore::with_personal_data(pool, Upcasters::default(), keys)
}

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
