//! Service accounts: created, listed, disabled, enabled and deleted by administrators. Each
//! change is an event of the account's stream, written with its row of `service_accounts` in
//! one transaction; disabling or deleting one revokes its keys in the same transaction, so they
//! stop at once on every API instance.

use chrono::{DateTime, Utc};
use idp_events::identity::service_account::ServiceAccountEvent;
use idp_events::identity::user::{ROLE_USER, ROLES};
use idp_events::{Append, AppendError, ExpectedVersion, Metadata, StreamId};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Access;
use crate::error::ApiError;

/// The reservation scope that keeps service account names unique.
const NAME_SCOPE: &str = "service-account-name";

/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// A service account as administrators see it.
#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
#[schema(example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "name": "ci-preview", "description": "Preview databases per branch",
                          "roles": ["user"], "created_at": "2026-12-07T10:00:00Z", "disabled": false}))]
pub struct ServiceAccountView {
    /// Its id: the owner id of its projects and keys.
    #[sqlx(rename = "account_id")]
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Its roles.
    pub roles: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Whether it is disabled (its keys were revoked; new ones may be made once enabled).
    pub disabled: bool,
}

/// A service account to create, as checked from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Its roles, `user` among them.
    pub roles: Vec<String>,
}

/// A service account's roles as requested: ones idp knows, without repeats, `user` always
/// among them (first).
pub fn parse_roles(roles: &[String]) -> Result<Vec<String>, ApiError> {
    let mut wanted = vec![ROLE_USER.to_owned()];
    for role in roles {
        if !ROLES.contains(&role.as_str()) {
            return Err(ApiError::Unprocessable(format!(
                "roles: {role:?} is not a role; roles: {}",
                ROLES.join(", ")
            )));
        }
        if !wanted.contains(role) {
            wanted.push(role.clone());
        }
    }
    Ok(wanted)
}

