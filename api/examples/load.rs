//! Load test of a running idp: `scripts/load` starts one (or takes `--url`) and runs this.
//!
//! Two phases, both open loop: every request has a send time fixed in advance and its latency
//! counts from that time, so a server that stalls cannot slow the sender down and hide its
//! backlog (no coordinated omission).
//!
//! 1. **Mix**: `--rate` requests/s for `--seconds`, spread over a weighted mix of routes (the
//!    caller's profile, project lists and reads, project requests, administrators' user and
//!    event queries), with sign-ins at `--login-rate`/s beside them in a row of their own:
//!    argon2 makes each sign-in expensive by design, so they are outside the rate target.
//! 2. **Held connections**: `--hold-connections` separate TCP connections, opened and kept
//!    alive, each sending `GET /v1/auth/me` once a second for `--hold-seconds`.
//!
//! Then a table: per route p50/p95/p99 and the error rate (an error is any answer other than
//! the one the request was meant to get, or none), the resident memory of `idp-api` and
//! `idp-worker` (`--api-pid`, `--worker-pid`: `VmRSS` now and `VmHWM`, the peak since start,
//! from `/proc/<pid>/status`) and their CPU time, and each target with whether it was met.
//!
//! Accounts: the administrator (`ADMIN_EMAIL`, `ADMIN_PASSWORD`) and `--users` ordinary users
//! registered for this run. Verifying an address takes the link the worker mails; this
//! recomputes its token from the log instead (`LOAD_DATABASE_URL`, `LOAD_EMAIL_TOKEN_KEYS` and
//! `LOAD_PERSONAL_DATA_KEYS`, the idp's own). Without them the administrator sends every request.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Parser;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use idp_events::identity::one_time_token::{self, Purpose};
use idp_events::keys::SecretKeys;
use idp_events::privacy::fields::known_text;
use idp_events::privacy::{KeyEncryptionKeys, SubjectKeys};
use idp_ops::config::DatabaseUrl;
use reqwest::{RequestBuilder, StatusCode, Url};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// Targets on two cores (the issue's): what the table checks.
const TARGET_P99: Duration = Duration::from_millis(50);
const TARGET_RSS_MIB: f64 = 100.0;
/// The client gives up on an answer after this; longer than the API's own request timeout
/// (10 s by default), so that one is seen as its 503.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Password of the ordinary users of a run.
const USER_PASSWORD: &str = "load test user passphrase";
/// Kernel clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux's ABI).
const USER_HZ: f64 = 100.0;

/// Load test of a running idp: a weighted mix at a fixed rate, then many held connections.
#[derive(Debug, Parser)]
#[command(name = "load")]
struct Args {
    /// Base URL of the API (http).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: Url,
    /// Length of the mix, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Requests per second of the mix (sign-ins not included).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate: u64,
    /// Sign-ins per second beside the mix (0: none).
    #[arg(long, default_value_t = 5.0)]
    login_rate: f64,
    /// Ordinary users registered for the run.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Projects each account requests before the mix, so that there is something to read.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=100))]
    seed_projects: u64,
    /// Template of the projects requested.
    #[arg(long, default_value = "load")]
    template: String,
    /// Connections held open in the second phase (0: skip it).
    #[arg(long, default_value_t = 1000)]
    hold_connections: usize,
    /// Length of the second phase, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    hold_seconds: u64,
    /// Process id of idp-api, for its memory and CPU time.
    #[arg(long)]
    api_pid: Option<u32>,
    /// Process id of idp-worker, for its memory and CPU time.
    #[arg(long)]
    worker_pid: Option<u32>,
    /// The administrator's email.
    #[arg(long, env = "ADMIN_EMAIL")]
    admin_email: String,
    /// The administrator's password.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: String,
    /// The idp's database, to find the verification emails' events of new users.
    #[arg(long, env = "LOAD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The idp's `EMAIL_TOKEN_KEYS`, to make the verification tokens of new users.
    #[arg(long, env = "LOAD_EMAIL_TOKEN_KEYS", hide_env_values = true)]
    email_token_keys: Option<String>,
    /// The idp's `PERSONAL_DATA_KEYS`, to read the (sealed) addresses of those events.
    #[arg(long, env = "LOAD_PERSONAL_DATA_KEYS", hide_env_values = true)]
    personal_data_keys: Option<String>,
}

/// What a request of the load is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Me,
    ListProjects,
    GetProject,
    CreateProject,
    AdminUsers,
    AdminEvents,
    Login,
}

