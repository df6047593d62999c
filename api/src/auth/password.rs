//! Passwords: the policy new passwords must meet, and argon2id hashing off the async runtime.
//!
//! # Policy
//!
//! [`validate`] follows NIST SP 800-63B: a length window ([`MIN_CHARS`]..=[`MAX_CHARS`] Unicode
//! scalar values), any Unicode allowed, no composition rules, and a refusal of passwords found
//! in a list of commonly used ones.
//!
//! The bundled list, `common_passwords.txt`, is taken from the "passwords" frequency list that
//! ships with zxcvbn (the PyPI package `zxcvbn` 4.5.0, a port of Dropbox's zxcvbn; MIT License,
//! Copyright (c) 2016 Daniel Wolf; Copyright (c) 2012-2016 Dan Wheeler and Dropbox, Inc.). It
//! holds the 10,000 most common entries of that list plus every entry of 12 or more characters
//! from the whole 30,000-entry list (10,173 lines, lowercase, most common first).
//!
//! # Hashing
//!
//! [`Hasher`] hashes with argon2id (version 0x13) and produces PHC strings. The work runs on
//! tokio's blocking thread pool behind a semaphore, so that a flood of logins queues instead of
//! starving the runtime or allocating unbounded memory (each hash takes `memory_kib` KiB).
//! Neither passwords nor hashes are ever logged.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OnceCell, Semaphore};

/// Why a new password is refused (the caller's fault: HTTP 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must be at least {min} characters long")]
    TooShort { min: usize },
    #[error("the password must be at most {max} characters long")]
    TooLong { max: usize },
    #[error("this password is too common; choose another")]
    Common,
}

/// The fewest characters (Unicode scalar values) a new password may have.
pub const MIN_CHARS: usize = 12;
/// The most characters (Unicode scalar values) a new password may have.
pub const MAX_CHARS: usize = 128;

/// The bundled common-password list, one lowercase entry per line.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common_passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// Checks a new password.
///
/// Its length is counted in Unicode scalar values (`char`s) as given: no normalization (NFC or
/// other) is applied or required. It must have [`MIN_CHARS`]..=[`MAX_CHARS`] of them. Any
/// Unicode is allowed and there are no composition rules (no "one digit, one symbol"). It is
/// refused if, trimmed and lowercased, it is in the bundled common-password list.
pub fn validate(password: &str) -> Result<(), PasswordError> {
    // Count no further than needed, whatever the input's size.
    let chars = password.chars().take(MAX_CHARS + 1).count();
    if chars < MIN_CHARS {
        return Err(PasswordError::TooShort { min: MIN_CHARS });
    }
    if chars > MAX_CHARS {
        return Err(PasswordError::TooLong { max: MAX_CHARS });
    }
    let normalized = password.trim().to_lowercase();
    if COMMON_PASSWORDS.contains(normalized.as_str()) {
        return Err(PasswordError::Common);
    }
    Ok(())
}

/// The floor for [`HashParams::memory_kib`]: 19 MiB.
const MIN_MEMORY_KIB: u32 = 19_456;
/// The floor for [`HashParams::iterations`].
const MIN_ITERATIONS: u32 = 2;
/// The floor for [`HashParams::parallelism`].
const MIN_PARALLELISM: u32 = 1;
/// The argon2 output length this module produces, in bytes.
const OUTPUT_LEN: usize = argon2::Params::DEFAULT_OUTPUT_LEN;

/// argon2id cost parameters. `Default` is OWASP's floor: 19 MiB (19_456 KiB), t=2, p=1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory cost in KiB (argon2's `m`).
    pub memory_kib: u32,
    /// Number of passes (argon2's `t`).
    pub iterations: u32,
    /// Degree of parallelism (argon2's `p`).
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            memory_kib: MIN_MEMORY_KIB,
            iterations: MIN_ITERATIONS,
            parallelism: MIN_PARALLELISM,
        }
    }
}

impl HashParams {
    /// Refuses parameters below the floor (19_456 KiB, t=2, p=1) with an error message naming the
    /// parameter, and parameters argon2 itself cannot use.
    pub fn validated(self) -> Result<Self, String> {
        if self.memory_kib < MIN_MEMORY_KIB {
            return Err(format!(
                "argon2 memory_kib must be at least {MIN_MEMORY_KIB}, got {}",
                self.memory_kib
            ));
        }
        if self.iterations < MIN_ITERATIONS {
            return Err(format!(
                "argon2 iterations must be at least {MIN_ITERATIONS}, got {}",
                self.iterations
            ));
        }
        if self.parallelism < MIN_PARALLELISM {
            return Err(format!(
                "argon2 parallelism must be at least {MIN_PARALLELISM}, got {}",
                self.parallelism
            ));
        }
        self.argon2_params().map_err(|e| {
            format!("invalid argon2 parameters (memory_kib, iterations, parallelism): {e}")
        })?;
        Ok(self)
    }

