//! The global stream thread: a whole topic, on every instance, in a global state store (Kafka
//! Streams' `GlobalKTable` and its `GlobalStreamThread`).
//!
//! - **Restore first.** [`GlobalStreamThread::start`] reads the topic from the store's positions
//!   (from the beginning for an empty store) to its end before it returns: the stream threads
//!   start only once the table is complete, so no decision is taken on half a table.
//! - **Then follow.** A thread of its own keeps reading, and applies what it reads in batches: a
//!   change made at the source is seen by the next decisions within a poll interval of its
//!   arrival on the topic.
//! - **Positions with the rows.** Each batch is written with the positions it reaches
//!   ([`GlobalStateStore::apply`]); a restart reads on from there. A stored position that is no
//!   longer on the topic (the topic recreated) empties the store and the restore starts from the
//!   beginning; met while following, it stops the process, whose restart does that.
//! - **Errors.** Transient consumer errors are logged and retried by librdkafka; a fatal one, a
//!   failed store write or dead letter, or a panic stops the thread and sets the process's
//!   shutdown flag: decisions never go on against a table that stopped following its topic.
//! - **Bad records.** A record the store cannot read ([`GlobalStateStore::decode`]) goes to the
//!   dead-letter topic, with why and where it came from, and the store applies what it says in
//!   its place ([`Decoded::Refused`]); the thread keeps going. Its position only moves past the record once the dead-letter topic has it.
//!   Every instance reads every record, so with N instances a bad record is reported N times,
//!   under the same source coordinates.
//! - **Not part of the transactions.** A global table is read outside the exactly-once
//!   transactions, as in Kafka Streams: a command is decided on the table as it is when the
//!   command is processed, and a decision is never revisited when the table changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use state::StoreError;
use wire::dlq::headers;

use super::{KafkaContext, RuntimeError};
use crate::kafka::ReadToEndContext;
use crate::kafka::{KafkaArgs, KAFKA_CALL_TIMEOUT};

/// One record of the global topic, as read.
#[derive(Debug, Clone, Copy)]
pub struct GlobalRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// `None` for a tombstone (the row was deleted).
    pub value: Option<&'a [u8]>,
}

/// What a global store makes of one record.
#[derive(Debug)]
pub enum Decoded<C> {
    /// A change to apply.
    Change(C),
    /// Not a record the store can hold: it goes to the dead-letter topic with `reason`, and
    /// `instead` (if any) is applied in its place, e.g. the removal of what the record's key held
    /// before, which the record says is no longer true.
    Refused { reason: String, instead: Option<C> },
}

/// A global state store: what the global stream thread keeps up to date.
pub trait GlobalStateStore: Send + 'static {
    /// A change of the store, read from one record.
    type Change: Send;

    /// Next offset to read, per partition; a partition missing is read from its beginning.
    fn positions(&self) -> Result<HashMap<i32, i64>, StoreError>;

    /// Reads one record into a change, or says why it is not one.
    fn decode(&self, record: &GlobalRecord<'_>) -> Decoded<Self::Change>;

    /// Applies `changes` (in the topic's order) and the positions they reach, at once.
    fn apply(&mut self, changes: Vec<Self::Change>, positions: &HashMap<i32, i64>) -> Result<(), StoreError>;

    /// Empties the store, positions included: the topic is then read again from its beginning
    /// (its stored positions were no longer on the topic).
    fn clear(&mut self) -> Result<(), StoreError>;

    /// Entries held, for logs and metrics.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the global stream thread reads and where it reports bad records.
#[derive(Debug, Clone)]
pub struct GlobalConfig {
    pub kafka: KafkaArgs,
    /// The topic the table is read from (compacted, keyed by the table's primary key).
    pub topic: String,
    /// Where records the store cannot read go.
    pub dead_letter_topic: String,
    /// Names the clients (`<client_id>-global-consumer`, `<client_id>-global-dlq`).
    pub client_id: String,
    /// Longest a record waits before it is applied, once read.
    pub batch_interval: Duration,
}

/// The global stream thread's metrics, live (`rail_global_*` on `/metrics`, labelled with the
/// topic).
#[derive(Debug, Clone, Default)]
pub struct GlobalMetrics {
    /// Records read since start (restore included).
    pub records: Counter,
    /// Records sent to the dead-letter topic since start.
    pub dead_letters: Counter,
    /// Entries in the store.
    pub entries: Gauge,
    /// 1 once the store is restored to the end of the topic (processing may start).
    pub restored: Gauge,
}

impl GlobalMetrics {
    /// The families, registered in `registry` with the label `topic`.
    pub fn register(registry: &mut Registry, topic: &str) -> GlobalMetrics {
        let m = GlobalMetrics::default();
        let sub = registry.sub_registry_with_label(("topic".into(), topic.to_string().into()));
        sub.register(
            "rail_global_records",
            "Records of the global topic read into the global store",
            m.records.clone(),
        );
        sub.register(
            "rail_global_dead_letters",
            "Records of the global topic that could not be read, sent to its dead-letter topic",
            m.dead_letters.clone(),
        );
        sub.register("rail_global_store_entries", "Entries in the global store", m.entries.clone());
        sub.register(
            "rail_global_store_restored",
            "1 once the global store is restored to the end of its topic",
            m.restored.clone(),
        );
        m
    }
}

/// What the restore at start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalRestore {
    pub records: u64,
    pub dead_letters: u64,
    pub entries: usize,
    pub elapsed: Duration,
}

