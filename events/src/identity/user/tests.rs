//! Unit tests of the user aggregate: given events, when a command, then events or a refusal.

use super::*;

fn given(events: &[UserEvent]) -> User {
    let mut user = User {
        id: Uuid::nil(),
        ..User::default()
    };
    let at = Utc::now();
    for (i, e) in events.iter().enumerate() {
        user.apply(e, Uuid::from_u128(i as u128 + 1), at);
        user.version += 1;
    }
    user
}

fn registered() -> Vec<UserEvent> {
    register("ada@example.com", None, vec![ROLE_USER.into()], false)
}

#[test]
fn events_round_trip_through_the_log_shape() {
    for event in [
        UserEvent::PasswordChanged,
        UserEvent::AccountLocked {
            until: Utc::now(),
            lock_count: 2,
        },
        UserEvent::RolesChanged {
            roles: vec!["user".into()],
        },
    ] {
        let new = event.to_new_event();
        let recorded = RecordedEvent {
            position: 1,
            transaction_id: 1,
            event_id: new.event_id,
            stream_id: "user-x".into(),
            stream_version: 1,
            event_type: new.event_type.clone(),
            schema_version: 1,
            data: new.data.clone(),
            metadata: serde_json::json!({}),
            recorded_at: Utc::now(),
            hash: vec![],
        };
        assert_eq!(UserEvent::from_recorded(&recorded), Some(event));
    }
    assert_eq!(
        UserEvent::PasswordChanged.to_new_event().event_type,
        "PasswordChanged"
    );
}

#[test]
fn a_link_of_a_repeated_registration_confirms_that_registration_only() {
    let first_registrant = Uuid::from_u128(100);
    let owner = Uuid::from_u128(200);
    let mut events = registered(); // link 2: the first registration
    events.extend(register_again(
        &given(&events),
        first_registrant,
        Some("Squatter".into()),
    )); // 3, link 4
    events.extend(register_again(&given(&events), owner, Some("Ada".into()))); // 5, link 6
    events.extend(request_verification(&given(&events))); // link 7: a resend, for the latest
    let user = given(&events);
    assert_eq!(user.registration_of(Uuid::from_u128(2)), Some(None));
    assert_eq!(
        user.registration_of(Uuid::from_u128(4)),
        Some(Some(first_registrant))
    );
    assert_eq!(user.registration_of(Uuid::from_u128(7)), Some(Some(owner)));
    // The owner's link confirms the owner's registration, name included.
    let confirmed = verify_email(&user, Uuid::from_u128(6), Utc::now()).unwrap();
    assert_eq!(
        confirmed,
        vec![
            UserEvent::PendingRegistrationConfirmed {
                registration_id: owner,
                display_name: Some("Ada".into()),
            },
            UserEvent::EmailVerified {
                verification_id: Some(Uuid::from_u128(6)),
            },
        ]
    );
    events.extend(confirmed);
    let verified = given(&events);
    assert!(verified.email_verified);
    assert_eq!(verified.display_name.as_deref(), Some("Ada"));
    assert!(verified.pending_registrations.is_empty());
    // Every other link is spent now.
    for link in [2, 4, 6, 7] {
        assert_eq!(
            verify_email(&verified, Uuid::from_u128(link), Utc::now()),
            Err(UserError::InvalidToken)
        );
    }
    // A verified account's owner only gets a notice.
    assert_eq!(
        register_again(&verified, Uuid::from_u128(300), None),
        vec![UserEvent::DuplicateRegistrationAttempted {
            email: "ada@example.com".into()
        }]
    );
}

#[test]
fn the_first_registrations_link_confirms_no_pending_one() {
    let mut events = registered();
    events.extend(register_again(&given(&events), Uuid::from_u128(100), None));
    assert_eq!(
        verify_email(&given(&events), Uuid::from_u128(2), Utc::now()),
        Ok(vec![UserEvent::EmailVerified {
            verification_id: Some(Uuid::from_u128(2))
        }])
    );
}

