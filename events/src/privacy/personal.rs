//! The type of every event field that holds data about a person.
//!
//! An event that stores an email address, a name, an address or a second-factor secret declares
//! the field as `Personal<T>`. Serialised, a known value is marked (`{"$personal": value}`), and
//! the event store seals every marked value under the person's data key before the event is
//! hashed and written ([`super::fields`]): a new event cannot put personal data in the log in
//! the clear by forgetting to encrypt it. Read back, a sealed value is opened again, or, once
//! the person is erased, reads as [`Personal::Erased`] (`"[erased]"` in every view).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The marker key of a personal value in an event's JSON before it is sealed.
pub const MARKER: &str = "$personal";

/// What a personal field reads as once its person's key is destroyed.
pub const ERASED: &str = "[erased]";

/// A value about a person: known, or erased with their key. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Personal<T> {
    /// The value, as written.
    Known(T),
    /// The person's key is destroyed: the value is gone for everyone.
    Erased,
}

impl<T> Personal<T> {
    /// The value, unless erased.
    pub fn known(&self) -> Option<&T> {
        match self {
            Self::Known(value) => Some(value),
            Self::Erased => None,
        }
    }

    /// The value, unless erased.
    pub fn into_known(self) -> Option<T> {
        match self {
            Self::Known(value) => Some(value),
            Self::Erased => None,
        }
    }

    /// Whether the value is erased.
    pub fn is_erased(&self) -> bool {
        matches!(self, Self::Erased)
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Self::Known(value)
    }
}

impl From<&str> for Personal<String> {
    fn from(value: &str) -> Self {
        Self::Known(value.to_owned())
    }
}

impl<T> fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Known(_) => f.write_str("Personal(..)"),
            Self::Erased => f.write_str("Personal(erased)"),
        }
    }
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self {
            Self::Known(value) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(MARKER, value)?;
                map.end()
            }
            Self::Erased => serializer.serialize_str(ERASED),
        }
    }
}

/// The exact string [`ERASED`], and nothing else.
struct ErasedMark;

impl<'de> Deserialize<'de> for ErasedMark {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == ERASED {
            Ok(Self)
        } else {
            Err(serde::de::Error::custom("not the erased mark"))
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr<T> {
    Marked {
        #[serde(rename = "$personal")]
        value: T,
    },
    Erased(ErasedMark),
    /// An event written before personal fields were marked: the value in the clear.
    Clear(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Repr::deserialize(deserializer)? {
            Repr::Marked { value } | Repr::Clear(value) => Ok(Self::Known(value)),
            Repr::Erased(ErasedMark) => Ok(Self::Erased),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_known_value_is_marked_and_an_erased_one_is_the_erased_mark() {
        let known = Personal::Known("ada@example.com".to_owned());
        assert_eq!(
            serde_json::to_value(&known).unwrap(),
            json!({"$personal": "ada@example.com"})
        );
        assert_eq!(
            serde_json::to_value(Personal::<String>::Erased).unwrap(),
            json!("[erased]")
        );
    }

    #[test]
    fn marked_erased_and_clear_values_all_read_back() {
        let read = |v| serde_json::from_value::<Personal<String>>(v).unwrap();
        assert_eq!(
            read(json!({"$personal": "Ada"})),
            Personal::Known("Ada".into())
        );
        assert_eq!(read(json!("[erased]")), Personal::Erased);
        assert_eq!(
            read(json!("Ada")),
            Personal::Known("Ada".into()),
            "written before marking"
        );
        let nested: Personal<Vec<u32>> =
            serde_json::from_value(json!({"$personal": [1, 2]})).unwrap();
        assert_eq!(nested.known(), Some(&vec![1, 2]));
        assert!(serde_json::from_value::<Personal<u32>>(json!("seven")).is_err());
    }

    #[test]
    fn a_personal_value_is_never_shown_in_debug() {
        let known = Personal::Known("ada@example.com".to_owned());
        assert_eq!(format!("{known:?}"), "Personal(..)");
        assert_eq!(
            format!("{:?}", Personal::<String>::Erased),
            "Personal(erased)"
        );
    }
}
