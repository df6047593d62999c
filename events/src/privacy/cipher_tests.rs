use super::*;

fn ring(entries: &[(&str, &[u8])]) -> KeyEncryptionKeys {
    let spec = entries
        .iter()
        .map(|(id, secret)| format!("{id}:{}", String::from_utf8_lossy(secret)))
        .collect::<Vec<_>>()
        .join(",");
    KeyEncryptionKeys::from_ring(&SecretKeys::parse("TEST_KEYS", &spec).unwrap())
}

const OLD: &[u8] = b"old-secret-old-secret-old-secret";
const NEW: &[u8] = b"new-secret-new-secret-new-secret";

#[test]
fn a_sealed_value_opens_under_its_key_for_its_place_only() {
    let key = DataKey::generate();
    let sealed = key.seal(b"event-1/email", b"ada@example.com");
    assert_eq!(sealed.len(), NONCE_LEN + 15 + TAG_LEN);
    assert_eq!(
        key.open(b"event-1/email", &sealed).unwrap(),
        b"ada@example.com"
    );
    assert_eq!(
        key.open(b"event-2/email", &sealed),
        Err(CipherError::Refused),
        "another event"
    );
    assert_eq!(
        key.open(b"event-1/display_name", &sealed),
        Err(CipherError::Refused),
        "another field"
    );
    assert_eq!(
        DataKey::generate().open(b"event-1/email", &sealed),
        Err(CipherError::Refused),
        "another person's key"
    );
    let mut changed = sealed.clone();
    changed[NONCE_LEN] ^= 1;
    assert_eq!(
        key.open(b"event-1/email", &changed),
        Err(CipherError::Refused)
    );
    assert_eq!(
        key.open(b"event-1/email", &sealed[..30]),
        Err(CipherError::Malformed)
    );
}

#[test]
fn the_same_value_sealed_twice_looks_different() {
    let key = DataKey::generate();
    assert_ne!(key.seal(b"a", b"same"), key.seal(b"a", b"same"));
}

#[test]
fn a_key_is_never_shown() {
    let key = DataKey::generate();
    assert_eq!(format!("{key:?}"), "DataKey(..)");
    let keks = ring(&[("k1", OLD)]);
    assert!(!format!("{keks:?}").contains("old-secret"));
}

#[test]
fn a_wrapped_key_unwraps_for_its_subject_under_any_key_of_the_ring() {
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let key = DataKey::generate();
    let old = ring(&[("k1", OLD)]);
    let wrapped = old.wrap_key(ada, &key);
    assert_eq!(wrapped.kek_id, "k1");

    let rotated = ring(&[("k1", OLD), ("k2", NEW)]);
    assert_eq!(rotated.current_id(), "k2");
    let unwrapped = rotated.unwrap_key(ada, &wrapped).unwrap();
    let sealed = key.seal(b"x", b"value");
    assert_eq!(unwrapped.open(b"x", &sealed).unwrap(), b"value");
    assert_eq!(
        rotated.unwrap_key(bob, &wrapped).map(|_| ()),
        Err(CipherError::Refused),
        "another subject"
    );

    let rewrapped = rotated.wrap_key(ada, &unwrapped);
    assert_eq!(rewrapped.kek_id, "k2");
    let new_only = ring(&[("k2", NEW)]);
    assert!(
        new_only.unwrap_key(ada, &rewrapped).is_ok(),
        "the old key is no longer needed"
    );
    assert_eq!(
        new_only.unwrap_key(ada, &wrapped).map(|_| ()),
        Err(CipherError::UnknownKek("k1".into()))
    );
    let wrong = ring(&[("k1", NEW)]);
    assert_eq!(
        wrong.unwrap_key(ada, &wrapped).map(|_| ()),
        Err(CipherError::Refused),
        "a wrong secret under the right id"
    );
}
