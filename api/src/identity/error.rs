//! Why an identity use case failed, and the one place that turns it into an HTTP answer.
//!
//! Policy: the domain variants say why the caller's request was refused, and their texts (the
//! `detail` of the 4xx answer) are written here, next to their status. Everything else is
//! infrastructure (the event log, the database, the hasher, the token signer): logged once where
//! the error becomes a response and answered with a generic 5xx by [`ApiError`].

use idp_events::identity::email::EmailError;
use idp_events::identity::user::UserError;
use idp_events::{AppendError, ReadError};
use uuid::Uuid;

use crate::auth::password::{HashError, PasswordError};
use crate::auth::tokens::TokenError;
use axum::http::StatusCode;

use crate::error::ApiError;

/// An identity use case that did not go through.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A field of the request is refused. 422, detail `<field>: <reason>`.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as the request names it (`email`, `password`, `token`, ...).
        field: &'static str,
        /// Why, safe to show.
        reason: String,
    },
    /// A sign-in was refused. 401 `invalid-credentials`, the same answer whatever the reason
    /// (unknown address, wrong password, unverified or locked account).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The refresh token is unknown, already rotated or of a session that ended. 401
    /// `unauthorized`.
    #[error("no valid session")]
    Unauthorized,
    /// The second step of a sign-in was refused: one answer whatever the reason.
    #[error("second factor refused")]
    SecondFactorRefused,
    /// The request does not fit the account's second factor as it stands (none to disable,
    /// one on already, no enrolment in progress).
    #[error("{0}")]
    SecondFactorState(&'static str),
    /// No such account. 404.
    #[error("no such account")]
    NotFound,
    /// The person is erased: nothing about them can be read any more. 410.
    #[error("the person is erased")]
    Erased,
    /// Too many failed sign-ins for the account or from the address: a CAPTCHA token is
    /// needed and none came. 400 `captcha-required`.
    #[error("a CAPTCHA is required")]
    CaptchaRequired,
    /// The CAPTCHA provider refused the token. 401 `captcha-refused`.
    #[error("the CAPTCHA token was refused")]
    CaptchaRefused,
    /// The CAPTCHA provider cannot be asked: the request is refused (fail closed). 503
    /// `captcha-unavailable`.
    #[error("the CAPTCHA cannot be checked now")]
    CaptchaUnavailable,
    /// Another account holds the address. 409.
    #[error("email taken")]
    EmailTaken,
    /// The account's address is verified already: there is nothing to send. 409.
    #[error("the address is already verified")]
    AlreadyVerified,
    /// The stream changed since it was read, or the append was a repeat. 409; the use cases that
    /// can decide again do so.
    #[error(transparent)]
    Conflict(AppendError),
    /// The account kept changing while the request was decided again and again. 409.
    #[error("the account kept changing; try again")]
    KeptChanging,
    /// The change would leave no administrator (who can sign in). 409.
    #[error(transparent)]
    LastAdmin(UserError),
    /// The request rests on something that has changed since (a consent to a text version no
    /// longer in force). 409.
    #[error(transparent)]
    Outdated(UserError),
    /// The account's state refuses the command (an unknown role, a lock that ends in the
    /// past, nothing to unlock). 422.
    #[error(transparent)]
    Refused(UserError),
    /// Too many requests of this client or for this account. 429 with `Retry-After`.
    #[error("too many requests")]
    RateLimited {
        /// Seconds until the limit resets.
        retry_after_secs: u64,
    },
    /// Too many password computations are waiting (`ARGON2_MAX_QUEUE`). 503 with `Retry-After`.
    #[error("too many password computations are waiting")]
    Overloaded {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// A federated sign-in of an account whose address is not confirmed: the link emailed
    /// confirms it. 403 `email-unverified`.
    #[error("the account's email address is not confirmed yet: use the link we emailed")]
    EmailUnverified,
    /// A first federated sign-in without an address from the provider. 403
    /// `provider-email-required`.
    #[error("the provider gave no email address: allow idp to read it (scope email) and try again")]
    ProviderEmailMissing,
    /// A first federated sign-in whose address belongs to an account, from a provider not
    /// trusted to link it (or that did not assert the address verified). 409 `link-required`.
    #[error(
        "an account has this email address: sign in with its password, then link {0} from the account (POST /v1/account/identities/{0}/link)"
    )]
    LinkRequired(String),
    /// A `login_code` that is unknown, used or expired. 401 `login-code-refused`.
    #[error("login_code: invalid, used or expired; sign in again")]
    LoginCodeRefused,
    /// The provider's account is linked to another idp account. 409.
    #[error("this account of {0} is linked to another idp account")]
    IdentityTaken(String),
    /// Linking or unlinking refused by the account's state. 409.
    #[error(transparent)]
    Linking(UserError),
    /// The event log failed an append, or refused an event as malformed.
    #[error(transparent)]
    Append(AppendError),
    /// The event log could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The database failed (credentials, sessions, counters, rate limits).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Hashing or verifying a password failed.
    #[error(transparent)]
    Hash(HashError),
    /// An access token could not be signed.
    #[error("while signing an access token: {0}")]
    Signing(#[source] TokenError),
    /// The key table of personal data failed (or the store has none).
    #[error("personal data keys: {0}")]
    PersonalData(String),
    /// A pending registration was confirmed but its password is not stored.
    #[error("the password of pending registration {0} is missing")]
    MissingPendingPassword(Uuid),
}