#[test]
fn a_verification_link_verifies_once() {
    let user = given(&registered());
    // The VerificationRequested event got id 2 in `given`.
    assert_eq!(
        verify_email(&user, Uuid::from_u128(2), Utc::now()),
        Ok(vec![UserEvent::EmailVerified {
            verification_id: Some(Uuid::from_u128(2))
        }])
    );
    assert_eq!(
        verify_email(&user, Uuid::from_u128(9), Utc::now()),
        Err(UserError::InvalidToken)
    );
    let mut events = registered();
    events.push(UserEvent::EmailVerified {
        verification_id: Some(Uuid::from_u128(2)),
    });
    let verified = given(&events);
    assert!(verified.email_verified);
    assert_eq!(
        verify_email(&verified, Uuid::from_u128(2), Utc::now()),
        Err(UserError::InvalidToken)
    );
    assert!(request_verification(&verified).is_empty());
}

#[test]
fn an_expired_verification_link_is_refused() {
    let user = given(&registered());
    let later = Utc::now() + VERIFICATION_TTL + Duration::minutes(1);
    assert_eq!(
        verify_email(&user, Uuid::from_u128(2), later),
        Err(UserError::InvalidToken)
    );
}

#[test]
fn five_failures_lock_for_five_minutes_and_each_further_lock_doubles() {
    let now = Utc::now();
    let user = given(&registered());
    assert!(failed_login(&user, 4, now).is_empty());
    let first = failed_login(&user, 5, now);
    assert_eq!(
        first,
        vec![UserEvent::AccountLocked {
            until: now + Duration::minutes(5),
            lock_count: 1
        }]
    );
    let mut events = registered();
    events.extend(first);
    events.push(UserEvent::AccountUnlocked);
    let user = given(&events);
    assert_eq!(
        failed_login(&user, 5, now),
        vec![UserEvent::AccountLocked {
            until: now + Duration::minutes(10),
            lock_count: 2
        }]
    );
}

#[test]
fn the_last_admin_keeps_the_admin_role() {
    let user = given(&register(
        "root@example.com",
        None,
        vec!["user".into(), "admin".into()],
        true,
    ));
    assert_eq!(
        change_roles(&user, &["user".into()], 1),
        Err(UserError::LastAdmin)
    );
    assert_eq!(
        change_roles(&user, &["user".into()], 2),
        Ok(vec![UserEvent::RolesChanged {
            roles: vec!["user".into()]
        }])
    );
    assert_eq!(
        change_roles(&user, &["wizard".into()], 2),
        Err(UserError::UnknownRole("wizard".into()))
    );
    assert_eq!(change_roles(&user, &["admin".into()], 1), Ok(Vec::new()));
}

fn admin() -> Vec<UserEvent> {
    register(
        "root@example.com",
        None,
        vec![ROLE_USER.into(), ROLE_ADMIN.into()],
        true,
    )
}

#[test]
fn an_administrators_lock_keeps_the_lock_count_and_is_told_apart_from_an_automatic_one() {
    let now = Utc::now();
    let mut events = registered();
    events.extend(failed_login(&given(&events), 5, now));
    events.push(UserEvent::AccountUnlocked);
    let user = given(&events);
    assert_eq!(user.lock_count, 1);
    let until = now + Duration::days(3);
    let locked = lock(&user, Some(until), now, 0);
    assert_eq!(
        locked,
        Ok(vec![UserEvent::AccountLocked {
            until,
            lock_count: 1
        }])
    );
    events.extend(locked.unwrap_or_default());
    let user = given(&events);
    assert!(user.is_locked_by_admin(now));
    assert_eq!(
        user.lock_count, 1,
        "an administrator's lock does not escalate"
    );
    assert!(!user.is_locked_by_admin(until), "it ends at its end");

    let automatic = given(&{
        let mut e = registered();
        e.extend(failed_login(&given(&registered()), 5, now));
        e
    });
    assert!(automatic.is_locked(now));
    assert!(!automatic.is_locked_by_admin(now));
}

