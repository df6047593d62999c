//! The `database` driver: a PostgreSQL login role and a database owned by it for each project,
//! on the server of an administrative connection pool, each reachable by that role alone.
//!
//! Both are named `p_<project id as 32 hex digits>`. The role's password is never stored: it is
//! derived from the current key of `PROJECT_DATABASE_KEYS` and the project id
//! ([`database_password`]), so the driver can set it again on every run; the step's output
//! records the key's id (`password_key_id`, never the password), with which the API derives the
//! same password to hand it to the owner.
//!
//! Isolation, in PostgreSQL's terms: privileges only add up (a role may do what it was granted,
//! what PUBLIC was granted, and what its roles were granted), there is no "deny". So:
//! - a project database is created with connections disallowed, PUBLIC's default CONNECT and
//!   TEMPORARY are revoked, CONNECT and TEMPORARY are granted to the project's role, and only
//!   then are connections allowed: no other role (no other tenant) ever gets in;
//! - each role has a connection limit (`PROVISION_DATABASE_CONNECTION_LIMIT`), so one owner
//!   cannot take the server's connections;
//! - idp's own database (`DATABASE_URL`'s) must not admit project roles. Revoking CONNECT from
//!   one role does nothing while PUBLIC holds it, so before a role may log in the driver asks
//!   idp's own server whether that role could connect there ([`DatabaseDriver::new`]'s `own`
//!   pool; on another server the role does not exist and cannot). If it could, the driver closes
//!   idp's database to PUBLIC when its role may ([`close_own_database`]: CONNECT granted to
//!   idp's role first, then revoked from PUBLIC), and otherwise fails the step permanently,
//!   naming the statement an operator has to run.
//!
//! Running the step again applies all of it again (the revokes, the grants, the limit), and
//! [`DatabaseDriver::harden`] does the same to a database provisioned earlier, optionally
//! setting the password with the current key (a rotation).
//!
//! Concurrent runs for one project serialise catalog changes on a transaction-scoped advisory
//! lock (PostgreSQL may fail two concurrent `ALTER ROLE`s or `GRANT`s on one object with "tuple
//! concurrently updated"); `CREATE DATABASE` cannot run in a transaction, so a concurrent
//! creator's "already exists" counts as success instead.
//!
//! `CREATE ROLE` and `ALTER ROLE` take no bind parameters, so the password goes into the
//! statement as a quoted literal. That statement runs on a connection of its own with sqlx's
//! statement logging off, so that it cannot reach the logs through sqlx's slow-query warnings.

use std::fmt;
use std::sync::Arc;

use idp_events::keys::{SecretKey, SecretKeys};
use idp_events::project::PASSWORD_KEY_ID;
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

/// Creates, hardens and removes projects' databases and roles.
#[derive(Clone)]
pub struct DatabaseDriver {
    admin: PgPool,
    own: PgPool,
    keys: Arc<SecretKeys>,
    connection_limit: u32,
}

impl fmt::Debug for DatabaseDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseDriver")
            .field("admin", &self.admin)
            .field("own", &self.own)
            .field("keys", &self.keys)
            .field("connection_limit", &self.connection_limit)
            .finish()
    }
}

/// What [`DatabaseDriver::harden`] does with the login's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// Leave it: the owner's password stays valid.
    Keep,
    /// Set it to the one derived with the ring's current key.
    Rotate,
}

/// What [`DatabaseDriver::harden`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hardened {
    /// The server has no role or no database of the project: nothing was changed.
    Missing,
    /// Privileges and connection limit are applied.
    Done {
        /// The key whose password the login now has, when it was set (a rotation).
        password_key_id: Option<String>,
    },
}

/// Whether PUBLIC may connect to idp's own database, after [`close_own_database`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnDatabase {
    /// The database's name.
    pub name: String,
    /// The role idp connects as (granted CONNECT when PUBLIC's was revoked).
    pub role: String,
    /// This call revoked PUBLIC's CONNECT.
    pub closed_now: bool,
    /// PUBLIC may still connect: idp's role may not change that (it neither owns the database
    /// nor is a superuser).
    pub public_may_connect: bool,
}