impl IdentityError {
    /// A field of the request is refused.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// A one-time token from an email is invalid, used or expired.
    pub fn invalid_token() -> Self {
        Self::invalid("token", "invalid or expired")
    }

    /// A new password breaks the policy; `field` names it in the request.
    pub fn weak_password(field: &'static str, err: &PasswordError) -> Self {
        Self::invalid(field, err.to_string())
    }

    /// Whether someone else's write got in first (the account changed, the address was
    /// taken): deciding again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::EmailTaken)
    }
}

impl From<AppendError> for IdentityError {
    fn from(err: AppendError) -> Self {
        match err {
            AppendError::Conflict { .. }
            | AppendError::ReservationTaken { .. }
            | AppendError::DuplicateEvent => Self::Conflict(err),
            other => Self::Append(other),
        }
    }
}

impl From<HashError> for IdentityError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => Self::Overloaded {
                retry_after_secs: 1,
            },
            other => Self::Hash(other),
        }
    }
}

impl From<UserError> for IdentityError {
    fn from(err: UserError) -> Self {
        match err {
            UserError::NotFound => Self::NotFound,
            UserError::LastAdmin | UserError::LastActiveAdmin | UserError::LastAdminErased => {
                Self::LastAdmin(err)
            }
            UserError::ConsentTextChanged { .. } => Self::Outdated(err),
            UserError::NoSuchIdentity => Self::NotFound,
            UserError::ProviderLinked(_) | UserError::LastSignInMethod => Self::Linking(err),
            other => Self::Refused(other),
        }
    }
}

impl From<EmailError> for IdentityError {
    fn from(err: EmailError) -> Self {
        Self::invalid("email", err.to_string())
    }
}

/// An address refused where a handler parses it: the same answer as inside a use case.
impl From<EmailError> for ApiError {
    fn from(err: EmailError) -> Self {
        IdentityError::from(err).into()
    }
}

