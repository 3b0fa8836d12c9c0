//! wagon-lits' view: `order-updates` materialised into RocksDB.
//!
//! The view reads every partition of `order-updates` (like a Kafka Streams GlobalKTable), with
//! `read_committed`, and stores the next offset of each partition in the same RocksDB batch as
//! the rows. It is exactly once without transactions on this side: after a crash it resumes at
//! the offsets its last batch wrote.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use state::{ApplyStats, StoreOptions, ViewRecord, ViewStore};
use wire::codec::UpdateError;
use wire::Codec;

use engine::admin::partition_count;
use engine::kafka::{KafkaArgs, KAFKA_CALL_TIMEOUT};

use crate::metrics::ViewMetrics;
use crate::WagonLitsError;

pub(crate) fn kafka_err(context: &'static str) -> impl FnOnce(KafkaError) -> WagonLitsError {
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
    /// How updates are read (JSON, and Avro when a registry is configured).
    pub codec: Codec,
}

/// The view consumer's context: librdkafka's statistics go to the metrics.
struct ViewContext {
    metrics: ViewMetrics,
    topic: String,
}

impl ClientContext for ViewContext {
    fn stats_raw(&self, statistics: &[u8]) {
        // The view assigns itself its partitions and stores its offsets in RocksDB: its lag is
        // from its fetch position (it commits nothing to Kafka).
        if let Some(lag) = engine::stats::consumer_lag(statistics, &self.topic) {
            self.metrics.consumer_lag.set(&lag);
        }
    }
}

impl ConsumerContext for ViewContext {}

/// Reads `order-updates` into a [`ViewStore`].
pub struct Materialiser {
    consumer: BaseConsumer<ViewContext>,
    metrics: ViewMetrics,
    view: Arc<ViewStore>,
    config: ViewConfig,
    stats: ApplyStats,
}

