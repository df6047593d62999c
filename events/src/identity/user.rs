//! The user aggregate: its events, its state folded from them, and the decisions on it.
//!
//! The stream is `user-<uuid>`. Password hashes are deliberately not in the log (it is immutable
//! and exported to auditors): the API keeps them in a credentials table written in the same
//! transaction as the event that changes them, and the events only say that they changed.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::privacy::{ERASED, Personal};
use crate::{NewEvent, RecordedEvent};

/// Consecutive failed logins that lock an account.
pub const LOCK_AFTER_FAILURES: u32 = 5;
/// The first lock lasts this long; each further lock doubles it.
pub const FIRST_LOCK: Duration = Duration::minutes(5);
/// Locks never last longer than this.
pub const LONGEST_LOCK: Duration = Duration::hours(24);
/// How long a verification link stays valid.
pub const VERIFICATION_TTL: Duration = Duration::hours(24);
/// How long a password reset link stays valid.
pub const RESET_TTL: Duration = Duration::hours(1);

/// The role every account has.
pub const ROLE_USER: &str = "user";
/// The role of read-only administration: accounts, the log, projects, dead jobs; no changes.
pub const ROLE_SUPPORT: &str = "support";
/// The role of those who manage plans and their limits.
pub const ROLE_BILLING_ADMIN: &str = "billing_admin";
/// The role of administrators.
pub const ROLE_ADMIN: &str = "admin";
/// Every role idp knows.
pub const ROLES: &[&str] = &[ROLE_USER, ROLE_SUPPORT, ROLE_BILLING_ADMIN, ROLE_ADMIN];