impl From<IdentityError> for ApiError {
    fn from(err: IdentityError) -> Self {
        use IdentityError as E;
        match err {
            E::Invalid { .. } | E::Refused(_) => Self::Unprocessable(err.to_string()),
            E::InvalidCredentials => Self::InvalidCredentials,
            E::CaptchaRequired => Self::CaptchaRequired,
            E::CaptchaRefused => Self::CaptchaRefused,
            E::CaptchaUnavailable => Self::CaptchaUnavailable {
                retry_after_secs: 5,
            },
            E::Unauthorized => Self::Unauthorized,
            E::SecondFactorRefused => Self::SecondFactorRefused,
            E::SecondFactorState(detail) => Self::Conflict(detail.to_owned()),
            E::NotFound => Self::NotFound,
            E::Erased => Self::Gone(err.to_string()),
            E::EmailUnverified => Self::refused(StatusCode::FORBIDDEN, "email-unverified", &err),
            E::ProviderEmailMissing => {
                Self::refused(StatusCode::FORBIDDEN, "provider-email-required", &err)
            }
            E::LinkRequired(_) => Self::refused(StatusCode::CONFLICT, "link-required", &err),
            E::LoginCodeRefused => {
                Self::refused(StatusCode::UNAUTHORIZED, "login-code-refused", &err)
            }
            E::EmailTaken
            | E::IdentityTaken(_)
            | E::Linking(_)
            | E::AlreadyVerified
            | E::KeptChanging
            | E::LastAdmin(_)
            | E::Outdated(_) => Self::Conflict(err.to_string()),
            E::RateLimited { retry_after_secs } => Self::TooManyRequests { retry_after_secs },
            E::Overloaded { retry_after_secs } => Self::Overloaded { retry_after_secs },
            E::Conflict(append) | E::Append(append) => append.into(),
            E::Read(read) => read.into(),
            E::Database(db) => db.into(),
            E::Hash(hash) => hash.into(),
            E::Signing(_) | E::MissingPendingPassword(_) | E::PersonalData(_) => {
                Self::Internal(err.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;

    /// Status, problem type and detail of the answer `err` becomes.
    async fn answer(err: IdentityError) -> (StatusCode, String, Option<String>) {
        let response = ApiError::from(err).into_response();
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (
            status,
            problem["type"].as_str().unwrap_or_default().to_owned(),
            problem["detail"].as_str().map(str::to_owned),
        )
    }

    fn problem(slug: &str) -> String {
        format!("https://idp.dev/problems/{slug}")
    }

    #[tokio::test]
    async fn refused_input_is_a_422_naming_the_field() {
        assert_eq!(
            answer(IdentityError::invalid_token()).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                problem("unprocessable"),
                Some("token: invalid or expired".into())
            )
        );
        assert_eq!(
            answer(EmailError::Malformed.into()).await.2.as_deref(),
            Some("email: not a valid email address")
        );
        assert_eq!(
            answer(UserError::NotLocked.into()).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                problem("unprocessable"),
                Some("the account is not locked".into())
            )
        );
    }

    #[tokio::test]
    async fn refused_sign_ins_and_sessions_are_401s() {
        let (status, kind, _) = answer(IdentityError::InvalidCredentials).await;
        assert_eq!(
            (status, kind),
            (StatusCode::UNAUTHORIZED, problem("invalid-credentials"))
        );
        let (status, kind, _) = answer(IdentityError::Unauthorized).await;
        assert_eq!(
            (status, kind),
            (StatusCode::UNAUTHORIZED, problem("unauthorized"))
        );
    }

    #[tokio::test]
    async fn conflicts_are_409s_with_their_reason() {
        for (err, detail) in [
            (IdentityError::EmailTaken, "email taken"),
            (
                IdentityError::KeptChanging,
                "the account kept changing; try again",
            ),
            (
                UserError::LastActiveAdmin.into(),
                "the last administrator who can sign in cannot be locked",
            ),
            (
                AppendError::DuplicateEvent.into(),
                "an event with this id is already in the log",
            ),
        ] {
            assert_eq!(
                answer(err).await,
                (
                    StatusCode::CONFLICT,
                    problem("conflict"),
                    Some(detail.to_owned())
                )
            );
        }
    }

    #[test]
    fn only_a_lost_race_is_worth_deciding_again() {
        let stale = IdentityError::from(AppendError::Conflict {
            stream_id: "user-x".into(),
            expected: 1,
            actual: 2,
        });
        assert!(stale.is_conflict());
        assert!(IdentityError::EmailTaken.is_conflict());
        assert!(!IdentityError::from(AppendError::Empty).is_conflict());
        assert!(!IdentityError::from(UserError::LastAdmin).is_conflict());
        assert!(matches!(
            IdentityError::from(UserError::NotFound),
            IdentityError::NotFound
        ));
    }

    #[tokio::test]
    async fn a_full_hashing_queue_is_a_503_to_retry_and_limits_a_429() {
        let response = ApiError::from(IdentityError::from(HashError::Busy)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let response = ApiError::from(IdentityError::RateLimited {
            retry_after_secs: 7,
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
    }

    #[tokio::test]
    async fn infrastructure_failures_tell_nothing_of_their_cause() {
        let (status, kind, detail) =
            answer(IdentityError::MissingPendingPassword(Uuid::nil())).await;
        assert_eq!(
            (status, kind, detail),
            (StatusCode::INTERNAL_SERVER_ERROR, problem("internal"), None)
        );
        let (status, _, _) = answer(IdentityError::from(sqlx::Error::PoolTimedOut)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