impl DatabaseDriver {
    /// A driver working on the server of `admin` (a superuser, or a role with CREATEROLE and
    /// CREATEDB that may act as the roles it creates), keeping project roles out of the
    /// database of `own` (idp's own, `DATABASE_URL`), deriving role passwords with the current
    /// key of `keys`, and limiting each role to `connection_limit` connections.
    pub fn new(admin: PgPool, own: PgPool, keys: Arc<SecretKeys>, connection_limit: u32) -> Self {
        Self {
            admin,
            own,
            keys,
            connection_limit,
        }
    }

    /// Creates the project's role (or sets its password and limit again) and its database,
    /// reachable by that role only. Returns `{"database", "role", "host", "port",
    /// "password_key_id"}`; never the password.
    #[tracing::instrument(skip_all, fields(project.id = %input.project_id))]
    pub async fn provision(&self, input: &StepInput<'_>) -> Result<serde_json::Value, DriverError> {
        let key = self.current_key()?;
        let name = database_name(input.project_id);
        let password = database_password(key.secret(), input.project_id);
        self.secure_role(&name, Some(&password), Create::IfMissing)
            .await?;
        self.ensure_database(&name).await?;
        self.isolate_database(&name).await?;
        let options = self.admin.connect_options();
        Ok(json!({
            "database": name,
            "role": name,
            "host": options.get_host(),
            "port": options.get_port(),
            PASSWORD_KEY_ID: key.id(),
        }))
    }

