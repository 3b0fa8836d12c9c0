//! wagon-lits: places orders (commands to `orders`) and materialises `order-updates` into its view.
//!
//! The view reads every partition of `order-updates` (like a Kafka Streams GlobalKTable), with
//! `read_committed`, and stores the next offset of each partition in the same RocksDB batch as
//! the rows. It is exactly once without transactions on this side: after a crash it resumes at
//! the offsets its last batch wrote.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use state::{ApplyStats, CommandEnvelope, OrderUpdate, StoreError, StoreOptions, ViewRecord, ViewStore};

use crate::kafka_config::{KafkaArgs, TopicArgs, KAFKA_CALL_TIMEOUT};
use crate::topics::{ensure_topics, partition_count, TopicError, TopicSpec};

/// A failure of wagon-lits' Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum WagonLitsError {
    #[error("{context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topics(#[from] TopicError),
}

fn kafka(context: &str) -> impl FnOnce(KafkaError) -> WagonLitsError + '_ {
    move |source| WagonLitsError::Kafka { context: context.to_string(), source }
}

/// Creates `orders`, `order-updates` and the dead-letter topic if they are missing.
pub fn ensure_service_topics(kafka: &KafkaArgs, topics: &TopicArgs) -> Result<(), TopicError> {
    ensure_topics(
        kafka,
        &[
            TopicSpec::new(&topics.orders_topic, topics.partitions, topics.replication_factor),
            TopicSpec::new(&topics.updates_topic, topics.partitions, topics.replication_factor),
            TopicSpec::new(&topics.dlq_topic, 1, topics.replication_factor),
        ],
    )
}

/// Produces commands to `orders`: idempotent, `acks=all`, keyed by order id.
#[derive(Clone)]
pub struct CommandProducer {
    producer: FutureProducer,
    topic: String,
}

impl CommandProducer {
    /// `delivery_timeout` bounds how long a command may wait for Kafka before its delivery fails.
    pub fn new(kafka: &KafkaArgs, topic: &str, delivery_timeout: Duration) -> Result<CommandProducer, WagonLitsError> {
        let mut c: ClientConfig = kafka.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("partitioner", "murmur2_random");
        let producer: FutureProducer = kafka.finish(c).create().map_err(kafka_err("creating the command producer"))?;
        Ok(CommandProducer { producer, topic: topic.to_string() })
    }

    /// Queues a command; the returned future resolves once Kafka has it (or it failed).
    pub fn send(&self, command: &CommandEnvelope) -> Result<DeliveryFuture, WagonLitsError> {
        let payload = serde_json::to_vec(command).unwrap_or_default();
        self.send_raw(Some(command.order_id.as_bytes()), Some(&payload))
    }

    /// Queues any bytes to `orders` (for tools and tests that need bad input too).
    pub fn send_raw(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<DeliveryFuture, WagonLitsError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((err, _)) => {
                    return Err(WagonLitsError::Kafka { context: format!("producing to {}", self.topic), source: err })
                }
            }
        }
    }

    /// Sends a command and waits until Kafka has it.
    pub fn send_and_wait(&self, command: &CommandEnvelope) -> Result<(i32, i64), WagonLitsError> {
        let future = self.send(command)?;
        match futures::executor::block_on(future) {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((err, _))) => Err(WagonLitsError::Kafka { context: "delivering a command".into(), source: err }),
            Err(_) => {
                Err(WagonLitsError::Kafka { context: "delivering a command".into(), source: KafkaError::Canceled })
            }
        }
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), WagonLitsError> {
        self.producer.flush(Timeout::After(timeout)).map_err(kafka_err("flushing the command producer"))
    }
}

fn kafka_err(context: &'static str) -> impl FnOnce(KafkaError) -> WagonLitsError {
    move |source| WagonLitsError::Kafka { context: context.to_string(), source }
}

/// Settings of the view materialiser.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    pub kafka: KafkaArgs,
    pub updates_topic: String,
    pub state_dir: PathBuf,
    /// Most records applied in one RocksDB batch.
    pub max_batch: usize,
}

/// Reads `order-updates` into a [`ViewStore`].
pub struct Materialiser {
    consumer: BaseConsumer,
    view: Arc<ViewStore>,
    config: ViewConfig,
    stats: ApplyStats,
}

impl Materialiser {
    /// Opens (or creates) the view under `config.state_dir` and positions a consumer on every
    /// partition of the updates topic at the offsets the view stored.
    pub fn new(config: ViewConfig, store: &StoreOptions) -> Result<Materialiser, WagonLitsError> {
        let view = Arc::new(ViewStore::open(&config.state_dir.join("view"), store)?);
        let mut c = config.kafka.base();
        c.set("client.id", "wagon-lits-view")
            .set("group.id", "wagon-lits-view")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50");
        let consumer: BaseConsumer =
            config.kafka.finish(c).create().map_err(kafka_err("creating the view consumer"))?;
        let partitions = partition_count(&config.kafka, &config.updates_topic, KAFKA_CALL_TIMEOUT)?;
        let stored = view.offsets()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            let offset = stored.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment
                .add_partition_offset(&config.updates_topic, p, offset)
                .map_err(kafka("assigning order-updates"))?;
        }
        consumer.assign(&assignment).map_err(kafka("assigning order-updates"))?;
        tracing::info!(partitions, resumed = stored.len(), "view materialiser positioned on {}", config.updates_topic);
        Ok(Materialiser { consumer, view, config, stats: ApplyStats::default() })
    }

    /// The view, for queries from other threads.
    pub fn view(&self) -> Arc<ViewStore> {
        Arc::clone(&self.view)
    }

    pub fn stats(&self) -> ApplyStats {
        self.stats
    }

    /// Reads what is there (waiting up to `wait` for the first record) and applies it in one
    /// batch. Returns how many records it read.
    pub fn step(&mut self, wait: Duration) -> Result<usize, WagonLitsError> {
        let mut records = Vec::new();
        let deadline = Instant::now() + wait;
        let mut timeout = wait;
        while records.len() < self.config.max_batch {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => {
                    let update = message.payload().and_then(|p| serde_json::from_slice::<OrderUpdate>(p).ok());
                    if update.is_none() {
                        tracing::warn!(
                            partition = message.partition(),
                            offset = message.offset(),
                            "record on order-updates is not an update; skipped"
                        );
                    }
                    records.push(ViewRecord { partition: message.partition(), offset: message.offset(), update });
                    // After the first record, take only what is already fetched.
                    timeout = Duration::ZERO;
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "view consumer error");
                    break;
                }
            }
            if Instant::now() > deadline {
                timeout = Duration::ZERO;
            }
        }
        let stats = self.view.apply(&records)?;
        self.stats += stats;
        Ok(records.len())
    }

    /// Applies updates until `shutdown` is set.
    pub fn run(mut self, shutdown: Arc<AtomicBool>) -> Result<ApplyStats, WagonLitsError> {
        while !shutdown.load(Ordering::Relaxed) {
            self.step(Duration::from_millis(100))?;
        }
        Ok(self.stats)
    }
}
