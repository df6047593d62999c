//! `/v1/admin/audit/*`: is the log complete and untouched? Verification of every stream chain
//! and every seal, and the latest signed seal to keep outside the database (admin role required
//! on every request).
//!
//! Seals are checked against the seal keys of `SEAL_KEYS_DIR`, never against the access-token
//! keys: the worker signs seals with keys of their own. The directory is read at each request
//! (verifications are rare), so a key added by a rotation counts at once without a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use idp_events::seal::{self, Anchor, AuditReport, PublicKeys, VerifyError, VerifyOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};

use crate::auth::permissions::{Permitted, ReadAudit};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::startup::AppState;

/// While a verification runs, a newline (insignificant JSON whitespace) is sent this often, so
/// that neither the client nor a proxy gives up on a long one.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One verification at a time per process: each reads the whole log. Others wait their turn.
static VERIFYING: Semaphore = Semaphore::const_new(1);

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/audit/verify", get(verify))
        .route("/v1/admin/audit/seal", get(latest_seal))
}

/// What to verify.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VerifyParams {
    /// Only walk the chains of streams whose id starts with this, e.g. `user-` (seals always
    /// cover the whole log).
    #[param(example = "user-")]
    pub stream_prefix: Option<String>,
    /// A seal kept outside the database that the log must still hold:
    /// `<seal number>:<seal hash in hex>` (the `anchor` of `GET /v1/admin/audit/seal`).
    #[param(
        pattern = "^\\s*\\+?0*[1-9][0-9]{0,17}\\s*:\\s*[0-9a-fA-F]{64}\\s*$",
        example = "12:9f2c3b5d2b8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b"
    )]
    pub expect_seal: Option<String>,
}

/// A problem found in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditProblem {
    /// `chain_hash_mismatch`, `chain_missing_version`, `seal_missing`, `seal_broken_link`,
    /// `seal_bad_range`, `seal_hash_mismatch`, `seal_unknown_key`, `seal_bad_signature`,
    /// `seal_digest_mismatch`, `seal_malformed`, `seal_event_changed`, `seal_event_missing`,
    /// `seal_event_unexpected`, `seal_event_moved`, `seal_anchor_mismatch` or
    /// `seal_anchor_missing`.
    pub kind: String,
    /// The stream, for chain problems.
    pub stream: Option<String>,
    /// The stream version (the missing one for `chain_missing_version`).
    pub version: Option<i64>,
    /// The seal, for seal problems.
    pub seal: Option<i64>,
    /// The log position concerned.
    pub position: Option<i64>,
    /// What is wrong, in one sentence.
    pub detail: String,
}

/// The outcome of a verification.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"intact": true, "streams": 120, "events": 5400, "seals": 3, "sealed_events": 5300,
    "unsealed": 100, "last_seal": 3, "first_problem": null, "problems": [], "duration_ms": 140}))]
pub struct AuditVerifyReport {
    /// True when every stream chain and every seal holds.
    pub intact: bool,
    /// Streams whose hash chains were walked.
    pub streams: u64,
    /// Events whose chain links were checked.
    pub events: u64,
    /// Seals checked (links, hashes, signatures, and the events they cover).
    pub seals: u64,
    /// Events covered by the checked seals.
    pub sealed_events: u64,
    /// Committed events after the last seal; not a problem, the sealer gets to them.
    pub unsealed: u64,
    /// The last seal checked.
    pub last_seal: Option<i64>,
    /// The first problem: a broken stream chain first, else a seal problem.
    pub first_problem: Option<AuditProblem>,
    /// At most the first chain problem and the first seal problem.
    pub problems: Vec<AuditProblem>,
    /// How long verification took.
    pub duration_ms: u64,
}

