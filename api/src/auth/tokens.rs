//! Access tokens (signed JWTs) and refresh tokens (opaque, stored as hashes).
//!
//! Access tokens are short-lived JWTs signed with the newest key of the [`KeyRing`] (EdDSA,
//! header `kid` and `typ: "at+jwt"`). Verification pins the algorithm to EdDSA, picks the key by
//! `kid`, and checks `typ`, `iss`, `aud`, `exp` and `nbf` (30 s leeway).
//!
//! Refresh tokens (and sign-in challenges) are 256 random bits; only their SHA-256 hash is
//! stored.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::keys::KeyRing;

/// The JWT `typ` header of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The default access token lifetime.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not before, seconds since the epoch.
    pub nbf: i64,
    /// Token id (UUID v7).
    pub jti: Uuid,
    /// The session id.
    pub sid: Uuid,
    /// Role names.
    pub roles: Vec<String>,
}

/// Why an access token was not accepted (or could not be issued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is malformed, forged, not meant for us, or not yet valid. The reason is for
    /// logs only; never send it to the client.
    #[error("invalid access token")]
    Invalid(String),
    /// The token expired more than the leeway ago.
    #[error("access token expired")]
    Expired,
}

/// Access token settings.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// The `iss` claim put into and required of tokens.
    pub issuer: String,
    /// The `aud` claim put into and required of tokens.
    pub audience: String,
    /// Lifetime of new access tokens ([`DEFAULT_ACCESS_TTL`] unless configured).
    pub access_ttl: Duration,
}

/// Issues and verifies access tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    keys: Arc<KeyRing>,
    config: TokenConfig,
}

impl Tokens {
    /// Tokens signed by `keys` with the given settings.
    pub fn new(keys: Arc<KeyRing>, config: TokenConfig) -> Self {
        Self { keys, config }
    }

    /// The key ring (for the JWKS document).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Issues an access token. Returns (token, expires_in seconds).
    ///
    /// Fails (with [`TokenError::Invalid`]) only if the lifetime is absurd or signing fails.
    pub fn issue_access(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: &[String],
    ) -> Result<(String, u64), TokenError> {
        let ttl = self.config.access_ttl.as_secs();
        let now = chrono::Utc::now().timestamp();
        let exp = i64::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .ok_or_else(|| {
                TokenError::Invalid(format!("access token lifetime too long: {ttl} s"))
            })?;
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user_id,
            exp,
            iat: now,
            nbf: now,
            jti: Uuid::now_v7(),
            sid: session_id,
            roles: roles.to_vec(),
        };
        let (kid, key) = self.keys.signing_key();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(kid.to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| TokenError::Invalid(format!("signing failed: {e}")))?;
        Ok((token, ttl))
    }

    /// Verifies an access token and returns its claims.
    ///
    /// The signature is checked with the key named by `kid` (unknown kid => Invalid), the
    /// algorithm is pinned to EdDSA (any other `alg`, including `none` and HS256, => Invalid),
    /// `typ` must be `at+jwt` (`application/at+jwt` and any letter case are accepted, as RFC 9068
    /// allows), `crit` must be absent, `iss`/`aud` must match, `exp` is checked with a 30 s leeway
    /// (=> Expired beyond it), `nbf` is respected, and every claim must be present.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let invalid = |reason: &str| TokenError::Invalid(reason.to_owned());

        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("bad header: {:?}", e.kind())))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} not allowed",
                header.alg
            )));
        }
        match header.typ.as_deref() {
            Some(typ) if is_access_token_typ(typ) => {}
            Some(typ) => return Err(TokenError::Invalid(format!("typ {typ:?} not allowed"))),
            None => return Err(invalid("typ missing")),
        }
        if header.crit.is_some() {
            return Err(invalid("crit header not supported"));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("kid missing"))?;
        let key = self
            .keys
            .decoding_key(kid)
            .ok_or_else(|| TokenError::Invalid(format!("unknown kid {kid:?}")))?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);

        match jsonwebtoken::decode::<AccessClaims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                kind => Err(TokenError::Invalid(format!("{kind:?}"))),
            },
        }
    }
}