impl Route {
    /// The mix, in requests per thousand. Most traffic is people looking at their own things;
    /// project requests are rarer writes; administrators query users and the log.
    const MIX: [(Self, u32); 6] = [
        (Self::Me, 300),
        (Self::ListProjects, 250),
        (Self::GetProject, 250),
        (Self::CreateProject, 50),
        (Self::AdminUsers, 75),
        (Self::AdminEvents, 75),
    ];
    const ALL: [Self; 7] = [
        Self::Me,
        Self::ListProjects,
        Self::GetProject,
        Self::CreateProject,
        Self::AdminUsers,
        Self::AdminEvents,
        Self::Login,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Self::Me => "GET  /v1/auth/me",
            Self::ListProjects => "GET  /v1/projects",
            Self::GetProject => "GET  /v1/projects/{id}",
            Self::CreateProject => "POST /v1/projects",
            Self::AdminUsers => "GET  /v1/admin/users?...",
            Self::AdminEvents => "GET  /v1/admin/events?...",
            Self::Login => "POST /v1/auth/login",
        }
    }

    fn weight(self) -> Option<u32> {
        Self::MIX.iter().find(|(r, _)| *r == self).map(|(_, w)| *w)
    }
}

/// The mix as a sequence: smooth weighted round robin, so every second has the same blend and
/// runs are repeatable.
#[derive(Debug, Default)]
struct Mix {
    credit: [i64; Route::MIX.len()],
}

impl Mix {
    fn next(&mut self) -> Route {
        let total: i64 = Route::MIX.iter().map(|(_, w)| i64::from(*w)).sum();
        let mut best = 0;
        for (i, (_, weight)) in Route::MIX.iter().enumerate() {
            self.credit[i] += i64::from(*weight);
            if self.credit[i] > self.credit[best] {
                best = i;
            }
        }
        self.credit[best] -= total;
        Route::MIX[best].0
    }
}

/// Latencies and outcomes of one kind of request.
#[derive(Debug, Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