/// Events of a user's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    /// An account was created.
    UserRegistered {
        /// The normalised email address.
        email: Personal<String>,
        /// Optional name to show.
        display_name: Option<Personal<String>>,
        /// Initial roles.
        roles: Vec<String>,
    },
    /// A verification email should be sent; its token derives from this event's id.
    VerificationRequested {
        /// Where to send it.
        email: Personal<String>,
    },
    /// The address was confirmed (by the link of `verification_id`, or by the system).
    EmailVerified {
        /// The `VerificationRequested` event whose token was used, if any.
        verification_id: Option<Uuid>,
    },
    /// The address was registered again while the account was still unverified: a pending
    /// registration of its own, with its own password (kept beside the log, like every hash)
    /// and its own verification link, which follows in the same append. Only that link makes
    /// it the account's ([`UserEvent::PendingRegistrationConfirmed`]), so whoever registered
    /// the address first cannot end up with the owner's account once the owner verifies.
    RegistrationRepeated {
        /// Names the pending registration (and its stored password).
        registration_id: Uuid,
        /// Optional name to show, should it be confirmed.
        display_name: Option<Personal<String>>,
    },
    /// A pending registration's link was used: the account takes its password and name.
    PendingRegistrationConfirmed {
        /// The registration.
        registration_id: Uuid,
        /// Its name to show.
        display_name: Option<Personal<String>>,
    },
    /// Someone tried to register this address again; the owner gets a notice instead.
    DuplicateRegistrationAttempted {
        /// Where to send the notice.
        email: Personal<String>,
    },
    /// A password reset email should be sent; its token derives from this event's id.
    PasswordResetRequested {
        /// Where to send it.
        email: Personal<String>,
    },
    /// The password was set through the reset link of `reset_id`.
    PasswordReset {
        /// The `PasswordResetRequested` event whose token was used.
        reset_id: Uuid,
    },
    /// The owner changed the password.
    PasswordChanged,
    /// The stored hash was upgraded to the current parameters at a login.
    PasswordRehashed,
    /// The account's roles were replaced.
    RolesChanged {
        /// The new roles.
        roles: Vec<String>,
    },
    /// No login until `until`: after too many failed logins, or by an administrator.
    ///
    /// The automatic lock counts itself in `lock_count` (its length escalates with the count);
    /// an administrator's lock keeps `lock_count` as it was, which is how the two are told
    /// apart (the administrator is the event's actor). An administrator's lock is not lifted by
    /// a password reset, and an indefinite one ends at [`indefinitely`].
    AccountLocked {
        /// End of the lock.
        until: DateTime<Utc>,
        /// How many times the account was locked automatically so far, this one included.
        lock_count: u32,
    },
    /// The lock was lifted before its end (by an admin).
    AccountUnlocked,
    /// Everything idp holds about the person was exported (to them, or to an administrator,
    /// the event's actor).
    PersonalDataExported,
    /// The person agreed to `purpose`, as worded in version `version` of its text.
    ConsentGiven {
        /// The purpose (`CONSENT_PURPOSES`).
        purpose: String,
        /// The version of the text they agreed to.
        version: String,
    },
    /// The person withdrew their consent to `purpose`.
    ConsentWithdrawn {
        /// The purpose.
        purpose: String,
        /// The version of the text they had agreed to.
        version: String,
    },
    /// The person began enrolling a second factor (TOTP): a new secret was made, kept beside
    /// the log sealed under the person's data key, never in an event. Enrolling again before
    /// completing replaces it.
    SecondFactorEnrolmentStarted,
    /// A first code of the new secret was given: sign-ins ask for a code from now on.
    SecondFactorEnabled,
    /// The person turned the second factor off (with their password and a code).
    SecondFactorDisabled,
    /// An administrator (the event's actor) removed the second factor; the person is told at
    /// `email`.
    SecondFactorReset {
        /// Where the notice goes.
        email: Personal<String>,
    },
    /// A new set of `count` recovery codes replaced any earlier set (kept only as hashes,
    /// beside the log).
    RecoveryCodesGenerated {
        /// How many.
        count: u32,
    },
    /// A recovery code was used to sign in; `remaining` are left.
    RecoveryCodeUsed {
        /// Unused codes left in the set.
        remaining: u32,
    },
    /// No second-factor code is accepted until `until`, after too many wrong ones; the
    /// length escalates with `lock_count` as a password lock's does.
    SecondFactorLocked {
        /// End of the lock.
        until: DateTime<Utc>,
        /// How many times the second factor was locked so far, this one included.
        lock_count: u32,
    },
    /// A sign-in came from a device (user agent family and network) the account had not used
    /// within `NEW_DEVICE_WINDOW_DAYS`: its owner is told at `email`, with a link that ends
    /// the session (its token derives from this event's id).
    NewDeviceSignedIn {
        /// Where the notice goes.
        email: Personal<String>,
        /// The session the sign-in started.
        session_id: Uuid,
        /// The device as shown to people, e.g. `Firefox on Linux`.
        device: Personal<String>,
        /// The client's network (IPv4 /24 or IPv6 /48), or `unknown network`.
        network: Personal<String>,
    },
    /// An account of an external identity provider (an OpenID Connect issuer or GitHub) was
    /// linked: signing in there signs in here. The subject and address the provider gave are
    /// personal data, sealed under the person's key.
    ExternalIdentityLinked {
        /// Names the link (`DELETE /v1/account/identities/{id}`).
        identity_id: Uuid,
        /// The provider's id in `AUTH_PROVIDERS`.
        provider: String,
        /// The provider's stable id of the person (`sub`, or GitHub's numeric user id).
        subject: Personal<String>,
        /// The address the provider gave, if any.
        email: Option<Personal<String>>,
    },
    /// A linked external identity was unlinked (by the person, or because a pending
    /// registration took the account over).
    ExternalIdentityUnlinked {
        /// The link.
        identity_id: Uuid,
        /// Its provider.
        provider: String,
    },
    /// The person was erased (by themselves or by an administrator): their data key was
    /// destroyed in the same transaction, so every personal field ever written about them reads
    /// as `"[erased]"`. Nothing happens to the account afterwards: it cannot sign in, and its
    /// address is free for a new account.
    PersonErased {
        /// Why, as the administrator gave it (`None` when the person erased themselves). Not
        /// personal data: it says why, not about whom.
        reason: Option<String>,
    },
}