    fn argon2_params(self) -> Result<Params, argon2::Error> {
        Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(OUTPUT_LEN),
        )
    }
}

/// Hashing or verifying could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// argon2 refused the input or parameters.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task died.
    #[error("the hashing task failed")]
    Join,
    /// Every permit is taken and the queue behind them is full (`ARGON2_MAX_QUEUE`): the
    /// request is shed at once instead of waiting behind a flood.
    #[error("too many password computations are waiting")]
    Busy,
}

/// Outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches the stored hash.
    pub matches: bool,
    /// the stored hash uses weaker parameters (or another algorithm/version) than the current
    /// ones; rehash at this login
    pub needs_rehash: bool,
}

impl Verified {
    const MISMATCH: Self = Self {
        matches: false,
        needs_rehash: false,
    };
}

/// A password copied for a blocking task, overwritten (best effort) when dropped.
struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

/// The password behind [`Hasher::verify_dummy`]'s hash; it guards nothing.
const DUMMY_PASSWORD: &str = "idp dummy password: timing equalization only";

/// Hashes and verifies passwords with argon2id on the blocking thread pool, at most `permits` at
/// once (a tokio Semaphore sized to the available cores by default) so that a login flood cannot
/// starve the runtime or exhaust memory, and with at most `max_queue` computations waiting for
/// a permit: beyond that, [`HashError::Busy`] at once, so that a flood costs its senders a quick
/// refusal instead of costing everyone a long wait.
///
/// Clones share the semaphore, the queue, the cached dummy hash and the working memory.
#[derive(Clone)]
pub struct Hasher {
    params: HashParams,
    permits: usize,
    semaphore: Arc<Semaphore>,
    max_queue: usize,
    admitted: Arc<AtomicUsize>,
    dummy: Arc<OnceCell<String>>,
    scratch: Arc<Scratch>,
}

/// Argon2's working memory (`m_cost` KiB per computation), kept between computations: at most
/// one buffer per permit. When every computation allocated and freed its own, the allocator kept
/// the freed blocks in per-thread arenas, and the API's resident memory grew by the memory cost
/// (19 MiB) for each blocking thread that ever hashed, to about 600 MiB under load.
#[derive(Debug, Default)]
struct Scratch {
    kept: Mutex<Vec<Vec<Block>>>,
    limit: usize,
}

impl Scratch {
    /// Runs `work` on at least `blocks` blocks of memory, reusing a kept buffer if one is large
    /// enough. Argon2 writes every block before it reads it, so old contents do not matter.
    fn with<T>(&self, blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
        let reused = self.kept.lock().ok().and_then(|mut kept| kept.pop());
        let mut memory = match reused {
            Some(memory) if memory.len() >= blocks => memory,
            _ => vec![Block::default(); blocks],
        };
        let result = work(&mut memory[..blocks]);
        if let Ok(mut kept) = self.kept.lock()
            && kept.len() < self.limit
        {
            kept.push(memory);
        }
        result
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .field("permits", &self.permits)
            .field("available_permits", &self.semaphore.available_permits())
            .field("max_queue", &self.max_queue)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// permits = std::thread::available_parallelism (fallback 2).
    ///
    /// The parameters are taken as given; check configured ones with [`HashParams::validated`].
    pub fn new(params: HashParams) -> Self {
        let permits = std::thread::available_parallelism().map_or(2, usize::from);
        Self::with_permits(params, permits)
    }

    /// Like [`Hasher::new`] with an explicit bound on concurrent hash computations (at least 1).
    pub fn with_permits(params: HashParams, permits: usize) -> Self {
        if params.validated().is_err() {
            tracing::warn!(
                memory_kib = params.memory_kib,
                iterations = params.iterations,
                parallelism = params.parallelism,
                "argon2 parameters are below the recommended floor or invalid"
            );
        }
        let permits = permits.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            params,
            permits,
            semaphore: Arc::new(Semaphore::new(permits)),
            max_queue: DEFAULT_MAX_QUEUE,
            admitted: Arc::default(),
            dummy: Arc::new(OnceCell::new()),
            scratch: Arc::new(Scratch {
                kept: Mutex::default(),
                limit: permits,
            }),
        }
    }

