//! Ed25519 public keys as JSON Web Keys (RFC 7517, RFC 8037): the access tokens' JWKS document
//! and the seal keys' export both write them, and verifiers given a JWKS read them back.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use serde_json::Value;

/// A public key as a JSON Web Key (`OKP`/`Ed25519`, `alg` `EdDSA`, `use` `sig`).
pub fn public_jwk(kid: &str, key: &VerifyingKey) -> Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.to_bytes()),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// A JSON Web Key Set `{"keys": [...]}` of `keys`, in order.
pub fn document<'a>(keys: impl IntoIterator<Item = (&'a str, &'a VerifyingKey)>) -> Value {
    let keys: Vec<Value> = keys
        .into_iter()
        .map(|(kid, key)| public_jwk(kid, key))
        .collect();
    serde_json::json!({ "keys": keys })
}

/// The Ed25519 keys of a JSON Web Key Set (`{"keys": [{"kty": "OKP", "crv": "Ed25519",
/// "kid": .., "x": ..}]}`) as (kid, key); other keys and malformed entries are skipped.
pub fn ed25519_keys(jwks: &Value) -> Vec<(String, VerifyingKey)> {
    jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|jwk| jwk["kty"] == "OKP" && jwk["crv"] == "Ed25519")
        .filter_map(|jwk| {
            let kid = jwk["kid"].as_str()?;
            let bytes = URL_SAFE_NO_PAD.decode(jwk["x"].as_str()?).ok()?;
            let key = VerifyingKey::from_bytes(&<[u8; 32]>::try_from(bytes).ok()?).ok()?;
            Some((kid.to_owned(), key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back_its_ed25519_keys_and_skips_the_rest() {
        let a = crate::keys::signing::generate().verifying_key();
        let b = crate::keys::signing::generate().verifying_key();
        let mut doc = document([("a", &a), ("b", &b)]);
        assert_eq!(doc["keys"][0]["kid"], "a");
        assert_eq!(doc["keys"][1]["alg"], "EdDSA");
        if let Some(keys) = doc["keys"].as_array_mut() {
            keys.push(serde_json::json!({"kty": "RSA", "kid": "r"}));
            keys.push(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "x", "x": "!"}));
        }
        assert_eq!(ed25519_keys(&doc), vec![("a".into(), a), ("b".into(), b)]);
    }
}