/// Whether a JWT `typ` header names an access token. Media types compare case-insensitively
/// and may omit the `application/` prefix.
fn is_access_token_typ(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    typ == ACCESS_TOKEN_TYP || typ.strip_prefix("application/") == Some(ACCESS_TOKEN_TYP)
}

/// A new opaque token (a refresh token, a sign-in challenge): 32 random bytes, base64url
/// without padding (43 chars). Returns (token, sha256 hash bytes).
pub fn new_opaque_token() -> (String, Vec<u8>) {
    let token = random_token();
    let hash = hash_opaque_token(&token);
    (token, hash)
}

/// 256 random bits, base64url (43 characters): an opaque token, a `state`, a `nonce`.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// SHA-256 of a presented opaque token, for lookup.
pub fn hash_opaque_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::{Value, json};

    const ISS: &str = "https://idp.test";
    const AUD: &str = "idp-api";

    fn config() -> TokenConfig {
        TokenConfig {
            issuer: ISS.into(),
            audience: AUD.into(),
            access_ttl: DEFAULT_ACCESS_TTL,
        }
    }

    fn ring(kids: &[&str]) -> Arc<KeyRing> {
        let keys: Vec<(String, String)> = kids
            .iter()
            .map(|kid| ((*kid).to_owned(), KeyRing::generate_pem().unwrap().1))
            .collect();
        Arc::new(KeyRing::from_pems(&keys).unwrap())
    }

    fn tokens() -> Tokens {
        Tokens::new(ring(&["k1"]), config())
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims_json(exp: i64, nbf: i64) -> Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": Uuid::new_v4(), "exp": exp, "iat": now(), "nbf": nbf,
            "jti": Uuid::now_v7(), "sid": Uuid::new_v4(), "roles": ["member"],
        })
    }

    /// Signs `claims` with the ring's signing key under `header`.
    fn sign(tokens: &Tokens, header: &Header, claims: &Value) -> String {
        let (_, key) = tokens.keys().signing_key();
        jsonwebtoken::encode(header, claims, key).unwrap()
    }

    fn at_header(kid: &str) -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        header.kid = Some(kid.into());
        header
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn assert_invalid(tokens: &Tokens, token: &str) {
        match tokens.verify_access(token) {
            Err(TokenError::Invalid(_)) => {}
            other => panic!("expected Invalid for {token}, got {other:?}"),
        }
    }

    #[test]
    fn issue_then_verify_round_trip() {
        let tokens = tokens();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let roles = vec!["admin".to_owned(), "member".to_owned()];
        let before = now();
        let (token, expires_in) = tokens.issue_access(user, session, &roles).unwrap();
        assert_eq!(expires_in, 900);

        let header = decode_part(&parts(&token)[0]);
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"], "k1");

        let claims = tokens.verify_access(&token).unwrap();
        assert_eq!(claims.iss, ISS);
        assert_eq!(claims.aud, AUD);
        assert_eq!(claims.sub, user);
        assert_eq!(claims.sid, session);
        assert_eq!(claims.roles, roles);
        assert!(claims.iat >= before && claims.iat <= now());
        assert_eq!(claims.nbf, claims.iat);
        assert_eq!(claims.exp, claims.iat + 900);
        assert_eq!(claims.jti.get_version_num(), 7);

        let (second, _) = tokens.issue_access(user, session, &roles).unwrap();
        assert_ne!(tokens.verify_access(&second).unwrap().jti, claims.jti);
    }

    #[test]
    fn jwks_key_verifies_issued_tokens() {
        let tokens = tokens();
        let (token, _) = tokens
            .issue_access(Uuid::new_v4(), Uuid::new_v4(), &[])
            .unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(tokens.keys().jwks()).unwrap();
        let jwk = set.find("k1").unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUD]);
        let data = jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims.iss, ISS);
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let (_, old_pem) = KeyRing::generate_pem().unwrap();
        let (_, new_pem) = KeyRing::generate_pem().unwrap();
        let old_ring = KeyRing::from_pems(&[("old".into(), old_pem.clone())]).unwrap();
        let old = Tokens::new(Arc::new(old_ring), config());
        let (old_token, _) = old
            .issue_access(Uuid::new_v4(), Uuid::new_v4(), &[])
            .unwrap();

        let rotated_ring =
            KeyRing::from_pems(&[("old".into(), old_pem), ("new".into(), new_pem)]).unwrap();
        let rotated = Tokens::new(Arc::new(rotated_ring), config());
        assert_eq!(rotated.keys().signing_kid(), "new");
        let kids: Vec<_> = rotated.keys().jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, ["old", "new"]);

        assert!(rotated.verify_access(&old_token).is_ok());
        let (new_token, _) = rotated
            .issue_access(Uuid::new_v4(), Uuid::new_v4(), &[])
            .unwrap();
        assert_eq!(decode_part(&parts(&new_token)[0])["kid"], "new");
        assert!(rotated.verify_access(&new_token).is_ok());
        // The old ring does not know the new key.
        assert_invalid(&old, &new_token);
    }

    #[test]
    fn alg_none_is_rejected() {
        let tokens = tokens();
        let claims = claims_json(now() + 600, now());
        for alg in ["none", "None", "NONE"] {
            let header = json!({"alg": alg, "typ": "at+jwt", "kid": "k1"});
            let token = format!("{}.{}.", b64(&header), b64(&claims));
            assert_invalid(&tokens, &token);
        }
        // A real signature with the header swapped to "none".
        let (valid, _) = tokens
            .issue_access(Uuid::new_v4(), Uuid::new_v4(), &[])
            .unwrap();
        let p = parts(&valid);
        let header = json!({"alg": "none", "typ": "at+jwt", "kid": "k1"});
        assert_invalid(&tokens, &format!("{}.{}.{}", b64(&header), p[1], p[2]));
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_rejected() {
        let tokens = tokens();
        let jwks = tokens.keys().jwks();
        let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
        let public = URL_SAFE_NO_PAD.decode(&x).unwrap();
        let claims = claims_json(now() + 600, now());
        for secret in [public.as_slice(), x.as_bytes()] {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let mut header = Header::new(alg);
                header.typ = Some(ACCESS_TOKEN_TYP.into());
                header.kid = Some("k1".into());
                let token =
                    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
                        .unwrap();
                assert_invalid(&tokens, &token);
            }
        }
    }

    #[test]
    fn wrong_audience_or_issuer_is_rejected() {
        let tokens = tokens();
        let keys = Arc::clone(&tokens.keys);
        let other_aud = Tokens::new(
            keys.clone(),
            TokenConfig {
                audience: "other-api".into(),
                ..config()
            },
        );
        let other_iss = Tokens::new(
            keys,
            TokenConfig {
                issuer: "https://evil.test".into(),
                ..config()
            },
        );
        for issuer in [other_aud, other_iss] {
            let (token, _) = issuer
                .issue_access(Uuid::new_v4(), Uuid::new_v4(), &[])
                .unwrap();
            assert!(issuer.verify_access(&token).is_ok());
            assert_invalid(&tokens, &token);
        }
        // Audience given as an array that does not contain ours.
        let mut claims = claims_json(now() + 600, now());
        claims["aud"] = json!(["other-api"]);
        assert_invalid(&tokens, &sign(&tokens, &at_header("k1"), &claims));
    }

    #[test]
    fn typ_must_be_access_token() {
        let tokens = tokens();
        let claims = claims_json(now() + 600, now());
        let mut header = at_header("k1");
        for typ in [Some("JWT"), Some("jwt"), Some("at+jwt2"), Some(""), None] {
            header.typ = typ.map(str::to_owned);
            assert_invalid(&tokens, &sign(&tokens, &header, &claims));
        }
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            header.typ = Some(typ.into());
            assert!(
                tokens
                    .verify_access(&sign(&tokens, &header, &claims))
                    .is_ok(),
                "{typ}"
            );
        }
    }

    #[test]
    fn tampering_is_rejected() {
        let tokens = tokens();
        let (token, _) = tokens
            .issue_access(Uuid::new_v4(), Uuid::new_v4(), &["member".to_owned()])
            .unwrap();
        let p = parts(&token);

        // Payload changed, signature kept.
        let mut claims = decode_part(&p[1]);
        claims["roles"] = json!(["admin"]);
        assert_invalid(&tokens, &format!("{}.{}.{}", p[0], b64(&claims), p[2]));
        let mut claims = decode_part(&p[1]);
        claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 3600);
        assert_invalid(&tokens, &format!("{}.{}.{}", p[0], b64(&claims), p[2]));

        // Signature changed.
        let mut signature = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
        signature[10] ^= 0x01;
        let forged = URL_SAFE_NO_PAD.encode(&signature);
        assert_invalid(&tokens, &format!("{}.{}.{forged}", p[0], p[1]));
        // Signature removed or truncated.
        assert_invalid(&tokens, &format!("{}.{}.", p[0], p[1]));
        assert_invalid(&tokens, &format!("{}.{}.{}", p[0], p[1], &p[2][..40]));
        // Header changed (kid pointing elsewhere).
        let mut header = decode_part(&p[0]);
        header["kid"] = json!("k2");
        assert_invalid(&tokens, &format!("{}.{}.{}", b64(&header), p[1], p[2]));
    }

    #[test]
    fn unknown_or_missing_kid_is_rejected() {
        let tokens = tokens();
        let stranger = Tokens::new(ring(&["k2"]), config());
        let (token, _) = stranger
            .issue_access(Uuid::new_v4(), Uuid::new_v4(), &[])
            .unwrap();
        assert_invalid(&tokens, &token);

        // Another key under our kid.
        let impostor = Tokens::new(ring(&["k1"]), config());
        let (token, _) = impostor
            .issue_access(Uuid::new_v4(), Uuid::new_v4(), &[])
            .unwrap();
        assert_invalid(&tokens, &token);

        let claims = claims_json(now() + 600, now());
        let mut header = at_header("k1");
        header.kid = None;
        assert_invalid(&tokens, &sign(&tokens, &header, &claims));
    }

    #[test]
    fn garbage_and_refresh_tokens_are_rejected() {
        let tokens = tokens();
        let (refresh, _) = new_opaque_token();
        for token in [refresh.as_str(), "", ".", "..", "a.b.c", "not a token"] {
            assert_invalid(&tokens, token);
        }
    }

    #[test]
    fn missing_claims_and_crit_are_rejected() {
        let tokens = tokens();
        for claim in [
            "iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid", "roles",
        ] {
            let mut claims = claims_json(now() + 600, now());
            claims.as_object_mut().unwrap().remove(claim);
            assert_invalid(&tokens, &sign(&tokens, &at_header("k1"), &claims));
        }
        let mut header = at_header("k1");
        header.crit = Some(vec!["exp".into()]);
        let claims = claims_json(now() + 600, now());
        assert_invalid(&tokens, &sign(&tokens, &header, &claims));
    }

    #[test]
    fn expiry_uses_a_thirty_second_leeway() {
        let tokens = tokens();
        let header = at_header("k1");
        let within = sign(&tokens, &header, &claims_json(now() - 10, now() - 900));
        assert!(tokens.verify_access(&within).is_ok());
        let beyond = sign(&tokens, &header, &claims_json(now() - 60, now() - 900));
        assert_eq!(tokens.verify_access(&beyond), Err(TokenError::Expired));
        let long_ago = sign(&tokens, &header, &claims_json(1_000, 0));
        assert_eq!(tokens.verify_access(&long_ago), Err(TokenError::Expired));
    }

    #[test]
    fn not_before_is_respected() {
        let tokens = tokens();
        let header = at_header("k1");
        let soon = sign(&tokens, &header, &claims_json(now() + 900, now() + 10));
        assert!(tokens.verify_access(&soon).is_ok());
        let later = sign(&tokens, &header, &claims_json(now() + 900, now() + 300));
        assert_invalid(&tokens, &later);
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, hash_a) = new_opaque_token();
        let (b, hash_b) = new_opaque_token();
        assert_eq!(a.len(), 43);
        assert_eq!(b.len(), 43);
        assert_ne!(a, b);
        assert_ne!(hash_a, hash_b);
        assert_eq!(hash_a.len(), 32);
        assert_eq!(hash_a, hash_opaque_token(&a));
        assert_eq!(hash_b, hash_opaque_token(&b));
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_eq!(
            hex::encode(hash_opaque_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
