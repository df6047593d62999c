//! The provisioning drivers against real systems: a PostgreSQL server (the one of
//! `DATABASE_URL`), git on a temporary directory, and an HTTP server started by each test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use idp_events::keys::SecretKeys;
use idp_worker::provision::drivers::{
    DatabaseDriver, DriverError, Hardened, Password, RepositoryDriver, StepInput, WebhookDriver,
    database_password, signature,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};
use url::Url;
use uuid::Uuid;

const PASSWORD_KEY: &[u8] = b"test-database-password-key-0123456789";
/// The id of [`PASSWORD_KEY`] in the ring of these tests.
const DATABASE_KEY_ID: &str = "drivers-key";
/// The connection limit of project roles in these tests.
const CONNECTION_LIMIT: u32 = 3;

fn password_keys() -> Arc<SecretKeys> {
    Arc::new(SecretKeys::single(DATABASE_KEY_ID, PASSWORD_KEY))
}

/// The driver as the worker builds it: `admin`'s server, whose database stands for idp's own.
fn database_driver(admin: &PgPool) -> DatabaseDriver {
    DatabaseDriver::new(
        admin.clone(),
        admin.clone(),
        password_keys(),
        CONNECTION_LIMIT,
    )
}

/// A project's inputs, owned, so that tests can lend them out as a [`StepInput`].
struct Project {
    id: Uuid,
    name: String,
    owner_id: Uuid,
    parameters: BTreeMap<String, String>,
    files: BTreeMap<String, String>,
}

impl Project {
    fn new(name: &str) -> Self {
        Self::with_id(name, Uuid::now_v7())
    }

    /// Project `name` with id `id` (as the API makes them: UUIDv7) and files of its own.
    fn with_id(name: &str, id: Uuid) -> Self {
        Self {
            id,
            name: name.to_owned(),
            owner_id: Uuid::new_v4(),
            parameters: BTreeMap::from([("language".to_owned(), "rust".to_owned())]),
            files: BTreeMap::from([
                (
                    "README.md".to_owned(),
                    format!("# {name}\n\nProject {id}.\n"),
                ),
                (
                    "src/main.rs".to_owned(),
                    "fn main() {\n    println!(\"hello\");\n}\n".to_owned(),
                ),
                (
                    ".github/workflows/ci.yml".to_owned(),
                    "on: push\n".to_owned(),
                ),
            ]),
        }
    }

    fn with_file(mut self, path: &str, content: &str) -> Self {
        self.files.insert(path.to_owned(), content.to_owned());
        self
    }

    fn input(&self) -> StepInput<'_> {
        StepInput {
            project_id: self.id,
            project_name: &self.name,
            owner_id: self.owner_id,
            template: "rust-service",
            template_version: 3,
            parameters: &self.parameters,
            files: &self.files,
        }
    }

    fn database_name(&self) -> String {
        format!("p_{}", self.id.simple())
    }
}

