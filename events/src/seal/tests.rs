use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

use super::store::now_micros;
use super::verify::{OpenSeal, Sealable, check_seal};
use super::*;
use crate::chain::{BreakKind, ChainBreak};
use crate::event::Cursor;

fn h(n: u8) -> [u8; 32] {
    [n; 32]
}

fn cursor(transaction_id: i64, position: i64) -> Cursor {
    Cursor {
        transaction_id,
        position,
    }
}

fn entries_of(events: &[(i64, u8)]) -> Vec<u8> {
    events.iter().flat_map(|(p, n)| entry(*p, &h(*n))).collect()
}

/// A signed seal over `events` (position, hash byte) after `previous`.
fn seal_over(
    signer: &SealSigner,
    previous: Option<&Seal>,
    events: &[(i64, u8)],
) -> (Seal, Vec<u8>) {
    let entries = entries_of(events);
    let previous_hash = previous.map_or(GENESIS, |p| p.seal_hash);
    let seal = signer.sign(SealFields {
        seal_number: previous.map_or(1, |p| p.fields.seal_number + 1),
        from: cursor(10, events[0].0),
        to: cursor(10, events[events.len() - 1].0),
        event_count: events.len() as i64,
        events_digest: events_digest(&previous_hash, &entries),
        previous_hash,
        key_id: String::new(),
        created_at: now_micros(),
    });
    (seal, entries)
}

fn keys_of(signer: &SealSigner) -> PublicKeys {
    let mut keys = PublicKeys::default();
    keys.insert(signer.key_id(), signer.verifying_key());
    keys
}

fn walk(seal: &Seal, entries: &[u8], events: &[(i64, u8)]) -> Option<SealProblem> {
    let mut open = OpenSeal {
        seal: seal.clone(),
        entries: entries.to_vec(),
        next: 0,
    };
    for (p, n) in events {
        if let Some(problem) = open.feed(&Sealable {
            cursor: cursor(10, *p),
            hash: h(*n),
        }) {
            return Some(problem);
        }
    }
    open.finish()
}

#[test]
fn the_digest_depends_on_the_previous_seal_and_on_every_entry_in_order() {
    let a = entries_of(&[(1, 1), (2, 2)]);
    let swapped = entries_of(&[(2, 2), (1, 1)]);
    assert_ne!(events_digest(&GENESIS, &a), events_digest(&h(9), &a));
    assert_ne!(
        events_digest(&GENESIS, &a),
        events_digest(&GENESIS, &swapped)
    );
    assert_eq!(entry(258, &h(7))[..8], [0, 0, 0, 0, 0, 0, 1, 2]);
}

#[test]
fn a_signed_seal_verifies_and_any_edited_field_does_not() {
    let signer = SealSigner::generate("k1").unwrap();
    let keys = keys_of(&signer);
    let (seal, entries) = seal_over(&signer, None, &[(1, 1), (2, 2)]);
    assert_eq!(check_seal(None, &seal, &entries, &keys), None);
    assert_eq!(seal.fields.key_id, "k1");

    let mut edited = seal.clone();
    edited.fields.events_digest = h(3);
    assert_eq!(
        check_seal(None, &edited, &entries, &keys),
        Some(SealProblemKind::HashMismatch)
    );
    // Rehashed after the edit: the signature no longer holds.
    edited.seal_hash = edited.fields.hash();
    assert_eq!(
        check_seal(None, &edited, &entries, &keys),
        Some(SealProblemKind::BadSignature {
            key_id: "k1".into()
        })
    );
    // Re-signed with another key under the same name.
    let mallory = SealSigner::generate("k1").unwrap();
    let forged = mallory.sign(seal.fields.clone());
    assert_eq!(
        check_seal(None, &forged, &entries, &keys),
        Some(SealProblemKind::BadSignature {
            key_id: "k1".into()
        })
    );
    let unknown = SealSigner::generate("k2")
        .unwrap()
        .sign(seal.fields.clone());
    assert_eq!(
        check_seal(None, &unknown, &entries, &keys),
        Some(SealProblemKind::UnknownKey {
            key_id: "k2".into()
        })
    );
    // Entries rewritten under a valid seal: caught by the digest.
    let other = entries_of(&[(1, 1), (2, 9)]);
    assert_eq!(
        check_seal(None, &seal, &other, &keys),
        Some(SealProblemKind::DigestMismatch)
    );
}

