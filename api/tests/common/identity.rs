//! What the sign-in tests share: the password of their accounts and the one-time tokens the
//! worker would email, recomputed from the log.

use std::time::{Duration, Instant};

use idp_events::identity::one_time_token;
pub use idp_events::identity::one_time_token::Purpose;
use idp_testkit::keys::email_keys;
use idp_testkit::log::events_with;
use sqlx::PgPool;
use uuid::Uuid;

/// The password of the tests' accounts.
pub const PASSWORD: &str = "correct horse battery staple";

/// The token the worker would put in the email caused by the latest `event_type` of `email`.
/// Waits for it: requests for emails are carried out just after they are answered.
pub async fn latest_token(
    pool: &PgPool,
    event_type: &str,
    email: &str,
    purpose: Purpose,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let event_id: Uuid = loop {
        let found = events_with(pool, event_type, "email", email)
            .await
            .last()
            .map(|e| e.event_id);
        if let Some(id) = found {
            break id;
        }
        assert!(Instant::now() < deadline, "no {event_type} for {email}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    issue(purpose, event_id)
}

/// The verification link of the `nth` (0-based) `VerificationRequested` of `email`.
pub async fn verification_token(pool: &PgPool, email: &str, nth: i64) -> String {
    let found = events_with(pool, "VerificationRequested", "email", email).await;
    let event_id = found[usize::try_from(nth).unwrap()].event_id;
    issue(Purpose::VerifyEmail, event_id)
}

/// The token for `purpose` of the email caused by `event_id`, remembered as a secret.
fn issue(purpose: Purpose, event_id: Uuid) -> String {
    let token = one_time_token::issue(&email_keys(), purpose, event_id);
    idp_ops::test_logs::remember_secret("token", &token);
    token
}