    /// Applies the isolation of [`provision`](Self::provision) to the existing database and role
    /// of `project_id` (PUBLIC's privileges revoked, CONNECT and TEMPORARY granted to the role,
    /// the connection limit, idp's own database out of reach), and with [`Password::Rotate`]
    /// sets the password derived with the current key. Creates nothing.
    #[tracing::instrument(skip_all, fields(project.id = %project_id))]
    pub async fn harden(
        &self,
        project_id: Uuid,
        password: Password,
    ) -> Result<Hardened, DriverError> {
        let name = database_name(project_id);
        let rotation = match password {
            Password::Keep => None,
            Password::Rotate => {
                let key = self.current_key()?;
                Some((
                    key.id().to_owned(),
                    database_password(key.secret(), project_id),
                ))
            }
        };
        let exists: bool = sqlx::query_scalar(
            "select exists (select from pg_roles where rolname = $1)
                and exists (select from pg_database where datname = $1)",
        )
        .bind(&name)
        .fetch_one(&self.admin)
        .await
        .map_err(|e| failed("looking up the role and the database", &e, None))?;
        if !exists {
            return Ok(Hardened::Missing);
        }
        let new_password = rotation.as_ref().map(|(_, password)| password.as_str());
        self.secure_role(&name, new_password, Create::Never).await?;
        self.isolate_database(&name).await?;
        Ok(Hardened::Done {
            password_key_id: rotation.map(|(id, _)| id),
        })
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

    /// The ring passwords are derived from.
    pub fn keys(&self) -> &SecretKeys {
        &self.keys
    }

    /// The key new passwords are derived with.
    fn current_key(&self) -> Result<&SecretKey, DriverError> {
        let key = self.keys.current();
        if key.secret().is_empty() {
            return Err(DriverError::Permanent(
                "database: no key to derive role passwords is configured".into(),
            ));
        }
        Ok(key)
    }

    /// Sets up the role under the project's lock: created without login when missing (if
    /// `create` allows), its connection limit set; then, once it is known not to reach idp's
    /// own database, login with `password` (when given).
    async fn secure_role(
        &self,
        name: &str,
        password: Option<&str>,
        create: Create,
    ) -> Result<(), DriverError> {
        // Checked rather than assumed: the literal below must not be able to end early.
        if let Some(password) = password
            && !password
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DriverError::Permanent(
                "database: the derived password is not base64url".into(),
            ));
        }
        let secret = password.unwrap_or_default();
        let options = (*self.admin.connect_options())
            .clone()
            .disable_statement_logging();
        let mut connection = PgConnection::connect_with(&options)
            .await
            .map_err(|e| failed("connecting to set up the role", &e, Some(secret)))?;
        let result = async {
            let ident = quote_ident(name);
            let limited = format!(
                "alter role {ident} with connection limit {}",
                self.connection_limit
            );
            let mut prepared = Ok(());
            // A role created meanwhile by someone who does not take our lock aborts the
            // transaction with "already exists"; the second round finds the role and goes on.
            for _ in 0..2 {
                prepared = prepare_role(&mut connection, name, &ident, &limited, create).await;
                match &prepared {
                    Err(e) if is_duplicate(e) => continue,
                    _ => break,
                }
            }
            prepared.map_err(|e| failed("setting up the role", &e, Some(secret)))?;
            self.keep_out_of_own_database(name).await?;
            if let Some(password) = password {
                let login = format!(
                    "alter role {ident} with login password {}",
                    quote_literal(password)
                );
                set_login(&mut connection, name, &login)
                    .await
                    .map_err(|e| failed("setting the role's password", &e, Some(secret)))?;
            }
            Ok(())
        }
        .await;
        let _ = connection.close().await;
        result
    }

    /// Fails unless `role` cannot connect to idp's own database, closing that database to
    /// PUBLIC first when idp's role may.
    async fn keep_out_of_own_database(&self, role: &str) -> Result<(), DriverError> {
        if self.own_database_admitting(role).await?.is_none() {
            return Ok(());
        }
        let own = close_own_database(&self.own).await?;
        let Some(database) = self.own_database_admitting(role).await? else {
            return Ok(());
        };
        let remedy = if own.public_may_connect {
            format!(
                "PUBLIC holds CONNECT on it and idp's role {:?} may not revoke it; as its owner \
                 or a superuser, grant connect on database {db} to idp's roles, then revoke \
                 connect on database {db} from public",
                own.role,
                db = quote_ident(&database),
            )
        } else {
            format!(
                "it holds CONNECT on it through a grant to itself or to a role it belongs to; \
                 revoke that grant (PUBLIC's alone is not enough: revoke connect on database {} \
                 from the grantee)",
                quote_ident(&database)
            )
        };
        Err(DriverError::Permanent(format!(
            "database: the role {role} could connect to idp's own database {database:?}: {remedy}"
        )))
    }

    /// The name of idp's own database if `role` exists on its server and may connect to it.
    async fn own_database_admitting(&self, role: &str) -> Result<Option<String>, DriverError> {
        let admitted: Option<(String, bool)> = sqlx::query_as(
            "select current_database()::text, has_database_privilege(r.oid, current_database(), 'CONNECT')
               from pg_roles r where r.rolname = $1",
        )
        .bind(role)
        .fetch_optional(&self.own)
        .await
        .map_err(|e| failed("checking access to idp's own database", &e, None))?;
        Ok(admitted.and_then(|(database, may_connect)| may_connect.then_some(database)))
    }

    /// Creates the database when missing, closed to connections until
    /// [`isolate_database`](Self::isolate_database) opens it; a concurrent creator winning
    /// counts as success.
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
        let create = format!("create database {ident} with owner {ident} allow_connections false");
        match self.admin.execute(create.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Ok(()),
            Err(e) => Err(failed("creating the database", &e, None)),
        }
    }

    /// Leaves the database to its role alone: PUBLIC's privileges revoked, CONNECT and
    /// TEMPORARY granted to the role, connections allowed; checked afterwards, because a
    /// REVOKE by a role without the right only warns.
    async fn isolate_database(&self, name: &str) -> Result<(), DriverError> {
        let ident = quote_ident(name);
        let isolate = async {
            let mut tx = self.admin.begin().await?;
            lock_project(&mut tx, name).await?;
            tx.execute(format!("revoke all on database {ident} from public").as_str())
                .await?;
            tx.execute(format!("grant connect, temporary on database {ident} to {ident}").as_str())
                .await?;
            let (public, allows_connections): (bool, bool) = sqlx::query_as(
                "select has_database_privilege('public', datname, 'CONNECT')
                        or has_database_privilege('public', datname, 'TEMPORARY'),
                        datallowconn
                   from pg_database where datname = $1",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            if !public && !allows_connections {
                tx.execute(format!("alter database {ident} with allow_connections true").as_str())
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(public)
        };
        let public = isolate
            .await
            .map_err(|e| failed("restricting the database to its role", &e, None))?;
        if public {
            return Err(DriverError::Permanent(format!(
                "database: PUBLIC keeps privileges on the database {name}: the provisioning \
                 role may not revoke them (it must be a superuser or able to act as the \
                 database's owner)"
            )));
        }
        Ok(())
    }
}