impl AccountSpec {
    /// Checks a request's name (1 to 63 of `a-z 0-9 -`, starting with a letter, not ending
    /// with `-`), description and roles (ones idp knows; `user` is always added).
    pub fn parse(
        name: &str,
        description: Option<&str>,
        roles: &[String],
    ) -> Result<Self, ApiError> {
        let label = (1..=63).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label {
            return Err(ApiError::Unprocessable(
                "name: 1 to 63 of a-z, 0-9 and -, starting with a letter and not ending with -"
                    .into(),
            ));
        }
        let description = description.map(str::trim).filter(|d| !d.is_empty());
        if let Some(d) = description
            && (d.chars().count() > MAX_DESCRIPTION_CHARS || d.chars().any(char::is_control))
        {
            return Err(ApiError::Unprocessable(format!(
                "description: at most {MAX_DESCRIPTION_CHARS} characters, no control characters"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            description: description.map(str::to_owned),
            roles: parse_roles(roles)?,
        })
    }
}

/// A change of a service account's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// Disable it (revoking its keys).
    Disable,
    /// Enable it again.
    Enable,
    /// Delete it (revoking its keys, freeing its name).
    Delete,
}

const SELECT_VIEW: &str = "select account_id, name, description, roles, created_at,
                                  disabled_at is not null as disabled
                             from service_accounts";

impl Access {
    /// Creates a service account, recorded with `metadata` (its administrator).
    pub async fn create_service_account(
        &self,
        metadata: Metadata,
        spec: &AccountSpec,
    ) -> Result<ServiceAccountView, ApiError> {
        let id = Uuid::now_v7();
        let event = ServiceAccountEvent::ServiceAccountCreated {
            name: spec.name.clone(),
            description: spec.description.clone(),
            roles: spec.roles.clone(),
        };
        let mut tx = self.pool.begin().await?;
        let outcome = self
            .store
            .append_in(
                &mut tx,
                Append::to(StreamId::service_account(id))
                    .expecting(ExpectedVersion::NoStream)
                    .event(event.to_new_event())
                    .metadata(metadata)
                    .claim(NAME_SCOPE, &spec.name),
            )
            .await
            .map_err(|err| match err {
                AppendError::ReservationTaken { .. } => ApiError::Conflict(format!(
                    "there is a service account named {:?} already",
                    spec.name
                )),
                other => other.into(),
            })?;
        sqlx::query(
            "insert into service_accounts (account_id, name, description, roles, created_at)
             values ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(&spec.roles)
        .bind(outcome.recorded_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ServiceAccountView {
            id,
            name: spec.name.clone(),
            description: spec.description.clone(),
            roles: spec.roles.clone(),
            created_at: outcome.recorded_at,
            disabled: false,
        })
    }

    /// Every service account that is not deleted, by name.
    pub async fn list_service_accounts(&self) -> Result<Vec<ServiceAccountView>, ApiError> {
        Ok(sqlx::query_as(&format!(
            "{SELECT_VIEW} where deleted_at is null order by name"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Service account `id`, unless deleted (404).
    pub async fn service_account(&self, id: Uuid) -> Result<ServiceAccountView, ApiError> {
        sqlx::query_as(&format!(
            "{SELECT_VIEW} where account_id = $1 and deleted_at is null"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ApiError::NotFound)
    }

    /// Replaces the roles of service account `id` (`user` always among them): its keys have
    /// the new roles from the next request on. The same roles again record nothing.
    pub async fn set_service_account_roles(
        &self,
        metadata: Metadata,
        id: Uuid,
        roles: &[String],
    ) -> Result<ServiceAccountView, ApiError> {
        let mut tx = self.pool.begin().await?;
        let current: Option<Vec<String>> = sqlx::query_scalar(
            "select roles from service_accounts
              where account_id = $1 and deleted_at is null for update",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(current) = current else {
            return Err(ApiError::NotFound);
        };
        if current != roles {
            self.store
                .append_in(
                    &mut tx,
                    Append::to(StreamId::service_account(id))
                        .expecting(ExpectedVersion::Any)
                        .event(
                            ServiceAccountEvent::ServiceAccountRolesChanged {
                                roles: roles.to_vec(),
                            }
                            .to_new_event(),
                        )
                        .metadata(metadata),
                )
                .await?;
            sqlx::query("update service_accounts set roles = $2 where account_id = $1")
                .bind(id)
                .bind(roles)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.service_account(id).await
    }

    /// Disables, enables or deletes service account `id`; disabling and deleting revoke its
    /// keys in the same transaction. A change to the state it is in records nothing.
    pub async fn change_service_account(
        &self,
        metadata: Metadata,
        id: Uuid,
        change: StateChange,
    ) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, bool)> = sqlx::query_as(
            "select name, disabled_at is not null from service_accounts
              where account_id = $1 and deleted_at is null for update",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name, disabled)) = row else {
            return Err(ApiError::NotFound);
        };
        let event = match (change, disabled) {
            (StateChange::Disable, true) | (StateChange::Enable, false) => return Ok(()),
            (StateChange::Disable, false) => ServiceAccountEvent::ServiceAccountDisabled,
            (StateChange::Enable, true) => ServiceAccountEvent::ServiceAccountEnabled,
            (StateChange::Delete, _) => ServiceAccountEvent::ServiceAccountDeleted,
        };
        let mut append = Append::to(StreamId::service_account(id))
            .expecting(ExpectedVersion::Any)
            .event(event.to_new_event())
            .metadata(metadata.clone());
        if change == StateChange::Delete {
            append = append.release(NAME_SCOPE, &name);
        }
        self.store.append_in(&mut tx, append).await?;
        if change != StateChange::Enable {
            self.revoke_all_in(&mut tx, &metadata, id).await?;
        }
        set_state(&mut tx, id, change).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn set_state(tx: &mut PgConnection, id: Uuid, change: StateChange) -> Result<(), ApiError> {
    let statement = match change {
        StateChange::Disable => {
            "update service_accounts set disabled_at = now() where account_id = $1"
        }
        StateChange::Enable => {
            "update service_accounts set disabled_at = null where account_id = $1"
        }
        StateChange::Delete => {
            "update service_accounts set deleted_at = now() where account_id = $1"
        }
    };
    sqlx::query(statement).bind(id).execute(&mut *tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_spec_checks_its_name_and_roles_and_always_has_user() {
        let spec =
            AccountSpec::parse("ci-preview", Some("  Preview  "), &["admin".into()]).unwrap();
        assert_eq!(spec.roles, ["user", "admin"]);
        assert_eq!(spec.description.as_deref(), Some("Preview"));
        for bad in ["", "Ci", "1ci", "ci-", "ci_bot", &"a".repeat(64)] {
            assert!(AccountSpec::parse(bad, None, &[]).is_err(), "{bad:?}");
        }
        assert!(AccountSpec::parse(&"a".repeat(63), None, &[]).is_ok());
        assert!(AccountSpec::parse("ci", None, &["root".into()]).is_err());
        assert!(AccountSpec::parse("ci", Some(&"d".repeat(501)), &[]).is_err());
        assert_eq!(
            AccountSpec::parse("ci", Some("  "), &[])
                .unwrap()
                .description,
            None
        );
    }
}