#[test]
fn seals_must_link_and_follow_each_other() {
    let signer = SealSigner::generate("k").unwrap();
    let keys = keys_of(&signer);
    let (first, _) = seal_over(&signer, None, &[(1, 1)]);
    let (second, entries) = seal_over(&signer, Some(&first), &[(2, 2)]);
    assert_eq!(check_seal(Some(&first), &second, &entries, &keys), None);

    let (third, third_entries) = seal_over(&signer, Some(&second), &[(3, 3)]);
    assert_eq!(
        check_seal(Some(&first), &third, &third_entries, &keys),
        Some(SealProblemKind::Missing { found: 3 })
    );
    let mut unlinked = second.fields.clone();
    unlinked.previous_hash = h(5);
    let unlinked = signer.sign(unlinked);
    assert_eq!(
        check_seal(Some(&first), &unlinked, &entries, &keys),
        Some(SealProblemKind::BrokenLink)
    );
    let (overlapping, overlapping_entries) = seal_over(&signer, Some(&first), &[(1, 1)]);
    assert_eq!(
        check_seal(Some(&first), &overlapping, &overlapping_entries, &keys),
        Some(SealProblemKind::BadRange)
    );
}

#[test]
fn the_walk_names_an_edited_a_deleted_an_inserted_and_a_moved_event() {
    let signer = SealSigner::generate("k").unwrap();
    let sealed = [(1, 1), (2, 2), (3, 3), (4, 4)];
    let (seal, entries) = seal_over(&signer, None, &sealed);
    assert_eq!(walk(&seal, &entries, &sealed), None);

    let problem = |events: &[(i64, u8)]| {
        let p = walk(&seal, &entries, events).unwrap();
        (p.position, p.kind)
    };
    assert_eq!(
        problem(&[(1, 1), (2, 9), (3, 3), (4, 4)]),
        (Some(2), SealProblemKind::EventChanged)
    );
    assert_eq!(
        problem(&[(1, 1), (3, 3), (4, 4)]),
        (Some(2), SealProblemKind::EventMissing)
    );
    assert_eq!(
        problem(&[(1, 1), (2, 2), (3, 3)]),
        (Some(4), SealProblemKind::EventMissing)
    );
    assert_eq!(
        problem(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]),
        (Some(5), SealProblemKind::EventUnexpected)
    );
    // Positions 2 and 3 swapped between their events.
    assert_eq!(
        problem(&[(1, 1), (2, 3), (3, 2), (4, 4)]),
        (Some(2), SealProblemKind::EventMoved { sealed_at: 3 })
    );
    // The event sealed at 2 moved to position 7 (ordered elsewhere by its transaction).
    assert_eq!(
        problem(&[(1, 1), (7, 2), (3, 3), (4, 4)]),
        (Some(7), SealProblemKind::EventMoved { sealed_at: 2 })
    );
}

#[test]
fn problems_name_their_seal_and_position() {
    let problem = SealProblem {
        seal_number: 3,
        position: Some(42),
        kind: SealProblemKind::EventChanged,
    };
    let flat = Problem::from(&problem);
    assert_eq!(flat.kind, "seal_event_changed");
    assert_eq!((flat.seal, flat.position), (Some(3), Some(42)));
    assert!(
        flat.detail.starts_with("seal 3, position 42:"),
        "{}",
        flat.detail
    );

    let broken = ChainBreak {
        stream_id: "user-1".into(),
        stream_version: 4,
        position: 9,
        kind: BreakKind::MissingVersion { expected: 3 },
    };
    let flat = Problem::from(&broken);
    assert_eq!(flat.kind, "chain_missing_version");
    assert_eq!(
        (flat.stream.as_deref(), flat.version),
        (Some("user-1"), Some(3))
    );
}