impl UserEvent {
    /// The event as it goes into the log.
    pub fn to_new_event(&self) -> NewEvent {
        super::to_new_event(self)
    }

    /// The event read back from the log, if it is a user event.
    pub fn from_recorded(event: &RecordedEvent) -> Option<Self> {
        super::from_recorded(event)
    }
}

/// A user as folded from its stream.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct User {
    /// The user's id.
    pub id: Uuid,
    /// The normalised email address (`"[erased]"` once erased).
    pub email: String,
    /// Optional name to show (`"[erased]"` once erased).
    pub display_name: Option<String>,
    /// Whether the person is erased ([`UserEvent::PersonErased`]).
    pub erased: bool,
    /// Current roles.
    pub roles: Vec<String>,
    /// Whether the address is confirmed.
    pub email_verified: bool,
    /// When the account was created.
    pub registered_at: Option<DateTime<Utc>>,
    /// The latest verification request still waiting, and when it was made.
    pub pending_verification: Option<(Uuid, DateTime<Utc>)>,
    /// Every verification request still waiting, each with the registration it confirms.
    pub verifications: Vec<PendingVerification>,
    /// Registrations made again while unverified, not confirmed yet.
    pub pending_registrations: Vec<PendingRegistration>,
    /// The registration that new verification requests confirm (`None`: the first one).
    pub current_registration: Option<Uuid>,
    /// The latest reset request still waiting, and when it was made.
    pub pending_reset: Option<(Uuid, DateTime<Utc>)>,
    /// End of the current lock, if any.
    pub locked_until: Option<DateTime<Utc>>,
    /// How many times the account was locked automatically.
    pub lock_count: u32,
    /// Whether the current (or latest) lock is an administrator's.
    pub locked_by_admin: bool,
    /// When the password last changed (registration, change or reset).
    pub password_changed_at: Option<DateTime<Utc>>,
    /// Whether sign-ins need a second-factor code.
    pub second_factor: bool,
    /// End of the current second-factor lock, if any.
    pub second_factor_locked_until: Option<DateTime<Utc>>,
    /// How many times the second factor was locked.
    pub second_factor_lock_count: u32,
    /// The latest decision on each purpose ever consented to, by purpose.
    pub consents: BTreeMap<String, Consent>,
    /// Linked accounts of external identity providers, oldest first.
    pub identities: Vec<LinkedIdentity>,
    /// Stream version (0 = no such user).
    pub version: u64,
}

/// An account of an external identity provider linked to this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkedIdentity {
    /// The link's id.
    pub id: Uuid,
    /// The provider's id.
    pub provider: String,
    /// The provider's id of the person (`"[erased]"` once erased).
    pub subject: String,
    /// The address the provider gave (`"[erased]"` once erased).
    pub email: Option<String>,
    /// When it was linked.
    pub linked_at: DateTime<Utc>,
}

/// A person's latest decision on one purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consent {
    /// Whether they agree now.
    pub given: bool,
    /// The version of the text they agreed to (and, once withdrawn, had agreed to).
    pub version: String,
    /// When they decided.
    pub at: DateTime<Utc>,
}

/// A verification link still waiting to be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingVerification {
    /// The `VerificationRequested` event (its id makes the token).
    pub id: Uuid,
    /// The registration the link confirms: `None` for the account's first registration.
    pub registration: Option<Uuid>,
    /// When it was asked for.
    pub at: DateTime<Utc>,
}

/// A registration made again while the account was unverified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRegistration {
    /// Its id.
    pub id: Uuid,
    /// Its name to show.
    pub display_name: Option<Personal<String>>,
}

/// The text of a personal value in a folded state: the value, or `"[erased]"`.
fn text(value: &Personal<String>) -> String {
    value
        .known()
        .map_or_else(|| ERASED.to_owned(), Clone::clone)
}