impl Samples {
    fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        self.latencies.push(latency);
        if let Err(reason) = outcome {
            *self.errors.entry(reason).or_default() += 1;
        }
    }

    fn merge(&mut self, other: &Self) {
        self.latencies.extend_from_slice(&other.latencies);
        for (reason, count) in &other.errors {
            *self.errors.entry(reason.clone()).or_default() += count;
        }
    }

    fn count(&self) -> u64 {
        self.latencies.len() as u64
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error_percent(&self) -> f64 {
        if self.latencies.is_empty() {
            0.0
        } else {
            100.0 * self.error_count() as f64 / self.count() as f64
        }
    }

    /// Nearest-rank percentiles (`qs` in 0..=1) and the maximum, in ms.
    fn percentiles_ms<const N: usize>(&self, qs: [f64; N]) -> ([f64; N], f64) {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let Some(&max) = sorted.last() else {
            return ([f64::NAN; N], f64::NAN);
        };
        let at = |q: f64| {
            let rank = (q * sorted.len() as f64).ceil() as usize;
            ms(sorted[rank.clamp(1, sorted.len()) - 1])
        };
        (qs.map(at), ms(max))
    }

    fn errors_text(&self) -> String {
        self.errors
            .iter()
            .map(|(reason, count)| format!("{reason} x{count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Width of the windows of the mix's timeline.
const WINDOW: Duration = Duration::from_secs(10);

/// Samples per route, and the mix's latencies per [`WINDOW`] of send time.
#[derive(Debug)]
struct Recorder {
    routes: Vec<Mutex<Samples>>,
    windows: Mutex<Vec<Vec<Duration>>>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            routes: Route::ALL.iter().map(|_| Mutex::default()).collect(),
            windows: Mutex::default(),
        }
    }

    /// Records a request sent `offset` after the start of its phase.
    fn record(
        &self,
        route: Route,
        offset: Duration,
        latency: Duration,
        outcome: Result<(), String>,
    ) {
        self.routes[route.index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(latency, outcome);
        if route.weight().is_some() {
            let window = usize::try_from(offset.as_secs() / WINDOW.as_secs()).unwrap_or(0);
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            if windows.len() <= window {
                windows.resize_with(window + 1, Vec::new);
            }
            windows[window].push(latency);
        }
    }

    /// p99 in ms of each window of the mix so far.
    fn window_p99s(&self) -> Vec<f64> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows
            .iter()
            .map(|latencies| {
                let samples = Samples {
                    latencies: latencies.clone(),
                    errors: BTreeMap::new(),
                };
                samples.percentiles_ms([0.99]).0[0]
            })
            .collect()
    }

    fn take(&self, route: Route) -> Samples {
        std::mem::take(
            &mut *self.routes[route.index()]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// An account the load signs in as.
#[derive(Debug)]
struct Account {
    id: Uuid,
    email: String,
    password: String,
    token: RwLock<Arc<str>>,
    projects: Mutex<Vec<Uuid>>,
}

impl Account {
    fn token(&self) -> Arc<str> {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_token(&self, token: &str) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = token.into();
    }

    fn add_project(&self, id: Uuid) {
        self.projects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
    }

    /// One of the account's projects, picked by `n`.
    fn project(&self, n: u64) -> Option<Uuid> {
        let projects = self.projects.lock().unwrap_or_else(PoisonError::into_inner);
        let len = projects.len() as u64;
        (len > 0).then(|| projects[usize::try_from(n % len).unwrap_or(0)])
    }
}

/// Everything a request of the load needs.
#[derive(Debug)]
struct Load {
    client: reqwest::Client,
    base: String,
    admin: Arc<Account>,
    /// Ordinary users (the administrator alone when there are none).
    users: Vec<Arc<Account>>,
    template: String,
    /// Names this run's projects and users apart from earlier runs'.
    run: String,
    started: DateTime<Utc>,
    /// Requests so far per route, to vary names and queries.
    counters: [AtomicU64; Route::ALL.len()],
    recorder: Recorder,
}

impl Load {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn user(&self, n: u64) -> &Arc<Account> {
        &self.users[usize::try_from(n % self.users.len() as u64).unwrap_or(0)]
    }

    /// Sends request number `n` of `route` (its user and variant follow from `n`).
    async fn send(&self, route: Route, n: u64) -> Result<(), String> {
        let k = self.counters[route.index()].fetch_add(1, Ordering::Relaxed);
        let user = self.user(n);
        match route {
            Route::Me => {
                let request = self.client.get(self.url("/v1/auth/me"));
                exchange(request.bearer_auth(&*user.token()), StatusCode::OK).await?;
            }
            Route::ListProjects => {
                let query = if k % 4 == 3 {
                    "?status=ready&limit=20"
                } else {
                    "?limit=20"
                };
                let request = self.client.get(self.url(&format!("/v1/projects{query}")));
                exchange(request.bearer_auth(&*user.token()), StatusCode::OK).await?;
            }
            Route::GetProject => {
                let id = user
                    .project(k / self.users.len() as u64)
                    .ok_or("no project to read")?;
                let request = self.client.get(self.url(&format!("/v1/projects/{id}")));
                exchange(request.bearer_auth(&*user.token()), StatusCode::OK).await?;
            }
            Route::CreateProject => {
                let name = format!("p{}-{k}", self.run);
                let request = self
                    .client
                    .post(self.url("/v1/projects"))
                    .bearer_auth(&*user.token())
                    .header("idempotency-key", &name)
                    .json(&json!({ "name": name, "template": self.template }));
                let body = exchange(request, StatusCode::ACCEPTED).await?;
                user.add_project(json_uuid(&body, "id")?);
            }
            Route::AdminUsers => {
                let query = match k % 5 {
                    0 => format!("q=load-{}", self.run),
                    1 => "status=active&sort=email&limit=50".to_owned(),
                    2 => "role=admin".to_owned(),
                    3 => "sort=-created_at&limit=20".to_owned(),
                    _ => "status=locked".to_owned(),
                };
                self.admin_get(&format!("/v1/admin/users?{query}")).await?;
            }
            Route::AdminEvents => {
                let query = match k % 5 {
                    0 => "type=ProjectRequested&limit=100".to_owned(),
                    1 => "stream_prefix=user-&limit=50".to_owned(),
                    2 => format!("actor=user-{}&limit=50", user.id),
                    3 => format!(
                        "type=SessionStarted,LoginSucceeded&from={}&limit=100",
                        self.started.to_rfc3339_opts(SecondsFormat::Secs, true)
                    ),
                    _ => match user.project(k) {
                        Some(id) => format!("stream=project-{id}"),
                        None => format!("stream=user-{}", user.id),
                    },
                };
                self.admin_get(&format!("/v1/admin/events?{query}")).await?;
            }
            Route::Login => {
                // Every account in turn, the administrator too: its token is renewed this way.
                let account = match usize::try_from(n).unwrap_or(0) % (self.users.len() + 1) {
                    0 => &self.admin,
                    i => &self.users[i - 1],
                };
                let token = login(&self.client, &self.base, account).await?;
                account.set_token(&token);
            }
        }
        Ok(())
    }

    async fn admin_get(&self, path: &str) -> Result<(), String> {
        let request = self.client.get(self.url(path));
        exchange(request.bearer_auth(&*self.admin.token()), StatusCode::OK).await?;
        Ok(())
    }
}

/// Sends `request` and reads the whole answer; an error names what went wrong (the status, or
/// the kind of transport failure).
async fn exchange(request: RequestBuilder, expected: StatusCode) -> Result<Bytes, String> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let body = response.bytes().await.map_err(transport_error)?;
    if status == expected {
        Ok(body)
    } else {
        Err(format!("{}", status.as_u16()))
    }
}

fn transport_error(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else if error.is_body() || error.is_decode() {
        "body".into()
    } else {
        "transport".into()
    }
}

fn json_uuid(body: &[u8], field: &str) -> Result<Uuid, String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v[field].as_str().and_then(|s| Uuid::parse_str(s).ok()))
        .ok_or_else(|| format!("no {field} in the answer"))
}

/// The client address `email`'s sign-ins and registration come from, as forwarded by a trusted
/// proxy: each account is a person at an address of their own, not one address that signs
/// everyone in (idp takes one sign-in per address at a time).
fn address_of(email: &str) -> String {
    let h = email.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!(
        "10.{}.{}.{}",
        (h >> 16) & 0xff,
        (h >> 8) & 0xff,
        (h & 0x7f) + 1
    )
}

/// Signs `account` in; its access token.
async fn login(client: &reqwest::Client, base: &str, account: &Account) -> Result<String, String> {
    let request = client
        .post(format!("{base}/v1/auth/login"))
        .header("x-forwarded-for", address_of(&account.email))
        .json(&json!({ "email": account.email, "password": account.password }));
    let body = exchange(request, StatusCode::OK).await?;
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(str::to_owned))
        .ok_or_else(|| "no access_token in the answer".into())
}

/// Signs in and reads the account's id.
async fn sign_in(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<Account> {
    let mut account = Account {
        id: Uuid::nil(),
        email: email.to_owned(),
        password: password.to_owned(),
        token: RwLock::new("".into()),
        projects: Mutex::default(),
    };
    let token = login(client, base, &account)
        .await
        .map_err(|e| anyhow::anyhow!("sign-in of {email} failed: {e}"))?;
    let me = exchange(
        client.get(format!("{base}/v1/auth/me")).bearer_auth(&token),
        StatusCode::OK,
    )
    .await
    .map_err(|e| anyhow::anyhow!("GET /v1/auth/me of {email} failed: {e}"))?;
    account.id = json_uuid(&me, "id").map_err(anyhow::Error::msg)?;
    account.set_token(&token);
    Ok(account)
}

/// Registers `count` users, verifies them with tokens made from the log, and signs them in.
async fn ordinary_users(
    client: &reqwest::Client,
    base: &str,
    run: &str,
    count: usize,
    database_url: &str,
    email_token_keys: &str,
    personal_data_keys: &str,
) -> anyhow::Result<Vec<Arc<Account>>> {
    let email_keys = SecretKeys::parse("LOAD_EMAIL_TOKEN_KEYS", email_token_keys)?;
    let kek_ring = SecretKeys::parse("LOAD_PERSONAL_DATA_KEYS", personal_data_keys)?;
    let options = DatabaseUrl::from_str(database_url)
        .map_err(|e| anyhow::anyhow!("invalid LOAD_DATABASE_URL: {e}"))?
        .options();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .context("while connecting to LOAD_DATABASE_URL")?;
    let emails: Vec<String> = (0..count)
        .map(|i| format!("load-{run}-{i}@load.idp.localhost"))
        .collect();

    // Each registration hashes a password: a few at a time.
    let registered: Vec<Result<(), String>> = futures::stream::iter(emails.iter())
        .map(|email| async move {
            let request = client
                .post(format!("{base}/v1/auth/register"))
                .header("x-forwarded-for", address_of(email))
                .json(&json!({ "email": email, "password": USER_PASSWORD }));
            exchange(request, StatusCode::ACCEPTED).await.map(drop)
        })
        .buffer_unordered(4)
        .collect()
        .await;
    if let Some(Err(e)) = registered.iter().find(|r| r.is_err()) {
        bail!(
            "registration failed ({e}); a 429 means the idp's RATE_LIMIT_EMAIL_PER_IP is lower \
             than --users"
        );
    }

    let store = idp_events::EventStore::with_personal_data(
        pool.clone(),
        idp_events::Upcasters::default(),
        SubjectKeys::new(pool.clone(), KeyEncryptionKeys::from_ring(&kek_ring)),
    );
    let streams: Vec<String> = sqlx::query_scalar(
        "select stream_id from events where event_type = 'VerificationRequested'
          group by stream_id",
    )
    .fetch_all(&pool)
    .await
    .context("while reading the verification events")?;
    let mut rows: Vec<(Uuid, String)> = Vec::new();
    for stream in streams {
        let events = store
            .read_stream(stream.as_str(), 1)
            .await
            .context("while reading the verification events")?;
        for event in events {
            if event.event_type != "VerificationRequested" {
                continue;
            }
            if let Some(email) = known_text(&event.data["email"])
                && emails.iter().any(|e| e == email)
            {
                rows.push((event.event_id, email.to_owned()));
            }
        }
    }
    ensure!(
        rows.len() >= count,
        "found {} verification events for {count} registrations in LOAD_DATABASE_URL; is it \
         the idp's database?",
        rows.len()
    );
    for (event_id, email) in &rows {
        let token = one_time_token::issue(&email_keys, Purpose::VerifyEmail, *event_id);
        let request = client
            .post(format!("{base}/v1/auth/verify-email"))
            .json(&json!({ "token": token }));
        exchange(request, StatusCode::OK).await.map_err(|e| {
            anyhow::anyhow!(
                "verifying {email} failed ({e}); is LOAD_EMAIL_TOKEN_KEYS the idp's EMAIL_TOKEN_KEYS?"
            )
        })?;
    }

    let users: Vec<anyhow::Result<Account>> = futures::stream::iter(emails.iter())
        .map(|email| sign_in(client, base, email, USER_PASSWORD))
        .buffer_unordered(4)
        .collect()
        .await;
    users.into_iter().map(|u| u.map(Arc::new)).collect()
}

/// Resident memory and CPU time of a process, from `/proc`.
#[derive(Debug, Clone, Copy)]
struct ProcessSample {
    rss_kib: u64,
    peak_kib: u64,
    cpu_secs: f64,
}

fn process_sample(pid: &str) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let cpu_ticks = ticks(11)? + ticks(12)?;
    Some(ProcessSample {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
        cpu_secs: cpu_ticks as f64 / USER_HZ,
    })
}

/// Busy and total CPU time of the whole machine, in ticks, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn open_file_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The processes whose memory and CPU time the table shows.
#[derive(Debug)]
struct Processes {
    named: Vec<(&'static str, String)>,
}

impl Processes {
    fn sample(&self) -> Vec<Option<ProcessSample>> {
        self.named
            .iter()
            .map(|(_, pid)| process_sample(pid))
            .collect()
    }
}

/// Runs `count` sends at `rate` per second from `start`, open loop; waits for their answers.
/// Returns how late the sender itself got behind its schedule at worst.
async fn open_loop(
    load: &Arc<Load>,
    rate: f64,
    count: u64,
    start: Instant,
    mut route_of: impl FnMut(u64) -> Route,
) -> Duration {
    let mut tasks = JoinSet::new();
    let mut behind = Duration::ZERO;
    for n in 0..count {
        let at = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(at).await;
        behind = behind.max(at.elapsed());
        let route = route_of(n);
        let load = Arc::clone(load);
        tasks.spawn(async move {
            let outcome = load.send(route, n).await;
            load.recorder
                .record(route, at - start, at.elapsed(), outcome);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    behind
}

/// What became of the held connections.
#[derive(Debug, Default)]
struct Held {
    opened: usize,
    held: usize,
    samples: Samples,
    connect_errors: BTreeMap<String, u64>,
    api_fds: Option<usize>,
}

enum Connection {
    Refused(String),
    Open { held: bool, samples: Samples },
}

/// One held connection: opens it by `start`, then sends `GET /v1/auth/me` on it every
/// `interval` (first at `start + offset`) until `end`. A connection that fails is not reopened.
async fn hold_one(
    addr: SocketAddr,
    host: String,
    token: Arc<str>,
    start: Instant,
    offset: Duration,
    interval: Duration,
    end: Instant,
) -> Connection {
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => return Connection::Refused(format!("{:?}", e.kind())),
    };
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(_) => return Connection::Refused("handshake".into()),
    };
    let driver = tokio::spawn(connection);
    let mut samples = Samples::default();
    let mut alive = true;
    let mut at = start + offset;
    while at < end {
        tokio::time::sleep_until(at).await;
        if sender.ready().await.is_err() {
            samples.record(at.elapsed(), Err("closed".into()));
            alive = false;
            break;
        }
        let request = hyper::Request::get("/v1/auth/me")
            .header(hyper::header::HOST, &host)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new());
        let Ok(request) = request else {
            samples.record(at.elapsed(), Err("request".into()));
            break;
        };
        let answer = tokio::time::timeout(CLIENT_TIMEOUT, async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        match answer {
            Ok(Ok(status)) if status == StatusCode::OK => samples.record(at.elapsed(), Ok(())),
            Ok(Ok(status)) => samples.record(at.elapsed(), Err(status.as_u16().to_string())),
            Ok(Err(_)) => {
                samples.record(at.elapsed(), Err("transport".into()));
                alive = false;
                break;
            }
            Err(_) => {
                samples.record(at.elapsed(), Err("timeout".into()));
                alive = false;
                break;
            }
        }
        at += interval;
    }
    let held = alive && !sender.is_closed();
    drop(sender);
    driver.abort();
    Connection::Open { held, samples }
}

/// The second phase: `connections` connections opened over about a second, then each sending
/// one request a second for `seconds`.
async fn hold(
    load: &Load,
    connections: usize,
    seconds: u64,
    api_pid: Option<&str>,
) -> anyhow::Result<Held> {
    let url = Url::parse(&load.base)?;
    ensure!(url.scheme() == "http", "held connections need an http URL");
    let host = url.host_str().context("the URL has no host")?.to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };

    let interval = Duration::from_secs(1);
    let ramp = Duration::from_millis(1) * u32::try_from(connections).unwrap_or(u32::MAX);
    let start = Instant::now() + ramp + Duration::from_secs(2);
    let end = start + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for i in 0..connections {
        // Spread the connects over the ramp and the requests over each second.
        tokio::time::sleep_until(Instant::now() + Duration::from_millis(1)).await;
        let token = load.user(i as u64).token();
        let offset = interval.mul_f64(i as f64 / connections as f64);
        tasks.spawn(hold_one(
            addr,
            host_header.clone(),
            token,
            start,
            offset,
            interval,
            end,
        ));
    }
    // Midway, how many descriptors the API holds: its side of the connections.
    let api_fds = match api_pid {
        Some(pid) => {
            tokio::time::sleep_until(start + (end - start) / 2).await;
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()
                .map(Iterator::count)
        }
        None => None,
    };
    let mut held = Held {
        api_fds,
        ..Held::default()
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Connection::Refused(reason)) => {
                *held.connect_errors.entry(reason).or_default() += 1;
            }
            Ok(Connection::Open {
                held: kept,
                samples,
            }) => {
                held.opened += 1;
                held.held += usize::from(kept);
                held.samples.merge(&samples);
            }
            Err(_) => *held.connect_errors.entry("panic".into()).or_default() += 1,
        }
    }
    Ok(held)
}