fn assert_permanent<T: std::fmt::Debug>(result: Result<T, DriverError>) -> String {
    match result {
        Err(error @ DriverError::Permanent(_)) => error.to_string(),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

fn assert_transient<T: std::fmt::Debug>(result: Result<T, DriverError>) -> String {
    match result {
        Err(error @ DriverError::Transient(_)) => error.to_string(),
        other => panic!("expected a transient error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// database

async fn count(pool: &PgPool, sql: &str, name: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn databases_named(pool: &PgPool, name: &str) -> i64 {
    count(
        pool,
        "select count(*) from pg_database where datname = $1",
        name,
    )
    .await
}

async fn roles_named(pool: &PgPool, name: &str) -> i64 {
    count(
        pool,
        "select count(*) from pg_roles where rolname = $1",
        name,
    )
    .await
}

/// A connection to the project's database as its role, with the derived password.
async fn connect_as_project(admin: &PgPool, project: &Project) -> PgConnection {
    let name = project.database_name();
    let options: PgConnectOptions = (*admin.connect_options())
        .clone()
        .username(&name)
        .password(&database_password(PASSWORD_KEY, project.id))
        .database(&name);
    PgConnection::connect_with(&options).await.unwrap()
}

/// Whether a SCRAM-SHA-256 verifier as PostgreSQL stores it (`SCRAM-SHA-256$<iterations>:<salt>$
/// <StoredKey>:<ServerKey>`, RFC 5802/7677) was made from `password`. Needed because the test
/// server may trust local connections, which then succeed whatever the password.
fn scram_verifier_matches(verifier: &str, password: &str) -> bool {
    type HmacSha256 = Hmac<Sha256>;
    let hmac = |key: &[u8], data: &[u8]| {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes()
    };
    let rest = verifier.strip_prefix("SCRAM-SHA-256$").unwrap();
    let (parameters, keys) = rest.split_once('$').unwrap();
    let (iterations, salt) = parameters.split_once(':').unwrap();
    let (stored_key, server_key) = keys.split_once(':').unwrap();
    let iterations: u32 = iterations.parse().unwrap();
    let salt = STANDARD.decode(salt).unwrap();

    // PBKDF2-HMAC-SHA256, one block (the password is ASCII, so SASLprep leaves it alone).
    let mut block = salt.clone();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password.as_bytes(), &block);
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u.iter()) {
            *s ^= x;
        }
    }
    let client_key = hmac(&salted, b"Client Key");
    STANDARD.encode(Sha256::digest(client_key)) == stored_key
        && STANDARD.encode(hmac(&salted, b"Server Key")) == server_key
}

#[sqlx::test(migrations = false)]
async fn provisioning_a_database_creates_a_role_and_a_database_that_the_derived_password_opens(
    admin: PgPool,
) {
    let project = Project::new("billing");
    let name = project.database_name();
    let driver = database_driver(&admin);

    let outputs = driver.provision(&project.input()).await.unwrap();

    let options = admin.connect_options();
    assert_eq!(
        outputs,
        json!({
            "database": name,
            "role": name,
            "host": options.get_host(),
            "port": options.get_port(),
            "password_key_id": DATABASE_KEY_ID,
        })
    );
    let password = database_password(PASSWORD_KEY, project.id);
    assert!(!outputs.to_string().contains(&password));

    let mut connection = connect_as_project(&admin, &project).await;
    let (user, database): (String, String) =
        sqlx::query_as("select current_user::text, current_database()::text")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(
        (user.as_str(), database.as_str()),
        (name.as_str(), name.as_str())
    );
    connection.close().await.unwrap();

    let (verifier, can_login, owner): (String, bool, String) = sqlx::query_as(
        "select a.rolpassword, a.rolcanlogin, pg_get_userbyid(d.datdba)::text
           from pg_authid a, pg_database d where a.rolname = $1 and d.datname = $1",
    )
    .bind(&name)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(can_login);
    assert_eq!(owner, name);
    assert!(scram_verifier_matches(&verifier, &password), "{verifier}");
    assert!(!scram_verifier_matches(&verifier, "not-the-password"));

    driver.deprovision(&project.input()).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn provisioning_a_database_twice_or_concurrently_leaves_one_database_and_one_role(
    admin: PgPool,
) {
    let driver = database_driver(&admin);
    let again = Project::new("again");
    let raced = Project::new("raced");

    let first = driver.provision(&again.input()).await.unwrap();
    let second = driver.provision(&again.input()).await.unwrap();
    assert_eq!(first, second);

    let input = raced.input();
    let (a, b, c) = tokio::join!(
        driver.provision(&input),
        driver.provision(&input),
        driver.provision(&input),
    );
    assert_eq!(a.unwrap(), b.unwrap());
    c.unwrap();

    for project in [&again, &raced] {
        let name = project.database_name();
        assert_eq!(databases_named(&admin, &name).await, 1);
        assert_eq!(roles_named(&admin, &name).await, 1);
        connect_as_project(&admin, project)
            .await
            .close()
            .await
            .unwrap();
        driver.deprovision(&project.input()).await.unwrap();
    }
}

#[sqlx::test(migrations = false)]
async fn deprovisioning_a_database_removes_it_and_its_role_even_with_sessions_open_and_twice(
    admin: PgPool,
) {
    let project = Project::new("gone");
    let name = project.database_name();
    let driver = database_driver(&admin);
    driver.provision(&project.input()).await.unwrap();
    let session = connect_as_project(&admin, &project).await;

    driver.deprovision(&project.input()).await.unwrap();
    assert_eq!(databases_named(&admin, &name).await, 0);
    assert_eq!(roles_named(&admin, &name).await, 0);
    drop(session);

    driver.deprovision(&project.input()).await.unwrap();
    driver
        .deprovision(&Project::new("never").input())
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_database_server_refusing_the_admin_is_permanent_and_the_error_has_no_password(
    admin: PgPool,
) {
    let weak_role = format!("weak_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("create role {weak_role} login"))
        .execute(&admin)
        .await
        .unwrap();
    let weak = PgPoolOptions::new()
        .max_connections(2)
        .connect_with((*admin.connect_options()).clone().username(&weak_role))
        .await
        .unwrap();
    let project = Project::new("refused");
    let driver = DatabaseDriver::new(weak.clone(), admin.clone(), password_keys(), 10);

    let error = assert_permanent(driver.provision(&project.input()).await);

    assert!(
        error.starts_with("database: setting up the role failed"),
        "{error}"
    );
    assert!(!error.contains(&database_password(PASSWORD_KEY, project.id)));
    weak.close().await;
    sqlx::raw_sql(&format!("drop role {weak_role}"))
        .execute(&admin)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn an_unreachable_database_server_is_transient(admin: PgPool) {
    let port = closed_port().await;
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(
            (*admin.connect_options())
                .clone()
                .host("127.0.0.1")
                .port(port),
        );
    let driver = DatabaseDriver::new(unreachable.clone(), unreachable, password_keys(), 10);
    let project = Project::new("offline");

    assert_transient(driver.provision(&project.input()).await);
    assert_transient(driver.deprovision(&project.input()).await);
}

/// Runs each statement on its own (`CREATE DATABASE` refuses to share a transaction).
async fn run(admin: &PgPool, statements: &[String]) {
    for statement in statements {
        sqlx::raw_sql(statement).execute(admin).await.unwrap();
    }
}

/// Connects over TCP as project `project`'s role, with its derived password, to `database`.
async fn connect_as(
    admin: &PgPool,
    project: &Project,
    database: &str,
) -> Result<PgConnection, sqlx::Error> {
    let options: PgConnectOptions = (*admin.connect_options())
        .clone()
        .host("127.0.0.1")
        .username(&project.database_name())
        .password(&database_password(PASSWORD_KEY, project.id))
        .database(database);
    PgConnection::connect_with(&options).await
}

/// The SQLSTATE of a refused connection.
fn refusal(result: Result<PgConnection, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(db)) => db.code().unwrap_or_default().into_owned(),
        Err(other) => panic!("expected the server to refuse, got {other}"),
        Ok(_) => panic!("expected the server to refuse the connection"),
    }
}

async fn own_database(admin: &PgPool) -> String {
    sqlx::query_scalar("select current_database()::text")
        .fetch_one(admin)
        .await
        .unwrap()
}

async fn public_may(admin: &PgPool, privilege: &str, database: &str) -> bool {
    sqlx::query_scalar("select has_database_privilege('public', $1, $2)")
        .bind(database)
        .bind(privilege)
        .fetch_one(admin)
        .await
        .unwrap()
}

async fn connection_limit(admin: &PgPool, role: &str) -> i32 {
    sqlx::query_scalar("select rolconnlimit from pg_roles where rolname = $1")
        .bind(role)
        .fetch_one(admin)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_project_login_reaches_its_own_database_only_neither_another_projects_nor_idps(
    admin: PgPool,
) {
    let idp = own_database(&admin).await;
    assert!(
        public_may(&admin, "CONNECT", &idp).await,
        "a fresh database admits PUBLIC, as idp's does by default"
    );
    let driver = database_driver(&admin);
    let alice = Project::new("alice");
    let bob = Project::new("bob");
    driver.provision(&alice.input()).await.unwrap();
    driver.provision(&bob.input()).await.unwrap();

    connect_as(&admin, &alice, &alice.database_name())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    // 42501: insufficient_privilege ("permission denied for database").
    assert_eq!(
        refusal(connect_as(&admin, &alice, &bob.database_name()).await),
        "42501"
    );
    assert_eq!(
        refusal(connect_as(&admin, &bob, &alice.database_name()).await),
        "42501"
    );
    assert_eq!(refusal(connect_as(&admin, &alice, &idp).await), "42501");

    for project in [&alice, &bob] {
        let name = project.database_name();
        assert!(!public_may(&admin, "CONNECT", &name).await, "{name}");
        assert!(!public_may(&admin, "TEMPORARY", &name).await, "{name}");
        assert_eq!(connection_limit(&admin, &name).await, 3);
    }
    // idp keeps its own access: CONNECT was granted to its role before PUBLIC lost it.
    let idp_role_may_connect: bool = sqlx::query_scalar(
        "select exists (select from pg_database d, aclexplode(d.datacl) a
                         where d.datname = current_database() and a.privilege_type = 'CONNECT'
                           and a.grantee = (select oid from pg_roles where rolname = current_user))",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(idp_role_may_connect);
    assert!(!public_may(&admin, "CONNECT", &idp).await);

    driver.deprovision(&alice.input()).await.unwrap();
    driver.deprovision(&bob.input()).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_project_login_is_refused_one_connection_beyond_its_limit(admin: PgPool) {
    let driver = database_driver(&admin);
    let project = Project::new("greedy");
    let name = project.database_name();
    driver.provision(&project.input()).await.unwrap();

    let mut open = Vec::new();
    for _ in 0..CONNECTION_LIMIT {
        open.push(connect_as(&admin, &project, &name).await.unwrap());
    }
    // 53300: too_many_connections ("too many connections for role").
    assert_eq!(refusal(connect_as(&admin, &project, &name).await), "53300");
    open.pop().unwrap().close().await.unwrap();
    // The server counts a session until its backend has exited.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connect_as(&admin, &project, &name).await {
            Ok(connection) => {
                open.push(connection);
                break;
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a freed slot stays refused: {e}"),
        }
    }
    drop(open);
    driver.deprovision(&project.input()).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_role_that_could_reach_idps_database_is_refused_permanently_and_gets_no_login(
    admin: PgPool,
) {
    // idp's own database, owned by the test's superuser and open to PUBLIC, reached by idp
    // through a role that may not change who may connect.
    let suffix = Uuid::new_v4().simple().to_string();
    let idp_db = format!("own_{suffix}");
    let idp_role = format!("idp_{suffix}");
    run(
        &admin,
        &[
            format!("create role {idp_role} login"),
            format!("create database {idp_db}"),
        ],
    )
    .await;
    let own = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            (*admin.connect_options())
                .clone()
                .username(&idp_role)
                .database(&idp_db),
        )
        .await
        .unwrap();
    let driver = DatabaseDriver::new(admin.clone(), own.clone(), password_keys(), 10);
    let project = Project::new("intruder");
    let name = project.database_name();

    let error = assert_permanent(driver.provision(&project.input()).await);

    assert!(
        error.contains(&format!("could connect to idp's own database \"{idp_db}\"")),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "revoke connect on database \"{idp_db}\" from public"
        )),
        "{error}"
    );
    let can_login: bool = sqlx::query_scalar("select rolcanlogin from pg_roles where rolname = $1")
        .bind(&name)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(!can_login, "the role never got its login");
    assert_eq!(databases_named(&admin, &name).await, 0);
    assert!(
        public_may(&admin, "CONNECT", &idp_db).await,
        "left as it was"
    );

    // Once an operator closes it, the same step succeeds.
    sqlx::raw_sql(&format!(
        "grant connect on database {idp_db} to {idp_role};
         revoke connect on database {idp_db} from public"
    ))
    .execute(&admin)
    .await
    .unwrap();
    driver.provision(&project.input()).await.unwrap();
    assert_eq!(
        refusal(connect_as(&admin, &project, &idp_db).await),
        "42501"
    );

    driver.deprovision(&project.input()).await.unwrap();
    own.close().await;
    run(
        &admin,
        &[
            format!("drop database {idp_db} with (force)"),
            format!("drop role {idp_role}"),
        ],
    )
    .await;
}

async fn verifier_of(admin: &PgPool, role: &str) -> String {
    sqlx::query_scalar("select rolpassword from pg_authid where rolname = $1")
        .bind(role)
        .fetch_one(admin)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn hardening_isolates_a_database_made_the_old_way_and_keeps_or_rotates_its_password(
    admin: PgPool,
) {
    let old = Project::new("legacy");
    let name = old.database_name();
    let old_password = "an-old-password-from-the-shared-secret";
    // As earlier versions made it: PUBLIC's defaults, no connection limit.
    run(
        &admin,
        &[
            format!("create role {name} login password '{old_password}'"),
            format!("create database {name} owner {name}"),
        ],
    )
    .await;
    let other = Project::new("neighbour");
    let driver = database_driver(&admin);
    driver.provision(&other.input()).await.unwrap();
    connect_as(&admin, &other, &name)
        .await
        .expect("before hardening, another tenant gets in")
        .close()
        .await
        .unwrap();
    assert_eq!(connection_limit(&admin, &name).await, -1);

    assert_eq!(
        driver.harden(old.id, Password::Keep).await.unwrap(),
        Hardened::Done {
            password_key_id: None
        }
    );

    assert_eq!(refusal(connect_as(&admin, &other, &name).await), "42501");
    assert!(!public_may(&admin, "CONNECT", &name).await);
    assert_eq!(connection_limit(&admin, &name).await, 3);
    assert!(scram_verifier_matches(
        &verifier_of(&admin, &name).await,
        old_password
    ));

    assert_eq!(
        driver.harden(old.id, Password::Rotate).await.unwrap(),
        Hardened::Done {
            password_key_id: Some(DATABASE_KEY_ID.into())
        }
    );
    let rotated = verifier_of(&admin, &name).await;
    assert!(scram_verifier_matches(
        &rotated,
        &database_password(PASSWORD_KEY, old.id)
    ));
    assert!(!scram_verifier_matches(&rotated, old_password));
    assert_eq!(
        driver
            .harden(Project::new("never").id, Password::Rotate)
            .await
            .unwrap(),
        Hardened::Missing
    );

    driver.deprovision(&old.input()).await.unwrap();
    driver.deprovision(&other.input()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// repository

/// A directory of this test alone, removed when the test ends (also when it fails).
struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("idp-drivers-test-{}", Uuid::new_v4().simple())))
    }

    fn entries(&self) -> Vec<String> {
        match std::fs::read_dir(&self.0) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            }
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn commit_count(dir: &Path) -> usize {
    git(dir, &["rev-list", "--count", "HEAD"]).parse().unwrap()
}

#[tokio::test]
async fn provisioning_a_repository_commits_the_rendered_files_once_on_main() {
    let root = TempRoot::new();
    let project = Project::new("web-app");
    let driver = RepositoryDriver::new(root.0.clone());

    let outputs = driver.provision(&project.input()).await.unwrap();

    let path = root.0.join(format!("web-app-{}", project.id.simple()));
    assert_eq!(driver.repository_path(&project.input()).unwrap(), path);
    assert_eq!(
        std::fs::read_to_string(path.join(".git/idp-project")).unwrap(),
        format!("{}\n", project.id)
    );
    let head = git(&path, &["rev-parse", "HEAD"]);
    assert_eq!(
        outputs,
        json!({ "path": path.display().to_string(), "commit": head, "branch": "main" })
    );
    for (file, content) in &project.files {
        assert_eq!(&std::fs::read_to_string(path.join(file)).unwrap(), content);
    }
    assert_eq!(commit_count(&path), 1);
    assert_eq!(git(&path, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert_eq!(
        git(&path, &["log", "-1", "--format=%s|%an <%ae>"]),
        "Scaffold web-app from template rust-service v3|idp <idp@localhost>"
    );
    assert_eq!(
        git(&path, &["ls-files"]),
        ".github/workflows/ci.yml\nREADME.md\nsrc/main.rs"
    );
    assert_eq!(git(&path, &["status", "--porcelain"]), "");
    assert_eq!(root.entries().len(), 1, "{:?}", root.entries());
}

#[tokio::test]
async fn provisioning_a_repository_twice_or_concurrently_leaves_one_repository_with_one_commit() {
    let root = TempRoot::new();
    let driver = RepositoryDriver::new(root.0.clone());
    let again = Project::new("again");
    let raced = Project::new("raced");

    let first = driver.provision(&again.input()).await.unwrap();
    let second = driver.provision(&again.input()).await.unwrap();
    assert_eq!(first, second);

    let input = raced.input();
    let (a, b, c) = tokio::join!(
        driver.provision(&input),
        driver.provision(&input),
        driver.provision(&input),
    );
    let a = a.unwrap();
    assert_eq!(a, b.unwrap());
    assert_eq!(a, c.unwrap());

    for outputs in [&first, &a] {
        let path = PathBuf::from(outputs["path"].as_str().unwrap());
        assert_eq!(commit_count(&path), 1);
    }
    // No temporary directories are left behind by the runs that lost.
    assert_eq!(root.entries().len(), 2, "{:?}", root.entries());
}

#[tokio::test]
async fn a_repository_left_broken_by_a_crash_is_rebuilt_and_deprovisioning_removes_every_leftover()
{
    let root = TempRoot::new();
    let driver = RepositoryDriver::new(root.0.clone());
    let project = Project::new("crashed");
    let path = driver.repository_path(&project.input()).unwrap();
    let dir_name = path.file_name().unwrap().to_string_lossy().into_owned();
    // A temporary directory of a run that died, and a final directory without a commit.
    let staging = root
        .0
        .join(format!(".tmp-{dir_name}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(staging.join("src")).unwrap();
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("half-written"), "x").unwrap();
    // Another project whose name starts the same way is left alone.
    let neighbour = root
        .0
        .join(format!(".tmp-{dir_name}-x-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&neighbour).unwrap();

    let outputs = driver.provision(&project.input()).await.unwrap();

    assert_eq!(outputs["path"], path.display().to_string());
    assert_eq!(commit_count(&path), 1);
    assert!(!path.join("half-written").exists());
    assert!(root.entries().iter().any(|e| e.starts_with(".broken-")));

    driver.deprovision(&project.input()).await.unwrap();
    assert_eq!(
        root.entries(),
        vec![
            neighbour
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        ]
    );
}

/// Every file under `dir` (`.git` included) with its content, to tell whether anything changed.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, into);
            } else {
                let relative = path.strip_prefix(base).unwrap().display().to_string();
                into.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// A repository with one commit made by hand at `path`, marked as `marker`'s if given.
fn hand_made_repository(path: &Path, marker: Option<Uuid>) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::write(path.join("notes.txt"), "someone's work\n").unwrap();
    git(path, &["init", "--quiet"]);
    git(path, &["add", "--all"]);
    git(
        path,
        &[
            "-c",
            "user.name=someone",
            "-c",
            "user.email=someone@localhost",
            "commit",
            "--quiet",
            "-m",
            "by hand",
        ],
    );
    if let Some(marker) = marker {
        std::fs::write(path.join(".git/idp-project"), format!("{marker}\n")).unwrap();
    }
}

#[tokio::test]
async fn two_owners_picking_one_name_in_the_same_second_get_two_repositories_and_deleting_one_keeps_the_other()
 {
    let root = TempRoot::new();
    let driver = RepositoryDriver::new(root.0.clone());
    // Two requests in the same millisecond: their ids share the clock bits, the first 8 hex
    // digits earlier versions named folders by.
    let now = uuid::Timestamp::now(uuid::NoContext);
    let ada = Project::with_id("web", Uuid::new_v7(now));
    let bob = Project::with_id("web", Uuid::new_v7(now));
    assert_ne!(ada.owner_id, bob.owner_id);
    assert_eq!(
        ada.id.simple().to_string()[..8],
        bob.id.simple().to_string()[..8]
    );

    let ada_outputs = driver.provision(&ada.input()).await.unwrap();
    let bob_outputs = driver.provision(&bob.input()).await.unwrap();

    let ada_path = PathBuf::from(ada_outputs["path"].as_str().unwrap());
    let bob_path = PathBuf::from(bob_outputs["path"].as_str().unwrap());
    assert_ne!(ada_path, bob_path);
    assert_ne!(ada_outputs["commit"], bob_outputs["commit"]);
    for (project, path) in [(&ada, &ada_path), (&bob, &bob_path)] {
        assert_eq!(
            std::fs::read_to_string(path.join("README.md")).unwrap(),
            project.files["README.md"]
        );
        assert_eq!(commit_count(path), 1);
    }

    driver.deprovision(&ada.input()).await.unwrap();

    assert!(!ada_path.exists());
    assert_eq!(
        std::fs::read_to_string(bob_path.join("README.md")).unwrap(),
        bob.files["README.md"]
    );
    assert_eq!(
        git(&bob_path, &["rev-parse", "HEAD"]),
        bob_outputs["commit"]
    );
    assert_eq!(
        root.entries(),
        [bob_path.file_name().unwrap().to_string_lossy().into_owned()]
    );
}

#[tokio::test]
async fn a_folder_marked_as_another_projects_is_neither_adopted_scaffolded_into_nor_removed() {
    let root = TempRoot::new();
    let driver = RepositoryDriver::new(root.0.clone());
    let owner = Project::new("shared");
    let intruder = Project::new("shared");
    let path = driver.repository_path(&intruder.input()).unwrap();
    hand_made_repository(&path, Some(owner.id));
    // A leftover of the intruder's own is kept too when the deprovisioning is refused.
    let dir_name = path.file_name().unwrap().to_string_lossy().into_owned();
    let leftover = root
        .0
        .join(format!(".broken-{dir_name}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&leftover).unwrap();
    let before = snapshot(&path);

    let error = assert_permanent(driver.provision(&intruder.input()).await);

    assert!(error.contains(&owner.id.to_string()), "{error}");
    assert!(
        error.contains("neither adopted, scaffolded into nor removed"),
        "{error}"
    );
    assert_eq!(snapshot(&path), before);
    assert_eq!(
        root.entries().len(),
        2,
        "nothing built: {:?}",
        root.entries()
    );

    let error = assert_permanent(driver.deprovision(&intruder.input()).await);

    assert!(error.contains(&owner.id.to_string()), "{error}");
    assert_eq!(snapshot(&path), before);
    assert!(leftover.exists());

    // A marker that names no project at all is no better.
    std::fs::write(path.join(".git/idp-project"), "who knows\n").unwrap();
    assert_permanent(driver.provision(&intruder.input()).await);
    assert!(path.join("notes.txt").exists());
}

#[tokio::test]
async fn an_unmarked_repository_at_the_projects_own_path_is_adopted_and_one_at_the_old_shared_path_is_never_touched()
 {
    let root = TempRoot::new();
    let driver = RepositoryDriver::new(root.0.clone());
    let project = Project::new("older");
    let path = driver.repository_path(&project.input()).unwrap();
    hand_made_repository(&path, None);
    let head = git(&path, &["rev-parse", "HEAD"]);
    let old_path = root
        .0
        .join(format!("older-{}", &project.id.simple().to_string()[..8]));
    hand_made_repository(&old_path, None);
    let old_files = snapshot(&old_path);

    let outputs = driver.provision(&project.input()).await.unwrap();

    assert_eq!(outputs["commit"], head.as_str());
    assert_eq!(
        std::fs::read_to_string(path.join(".git/idp-project")).unwrap(),
        format!("{}\n", project.id)
    );
    assert!(path.join("notes.txt").exists());

    driver.deprovision(&project.input()).await.unwrap();

    assert!(!path.exists());
    assert_eq!(snapshot(&old_path), old_files);
}

#[tokio::test]
async fn deprovisioning_a_repository_removes_it_and_succeeds_when_it_is_gone() {
    let root = TempRoot::new();
    let driver = RepositoryDriver::new(root.0.clone());
    let project = Project::new("short-lived");
    let outputs = driver.provision(&project.input()).await.unwrap();
    let path = PathBuf::from(outputs["path"].as_str().unwrap());
    assert!(path.join(".git").is_dir());

    driver.deprovision(&project.input()).await.unwrap();
    assert!(!path.exists());

    driver.deprovision(&project.input()).await.unwrap();
    RepositoryDriver::new(root.0.join("never-created"))
        .deprovision(&project.input())
        .await
        .unwrap();
}

#[tokio::test]
async fn template_files_outside_the_repository_are_refused_as_permanent_and_nothing_is_left() {
    let root = TempRoot::new();
    let driver = RepositoryDriver::new(root.0.clone());
    for path in [
        "../escape.txt",
        "src/../../escape.txt",
        "/tmp/escape.txt",
        ".git/config",
    ] {
        let project = Project::new("sneaky").with_file(path, "boo");

        let error = assert_permanent(driver.provision(&project.input()).await);

        assert!(error.contains(&format!("{path:?}")), "{error}");
        assert!(!project_dir_exists(&driver, &project), "{path}");
    }
    assert!(!root.0.parent().unwrap().join("escape.txt").exists());
    assert!(
        root.entries().is_empty(),
        "nothing is left behind: {:?}",
        root.entries()
    );
}

fn project_dir_exists(driver: &RepositoryDriver, project: &Project) -> bool {
    driver.repository_path(&project.input()).unwrap().exists()
}

// ---------------------------------------------------------------------------------------------
// webhook

const SECRET: &[u8] = b"webhook-secret-do-not-leak";

/// One request the test server received.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer, in order; 200 once they run out.
    statuses: Arc<Mutex<VecDeque<u16>>>,
    delay: Duration,
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receiver
        .received
        .lock()
        .unwrap()
        .push(Received { headers, body });
    tokio::time::sleep(receiver.delay).await;
    let status = receiver.statuses.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// A real HTTP server on a free local port answering `statuses` in order, after `delay`.
async fn start_receiver(statuses: &[u16], delay: Duration) -> (Url, Receiver) {
    let receiver = Receiver {
        statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
        delay,
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/hooks/idp", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = Url::parse(&format!("http://127.0.0.1:{port}/hooks/idp")).unwrap();
    (url, receiver)
}

/// A local port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn webhook(url: Url) -> WebhookDriver {
    WebhookDriver::new(Some(url), Some(SECRET.to_vec()), Duration::from_secs(5))
}

#[tokio::test]
async fn a_webhook_answered_200_gets_one_signed_request_per_call_with_a_stable_idempotency_key() {
    let (url, receiver) = start_receiver(&[], Duration::ZERO).await;
    let driver = webhook(url);
    assert!(driver.is_configured());
    let project = Project::new("notified");

    let outputs = driver.provision(&project.input()).await.unwrap();

    assert_eq!(outputs, json!({ "status": 200 }));
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.header("content-type"), Some("application/json"));
    let timestamp = request.header("x-idp-timestamp").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(timestamp.parse::<u64>().unwrap().abs_diff(now) <= 60);
    assert_eq!(
        request.header("x-idp-signature").unwrap(),
        signature(SECRET, timestamp, &request.body)
    );
    assert_ne!(
        request.header("x-idp-signature").unwrap(),
        signature(b"another secret", timestamp, &request.body)
    );
    let key = format!("{}-project.provisioned", project.id);
    assert_eq!(request.header("idempotency-key"), Some(key.as_str()));
    assert_eq!(
        request.json(),
        json!({
            "event": "project.provisioned",
            "project_id": project.id,
            "name": "notified",
            "owner_id": project.owner_id,
            "template": "rust-service",
            "template_version": 3,
            "parameters": { "language": "rust" },
        })
    );

    driver.provision(&project.input()).await.unwrap();
    driver.deprovision(&project.input()).await.unwrap();

    let received = receiver.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[1].header("idempotency-key"), Some(key.as_str()));
    let deleted = &received[2];
    assert_eq!(deleted.json()["event"], "project.deleted");
    assert_eq!(
        deleted.header("idempotency-key"),
        Some(format!("{}-project.deleted", project.id).as_str())
    );
    assert_eq!(
        deleted.header("x-idp-signature").unwrap(),
        signature(
            SECRET,
            deleted.header("x-idp-timestamp").unwrap(),
            &deleted.body
        )
    );
}

#[tokio::test]
async fn a_webhook_without_a_secret_is_sent_unsigned() {
    let (url, receiver) = start_receiver(&[], Duration::ZERO).await;
    let driver = WebhookDriver::new(Some(url), None, Duration::from_secs(5));

    driver
        .provision(&Project::new("unsigned").input())
        .await
        .unwrap();

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].header("x-idp-signature").is_none());
    assert!(received[0].header("x-idp-timestamp").is_some());
}

#[tokio::test]
async fn a_webhook_answering_503_429_or_408_is_transient_and_the_retry_succeeds() {
    let (url, receiver) = start_receiver(&[503, 429, 408], Duration::ZERO).await;
    let driver = webhook(url);
    let project = Project::new("flaky");

    for code in [503, 429, 408] {
        let error = assert_transient(driver.provision(&project.input()).await);
        assert_eq!(error, format!("webhook answered {code}"));
    }
    assert_eq!(
        driver.provision(&project.input()).await.unwrap(),
        json!({ "status": 200 })
    );
    let keys: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| *k == keys[0]));
}

#[tokio::test]
async fn a_webhook_answering_400_404_or_a_redirect_is_permanent() {
    let (url, receiver) = start_receiver(&[400, 404, 301], Duration::ZERO).await;
    let driver = webhook(url);
    let project = Project::new("refused");

    for code in [400, 404, 301] {
        let error = assert_permanent(driver.provision(&project.input()).await);
        assert_eq!(error, format!("webhook answered {code}"));
    }
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn a_webhook_answering_after_the_timeout_is_transient() {
    let (url, receiver) = start_receiver(&[], Duration::from_secs(10)).await;
    let driver = WebhookDriver::new(Some(url), Some(SECRET.to_vec()), Duration::from_millis(300));

    let started = std::time::Instant::now();
    let error = assert_transient(driver.provision(&Project::new("slow").input()).await);

    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(error.contains("no answer within 300 ms"), "{error}");
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn an_unreachable_webhook_is_transient_and_the_error_hides_credentials_and_query() {
    let port = closed_port().await;
    let url = Url::parse(&format!(
        "http://hook-user:hook-password@127.0.0.1:{port}/hooks/idp?token=query-token"
    ))
    .unwrap();
    let driver = webhook(url);

    let error = assert_transient(driver.provision(&Project::new("offline").input()).await);

    assert!(
        error.contains(&format!("http://127.0.0.1:{port}/hooks/idp")),
        "{error}"
    );
    for secret in ["hook-password", "query-token", "hook-user"] {
        assert!(!error.contains(secret), "{error}");
    }
    assert!(!error.contains(std::str::from_utf8(SECRET).unwrap()));
}

#[tokio::test]
async fn a_webhook_without_a_url_refuses_permanently() {
    let driver = WebhookDriver::new(None, Some(SECRET.to_vec()), Duration::from_secs(1));
    assert!(!driver.is_configured());
    let project = Project::new("nowhere");

    let error = assert_permanent(driver.provision(&project.input()).await);

    assert_eq!(error, "no webhook URL configured");
    assert_permanent(driver.deprovision(&project.input()).await);
}
