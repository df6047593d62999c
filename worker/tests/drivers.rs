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
use idp_worker::provision::drivers::{
    DatabaseDriver, DriverError, RepositoryDriver, StepInput, WebhookDriver, database_password,
    signature,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};
use url::Url;
use uuid::Uuid;

const PASSWORD_KEY: &[u8] = b"test-database-password-key-0123456789";

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
        Self {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            owner_id: Uuid::new_v4(),
            parameters: BTreeMap::from([("language".to_owned(), "rust".to_owned())]),
            files: BTreeMap::from([
                ("README.md".to_owned(), format!("# {name}\n")),
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
    let driver = DatabaseDriver::new(admin.clone(), PASSWORD_KEY.to_vec());

    let outputs = driver.provision(&project.input()).await.unwrap();

    let options = admin.connect_options();
    assert_eq!(
        outputs,
        json!({
            "database": name,
            "role": name,
            "host": options.get_host(),
            "port": options.get_port(),
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
    let driver = DatabaseDriver::new(admin.clone(), PASSWORD_KEY.to_vec());
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
    let driver = DatabaseDriver::new(admin.clone(), PASSWORD_KEY.to_vec());
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
    let driver = DatabaseDriver::new(weak.clone(), PASSWORD_KEY.to_vec());

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
    let driver = DatabaseDriver::new(unreachable, PASSWORD_KEY.to_vec());
    let project = Project::new("offline");

    assert_transient(driver.provision(&project.input()).await);
    assert_transient(driver.deprovision(&project.input()).await);
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

    let path = root
        .0
        .join(format!("web-app-{}", &project.id.simple().to_string()[..8]));
    assert_eq!(driver.repository_path(&project.input()).unwrap(), path);
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