/// The global stream thread, running. Stop it with [`GlobalStreamThread::stop`]; if it fails, it
/// sets the process's shutdown flag, and [`GlobalStreamThread::stop`] returns its error.
pub struct GlobalStreamThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(), RuntimeError>>,
}

/// Records applied per batch during the restore.
const RESTORE_BATCH: usize = 5_000;
/// A restore that makes no progress for this long is an error (the topic is unreachable).
const RESTORE_STALL: Duration = Duration::from_secs(120);

impl GlobalStreamThread {
    /// Restores `store` to the end of the topic, then keeps it up to date on a thread of its own
    /// until [`GlobalStreamThread::stop`]. A failure of that thread sets `shutdown`.
    pub fn start<S: GlobalStateStore>(
        config: GlobalConfig,
        mut store: S,
        metrics: GlobalMetrics,
        shutdown: Arc<AtomicBool>,
    ) -> Result<(GlobalStreamThread, GlobalRestore), RuntimeError> {
        let started = Instant::now();
        let mut reader = Reader::new(&config)?;
        let partitions = reader.assign(&store)?;
        let mut at_end: HashMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
        let mut last_progress = Instant::now();
        let (mut records, mut dead_letters) = (0u64, 0u64);
        while at_end.values().any(|done| !done) {
            if shutdown.load(Ordering::Relaxed) {
                return Err(RuntimeError::ThreadStopped { name: "global stream" });
            }
            let batch = reader.poll_batch(RESTORE_BATCH, Duration::from_millis(200), &mut at_end)?;
            if batch.reset {
                // A stored position is no longer on the topic (recreated, or compacted and cleaned
                // past it): what the store holds may be stale. Start again from nothing.
                tracing::warn!(topic = %config.topic, "a stored position of the global store is not on the topic any more: reading it again from its beginning");
                store.clear()?;
                reader.assign(&store)?;
                at_end = partitions.iter().map(|p| (*p, false)).collect();
                continue;
            }
            if batch.read > 0 {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > RESTORE_STALL {
                return Err(RuntimeError::GlobalStalled { topic: config.topic.clone(), waited: RESTORE_STALL });
            }
            records += batch.read;
            metrics.records.inc_by(batch.read);
            let dead = reader.apply(&mut store, batch)?;
            dead_letters += dead;
            metrics.dead_letters.inc_by(dead);
        }
        let restore = GlobalRestore { records, dead_letters, entries: store.len(), elapsed: started.elapsed() };
        metrics.entries.set(gauge(store.len()));
        metrics.restored.set(1);
        tracing::info!(topic = %config.topic, records, dead_letters, entries = store.len(), elapsed = ?restore.elapsed, "global store restored");
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("global-stream".into())
                .spawn(move || {
                    // Stops the process however the thread ends, a panic included: decisions
                    // must not go on against a table that no longer follows its topic.
                    let _guard = StopOnExit { shutdown, stop: Arc::clone(&stop) };
                    let result = follow(&config, &mut reader, &mut store, &stop, &metrics);
                    if let Err(err) = &result {
                        tracing::error!(error = %err, topic = %config.topic, "the global stream thread failed; stopping");
                    }
                    result
                })
                .map_err(|source| RuntimeError::Thread { name: "global stream", source })?
        };
        Ok((GlobalStreamThread { stop, handle }, restore))
    }

