//! API keys: made, listed, rotated and revoked, for people (personal access tokens) and for
//! service accounts. Each change is an event of the key's stream, written with its row of
//! `api_keys` in one transaction; the key itself is handed out once and kept only as a hash.

use chrono::{DateTime, Utc};
use idp_events::identity::api_key::{ApiKeyEvent, Scope};
use idp_events::privacy::Personal;
use idp_events::{Append, ExpectedVersion, Metadata, StreamId};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Access;
use crate::auth::api_key::{self, NewKey};
use crate::error::ApiError;

/// Keys one account may have at once (neither revoked nor expired).
pub const MAX_KEYS_PER_ACCOUNT: i64 = 50;

/// Longest name of a key, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Longest grace period of a rotation: the old key works this long at most after it.
pub const MAX_ROTATION_GRACE_SECS: u64 = 7 * 24 * 3600;

/// The grace period of a rotation when none is asked for: one hour.
pub const DEFAULT_ROTATION_GRACE_SECS: u64 = 3600;

/// Whose key it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    /// The account.
    pub id: Uuid,
    /// Whether it is a service account (else a person).
    pub service_account: bool,
}

/// A key as lists show it: never the key itself.
#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
#[schema(example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "ci-preview", "prefix": "idp_4fZk2QbA",
                          "scopes": ["projects:read", "projects:write"], "created_at": "2026-12-07T10:00:00Z",
                          "expires_at": "2027-03-01T00:00:00Z", "last_used_at": "2026-12-07T10:05:00Z"}))]
pub struct ApiKeyView {
    /// The key's id (not the key).
    #[sqlx(rename = "key_id")]
    pub id: Uuid,
    /// What its holder called it.
    pub name: String,
    /// `idp_` and the key's identifier: its first 12 characters.
    pub prefix: String,
    /// What it may be used for.
    pub scopes: Vec<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever (after a rotation: the end of the grace period).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute (`null`: never).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A key to make, as checked from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Its name.
    pub name: String,
    /// Its scopes, without repeats, in the documented order.
    pub scopes: Vec<Scope>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeySpec {
    /// Checks a request's name, scopes and expiry (a 422 naming what is wrong).
    pub fn parse(
        name: &str,
        scopes: &[String],
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Self, ApiError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::Unprocessable(format!(
                "name: 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(ApiError::Unprocessable(
                "name: no control characters".into(),
            ));
        }
        if scopes.is_empty() {
            return Err(ApiError::Unprocessable(
                "scopes: at least one of projects:read, projects:write, templates:read, audit:read, admin"
                    .into(),
            ));
        }
        let mut parsed = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let scope: Scope = scope
                .parse()
                .map_err(|e| ApiError::Unprocessable(format!("scopes: {e}")))?;
            parsed.push(scope);
        }
        parsed.sort();
        parsed.dedup();
        if let Some(at) = expires_at
            && at <= now
        {
            return Err(ApiError::Unprocessable(
                "expires_at: must be in the future".into(),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            scopes: parsed,
            expires_at,
        })
    }
}

/// A key just made: what lists show, and the key, shown this once.
#[derive(Debug)]
pub struct MadeKey {
    /// As lists show it.
    pub view: ApiKeyView,
    /// The key.
    pub key: NewKey,
}

const SELECT_VIEW: &str =
    "select key_id, name, prefix, scopes, created_at, expires_at, last_used_at from api_keys";

impl Access {
    /// Makes a key for `owner` as `spec` says, recorded with `metadata`.
    pub async fn create_key(
        &self,
        metadata: Metadata,
        owner: KeyOwner,
        spec: &KeySpec,
    ) -> Result<MadeKey, ApiError> {
        let mut tx = self.pool.begin().await?;
        lock_owner(&mut tx, owner.id).await?;
        let made = self
            .insert_key(&mut tx, metadata, owner, spec, None)
            .await?;
        tx.commit().await?;
        Ok(made)
    }