impl From<&AuditReport> for AuditVerifyReport {
    fn from(report: &AuditReport) -> Self {
        let problem = |p: seal::Problem| AuditProblem {
            kind: p.kind.to_owned(),
            stream: p.stream,
            version: p.version,
            seal: p.seal,
            position: p.position,
            detail: p.detail,
        };
        Self {
            intact: report.is_intact(),
            streams: report.streams,
            events: report.events,
            seals: report.seals,
            sealed_events: report.sealed_events,
            unsealed: report.unsealed,
            last_seal: report.last_seal,
            first_problem: report.first_problem().map(problem),
            problems: report.problems().into_iter().map(problem).collect(),
            duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Recomputes every stream's hash chain and every seal and reports the first problem.
///
/// The answer starts at once and its JSON body follows when verification ends (about 20 s per
/// million events); until then a newline is sent every few seconds. A failure of the server
/// during verification cuts the body short.
#[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "admin", security(("bearer" = [])),
    params(VerifyParams),
    responses((status = 200, description = "The verification report (intact or not)", body = AuditVerifyReport),
              (status = 400, description = "Bad expect_seal, or an unknown parameter"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)")))]
#[tracing::instrument(name = "admin.audit.verify", skip_all, fields(user.id = %admin.user_id))]
pub async fn verify(
    State(state): State<AppState>,
    Permitted { user: admin, .. }: Permitted<ReadAudit>,
    ApiQuery(params): ApiQuery<VerifyParams>,
) -> Result<Response, ApiError> {
    let expect_seal = params
        .expect_seal
        .as_deref()
        .map(str::parse::<Anchor>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("expect_seal: {e}")))?;
    let options = VerifyOptions {
        stream_prefix: params.stream_prefix,
        expect_seal,
        batch_size: 0,
    };
    let keys = seal_public_keys(&state).await?;
    let pool = state.store.pool().clone();
    let span = tracing::Span::current();
    let run: Pin<Box<dyn Future<Output = Result<AuditReport, VerifyError>> + Send>> =
        Box::pin(async move {
            // Acquiring only fails on a closed semaphore, which this one never is.
            let _turn = VERIFYING.acquire().await;
            seal::verify_log(&pool, &keys, &options).await
        });

    // The report is the body's last chunk; newlines keep the connection busy until then.
    // Dropping the body (the client went away) drops the verification with it.
    let body = futures::stream::unfold(Some((run, span)), |state| async move {
        let (mut run, span) = state?;
        tokio::select! {
            result = &mut run => {
                let _enter = span.enter();
                let chunk = match result {
                    Ok(report) => {
                        tracing::info!(
                            intact = report.is_intact(),
                            events = report.events,
                            seals = report.seals,
                            duration_ms = u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
                            "log verified"
                        );
                        serde_json::to_vec(&AuditVerifyReport::from(&report))
                            .map(Bytes::from)
                            .map_err(std::io::Error::other)
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "verification failed");
                        Err(std::io::Error::other("verification failed"))
                    }
                };
                Some((chunk, None))
            }
            () = tokio::time::sleep(KEEP_ALIVE) => {
                Some((Ok(Bytes::from_static(b"\n")), Some((run, span))))
            }
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The public keys seals may be signed with, read from `SEAL_KEYS_DIR` now. A directory that
/// does not exist holds none (every seal then names an unknown key); one that cannot be read is
/// a server error.
async fn seal_public_keys(state: &AppState) -> Result<PublicKeys, ApiError> {
    static WARNED_ABOUT_PRIVATE_KEYS: Once = Once::new();
    let dir = Arc::clone(&state.seal_keys_dir);
    let keys = tokio::task::spawn_blocking(move || PublicKeys::load_dir(&dir))
        .await
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("reading SEAL_KEYS_DIR: {err}")))?
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("SEAL_KEYS_DIR: {err}")))?;
    if !keys.private_key_ids().is_empty() {
        // The API only verifies; a private seal key here could forge seals if the API leaked.
        WARNED_ABOUT_PRIVATE_KEYS.call_once(|| {
            tracing::warn!(
                dir = %state.seal_keys_dir.display(),
                kids = ?keys.private_key_ids(),
                "SEAL_KEYS_DIR holds private seal keys; outside development give the API only \
                 their public halves (idp-worker seal-public-keys)"
            );
        });
    }
    Ok(keys)
}

/// A place in commit-safe log order.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogCursor {
    /// The writing transaction (`xid8`).
    pub transaction_id: i64,
    /// The event's position.
    pub position: i64,
}

/// The public key a seal is signed with.
#[derive(Debug, Serialize, ToSchema)]
pub struct SealPublicKey {
    /// Its key id.
    pub kid: String,
    /// As a JSON Web Key (`OKP`, `Ed25519`).
    #[schema(value_type = Object)]
    pub jwk: serde_json::Value,
    /// As SPKI PEM.
    pub pem: Option<String>,
}

/// The latest signed seal, to keep outside the database.
///
/// Check it without idp: `seal_hash` is SHA-256 of `"idp-seal-v1" || 0x00 || seal_number ||
/// from.transaction_id || from.position || to.transaction_id || to.position || event_count`
/// (each 8 bytes big-endian) `|| events_digest || previous_hash || len(key_id)` (4 bytes
/// big-endian) `|| key_id || created_at` (microseconds since 1970, 8 bytes big-endian); the
/// signature is Ed25519 over `"idp-seal-v1" || 0x00 || seal_hash`. Later, pass `anchor` to
/// `GET /v1/admin/audit/verify?expect_seal=` or `idp-worker verify --expect-seal` to prove the
/// log still holds this seal.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"format": "idp-seal-v1", "seal_number": 12,
    "from": {"transaction_id": 1200, "position": 5001}, "to": {"transaction_id": 1250, "position": 5400},
    "event_count": 400, "events_digest": "3b5d2b8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b9f2c",
    "previous_hash": "8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b9f2c3b5d2b",
    "seal_hash": "9f2c3b5d2b8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b",
    "signature": "c2lnbmF0dXJlIG9mIHRoZSBzZWFsIGhhc2ggd2l0aCBFZDI1NTE5IChleGFtcGxlKQ==",
    "key_id": "2026-12-01T100000Z", "created_at": "2026-12-01T11:00:00Z",
    "anchor": "12:9f2c3b5d2b8e4d6a7f1c0e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b",
    "public_key": {"kid": "2026-12-01T100000Z", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "2026-12-01T100000Z", "alg": "EdDSA", "use": "sig"},
                   "pem": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n"}}))]
pub struct SignedSeal {
    /// The seal format, `idp-seal-v1`.
    pub format: &'static str,
    /// The seal's number (1, 2, 3, ...).
    pub seal_number: i64,
    /// The first sealed event.
    pub from: LogCursor,
    /// The last sealed event.
    pub to: LogCursor,
    /// Events sealed.
    pub event_count: i64,
    /// SHA-256 of the previous seal hash and each sealed event's position and chain hash (hex).
    pub events_digest: String,
    /// The previous seal's hash (hex; zeros for seal 1).
    pub previous_hash: String,
    /// The seal hash (hex).
    pub seal_hash: String,
    /// The Ed25519 signature (base64).
    pub signature: String,
    /// The signing key's id.
    pub key_id: String,
    /// When the seal was made.
    pub created_at: DateTime<Utc>,
    /// `<seal_number>:<seal_hash>`, for `expect_seal`.
    pub anchor: String,
    /// The signing key, if this server's `SEAL_KEYS_DIR` has it.
    pub public_key: Option<SealPublicKey>,
}

/// The latest signed seal, with the public key that verifies it.
#[utoipa::path(get, path = "/v1/admin/audit/seal", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The latest seal", body = SignedSeal),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "The log has no seal yet")))]
#[tracing::instrument(name = "admin.audit.seal", skip_all, fields(user.id = %admin.user_id))]
pub async fn latest_seal(
    State(state): State<AppState>,
    Permitted { user: admin, .. }: Permitted<ReadAudit>,
) -> Result<Json<SignedSeal>, ApiError> {
    let latest = seal::latest(state.store.pool())
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let Some(latest) = latest else {
        return Err(ApiError::NotFound);
    };
    let f = &latest.fields;
    let keys = seal_public_keys(&state).await?;
    let public_key = keys.get(&f.key_id).map(|key| SealPublicKey {
        kid: f.key_id.clone(),
        jwk: seal::public_jwk(&f.key_id, key),
        pem: seal::public_pem(key),
    });
    let seal_hash = hex::encode(latest.seal_hash);
    Ok(Json(SignedSeal {
        format: seal::FORMAT,
        seal_number: f.seal_number,
        from: LogCursor {
            transaction_id: f.from.transaction_id,
            position: f.from.position,
        },
        to: LogCursor {
            transaction_id: f.to.transaction_id,
            position: f.to.position,
        },
        event_count: f.event_count,
        events_digest: hex::encode(f.events_digest),
        previous_hash: hex::encode(f.previous_hash),
        anchor: format!("{}:{seal_hash}", f.seal_number),
        seal_hash,
        signature: STANDARD.encode(latest.signature),
        key_id: f.key_id.clone(),
        created_at: f.created_at,
        public_key,
    }))
}
