//! The state of a federated sign-in between its start and its callback, bound to the browser
//! that started it: a signed, short-lived, `HttpOnly`, `SameSite=Lax` cookie holding the
//! provider, `state`, `nonce`, the PKCE verifier, where to return and (when linking) whose
//! account it is for.
//!
//! The value is `<key id>.<payload>.<tag>`: the payload base64url JSON, the tag HMAC-SHA256
//! under `FEDERATION_STATE_KEYS` (that key serves nothing else). Nothing secret to the browser
//! is in it: the PKCE verifier proves to the provider that the code goes back to whoever
//! started the flow, which is this browser.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use idp_events::keys::SecretKeys;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// The cookie's name.
pub const COOKIE: &str = "idp_federation_flow";

/// The path it is sent to: the start and callback routes.
pub const COOKIE_PATH: &str = "/v1/auth/oidc";

/// How long a flow may take, from its start to its callback.
pub const FLOW_TTL_SECS: i64 = 600;

/// What the cookie carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The provider it was started with.
    #[serde(rename = "p")]
    pub provider: String,
    /// The `state` sent to the provider.
    #[serde(rename = "s")]
    pub state: String,
    /// The `nonce` sent to the provider (OpenID Connect only).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The PKCE code verifier.
    #[serde(rename = "v")]
    pub pkce_verifier: String,
    /// Where the front end wants to go afterwards (checked at the start).
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
    /// The signed-in account the identity is to be linked to (a link, not a sign-in).
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub link_user: Option<Uuid>,
    /// Unix time after which the flow is void.
    #[serde(rename = "e")]
    pub expires: i64,
}

/// Why a cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// Not three parts, not base64url, not JSON.
    #[error("the sign-in cookie is malformed")]
    Malformed,
    /// Its key id is not in the ring, or its tag is wrong.
    #[error("the sign-in cookie was not made by idp")]
    BadSignature,
    /// Its flow took too long.
    #[error("the sign-in took too long")]
    Expired,
}

/// Domain separation of the tag.
const CONTEXT: &[u8] = b"idp federation flow v1\n";

/// The MAC of a cookie signed with `secret` under key id `kid`, fed its `payload`.
fn mac(secret: &[u8], kid: &str, payload: &str) -> Result<Hmac<Sha256>, FlowError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| FlowError::BadSignature)?;
    mac.update(CONTEXT);
    mac.update(kid.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    Ok(mac)
}

/// The cookie value of `flow`, signed with the ring's current key.
pub fn seal(keys: &SecretKeys, flow: &Flow) -> String {
    let key = keys.current();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(flow).unwrap_or_default());
    let tag = mac(key.secret(), key.id(), &payload)
        .map(|mac| mac.finalize().into_bytes().to_vec())
        .unwrap_or_default();
    format!("{}.{payload}.{}", key.id(), URL_SAFE_NO_PAD.encode(tag))
}

/// The flow of cookie `value`, if a key of the ring signed it and it has not expired at `now`
/// (Unix seconds).
pub fn open(keys: &SecretKeys, value: &str, now: i64) -> Result<Flow, FlowError> {
    // From the right: a key id may hold dots, base64url never does.
    let mut parts = value.rsplitn(3, '.');
    let (Some(given), Some(payload), Some(kid)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(FlowError::Malformed);
    };
    let given = URL_SAFE_NO_PAD
        .decode(given)
        .map_err(|_| FlowError::Malformed)?;
    let key = keys.get(kid).ok_or(FlowError::BadSignature)?;
    mac(key.secret(), kid, payload)?
        .verify_slice(&given)
        .map_err(|_| FlowError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| FlowError::Malformed)?;
    let flow: Flow = serde_json::from_slice(&json).map_err(|_| FlowError::Malformed)?;
    if flow.expires < now {
        return Err(FlowError::Expired);
    }
    Ok(flow)
}

/// The value of cookie [`COOKIE`] in a `Cookie` header, if present.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// A `Set-Cookie` value carrying `value` (`secure`: the public base URL is https).
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={FLOW_TTL_SECS}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path={COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(secret: &str) -> SecretKeys {
        SecretKeys::single("k1", secret.as_bytes())
    }

    fn flow() -> Flow {
        Flow {
            provider: "corp".into(),
            state: "s".into(),
            nonce: Some("n".into()),
            pkce_verifier: "v".into(),
            return_to: Some("https://app.example.com/done".into()),
            link_user: None,
            expires: 1_000,
        }
    }

    #[test]
    fn a_sealed_flow_opens_until_it_expires() {
        let keys = ring("secret-secret-secret-secret-secret");
        let value = seal(&keys, &flow());
        assert_eq!(open(&keys, &value, 999), Ok(flow()));
        assert_eq!(open(&keys, &value, 1_001), Err(FlowError::Expired));
    }

    #[test]
    fn a_changed_payload_or_another_key_is_refused() {
        let keys = ring("secret-secret-secret-secret-secret");
        let value = seal(&keys, &flow());
        let mut other = flow();
        other.provider = "github".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let parts: Vec<&str> = value.split('.').collect();
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(parts.len(), 3);
        assert_eq!(open(&keys, &forged, 0), Err(FlowError::BadSignature));
        let stranger = ring("other-other-other-other-other-other");
        assert_eq!(open(&stranger, &value, 0), Err(FlowError::BadSignature));
        assert_eq!(open(&keys, "nonsense", 0), Err(FlowError::Malformed));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_strictly() {
        assert_eq!(
            from_cookie_header("a=1; idp_federation_flow=x.y.z; b=2"),
            Some("x.y.z")
        );
        assert_eq!(from_cookie_header("a=1"), None);
        let set = set_cookie("v", true);
        for attribute in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/v1/auth/oidc",
            "Max-Age=600",
        ] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set_cookie("v", false).contains("Secure"));
    }
}
