//! Second factors: TOTP codes (RFC 6238: HMAC-SHA-1, 30-second steps, 6 digits, one step of
//! drift either way), recovery codes, and sign-in challenges.
//!
//! A TOTP secret is 160 random bits. It is stored sealed under the person's data key
//! ([`seal_secret`]), bound to the person and to this purpose, so erasing the person shreds it.
//! A code is accepted for a step later than the last step accepted ([`accept`]), so no code
//! works twice. Recovery codes hold 80 random bits each and are stored as SHA-256 digests;
//! challenges are opaque tokens ([`crate::auth::tokens::new_opaque_token`]).

use idp_events::privacy::{CipherError, DataKey};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::{Digest as _, Sha256};
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

/// Seconds per TOTP step.
pub const STEP_SECS: u64 = 30;
/// Digits of a code.
pub const DIGITS: usize = 6;
/// Steps of drift accepted either way.
pub const SKEW_STEPS: i64 = 1;
/// Bytes of a TOTP secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
/// Recovery codes in a set.
pub const RECOVERY_CODES: usize = 10;
/// How long a sign-in challenge waits for its second factor.
pub const CHALLENGE_TTL: chrono::Duration = chrono::Duration::minutes(5);

/// A TOTP secret. `Debug` does not show it; it is zeroed when dropped.
pub struct TotpSecret(SecretBox<[u8; SECRET_LEN]>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = Box::new([0u8; SECRET_LEN]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self(SecretBox::new(bytes))
    }

    /// The secret of these bytes, if they are a secret's length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; SECRET_LEN] = bytes.try_into().ok()?;
        Some(Self(SecretBox::new(Box::new(bytes))))
    }

    /// The secret's generator; its own skew is 0, since [`accept`] walks the window itself
    /// (it needs the step that matched).
    fn totp(&self, issuer: &str, account: &str) -> TOTP {
        TOTP::new_unchecked(
            Algorithm::SHA1,
            DIGITS,
            0,
            STEP_SECS,
            self.0.expose_secret().to_vec(),
            Some(issuer.to_owned()),
            account.to_owned(),
        )
    }

    /// The secret in base32 (RFC 4648, no padding), as authenticator apps take it by hand.
    pub fn base32(&self) -> String {
        self.totp("", "").get_secret_base32()
    }

    /// The `otpauth://totp/...` URI of the secret for `account` at `issuer`.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        self.totp(issuer, account).get_url()
    }

    /// The code of step `step` (seconds since the epoch / [`STEP_SECS`]).
    pub fn code_at_step(&self, step: i64) -> String {
        self.totp("", "").generate(step_start(step))
    }
}

/// The first second of `step`.
fn step_start(step: i64) -> u64 {
    u64::try_from(step).unwrap_or(0).saturating_mul(STEP_SECS)
}

/// The step of `unix_secs`.
pub fn step_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS.cast_signed())
}

/// The step whose code `code` is, among the steps within [`SKEW_STEPS`] of `now_step` that
/// are later than `last_step`; `None` for any other code, a malformed one included.
pub fn accept(secret: &TotpSecret, code: &str, now_step: i64, last_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = secret.totp("", "");
    let mut found = None;
    // Every candidate is computed and compared (in constant time, by the crate), whichever
    // matches.
    for step in now_step - SKEW_STEPS..=now_step + SKEW_STEPS {
        if totp.check(code, step_start(step)) && step > last_step && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// The associated data of `user_id`'s sealed secret: it opens for no one else and as nothing
/// else.
fn secret_aad(user_id: Uuid) -> Vec<u8> {
    let mut aad = b"idp/second-factor/totp-secret/v1:".to_vec();
    aad.extend_from_slice(user_id.as_bytes());
    aad
}

/// `secret` sealed under the data key `key` of `user_id`.
pub fn seal_secret(key: &DataKey, user_id: Uuid, secret: &TotpSecret) -> Vec<u8> {
    key.seal(&secret_aad(user_id), secret.0.expose_secret())
}

/// The secret [`seal_secret`] sealed for `user_id` under `key`.
pub fn open_secret(key: &DataKey, user_id: Uuid, sealed: &[u8]) -> Result<TotpSecret, CipherError> {
    let bytes = SecretBox::new(Box::new(key.open(&secret_aad(user_id), sealed)?));
    TotpSecret::from_slice(bytes.expose_secret()).ok_or(CipherError::Malformed)
}

/// A new set of recovery codes, as shown once (`xxxx-xxxx-xxxx-xxxx`, base32 in lower case),
/// each with its digest as stored.
pub fn new_recovery_codes() -> Vec<(String, Vec<u8>)> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 10];
            rand::rng().fill_bytes(&mut bytes);
            let plain = base32::encode(base32::Alphabet::Rfc4648Lower { padding: false }, &bytes);
            let shown = plain
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-");
            let digest = recovery_code_digest(&shown);
            (shown, digest)
        })
        .collect()
}

