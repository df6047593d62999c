//! RabbitMQ: the queue topology of jobs, a publisher with confirms for the dispatcher, and the
//! apalis backend job workers consume through.
//!
//! Every job queue `<prefix>.<queue>` is durable (quorum by default) with a delivery limit, and
//! dead-letters into `<prefix>.<queue>.dead` through the direct exchange `<prefix>.dead-letter`.
//! Every process declares the topology it uses before using it (declaring is idempotent), so
//! nothing depends on which process starts first.

mod publisher;
mod queue;

use std::time::Duration;

use idp_ops::config::AmqpUrl;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub use publisher::{OutgoingJob, PublishError, Publisher, properties};
pub use queue::{Ack, AckLayer, Envelope, QueueBackend, QueueError};

use crate::config::{JobsConfig, QueueType};

/// How long to wait for the broker to answer a connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Names and arguments of the job queues.
#[derive(Debug, Clone)]
pub struct Topology {
    url: AmqpUrl,
    prefix: String,
    queue_type: QueueType,
    delivery_limit: u32,
}

impl Topology {
    /// The topology configured for this worker.
    pub fn new(url: AmqpUrl, config: &JobsConfig) -> Self {
        Self {
            url,
            prefix: config.amqp_prefix.clone(),
            queue_type: config.amqp_queue_type,
            delivery_limit: config.amqp_delivery_limit,
        }
    }

    /// The broker's address.
    pub fn url(&self) -> &AmqpUrl {
        &self.url
    }

    /// The full name of job queue `queue`.
    pub fn queue_name(&self, queue: &str) -> String {
        format!("{}.{queue}", self.prefix)
    }

    /// The dead-letter queue of job queue `queue`.
    pub fn dead_queue_name(&self, queue: &str) -> String {
        format!("{}.{queue}.dead", self.prefix)
    }

    /// The exchange dead letters go through.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// The short queue name of a full one (`idp.email` -> `email`).
    pub fn short_name<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(full)
    }

    fn queue_arguments(&self, queue: &str) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
            );
        }
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.queue_name(queue).into()),
        );
        args
    }

    /// Opens a connection to the broker.
    pub async fn connect(&self) -> Result<Connection, lapin::Error> {
        let connect = Connection::connect(self.url.expose(), ConnectionProperties::default());
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result,
            Err(_) => Err(lapin::Error::from(lapin::ErrorKind::IOError(
                std::sync::Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the broker did not answer within 10 s",
                )),
            ))),
        }
    }

    /// Declares job queue `queue`, its dead-letter queue and the dead-letter exchange.
    pub async fn declare(&self, channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let exchange = self.dead_letter_exchange();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut dead_args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            dead_args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        let dead = self.dead_queue_name(queue);
        channel
            .queue_declare(dead.as_str().into(), durable, dead_args)
            .await?;
        let name = self.queue_name(queue);
        channel
            .queue_bind(
                dead.as_str().into(),
                exchange.as_str().into(),
                name.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(name.as_str().into(), durable, self.queue_arguments(queue))
            .await?;
        Ok(())
    }
}