#[test]
fn a_lock_without_an_end_lasts_until_an_administrator_lifts_it() {
    let now = Utc::now();
    let mut events = registered();
    let locked = lock(&given(&events), None, now, 0).unwrap_or_default();
    assert_eq!(
        locked,
        vec![UserEvent::AccountLocked {
            until: indefinitely(),
            lock_count: 0
        }]
    );
    assert_eq!(indefinitely().to_rfc3339(), "9999-12-31T23:59:59+00:00");
    events.extend(locked);
    let user = given(&events);
    assert!(user.is_locked_by_admin(now + Duration::days(365 * 100)));
    assert!(
        failed_login(&user, 5, now).is_empty(),
        "no automatic lock on top"
    );
    events.extend(unlock(&user, now).unwrap_or_default());
    let user = given(&events);
    assert!(!user.is_locked(now));
    assert!(!user.locked_by_admin);
}

#[test]
fn locking_again_with_the_same_end_changes_nothing_and_a_past_end_is_refused() {
    let now = Utc::now();
    let mut events = registered();
    events.extend(lock(&given(&events), None, now, 0).unwrap_or_default());
    let user = given(&events);
    assert_eq!(lock(&user, None, now, 0), Ok(Vec::new()));
    let sooner = now + Duration::hours(1);
    assert_eq!(
        lock(&user, Some(sooner), now, 0),
        Ok(vec![UserEvent::AccountLocked {
            until: sooner,
            lock_count: 0
        }])
    );
    assert_eq!(
        lock(&given(&registered()), Some(now), now, 0),
        Err(UserError::LockEndsInThePast)
    );
    assert_eq!(
        lock(&User::default(), None, now, 3),
        Err(UserError::NotFound)
    );
}

#[test]
fn the_last_admin_who_can_sign_in_cannot_be_locked() {
    let now = Utc::now();
    let root = given(&admin());
    assert_eq!(lock(&root, None, now, 0), Err(UserError::LastActiveAdmin));
    assert!(lock(&root, None, now, 1).is_ok_and(|e| e.len() == 1));
    // A user who is no admin needs no other admin.
    assert!(lock(&given(&registered()), None, now, 0).is_ok_and(|e| e.len() == 1));
}

#[test]
fn a_password_reset_lifts_an_automatic_lock_but_not_an_administrators() {
    let now = Utc::now();
    let reset_requested = UserEvent::PasswordResetRequested {
        email: "ada@example.com".into(),
    };
    // Ids in `given` are positions: the reset request is event 3.
    let reset_id = Uuid::from_u128(3);

    let mut automatic = registered();
    automatic.push(reset_requested.clone());
    automatic.extend(failed_login(&given(&automatic), 5, now));
    let reset = reset_password(&given(&automatic), reset_id, now);
    assert_eq!(reset, Ok(vec![UserEvent::PasswordReset { reset_id }]));
    automatic.extend(reset.unwrap_or_default());
    assert!(!given(&automatic).is_locked(now));

    let mut by_admin = registered();
    by_admin.push(reset_requested);
    by_admin.extend(lock(&given(&by_admin), None, now, 0).unwrap_or_default());
    assert_eq!(
        reset_password(&given(&by_admin), reset_id, now),
        Err(UserError::LockedByAdmin)
    );
}

#[test]
fn a_reset_link_works_once_within_the_hour() {
    let mut events = registered();
    events.push(UserEvent::PasswordResetRequested {
        email: "ada@example.com".into(),
    });
    let user = given(&events);
    let id = Uuid::from_u128(3);
    assert!(reset_password(&user, id, Utc::now()).is_ok());
    assert_eq!(
        reset_password(&user, id, Utc::now() + Duration::minutes(61)),
        Err(UserError::InvalidToken)
    );
    events.push(UserEvent::PasswordReset { reset_id: id });
    assert_eq!(
        reset_password(&given(&events), id, Utc::now()),
        Err(UserError::InvalidToken)
    );
}

