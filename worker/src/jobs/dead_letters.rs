//! The dead-letter recorder: every message that lands in a dead-letter queue (a job that gave
//! up, one that kept killing its worker until the broker's delivery limit, one nobody could
//! read) becomes a `JobDeadLettered` event and a row administrators can list and send back.
//!
//! The queue is a way in, not the store: once recorded, the message is acknowledged and the
//! database holds the payload. Recording is idempotent (the job's stream says whether it is
//! already dead), so a redelivered dead letter is recorded once.

use std::sync::Arc;

use apalis::prelude::Data;
use idp_events::jobs::{self, Job, JobEvent};
use idp_events::{Append, EventStore, ExpectedVersion, Metadata, StreamId};
use serde_json::Value;
use uuid::Uuid;

use super::JobError;
use crate::broker::{Ack, Envelope};

/// What the recorder of one queue's dead letters needs.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    store: EventStore,
    queue: &'static str,
}

impl DeadLetters {
    /// The recorder of the dead letters of job queue `queue`.
    pub fn new(store: EventStore, queue: &'static str) -> Self {
        Self { store, queue }
    }
}

/// Records one dead letter (the apalis handler).
#[tracing::instrument(name = "job.dead_letter", skip_all, fields(queue = ctx.queue))]
pub async fn record_dead_letter(
    payload: Value,
    ctx: Data<Arc<DeadLetters>>,
    envelope: Data<Envelope>,
    ack: Data<Ack>,
) -> Result<(), JobError> {
    let result = record(&ctx, payload, &envelope).await;
    if let Err(err) = &result {
        // There is no queue behind this one: keep the message until it is recorded.
        tracing::warn!(error = %err, "dead letter not recorded yet; handing it back");
        ack.hand_back();
    }
    result
}

async fn record(ctx: &DeadLetters, payload: Value, envelope: &Envelope) -> Result<(), JobError> {
    let job_id = envelope
        .message_id
        .as_deref()
        .and_then(|id| id.parse::<Uuid>().ok())
        .or_else(|| {
            payload
                .get("job_id")
                .and_then(Value::as_str)
                .and_then(|id| id.parse().ok())
        })
        .unwrap_or_else(|| {
            jobs::job_id(
                "unknown",
                Uuid::new_v5(&Uuid::NAMESPACE_OID, payload.to_string().as_bytes()),
            )
        });
    let stream = StreamId::job(job_id);
    let history = ctx.store.read_stream(stream.as_str(), 1).await?;
    let state = Job::fold(&history);
    if state.dead {
        return Ok(());
    }
    if state.done {
        tracing::info!(job.id = %job_id, "dead letter of a job that already succeeded; dropping it");
        return Ok(());
    }
    let reason = envelope
        .death_reason
        .clone()
        .unwrap_or_else(|| "rejected".to_owned());
    let kind = envelope
        .kind
        .clone()
        .unwrap_or_else(|| "unknown".to_owned());
    let cause_id = payload
        .get("cause_id")
        .and_then(Value::as_str)
        .and_then(|id| id.parse::<Uuid>().ok());
    let event = JobEvent::JobDeadLettered {
        queue: ctx.queue.to_owned(),
        reason: reason.clone(),
        attempts: state.failed_attempts,
        error: state.last_error.clone(),
        payload: payload.clone(),
    };
    let metadata = Metadata {
        actor: Some("worker".into()),
        causation_id: cause_id,
        ..Metadata::default()
    };
    let mut tx = ctx.store.pool().begin().await?;
    ctx.store
        .append_in(
            &mut tx,
            Append::to(&stream)
                .expecting(ExpectedVersion::after(state.version))
                .event(event.to_new_event())
                .metadata(metadata),
        )
        .await?;
    sqlx::query(
        "insert into dead_jobs (job_id, queue, kind, reason, attempts, last_error, payload, cause_id, dead_lettered_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, now())
         on conflict (job_id) do update
            set reason = excluded.reason, attempts = excluded.attempts,
                last_error = excluded.last_error, payload = excluded.payload,
                dead_lettered_at = excluded.dead_lettered_at",
    )
    .bind(job_id)
    .bind(ctx.queue)
    .bind(&kind)
    .bind(&reason)
    .bind(i32::try_from(state.failed_attempts).unwrap_or(i32::MAX))
    .bind(state.last_error.as_deref())
    .bind(&payload)
    .bind(cause_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("idp_jobs_dead_lettered_total", "queue" => ctx.queue).increment(1);
    tracing::warn!(job.id = %job_id, reason, "job dead-lettered");
    Ok(())
}