impl User {
    /// Folds a stream's events.
    pub fn fold(id: Uuid, events: &[RecordedEvent]) -> Self {
        let mut user = Self {
            id,
            ..Self::default()
        };
        for event in events {
            if let Some(e) = UserEvent::from_recorded(event) {
                user.apply(&e, event.event_id, event.recorded_at);
            }
            user.version = u64::try_from(event.stream_version).unwrap_or_default();
        }
        user
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &UserEvent, event_id: Uuid, at: DateTime<Utc>) {
        match event {
            UserEvent::UserRegistered {
                email,
                display_name,
                roles,
            } => {
                self.email = text(email);
                self.display_name = display_name.as_ref().map(text);
                self.roles.clone_from(roles);
                self.registered_at = Some(at);
                self.password_changed_at = Some(at);
            }
            UserEvent::VerificationRequested { .. } => {
                self.pending_verification = Some((event_id, at));
                self.verifications.push(PendingVerification {
                    id: event_id,
                    registration: self.current_registration,
                    at,
                });
            }
            UserEvent::RegistrationRepeated {
                registration_id,
                display_name,
            } => {
                self.pending_registrations.push(PendingRegistration {
                    id: *registration_id,
                    display_name: display_name.clone(),
                });
                self.current_registration = Some(*registration_id);
            }
            UserEvent::PendingRegistrationConfirmed { display_name, .. } => {
                self.display_name = display_name.as_ref().map(text);
                self.password_changed_at = Some(at);
            }
            UserEvent::EmailVerified { .. } => {
                self.email_verified = true;
                self.pending_verification = None;
                self.verifications.clear();
                self.pending_registrations.clear();
                self.current_registration = None;
            }
            UserEvent::PasswordResetRequested { .. } => self.pending_reset = Some((event_id, at)),
            UserEvent::PasswordReset { .. } => {
                self.pending_reset = None;
                self.password_changed_at = Some(at);
                // A reset proves control of the mailbox and ends a lock.
                self.locked_until = None;
                self.locked_by_admin = false;
            }
            UserEvent::PasswordChanged => {
                self.pending_reset = None;
                self.password_changed_at = Some(at);
            }
            UserEvent::RolesChanged { roles } => self.roles.clone_from(roles),
            UserEvent::AccountLocked { until, lock_count } => {
                self.locked_until = Some(*until);
                // An automatic lock always counts itself; an administrator's does not.
                self.locked_by_admin = *lock_count == self.lock_count;
                self.lock_count = *lock_count;
            }
            UserEvent::AccountUnlocked => {
                self.locked_until = None;
                self.locked_by_admin = false;
            }
            UserEvent::SecondFactorEnabled => self.second_factor = true,
            UserEvent::SecondFactorDisabled | UserEvent::SecondFactorReset { .. } => {
                self.second_factor = false;
                self.second_factor_locked_until = None;
            }
            UserEvent::SecondFactorLocked { until, lock_count } => {
                self.second_factor_locked_until = Some(*until);
                self.second_factor_lock_count = *lock_count;
            }
            UserEvent::ExternalIdentityLinked {
                identity_id,
                provider,
                subject,
                email,
            } => self.identities.push(LinkedIdentity {
                id: *identity_id,
                provider: provider.clone(),
                subject: text(subject),
                email: email.as_ref().map(text),
                linked_at: at,
            }),
            UserEvent::ExternalIdentityUnlinked { identity_id, .. } => {
                self.identities
                    .retain(|identity| identity.id != *identity_id);
            }
            UserEvent::PersonErased { .. } => {
                self.erased = true;
                self.identities.clear();
                self.second_factor = false;
                self.email = ERASED.to_owned();
                if self.display_name.is_some() {
                    self.display_name = Some(ERASED.to_owned());
                }
                self.pending_verification = None;
                self.verifications.clear();
                self.pending_registrations.clear();
                self.current_registration = None;
                self.pending_reset = None;
            }
            UserEvent::ConsentGiven { purpose, version }
            | UserEvent::ConsentWithdrawn { purpose, version } => {
                let given = matches!(event, UserEvent::ConsentGiven { .. });
                self.consents.insert(
                    purpose.clone(),
                    Consent {
                        given,
                        version: version.clone(),
                        at,
                    },
                );
            }
            UserEvent::DuplicateRegistrationAttempted { .. }
            | UserEvent::NewDeviceSignedIn { .. }
            | UserEvent::SecondFactorEnrolmentStarted
            | UserEvent::RecoveryCodesGenerated { .. }
            | UserEvent::RecoveryCodeUsed { .. }
            | UserEvent::PasswordRehashed
            | UserEvent::PersonalDataExported => {}
        }
    }

