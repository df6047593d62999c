//! The API key format: `idp_`, an 8-character identifier, 256 random bits and a CRC-32
//! checksum, all in base62 (61 characters, `idp_[0-9A-Za-z]{57}`).
//!
//! The checksum lets a secret scanner (and idp itself) tell a key from random text without
//! asking anyone: a key with a wrong checksum is refused before any database lookup. The key is
//! stored only as its SHA-256; the identifier (`idp_` and its first 8 characters, the key's
//! `prefix`) is shown in lists so people can tell their keys apart.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// What every key starts with.
pub const KEY_PREFIX: &str = "idp_";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const IDENTIFIER_LEN: usize = 8;
/// 256 bits need 43 base62 digits (62^43 > 2^256).
const SECRET_LEN: usize = 43;
/// 32 bits need 6 base62 digits.
const CHECKSUM_LEN: usize = 6;
/// The length of a key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + IDENTIFIER_LEN + SECRET_LEN + CHECKSUM_LEN;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Why a text is not an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    /// Not 61 characters of `idp_` and base62.
    #[error("an API key is idp_ and 57 letters and digits")]
    Shape,
    /// The last six characters are not the checksum of the others.
    #[error("the API key's checksum is wrong (a typo, or a truncated key)")]
    Checksum,
}

/// A key as its holder has it: shown once, then only its hash is kept.
#[derive(Debug)]
pub struct NewKey {
    /// The key.
    pub secret: SecretString,
    /// Its hash, as stored.
    pub hash: [u8; 32],
    /// `idp_` and the identifier.
    pub prefix: String,
}

/// A presented key that has the right shape and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey {
    /// Its SHA-256, to look it up by.
    pub hash: [u8; 32],
}

/// A new random key.
pub fn generate() -> NewKey {
    let identifier: [u8; 8] = rand::random();
    let secret: [u8; 32] = rand::random();
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(KEY_PREFIX);
    // The identifier only tells keys apart in lists: 8 digits of a random 64-bit number.
    key.push_str(&base62(&identifier, 11)[11 - IDENTIFIER_LEN..]);
    key.push_str(&base62(&secret, SECRET_LEN));
    let checksum = CRC.checksum(key.as_bytes());
    key.push_str(&base62(&checksum.to_be_bytes(), CHECKSUM_LEN));
    let prefix = key[..KEY_PREFIX.len() + IDENTIFIER_LEN].to_owned();
    NewKey {
        hash: digest(&key),
        prefix,
        secret: SecretString::from(key),
    }
}

/// Reads a presented key, checking its shape and checksum (no lookup).
///
/// # Errors
/// [`MalformedKey`] when it is not a key idp could have made.
pub fn parse(text: &str) -> Result<PresentedKey, MalformedKey> {
    let body = text.strip_prefix(KEY_PREFIX).ok_or(MalformedKey::Shape)?;
    if text.len() != KEY_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(MalformedKey::Shape);
    }
    let (signed, checksum) = text.split_at(KEY_LEN - CHECKSUM_LEN);
    let expected = base62(&CRC.checksum(signed.as_bytes()).to_be_bytes(), CHECKSUM_LEN);
    if checksum.as_bytes() != expected.as_bytes() {
        return Err(MalformedKey::Checksum);
    }
    Ok(PresentedKey { hash: digest(text) })
}

/// Whether `text` is meant as an API key (rather than an access token).
pub fn looks_like_key(text: &str) -> bool {
    text.starts_with(KEY_PREFIX)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `bytes` as a big-endian number in `width` base62 digits (the number must fit).
fn base62(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = vec![b'0'; width];
    for digit in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for byte in &mut number {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = u8::try_from(value / 62).unwrap_or(u8::MAX);
            remainder = value % 62;
        }
        *digit = ALPHABET[remainder as usize];
    }
    String::from_utf8(digits).unwrap_or_default()
}

impl NewKey {
    /// The key, to show once.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_has_the_documented_shape_and_reads_back_to_its_hash() {
        let key = generate();
        let text = key.expose();
        assert_eq!(text.len(), 61);
        assert!(text.starts_with("idp_"));
        assert!(
            text[4..].bytes().all(|b| b.is_ascii_alphanumeric()),
            "{text}"
        );
        assert_eq!(key.prefix, text[..12]);
        assert_eq!(parse(text), Ok(PresentedKey { hash: key.hash }));
        assert_ne!(generate().expose(), text);
    }

    #[test]
    fn a_changed_character_breaks_the_checksum_and_a_wrong_shape_is_refused() {
        let key = generate();
        let text = key.expose().to_owned();
        for at in [4, 20, 55, 60] {
            let mut changed = text.clone().into_bytes();
            changed[at] = if changed[at] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(changed).unwrap();
            assert_eq!(parse(&changed), Err(MalformedKey::Checksum), "{at}");
        }
        assert_eq!(parse(&text[..60]), Err(MalformedKey::Shape));
        assert_eq!(parse(&format!("{text}0")), Err(MalformedKey::Shape));
        assert_eq!(
            parse(&text.replacen("idp_", "idq_", 1)),
            Err(MalformedKey::Shape)
        );
        let mut dashed = text.clone().into_bytes();
        dashed[10] = b'-';
        assert_eq!(
            parse(&String::from_utf8(dashed).unwrap()),
            Err(MalformedKey::Shape)
        );
        assert_eq!(parse(""), Err(MalformedKey::Shape));
        assert_eq!(parse("idp_é"), Err(MalformedKey::Shape));
    }

    #[test]
    fn base62_is_fixed_width_and_big_endian() {
        assert_eq!(base62(&[0], 3), "000");
        assert_eq!(base62(&[61], 2), "0z");
        assert_eq!(base62(&[1, 0], 3), "048"); // 256 = 4 * 62 + 8
        assert_eq!(base62(&[0xff; 32], SECRET_LEN).len(), SECRET_LEN);
        assert_ne!(base62(&[0xff; 32], SECRET_LEN).as_bytes()[0], b'0');
    }
}
