//! The `database` driver: a PostgreSQL login role and a database owned by it for each project,
//! on the server of an administrative connection pool.
//!
//! Both are named `p_<project id as 32 hex digits>`. The role's password is never stored: it is
//! derived from a server key and the project id ([`database_password`]), so the driver can set it
//! again on every run and the API can hand it to the owner with the same function.
//!
//! Concurrent runs for one project serialise the role step on a transaction-scoped advisory lock
//! (PostgreSQL may fail two concurrent `ALTER ROLE`s of one role with "tuple concurrently
//! updated"); `CREATE DATABASE` cannot run in a transaction, so a concurrent creator's
//! "already exists" counts as success instead.
//!
//! `CREATE ROLE` and `ALTER ROLE` take no bind parameters, so the password goes into the
//! statement as a quoted literal. That statement runs on a connection of its own with sqlx's
//! statement logging off, so that it cannot reach the logs through sqlx's slow-query warnings.

use std::fmt;

use serde_json::json;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use uuid::Uuid;

use super::{DriverError, StepInput};

/// The password of the project's database role (shared with the API, which hands it out).
pub use idp_events::project::database_password;

/// The name of the project's database and of its role: `p_<32 hex digits>`.
pub fn database_name(project_id: Uuid) -> String {
    format!("p_{}", project_id.simple())
}

/// Creates and removes projects' databases and roles.
#[derive(Clone)]
pub struct DatabaseDriver {
    admin: PgPool,
    password_key: Vec<u8>,
}

impl fmt::Debug for DatabaseDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseDriver")
            .field("admin", &self.admin)
            .field("password_key", &"[redacted]")
            .finish()
    }
}

impl DatabaseDriver {
    /// A driver working on the server of `admin` (a superuser, or a role with CREATEROLE and
    /// CREATEDB), deriving role passwords with `password_key`.
    pub fn new(admin: PgPool, password_key: Vec<u8>) -> Self {
        Self {
            admin,
            password_key,
        }
    }

    /// Creates the project's role (or sets its password again) and its database. Returns
    /// `{"database", "role", "host", "port"}`; never the password.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn provision(&self, input: &StepInput<'_>) -> Result<serde_json::Value, DriverError> {
        if self.password_key.is_empty() {
            return Err(DriverError::Permanent(
                "database: no key to derive role passwords is configured".into(),
            ));
        }
        let name = database_name(input.project_id);
        let password = database_password(&self.password_key, input.project_id);
        self.ensure_role(&name, &password).await?;
        self.ensure_database(&name).await?;
        let options = self.admin.connect_options();
        Ok(json!({
            "database": name,
            "role": name,
            "host": options.get_host(),
            "port": options.get_port(),
        }))
    }

    /// Drops the project's database (ending its sessions) and then its role; either may be
    /// gone already.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn deprovision(&self, input: &StepInput<'_>) -> Result<(), DriverError> {
        let name = database_name(input.project_id);
        let ident = quote_ident(&name);
        let drop_database = format!("drop database if exists {ident} with (force)");
        self.admin
            .execute(drop_database.as_str())
            .await
            .map_err(|e| failed("dropping the database", &e, None))?;

        let drop_role = async {
            let mut tx = self.admin.begin().await?;
            lock_project(&mut tx, &name).await?;
            let drop_role = format!("drop role if exists {ident}");
            tx.execute(drop_role.as_str()).await?;
            tx.commit().await
        };
        drop_role
            .await
            .map_err(|e| failed("dropping the role", &e, None))
    }

    /// Creates the role when missing and sets its login and password, under the project's lock.
    async fn ensure_role(&self, name: &str, password: &str) -> Result<(), DriverError> {
        // Checked rather than assumed: the literal below must not be able to end early.
        if !password
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DriverError::Permanent(
                "database: the derived password is not base64url".into(),
            ));
        }
        let options = (*self.admin.connect_options())
            .clone()
            .disable_statement_logging();
        let mut connection = PgConnection::connect_with(&options)
            .await
            .map_err(|e| failed("connecting to set up the role", &e, Some(password)))?;

        let ident = quote_ident(name);
        let alter = format!(
            "alter role {ident} with login password {}",
            quote_literal(password)
        );
        let mut result = Ok(());
        // A role created meanwhile by someone who does not take our lock aborts the transaction
        // with "already exists"; the second round finds the role and goes on.
        for _ in 0..2 {
            result = set_up_role(&mut connection, name, &ident, &alter).await;
            match &result {
                Err(e) if is_duplicate(e) => continue,
                _ => break,
            }
        }
        let _ = connection.close().await;
        result.map_err(|e| failed("setting up the role", &e, Some(password)))
    }

    /// Creates the database when missing; a concurrent creator winning counts as success.
    async fn ensure_database(&self, name: &str) -> Result<(), DriverError> {
        let exists: bool =
            sqlx::query_scalar("select exists (select from pg_database where datname = $1)")
                .bind(name)
                .fetch_one(&self.admin)
                .await
                .map_err(|e| failed("looking up the database", &e, None))?;
        if exists {
            return Ok(());
        }
        let ident = quote_ident(name);
        let create = format!("create database {ident} owner {ident}");
        match self.admin.execute(create.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Ok(()),
            Err(e) => Err(failed("creating the database", &e, None)),
        }
    }
}