    /// The registration that verification link `verification_id` confirms, if the link is
    /// still waiting: `Some(None)` for the first registration.
    pub fn registration_of(&self, verification_id: Uuid) -> Option<Option<Uuid>> {
        self.verifications
            .iter()
            .find(|v| v.id == verification_id)
            .map(|v| v.registration)
    }

    /// True once the stream has its first event.
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// True while a lock is in force at `now`.
    pub fn is_locked(&self, now: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    /// True while an administrator's lock is in force at `now`.
    pub fn is_locked_by_admin(&self, now: DateTime<Utc>) -> bool {
        self.locked_by_admin && self.is_locked(now)
    }

    /// True while a second-factor lock is in force at `now`.
    pub fn is_second_factor_locked(&self, now: DateTime<Utc>) -> bool {
        self.second_factor_locked_until
            .is_some_and(|until| until > now)
    }

    /// True if the user has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a decision refused a command (the caller's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The link is not the latest one, was used already, or expired.
    #[error("invalid or expired token")]
    InvalidToken,
    /// No such user.
    #[error("no such user")]
    NotFound,
    /// A role idp does not know.
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    /// The change would leave no administrator.
    #[error("the last administrator cannot lose the admin role")]
    LastAdmin,
    /// The last administrator cannot be erased.
    #[error("the last administrator cannot be erased")]
    LastAdminErased,
    /// The lock would leave no administrator who can sign in.
    #[error("the last administrator who can sign in cannot be locked")]
    LastActiveAdmin,
    /// A lock must end in the future.
    #[error("until: a lock must end in the future")]
    LockEndsInThePast,
    /// An administrator's lock is in force; only an administrator can lift it.
    #[error("the account is locked by an administrator")]
    LockedByAdmin,
    /// Nothing to do.
    #[error("the account is not locked")]
    NotLocked,
    /// The account has an identity of this provider linked already.
    #[error("an account of {0} is linked already; unlink it first")]
    ProviderLinked(String),
    /// No linked identity has this id.
    #[error("no such linked identity")]
    NoSuchIdentity,
    /// Unlinking would leave the account with no way to sign in.
    #[error(
        "this is the account's last way to sign in: set a password or link another provider first"
    )]
    LastSignInMethod,
    /// Consent was given to another version of the purpose's text than the one in force.
    #[error(
        "version {current:?} of the text of {purpose:?} is in force, not {given:?}: show it and ask again"
    )]
    ConsentTextChanged {
        /// The purpose.
        purpose: String,
        /// The version in force.
        current: String,
        /// The version the consent named.
        given: String,
    },
}

/// A new account: registered, with a verification request (or verified at once).
pub fn register(
    email: &str,
    display_name: Option<String>,
    roles: Vec<String>,
    verified: bool,
) -> Vec<UserEvent> {
    let mut events = vec![UserEvent::UserRegistered {
        email: email.to_owned().into(),
        display_name: display_name.map(Personal::from),
        roles,
    }];
    if verified {
        events.push(UserEvent::EmailVerified {
            verification_id: None,
        });
    } else {
        events.push(UserEvent::VerificationRequested {
            email: email.to_owned().into(),
        });
    }
    events
}

