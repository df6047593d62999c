//! Publishing jobs with publisher confirms, many in flight at once.

use std::collections::HashSet;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::Topology;

/// The message header carrying [`OutgoingJob::correlation_id`].
pub const CORRELATION_HEADER: &str = "idp-correlation-id";

/// A job ready to publish: its queue (short name) and its JSON body.
#[derive(Debug, Clone)]
pub struct OutgoingJob {
    /// Short queue name, e.g. `email`.
    pub queue: &'static str,
    /// The job's id; the message id on the wire.
    pub job_id: Uuid,
    /// The job kind (message type on the wire), e.g. `send_email`.
    pub kind: &'static str,
    /// The event that caused the job (correlation id on the wire).
    pub cause_id: Uuid,
    /// The correlation id of the request behind the cause (header `idp-correlation-id`), so the
    /// job's log lines carry the same id as the request's.
    pub correlation_id: Option<Uuid>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// Why a batch of jobs was not confirmed. Nothing is known about which jobs arrived: the
/// caller publishes the whole batch again (consumers are idempotent).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The connection or channel failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused a message (negative confirm).
    #[error("the broker refused a message (nack)")]
    Nacked,
    /// A message had no queue to go to.
    #[error("no queue took message for {0}")]
    Unroutable(String),
}

struct Link {
    _connection: Connection,
    channel: Channel,
    declared: HashSet<&'static str>,
}

/// Publishes jobs over one confirm-mode channel, reconnecting after failures.
pub struct Publisher {
    topology: Topology,
    link: Mutex<Option<Link>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher; it connects on first use.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            link: Mutex::new(None),
        }
    }

    /// The topology it publishes into.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes every job (persistent, mandatory) and returns once the broker confirmed all
    /// of them. All messages are sent before the first confirm is awaited.
    pub async fn publish_all(&self, jobs: &[OutgoingJob]) -> Result<(), PublishError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut guard = self.link.lock().await;
        let result = self.publish_locked(&mut guard, jobs).await;
        if result.is_err() {
            // Start over on a fresh connection next time.
            *guard = None;
        }
        result
    }

    async fn publish_locked(
        &self,
        guard: &mut Option<Link>,
        jobs: &[OutgoingJob],
    ) -> Result<(), PublishError> {
        let usable = guard
            .as_ref()
            .is_some_and(|link| link.channel.status().connected());
        if !usable {
            let connection = self.topology.connect().await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            *guard = Some(Link {
                _connection: connection,
                channel,
                declared: HashSet::new(),
            });
        }
        let Some(link) = guard.as_mut() else {
            return Err(PublishError::Unroutable("no channel".into()));
        };
        for job in jobs {
            if !link.declared.contains(job.queue) {
                self.topology.declare(&link.channel, job.queue).await?;
                link.declared.insert(job.queue);
            }
        }

        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let properties = properties(job);
            let confirm = link
                .channel
                .basic_publish(
                    "".into(),
                    self.topology.queue_name(job.queue).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &job.body,
                    properties,
                )
                .await?;
            confirms.push((job.queue, confirm));
        }
        for (queue, confirm) in confirms {
            match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(PublishError::Unroutable(self.topology.queue_name(queue)));
                }
                Confirmation::Nack(_) => return Err(PublishError::Nacked),
            }
        }
        metrics::counter!("idp_jobs_published_total").increment(jobs.len() as u64);
        Ok(())
    }
}

/// The message properties of `job`: persistent, JSON, its id, kind, cause and, if known, the
/// correlation id of the request behind it.
pub fn properties(job: &OutgoingJob) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(correlation) = job.correlation_id {
        headers.insert(
            CORRELATION_HEADER.into(),
            AMQPValue::LongString(correlation.to_string().into()),
        );
    }
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(job.job_id.to_string().into())
        .with_correlation_id(job.cause_id.to_string().into())
        .with_type(job.kind.into())
}