#[test]
fn erasure_erases_once_and_never_the_last_administrator() {
    let user = given(&registered());
    assert_eq!(erase(&User::default(), None, 1), Err(UserError::NotFound));
    assert_eq!(
        erase(&user, Some("request 42".into()), 1),
        Ok(vec![UserEvent::PersonErased {
            reason: Some("request 42".into())
        }])
    );
    let mut events = registered();
    events.push(UserEvent::PersonErased { reason: None });
    let erased = given(&events);
    assert!(erased.erased);
    assert_eq!(erased.email, "[erased]");
    assert!(erased.verifications.is_empty());
    assert_eq!(
        erase(&erased, None, 1),
        Ok(Vec::new()),
        "twice: nothing more"
    );
    // Nothing is sent to an erased person.
    assert!(request_verification(&erased).is_empty());
    assert!(request_reset(&erased).is_empty());

    let admin = given(&register(
        "root@example.com",
        None,
        vec![ROLE_USER.into(), ROLE_ADMIN.into()],
        true,
    ));
    assert_eq!(erase(&admin, None, 1), Err(UserError::LastAdminErased));
    assert!(erase(&admin, None, 2).is_ok());
}

/// Every field of a user event that holds personal data, by JSON pointer into its data: the
/// list a reviewer checks when an event gains a field.
#[test]
fn every_personal_field_of_the_user_events_is_listed() {
    use crate::privacy::fields::personal_paths;
    let id = Uuid::from_u128(1);
    let cases = [
        (
            UserEvent::UserRegistered {
                email: "ada@example.com".into(),
                display_name: Some("Ada".into()),
                roles: vec![ROLE_USER.into()],
            },
            vec!["/email", "/display_name"],
        ),
        (
            UserEvent::VerificationRequested {
                email: "ada@example.com".into(),
            },
            vec!["/email"],
        ),
        (
            UserEvent::RegistrationRepeated {
                registration_id: id,
                display_name: Some("Ada".into()),
            },
            vec!["/display_name"],
        ),
        (
            UserEvent::PendingRegistrationConfirmed {
                registration_id: id,
                display_name: Some("Ada".into()),
            },
            vec!["/display_name"],
        ),
        (
            UserEvent::DuplicateRegistrationAttempted {
                email: "ada@example.com".into(),
            },
            vec!["/email"],
        ),
        (
            UserEvent::PasswordResetRequested {
                email: "ada@example.com".into(),
            },
            vec!["/email"],
        ),
        (UserEvent::PersonErased { reason: None }, vec![]),
        (
            UserEvent::ConsentGiven {
                purpose: "news".into(),
                version: "1".into(),
            },
            vec![],
        ),
        (
            UserEvent::ConsentWithdrawn {
                purpose: "news".into(),
                version: "1".into(),
            },
            vec![],
        ),
        (
            UserEvent::EmailVerified {
                verification_id: None,
            },
            vec![],
        ),
        (UserEvent::PasswordReset { reset_id: id }, vec![]),
        (UserEvent::PasswordChanged, vec![]),
        (UserEvent::PasswordRehashed, vec![]),
        (
            UserEvent::RolesChanged {
                roles: vec![ROLE_USER.into()],
            },
            vec![],
        ),
        (
            UserEvent::AccountLocked {
                until: Utc::now(),
                lock_count: 1,
            },
            vec![],
        ),
        (UserEvent::AccountUnlocked, vec![]),
        (UserEvent::PersonalDataExported, vec![]),
        (UserEvent::SecondFactorEnrolmentStarted, vec![]),
        (UserEvent::SecondFactorEnabled, vec![]),
        (UserEvent::SecondFactorDisabled, vec![]),
        (
            UserEvent::SecondFactorReset {
                email: "ada@example.com".into(),
            },
            vec!["/email"],
        ),
        (UserEvent::RecoveryCodesGenerated { count: 10 }, vec![]),
        (UserEvent::RecoveryCodeUsed { remaining: 9 }, vec![]),
        (
            UserEvent::SecondFactorLocked {
                until: Utc::now(),
                lock_count: 1,
            },
            vec![],
        ),
        (
            UserEvent::NewDeviceSignedIn {
                email: "ada@example.com".into(),
                session_id: id,
                device: "Firefox on Linux".into(),
                network: "203.0.113.0/24".into(),
            },
            vec!["/device", "/email", "/network"],
        ),
        (
            UserEvent::ExternalIdentityLinked {
                identity_id: id,
                provider: "corp".into(),
                subject: "248289761001".to_owned().into(),
                email: Some("ada@example.com".to_owned().into()),
            },
            vec!["/email", "/subject"],
        ),
        (
            UserEvent::ExternalIdentityUnlinked {
                identity_id: id,
                provider: "corp".into(),
            },
            vec![],
        ),
    ];
    // Every kind of user event is in the list.
    let mut listed: Vec<String> = cases
        .iter()
        .map(|(event, _)| event.to_new_event().event_type)
        .collect();
    listed.sort();
    listed.dedup();
    let mut kinds: Vec<String> = <UserEvent as strum::VariantNames>::VARIANTS
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    kinds.sort();
    assert_eq!(listed, kinds, "a user event is missing from the list");
    for (event, expected) in cases {
        let mut paths = personal_paths(&event.to_new_event().data);
        paths.sort();
        let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
        expected.sort();
        assert_eq!(paths, expected, "{event:?}");
    }
    let metadata = serde_json::to_value(crate::Metadata {
        actor: Some("user-1".into()),
        client_ip: Some("192.0.2.7".into()),
        user_agent: Some("curl/8".into()),
        ..crate::Metadata::default()
    })
    .unwrap();
    let mut paths = personal_paths(&metadata);
    paths.sort();
    assert_eq!(paths, ["/client_ip", "/user_agent"]);
}