/// One transaction: lock the project, create the role if missing, set login and password.
async fn set_up_role(
    connection: &mut PgConnection,
    name: &str,
    ident: &str,
    alter: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = connection.begin().await?;
    lock_project(&mut tx, name).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select from pg_roles where rolname = $1)")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        let create = format!("create role {ident} nologin");
        tx.execute(create.as_str()).await?;
    }
    tx.execute(alter).await?;
    tx.commit().await
}

/// Serialises this driver's catalog changes for one project until the transaction ends.
async fn lock_project(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("idp-project-database:{name}"))
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// `"name"`, with any `"` doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `E'text'`, with `\` and `'` doubled: correct whatever `standard_conforming_strings` says.
fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// The object exists already: duplicate_object, duplicate_database, or the unique index of
/// the catalog hit by a concurrent creator.
fn is_duplicate(error: &sqlx::Error) -> bool {
    matches!(
        sqlstate(error).as_deref(),
        Some("42710" | "42P04" | "23505")
    )
}

/// Whether retrying may help: the connection, the pool or the server's resources failed, or
/// the statement lost a race for a lock.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => {
            let code = sqlstate(error).unwrap_or_default();
            code.starts_with("08") // connection exception
                || code.starts_with("53") // insufficient resources, too many connections
                || code.starts_with("57P") // shutting down, cannot connect now
                || matches!(
                    code.as_str(),
                    "40001" // serialization failure
                    | "40P01" // deadlock detected
                    | "55P03" // lock not available
                    | "55006" // object in use (a template database with sessions)
                    | "57014" // statement timeout or cancelled
                )
        }
        _ => false,
    }
}

/// `database: <step> failed: <reason>`, transient or permanent, with `secret` blanked out
/// should the server ever echo it.
fn failed(step: &str, error: &sqlx::Error, secret: Option<&str>) -> DriverError {
    let reason = match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    };
    let reason = match secret {
        Some(secret) if !secret.is_empty() => reason.replace(secret, "[redacted]"),
        _ => reason,
    };
    let message = format!("database: {step} failed: {reason}");
    if is_transient(error) {
        DriverError::Transient(message)
    } else {
        DriverError::Permanent(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_43_base64url_characters_and_depends_on_key_and_project() {
        let project = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let password = database_password(b"key", project);
        assert_eq!(password.len(), 43);
        assert!(
            password
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(password, database_password(b"key", project));
        assert_ne!(password, database_password(b"other key", project));
        assert_ne!(password, database_password(b"key", Uuid::nil()));
    }

    #[test]
    fn the_name_is_p_and_32_hex_digits() {
        let project = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(database_name(project), "p_0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn quoting_doubles_the_quote_characters() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal(r"it's a \ "), r"E'it''s a \\ '");
    }

    #[test]
    fn error_texts_never_contain_the_secret() {
        let error = sqlx::Error::Protocol("unexpected reply to hunter2".into());
        let error = failed("setting up the role", &error, Some("hunter2"));
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(!error.is_permanent());
    }
}