/// What the mix measured.
#[derive(Debug)]
struct MixResult {
    routes: Vec<(Route, Samples)>,
    /// The mix's routes together (sign-ins apart).
    all: Samples,
    wall_secs: f64,
    behind: Duration,
    /// p99 (ms) of each [`WINDOW`] of the mix.
    window_p99s: Vec<f64>,
    cpu_before: Vec<Option<ProcessSample>>,
    cpu_after: Vec<Option<ProcessSample>>,
    /// Percent of the machine's CPU time that was busy.
    machine_busy: Option<f64>,
    load_before: String,
    load_after: String,
}

/// Phase 1: the mix at `args.rate` with sign-ins at `args.login_rate` beside it.
async fn run_mix(load: &Arc<Load>, args: &Args, processes: &Processes) -> MixResult {
    let load_before = load_average();
    let cpu_before = processes.sample();
    let machine_before = machine_ticks();
    let wall = std::time::Instant::now();
    let start = Instant::now() + Duration::from_millis(100);
    let mut mix = Mix::default();
    let logins = (args.login_rate * args.seconds as f64).round() as u64;
    let requests = args.rate * args.seconds;
    let (behind, _) = tokio::join!(
        open_loop(load, args.rate as f64, requests, start, |_| mix.next()),
        async {
            if logins > 0 {
                open_loop(load, args.login_rate, logins, start, |_| Route::Login).await;
            }
        }
    );
    let wall_secs = wall.elapsed().as_secs_f64();
    let cpu_after = processes.sample();
    let machine_busy = match (machine_before, machine_ticks()) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            Some(100.0 * (busy1 - busy0) as f64 / (total1 - total0) as f64)
        }
        _ => None,
    };
    let routes: Vec<(Route, Samples)> = Route::ALL
        .iter()
        .map(|r| (*r, load.recorder.take(*r)))
        .collect();
    let mut all = Samples::default();
    for (route, samples) in &routes {
        if route.weight().is_some() {
            all.merge(samples);
        }
    }
    MixResult {
        routes,
        all,
        wall_secs,
        behind,
        window_p99s: load.recorder.window_p99s(),
        cpu_before,
        cpu_after,
        machine_busy,
        load_before,
        load_after: load_average(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (0.0..=1000.0).contains(&args.login_rate),
        "--login-rate must be between 0 and 1000"
    );
    let wanted_files = args.hold_connections as u64 + 256;
    if let Some(limit) = open_file_limit().filter(|l| *l < wanted_files) {
        eprintln!(
            "load: warning: the open-file limit {limit} is below {wanted_files}; raise it \
             (ulimit -n) or some held connections will fail"
        );
    }
    let load = Arc::new(set_up(&args).await?);
    let processes = Processes {
        named: [
            ("idp-api", args.api_pid),
            ("idp-worker", args.worker_pid),
            ("load (this)", Some(std::process::id())),
        ]
        .into_iter()
        .filter_map(|(name, pid)| pid.map(|p| (name, p.to_string())))
        .collect(),
    };

    eprintln!(
        "load: mix at {}/s with sign-ins at {}/s for {} s ...",
        args.rate, args.login_rate, args.seconds
    );
    let mix = run_mix(&load, &args, &processes).await;

    let held = if args.hold_connections > 0 {
        eprintln!(
            "load: holding {} connections for {} s ...",
            args.hold_connections, args.hold_seconds
        );
        let api_pid = args.api_pid.map(|p| p.to_string());
        let held = hold(
            &load,
            args.hold_connections,
            args.hold_seconds,
            api_pid.as_deref(),
        )
        .await?;
        Some(held)
    } else {
        None
    };
    let memory = processes.sample();

    print_report(&args, &load, &mix, held.as_ref(), &processes, &memory);
    Ok(())
}

