//! The sealer: at intervals, seals the events committed since the last seal into a signed seal
//! chained to the one before, so that any later change to the log shows (see
//! [`idp_events::seal`]).
//!
//! Seals are signed with a key of their own, from `SEAL_KEYS_DIR`, never with the API's
//! access-token keys: a worker that can seal cannot mint access tokens. At start the worker
//! makes sure that directory has a private key ([`prepare_signing_key`]); each round reads it
//! again, so a rotated key signs from the next round on.
//!
//! Single-active across worker processes: a runner holds a session advisory lock on the
//! connection it seals on; the others stand by and take over when that connection goes away.
//! Every round also takes a transaction lock, so even a second sealer (a test, an operator
//! tool) could not fork the chain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use idp_events::backoff::Backoff;
use idp_events::keys::KeyError;
use idp_events::seal::{self, RUNNER_LOCK, Seal, SealError, SealSigner};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How the sealer runs.
#[derive(Debug, Clone)]
pub struct SealerSettings {
    /// Where the signing key is: `SEAL_KEYS_DIR` (the private key sorting last signs).
    pub keys_dir: PathBuf,
    /// Time between rounds (`SEAL_INTERVAL_SECS`).
    pub interval: Duration,
    /// Most events per seal (`SEAL_MAX_EVENTS`).
    pub max_events: i64,
}

impl SealerSettings {
    /// The settings of a configured worker.
    pub fn from_config(config: &Config) -> Self {
        Self {
            keys_dir: config.common.seal_keys_dir.clone(),
            interval: Duration::from_secs(config.seal.seal_interval_secs),
            max_events: config.seal.seal_max_events,
        }
    }
}

/// Why a round made no seal.
#[derive(Debug, thiserror::Error)]
pub enum SealRoundError {
    /// `SEAL_KEYS_DIR` holds no private key (it had one at start: someone removed it).
    #[error("no seal signing key (<kid>.pem, an Ed25519 PKCS#8 private key) in SEAL_KEYS_DIR {dir}", dir = .0.display())]
    NoKey(PathBuf),
    /// The signing key cannot be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// The worker cannot start sealing.
#[derive(Debug, thiserror::Error)]
pub enum SealKeySetupError {
    /// `SEAL_KEYS_DIR` holds no private key and generating one is not allowed.
    #[error(
        "SEAL_KEYS_DIR {dir} holds no seal signing key (<kid>.pem, an Ed25519 PKCS#8 private key) \
         and SEAL_GENERATE_KEYS is false: add one (see docs/audit.md)",
        dir = .0.display()
    )]
    Missing(PathBuf),
    /// The directory or a key in it cannot be read, or a new key cannot be written.
    #[error("SEAL_KEYS_DIR: {0}")]
    Key(#[from] KeyError),
}

/// The key the sealer will sign with: the private key in `SEAL_KEYS_DIR` sorting last, or, when
/// there is none and `SEAL_GENERATE_KEYS` allows it, a development key generated there (file
/// 0600, directory 0700). Called at start, so a worker that could never seal does not start.
pub fn prepare_signing_key(config: &Config) -> Result<SealSigner, SealKeySetupError> {
    let dir = &config.common.seal_keys_dir;
    if let Some(signer) = SealSigner::load_dir(dir)? {
        return Ok(signer);
    }
    if !config.seal.seal_generate_keys {
        return Err(SealKeySetupError::Missing(dir.clone()));
    }
    let signer = SealSigner::generate_in(dir)?;
    tracing::info!(
        path = %dir.display(),
        kid = %signer.key_id(),
        "generated a development seal signing key"
    );
    Ok(signer)
}

/// One round: seals everything committed since the last seal with the current signing key and
/// returns the new seals (none when nothing new was committed).
pub async fn seal_once(
    conn: &mut PgConnection,
    keys_dir: &Path,
    max_events: i64,
    shutdown: &CancellationToken,
) -> Result<Vec<Seal>, SealRoundError> {
    // Read each round, so a rotated key signs from the next round on.
    let signer =
        SealSigner::load_dir(keys_dir)?.ok_or_else(|| SealRoundError::NoKey(keys_dir.into()))?;
    let mut made = Vec::new();
    while !shutdown.is_cancelled() {
        let Some(seal) = seal::seal_next(conn, &signer, max_events).await? else {
            break;
        };
        metrics::counter!("idp_seals_total").increment(1);
        metrics::counter!("idp_sealed_events_total")
            .increment(u64::try_from(seal.fields.event_count).unwrap_or_default());
        #[allow(clippy::cast_precision_loss)] // seal numbers stay far below 2^52
        metrics::gauge!("idp_seal_last_number").set(seal.fields.seal_number as f64);
        tracing::info!(
            seal.number = seal.fields.seal_number,
            seal.events = seal.fields.event_count,
            seal.to_position = seal.fields.to.position,
            seal.key_id = %seal.fields.key_id,
            "sealed the log"
        );
        made.push(seal);
    }
    Ok(made)
}

/// Runs the sealer until `shutdown` is cancelled: stands by while another process seals,
/// otherwise seals every `settings.interval`. Database errors end the session; it reconnects
/// with backoff.
pub async fn run(pool: PgPool, settings: SealerSettings, shutdown: CancellationToken) {
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut failures = 0_u32;
    while !shutdown.is_cancelled() {
        match session(&pool, &settings, &shutdown).await {
            Ok(()) => break,
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %err, "sealer interrupted; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff.delay(failures)) => {}
                }
            }
        }
    }
}

async fn session(
    pool: &PgPool,
    settings: &SealerSettings,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let mut announced = false;
    loop {
        let active: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
            .bind(RUNNER_LOCK.0)
            .bind(RUNNER_LOCK.1)
            .fetch_one(&mut conn)
            .await?;
        if active {
            break;
        }
        if !announced {
            tracing::info!("another sealer is active; standing by");
            announced = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
    tracing::info!(
        interval_secs = settings.interval.as_secs_f64(),
        "sealer active"
    );
    let mut warned_no_key = false;
    while !shutdown.is_cancelled() {
        match seal_once(&mut conn, &settings.keys_dir, settings.max_events, shutdown).await {
            Ok(_) => warned_no_key = false,
            Err(SealRoundError::Seal(SealError::Database(err))) => return Err(err),
            Err(err @ SealRoundError::NoKey(_)) => {
                if !warned_no_key {
                    tracing::warn!(error = %err, "cannot seal yet; trying again next round");
                    warned_no_key = true;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot seal; trying again next round"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
    let _ = conn.close().await;
    Ok(())
}