impl Materialiser {
    /// Opens (or creates) the view under `config.state_dir` and positions a consumer on every
    /// partition of the updates topic at the offsets the view stored.
    pub fn new(config: ViewConfig, store: &StoreOptions, metrics: ViewMetrics) -> Result<Materialiser, WagonLitsError> {
        let view = Arc::new(ViewStore::open(&config.state_dir.join("view"), store)?);
        let mut c = config.kafka.consumer_base();
        c.set("client.id", "wagon-lits-view")
            .set("group.id", "wagon-lits-view")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .set("statistics.interval.ms", "5000");
        let context = ViewContext { metrics: metrics.clone(), topic: config.updates_topic.clone() };
        let consumer: BaseConsumer<ViewContext> =
            config.kafka.finish(c).create_with_context(context).map_err(kafka_err("creating the view consumer"))?;
        let partitions = partition_count(&config.kafka, &config.updates_topic, KAFKA_CALL_TIMEOUT)?;
        let stored = view.offsets()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            let offset = stored.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment
                .add_partition_offset(&config.updates_topic, p, offset)
                .map_err(kafka_err("assigning order-updates"))?;
        }
        consumer.assign(&assignment).map_err(kafka_err("assigning order-updates"))?;
        tracing::info!(partitions, resumed = stored.len(), "view materialiser positioned on {}", config.updates_topic);
        Ok(Materialiser { consumer, metrics, view, config, stats: ApplyStats::default() })
    }

    /// The materialiser's metrics.
    pub fn metrics(&self) -> &ViewMetrics {
        &self.metrics
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
    ///
    /// An update whose writer schema the registry cannot give now is an error: nothing of the
    /// batch is applied, and the consumer is sought back to the batch's first record of each
    /// partition, so that the next step reads them again ([`Materialiser::run`] waits and
    /// retries).
    pub fn step(&mut self, wait: Duration) -> Result<usize, WagonLitsError> {
        let mut records = Vec::new();
        // The batch's first offset of each partition it read.
        let mut firsts: Vec<(i32, i64)> = Vec::new();
        let deadline = Instant::now() + wait;
        let mut timeout = wait;
        while records.len() < self.config.max_batch {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => {
                    if !firsts.iter().any(|(p, _)| *p == message.partition()) {
                        firsts.push((message.partition(), message.offset()));
                    }
                    let update = match message.payload().map(|p| self.config.codec.decode_update(p)) {
                        Some(Ok(update)) => Some(update),
                        Some(Err(UpdateError::Registry(e))) => {
                            drop(message);
                            self.rewind(&firsts)?;
                            return Err(WagonLitsError::Registry(e));
                        }
                        Some(Err(UpdateError::Invalid { kind, reason })) => {
                            tracing::warn!(
                                partition = message.partition(),
                                offset = message.offset(),
                                kind,
                                reason,
                                "record on order-updates is not an update; skipped"
                            );
                            None
                        }
                        None => {
                            tracing::warn!(
                                partition = message.partition(),
                                offset = message.offset(),
                                "record on order-updates has no value; skipped"
                            );
                            None
                        }
                    };
                    records.push(ViewRecord { position: Some((message.partition(), message.offset())), update });
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
        let m = &self.metrics;
        m.read.inc_by(records.len() as u64);
        m.applied.inc_by(stats.applied);
        m.stale.inc_by(stats.stale);
        m.undecodable.inc_by(stats.undecodable);
        Ok(records.len())
    }

    /// Positions the consumer back on each `(partition, offset)`.
    fn rewind(&self, firsts: &[(i32, i64)]) -> Result<(), WagonLitsError> {
        for (partition, offset) in firsts {
            self.consumer
                .seek(&self.config.updates_topic, *partition, Offset::Offset(*offset), KAFKA_CALL_TIMEOUT)
                .map_err(kafka_err("seeking back to the records not applied"))?;
        }
        Ok(())
    }

    /// Reads until the view has caught up with the end of every partition as it was when called.
    pub fn catch_up(&mut self, timeout: Duration) -> Result<(), WagonLitsError> {
        let deadline = Instant::now() + timeout;
        let assignment = self.consumer.assignment().map_err(kafka_err("reading the assignment"))?;
        let mut ends = Vec::new();
        for element in assignment.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(element.topic(), element.partition(), KAFKA_CALL_TIMEOUT)
                .map_err(kafka_err("reading end offsets"))?;
            ends.push((element.partition(), high));
        }
        loop {
            self.step(Duration::from_millis(100))?;
            let positions = self.consumer.position().map_err(kafka_err("reading positions"))?;
            let caught_up = ends.iter().all(|(partition, high)| {
                *high == 0
                    || positions.find_partition(&self.config.updates_topic, *partition).is_some_and(|e| {
                        match e.offset() {
                            Offset::Offset(o) => o >= *high,
                            _ => false,
                        }
                    })
            });
            if caught_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(WagonLitsError::CatchUpTimeout(timeout));
            }
        }
    }

    /// Applies updates until `shutdown` is set. An update whose writer schema the registry cannot
    /// give now is waited for (read again every second, the view standing still meanwhile, as
    /// `rail_schema_registry_reachable` shows); any other failure ends the run.
    pub fn run(mut self, shutdown: Arc<AtomicBool>) -> Result<ApplyStats, WagonLitsError> {
        let mut sized = Instant::now();
        while !shutdown.load(Ordering::Relaxed) {
            match self.step(Duration::from_millis(100)) {
                Ok(_) => {}
                Err(WagonLitsError::Registry(err)) => {
                    tracing::warn!(error = %err, "an update's schema is not readable now; the view waits for the registry");
                    let waited = Instant::now();
                    while waited.elapsed() < Duration::from_secs(1) && !shutdown.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Err(err) => return Err(err),
            }
            if sized.elapsed() > Duration::from_secs(5) {
                self.metrics.store_size(self.view.size());
                sized = Instant::now();
            }
        }
        Ok(self.stats)
    }
}