/// Signs the administrator in, makes the ordinary users and requests their first projects.
async fn set_up(args: &Args) -> anyhow::Result<Load> {
    let base = args.url.as_str().trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(CLIENT_TIMEOUT)
        .user_agent("idp-load/1.0")
        .build()?;
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();

    eprintln!("load: signing in as {} ...", args.admin_email);
    let admin = Arc::new(
        sign_in(&client, &base, &args.admin_email, &args.admin_password)
            .await
            .context("while signing in as the administrator (ADMIN_EMAIL, ADMIN_PASSWORD)")?,
    );
    let users = match (
        &args.database_url,
        &args.email_token_keys,
        &args.personal_data_keys,
        args.users,
    ) {
        (_, _, _, 0) => vec![Arc::clone(&admin)],
        (Some(db), Some(secret), Some(keks), count) => {
            eprintln!("load: registering, verifying and signing in {count} users ...");
            ordinary_users(&client, &base, &run, count, db, secret, keks).await?
        }
        _ => {
            eprintln!(
                "load: LOAD_DATABASE_URL, LOAD_EMAIL_TOKEN_KEYS and LOAD_PERSONAL_DATA_KEYS are \
                 not all set: the administrator sends every request"
            );
            vec![Arc::clone(&admin)]
        }
    };
    let load = Load {
        client,
        base,
        admin,
        users,
        template: args.template.clone(),
        run,
        started: Utc::now(),
        counters: Default::default(),
        recorder: Recorder::new(),
    };

    eprintln!(
        "load: requesting {} projects per account ...",
        args.seed_projects
    );
    for n in 0..args.seed_projects * load.users.len() as u64 {
        load.send(Route::CreateProject, n).await.map_err(|e| {
            anyhow::anyhow!(
                "requesting a project of template {:?} failed: {e} (422: no such template? \
                 see --template)",
                args.template
            )
        })?;
    }
    load.recorder.take(Route::CreateProject);
    Ok(load)
}

