//! What verification is asked for and what it found: anchors kept outside the database, the
//! problems a seal walk names, and the report of a whole audit.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::chain::{BreakKind, ChainBreak};

/// A copy of a seal kept outside the database: the log must still hold seal `seal_number` with
/// this hash. Written `<seal_number>:<seal hash in hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The seal.
    pub seal_number: i64,
    /// Its seal hash.
    pub seal_hash: [u8; 32],
}

impl FromStr for Anchor {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let usage = || format!("expected <seal number>:<seal hash as 64 hex digits>, got {raw:?}");
        let (number, hash) = raw.split_once(':').ok_or_else(usage)?;
        let seal_number: i64 = number.trim().parse().map_err(|_| usage())?;
        let mut seal_hash = [0_u8; 32];
        hex::decode_to_slice(hash.trim(), &mut seal_hash).map_err(|_| usage())?;
        if seal_number < 1 {
            return Err(usage());
        }
        Ok(Self {
            seal_number,
            seal_hash,
        })
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only walk the chains of streams whose id starts with this (seals always cover the log).
    pub stream_prefix: Option<String>,
    /// A seal kept outside the database that the log must still hold.
    pub expect_seal: Option<Anchor>,
    /// Events per batch read; [`super::DEFAULT_BATCH_SIZE`] when 0.
    pub batch_size: i64,
}

/// What is wrong with a seal or with the events it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealProblemKind {
    /// A seal number is skipped: this seal was expected but another came (a seal was deleted).
    Missing {
        /// The seal number found instead.
        found: i64,
    },
    /// The seal's previous hash is not the hash of the seal before it.
    BrokenLink,
    /// The seal's range does not start after the previous seal's, or ends before it starts.
    BadRange,
    /// The stored seal hash is not the hash of the seal's fields (a field was edited).
    HashMismatch,
    /// The seal is signed with a key that is not known.
    UnknownKey {
        /// The key id it names.
        key_id: String,
    },
    /// The signature does not verify with the named key (forged or re-signed seal).
    BadSignature {
        /// The key id it names.
        key_id: String,
    },
    /// The seal's stored entries do not match its digest or its count and range.
    DigestMismatch,
    /// A stored seal cannot be read.
    Malformed(String),
    /// The event at this position has another chain hash than when sealed (edited).
    EventChanged,
    /// The event sealed at this position is gone (deleted).
    EventMissing,
    /// An event that was never sealed lies in or between sealed ranges (inserted).
    EventUnexpected,
    /// The event sealed at `sealed_at` is now at this position (reordered).
    EventMoved {
        /// Its sealed position.
        sealed_at: i64,
    },
    /// The seal differs from the copy kept outside the database.
    AnchorMismatch,
    /// The seal kept outside the database is no longer in the log (seals were cut off).
    AnchorMissing {
        /// The last seal in the log, if any.
        last: Option<i64>,
    },
}

/// The first problem found with the seals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealProblem {
    /// The seal concerned.
    pub seal_number: i64,
    /// The position concerned, for problems with events.
    pub position: Option<i64>,
    /// What is wrong.
    pub kind: SealProblemKind,
}

impl SealProblem {
    /// A stable name of the kind, e.g. `seal_event_changed`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SealProblemKind::Missing { .. } => "seal_missing",
            SealProblemKind::BrokenLink => "seal_broken_link",
            SealProblemKind::BadRange => "seal_bad_range",
            SealProblemKind::HashMismatch => "seal_hash_mismatch",
            SealProblemKind::UnknownKey { .. } => "seal_unknown_key",
            SealProblemKind::BadSignature { .. } => "seal_bad_signature",
            SealProblemKind::DigestMismatch => "seal_digest_mismatch",
            SealProblemKind::Malformed(_) => "seal_malformed",
            SealProblemKind::EventChanged => "seal_event_changed",
            SealProblemKind::EventMissing => "seal_event_missing",
            SealProblemKind::EventUnexpected => "seal_event_unexpected",
            SealProblemKind::EventMoved { .. } => "seal_event_moved",
            SealProblemKind::AnchorMismatch => "seal_anchor_mismatch",
            SealProblemKind::AnchorMissing { .. } => "seal_anchor_missing",
        }
    }
}