/// Closes idp's own database (the one `own` is connected to) to PUBLIC when PUBLIC may connect
/// and idp's role may change that (it owns the database or is a superuser): CONNECT is granted
/// to idp's role first, so idp keeps its access, then revoked from PUBLIC. Any other role that
/// needs idp's database then needs CONNECT granted explicitly.
pub async fn close_own_database(own: &PgPool) -> Result<OwnDatabase, DriverError> {
    let look = "select current_database()::text, current_user::text,
                       has_database_privilege('public', current_database(), 'CONNECT'),
                       coalesce((select rolsuper from pg_roles where rolname = current_user), false)
                           or pg_has_role(current_user, d.datdba, 'USAGE')
                  from pg_database d where d.datname = current_database()";
    let closing = async {
        let mut tx = own.begin().await?;
        // Concurrent drivers would otherwise race on the database's catalog row.
        sqlx::query("select pg_advisory_xact_lock(hashtextextended('idp-own-database', 0))")
            .execute(&mut *tx)
            .await?;
        let (name, role, public_may_connect, may_change): (String, String, bool, bool) =
            sqlx::query_as(look).fetch_one(&mut *tx).await?;
        let mut own = OwnDatabase {
            name,
            role,
            closed_now: false,
            public_may_connect,
        };
        if public_may_connect && may_change {
            let ident = quote_ident(&own.name);
            tx.execute(format!("grant connect on database {ident} to current_user").as_str())
                .await?;
            tx.execute(format!("revoke connect on database {ident} from public").as_str())
                .await?;
            own.public_may_connect = sqlx::query_scalar(
                "select has_database_privilege('public', current_database(), 'CONNECT')",
            )
            .fetch_one(&mut *tx)
            .await?;
            own.closed_now = !own.public_may_connect;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(own)
    };
    let own = closing
        .await
        .map_err(|e| failed("closing idp's own database to PUBLIC", &e, None))?;
    if own.closed_now {
        tracing::info!(
            database = %own.name,
            role = %own.role,
            "idp's own database no longer admits PUBLIC; CONNECT was granted to idp's role"
        );
    }
    Ok(own)
}

/// Whether [`DatabaseDriver::secure_role`] may create a missing role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    IfMissing,
    Never,
}

/// One transaction: lock the project, create the role without login if missing (and allowed),
/// set its connection limit.
async fn prepare_role(
    connection: &mut PgConnection,
    name: &str,
    ident: &str,
    limited: &str,
    create: Create,
) -> Result<(), sqlx::Error> {
    let mut tx = connection.begin().await?;
    lock_project(&mut tx, name).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select from pg_roles where rolname = $1)")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        if create == Create::Never {
            return tx.commit().await;
        }
        let create = format!("create role {ident} nologin");
        tx.execute(create.as_str()).await?;
    }
    tx.execute(limited).await?;
    tx.commit().await
}

/// One transaction: lock the project, set login and password.
async fn set_login(
    connection: &mut PgConnection,
    name: &str,
    login: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = connection.begin().await?;
    lock_project(&mut tx, name).await?;
    tx.execute(login).await?;
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