const RULE: usize = 98;

fn print_header(first: &str, second: &str) {
    println!(
        "{first:<28} {second:>6} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "requests", "errors", "error %", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    println!("{}", "-".repeat(RULE));
}

fn print_row(label: &str, second: &str, samples: &Samples) {
    let ([p50, p95, p99], max) = samples.percentiles_ms([0.50, 0.95, 0.99]);
    println!(
        "{label:<28} {second:>6} {:>8} {:>7} {:>7.2} {p50:>8.1} {p95:>8.1} {p99:>8.1} {max:>8.1}",
        samples.count(),
        samples.error_count(),
        samples.error_percent(),
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_report(
    args: &Args,
    load: &Load,
    mix: &MixResult,
    held: Option<&Held>,
    processes: &Processes,
    memory: &[Option<ProcessSample>],
) {
    let ordinary = if Arc::ptr_eq(&load.users[0], &load.admin) {
        0
    } else {
        load.users.len()
    };
    println!();
    println!(
        "idp load test of {}: mix of {} req/s for {} s (open loop) + sign-ins {}/s; {ordinary} users + 1 administrator",
        load.base, args.rate, args.seconds, args.login_rate,
    );
    println!();
    print_header("route", "weight");
    for (route, samples) in &mix.routes {
        if let Some(weight) = route.weight() {
            let weight = format!("{:.1}%", f64::from(weight) / 10.0);
            print_row(route.label(), &weight, samples);
        }
    }
    println!("{}", "-".repeat(RULE));
    print_row("mix, all routes", "100%", &mix.all);
    if let Some((_, logins)) = mix
        .routes
        .iter()
        .find(|(r, s)| *r == Route::Login && s.count() > 0)
    {
        let label = format!("{} {}/s", Route::Login.label(), args.login_rate);
        print_row(&label, "apart", logins);
    }
    for (route, samples) in mix.routes.iter().filter(|(_, s)| s.error_count() > 0) {
        println!("  errors of {}: {}", route.label(), samples.errors_text());
    }
    println!(
        "{} mix requests answered within {:.1} s; the sender was at most {:.1} ms behind its schedule",
        mix.all.count(),
        mix.wall_secs,
        mix.behind.as_secs_f64() * 1000.0
    );
    let timeline: Vec<String> = mix.window_p99s.iter().map(|p| format!("{p:.0}")).collect();
    println!(
        "mix p99 per {} s of send time, in ms: {}",
        WINDOW.as_secs(),
        timeline.join(" ")
    );

    if let Some(held) = held {
        println!();
        print_header("held connections", "held");
        let label = format!("{} x GET /v1/auth/me 1/s", args.hold_connections);
        print_row(&label, &held.held.to_string(), &held.samples);
        let mut notes = vec![format!(
            "{} of {} connections opened, {} open and error-free to the end",
            held.opened, args.hold_connections, held.held
        )];
        if !held.connect_errors.is_empty() {
            notes.push(format!("connect failures {:?}", held.connect_errors));
        }
        if !held.samples.errors.is_empty() {
            notes.push(format!("errors {}", held.samples.errors_text()));
        }
        if let Some(fds) = held.api_fds {
            notes.push(format!("idp-api had {fds} file descriptors open midway"));
        }
        println!("{}", notes.join("; "));
    }

    println!();
    println!(
        "{:<16} {:>8} {:>12} {:>14} {:>22}",
        "process", "pid", "RSS now MiB", "RSS peak MiB", "CPU during mix"
    );
    println!("{}", "-".repeat(76));
    for (i, (name, pid)) in processes.named.iter().enumerate() {
        let cpu = match (mix.cpu_before[i], mix.cpu_after[i]) {
            (Some(before), Some(after)) => {
                let secs = after.cpu_secs - before.cpu_secs;
                format!("{secs:.1} s = {:.2} cores", secs / mix.wall_secs)
            }
            _ => "?".into(),
        };
        let (now, peak) = memory[i].map_or(("?".into(), "?".into()), |s| {
            (
                format!("{:.1}", mib(s.rss_kib)),
                format!("{:.1}", mib(s.peak_kib)),
            )
        });
        println!("{name:<16} {pid:>8} {now:>12} {peak:>14} {cpu:>22}");
    }
    println!(
        "machine: {} cores, {} busy during the mix (every process: idp, this generator, PostgreSQL, RabbitMQ, \
         anything else); load average {} before, {} after",
        std::thread::available_parallelism().map_or(0, usize::from),
        mix.machine_busy
            .map_or_else(|| "?".into(), |b| format!("{b:.0}%")),
        mix.load_before,
        mix.load_after,
    );

    println!();
    println!("{:<48} {:>24} {:>5}", "target", "measured", "met");
    println!("{}", "-".repeat(79));
    let target = |name: &str, measured: String, ok: bool| {
        println!(
            "{name:<48} {measured:>24} {:>5}",
            if ok { "yes" } else { "NO" }
        );
    };
    let scheduled = args.rate * args.seconds;
    let on_schedule = mix.all.count() == scheduled && mix.behind <= TARGET_P99;
    target(
        &format!("mix sent at {} req/s, on schedule", args.rate),
        format!(
            "{} sent, <= {:.0} ms late",
            mix.all.count(),
            mix.behind.as_secs_f64() * 1000.0
        ),
        on_schedule,
    );
    let ([mix_p99], _) = mix.all.percentiles_ms([0.99]);
    target(
        &format!("mix p99 <= {} ms", TARGET_P99.as_millis()),
        format!("{mix_p99:.1} ms"),
        mix_p99 <= TARGET_P99.as_secs_f64() * 1000.0,
    );
    target(
        "mix errors = 0",
        mix.all.error_count().to_string(),
        mix.all.error_count() == 0,
    );
    if let Some(held) = held {
        target(
            &format!("{} connections held, 0 errors", args.hold_connections),
            format!("{} held, {} errors", held.held, held.samples.error_count()),
            held.held == args.hold_connections && held.samples.error_count() == 0,
        );
    }
    for (i, (name, _)) in processes.named.iter().enumerate() {
        if !name.starts_with("idp-") {
            continue;
        }
        let goal = format!("{name} RSS peak <= {TARGET_RSS_MIB:.0} MiB");
        match memory[i] {
            Some(s) => target(
                &goal,
                format!("{:.1} MiB", mib(s.peak_kib)),
                mib(s.peak_kib) <= TARGET_RSS_MIB,
            ),
            None => target(&goal, "not readable".into(), false),
        }
    }
    if !processes.named.iter().any(|(n, _)| n.starts_with("idp-")) {
        println!("(memory not measured: no --api-pid or --worker-pid)");
    }
    println!();
    println!(
        "Latency runs from each request's scheduled send time to the end of its answer. An error is any answer"
    );
    println!(
        "but the intended one (200; 202 for POST /v1/projects), or none. Sign-ins are apart from the rate and"
    );
    println!(
        "its targets: each costs an argon2id hash (m=19456 KiB, t=2), tens of ms of CPU by design."
    );
}