fn news(version: &str) -> crate::identity::consent::Purpose {
    crate::identity::consent::Purpose {
        name: "news".into(),
        version: version.into(),
    }
}

#[test]
fn consent_is_given_to_the_text_in_force_and_withdrawn_once() {
    let user = given(&registered());
    let gave = decide_consent(&user, &news("2"), true, Some("2")).unwrap();
    assert_eq!(
        gave,
        [UserEvent::ConsentGiven {
            purpose: "news".into(),
            version: "2".into()
        }]
    );
    assert_eq!(
        decide_consent(&user, &news("2"), true, Some("1")),
        Err(UserError::ConsentTextChanged {
            purpose: "news".into(),
            current: "2".into(),
            given: "1".into()
        })
    );
    assert_eq!(decide_consent(&user, &news("2"), false, None), Ok(vec![]));

    let mut events = registered();
    events.extend(gave);
    let user = given(&events);
    assert!(user.consents["news"].given);
    assert_eq!(
        decide_consent(&user, &news("2"), true, Some("2")),
        Ok(vec![])
    );
    // A newer text asks again.
    assert_eq!(
        decide_consent(&user, &news("3"), true, Some("3"))
            .unwrap()
            .len(),
        1
    );
    let withdrew = decide_consent(&user, &news("3"), false, None).unwrap();
    assert_eq!(
        withdrew,
        [UserEvent::ConsentWithdrawn {
            purpose: "news".into(),
            version: "2".into()
        }]
    );
    events.extend(withdrew);
    let user = given(&events);
    assert!(!user.consents["news"].given);
    assert_eq!(user.consents["news"].version, "2");
    assert_eq!(decide_consent(&user, &news("3"), false, None), Ok(vec![]));
    assert_eq!(
        decide_consent(&User::default(), &news("3"), true, Some("3")),
        Err(UserError::NotFound)
    );
}

#[test]
fn five_wrong_codes_lock_the_second_factor_and_each_lock_lasts_twice_as_long() {
    let mut events = register("ada@example.com", None, vec![ROLE_USER.into()], true);
    events.push(UserEvent::SecondFactorEnabled);
    let user = given(&events);
    assert!(user.second_factor);
    let now = Utc::now();
    assert!(failed_second_factor(&user, 4, now).is_empty());
    let first = failed_second_factor(&user, 5, now);
    assert_eq!(
        first,
        vec![UserEvent::SecondFactorLocked {
            until: now + FIRST_LOCK,
            lock_count: 1
        }]
    );
    events.extend(first);
    let locked = given(&events);
    assert!(locked.is_second_factor_locked(now));
    assert!(
        !locked.is_locked(now),
        "the password still works; the code does not"
    );
    assert!(
        failed_second_factor(&locked, 5, now).is_empty(),
        "no new lock while locked"
    );
    let later = now + FIRST_LOCK + Duration::seconds(1);
    assert!(!locked.is_second_factor_locked(later));
    assert_eq!(
        failed_second_factor(&locked, 5, later),
        vec![UserEvent::SecondFactorLocked {
            until: later + FIRST_LOCK * 2,
            lock_count: 2
        }]
    );
    // Turning it off (or an administrator's reset) ends the lock.
    events.push(UserEvent::SecondFactorReset {
        email: "ada@example.com".into(),
    });
    let reset = given(&events);
    assert!(!reset.second_factor);
    assert!(!reset.is_second_factor_locked(now));
}

