//! Two-factor sign-in benchmark: `scripts/bench two-factor` runs it against a scratch database.
//!
//! Starts the real API in this process and drives it with closed-loop clients (as many as the
//! auth benchmark's wrk connections), each request from its own client address:
//!
//! - sign-ins with TOTP (password, then `POST /v1/auth/2fa/verify` with a code computed here),
//!   against sign-ins with the password alone, in `BENCH_ROUNDS` (default 3) interleaved rounds
//!   of each after all accounts are set up; the ratio is the median of the rounds' ratios;
//! - `POST /v1/auth/2fa/verify` alone at a steady 200 requests/s (open loop), on challenges
//!   made beforehand: its latency percentiles.
//!
//! A code works once per account and step, so each sign-in with TOTP takes an account whose
//! next step is still within the window; the benchmark enrols enough accounts for that.
//!
//! Environment: `DATABASE_URL` (wiped: a scratch database), `BENCH_SECONDS` (each closed-loop
//! round, default 10), `BENCH_ROUNDS` (default 3), `BENCH_VERIFY_RATE` (default 200),
//! `BENCH_VERIFY_SECONDS` (default 5).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use idp_events::identity::one_time_token::{self, Purpose};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use totp_rs::{Algorithm, Secret, TOTP};

mod support;

use support::{BenchApi, PASSWORD, TOKEN_SECRET as SECRET, env_u64, percentile};

fn now_step() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(30)
}

/// A client address of its own for every request (through the trusted loopback proxy).
fn client_address(n: u64) -> String {
    format!(
        "10.{}.{}.{}",
        (n >> 16) & 255,
        (n >> 8) & 255,
        (n & 255).max(1)
    )
}

/// The API under test and a client of it.
struct Api {
    base: String,
    client: reqwest::Client,
    requests: AtomicU64,
}