/// The digest of a presented recovery code: case, dashes and spaces do not matter.
pub fn recovery_code_digest(code: &str) -> Vec<u8> {
    let normal: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(b"idp/recovery-code/v1:");
    hasher.update(normal.as_bytes());
    hasher.finalize().to_vec()
}

/// The QR code of `uri` as an SVG document, drawn here (the secret never leaves idp for it).
pub fn qr_svg(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B: the SHA-1 secret "12345678901234567890" (8-digit codes there; the
    /// last 6 digits are the 6-digit code).
    #[test]
    fn codes_match_the_rfc_test_vectors() {
        let secret = TotpSecret::from_slice(b"12345678901234567890").unwrap();
        for (time, eight) in [
            (59_i64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(secret.code_at_step(step_of(time)), eight[2..], "at {time}");
        }
    }

    #[test]
    fn a_code_is_accepted_within_one_step_and_only_after_the_last_accepted_step() {
        let secret = TotpSecret::generate();
        let now = 1_000_000;
        for drift in [-1, 0, 1] {
            let code = secret.code_at_step(now + drift);
            assert_eq!(accept(&secret, &code, now, 0), Some(now + drift));
        }
        for drift in [-2, 2] {
            let code = secret.code_at_step(now + drift);
            assert_eq!(accept(&secret, &code, now, 0), None, "drift {drift}");
        }
        let code = secret.code_at_step(now);
        assert_eq!(accept(&secret, &code, now, now), None, "replayed");
        assert_eq!(accept(&secret, &code, now, now - 1), Some(now));
        for malformed in ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", "  "] {
            assert_eq!(accept(&secret, malformed, now, 0), None, "{malformed:?}");
        }
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_person_under_their_key() {
        let key = DataKey::generate();
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = TotpSecret::generate();
        let sealed = seal_secret(&key, alice, &secret);
        let opened = open_secret(&key, alice, &sealed).unwrap();
        assert_eq!(opened.base32(), secret.base32());
        assert!(open_secret(&key, bob, &sealed).is_err());
        assert!(open_secret(&DataKey::generate(), alice, &sealed).is_err());
    }

    #[test]
    fn recovery_codes_are_distinct_and_match_however_they_are_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut digests: Vec<_> = codes.iter().map(|(_, d)| d.clone()).collect();
        digests.sort();
        digests.dedup();
        assert_eq!(digests.len(), RECOVERY_CODES);
        let (shown, digest) = &codes[0];
        assert_eq!(shown.len(), 19, "{shown}");
        assert_eq!(&recovery_code_digest(&shown.to_uppercase()), digest);
        assert_eq!(&recovery_code_digest(&shown.replace('-', "")), digest);
        assert_ne!(&recovery_code_digest("aaaa-aaaa-aaaa-aaaa"), digest);
    }

    #[test]
    fn the_uri_and_the_qr_code_carry_the_secret_for_the_account() {
        let secret = TotpSecret::generate();
        let uri = secret.otpauth_uri("idp", "ada@example.com");
        assert!(
            uri.starts_with("otpauth://totp/idp:ada%40example.com?"),
            "{uri}"
        );
        assert!(
            uri.contains(&format!("secret={}", secret.base32())),
            "{uri}"
        );
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
    }
}
