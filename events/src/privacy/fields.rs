//! Sealing and opening the [`Personal`](super::Personal) fields of an event's JSON.
//!
//! Before an event is hashed and written, every marked value (`{"$personal": value}`) in its
//! data and metadata is replaced by `{"$sealed": "v1.<subject>.<ciphertext>"}`: the value's
//! JSON sealed under the subject's data key, bound to the event id, the part (data or
//! metadata) and the field's JSON pointer. The hash chain and the seals therefore cover the
//! ciphertext, and stay intact when the key is destroyed. Reading does the reverse: each
//! sealed value becomes a marked value again, or the erased mark when its key is gone.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::cipher::{CipherError, DataKey};
use super::personal::{ERASED, MARKER};

/// The key of a sealed value in stored JSON.
pub const SEALED: &str = "$sealed";

const VERSION: &str = "v1";

/// Where a sealed value belongs: bound into its ciphertext, so that it opens nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// A field of an event's data: bound to the event's id.
    Data(Uuid),
    /// A field of an append's metadata, which all its events share: bound to their stream and
    /// time.
    Metadata {
        /// The stream appended to.
        stream_id: &'a str,
        /// The append's `recorded_at`.
        recorded_at: DateTime<Utc>,
    },
}

/// The associated data of a field's ciphertext: its place and JSON pointer.
fn aad(place: Place<'_>, pointer: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + pointer.len());
    aad.extend_from_slice(b"idp/personal-field/v1:");
    match place {
        Place::Data(event_id) => {
            aad.extend_from_slice(b"data:");
            aad.extend_from_slice(event_id.as_bytes());
        }
        Place::Metadata {
            stream_id,
            recorded_at,
        } => {
            aad.extend_from_slice(b"metadata:");
            aad.extend_from_slice(stream_id.as_bytes());
            aad.push(0);
            aad.extend_from_slice(&recorded_at.timestamp_micros().to_be_bytes());
        }
    }
    aad.push(0);
    aad.extend_from_slice(pointer.as_bytes());
    aad
}

/// The value of `{"$personal": value}`, if `value` is such a marked value.
fn marked(value: &Value) -> Option<&Value> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(MARKER),
        _ => None,
    }
}

