//! Lookups by a personal value without storing it: a keyed blind index.
//!
//! One account per address needs to find an address among those already registered, and
//! sign-in finds an account by its address; both use HMAC-SHA256 of the normalised address
//! under a key of its own (`EMAIL_INDEX_KEYS`), never the address. Without the key the index
//! reveals nothing a dictionary of addresses could reverse. An index is `<key id>.<hex>`: a
//! ring keeps every key that still names stored values, so a lookup tries each key's index
//! (new values are indexed under the current key).

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::keys::{SecretKey, SecretKeys};

/// The blind index of one kind of value, under its ring.
#[derive(Debug, Clone)]
pub struct BlindIndex {
    keys: SecretKeys,
    domain: &'static str,
}

impl BlindIndex {
    /// An index of values of `domain` (for example `email`) under `keys`. The domain is bound
    /// into every digest, so two indexes never share values even under one key.
    pub fn new(keys: SecretKeys, domain: &'static str) -> Self {
        Self { keys, domain }
    }

    fn under(&self, key: &SecretKey, normalised: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.secret()) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(b"idp/blind-index/v1/");
        mac.update(self.domain.as_bytes());
        mac.update(b":");
        mac.update(normalised.as_bytes());
        format!("{}.{}", key.id(), hex::encode(mac.finalize().into_bytes()))
    }

    /// The index of `normalised` under the current key: what a new value is stored as.
    pub fn index(&self, normalised: &str) -> String {
        self.under(self.keys.current(), normalised)
    }

    /// The index of `normalised` under every key of the ring, current first: what a lookup
    /// looks for.
    pub fn candidates(&self, normalised: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .keys
            .iter()
            .map(|k| self.under(k, normalised))
            .collect();
        all.reverse();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> SecretKeys {
        SecretKeys::parse("EMAIL_INDEX_KEYS", spec).unwrap()
    }

    #[test]
    fn the_index_depends_on_key_domain_and_value_and_shows_none_of_them() {
        let a = BlindIndex::new(ring("a:0123456789abcdef0123456789abcdef"), "email");
        let b = BlindIndex::new(ring("b:0123456789abcdef0123456789abcdeX"), "email");
        let other = BlindIndex::new(ring("a:0123456789abcdef0123456789abcdef"), "phone");
        let ada = a.index("ada@example.com");
        assert_eq!(ada, a.index("ada@example.com"));
        assert!(ada.starts_with("a.") && ada.len() == 2 + 64);
        assert!(!ada.contains("ada"));
        assert_ne!(ada, a.index("bob@example.com"));
        assert_ne!(ada[2..], b.index("ada@example.com")[2..]);
        assert_ne!(ada, other.index("ada@example.com"));
    }

    #[test]
    fn a_lookup_finds_values_indexed_under_every_key_of_the_ring() {
        let old = BlindIndex::new(ring("a:0123456789abcdef0123456789abcdef"), "email");
        let rotated = BlindIndex::new(
            ring("a:0123456789abcdef0123456789abcdef,b:fedcba9876543210fedcba9876543210"),
            "email",
        );
        let candidates = rotated.candidates("ada@example.com");
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[0], rotated.index("ada@example.com"));
        assert!(candidates[0].starts_with("b."));
        assert_eq!(candidates[1], old.index("ada@example.com"));
    }
}
