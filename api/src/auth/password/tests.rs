//! Unit tests of the password policy and of hashing and verifying with argon2id.

use super::*;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::time::Duration;

#[tokio::test]
async fn hashes_are_standard_phc_strings_both_ways_and_the_working_memory_is_reused() {
    let hasher = Hasher::with_permits(WEAK, 2);
    let ours = hasher.hash("correct horse battery staple").await.unwrap();
    // The reference implementation accepts ours...
    let parsed = PasswordHash::new(&ours).unwrap();
    assert!(
        Argon2::default()
            .verify_password(b"correct horse battery staple", &parsed)
            .is_ok()
    );
    assert!(
        Argon2::default()
            .verify_password(b"another password entirely", &parsed)
            .is_err()
    );
    // ...and we accept its.
    let salt = SaltString::encode_b64(b"sixteen byte sal").unwrap();
    let theirs = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        WEAK.argon2_params().unwrap(),
    )
    .hash_password(b"correct horse battery staple", &salt)
    .unwrap()
    .to_string();
    assert!(
        hasher
            .verify("correct horse battery staple", &theirs)
            .await
            .unwrap()
            .matches
    );
    assert!(!hasher.verify("wrong", &theirs).await.unwrap().matches);
    // Many computations, one buffer per permit at most.
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let (hasher, theirs) = (hasher.clone(), theirs.clone());
            tokio::spawn(async move { hasher.verify("x", &theirs).await })
        })
        .collect();
    for run in runs {
        let _ = run.await.unwrap();
    }
    let kept = hasher.scratch.kept.lock().unwrap().len();
    assert!((1..=2).contains(&kept), "{kept} buffers kept");
}

/// Cheap parameters below the floor, for hashes that should ask for a rehash.
const WEAK: HashParams = HashParams {
    memory_kib: 8_192,
    iterations: 1,
    parallelism: 1,
};

#[test]
fn length_window_in_chars() {
    assert_eq!(
        validate("abcdefghijk"),
        Err(PasswordError::TooShort { min: MIN_CHARS })
    );
    assert_eq!(validate("abcdefghijkl"), Ok(()));
    assert_eq!(validate(&"x7".repeat(64)), Ok(()));
    assert_eq!(
        validate(&format!("{}y", "x7".repeat(64))),
        Err(PasswordError::TooLong { max: MAX_CHARS })
    );
    assert_eq!(
        validate(""),
        Err(PasswordError::TooShort { min: MIN_CHARS })
    );
}

#[test]
fn unicode_counts_chars_not_bytes() {
    assert_eq!(validate("pässwörd-ünïcødé"), Ok(()));
    let twelve = "密码安全很重要请记住它们";
    assert_eq!(twelve.chars().count(), 12);
    assert!(twelve.len() > 12);
    assert_eq!(validate(twelve), Ok(()));
    let eleven: String = twelve.chars().take(11).collect();
    assert_eq!(
        validate(&eleven),
        Err(PasswordError::TooShort { min: MIN_CHARS })
    );
    // 128 four-byte chars are 512 bytes and still allowed.
    assert_eq!(validate(&"🔑".repeat(MAX_CHARS)), Ok(()));
    assert_eq!(
        validate(&"🔑".repeat(MAX_CHARS + 1)),
        Err(PasswordError::TooLong { max: MAX_CHARS })
    );
}

#[test]
fn common_passwords_refused_case_insensitively() {
    assert!(COMMON_PASSWORDS.len() >= 10_000);
    assert!(COMMON_PASSWORDS.contains("password"));
    for common in [
        "1qaz2wsx3edc",
        "QWERTY123456",
        "LeaveMeAlone",
        "  qazwsxedcrfv  ",
    ] {
        assert_eq!(validate(common), Err(PasswordError::Common), "{common}");
    }
    assert_eq!(validate("correct horse battery staple"), Ok(()));
}

#[test]
fn params_floor() {
    assert_eq!(HashParams::default().validated(), Ok(HashParams::default()));
    let err = HashParams {
        memory_kib: 19_455,
        ..HashParams::default()
    }
    .validated()
    .unwrap_err();
    assert!(err.contains("memory_kib"), "{err}");
    let err = HashParams {
        iterations: 1,
        ..HashParams::default()
    }
    .validated()
    .unwrap_err();
    assert!(err.contains("iterations"), "{err}");
    let err = HashParams {
        parallelism: 0,
        ..HashParams::default()
    }
    .validated()
    .unwrap_err();
    assert!(err.contains("parallelism"), "{err}");
    let stronger = HashParams {
        memory_kib: 65_536,
        iterations: 3,
        parallelism: 2,
    };
    assert_eq!(stronger.validated(), Ok(stronger));
}

#[tokio::test]
async fn hash_then_verify() {
    let hasher = Hasher::new(HashParams::default());
    let phc = hasher.hash("correct horse battery staple").await.unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert_eq!(
        params_of(&phc),
        Some(HashParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1
        })
    );
    let salt = PasswordHash::new(&phc).unwrap().salt.unwrap();
    let mut raw = [0u8; 64];
    assert_eq!(salt.decode_b64(&mut raw).unwrap().len(), 16);

    let ok = hasher
        .verify("correct horse battery staple", &phc)
        .await
        .unwrap();
    assert_eq!(
        ok,
        Verified {
            matches: true,
            needs_rehash: false
        }
    );
    let wrong = hasher
        .verify("correct horse battery stapler", &phc)
        .await
        .unwrap();
    assert!(!wrong.matches);

    // Salts are random: the same password hashes differently.
    let again = hasher.hash("correct horse battery staple").await.unwrap();
    assert_ne!(phc, again);
}

