//! The apalis backend of a job queue: consumes `<prefix>.<queue>` with a prefetch window and
//! hands each message to the worker as a typed task; [`AckLayer`] settles each message with the
//! broker once its job finished.
//!
//! A job that returns `Ok` is acknowledged. A job that returns an error (it gave up: attempts
//! exhausted or a permanent failure) is rejected without requeueing, which dead-letters it. A
//! worker that dies leaves its messages unacknowledged; the broker delivers them again.
//!
//! Settings use apalis-amqp's [`apalis_amqp::Config`] (queue, prefetch, consume, ack and reject
//! options). Its own `AmqpBackend` cannot be used as a consumer in 1.0.0: `poll_ready` reports
//! ready before the consumer exists, so the first `poll_next` panics, and its acknowledgement
//! layer is built from a clone taken before any channel exists, so every ack fails.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use apalis::prelude::{Backend, Task, TaskBuilder, TaskId, WorkerContext};
use apalis_core::backend::BackendConfig;
use apalis_core::layers::{Layer, Service};
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use serde::de::DeserializeOwned;

use super::Topology;
use idp_events::backoff::Backoff;

/// Why a queue consumer stopped (the monitor starts a new one).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The connection or channel failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker cancelled the consumer (queue deleted, broker shutting down).
    #[error("the broker ended the consumer")]
    Cancelled,
}

/// How to settle one message with the broker; carried in each task's data.
#[derive(Debug, Clone)]
pub struct Ack {
    acker: Acker,
    hand_back: Arc<AtomicBool>,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    ack_options: BasicAckOptions,
    reject_options: BasicRejectOptions,
}

impl Ack {
    /// Acknowledges the message: it is done.
    pub async fn ack(&self) {
        if let Err(err) = self.acker.ack(self.ack_options).await {
            tracing::warn!(error = %err, "could not acknowledge a job; the broker will deliver it again");
        }
    }

    /// Asks for the message to go back to the queue (instead of the dead letters) if the job
    /// ends with an error: it was interrupted, not failed.
    pub fn hand_back(&self) {
        self.hand_back.store(true, Ordering::Release);
    }

    /// Returns the message to the queue for another delivery.
    pub async fn requeue(&self) {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        if let Err(err) = self.acker.nack(options).await {
            tracing::warn!(error = %err, "could not hand a job back; the broker will deliver it again");
        }
    }

    /// Rejects the message without requeueing: the broker dead-letters it.
    pub async fn dead_letter(&self) {
        if let Err(err) = self.acker.reject(self.reject_options).await {
            tracing::warn!(error = %err, "could not reject a job; the broker will deliver it again");
        }
    }
}

/// What the broker said about a message besides its body; carried in each task's data.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The message id (the job id, as published by the dispatcher).
    pub message_id: Option<String>,
    /// The message type (the job kind).
    pub kind: Option<String>,
    /// Why the broker dead-lettered it (`rejected`, `delivery_limit`, `expired`, ...), for
    /// messages read from a dead-letter queue.
    pub death_reason: Option<String>,
    /// The correlation id of the request behind the job, if the publisher knew it.
    pub correlation_id: Option<String>,
}

impl Envelope {
    /// What `properties` say.
    pub fn of(properties: &lapin::BasicProperties) -> Self {
        let death_reason = properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get("x-death").cloned())
            .and_then(|deaths| match deaths {
                AMQPValue::FieldArray(array) => array.as_slice().first().cloned(),
                _ => None,
            })
            .and_then(|death| match death {
                AMQPValue::FieldTable(table) => table.inner().get("reason").cloned(),
                _ => None,
            })
            .and_then(|reason| match reason {
                AMQPValue::LongString(s) => Some(s.to_string()),
                AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            })
            .or_else(|| {
                // Quorum queues name the delivery limit in their own header.
                properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-first-death-reason").cloned())
                    .and_then(|reason| match reason {
                        AMQPValue::LongString(s) => Some(s.to_string()),
                        _ => None,
                    })
            });
        let correlation_id = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(super::publisher::CORRELATION_HEADER).cloned())
            .and_then(|value| match value {
                AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            });
        Self {
            message_id: properties.message_id().as_ref().map(ToString::to_string),
            kind: properties.kind().as_ref().map(ToString::to_string),
            death_reason,
            correlation_id,
        }
    }
}

struct Link {
    _connection: Connection,
    _channel: Channel,
    consumer: Consumer,
}

enum State {
    Idle,
    Connecting(BoxFuture<'static, Link>),
    Ready(Box<Link>),
}

/// The apalis backend consuming one job queue. Connecting retries with backoff until the broker
/// answers; a broken connection ends the worker with an error so the monitor restarts it.
pub struct QueueBackend<M> {
    topology: Topology,
    queue: &'static str,
    config: apalis_amqp::Config,
    state: State,
    _message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for QueueBackend<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBackend")
            .field("queue", &self.queue)
            .field("prefetch", &self.config.prefetch_count)
            .finish_non_exhaustive()
    }
}

impl<M> QueueBackend<M> {
    /// A consumer of job queue `queue` taking up to `prefetch` unacknowledged messages.
    pub fn new(topology: Topology, queue: &'static str, prefetch: u16) -> Self {
        let name = topology.queue_name(queue);
        Self::consuming(topology, queue, name, prefetch)
    }

    /// A consumer of the dead-letter queue of job queue `queue`.
    pub fn dead_letters(topology: Topology, queue: &'static str, prefetch: u16) -> Self {
        let name = topology.dead_queue_name(queue);
        Self::consuming(topology, queue, name, prefetch)
    }