fn linked(identity: u128, provider: &str) -> UserEvent {
    UserEvent::ExternalIdentityLinked {
        identity_id: Uuid::from_u128(identity),
        provider: provider.into(),
        subject: "subject".to_owned().into(),
        email: Some("ada@example.com".to_owned().into()),
    }
}

#[test]
fn one_identity_per_provider_is_linked_and_the_last_way_in_stays() {
    let mut events = registered();
    let user = given(&events);
    let link = link_identity(&user, Uuid::from_u128(50), "corp", "s-1", None).unwrap();
    assert_eq!(
        link,
        vec![UserEvent::ExternalIdentityLinked {
            identity_id: Uuid::from_u128(50),
            provider: "corp".into(),
            subject: "s-1".to_owned().into(),
            email: None,
        }]
    );
    events.extend(link);
    let user = given(&events);
    assert_eq!(user.identities.len(), 1);
    assert_eq!(user.identities[0].subject, "s-1");
    assert_eq!(
        link_identity(&user, Uuid::from_u128(51), "corp", "s-2", None),
        Err(UserError::ProviderLinked("corp".into()))
    );
    // Without a password, the only identity cannot go; with one, it can.
    assert_eq!(
        unlink_identity(&user, Uuid::from_u128(50), false),
        Err(UserError::LastSignInMethod)
    );
    assert_eq!(
        unlink_identity(&user, Uuid::from_u128(99), true),
        Err(UserError::NoSuchIdentity)
    );
    let unlinked = unlink_identity(&user, Uuid::from_u128(50), true).unwrap();
    events.extend(unlinked);
    assert!(given(&events).identities.is_empty());
    // With two identities, one can go even without a password.
    events.push(linked(60, "corp"));
    events.push(linked(61, "github"));
    assert!(unlink_identity(&given(&events), Uuid::from_u128(60), false).is_ok());
    // Nothing is linked to an erased person, and erasure forgets the links.
    events.push(UserEvent::PersonErased { reason: None });
    let erased = given(&events);
    assert!(erased.identities.is_empty());
    assert_eq!(
        link_identity(&erased, Uuid::from_u128(70), "okta", "s", None),
        Err(UserError::NotFound)
    );
}

#[test]
fn a_confirmed_repeated_registration_and_a_trusted_provider_drop_earlier_links() {
    let owner = Uuid::from_u128(200);
    let mut events = registered(); // link 2
    events.push(linked(40, "corp")); // 3: whoever made the account linked their identity
    events.extend(register_again(&given(&events), owner, None)); // 4, link 5
    let confirmed = verify_email(&given(&events), Uuid::from_u128(5), Utc::now()).unwrap();
    assert!(confirmed.contains(&UserEvent::ExternalIdentityUnlinked {
        identity_id: Uuid::from_u128(40),
        provider: "corp".into(),
    }));
    let mut verified = events.clone();
    verified.extend(confirmed);
    assert!(given(&verified).identities.is_empty());

    // A trusted provider's verified address claims the unverified account the same way.
    let claimed = claim_by_provider(
        &given(&events),
        Uuid::from_u128(41),
        "google",
        "g-1",
        "ada@example.com",
    );
    assert_eq!(claimed.len(), 3);
    assert!(matches!(
        claimed[0],
        UserEvent::ExternalIdentityUnlinked { identity_id, .. } if identity_id == Uuid::from_u128(40)
    ));
    events.extend(claimed);
    let user = given(&events);
    assert!(user.email_verified);
    assert_eq!(user.identities.len(), 1);
    assert_eq!(user.identities[0].provider, "google");
}