#[tokio::test]
async fn weaker_hashes_need_rehash() {
    let current = Hasher::new(HashParams::default());

    let weak = Hasher::with_permits(WEAK, 1);
    let phc = weak.hash("correct horse battery staple").await.unwrap();
    assert_eq!(params_of(&phc), Some(WEAK));
    let v = current
        .verify("correct horse battery staple", &phc)
        .await
        .unwrap();
    assert_eq!(
        v,
        Verified {
            matches: true,
            needs_rehash: true
        }
    );

    // Another argon2 variant, same costs: verifies, but asks for argon2id.
    let argon2i = Argon2::new(
        Algorithm::Argon2i,
        Version::V0x13,
        HashParams::default().argon2_params().unwrap(),
    );
    let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
    let phc = argon2i
        .hash_password(b"correct horse battery staple", &salt)
        .unwrap()
        .to_string();
    let v = current
        .verify("correct horse battery staple", &phc)
        .await
        .unwrap();
    assert_eq!(
        v,
        Verified {
            matches: true,
            needs_rehash: true
        }
    );

    // Stronger than current: no rehash.
    let strong = HashParams {
        memory_kib: 19_456,
        iterations: 3,
        parallelism: 1,
    };
    let phc = Hasher::new(strong).hash("abc").await.unwrap();
    let v = current.verify("abc", &phc).await.unwrap();
    assert_eq!(
        v,
        Verified {
            matches: true,
            needs_rehash: false
        }
    );
}

#[tokio::test]
async fn malformed_hashes_do_not_match() {
    let hasher = Hasher::with_permits(WEAK, 1);
    for phc in [
        "",
        "not a hash",
        "$argon2id$",
        "$argon2id$v=19$m=abc,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaA",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0",
        "$argon2id$v=7$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "$scrypt$ln=16,r=8,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
    ] {
        let v = hasher.verify("whatever password", phc).await.unwrap();
        assert_eq!(v, Verified::MISMATCH, "{phc}");
    }
    for phc in [
        "",
        "not a hash",
        "$argon2id$v=19$m=abc,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaA",
    ] {
        assert_eq!(params_of(phc), None, "{phc}");
    }
}

#[tokio::test]
async fn dummy_verification_is_cached() {
    let hasher = Hasher::with_permits(WEAK, 1);
    assert!(hasher.dummy.get().is_none());
    hasher.verify_dummy("some password").await.unwrap();
    let first = hasher.dummy.get().cloned().unwrap();
    assert_eq!(params_of(&first), Some(WEAK));
    hasher
        .clone()
        .verify_dummy("another password")
        .await
        .unwrap();
    assert_eq!(hasher.dummy.get(), Some(&first));
}

#[tokio::test]
async fn permits_bound_concurrent_work() {
    let hasher = Hasher::with_permits(WEAK, 0);
    assert_eq!(hasher.permits, 1);
    let held = Arc::clone(&hasher.semaphore).acquire_owned().await.unwrap();
    let blocked = tokio::time::timeout(Duration::from_millis(50), hasher.hash("abc")).await;
    assert!(blocked.is_err(), "hashing must wait for a permit");
    drop(held);
    let phc = hasher.hash("abc").await.unwrap();
    assert!(hasher.verify("abc", &phc).await.unwrap().matches);
    assert_eq!(hasher.semaphore.available_permits(), 1);
}

#[tokio::test]
async fn computations_beyond_the_queue_are_shed_at_once_and_the_queue_frees_up() {
    let hasher = Hasher::with_permits(WEAK, 1).with_max_queue(1);
    // The permit is held by hand, so both computations below wait: they fill the one
    // permit's place and the one place in the queue.
    let held = Arc::clone(&hasher.semaphore).acquire_owned().await.unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash("abc").await })
        })
        .collect();
    while hasher.admitted.load(Ordering::Acquire) < 2 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    assert!(matches!(hasher.hash("abc").await, Err(HashError::Busy)));
    assert!(matches!(
        hasher.verify_dummy("abc").await,
        Err(HashError::Busy)
    ));
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "shed at once"
    );
    drop(held);
    for task in waiting {
        assert!(task.await.unwrap().is_ok());
    }
    assert_eq!(hasher.admitted.load(Ordering::Acquire), 0);
    assert!(hasher.hash("abc").await.is_ok(), "the queue is free again");
}

#[tokio::test]
async fn a_caller_that_stops_waiting_leaves_the_queue() {
    let hasher = Hasher::with_permits(WEAK, 1).with_max_queue(1);
    let held = Arc::clone(&hasher.semaphore).acquire_owned().await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(20), hasher.hash("abc")).await;
    assert!(gave_up.is_err());
    assert_eq!(hasher.admitted.load(Ordering::Acquire), 0);
    drop(held);
    assert!(hasher.hash("abc").await.is_ok());
}

#[tokio::test]
async fn one_client_takes_turns_while_another_goes_at_once() {
    let shares = ClientShares::default();
    let first = shares.turn("203.0.113.7").await;
    let second = tokio::time::timeout(Duration::from_millis(50), shares.turn("203.0.113.7"));
    assert!(second.await.is_err(), "the same client waits its turn");
    let other = tokio::time::timeout(Duration::from_millis(50), shares.turn("198.51.100.1"));
    assert!(other.await.is_ok(), "another client does not wait");
    drop(first);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), shares.turn("203.0.113.7"))
            .await
            .is_ok()
    );
}

#[test]
fn debug_shows_no_secrets() {
    let hasher = Hasher::with_permits(HashParams::default(), 3);
    let shown = format!("{hasher:?}");
    assert!(shown.contains("permits: 3"), "{shown}");
    assert!(!shown.contains('$'), "{shown}");
}