    fn consuming(topology: Topology, queue: &'static str, name: String, prefetch: u16) -> Self {
        let config = apalis_amqp::Config::default()
            .queue(name)
            .prefetch_count(prefetch)
            .reject_options(BasicRejectOptions { requeue: false });
        Self {
            topology,
            queue,
            config,
            state: State::Idle,
            _message: PhantomData,
        }
    }

    fn connect(&self, consumer_tag: String) -> BoxFuture<'static, Link> {
        let topology = self.topology.clone();
        let queue = self.queue;
        let config = self.config.clone();
        Box::pin(async move {
            let backoff = Backoff::new(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(10),
            );
            let mut failures = 0_u32;
            loop {
                match open(&topology, queue, &config, &consumer_tag).await {
                    Ok(link) => {
                        tracing::info!(queue = %topology.queue_name(queue), "consuming");
                        return link;
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(queue = %topology.queue_name(queue), error = %err, "cannot consume yet; retrying");
                        tokio::time::sleep(backoff.delay(failures)).await;
                    }
                }
            }
        })
    }
}

async fn open(
    topology: &Topology,
    queue: &str,
    config: &apalis_amqp::Config,
    consumer_tag: &str,
) -> Result<Link, lapin::Error> {
    let connection = topology.connect().await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel, queue).await?;
    channel
        .basic_qos(config.prefetch_count, config.qos_options)
        .await?;
    let consumer = channel
        .basic_consume(
            config.queue.as_ref().into(),
            consumer_tag.into(),
            config.consume_options,
            FieldTable::default(),
        )
        .await?;
    Ok(Link {
        _connection: connection,
        _channel: channel,
        consumer,
    })
}

impl<M: DeserializeOwned + Send + 'static> Backend for QueueBackend<M> {
    type Task = Task<M>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    let tag = format!("{}-{}", worker.name(), uuid::Uuid::new_v4().simple());
                    self.state = State::Connecting(self.connect(tag));
                }
                State::Connecting(connecting) => match connecting.as_mut().poll(cx) {
                    Poll::Ready(link) => self.state = State::Ready(Box::new(link)),
                    Poll::Pending => return Poll::Pending,
                },
                State::Ready(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            let State::Ready(link) = &mut self.state else {
                match self.poll_ready(cx, worker) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                    Poll::Pending => return Poll::Pending,
                }
            };
            let delivery = match link.consumer.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.state = State::Idle;
                    return Poll::Ready(Some(Err(QueueError::Cancelled)));
                }
                Poll::Ready(Some(Err(err))) => {
                    self.state = State::Idle;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Some(Ok(delivery))) => delivery,
            };
            let ack = Ack {
                acker: delivery.acker.clone(),
                hand_back: Arc::default(),
                redelivered: delivery.redelivered,
                ack_options: self.config.ack_options,
                reject_options: self.config.reject_options,
            };
            match serde_json::from_slice::<M>(&delivery.data) {
                Ok(args) => {
                    let task = TaskBuilder::new(args)
                        .task_id(TaskId::Int(delivery.delivery_tag))
                        .data(ack)
                        .data(Envelope::of(&delivery.properties))
                        .build();
                    return Poll::Ready(Some(Ok(task)));
                }
                Err(err) => {
                    // A message no job can read: straight to the dead-letter queue, where the
                    // recorder keeps it for an administrator.
                    tracing::error!(queue = %self.topology.queue_name(self.queue), error = %err, "undecodable job message; dead-lettering it");
                    tokio::spawn(async move { ack.dead_letter().await });
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl<M> BackendConfig for QueueBackend<M> {
    type Args = M;
    type Id = u64;
    // Messages are decoded here (JSON), so no codec stage follows.
    type Kind = apalis_core::backend::finalize::Ephemeral;
    type Config = apalis_amqp::Config;
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        AckLayer
    }
}

/// Settles each message once its job finished: `Ok` acknowledges, an error dead-letters.
#[derive(Debug, Clone, Copy, Default)]
pub struct AckLayer;

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService { inner }
    }
}

/// See [`AckLayer`].
#[derive(Debug, Clone)]
pub struct AckService<S> {
    inner: S,
}

impl<S, M> Service<Task<M>> for AckService<S>
where
    S: Service<Task<M>>,
    S::Future: Send + 'static,
    S::Response: Send,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, task: Task<M>) -> Self::Future {
        let ack = task.ctx().data().get::<Ack>().cloned();
        // The job's log lines carry its message id and the correlation id of the request
        // behind it (the job's own spans open inside this one).
        let envelope = task
            .ctx()
            .data()
            .get::<Envelope>()
            .cloned()
            .unwrap_or_default();
        let span = tracing::info_span!(
            "delivery",
            message.id = envelope.message_id.as_deref().unwrap_or(""),
            correlation_id = tracing::field::Empty,
        );
        if let Some(correlation) = &envelope.correlation_id {
            span.record("correlation_id", correlation.as_str());
        }
        let future = span.in_scope(|| self.inner.call(task));
        Box::pin(tracing::Instrument::instrument(
            async move {
                let result = future.await;
                if let Some(ack) = ack {
                    match &result {
                        Ok(_) => ack.ack().await,
                        Err(_) if ack.hand_back.load(Ordering::Acquire) => ack.requeue().await,
                        Err(_) => ack.dead_letter().await,
                    }
                }
                result
            },
            span,
        ))
    }
}