/// Confirms the address with the token of `verification_id`, and with it the registration
/// that link was sent for: a pending one brings its password and name (the caller moves the
/// password) and unlinks the external identities linked so far (the caller drops their rows). Every waiting link works until it expires, each for its own registration only.
pub fn verify_email(
    user: &User,
    verification_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<UserEvent>, UserError> {
    if user.email_verified {
        return Err(UserError::InvalidToken);
    }
    let Some(link) = user
        .verifications
        .iter()
        .find(|v| v.id == verification_id && now - v.at <= VERIFICATION_TTL)
    else {
        return Err(UserError::InvalidToken);
    };
    let mut events = Vec::with_capacity(2);
    if let Some(registration) = link.registration {
        let pending = user
            .pending_registrations
            .iter()
            .find(|r| r.id == registration)
            .ok_or(UserError::InvalidToken)?;
        events.push(UserEvent::PendingRegistrationConfirmed {
            registration_id: registration,
            display_name: pending.display_name.clone(),
        });
        // Whoever held the unverified account before proved nothing: the identities they
        // linked do not come with it.
        events.extend(
            user.identities
                .iter()
                .map(|identity| UserEvent::ExternalIdentityUnlinked {
                    identity_id: identity.id,
                    provider: identity.provider.clone(),
                }),
        );
    }
    events.push(UserEvent::EmailVerified {
        verification_id: Some(verification_id),
    });
    Ok(events)
}

/// Links the account `subject` of `provider` (which gave `email`) to `user`, as link
/// `identity_id`. One identity per provider per account; nothing is linked to an erased person.
pub fn link_identity(
    user: &User,
    identity_id: Uuid,
    provider: &str,
    subject: &str,
    email: Option<&str>,
) -> Result<Vec<UserEvent>, UserError> {
    if user.version == 0 || user.erased {
        return Err(UserError::NotFound);
    }
    if user.identities.iter().any(|i| i.provider == provider) {
        return Err(UserError::ProviderLinked(provider.to_owned()));
    }
    Ok(vec![identity_linked(identity_id, provider, subject, email)])
}

/// `ExternalIdentityLinked`: account `subject` of `provider` (which gave `email`) linked as
/// `identity_id` (to an existing account, or to one made with it).
pub fn identity_linked(
    identity_id: Uuid,
    provider: &str,
    subject: &str,
    email: Option<&str>,
) -> UserEvent {
    UserEvent::ExternalIdentityLinked {
        identity_id,
        provider: provider.to_owned(),
        subject: subject.to_owned().into(),
        email: email.map(|e| e.to_owned().into()),
    }
}

/// A trusted provider asserts the address of the unverified account `user` for its account
/// `subject`: the address is confirmed and the identity linked, and the identities linked so
/// far go (whoever made the account proved nothing; the caller drops its password too).
pub fn claim_by_provider(
    user: &User,
    identity_id: Uuid,
    provider: &str,
    subject: &str,
    email: &str,
) -> Vec<UserEvent> {
    let mut events: Vec<UserEvent> = user
        .identities
        .iter()
        .map(|identity| UserEvent::ExternalIdentityUnlinked {
            identity_id: identity.id,
            provider: identity.provider.clone(),
        })
        .collect();
    events.push(UserEvent::EmailVerified {
        verification_id: None,
    });
    events.push(identity_linked(identity_id, provider, subject, Some(email)));
    events
}

/// Unlinks identity `identity_id` from `user`, unless it is the account's last way to sign in
/// (`has_password`: the account has a password).
pub fn unlink_identity(
    user: &User,
    identity_id: Uuid,
    has_password: bool,
) -> Result<Vec<UserEvent>, UserError> {
    let Some(identity) = user.identities.iter().find(|i| i.id == identity_id) else {
        return Err(UserError::NoSuchIdentity);
    };
    if !has_password && user.identities.len() == 1 {
        return Err(UserError::LastSignInMethod);
    }
    Ok(vec![UserEvent::ExternalIdentityUnlinked {
        identity_id,
        provider: identity.provider.clone(),
    }])
}

/// Someone registers the address of `user` again. An unverified account gets a pending
/// registration of its own (`registration_id`, whose password the caller keeps) with its own
/// link; a verified one only a notice to its owner.
pub fn register_again(
    user: &User,
    registration_id: Uuid,
    display_name: Option<String>,
) -> Vec<UserEvent> {
    if user.email_verified {
        vec![UserEvent::DuplicateRegistrationAttempted {
            email: user.email.clone().into(),
        }]
    } else {
        vec![
            UserEvent::RegistrationRepeated {
                registration_id,
                display_name: display_name.map(Personal::from),
            },
            UserEvent::VerificationRequested {
                email: user.email.clone().into(),
            },
        ]
    }
}

/// Another verification email, if the address is not confirmed yet.
pub fn request_verification(user: &User) -> Vec<UserEvent> {
    if user.exists() && !user.erased && !user.email_verified {
        vec![UserEvent::VerificationRequested {
            email: user.email.clone().into(),
        }]
    } else {
        Vec::new()
    }
}

/// A reset email for an existing account.
pub fn request_reset(user: &User) -> Vec<UserEvent> {
    if user.exists() && !user.erased {
        vec![UserEvent::PasswordResetRequested {
            email: user.email.clone().into(),
        }]
    } else {
        Vec::new()
    }
}

/// Tells the owner of `user` about a sign-in from a device it had not used lately (see
/// [`UserEvent::NewDeviceSignedIn`]); nothing for an erased account.
pub fn notice_new_device(
    user: &User,
    session_id: Uuid,
    device: &str,
    network: &str,
) -> Vec<UserEvent> {
    if user.exists() && !user.erased {
        vec![UserEvent::NewDeviceSignedIn {
            email: user.email.clone().into(),
            session_id,
            device: device.to_owned().into(),
            network: network.to_owned().into(),
        }]
    } else {
        Vec::new()
    }
}

/// Sets a new password with the token of `reset_id`. Not while an administrator's lock is in
/// force: the reset would end the lock.
pub fn reset_password(
    user: &User,
    reset_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<UserEvent>, UserError> {
    if user.is_locked_by_admin(now) {
        return Err(UserError::LockedByAdmin);
    }
    match user.pending_reset {
        Some((id, at)) if id == reset_id && now - at <= RESET_TTL => {
            Ok(vec![UserEvent::PasswordReset { reset_id }])
        }
        _ => Err(UserError::InvalidToken),
    }
}

/// The consequence of a failed login that brought the consecutive failures to `failures`.
pub fn failed_login(user: &User, failures: u32, now: DateTime<Utc>) -> Vec<UserEvent> {
    if failures < LOCK_AFTER_FAILURES || user.is_locked(now) {
        return Vec::new();
    }
    let lock_count = user.lock_count.saturating_add(1);
    vec![UserEvent::AccountLocked {
        until: now + lock_length(lock_count),
        lock_count,
    }]
}

/// The consequence of a wrong second-factor code that brought the consecutive wrong codes
/// to `failures`: five lock the second factor, for 5 minutes doubling with each lock up to a
/// day, as [`failed_login`] locks the password.
pub fn failed_second_factor(user: &User, failures: u32, now: DateTime<Utc>) -> Vec<UserEvent> {
    if failures < LOCK_AFTER_FAILURES || user.is_second_factor_locked(now) {
        return Vec::new();
    }
    let lock_count = user.second_factor_lock_count.saturating_add(1);
    vec![UserEvent::SecondFactorLocked {
        until: now + lock_length(lock_count),
        lock_count,
    }]
}

/// How long the `lock_count`th automatic lock lasts: [`FIRST_LOCK`], doubling with each
/// further lock, at most [`LONGEST_LOCK`].
fn lock_length(lock_count: u32) -> Duration {
    let factor = 2_i32.saturating_pow(lock_count.saturating_sub(1).min(16));
    (FIRST_LOCK * factor).min(LONGEST_LOCK)
}

/// Erases the person (`reason`: an administrator's, `None` for the person themselves);
/// `admins` is how many administrators exist now. Erasing an erased person changes nothing;
/// the last administrator cannot be erased.
pub fn erase(
    user: &User,
    reason: Option<String>,
    admins: usize,
) -> Result<Vec<UserEvent>, UserError> {
    if !user.exists() {
        return Err(UserError::NotFound);
    }
    if user.erased {
        return Ok(Vec::new());
    }
    if user.has_role(ROLE_ADMIN) && admins <= 1 {
        return Err(UserError::LastAdminErased);
    }
    Ok(vec![UserEvent::PersonErased { reason }])
}

/// The person's decision on `purpose`: agreeing (`given`, to version `version` of its text,
/// which must be the one in force) or withdrawing. Deciding what is decided already changes
/// nothing; agreeing to a newer version of the text records a new consent.
pub fn decide_consent(
    user: &User,
    purpose: &super::consent::Purpose,
    given: bool,
    version: Option<&str>,
) -> Result<Vec<UserEvent>, UserError> {
    if !user.exists() {
        return Err(UserError::NotFound);
    }
    let current = user.consents.get(&purpose.name);
    if given {
        if let Some(named) = version
            && named != purpose.version
        {
            return Err(UserError::ConsentTextChanged {
                purpose: purpose.name.clone(),
                current: purpose.version.clone(),
                given: named.to_owned(),
            });
        }
        if current.is_some_and(|c| c.given && c.version == purpose.version) {
            return Ok(Vec::new());
        }
        return Ok(vec![UserEvent::ConsentGiven {
            purpose: purpose.name.clone(),
            version: purpose.version.clone(),
        }]);
    }
    match current {
        Some(consent) if consent.given => Ok(vec![UserEvent::ConsentWithdrawn {
            purpose: purpose.name.clone(),
            version: consent.version.clone(),
        }]),
        _ => Ok(Vec::new()),
    }
}

/// Lifts a lock early.
pub fn unlock(user: &User, now: DateTime<Utc>) -> Result<Vec<UserEvent>, UserError> {
    if !user.exists() {
        return Err(UserError::NotFound);
    }
    if !user.is_locked(now) {
        return Err(UserError::NotLocked);
    }
    Ok(vec![UserEvent::AccountUnlocked])
}

/// The end of an administrator's lock that has none: 9999-12-31T23:59:59Z, the latest instant
/// RFC 3339 can write.
pub fn indefinitely() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// An administrator's lock until `until` (`None`: [`indefinitely`]). `other_active_admins` is
/// how many administrators besides `user` can sign in now; locking the last of them is refused.
/// Locking again with the same end changes nothing.
pub fn lock(
    user: &User,
    until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    other_active_admins: usize,
) -> Result<Vec<UserEvent>, UserError> {
    if !user.exists() {
        return Err(UserError::NotFound);
    }
    let until = until.unwrap_or_else(indefinitely);
    if until <= now {
        return Err(UserError::LockEndsInThePast);
    }
    if user.has_role(ROLE_ADMIN) && other_active_admins == 0 {
        return Err(UserError::LastActiveAdmin);
    }
    if user.is_locked_by_admin(now) && user.locked_until == Some(until) {
        return Ok(Vec::new());
    }
    Ok(vec![UserEvent::AccountLocked {
        until,
        lock_count: user.lock_count,
    }])
}

/// Replaces the roles; `admins` is how many administrators exist now.
pub fn change_roles(
    user: &User,
    roles: &[String],
    admins: usize,
) -> Result<Vec<UserEvent>, UserError> {
    if !user.exists() {
        return Err(UserError::NotFound);
    }
    if let Some(unknown) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
        return Err(UserError::UnknownRole(unknown.clone()));
    }
    let mut roles: Vec<String> = roles.to_vec();
    if !roles.iter().any(|r| r == ROLE_USER) {
        roles.insert(0, ROLE_USER.to_owned());
    }
    roles.sort();
    roles.dedup();
    if user.has_role(ROLE_ADMIN) && !roles.iter().any(|r| r == ROLE_ADMIN) && admins <= 1 {
        return Err(UserError::LastAdmin);
    }
    let mut current = user.roles.clone();
    current.sort();
    if current == roles {
        return Ok(Vec::new());
    }
    Ok(vec![UserEvent::RolesChanged { roles }])
}

#[cfg(test)]
mod tests;
