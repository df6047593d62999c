//! `Idempotency-Key` for requests that create: the first request with a key claims it and
//! stores its response in the same transaction as its work; a repeat with the same request gets
//! that response again, a repeat with another request is refused.
//!
//! Claiming is an `insert .. on conflict do nothing` on the key's primary key, so a concurrent
//! repeat waits for the first request's transaction: if that commits, the repeat finds the
//! stored response; if it rolls back (the first request failed), the repeat does the work
//! itself. Failed requests therefore leave nothing behind.

use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// How often a claim is tried when the key's row vanished between the insert and the read
/// (a cleanup removed it): then the next insert wins.
const CLAIM_TRIES: u32 = 3;

/// A valid `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a request, if it has one; 400 if it is not valid.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::BadRequest(
                "Idempotency-Key must be given once".into(),
            ));
        }
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_KEY_LEN
            || !bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            )));
        }
        Ok(Some(Self(String::from_utf8_lossy(bytes).into_owned())))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// SHA-256 of the canonical JSON of a parsed request. `canonical` must serialise
/// deterministically: fixed field order, maps sorted (`BTreeMap`).
pub fn request_hash<T: Serialize>(canonical: &T) -> Result<Vec<u8>, ApiError> {
    let bytes = serde_json::to_vec(canonical).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Sha256::digest(bytes).to_vec())
}

/// A response stored under a key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// Its status.
    pub status: StatusCode,
    /// Its JSON body.
    pub body: serde_json::Value,
}

/// The outcome of claiming a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is new: do the work in the same transaction and [`store`] the response.
    New,
    /// The same request was answered before: answer the same.
    Replay(StoredResponse),
}

/// Claims `owner`'s `key` for a request hashing to `request_hash`, in `tx`. Waits for a
/// concurrent request with the same key to finish. 422 if the key was used for another request.
pub async fn claim(
    tx: &mut PgConnection,
    owner: Uuid,
    key: &IdempotencyKey,
    request_hash: &[u8],
) -> Result<Claim, ApiError> {
    for _ in 0..CLAIM_TRIES {
        // The placeholder status and response are replaced by `store` before the commit; no
        // one ever reads them.
        let inserted: Option<i32> = sqlx::query_scalar(
            "insert into idempotency_keys (owner_id, key, request_hash, status, response)
             values ($1, $2, $3, 0, 'null'::jsonb)
             on conflict (owner_id, key) do nothing
             returning 1",
        )
        .bind(owner)
        .bind(key.as_str())
        .bind(request_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_some() {
            return Ok(Claim::New);
        }
        let stored: Option<(Vec<u8>, i16, serde_json::Value)> = sqlx::query_as(
            "select request_hash, status, response from idempotency_keys
              where owner_id = $1 and key = $2",
        )
        .bind(owner)
        .bind(key.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((hash, status, body)) = stored else {
            continue;
        };
        if hash != request_hash {
            return Err(ApiError::Unprocessable(
                "Idempotency-Key reused with a different request".into(),
            ));
        }
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "idempotency key holds an invalid status {status}"
                ))
            })?;
        return Ok(Claim::Replay(StoredResponse { status, body }));
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "idempotency key could neither be claimed nor read"
    )))
}

/// Stores the response of the request that claimed `owner`'s `key`, in the same transaction.
pub async fn store(
    tx: &mut PgConnection,
    owner: Uuid,
    key: &IdempotencyKey,
    response: &StoredResponse,
) -> Result<(), ApiError> {
    sqlx::query(
        "update idempotency_keys set status = $3, response = $4
          where owner_id = $1 and key = $2",
    )
    .bind(owner)
    .bind(key.as_str())
    .bind(i16::try_from(response.status.as_u16()).unwrap_or(i16::MAX))
    .bind(&response.body)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_key_is_one_to_255_visible_ascii_characters() {
        assert_eq!(IdempotencyKey::from_headers(&headers(&[])).unwrap(), None);
        let key = IdempotencyKey::from_headers(&headers(&[b"order-1"]))
            .unwrap()
            .unwrap();
        assert_eq!(key.as_str(), "order-1");
        assert!(IdempotencyKey::from_headers(&headers(&["k".repeat(255).as_bytes()])).is_ok());
        for bad in [
            &b""[..],
            "k".repeat(256).as_bytes(),
            b"with space",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
        ] {
            assert!(
                matches!(
                    IdempotencyKey::from_headers(&headers(&[bad])),
                    Err(ApiError::BadRequest(_))
                ),
                "{bad:?} was accepted"
            );
        }
        assert!(IdempotencyKey::from_headers(&headers(&[b"a", b"b"])).is_err());
    }

    #[derive(Serialize)]
    struct Canonical<'a> {
        name: &'a str,
        parameters: &'a BTreeMap<String, String>,
    }

    #[test]
    fn the_hash_ignores_the_order_parameters_were_given_in() {
        let mut a = BTreeMap::new();
        a.insert("x".to_owned(), "1".to_owned());
        a.insert("y".to_owned(), "2".to_owned());
        let mut b = BTreeMap::new();
        b.insert("y".to_owned(), "2".to_owned());
        b.insert("x".to_owned(), "1".to_owned());
        fn hash(parameters: &BTreeMap<String, String>) -> Vec<u8> {
            request_hash(&Canonical {
                name: "billing",
                parameters,
            })
            .unwrap()
        }
        assert_eq!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 32);
        a.insert("x".to_owned(), "3".to_owned());
        assert_ne!(hash(&a), hash(&b));
    }
}