    /// Stops the thread and returns how it ended.
    pub fn stop(self) -> Result<(), RuntimeError> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| RuntimeError::ThreadStopped { name: "global stream" })?
    }
}

/// Sets the process's shutdown flag when the global stream thread ends without being asked to.
struct StopOnExit {
    shutdown: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for StopOnExit {
    fn drop(&mut self) {
        if !self.stop.load(Ordering::Relaxed) {
            self.shutdown.store(true, Ordering::Relaxed);
        }
    }
}

fn follow<S: GlobalStateStore>(
    config: &GlobalConfig,
    reader: &mut Reader,
    store: &mut S,
    stop: &AtomicBool,
    metrics: &GlobalMetrics,
) -> Result<(), RuntimeError> {
    let mut at_end = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let batch = reader.poll_batch(RESTORE_BATCH, config.batch_interval, &mut at_end)?;
        if batch.reset {
            // Decisions go on meanwhile: the table is not emptied under them. A restart reads
            // the topic again, before any decision.
            return Err(RuntimeError::GlobalPositionLost { topic: config.topic.clone() });
        }
        if batch.read == 0 {
            continue;
        }
        let read = batch.read;
        let dead = reader.apply(store, batch)?;
        metrics.records.inc_by(read);
        metrics.dead_letters.inc_by(dead);
        metrics.entries.set(gauge(store.len()));
        tracing::debug!(topic = %config.topic, records = read, dead_letters = dead, entries = store.len(), "global store updated");
    }
    Ok(())
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Records read in one poll round, owned.
struct Batch {
    records: Vec<Owned>,
    positions: HashMap<i32, i64>,
    read: u64,
    /// A stored position was not on the topic any more (librdkafka's `auto.offset.reset=error`).
    reset: bool,
}

struct Owned {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

struct Reader {
    topic: String,
    consumer: BaseConsumer<ReadToEndContext>,
    dead_letters: FutureProducer,
    dead_letter_topic: String,
    last_error: Option<Instant>,
}

impl Reader {
    fn new(config: &GlobalConfig) -> Result<Reader, RuntimeError> {
        let mut c = config.kafka.consumer_base();
        c.set("client.id", format!("{}-global-consumer", config.client_id))
            .set("group.id", format!("{}-global", config.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // A stored position off the topic is reported, not silently replaced.
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", "100");
        let consumer: BaseConsumer<ReadToEndContext> = config
            .kafka
            .finish(c)
            .create_with_context(ReadToEndContext)
            .context(format!("creating the consumer of {}", config.topic))?;
        let mut p = config.kafka.base();
        p.set("client.id", format!("{}-global-dlq", config.client_id))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0");
        let dead_letters: FutureProducer = config
            .kafka
            .finish(p)
            .create()
            .context(format!("creating the dead-letter producer of {}", config.topic))?;
        Ok(Reader {
            topic: config.topic.clone(),
            consumer,
            dead_letters,
            dead_letter_topic: config.dead_letter_topic.clone(),
            last_error: None,
        })
    }

    /// Assigns every partition of the topic at the store's position; returns the partitions.
    fn assign<S: GlobalStateStore>(&mut self, store: &S) -> Result<Vec<i32>, RuntimeError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), KAFKA_CALL_TIMEOUT)
            .context(format!("reading the partitions of {}", self.topic))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(RuntimeError::GlobalTopicMissing { topic: self.topic.clone() });
        }
        let positions = store.positions()?;
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            let offset = positions.get(partition).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment.add_partition_offset(&self.topic, *partition, offset).context("assigning the global topic")?;
        }
        self.consumer.assign(&assignment).context(format!("assigning {}", self.topic))?;
        tracing::info!(topic = %self.topic, ?partitions, ?positions, "reading the global topic");
        Ok(partitions)
    }

    /// Polls until `max` records, or until `wait` has passed since the first; marks the
    /// partitions whose end was reached in `at_end`.
    fn poll_batch(
        &mut self,
        max: usize,
        wait: Duration,
        at_end: &mut HashMap<i32, bool>,
    ) -> Result<Batch, RuntimeError> {
        let mut batch = Batch { records: Vec::new(), positions: HashMap::new(), read: 0, reset: false };
        let started = Instant::now();
        while batch.records.len() < max && started.elapsed() < wait {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(message)) if message.topic() == self.topic => {
                    batch.positions.insert(message.partition(), message.offset() + 1);
                    batch.records.push(Owned {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                    });
                    batch.read += 1;
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition, true);
                    if at_end.values().all(|done| *done) && batch.records.is_empty() {
                        break;
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    batch.reset = true;
                    break;
                }
                // The consumer cannot go on (librdkafka says so).
                Some(Err(source @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(RuntimeError::Kafka { context: format!("reading {}", self.topic), source });
                }
                // Transient errors (a broker down, a partition moving): librdkafka retries by
                // itself; a restore that stays stuck ends with its stall timeout. Said at most
                // once a second.
                Some(Err(error)) => {
                    if self.last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(%error, topic = %self.topic, "global consumer error");
                        self.last_error = Some(Instant::now());
                    }
                }
                None => {
                    if at_end.values().all(|done| *done) {
                        break;
                    }
                }
            }
        }
        Ok(batch)
    }

    /// Decodes and applies a batch; sends what does not decode to the dead-letter topic first.
    /// Returns the number of dead letters.
    fn apply<S: GlobalStateStore>(&mut self, store: &mut S, batch: Batch) -> Result<u64, RuntimeError> {
        let mut changes = Vec::with_capacity(batch.records.len());
        let mut dead = 0;
        for record in &batch.records {
            let view = GlobalRecord {
                partition: record.partition,
                offset: record.offset,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
            };
            match store.decode(&view) {
                Decoded::Change(change) => changes.push(change),
                Decoded::Refused { reason, instead } => {
                    self.dead_letter(&view, &reason)?;
                    dead += 1;
                    changes.extend(instead);
                }
            }
        }
        if !changes.is_empty() || !batch.positions.is_empty() {
            store.apply(changes, &batch.positions)?;
        }
        Ok(dead)
    }

    fn dead_letter(&self, record: &GlobalRecord<'_>, reason: &str) -> Result<(), RuntimeError> {
        tracing::warn!(topic = %self.topic, partition = record.partition, offset = record.offset, reason, dead_letters = %self.dead_letter_topic, "a record of the global topic cannot be read; sent to the dead-letter topic");
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: headers::ERROR, value: Some(reason.as_bytes()) })
            .insert(Header { key: headers::ERROR_KIND, value: Some("global-record".as_bytes()) })
            .insert(Header { key: headers::SOURCE_TOPIC, value: Some(self.topic.as_bytes()) })
            .insert(Header { key: headers::SOURCE_PARTITION, value: Some(partition.as_bytes()) })
            .insert(Header { key: headers::SOURCE_OFFSET, value: Some(offset.as_bytes()) });
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = record.key {
            out = out.key(key);
        }
        if let Some(value) = record.value {
            out = out.payload(value);
        }
        futures::executor::block_on(self.dead_letters.send(out, KAFKA_CALL_TIMEOUT)).map_err(|(source, _)| {
            RuntimeError::Kafka { context: format!("sending a dead letter to {}", self.dead_letter_topic), source }
        })?;
        Ok(())
    }
}