    async fn insert_key(
        &self,
        tx: &mut PgConnection,
        metadata: Metadata,
        owner: KeyOwner,
        spec: &KeySpec,
        rotated_from: Option<Uuid>,
    ) -> Result<MadeKey, ApiError> {
        let live: i64 = sqlx::query_scalar(
            "select count(*) from api_keys
              where owner_id = $1 and revoked_at is null
                and (expires_at is null or expires_at > now())
                -- A rotated key does not count: it is on its way out.
                and key_id is distinct from $2",
        )
        .bind(owner.id)
        .bind(rotated_from)
        .fetch_one(&mut *tx)
        .await?;
        if live >= MAX_KEYS_PER_ACCOUNT {
            return Err(ApiError::Conflict(format!(
                "an account may have at most {MAX_KEYS_PER_ACCOUNT} keys; revoke one first"
            )));
        }
        let key = api_key::generate();
        let key_id = Uuid::now_v7();
        let event = ApiKeyEvent::ApiKeyCreated {
            owner_id: owner.id,
            service_account: owner.service_account,
            name: Personal::Known(spec.name.clone()),
            scopes: spec.scopes.clone(),
            expires_at: spec.expires_at,
            prefix: key.prefix.clone(),
            rotated_from,
        };
        let outcome = self
            .store
            .append_in(
                &mut *tx,
                Append::to(StreamId::api_key(key_id))
                    .about(owner.id)
                    .expecting(ExpectedVersion::NoStream)
                    .event(event.to_new_event())
                    .metadata(metadata),
            )
            .await?;
        let scopes: Vec<String> = spec.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        sqlx::query(
            "insert into api_keys
                 (key_id, owner_id, service_account, key_hash, prefix, name, scopes, created_at,
                  expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(key_id)
        .bind(owner.id)
        .bind(owner.service_account)
        .bind(key.hash.as_slice())
        .bind(&key.prefix)
        .bind(&spec.name)
        .bind(&scopes)
        .bind(outcome.recorded_at)
        .bind(spec.expires_at)
        .execute(&mut *tx)
        .await?;
        Ok(MadeKey {
            view: ApiKeyView {
                id: key_id,
                name: spec.name.clone(),
                prefix: key.prefix.clone(),
                scopes,
                created_at: outcome.recorded_at,
                expires_at: spec.expires_at,
                last_used_at: None,
            },
            key,
        })
    }

    /// `owner`'s keys that still work, newest first.
    pub async fn list_keys(&self, owner: Uuid) -> Result<Vec<ApiKeyView>, ApiError> {
        Ok(sqlx::query_as(&format!(
            "{SELECT_VIEW}
              where owner_id = $1 and revoked_at is null
                and (expires_at is null or expires_at > now())
              order by created_at desc, key_id desc"
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes `owner`'s key `key_id` at once. A key revoked already is left as it is; a key
    /// of someone else is a 404, like one that does not exist.
    pub async fn revoke_key(
        &self,
        metadata: Metadata,
        owner: Uuid,
        key_id: Uuid,
    ) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<bool> = sqlx::query_scalar(
            "select revoked_at is null from api_keys where key_id = $1 and owner_id = $2 for update",
        )
        .bind(key_id)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        match state {
            None => return Err(ApiError::NotFound),
            Some(false) => return Ok(()),
            Some(true) => {}
        }
        self.revoke_in(&mut tx, metadata, key_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes key `key_id` (locked by the caller) in `tx`.
    async fn revoke_in(
        &self,
        tx: &mut PgConnection,
        metadata: Metadata,
        key_id: Uuid,
    ) -> Result<(), ApiError> {
        self.store
            .append_in(
                &mut *tx,
                Append::to(StreamId::api_key(key_id))
                    .expecting(ExpectedVersion::Any)
                    .event(ApiKeyEvent::ApiKeyRevoked.to_new_event())
                    .metadata(metadata),
            )
            .await?;
        sqlx::query("update api_keys set revoked_at = now() where key_id = $1")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Revokes every working key of `owner` in `tx` (a service account disabled or deleted);
    /// how many.
    pub(crate) async fn revoke_all_in(
        &self,
        tx: &mut PgConnection,
        metadata: &Metadata,
        owner: Uuid,
    ) -> Result<usize, ApiError> {
        let keys: Vec<Uuid> = sqlx::query_scalar(
            "select key_id from api_keys where owner_id = $1 and revoked_at is null for update",
        )
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        for key in &keys {
            self.revoke_in(tx, metadata.clone(), *key).await?;
        }
        Ok(keys.len())
    }

    /// Replaces `owner`'s working key `key_id` by a new one with the same name, scopes and
    /// expiry; the old key works `grace_secs` more (never past its own expiry).
    pub async fn rotate_key(
        &self,
        metadata: Metadata,
        owner: KeyOwner,
        key_id: Uuid,
        grace_secs: u64,
    ) -> Result<MadeKey, ApiError> {
        if grace_secs > MAX_ROTATION_GRACE_SECS {
            return Err(ApiError::Unprocessable(format!(
                "grace_period_secs: at most {MAX_ROTATION_GRACE_SECS} (7 days)"
            )));
        }
        let mut tx = self.pool.begin().await?;
        lock_owner(&mut tx, owner.id).await?;
        let old: Option<Rotated> = sqlx::query_as(
            "select name, scopes, expires_at, now() as now from api_keys
                  where key_id = $1 and owner_id = $2 and revoked_at is null
                    and (expires_at is null or expires_at > now())
                    for update",
        )
        .bind(key_id)
        .bind(owner.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(Rotated {
            name,
            scopes,
            expires_at,
            now,
        }) = old
        else {
            return Err(ApiError::NotFound);
        };
        let spec = KeySpec {
            name,
            scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            expires_at,
        };
        let grace = chrono::Duration::seconds(i64::try_from(grace_secs).unwrap_or(i64::MAX));
        let valid_until = expires_at.map_or(now + grace, |at| at.min(now + grace));
        let made = self
            .insert_key(&mut tx, metadata.clone(), owner, &spec, Some(key_id))
            .await?;
        self.store
            .append_in(
                &mut tx,
                Append::to(StreamId::api_key(key_id))
                    .expecting(ExpectedVersion::Any)
                    .event(
                        ApiKeyEvent::ApiKeyRotated {
                            replaced_by: made.view.id,
                            valid_until,
                        }
                        .to_new_event(),
                    )
                    .metadata(metadata),
            )
            .await?;
        sqlx::query("update api_keys set expires_at = $2 where key_id = $1")
            .bind(key_id)
            .bind(valid_until)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(made)
    }
}

/// The key a rotation replaces, and the database's time.
#[derive(Debug, FromRow)]
struct Rotated {
    name: String,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

/// Serialises the key changes of one account (the count of its keys is checked under it).
async fn lock_owner(tx: &mut PgConnection, owner: Uuid) -> Result<(), sqlx::Error> {
    idp_ops::database::lock_until_commit(tx, &format!("api-keys/{owner}")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_spec_names_what_is_wrong() {
        let now = Utc::now();
        let scopes = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let refused = |name: &str, s: &[&str], at: Option<DateTime<Utc>>| match KeySpec::parse(
            name,
            &scopes(s),
            at,
            now,
        ) {
            Err(ApiError::Unprocessable(detail)) => detail,
            other => panic!("not refused: {other:?}"),
        };
        assert!(refused("", &["admin"], None).starts_with("name:"));
        assert!(refused(&"x".repeat(65), &["admin"], None).starts_with("name:"));
        assert!(refused("a\tb", &["admin"], None).contains("control"));
        assert!(refused("ci", &[], None).starts_with("scopes:"));
        assert!(refused("ci", &["projects:delete"], None).contains("unknown scope"));
        assert!(refused("ci", &["admin"], Some(now)).contains("future"));
        let spec = KeySpec::parse(
            &"x".repeat(64),
            &scopes(&["projects:write", "projects:read", "projects:write"]),
            Some(now + chrono::Duration::seconds(1)),
            now,
        )
        .unwrap();
        assert_eq!(spec.scopes, [Scope::ProjectsRead, Scope::ProjectsWrite]);
    }
}