    /// At most `max_queue` computations wait for a permit; more are refused with
    /// [`HashError::Busy`].
    #[must_use]
    pub fn with_max_queue(mut self, max_queue: usize) -> Self {
        self.max_queue = max_queue;
        self
    }

    /// The parameters new hashes are made with.
    pub fn params(&self) -> HashParams {
        self.params
    }

    /// PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash) with a random 16-byte salt.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let params = self.params;
        let password = Secret(password.to_owned());
        let scratch = Arc::clone(&self.scratch);
        self.run_blocking(move || {
            let hash_err = |e: argon2::password_hash::Error| HashError::Hash(e.to_string());
            let argon_params = params
                .argon2_params()
                .map_err(|e| HashError::Hash(e.to_string()))?;
            let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params.clone());
            let salt_bytes = rand::random::<[u8; 16]>();
            let salt = SaltString::encode_b64(&salt_bytes).map_err(hash_err)?;
            let output = scratch.with(argon_params.block_count(), |memory| {
                Output::init_with(OUTPUT_LEN, |out| {
                    argon
                        .hash_password_into_with_memory(
                            password.0.as_bytes(),
                            &salt_bytes,
                            out,
                            memory,
                        )
                        .map_err(Into::into)
                })
            });
            let hash = PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&argon_params).map_err(hash_err)?,
                salt: Some(salt.as_salt()),
                hash: Some(output.map_err(hash_err)?),
            };
            Ok(hash.to_string())
        })
        .await?
    }

    /// Verifies against a PHC string. A malformed stored hash counts as not matching (log a
    /// warning without the hash), never a panic; it still costs a dummy verification.
    ///
    /// `needs_rehash` is meaningful only when the password matches.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<Verified, HashError> {
        if let Err(reason) = check_phc(phc) {
            tracing::warn!(
                reason,
                "stored password hash is malformed; treating it as a mismatch"
            );
            self.verify_dummy(password).await?;
            return Ok(Verified::MISMATCH);
        }
        self.verify_phc(password, phc).await
    }

    /// Spends the same work as a real verification against a fixed dummy hash made with the
    /// current parameters (computed lazily once, cached), so that unknown accounts take as long
    /// as wrong passwords. Fails only as a real verification would (e.g. [`HashError::Busy`]),
    /// so that an overloaded hasher refuses unknown and known accounts alike.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), HashError> {
        let dummy = self
            .dummy
            .get_or_try_init(|| self.hash(DUMMY_PASSWORD))
            .await?;
        self.verify_phc(password, dummy).await.map(|_| ())
    }

    /// Verifies against a PHC string that [`check_phc`] accepted.
    async fn verify_phc(&self, password: &str, phc: &str) -> Result<Verified, HashError> {
        let current = self.params;
        let password = Secret(password.to_owned());
        let phc = phc.to_owned();
        let scratch = Arc::clone(&self.scratch);
        self.run_blocking(move || {
            let Ok(hash) = PasswordHash::new(&phc) else {
                tracing::warn!("stored password hash is malformed; treating it as a mismatch");
                return Verified::MISMATCH;
            };
            // The hash is computed again with the stored hash's own algorithm, version and
            // parameters, and compared in constant time.
            let matches = match recompute(&hash, password.0.as_bytes(), &scratch) {
                Ok(computed) => Some(&computed) == hash.hash.as_ref(),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "stored password hash cannot be verified; treating it as a mismatch"
                    );
                    return Verified::MISMATCH;
                }
            };
            Verified {
                matches,
                needs_rehash: needs_rehash(&hash, current),
            }
        })
        .await
    }

    /// Runs `work` on the blocking pool while holding a permit; the permit moves into the task,
    /// so it stays held until the computation ends even if the caller stops waiting.
    async fn run_blocking<T, F>(&self, work: F) -> Result<T, HashError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let admitted = Admitted::take(&self.admitted, self.permits + self.max_queue)?;
        let permit = Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .map_err(|_| HashError::Join)?;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, admitted);
            work()
        })
        .await
        .map_err(|_| HashError::Join)
    }
}

/// Each client's share of the hasher: at most one password computation of one client (its rate
/// limit key: an IPv4 address or an IPv6 /64) runs or waits for a permit at a time; its other
/// requests wait their turn without occupying the queue. So a flood from one address costs
/// that address time, not everyone: another client's sign-in waits behind at most one of the
/// flood's computations.
#[derive(Debug, Clone, Default)]
pub struct ClientShares {
    clients: Arc<Mutex<HashMap<String, Weak<Semaphore>>>>,
}