/// The `v1.<subject>.<ciphertext>` of `{"$sealed": ...}`, if `value` is a sealed value.
fn sealed(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(SEALED).and_then(Value::as_str),
        _ => None,
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Calls `visit` with the JSON pointer of every value of `value` that `is_leaf` picks (not
/// looking inside those), depth first.
fn walk(
    value: &mut Value,
    pointer: &mut String,
    is_leaf: &dyn Fn(&Value) -> bool,
    visit: &mut dyn FnMut(&str, &mut Value),
) {
    if is_leaf(value) {
        visit(pointer, value);
        return;
    }
    let len = pointer.len();
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                pointer.push('/');
                pointer.push_str(&escape(key));
                walk(child, pointer, is_leaf, visit);
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                pointer.push('/');
                pointer.push_str(&i.to_string());
                walk(child, pointer, is_leaf, visit);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// The JSON pointers of the marked (personal) values in `value`, in document order.
pub fn personal_paths(value: &Value) -> Vec<String> {
    let mut value = value.clone();
    let mut paths = Vec::new();
    walk(
        &mut value,
        &mut String::new(),
        &|v| marked(v).is_some(),
        &mut |pointer, _| paths.push(pointer.to_owned()),
    );
    paths
}

/// Whether `value` holds a marked (personal) value anywhere.
pub fn has_personal(value: &Value) -> bool {
    match value {
        Value::Object(map) => marked(value).is_some() || map.values().any(has_personal),
        Value::Array(items) => items.iter().any(has_personal),
        _ => false,
    }
}

/// Seals every marked value of `value` (at `place`) under `key`, the key of `subjects` (one
/// person's key, or several combined with [`DataKey::combine`]); returns how many it sealed.
pub fn seal_fields(value: &mut Value, place: Place<'_>, subjects: &[Uuid], key: &DataKey) -> usize {
    let names = subjects
        .iter()
        .map(|s| s.simple().to_string())
        .collect::<Vec<_>>()
        .join("+");
    let mut count = 0;
    walk(
        value,
        &mut String::new(),
        &|v| marked(v).is_some(),
        &mut |pointer, field| {
            let Some(inner) = marked(field) else { return };
            let plaintext = inner.to_string();
            let ciphertext = key.seal(&aad(place, pointer), plaintext.as_bytes());
            let text = format!("{VERSION}.{names}.{}", URL_SAFE_NO_PAD.encode(ciphertext));
            let mut map = Map::with_capacity(1);
            map.insert(SEALED.to_owned(), Value::String(text));
            *field = Value::Object(map);
            count += 1;
        },
    );
    count
}

/// Replaces every marked value of `value` by the erased mark: for values whose key is
/// destroyed before they are written (metadata of a day past its retention).
pub fn drop_fields(value: &mut Value) {
    walk(
        value,
        &mut String::new(),
        &|v| marked(v).is_some(),
        &mut |_, field| *field = Value::String(ERASED.to_owned()),
    );
}

/// The subjects whose keys the sealed values of `value` are under.
pub fn sealed_subjects(value: &Value, subjects: &mut BTreeSet<Uuid>) {
    match value {
        Value::Object(map) => {
            if let Some(text) = sealed(value) {
                if let Some((names, _)) = split(text) {
                    subjects.extend(names);
                }
                return;
            }
            for child in map.values() {
                sealed_subjects(child, subjects);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| sealed_subjects(v, subjects)),
        _ => {}
    }
}

/// The subjects and the ciphertext of a sealed value's text.
fn split(text: &str) -> Option<(Vec<Uuid>, &str)> {
    let rest = text.strip_prefix(VERSION)?.strip_prefix('.')?;
    let (names, ciphertext) = rest.split_once('.')?;
    let subjects = names
        .split('+')
        .map(|name| Uuid::try_parse(name).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((subjects, ciphertext))
}

/// What [`open_fields`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opened {
    /// Values opened.
    pub opened: usize,
    /// Values whose subject's key is destroyed (or was never there).
    pub erased: usize,
    /// Values that did not open under their subject's key at their place: changed, or copied
    /// from another event or field. They read as erased.
    pub refused: usize,
}

/// Opens every sealed value of `value` (at `place`) with the key `key_of` gives for its
/// subjects (`None` when any of them has no key): an opened value becomes a marked value
/// again, one without a key, or that does not open, becomes the erased mark.
pub fn open_fields(
    value: &mut Value,
    place: Place<'_>,
    key_of: &dyn Fn(&[Uuid]) -> Option<DataKey>,
) -> Opened {
    let mut found = Opened::default();
    walk(
        value,
        &mut String::new(),
        &|v| sealed(v).is_some(),
        &mut |pointer, field| {
            let opened = sealed(field).and_then(split).map(|(subjects, ciphertext)| {
                let key = key_of(&subjects).ok_or(None)?;
                let bytes = URL_SAFE_NO_PAD
                    .decode(ciphertext)
                    .map_err(|_| Some(CipherError::Malformed))?;
                let plaintext = key.open(&aad(place, pointer), &bytes).map_err(Some)?;
                serde_json::from_slice::<Value>(&plaintext)
                    .map_err(|_| Some(CipherError::Malformed))
            });
            *field = match opened {
                Some(Ok(inner)) => {
                    found.opened += 1;
                    let mut map = Map::with_capacity(1);
                    map.insert(MARKER.to_owned(), inner);
                    Value::Object(map)
                }
                Some(Err(None)) => {
                    found.erased += 1;
                    Value::String(ERASED.to_owned())
                }
                Some(Err(Some(_))) | None => {
                    found.refused += 1;
                    Value::String(ERASED.to_owned())
                }
            };
        },
    );
    found
}

/// The text of a personal string as read from the log: the value of a marked value, a plain
/// string written before values were marked, `None` for the erased mark and anything else.
pub fn known_text(value: &Value) -> Option<&str> {
    match marked(value) {
        Some(inner) => inner.as_str(),
        None => value.as_str().filter(|text| *text != ERASED),
    }
}

/// `value` as people read it: every marked value replaced by the value itself.
pub fn unmark(value: &mut Value) {
    if let Some(inner) = marked(value) {
        *value = inner.clone();
        return;
    }
    match value {
        Value::Object(map) => map.values_mut().for_each(unmark),
        Value::Array(items) => items.iter_mut().for_each(unmark),
        _ => {}
    }
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