impl Api {
    async fn post(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("x-forwarded-for", client_address(n))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

/// An account with a second factor: its authenticator and the last step it used.
struct Enrolled {
    email: String,
    totp: TOTP,
    last_step: Mutex<i64>,
}

impl Enrolled {
    /// A code for a step later than the last used and within one step of now, taken.
    async fn take_code(&self) -> Option<String> {
        let mut last = self.last_step.lock().await;
        let now = now_step();
        let step = (now - 1..=now + 1).find(|s| *s > *last)?;
        *last = step;
        Some(self.totp.generate(u64::try_from(step).ok()? * 30))
    }
}

/// Registers and verifies `emails` (verification tokens recomputed from the log); signs each
/// in and answers the access tokens.
async fn accounts(
    api: &Api,
    pool: &sqlx::PgPool,
    emails: &[String],
) -> anyhow::Result<Vec<String>> {
    let before: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'EmailVerified'")
            .fetch_one(pool)
            .await?;
    for email in emails {
        let (status, body) = api
            .post(
                "/v1/auth/register",
                &json!({"email": email, "password": PASSWORD}),
                None,
            )
            .await?;
        anyhow::ensure!(status == 202, "register: {status} {body}");
    }
    let requested: Vec<uuid::Uuid> = sqlx::query_scalar(
        "select r.event_id from events r
          where r.event_type = 'VerificationRequested'
            and not exists (select 1 from events v where v.stream_id = r.stream_id and v.event_type = 'EmailVerified')",
    )
    .fetch_all(pool)
    .await?;
    let keys = idp_events::keys::SecretKeys::single("bench", SECRET.as_bytes());
    for event_id in requested {
        let token = one_time_token::issue(&keys, Purpose::VerifyEmail, event_id);
        let (status, body) = api
            .post("/v1/auth/verify-email", &json!({ "token": token }), None)
            .await?;
        anyhow::ensure!(status == 200, "verify: {status} {body}");
    }
    let after: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'EmailVerified'")
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(
        after - before == i64::try_from(emails.len())?,
        "not every account verified"
    );
    let mut tokens = Vec::with_capacity(emails.len());
    for email in emails {
        let (status, body) = api
            .post(
                "/v1/auth/login",
                &json!({"email": email, "password": PASSWORD}),
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "login: {status} {body}");
        tokens.push(
            body["access_token"]
                .as_str()
                .context("no access token")?
                .to_owned(),
        );
    }
    Ok(tokens)
}

/// Enrols a second factor for each signed-in account, completed with the code of the step
/// before now (so the steps of now and after are free).
async fn enrol(
    api: &Api,
    emails: &[String],
    tokens: &[String],
) -> anyhow::Result<Vec<Arc<Enrolled>>> {
    let mut enrolled = Vec::with_capacity(emails.len());
    for (email, token) in emails.iter().zip(tokens) {
        let (status, body) = api
            .post(
                "/v1/auth/2fa/enable-init",
                &json!({ "password": PASSWORD }),
                Some(token),
            )
            .await?;
        anyhow::ensure!(status == 200, "enable-init: {status} {body}");
        let bytes = Secret::Encoded(body["secret"].as_str().context("no secret")?.to_owned())
            .to_bytes()
            .map_err(|e| anyhow::anyhow!("secret: {e:?}"))?;
        let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes, None, String::new());
        let step = now_step() - 1;
        let code = totp.generate(u64::try_from(step)? * 30);
        let (status, body) = api
            .post(
                "/v1/auth/2fa/enable-complete",
                &json!({ "code": code }),
                Some(token),
            )
            .await?;
        anyhow::ensure!(status == 200, "enable-complete: {status} {body}");
        enrolled.push(Arc::new(Enrolled {
            email: email.clone(),
            totp,
            last_step: Mutex::new(step),
        }));
    }
    Ok(enrolled)
}

/// The median of `values` (NaN without values).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Sign-ins per second of `clients` closed loops for `seconds`; `sign_in` does one (true:
/// signed in) given a counter.
async fn closed_loop<F, Fut>(clients: usize, seconds: u64, sign_in: F) -> anyhow::Result<(f64, u64)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send,
{
    let sign_in = Arc::new(sign_in);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (sign_in, next) = (sign_in.clone(), next.clone());
        tasks.spawn(async move {
            let (mut done, mut failed) = (0_u64, 0_u64);
            while Instant::now() < deadline {
                match sign_in(next.fetch_add(1, Ordering::Relaxed)).await {
                    Ok(true) => done += 1,
                    Ok(false) | Err(_) => failed += 1,
                }
            }
            (done, failed)
        });
    }
    let (mut done, mut failed) = (0_u64, 0_u64);
    while let Some(joined) = tasks.join_next().await {
        let (d, f) = joined?;
        done += d;
        failed += f;
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), failed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = support::database_url();
    let seconds = env_u64("BENCH_SECONDS", 10);
    let verify_rate = env_u64("BENCH_VERIFY_RATE", 200).max(1);
    let verify_seconds = env_u64("BENCH_VERIFY_SECONDS", 5).max(1);
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1);
    let pool = support::scratch_database(&url).await?;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let clients = 2 * cores + 2;

    let bench_api = BenchApi::start(&url).await?;
    let api = Arc::new(Api {
        base: bench_api.base.clone(),
        client: reqwest::Client::new(),
        requests: AtomicU64::new(1),
    });

    // Enough accounts that every TOTP sign-in of every round finds a free step (each account
    // has two at first, the current step and the next, and one more every 30 s), at up to 120
    // sign-ins a second.
    let totp_accounts = usize::try_from(seconds * 60 * rounds)
        .unwrap_or(1_800)
        .max(100);
    let verify_accounts = usize::try_from(verify_rate * verify_seconds / 2 + 10).unwrap_or(510);
    eprintln!(
        "setting up 50 accounts with the password alone, {totp_accounts} + {verify_accounts} with TOTP ..."
    );
    let plain: Vec<String> = (0..50).map(|n| format!("plain{n}@example.com")).collect();
    accounts(&api, &pool, &plain).await?;
    let emails: Vec<String> = (0..totp_accounts)
        .map(|n| format!("totp{n}@example.com"))
        .collect();
    let tokens = accounts(&api, &pool, &emails).await?;
    let enrolled = Arc::new(enrol(&api, &emails, &tokens).await?);

    let plain = Arc::new(plain);
    let plain_sign_in = {
        let (api, plain) = (api.clone(), plain.clone());
        move |n: usize| {
            let (api, plain) = (api.clone(), plain.clone());
            async move {
                let email = &plain[n % plain.len()];
                let (status, body) = api
                    .post(
                        "/v1/auth/login",
                        &json!({"email": email, "password": PASSWORD}),
                        None,
                    )
                    .await?;
                Ok(status == 200 && body["access_token"].is_string())
            }
        }
    };
    let totp_sign_in = {
        let (api, enrolled) = (api.clone(), enrolled.clone());
        move |n: usize| {
            let (api, enrolled) = (api.clone(), enrolled.clone());
            async move {
                // The next account with a free step.
                let mut code = None;
                let mut account = None;
                for k in 0..enrolled.len() {
                    let candidate = &enrolled[(n + k) % enrolled.len()];
                    if let Some(c) = candidate.take_code().await {
                        code = Some(c);
                        account = Some(candidate.clone());
                        break;
                    }
                }
                let (Some(code), Some(account)) = (code, account) else {
                    bail!("no account has a free step left: enrol more");
                };
                let (status, body) = api
                    .post(
                        "/v1/auth/login",
                        &json!({"email": account.email, "password": PASSWORD}),
                        None,
                    )
                    .await?;
                anyhow::ensure!(
                    status == 200 && body["status"] == "mfa_required",
                    "login: {status} {body}"
                );
                let challenge = body["challenge"].as_str().context("no challenge")?;
                let (status, body) = api
                    .post(
                        "/v1/auth/2fa/verify",
                        &json!({"challenge": challenge, "code": code}),
                        None,
                    )
                    .await?;
                Ok(status == 200 && body["access_token"].is_string())
            }
        }
    };
    // Rounds of each kind, interleaved, so that neither runs on a warmer or a colder machine
    // (a database just filled by the set-up, the other core busy with its autovacuum): the
    // ratio reported is the median of the rounds' ratios.
    let (mut plain_rates, mut totp_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_failed, mut totp_failed) = (0_u64, 0_u64);
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: sign-ins with the password alone for {seconds}s ...");
        let (plain_rate, failed) = closed_loop(clients, seconds, plain_sign_in.clone()).await?;
        plain_failed += failed;
        eprintln!(
            "round {round}/{rounds}: sign-ins with TOTP (password + code) for {seconds}s ..."
        );
        let (totp_rate, failed) = closed_loop(clients, seconds, totp_sign_in.clone()).await?;
        totp_failed += failed;
        eprintln!(
            "round {round}/{rounds}: {plain_rate:.1}/s alone, {totp_rate:.1}/s with TOTP: {:.2}x",
            totp_rate / plain_rate
        );
        plain_rates.push(plain_rate);
        totp_rates.push(totp_rate);
        ratios.push(totp_rate / plain_rate);
    }
    let plain_rate = median(&mut plain_rates);
    let totp_rate = median(&mut totp_rates);
    let ratio = median(&mut ratios);

    // Verification alone: challenges made first, then verified at a steady rate.
    let emails: Vec<String> = (0..verify_accounts)
        .map(|n| format!("verify{n}@example.com"))
        .collect();
    let tokens = accounts(&api, &pool, &emails).await?;
    let verifying = enrol(&api, &emails, &tokens).await?;
    let total = usize::try_from(verify_rate * verify_seconds)?;
    eprintln!("making {total} challenges ...");
    let mut prepared = Vec::with_capacity(total);
    for n in 0..total {
        let account = &verifying[n % verifying.len()];
        let (status, body) = api
            .post(
                "/v1/auth/login",
                &json!({"email": account.email, "password": PASSWORD}),
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "login: {status} {body}");
        prepared.push((
            account.clone(),
            body["challenge"]
                .as_str()
                .context("no challenge")?
                .to_owned(),
        ));
    }
    eprintln!("POST /v1/auth/2fa/verify at {verify_rate}/s for {verify_seconds}s ...");
    let interval = Duration::from_secs_f64(1.0 / verify_rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for (account, challenge) in prepared {
        ticker.tick().await;
        let api = api.clone();
        tasks.spawn(async move {
            let code = account.take_code().await.context("no free step")?;
            let started = Instant::now();
            let (status, _) = api
                .post(
                    "/v1/auth/2fa/verify",
                    &json!({"challenge": challenge, "code": code}),
                    None,
                )
                .await?;
            anyhow::Ok((started.elapsed(), status == 200))
        });
    }
    let (mut latencies, mut verify_failed) = (Vec::with_capacity(total), 0_u64);
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((latency, true)) => latencies.push(latency),
            _ => verify_failed += 1,
        }
    }
    let p50 = percentile(&mut latencies, 0.50);
    let p99 = percentile(&mut latencies, 0.99);

    bench_api.stop().await?;

    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>8} {:>16} {:>4}",
        "scenario", "idp", "baseline", "ratio", "target", "met"
    );
    println!("{}", "-".repeat(98));
    let row = |name: &str, v: f64, b: f64, target: &str, met: bool| {
        let ratio = if b > 0.0 && b.is_finite() {
            format!("{:.2}x", v / b)
        } else {
            "-".into()
        };
        println!(
            "{name:<44} {v:>10.1} {b:>10.1} {ratio:>8} {target:>16} {:>4}",
            if met { "yes" } else { "NO" }
        );
    };
    println!(
        "{:<44} {:>10} {:>10} {:>8} {:>16} {:>4}",
        format!("sign-ins/s with TOTP vs alone ({rounds} rounds)"),
        format!("{totp_rate:.1}"),
        format!("{plain_rate:.1}"),
        format!("{ratio:.2}x"),
        ">= 0.90x",
        if ratio >= 0.9 { "yes" } else { "NO" }
    );
    row(
        "sign-ins refused or failed (TOTP, alone)",
        totp_failed as f64,
        plain_failed as f64,
        "0",
        totp_failed == 0 && plain_failed == 0,
    );
    row(
        &format!("2fa/verify alone p99 (ms) at {verify_rate}/s"),
        p99,
        f64::NAN,
        "<= 10 ms",
        p99 <= 10.0,
    );
    row("2fa/verify alone p50 (ms)", p50, f64::NAN, "-", true);
    row(
        "2fa/verify alone refused or failed",
        verify_failed as f64,
        f64::NAN,
        "0",
        verify_failed == 0,
    );
    println!();
    println!(
        "closed loops: {clients} clients, each request from its own client address; TOTP: {totp_accounts} accounts"
    );
    Ok(())
}
