use std::collections::HashMap;

use serde_json::json;

use super::*;

fn event() -> Value {
    json!({
        "user_id": "0190a7f3-0000-7000-8000-000000000001",
        "email": {"$personal": "ada@example.com"},
        "profile": {"display_name": {"$personal": "Ada"}, "roles": ["user"]},
        "devices": [{"agent": {"$personal": {"name": "curl", "version": 8}}}],
        "a/b": {"$personal": "slash"},
    })
}

#[test]
fn personal_paths_are_listed_as_json_pointers() {
    assert_eq!(
        personal_paths(&event()),
        [
            "/a~1b",
            "/devices/0/agent",
            "/email",
            "/profile/display_name"
        ]
    );
    assert!(has_personal(&event()));
    assert!(!has_personal(&json!({"email": "x", "n": [1, {"k": 2}]})));
}

#[test]
fn sealed_fields_hold_no_clear_text_and_open_back_to_the_same_values() {
    let (event_id, subject, key) = (Uuid::now_v7(), Uuid::now_v7(), DataKey::generate());
    let mut stored = event();
    assert_eq!(
        seal_fields(&mut stored, Place::Data(event_id), &[subject], &key),
        4
    );
    let text = stored.to_string();
    for clear in ["ada@example.com", "Ada", "curl", "slash", MARKER] {
        assert!(!text.contains(clear), "{clear} in {text}");
    }
    assert_eq!(
        stored["profile"]["roles"],
        json!(["user"]),
        "other fields untouched"
    );
    let mut subjects = BTreeSet::new();
    sealed_subjects(&stored, &mut subjects);
    assert_eq!(subjects.into_iter().collect::<Vec<_>>(), [subject]);

    let keys = HashMap::from([(subject, key)]);
    let found = open_fields(&mut stored, Place::Data(event_id), &|s| {
        keys.get(&s[0]).cloned()
    });
    assert_eq!(
        found,
        Opened {
            opened: 4,
            erased: 0,
            refused: 0
        }
    );
    assert_eq!(stored, event());
    unmark(&mut stored);
    assert_eq!(stored["email"], json!("ada@example.com"));
    assert_eq!(stored["devices"][0]["agent"]["version"], json!(8));
}

#[test]
fn without_the_key_every_field_reads_erased() {
    let (event_id, subject) = (Uuid::now_v7(), Uuid::now_v7());
    let mut stored = event();
    seal_fields(
        &mut stored,
        Place::Data(event_id),
        &[subject],
        &DataKey::generate(),
    );
    let found = open_fields(&mut stored, Place::Data(event_id), &|_| None);
    assert_eq!(
        found,
        Opened {
            opened: 0,
            erased: 4,
            refused: 0
        }
    );
    assert_eq!(stored["email"], json!(ERASED));
    assert_eq!(stored["profile"]["display_name"], json!(ERASED));
}

#[test]
fn a_ciphertext_moved_to_another_event_or_field_or_part_does_not_open() {
    let (subject, key) = (Uuid::now_v7(), DataKey::generate());
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let mut one = json!({"email": {"$personal": "ada@example.com"}, "name": {"$personal": "Ada"}});
    seal_fields(&mut one, Place::Data(first), &[subject], &key);
    let keys = HashMap::from([(subject, key)]);
    let key_of = |s: &[Uuid]| keys.get(&s[0]).cloned();

    let mut other_event = one.clone();
    let found = open_fields(&mut other_event, Place::Data(second), &key_of);
    assert_eq!(found.refused, 2);
    assert_eq!(other_event["email"], json!(ERASED));

    let mut swapped = json!({"email": one["name"].clone(), "name": one["email"].clone()});
    assert_eq!(
        open_fields(&mut swapped, Place::Data(first), &key_of).refused,
        2
    );

    let mut in_metadata = one.clone();
    let metadata = Place::Metadata {
        stream_id: "user-1",
        recorded_at: chrono::Utc::now(),
    };
    assert_eq!(open_fields(&mut in_metadata, metadata, &key_of).refused, 2);

    let mut intact = one;
    assert_eq!(
        open_fields(&mut intact, Place::Data(first), &key_of).opened,
        2
    );
}

#[test]
fn values_that_only_look_marked_or_sealed_are_left_alone() {
    let mut value = json!({
        "two_keys": {"$personal": "x", "other": 1},
        "not_text": {"$sealed": 7},
        "bad_version": {"$sealed": "v0.x.y"},
    });
    let before = value.clone();
    assert!(personal_paths(&value).is_empty());
    let found = open_fields(&mut value, Place::Data(Uuid::now_v7()), &|_| None);
    assert_eq!(found.opened + found.erased, 0);
    assert_eq!(
        found.refused, 1,
        "a sealed value of an unknown format reads erased"
    );
    assert_eq!(value["two_keys"], before["two_keys"]);
    assert_eq!(value["not_text"], before["not_text"]);
}

#[test]
fn a_value_under_two_subjects_needs_both_keys() {
    let (ada, period) = (Uuid::now_v7(), Uuid::now_v7());
    let (ada_key, period_key) = (DataKey::generate(), DataKey::generate());
    let place = Place::Metadata {
        stream_id: "user-ada",
        recorded_at: chrono::Utc::now(),
    };
    let mut stored = json!({"client_ip": {"$personal": "192.0.2.7"}});
    let both = DataKey::combine(&[&ada_key, &period_key]);
    seal_fields(&mut stored, place, &[ada, period], &both);
    let mut subjects = BTreeSet::new();
    sealed_subjects(&stored, &mut subjects);
    assert_eq!(subjects.len(), 2);

    let keys = HashMap::from([(ada, ada_key.clone()), (period, period_key.clone())]);
    let all = |s: &[Uuid]| {
        let found: Option<Vec<&DataKey>> = s.iter().map(|id| keys.get(id)).collect();
        found.map(|k| DataKey::combine(&k))
    };
    let mut opened = stored.clone();
    assert_eq!(open_fields(&mut opened, place, &all).opened, 1);
    assert_eq!(opened["client_ip"], json!({"$personal": "192.0.2.7"}));

    let period_gone = HashMap::from([(ada, ada_key)]);
    let without_period = |s: &[Uuid]| {
        let found: Option<Vec<&DataKey>> = s.iter().map(|id| period_gone.get(id)).collect();
        found.map(|k| DataKey::combine(&k))
    };
    let mut expired = stored.clone();
    assert_eq!(open_fields(&mut expired, place, &without_period).erased, 1);
    let only_period = |_: &[Uuid]| Some(period_key.clone());
    assert_eq!(
        open_fields(&mut stored, place, &only_period).refused,
        1,
        "one key is not enough"
    );
}