/// A client's turn at the hasher, held until dropped.
#[derive(Debug)]
pub struct ClientTurn {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ClientShares {
    /// Waits for `client`'s turn.
    pub async fn turn(&self, client: &str) -> ClientTurn {
        let semaphore = {
            let mut clients = self
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(live) = clients.get(client).and_then(Weak::upgrade) {
                live
            } else {
                if clients.len() >= 1024 {
                    // Forget clients nobody waits for any more.
                    clients.retain(|_, share| share.strong_count() > 0);
                }
                let fresh = Arc::new(Semaphore::new(1));
                clients.insert(client.to_owned(), Arc::downgrade(&fresh));
                fresh
            }
        };
        // Never closed, so acquiring cannot fail; a closed one would just mean no turn-taking.
        match semaphore.clone().acquire_owned().await {
            Ok(permit) => ClientTurn { _permit: permit },
            Err(_) => ClientTurn {
                _permit: Arc::new(Semaphore::new(1))
                    .try_acquire_owned()
                    .unwrap_or_else(|_| unreachable!("a fresh semaphore has a permit")),
            },
        }
    }
}

/// Computations waiting for a permit, by default, beyond those running.
pub const DEFAULT_MAX_QUEUE: usize = 32;

/// One computation counted as running or waiting, until it is dropped: when the computation
/// ends, or when its caller stops waiting for a permit.
struct Admitted(Arc<AtomicUsize>);

impl Admitted {
    /// Counts one more, unless `limit` are counted already.
    fn take(count: &Arc<AtomicUsize>, limit: usize) -> Result<Self, HashError> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| {
                metrics::counter!("idp_auth_hashes_shed_total").increment(1);
                HashError::Busy
            })?;
        Ok(Self(Arc::clone(count)))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hash of `password` with the algorithm, version, parameters, salt and output length of
/// `stored`, computed in the kept working memory.
fn recompute(
    stored: &PasswordHash<'_>,
    password: &[u8],
    scratch: &Scratch,
) -> Result<Output, argon2::password_hash::Error> {
    use argon2::password_hash::Error;
    let algorithm = Algorithm::try_from(stored.algorithm)?;
    let version = stored
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let params = Params::try_from(stored)?;
    let salt = stored.salt.ok_or(Error::SaltInvalid(
        argon2::password_hash::errors::InvalidValue::Malformed,
    ))?;
    let mut salt_buffer = [0_u8; 64];
    let salt = salt.decode_b64(&mut salt_buffer)?;
    let length = stored.hash.map_or(Params::DEFAULT_OUTPUT_LEN, |h| h.len());
    let argon = Argon2::new(algorithm, version, params.clone());
    scratch.with(params.block_count(), |memory| {
        Output::init_with(length, |out| {
            argon
                .hash_password_into_with_memory(password, salt, out, memory)
                .map_err(Into::into)
        })
    })
}

/// Checks that a stored PHC string is one this module can verify, without logging it.
fn check_phc(phc: &str) -> Result<(), &'static str> {
    let hash = PasswordHash::new(phc).map_err(|_| "not a PHC string")?;
    Algorithm::try_from(hash.algorithm).map_err(|_| "not an argon2 algorithm")?;
    if let Some(version) = hash.version {
        Version::try_from(version).map_err(|_| "unknown argon2 version")?;
    }
    Params::try_from(&hash).map_err(|_| "invalid argon2 parameters")?;
    if hash.salt.is_none() {
        return Err("no salt");
    }
    if hash.hash.is_none() {
        return Err("no hash output");
    }
    Ok(())
}

/// Whether a stored hash is weaker than, or otherwise differs in kind from, what `current`
/// produces: not argon2id, not version 0x13 (or no version), any of m/t/p lower, or a shorter
/// output.
fn needs_rehash(hash: &PasswordHash<'_>, current: HashParams) -> bool {
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return true;
    }
    if hash.version != Some(u32::from(Version::V0x13)) {
        return true;
    }
    let Ok(stored) = Params::try_from(hash) else {
        return true;
    };
    stored.m_cost() < current.memory_kib
        || stored.t_cost() < current.iterations
        || stored.p_cost() < current.parallelism
        || hash.hash.is_none_or(|output| output.len() < OUTPUT_LEN)
}

/// Reads m, t, p back from a PHC string (for tests and upgrades).
pub fn params_of(phc: &str) -> Option<HashParams> {
    let hash = PasswordHash::new(phc).ok()?;
    Algorithm::try_from(hash.algorithm).ok()?;
    let params = Params::try_from(&hash).ok()?;
    Some(HashParams {
        memory_kib: params.m_cost(),
        iterations: params.t_cost(),
        parallelism: params.p_cost(),
    })
}

#[cfg(test)]
mod tests;