#[test]
fn anchors_parse_from_number_and_hex_hash() {
    let hash = hex::encode(h(0xab));
    let anchor: Anchor = format!("12:{hash}").parse().unwrap();
    assert_eq!(anchor.seal_number, 12);
    assert_eq!(anchor.seal_hash, h(0xab));
    for bad in ["12", "x:00", "0:00", &format!("1:{}", &hash[2..])] {
        assert!(bad.parse::<Anchor>().is_err(), "{bad}");
    }
}

#[test]
fn keys_round_trip_through_a_jwks_document() {
    let signer = SealSigner::generate("2026-01-01T000000Z").unwrap();
    let jwks = serde_json::json!({
        "keys": [public_jwk(signer.key_id(), &signer.verifying_key()), {"kty": "RSA"}]
    });
    let keys = PublicKeys::from_jwks(&jwks);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys.get(signer.key_id()), Some(&signer.verifying_key()));
    assert!(
        public_pem(&signer.verifying_key())
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert!(SealSigner::generate("bad kid").is_err());
    assert!(format!("{signer:?}").len() < 80);
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("idp-seal-keys-{}", uuid::Uuid::now_v7())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn private_pem(signer_seed: u8) -> (SigningKey, String) {
    let key = SigningKey::from_bytes(&[signer_seed; 32]);
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    (key, pem)
}

#[test]
fn verifiers_read_public_pems_and_the_public_halves_of_private_ones() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let (old, _) = private_pem(1);
    let (new, new_pem) = private_pem(2);
    std::fs::write(
        dir.0.join("a-old.pem"),
        public_pem(&old.verifying_key()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.0.join("b-new.pem"), new_pem).unwrap();

    let keys = PublicKeys::load_dir(&dir.0).unwrap();
    assert_eq!(keys.get("a-old"), Some(&old.verifying_key()));
    assert_eq!(keys.get("b-new"), Some(&new.verifying_key()));
    assert_eq!(keys.private_key_ids(), ["b-new"]);
    assert_eq!(keys.iter().count(), 2);

    std::fs::write(
        dir.0.join("c-bad.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let error = PublicKeys::load_dir(&dir.0).unwrap_err().to_string();
    assert!(
        error.contains("c-bad.pem") && error.contains("SPKI"),
        "{error}"
    );
}

#[test]
fn the_private_key_sorting_last_signs_and_public_keys_never_do() {
    let dir = TempDir::new();
    assert!(
        SealSigner::load_dir(&dir.0).unwrap().is_none(),
        "no directory"
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let (signing, signing_pem) = private_pem(3);
    let (other, _) = private_pem(4);
    std::fs::write(dir.0.join("2026-01-01T000000Z.pem"), signing_pem).unwrap();
    std::fs::write(
        dir.0.join("2027-01-01T000000Z.pem"),
        public_pem(&other.verifying_key()).unwrap(),
    )
    .unwrap();
    let signer = SealSigner::load_dir(&dir.0).unwrap().unwrap();
    assert_eq!(signer.key_id(), "2026-01-01T000000Z");
    assert_eq!(signer.verifying_key(), signing.verifying_key());

    let only_public = TempDir::new();
    std::fs::create_dir_all(&only_public.0).unwrap();
    std::fs::write(
        only_public.0.join("old.pem"),
        public_pem(&other.verifying_key()).unwrap(),
    )
    .unwrap();
    assert!(SealSigner::load_dir(&only_public.0).unwrap().is_none());
}

#[test]
fn a_generated_key_is_private_to_its_owner_and_signs_from_then_on() {
    let dir = TempDir::new();
    let keys = dir.0.join("seal-keys");
    let generated = SealSigner::generate_in(&keys).unwrap();
    assert!(
        generated.key_id().starts_with("seal-"),
        "{}",
        generated.key_id()
    );
    let loaded = SealSigner::load_dir(&keys).unwrap().unwrap();
    assert_eq!(loaded.key_id(), generated.key_id());
    assert_eq!(loaded.verifying_key(), generated.verifying_key());
    let file = keys.join(format!("{}.pem", generated.key_id()));
    let pem = std::fs::read_to_string(&file).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&keys), 0o700);
    }
}