impl fmt::Display for SealProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.seal_number;
        let p = self.position.unwrap_or_default();
        match &self.kind {
            SealProblemKind::Missing { found } => write!(
                f,
                "seal {n} is missing (seal {found} follows seal {})",
                n - 1
            ),
            SealProblemKind::BrokenLink => write!(
                f,
                "seal {n}: its previous hash is not the hash of seal {}",
                n - 1
            ),
            SealProblemKind::BadRange => write!(
                f,
                "seal {n}: its range does not follow the range of seal {}",
                n - 1
            ),
            SealProblemKind::HashMismatch => write!(
                f,
                "seal {n}: its seal hash does not match its fields (the seal was edited)"
            ),
            SealProblemKind::UnknownKey { key_id } => {
                write!(f, "seal {n}: signed with unknown key {key_id:?}")
            }
            SealProblemKind::BadSignature { key_id } => write!(
                f,
                "seal {n}: its signature does not verify with key {key_id:?} (forged)"
            ),
            SealProblemKind::DigestMismatch => write!(
                f,
                "seal {n}: its stored entries do not match its signed digest, count or range"
            ),
            SealProblemKind::Malformed(reason) => write!(f, "seal {n} is malformed: {reason}"),
            SealProblemKind::EventChanged => write!(
                f,
                "seal {n}, position {p}: the event's chain hash differs from the sealed one (edited)"
            ),
            SealProblemKind::EventMissing => write!(
                f,
                "seal {n}, position {p}: the sealed event is missing (deleted)"
            ),
            SealProblemKind::EventUnexpected => write!(
                f,
                "seal {n}, position {p}: an event that was never sealed lies in the sealed part of the log (inserted)"
            ),
            SealProblemKind::EventMoved { sealed_at } => write!(
                f,
                "seal {n}, position {p}: the event sealed at position {sealed_at} is now at position {p} (reordered)"
            ),
            SealProblemKind::AnchorMismatch => write!(
                f,
                "seal {n}: its hash differs from the copy kept outside the database"
            ),
            SealProblemKind::AnchorMissing { last: Some(last) } => write!(
                f,
                "seal {n} is kept outside the database but the log's seals end at seal {last}"
            ),
            SealProblemKind::AnchorMissing { last: None } => write!(
                f,
                "seal {n} is kept outside the database but the log has no seals"
            ),
        }
    }
}

/// A problem of either kind, flattened for reports (JSON, CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `chain_hash_mismatch`, `chain_missing_version` or one of [`SealProblem::kind_name`].
    pub kind: &'static str,
    /// The stream, for chain breaks.
    pub stream: Option<String>,
    /// The stream version, for chain breaks (the missing one for `chain_missing_version`).
    pub version: Option<i64>,
    /// The seal, for seal problems.
    pub seal: Option<i64>,
    /// The log position concerned, when there is one.
    pub position: Option<i64>,
    /// One sentence naming the problem.
    pub detail: String,
}

impl From<&ChainBreak> for Problem {
    fn from(broken: &ChainBreak) -> Self {
        let (kind, version) = match broken.kind {
            BreakKind::HashMismatch => ("chain_hash_mismatch", broken.stream_version),
            BreakKind::MissingVersion { expected } => ("chain_missing_version", expected),
        };
        Self {
            kind,
            stream: Some(broken.stream_id.clone()),
            version: Some(version),
            seal: None,
            position: Some(broken.position),
            detail: broken.to_string(),
        }
    }
}

impl From<&SealProblem> for Problem {
    fn from(problem: &SealProblem) -> Self {
        Self {
            kind: problem.kind_name(),
            stream: None,
            version: None,
            seal: Some(problem.seal_number),
            position: problem.position,
            detail: problem.to_string(),
        }
    }
}

/// The outcome of [`super::verify_log`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Streams whose chains were walked.
    pub streams: u64,
    /// Events whose chain links were checked.
    pub events: u64,
    /// Seals checked.
    pub seals: u64,
    /// Events covered by the checked seals.
    pub sealed_events: u64,
    /// Committed events after the last seal (not a problem: the sealer gets to them); counted
    /// only when the seals hold.
    pub unsealed: u64,
    /// The last seal checked.
    pub last_seal: Option<i64>,
    /// The first broken stream chain link.
    pub chain_break: Option<ChainBreak>,
    /// The first problem with the seals.
    pub seal_problem: Option<SealProblem>,
    /// How long verification took.
    pub duration: Duration,
}

impl AuditReport {
    /// True when every chain and every seal held.
    pub fn is_intact(&self) -> bool {
        self.chain_break.is_none() && self.seal_problem.is_none()
    }

    /// The first problem: a broken stream chain, else a seal problem.
    pub fn first_problem(&self) -> Option<Problem> {
        self.problems().into_iter().next()
    }

    /// Every problem found: at most the first chain break and the first seal problem.
    pub fn problems(&self) -> Vec<Problem> {
        self.chain_break
            .iter()
            .map(Problem::from)
            .chain(self.seal_problem.iter().map(Problem::from))
            .collect()
    }

    /// `unsealed: N events after seal K` (or `... (no seal yet)`).
    pub fn unsealed_summary(&self) -> String {
        match self.last_seal {
            Some(last) => format!("unsealed: {} events after seal {last}", self.unsealed),
            None => format!("unsealed: {} events (no seal yet)", self.unsealed),
        }
    }
}
