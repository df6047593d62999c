//! The keyed digest that stands for an email address no account has (`ADDRESS_DIGEST_KEYS`).
//!
//! Requests about such an address (sign-ins, emails asked for) are recorded, so that they cost
//! the same work as requests about a real account and auditors still see them, but the log must
//! not keep addresses people may have mistyped, nor a plain hash a dictionary of addresses
//! reverses: HMAC-SHA256 under the ring's current key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::SecretKeys;

/// The digest of the normalised address `email`.
pub fn digest(keys: &SecretKeys, email: &str) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(keys.current().secret()) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(b"idp/address-digest/v1:");
    mac.update(email.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The first 32 hex digits of the digest, which name a stream.
pub fn stream_name(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_depends_on_the_key_and_the_address() {
        let a = SecretKeys::single("a", b"0123456789abcdef0123456789abcdef");
        let b = SecretKeys::single("b", b"0123456789abcdef0123456789abcdeX");
        assert_eq!(digest(&a, "x@example.com"), digest(&a, "x@example.com"));
        assert_ne!(digest(&a, "x@example.com"), digest(&b, "x@example.com"));
        assert_ne!(digest(&a, "x@example.com"), digest(&a, "y@example.com"));
        assert_eq!(stream_name(&digest(&a, "x@example.com")).len(), 32);
    }
}
