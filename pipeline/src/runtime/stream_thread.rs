//! The stream thread: the exactly-once loop of dev-materiels, in one place.
//!
//! ```text
//! loop {
//!     poll one record from `orders`            (rebalance callbacks run inside this poll)
//!     restore newly assigned tasks             (before any of their records is processed)
//!     begin a transaction if none is open      (it starts with the outbox: decisions taken
//!                                               over HTTP while Kafka was away, in order)
//!     decode -> task -> state machine          (state changes go to the task's write-back cache)
//!     produce the update to `order-updates`, the new state to the changelog, or the record to
//!     the dead-letter topic                    (all inside the transaction)
//!     answer the commands that came over HTTP  (decided on committed state, written to the
//!                                               store and the outbox at once)
//!     every commit interval:
//!         fire due timers (punctuation)        (same transaction)
//!         send the consumed offsets with the group metadata, commit the transaction
//!                                              (on the committer thread: the loop goes on
//!                                               answering HTTP, taking no record, meanwhile)
//!         then, and only then, write each task's cache to RocksDB with its changelog position
//! }
//! ```
//!
//! This is Kafka Streams' `exactly_once_v2`: one transactional producer per thread, zombies
//! fenced by the consumer group generation carried with the offsets. What differs is the state
//! store: it is written after the commit, never before, so it never holds state that Kafka might
//! still abort, and a crash costs a replay of the changelog from the store's position only.
//!
//! On an abortable error the transaction is aborted, the caches dropped and the consumer sent
//! back to the first offset the transaction read. If the producer is fenced (the coordinator
//! aborted a transaction that outlived its timeout during an outage), the transaction is dropped
//! the same way and a new producer started. Other fatal errors stop the thread with an error: a
//! supervisor restarts the process, which restores and carries on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use state::{decode_command, validate_envelope};

use super::direct::{DirectRefusal, DirectReply, DirectRequest, QueryReply};
use super::dlq::{dead_letter_headers, Source};
use super::restore::restore;
use super::standby::Standbys;
use super::task::{Direct, Output, Task};
use super::{KafkaContext, RuntimeError, StreamConfig};
use crate::kafka_config::{KAFKA_CALL_TIMEOUT, MAX_MESSAGE_BYTES};
use crate::partitioner::partition_for;
use crate::topics::{changelog_topic, ensure_topics, partition_count, service_topics};
use crate::trace::{TraceParent, TRACEPARENT};

/// How long one `poll` waits for a record (and so how long an HTTP request may wait for its
/// turn on an idle thread).
const POLL: Duration = Duration::from_millis(5);
/// How long the stream thread waits for the committer thread at each turn of the loop before it
/// goes back to answering HTTP requests.
const COMMIT_STEP: Duration = Duration::from_millis(5);
/// How long a revocation or a shutdown waits for the open transaction to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Fault injection for tests: with this variable set to N, the process aborts right after its
/// Nth transaction commit succeeds and before the state stores are written, the one moment at
/// which Kafka is ahead of RocksDB. A restart must then replay exactly what was missed.
pub const CRASH_AFTER_COMMITS_ENV: &str = "RAIL_FAULT_CRASH_AFTER_COMMITS";
/// Fault injection for tests: with this variable set to N, the Nth `send_offsets_to_transaction`
/// of the process never returns, as librdkafka's does when the group coordinator it cached went
/// away, and the watchdog gives up on it after [`WEDGED_AFTER_INJECTED`] instead of
/// [`WEDGED_AFTER`].
pub const WEDGE_SEND_OFFSETS_ENV: &str = "RAIL_FAULT_WEDGE_SEND_OFFSETS";
/// A dead letter whose value does not fit is cut to this many bytes.
const DLQ_TRUNCATE: usize = 64 << 10;

/// Live counters of one stream thread, readable from any thread (the demo's progress, health
/// checks, `/metrics`).
#[derive(Debug)]
pub struct StreamMetrics {
    /// Records read from `orders`.
    pub records: AtomicU64,
    /// Updates emitted to `order-updates` (commands and timers).
    pub updates: AtomicU64,
    /// Commands that changed nothing (already seen).
    pub unchanged: AtomicU64,
    pub dead_letters: AtomicU64,
    pub commits: AtomicU64,
    pub aborts: AtomicU64,
    /// Changelog records replayed by restores.
    pub restored_records: AtomicU64,
    /// Tasks restored and processing.
    pub active_tasks: AtomicU64,
    /// Commands received over HTTP and decided (the fallback path).
    pub direct_commands: AtomicU64,
    /// Outbox entries published to Kafka after the fact.
    pub outbox_published: AtomicU64,
    /// Decisions taken over HTTP still waiting in the outbox.
    pub outbox_pending: AtomicU64,
    /// Changelog records applied to standby copies.
    pub standby_records: AtomicU64,
    /// Partitions kept as standby copies.
    pub standby_partitions: AtomicU64,
    /// Transactional producers replaced after a fatal error or a stuck call.
    pub producers_replaced: AtomicU64,
    /// Partitions assigned and waiting for their restore.
    pub partitions_restoring: AtomicU64,
    /// Assignments received from the group.
    pub assignments: AtomicU64,
    /// Time from asking for a commit to Kafka's answer, in seconds.
    pub commit_seconds: Histogram,
    /// The same for aborts.
    pub abort_seconds: Histogram,
    /// Consumer lag of each assigned partition of `orders` (librdkafka's statistics, every few
    /// seconds): records after the committed offset, up to the last stable offset.
    pub consumer_lag: Mutex<BTreeMap<i32, i64>>,
    /// Size of each task's state store, refreshed every few seconds.
    pub stores: Mutex<BTreeMap<i32, state::StoreSize>>,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        StreamMetrics {
            records: AtomicU64::default(),
            updates: AtomicU64::default(),
            unchanged: AtomicU64::default(),
            dead_letters: AtomicU64::default(),
            commits: AtomicU64::default(),
            aborts: AtomicU64::default(),
            restored_records: AtomicU64::default(),
            active_tasks: AtomicU64::default(),
            direct_commands: AtomicU64::default(),
            outbox_published: AtomicU64::default(),
            outbox_pending: AtomicU64::default(),
            standby_records: AtomicU64::default(),
            standby_partitions: AtomicU64::default(),
            producers_replaced: AtomicU64::default(),
            partitions_restoring: AtomicU64::default(),
            assignments: AtomicU64::default(),
            // 1 ms to about 16 s.
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            abort_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            consumer_lag: Mutex::default(),
            stores: Mutex::default(),
        }
    }
}

impl StreamMetrics {
    /// Whether the thread has had an assignment and restored all of it.
    pub fn is_ready(&self) -> bool {
        self.assignments.load(Ordering::Relaxed) > 0 && self.partitions_restoring.load(Ordering::Relaxed) == 0
    }
}

impl StreamMetrics {
    pub fn snapshot(&self) -> StreamStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StreamStats {
            records: get(&self.records),
            updates: get(&self.updates),
            unchanged: get(&self.unchanged),
            dead_letters: get(&self.dead_letters),
            commits: get(&self.commits),
            aborts: get(&self.aborts),
            restored_records: get(&self.restored_records),
            active_tasks: get(&self.active_tasks),
            direct_commands: get(&self.direct_commands),
            outbox_published: get(&self.outbox_published),
            outbox_pending: get(&self.outbox_pending),
            standby_records: get(&self.standby_records),
            standby_partitions: get(&self.standby_partitions),
            producers_replaced: get(&self.producers_replaced),
        }
    }
}

/// A copy of [`StreamMetrics`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamStats {
    pub records: u64,
    pub updates: u64,
    pub unchanged: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub aborts: u64,
    pub restored_records: u64,
    pub active_tasks: u64,
    pub direct_commands: u64,
    pub outbox_published: u64,
    pub outbox_pending: u64,
    pub standby_records: u64,
    pub standby_partitions: u64,
    pub producers_replaced: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts the producer's acknowledged changelog offsets, per partition, for the open
/// transaction. Runs on the stream thread (the producer is polled there).
struct DeliveryTracker {
    changelog: String,
    last_offsets: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if message.topic() == self.changelog => {
                if let Ok(mut offsets) = self.last_offsets.lock() {
                    let last = offsets.entry(message.partition()).or_insert(message.offset());
                    *last = (*last).max(message.offset());
                }
            }
            Ok(_) => {}
            Err((err, message)) => {
                // The transaction will fail to commit; this only says why.
                tracing::warn!(topic = message.topic(), partition = message.partition(), error = %err, "a record of the transaction was not delivered");
            }
        }
    }
}

impl DeliveryTracker {
    fn take(&self) -> HashMap<i32, i64> {
        self.last_offsets.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default()
    }
}

/// The restore consumer's context: reaching the end of a partition is what a restore waits for,
/// not an error worth a log line.
pub struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(%error, reason, "restore consumer error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Where the open transaction is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking records, timers and outbox entries.
    Open,
    /// Commit asked for; no more writes may join. Resumed each turn until Kafka answers.
    Committing,
    /// Abort asked for (the commit failed, or the assignment was lost). Resumed likewise.
    Aborting,
}

/// The open transaction.
struct Txn {
    phase: Phase,
    /// The first `orders` offset this transaction read, per partition: where to go back to if
    /// it aborts.
    first_offsets: BTreeMap<i32, i64>,
}

/// How far a commit (or abort) got in the time it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Yes,
    NotYet,
}

/// Everything the loop and the rebalance callbacks share.
struct Engine {
    config: StreamConfig,
    changelog: String,
    /// Partitions of `orders` (and of the changelog).
    partitions: i32,
    producer: Arc<BaseProducer<DeliveryTracker>>,
    committer: Committer,
    restore_consumer: BaseConsumer<RestoreContext>,
    /// Warm copies of the partitions not owned here (`--standby`).
    standbys: Option<Standbys>,
    tasks: BTreeMap<i32, Task>,
    /// Partitions assigned but not restored yet.
    to_restore: BTreeSet<i32>,
    /// Tasks kept after the group said the assignment was lost (the coordinator unreachable):
    /// they keep serving the HTTP path until the next assignment says whether they stay.
    detached: BTreeSet<i32>,
    txn: Option<Txn>,
    last_commit: Instant,
    /// Requests that came over HTTP.
    direct: Receiver<DirectRequest>,
    /// An error raised inside a rebalance callback, reported by the loop.
    fatal: Option<RuntimeError>,
    metrics: Arc<StreamMetrics>,
    /// Transactions committed by this process.
    commits_here: u64,
    crash_after_commits: Option<u64>,
}

/// The consumer's context: routes rebalance callbacks to the engine, and librdkafka's
/// statistics to the metrics.
struct StreamContext {
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<StreamMetrics>,
    orders_topic: String,
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic while holding the lock is a bug; the state it left is still the best there is.
    engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for StreamContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(lag) = crate::metrics::consumer_lag(statistics, &self.orders_topic) {
            *self.metrics.consumer_lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
        }
    }
}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            lock(&self.engine).on_revoke(consumer, &partitions_of(tpl));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => lock(&self.engine).on_assign(&partitions_of(tpl)),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether a transactional call failed only for lack of time (Kafka slow or away): the same
/// call resumes where it was.
fn is_retriable(err: &KafkaError) -> bool {
    match err {
        KafkaError::Transaction(e) => e.is_retriable(),
        KafkaError::Flush(code) => *code == RDKafkaErrorCode::OperationTimedOut,
        _ => false,
    }
}

fn requires_abort(err: &KafkaError) -> bool {
    matches!(err, KafkaError::Transaction(e) if e.txn_requires_abort())
}

/// Runs dev-materiels' stream thread until `shutdown` is set, then commits what is open and
/// returns its counters. `direct` brings the commands and queries that came over HTTP.
pub fn run(
    config: StreamConfig,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
    direct: Receiver<DirectRequest>,
) -> Result<StreamStats, RuntimeError> {
    let changelog = config.changelog_topic();
    let partitions = prepare_topics(&config, &changelog)?;

    let engine =
        Arc::new(Mutex::new(Engine::new(config.clone(), changelog, partitions, Arc::clone(&metrics), direct)?));
    let consumer: BaseConsumer<StreamContext> = consumer_config(&config)
        .create_with_context(StreamContext {
            engine: Arc::clone(&engine),
            metrics: Arc::clone(&metrics),
            orders_topic: config.topics.orders_topic.clone(),
        })
        .context("creating the orders consumer")?;
    consumer.subscribe(&[&config.topics.orders_topic]).context("subscribing to orders")?;
    tracing::info!(
        group = %config.application_id,
        transactional_id = %config.transactional_id(),
        commit_interval_ms = config.commit_interval.as_millis() as u64,
        "dev-materiels stream thread started"
    );

    let mut last_report = Instant::now();
    let mut last_sizes = Instant::now();
    let mut last_consumer_error: Option<Instant> = None;
    while !shutdown.load(Ordering::Relaxed) {
        // While a transaction settles, no record may join it: leave them in the consumer.
        let settling = lock(&engine).is_settling();
        let message = if settling {
            std::thread::sleep(POLL);
            None
        } else {
            consumer.poll(POLL)
        };
        let mut engine = lock(&engine);
        if let Some(err) = engine.fatal.take() {
            return Err(err);
        }
        if !engine.is_settling() {
            engine.restore_assigned(&consumer)?;
        }
        match message {
            None => {}
            Some(Ok(message)) => engine.process(&consumer, &message)?,
            // The consumer cannot go on (librdkafka says so): stop, and let a restart rebuild it.
            Some(Err(err @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(RuntimeError::Kafka { context: "consuming orders".into(), source: err });
            }
            // Transient consumer errors (a broker down, a partition moving): librdkafka retries
            // by itself. Say so at most once a second.
            Some(Err(err)) if last_consumer_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) => {
                tracing::warn!(error = %err, "consumer error");
                last_consumer_error = Some(Instant::now());
            }
            Some(Err(_)) => {}
        }
        engine.serve_direct();
        engine.poll_standbys()?;
        if !engine.is_settling() {
            // (While the committer thread commits, it serves the producer's events itself.)
            engine.producer.poll(Duration::ZERO);
        }
        engine.maybe_commit(&consumer)?;
        if last_sizes.elapsed() > Duration::from_secs(5) {
            engine.refresh_store_sizes();
            last_sizes = Instant::now();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            let s = engine.metrics.snapshot();
            tracing::info!(
                records = s.records,
                updates = s.updates,
                dead_letters = s.dead_letters,
                commits = s.commits,
                aborts = s.aborts,
                direct_commands = s.direct_commands,
                outbox_pending = s.outbox_pending,
                "progress"
            );
            last_report = Instant::now();
        }
    }

    tracing::info!("shutting down: settling the open transaction");
    let settled = lock(&engine).settle(&consumer, SETTLE_TIMEOUT)?;
    if settled == Settled::NotYet {
        tracing::warn!("the open transaction did not settle before shutdown; the next start resolves it");
    }
    // Closing the consumer runs the revoke callback, which finds nothing left to commit.
    drop(consumer);
    Ok(metrics.snapshot())
}

/// Creates the topics if missing, checks that the changelog has one partition per `orders`
/// partition, and returns that number.
fn prepare_topics(config: &StreamConfig, changelog: &str) -> Result<i32, RuntimeError> {
    let t = &config.topics;
    if !config.create_topics {
        let orders = partition_count(&config.kafka, &t.orders_topic, KAFKA_CALL_TIMEOUT)?;
        let changelog_partitions = partition_count(&config.kafka, changelog, KAFKA_CALL_TIMEOUT)?;
        check_changelog(changelog, changelog_partitions, orders, &t.orders_topic)?;
        return Ok(orders);
    }
    ensure_topics(&config.kafka, &service_topics(t))?;
    let orders = partition_count(&config.kafka, &t.orders_topic, KAFKA_CALL_TIMEOUT)?;
    ensure_topics(&config.kafka, &[changelog_topic(t, changelog, orders)])?;
    let changelog_partitions = partition_count(&config.kafka, changelog, KAFKA_CALL_TIMEOUT)?;
    check_changelog(changelog, changelog_partitions, orders, &t.orders_topic)?;
    Ok(orders)
}

fn check_changelog(changelog: &str, actual: i32, expected: i32, orders: &str) -> Result<(), RuntimeError> {
    if actual != expected {
        return Err(crate::topics::TopicError::PartitionMismatch {
            topic: changelog.to_string(),
            actual,
            expected,
            hint: format!(" (one per partition of {orders})"),
        }
        .into());
    }
    Ok(())
}

fn consumer_config(config: &StreamConfig) -> ClientConfig {
    let mut c = config.kafka.base();
    if config.static_membership {
        c.set("group.instance.id", &config.instance_id);
    }
    c.set("group.id", &config.application_id)
        .set("client.id", format!("{}-consumer", config.transactional_id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        // librdkafka prefetches up to 64 MiB per consumer by default; 8 MiB still holds several
        // commit intervals of records. (Peak RSS in the end-to-end bench: 277 MiB before, 278
        // after: the memory is elsewhere, see docs/benchmarks.md.)
        .set("queued.max.messages.kbytes", "8192")
        // For the consumer lag of /metrics.
        .set("statistics.interval.ms", "5000");
    config.kafka.finish(c)
}

/// The consumer restores read changelog partitions with (no group membership: it assigns).
fn create_restore_consumer(config: &StreamConfig) -> Result<BaseConsumer<RestoreContext>, RuntimeError> {
    let mut r = config.kafka.base();
    r.set("client.id", format!("{}-restore-consumer", config.transactional_id()))
        .set("group.id", format!("{}-restore", config.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20");
    config.kafka.finish(r).create_with_context(RestoreContext).context("creating the restore consumer")
}

/// The transactional producer, initialised: fences any previous incarnation with the same
/// transactional id and aborts what it left open.
fn create_producer(config: &StreamConfig, changelog: &str) -> Result<Arc<BaseProducer<DeliveryTracker>>, RuntimeError> {
    let mut p = config.kafka.base();
    p.set("transactional.id", config.transactional_id())
        .set("client.id", format!("{}-producer", config.transactional_id()))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string())
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        // Java's partitioner: the same key lands on the same partition whoever produces it.
        .set("partitioner", "murmur2_random");
    let tracker = DeliveryTracker { changelog: changelog.to_string(), last_offsets: Mutex::default() };
    let producer: BaseProducer<DeliveryTracker> =
        config.kafka.finish(p).create_with_context(tracker).context("creating the transactional producer")?;
    producer.init_transactions(KAFKA_CALL_TIMEOUT).context("initialising transactions")?;
    Ok(Arc::new(producer))
}

fn is_fatal(err: &KafkaError) -> bool {
    matches!(err, KafkaError::Transaction(e) if e.is_fatal())
}

impl Engine {
    fn new(
        config: StreamConfig,
        changelog: String,
        partitions: i32,
        metrics: Arc<StreamMetrics>,
        direct: Receiver<DirectRequest>,
    ) -> Result<Engine, RuntimeError> {
        let producer = create_producer(&config, &changelog)?;

        let restore_consumer = create_restore_consumer(&config)?;

        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            RuntimeError::Config(format!("cannot create state directory {}: {e}", config.state_dir.display()))
        })?;
        let committer = Committer::start(Arc::clone(&producer))?;
        let standbys = if config.standby { Some(Standbys::new(&config, &changelog)?) } else { None };
        Ok(Engine {
            config,
            changelog,
            partitions,
            producer,
            committer,
            restore_consumer,
            standbys,
            tasks: BTreeMap::new(),
            to_restore: BTreeSet::new(),
            detached: BTreeSet::new(),
            txn: None,
            last_commit: Instant::now(),
            direct,
            fatal: None,
            metrics,
            commits_here: 0,
            crash_after_commits: std::env::var(CRASH_AFTER_COMMITS_ENV).ok().and_then(|v| v.parse().ok()),
        })
    }

    fn is_settling(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.phase != Phase::Open)
    }

    /// Stores of partitions this instance no longer owns that still hold decisions taken over
    /// HTTP, never published (it lost the partition while Kafka was away, or died before it could
    /// publish and the partition went elsewhere): the commands go back to `orders`, for the owner
    /// to decide (a command it has already applied changes nothing), and the local copy is
    /// dropped, to be restored afresh if the partition comes back.
    fn hand_over_orphans(&mut self, assigned: &[i32]) {
        let standby: BTreeSet<i32> =
            self.standbys.as_ref().map(|s| s.partitions().into_iter().collect()).unwrap_or_default();
        for partition in 0..self.partitions {
            if assigned.contains(&partition) || standby.contains(&partition) || self.tasks.contains_key(&partition) {
                continue;
            }
            let dir = self.config.state_dir.join(format!("partition-{partition}"));
            if !dir.exists() {
                continue;
            }
            match hand_over(&self.config, &dir) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(partition, commands = n, "partition owned elsewhere now: its unpublished HTTP decisions were handed over to orders as commands, and the local copy dropped"),
                Err(err) => tracing::warn!(partition, error = %err, "could not hand over the unpublished HTTP decisions of a partition owned elsewhere; trying again at the next rebalance"),
            }
        }
    }

    /// Standby copies of every partition not processed here (nor waiting for a restore, nor
    /// kept detached).
    fn refresh_standbys(&mut self) {
        let Some(standbys) = &mut self.standbys else { return };
        let wanted: BTreeSet<i32> = (0..self.partitions)
            .filter(|p| !self.tasks.contains_key(p) && !self.to_restore.contains(p) && !self.detached.contains(p))
            .collect();
        if let Err(err) = standbys.set(&wanted) {
            tracing::error!(error = %err, "could not set up the standby copies");
            self.fatal.get_or_insert(err);
        }
        self.metrics.standby_partitions.store(standbys.partitions().len() as u64, Ordering::Relaxed);
    }

    /// Refreshes the store sizes `/metrics` shows.
    fn refresh_store_sizes(&self) {
        let sizes = self.tasks.iter().map(|(partition, task)| (*partition, task.store().size())).collect();
        *self.metrics.stores.lock().unwrap_or_else(|e| e.into_inner()) = sizes;
    }

    /// Applies what the changelog has for the standby copies, without waiting.
    fn poll_standbys(&mut self) -> Result<(), RuntimeError> {
        if let Some(standbys) = &mut self.standbys {
            let applied = standbys.poll()?;
            self.metrics.standby_records.fetch_add(applied as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn update_gauges(&self) {
        self.metrics.active_tasks.store(self.tasks.len() as u64, Ordering::Relaxed);
        self.metrics.partitions_restoring.store(self.to_restore.len() as u64, Ordering::Relaxed);
        let pending: usize = self.tasks.values().map(Task::outbox_len).sum();
        self.metrics.outbox_pending.store(pending as u64, Ordering::Relaxed);
    }

    /// Restores the tasks of newly assigned partitions, before any of their records is processed.
    /// Each partition resumes as soon as its own restore completes; one that fails (a leader
    /// moving, a broker restarting: not a reason to stop) waits, paused and without a task, and
    /// is tried again at the next turn.
    fn restore_assigned(&mut self, consumer: &BaseConsumer<StreamContext>) -> Result<(), RuntimeError> {
        if self.to_restore.is_empty() {
            return Ok(());
        }
        let partitions: Vec<i32> = self.to_restore.iter().copied().collect();
        let failure = match self.committed_inputs(consumer, &partitions) {
            Ok(committed) => {
                let mut failure = None;
                for partition in partitions {
                    match self.restore_one(consumer, partition, &committed) {
                        Ok(()) => {
                            self.to_restore.remove(&partition);
                            self.resume(consumer, &[partition]);
                        }
                        Err(RuntimeError::Kafka { context, source }) => {
                            failure = Some((context, source));
                            break;
                        }
                        Err(other) => return Err(other),
                    }
                }
                failure
            }
            Err(RuntimeError::Kafka { context, source }) => Some((context, source)),
            Err(other) => return Err(other),
        };
        self.update_gauges();
        if let Some((context, source)) = failure {
            let waiting: Vec<i32> = self.to_restore.iter().copied().collect();
            tracing::warn!(%context, error = %source, partitions = ?waiting, "restore failed; retrying shortly");
            // A fresh client for the next attempt: an idle consumer refreshes the metadata of a
            // topic it is not assigned only every few minutes, and after a broker kill its cache
            // can keep saying "unknown partition" that long (the three-broker test found it).
            match create_restore_consumer(&self.config) {
                Ok(fresh) => self.restore_consumer = fresh,
                Err(err) => tracing::warn!(error = %err, "could not recreate the restore consumer"),
            }
            self.pause(consumer, &waiting);
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    fn partition_list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.config.topics.orders_topic, *p);
        }
        tpl
    }

    fn pause(&self, consumer: &BaseConsumer<StreamContext>, partitions: &[i32]) {
        if let Err(err) = consumer.pause(&self.partition_list(partitions)) {
            tracing::warn!(error = %err, "could not pause partitions");
        }
    }

    fn resume(&self, consumer: &BaseConsumer<StreamContext>, partitions: &[i32]) {
        if let Err(err) = consumer.resume(&self.partition_list(partitions)) {
            tracing::debug!(error = %err, "could not resume partitions");
        }
    }

    /// The committed offsets of `partitions` of `orders`, asked for with read_committed: the
    /// broker answers only once no transaction that carries offsets for these partitions is
    /// pending (KIP-447), so a zombie cannot commit changelog records after a restore has read to
    /// the end.
    fn committed_inputs(
        &self,
        consumer: &BaseConsumer<StreamContext>,
        partitions: &[i32],
    ) -> Result<TopicPartitionList, RuntimeError> {
        consumer
            .committed_offsets(self.partition_list(partitions), KAFKA_CALL_TIMEOUT)
            .context("reading committed offsets")
    }

    /// Restores one partition's task and makes it active. On failure the task is closed (a
    /// detached one too: its store keeps what it holds, outbox included, for the next attempt).
    fn restore_one(
        &mut self,
        consumer: &BaseConsumer<StreamContext>,
        partition: i32,
        committed: &TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        // A task kept through a lost assignment is caught up, not reopened.
        let mut task = match self.tasks.remove(&partition) {
            Some(task) => task,
            None => {
                let dir = self.config.state_dir.join(format!("partition-{partition}"));
                Task::open(partition, &dir, &self.config.store)?
            }
        };
        let stats = restore(&self.restore_consumer, &self.changelog, &mut task)?;
        tracing::info!(
            partition,
            from = stats.from.unwrap_or(-1),
            to = stats.to,
            records = stats.records,
            elapsed_ms = stats.elapsed.as_millis() as u64,
            pending_timers = task.pending_timers(),
            outbox = task.outbox_len(),
            "restore complete"
        );
        // Where processing resumes, and what every transaction of this task commits until it
        // reads a record: a transaction must carry an offset for each task, or nothing fences a
        // zombie's transaction made of timers or outbox entries alone. With no committed offset
        // (a new group, or one whose offsets expired on a quiet partition), that is where the
        // consumer starts: the partition's first offset (`auto.offset.reset=earliest`).
        let orders = &self.config.topics.orders_topic;
        task.next_input_offset = match committed.find_partition(orders, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => {
                let (low, _) = consumer
                    .fetch_watermarks(orders, partition, KAFKA_CALL_TIMEOUT)
                    .context(format!("reading the first offset of partition {partition}"))?;
                Some(low)
            }
        };
        self.metrics.restored_records.fetch_add(stats.records, Ordering::Relaxed);
        self.tasks.insert(partition, task);
        Ok(())
    }

    /// Opens a transaction if none is, and puts the outbox entries of every task first in it, so
    /// that what was decided over HTTP is published before anything decided after it.
    fn begin(&mut self) -> Result<(), RuntimeError> {
        if self.txn.is_some() {
            return Ok(());
        }
        self.producer.begin_transaction().context("beginning a transaction")?;
        self.txn = Some(Txn { phase: Phase::Open, first_offsets: BTreeMap::new() });
        let mut drained = Vec::new();
        let now = now_ms();
        // Not a detached task's: its transaction would carry no offsets for its partition, so
        // nothing would fence it if another member owns the partition now.
        for (partition, task) in
            self.tasks.iter_mut().filter(|(p, _)| !self.detached.contains(p) && !self.to_restore.contains(p))
        {
            for output in task.drain_outbox(&self.config.rules, now)? {
                drained.push((*partition, output));
            }
        }
        for (partition, output) in &drained {
            self.emit(*partition, output, None)?;
        }
        Ok(())
    }

    /// Processes one record of `orders` inside the open transaction.
    fn process(
        &mut self,
        consumer: &BaseConsumer<StreamContext>,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), RuntimeError> {
        let partition = message.partition();
        let offset = message.offset();
        if self.to_restore.contains(&partition) {
            // Fetched before the partition was paused for its restore: read it again afterwards.
            consumer
                .seek(&self.config.topics.orders_topic, partition, Offset::Offset(offset), KAFKA_CALL_TIMEOUT)
                .context(format!("rewinding partition {partition} to offset {offset}"))?;
            return Ok(());
        }
        if !self.tasks.contains_key(&partition) || self.detached.contains(&partition) {
            // A record fetched just before its partition was revoked, or lost: a detached task
            // takes no record (its transaction would not be fenced; the next owner reads it).
            tracing::debug!(partition, offset, "record for a partition this thread does not own; skipped");
            return Ok(());
        }
        self.begin()?;
        if let Some(txn) = &mut self.txn {
            txn.first_offsets.entry(partition).or_insert(offset);
        }
        bump(&self.metrics.records);
        // The command's span, from its record (if it came with one).
        let trace = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == TRACEPARENT).and_then(|h| h.value))
            .and_then(TraceParent::from_bytes);
        let trace_id = trace.as_ref().map(TraceParent::trace_id).unwrap_or_default();
        match decode_command(message.key(), message.payload()) {
            Ok(envelope) => {
                let rules = &self.config.rules;
                let Some(task) = self.tasks.get_mut(&partition) else { return Ok(()) };
                let processed = task.process(&envelope, rules, now_ms())?;
                for output in &processed.outbox {
                    self.emit(partition, output, None)?;
                }
                match processed.decided {
                    Some(output) => {
                        tracing::debug!(partition, offset, order_id = %envelope.order_id, command_id = %envelope.command_id, %trace_id, version = output.update.version, "command decided");
                        self.emit(partition, &output, trace.as_ref())?
                    }
                    None => {
                        tracing::debug!(partition, offset, order_id = %envelope.order_id, command_id = %envelope.command_id, %trace_id, "command already applied; nothing to do");
                        bump(&self.metrics.unchanged)
                    }
                }
            }
            Err(invalid) => {
                tracing::warn!(partition, offset, error = %invalid, %trace_id, "invalid command sent to the dead-letter topic");
                self.dead_letter(message, &invalid)?;
            }
        }
        if let Some(task) = self.tasks.get_mut(&partition) {
            task.next_input_offset = Some(offset + 1);
        }
        Ok(())
    }

    /// Produces an update and its changelog record. The update carries a span of its own, child
    /// of `parent` (the command's), or a new trace (timers, the outbox, commands without one).
    fn emit(&mut self, partition: i32, output: &Output, parent: Option<&TraceParent>) -> Result<(), RuntimeError> {
        let started = SystemTime::now();
        let update = serde_json::to_vec(&output.update).unwrap_or_default();
        let key = output.update.order_id.as_str();
        let span = parent.map_or_else(TraceParent::root, TraceParent::child);
        crate::otel::span(
            "decide",
            opentelemetry::trace::SpanKind::Consumer,
            &span,
            parent,
            started,
            vec![
                opentelemetry::KeyValue::new("order_id", output.update.order_id.clone()),
                opentelemetry::KeyValue::new("version", output.update.version as i64),
                opentelemetry::KeyValue::new("trigger", format!("{:?}", output.update.trigger)),
            ],
        );
        let traceparent = span.to_string();
        let headers =
            OwnedHeaders::new_with_capacity(1).insert(Header { key: TRACEPARENT, value: Some(traceparent.as_bytes()) });
        send(
            &self.producer,
            BaseRecord::to(&self.config.topics.updates_topic).key(key).payload(&update).headers(headers),
        )?;
        send(&self.producer, BaseRecord::to(&self.changelog).partition(partition).key(key).payload(&output.state))?;
        bump(&self.metrics.updates);
        Ok(())
    }

    fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        invalid: &state::InvalidCommand,
    ) -> Result<(), RuntimeError> {
        let source = Source { topic: message.topic(), partition: message.partition(), offset: message.offset() };
        let value = message.payload().unwrap_or_default();
        let key = message.key().unwrap_or_default();
        let topic = &self.config.topics.dlq_topic;
        let record = BaseRecord::to(topic).key(key).payload(value).headers(dead_letter_headers(invalid, &source, None));
        match send(&self.producer, record) {
            Err(RuntimeError::Kafka {
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                ..
            }) => {
                let cut = &value[..value.len().min(DLQ_TRUNCATE)];
                let headers = dead_letter_headers(invalid, &source, Some(value.len()));
                send(&self.producer, BaseRecord::to(topic).key(key).payload(cut).headers(headers))?;
            }
            other => other?,
        }
        bump(&self.metrics.dead_letters);
        Ok(())
    }

    /// Answers the requests that came over HTTP since the last turn.
    fn serve_direct(&mut self) {
        while let Ok(request) = self.direct.try_recv() {
            match request {
                DirectRequest::Command { envelope, reply } => {
                    let _ = reply.send(self.direct_command(&envelope));
                }
                DirectRequest::Query { order_id, reply } => {
                    let partition = partition_for(order_id.as_bytes(), self.partitions);
                    let answer = match self.tasks.get(&partition) {
                        None => Err(DirectRefusal::NotOwner { partition }),
                        Some(task) => task
                            .query(&order_id)
                            .map(|state| QueryReply { partition, state })
                            .map_err(|e| DirectRefusal::Failed(e.to_string())),
                    };
                    let _ = reply.send(answer);
                }
            }
        }
        self.update_gauges();
    }

    fn direct_command(&mut self, envelope: &state::CommandEnvelope) -> Result<DirectReply, DirectRefusal> {
        validate_envelope(envelope).map_err(|e| DirectRefusal::Failed(e.to_string()))?;
        let partition = partition_for(envelope.order_id.as_bytes(), self.partitions);
        if self.to_restore.contains(&partition) {
            return Err(DirectRefusal::Busy);
        }
        let task = self.tasks.get_mut(&partition).ok_or(DirectRefusal::NotOwner { partition })?;
        match task.process_direct(envelope, &self.config.rules, now_ms()) {
            Ok(Direct::Applied(update)) => {
                bump(&self.metrics.direct_commands);
                tracing::info!(partition, order_id = %envelope.order_id, command_id = %envelope.command_id, "command applied over HTTP; queued in the outbox");
                Ok(DirectReply { partition, updates: vec![update] })
            }
            Ok(Direct::Nothing) => Ok(DirectReply { partition, updates: Vec::new() }),
            Ok(Direct::Busy) => Err(DirectRefusal::Busy),
            Err(err) => Err(DirectRefusal::Failed(err.to_string())),
        }
    }

    /// Every commit interval: fires due timers, publishes the outbox, commits. While a commit or
    /// abort is under way, takes it one step further instead.
    fn maybe_commit(&mut self, consumer: &BaseConsumer<StreamContext>) -> Result<(), RuntimeError> {
        if self.is_settling() {
            self.step(consumer, COMMIT_STEP)?;
            return Ok(());
        }
        if self.last_commit.elapsed() < self.config.commit_interval {
            return Ok(());
        }
        self.punctuate()?;
        if self
            .tasks
            .iter()
            .any(|(p, t)| t.outbox_len() > 0 && !self.detached.contains(p) && !self.to_restore.contains(p))
        {
            self.begin()?;
        }
        match &mut self.txn {
            Some(txn) => {
                txn.phase = Phase::Committing;
                self.step(consumer, COMMIT_STEP)?;
            }
            None => self.last_commit = Instant::now(),
        }
        Ok(())
    }

    /// Fires the due timers of the tasks this thread owns. A detached task fires none: another
    /// member may own its partition already, and its transaction would carry no offsets (no group
    /// generation) for it, so nothing would fence a zombie's timer updates. The chaos runner found
    /// this: the same timer fired by the new owner and by the detached task, both committed.
    fn punctuate(&mut self) -> Result<(), RuntimeError> {
        let now = now_ms();
        let mut fired = Vec::new();
        for (partition, task) in
            self.tasks.iter_mut().filter(|(p, _)| !self.detached.contains(p) && !self.to_restore.contains(p))
        {
            for output in task.punctuate(&self.config.rules, now)? {
                fired.push((*partition, output));
            }
        }
        if fired.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for (partition, output) in &fired {
            self.emit(*partition, output, None)?;
        }
        Ok(())
    }

    /// Commits (or aborts) the open transaction, whatever its phase, waiting up to `timeout`.
    fn settle(&mut self, consumer: &BaseConsumer<StreamContext>, timeout: Duration) -> Result<Settled, RuntimeError> {
        if let Some(txn) = &mut self.txn {
            if txn.phase == Phase::Open {
                txn.phase = Phase::Committing;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.step(consumer, COMMIT_STEP)? == Settled::Yes {
                return Ok(Settled::Yes);
            }
            if Instant::now() > deadline {
                return Ok(Settled::NotYet);
            }
        }
    }

    /// Takes the settling transaction one step further, waiting at most `wait` for the committer
    /// thread.
    fn step(&mut self, consumer: &BaseConsumer<StreamContext>, wait: Duration) -> Result<Settled, RuntimeError> {
        let Some(txn) = &self.txn else { return Ok(Settled::Yes) };
        let phase = txn.phase;
        if phase == Phase::Open {
            return Ok(Settled::NotYet);
        }
        if self.committer.in_flight.is_none() {
            let op = match phase {
                Phase::Committing => TxnOp::Commit { offsets: self.offsets_to_commit(consumer)? },
                _ => TxnOp::Abort,
            };
            self.committer.submit(op)?;
        }
        let Some((kind, result, took)) = self.committer.result(wait)? else {
            return match self.committer.wedged() {
                Some((call, stuck)) => self.unwedge(consumer, call, stuck),
                None => Ok(Settled::NotYet),
            };
        };
        match (kind, result) {
            // Committed (even if an abort was asked for meanwhile: it was too late for that).
            (OpKind::Commit, Ok(())) => {
                self.metrics.commit_seconds.observe(took.as_secs_f64());
                self.after_commit()?;
                Ok(Settled::Yes)
            }
            (OpKind::Commit, Err(err)) if requires_abort(&err) => {
                tracing::warn!(error = %err, "transaction failed; aborting and reprocessing from the last commit");
                if let Some(txn) = &mut self.txn {
                    txn.phase = Phase::Aborting;
                }
                Ok(Settled::NotYet)
            }
            (_, Err(err)) if is_fatal(&err) => {
                self.replace_producer(consumer, &err)?;
                bump(&self.metrics.producers_replaced);
                Ok(Settled::Yes)
            }
            (OpKind::Commit, Err(err)) => {
                Err(RuntimeError::Kafka { context: "committing the transaction".into(), source: err })
            }
            (OpKind::Abort, Ok(())) => {
                self.metrics.abort_seconds.observe(took.as_secs_f64());
                self.after_abort(consumer)?;
                Ok(Settled::Yes)
            }
            (OpKind::Abort, Err(err)) => {
                Err(RuntimeError::Kafka { context: "aborting the transaction".into(), source: err })
            }
        }
    }

    /// The consumed offsets to send with the commit, with the group metadata. Offsets for every
    /// task, not only those that read records: a transaction made of timers or outbox entries
    /// alone still carries the group generation, so a zombie's cannot commit.
    fn offsets_to_commit(
        &self,
        consumer: &BaseConsumer<StreamContext>,
    ) -> Result<Option<(TopicPartitionList, ConsumerGroupMetadata)>, RuntimeError> {
        let mut offsets = TopicPartitionList::new();
        for (partition, task) in &self.tasks {
            if let (Some(next), false) =
                (task.next_input_offset, self.detached.contains(partition) || self.to_restore.contains(partition))
            {
                offsets.add_partition_offset(&self.config.topics.orders_topic, *partition, Offset::Offset(next))?;
            }
        }
        if offsets.count() == 0 {
            return Ok(None);
        }
        let group = consumer
            .group_metadata()
            .ok_or_else(|| RuntimeError::Config("the consumer has no group metadata".into()))?;
        Ok(Some((offsets, group)))
    }

    /// After Kafka committed: the write-back caches go to RocksDB with their changelog positions.
    fn after_commit(&mut self) -> Result<(), RuntimeError> {
        let acknowledged = self.producer.context().take();
        if self.crash_after_commits == Some(self.commits_here + 1) {
            tracing::error!(
                "fault injection ({CRASH_AFTER_COMMITS_ENV}): crashing between the Kafka commit and the state store write"
            );
            std::process::abort();
        }
        self.commits_here += 1;
        let published = super::task::flush_committed(&mut self.tasks, &acknowledged)?;
        self.metrics.outbox_published.fetch_add(published as u64, Ordering::Relaxed);
        self.txn = None;
        // The next commit interval counts from here: the thread gets a full interval of records.
        self.last_commit = Instant::now();
        bump(&self.metrics.commits);
        self.update_gauges();
        Ok(())
    }

    /// The producer hit a fatal error: typically, after a broker outage longer than the
    /// transaction timeout, the coordinator aborted the transaction and bumped the producer epoch,
    /// so the producer finds itself fenced. The transaction is gone either way: drop its writes,
    /// rewind, and start a new producer (whose initialisation fences any other holder of the
    /// transactional id).
    fn replace_producer(
        &mut self,
        consumer: &BaseConsumer<StreamContext>,
        err: &dyn std::fmt::Display,
    ) -> Result<(), RuntimeError> {
        tracing::error!(error = %err, "the transactional producer failed fatally; its transaction is lost; starting a new producer");
        self.after_abort(consumer)?;
        let producer = create_producer(&self.config, &self.changelog)?;
        self.committer = Committer::start(Arc::clone(&producer))?;
        self.producer = producer;
        Ok(())
    }

    /// The committer thread is stuck in a call that will not return (see [`WEDGED_AFTER`]).
    /// Stuck before the commit was asked for (sending the offsets) or while aborting, the
    /// transaction cannot have committed: the stuck producer is left behind, fenced by a new one
    /// (whose initialisation makes the coordinator abort what the old one left open), and the
    /// transaction is processed again. Stuck in the commit itself, the outcome is unknown: the
    /// thread stops, and the restart restores from what Kafka holds.
    fn unwedge(
        &mut self,
        consumer: &BaseConsumer<StreamContext>,
        call: Call,
        stuck: Duration,
    ) -> Result<Settled, RuntimeError> {
        if call == Call::Commit {
            return Err(RuntimeError::Wedged { call: call.name(), stuck });
        }
        let why = format!("{} has not returned for {} s, past its own timeout", call.name(), stuck.as_secs());
        self.replace_producer(consumer, &why)?;
        bump(&self.metrics.producers_replaced);
        Ok(Settled::Yes)
    }

    /// After Kafka aborted: the caches are dropped and the consumer goes back to the first record
    /// the transaction read.
    fn after_abort(&mut self, consumer: &BaseConsumer<StreamContext>) -> Result<(), RuntimeError> {
        self.producer.context().take();
        bump(&self.metrics.aborts);
        let Some(txn) = self.txn.take() else { return Ok(()) };
        self.last_commit = Instant::now();
        for task in self.tasks.values_mut() {
            task.discard()?;
        }
        for (partition, first) in txn.first_offsets {
            if let (Some(task), false) = (self.tasks.get_mut(&partition), self.detached.contains(&partition)) {
                task.next_input_offset = Some(first);
                consumer
                    .seek(&self.config.topics.orders_topic, partition, Offset::Offset(first), KAFKA_CALL_TIMEOUT)
                    .context(format!("rewinding partition {partition} to offset {first}"))?;
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// Before partitions go to another member: settle what is open, then close their tasks.
    /// When the group says the assignment is already lost (its coordinator unreachable for the
    /// session timeout), the transaction cannot commit any more: it is aborted, and the tasks are
    /// kept, detached, to serve the HTTP path until the next assignment.
    fn on_revoke(&mut self, consumer: &BaseConsumer<StreamContext>, partitions: &[i32]) {
        for partition in partitions {
            self.to_restore.remove(partition);
        }
        if consumer.assignment_lost() {
            tracing::warn!(
                ?partitions,
                "assignment lost (group coordinator unreachable); tasks kept for the HTTP path"
            );
            if let Some(txn) = &mut self.txn {
                txn.phase = Phase::Aborting;
            }
            self.detached.extend(partitions.iter().copied());
            return;
        }
        tracing::info!(?partitions, "partitions revoked: settling the open transaction");
        // Decisions taken over HTTP go out with it, before another member owns their partitions.
        if partitions.iter().any(|p| self.tasks.get(p).is_some_and(|t| t.outbox_len() > 0)) {
            if let Err(err) = self.begin() {
                tracing::error!(error = %err, "could not publish the outbox before the partitions were revoked");
            }
        }
        match self.settle(consumer, SETTLE_TIMEOUT) {
            Ok(Settled::Yes) => {}
            Ok(Settled::NotYet) => {
                self.fatal.get_or_insert(RuntimeError::Config(
                    "the open transaction did not settle before the partitions were revoked".into(),
                ));
            }
            Err(err) => {
                tracing::error!(error = %err, "could not settle the transaction before the partitions were revoked");
                self.fatal.get_or_insert(err);
            }
        }
        for partition in partitions {
            self.tasks.remove(partition);
        }
        self.refresh_standbys();
        self.update_gauges();
    }

    /// New partitions: restore them before processing; drop detached tasks that did not come back.
    fn on_assign(&mut self, partitions: &[i32]) {
        tracing::info!(?partitions, "partitions assigned");
        bump(&self.metrics.assignments);
        let gone: Vec<i32> = self.detached.iter().copied().filter(|p| !partitions.contains(p)).collect();
        for partition in gone {
            tracing::warn!(
                partition,
                outbox = self.tasks.get(&partition).map_or(0, Task::outbox_len),
                "detached task not reassigned; closed"
            );
            self.tasks.remove(&partition);
        }
        self.detached.clear();
        self.hand_over_orphans(partitions);
        self.to_restore.extend(partitions.iter().copied());
        // Before the restores open their stores: a standby copy of an assigned partition closes.
        self.refresh_standbys();
        self.update_gauges();
    }
}

/// Sends the commands of the outbox in the store at `dir` back to `orders`, then deletes the
/// store. Returns how many commands were sent.
fn hand_over(config: &StreamConfig, dir: &std::path::Path) -> Result<usize, RuntimeError> {
    let commands: Vec<state::CommandEnvelope> = {
        let store = state::OrderStore::open(dir, &config.store)?;
        let outbox = store.outbox()?;
        if outbox.is_empty() {
            return Ok(0);
        }
        outbox.into_iter().filter_map(|(_, entry)| entry.command).collect()
    };
    let failed = |e: &dyn std::fmt::Display| RuntimeError::Config(format!("handing over to orders: {e}"));
    let producer =
        crate::wagon_lits::CommandProducer::new(&config.kafka, &config.topics.orders_topic, KAFKA_CALL_TIMEOUT)
            .map_err(|e| failed(&e))?;
    let mut deliveries = Vec::with_capacity(commands.len());
    for command in &commands {
        deliveries.push(producer.send(command).map_err(|e| failed(&e))?);
    }
    for delivery in futures::executor::block_on(futures::future::join_all(deliveries)) {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(failed(&err)),
            Err(_) => return Err(failed(&"delivery cancelled")),
        }
    }
    std::fs::remove_dir_all(dir).map_err(|e| RuntimeError::Config(format!("removing {}: {e}", dir.display())))?;
    Ok(commands.len())
}

/// Sends a record, waiting while the producer's queue is full.
fn send(
    producer: &BaseProducer<DeliveryTracker>,
    record: BaseRecord<'_, impl rdkafka::message::ToBytes + ?Sized, impl rdkafka::message::ToBytes + ?Sized>,
) -> Result<(), RuntimeError> {
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(5));
            }
            Err((err, returned)) => {
                return Err(RuntimeError::Kafka { context: format!("producing to {}", returned.topic), source: err });
            }
        }
    }
}

/// A transactional call for the committer thread.
enum TxnOp {
    Commit { offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)> },
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Commit,
    Abort,
}

/// A transactional call that finished, how, and how long it took.
type Finished = (OpKind, Result<(), KafkaError>, Duration);

/// The transactional call the committer thread is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    SendOffsets,
    Commit,
    Abort,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::SendOffsets => "send_offsets_to_transaction",
            Call::Commit => "commit_transaction",
            Call::Abort => "abort_transaction",
        }
    }
}

/// A transactional call that has not returned this long after its own timeout is stuck in
/// librdkafka, not waiting for Kafka: `send_offsets_to_transaction` never gives up when the group
/// coordinator it cached went away (confluentinc/librdkafka#5456, #5511; the chaos runner hit it
/// after a broker kill).
const WEDGED_AFTER: Duration = Duration::from_secs(KAFKA_CALL_TIMEOUT.as_secs() + 30);
/// The watchdog's patience when [`WEDGE_SEND_OFFSETS_ENV`] injects the fault.
const WEDGED_AFTER_INJECTED: Duration = Duration::from_secs(3);

/// `send_offsets_to_transaction` calls made by this process (for [`WEDGE_SEND_OFFSETS_ENV`]).
static SEND_OFFSETS_CALLS: AtomicU64 = AtomicU64::new(0);

fn wedge_injected_at() -> Option<u64> {
    std::env::var(WEDGE_SEND_OFFSETS_ENV).ok().and_then(|v| v.parse().ok())
}

/// Runs the blocking transactional calls (send offsets, commit, abort) on a thread of their own.
/// librdkafka may block in them far longer than the timeout it is given when the broker stops
/// answering; the stream thread meanwhile keeps answering the HTTP path, and watches for a call
/// that never returns.
struct Committer {
    ops: std::sync::mpsc::Sender<TxnOp>,
    results: Receiver<Result<(), KafkaError>>,
    in_flight: Option<(OpKind, Instant)>,
    /// The call under way on the committer thread, and since when.
    current: Arc<Mutex<Option<(Call, Instant)>>>,
    wedged_after: Duration,
}

impl Committer {
    fn start(producer: Arc<BaseProducer<DeliveryTracker>>) -> Result<Committer, RuntimeError> {
        let (ops, op_rx) = std::sync::mpsc::channel::<TxnOp>();
        let (result_tx, results) = std::sync::mpsc::channel();
        let current = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&current);
        let inject = wedge_injected_at();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                for op in op_rx {
                    let p = &producer;
                    let slot = &slot;
                    let result = match op {
                        TxnOp::Commit { offsets } => offsets
                            .as_ref()
                            .map_or(Ok(()), |(tpl, group)| {
                                until_settled(p, slot, Call::SendOffsets, || {
                                    let n = SEND_OFFSETS_CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                                    if inject == Some(n) {
                                        tracing::error!("fault injection ({WEDGE_SEND_OFFSETS_ENV}): this send_offsets_to_transaction never returns");
                                        loop {
                                            std::thread::park();
                                        }
                                    }
                                    p.send_offsets_to_transaction(tpl, group, KAFKA_CALL_TIMEOUT)
                                })
                            })
                            .and_then(|()| {
                                until_settled(p, slot, Call::Commit, || p.commit_transaction(KAFKA_CALL_TIMEOUT))
                            }),
                        // Short attempts: an abort waits for the delivery reports of the purged
                        // records, which only polling the producer (between attempts) serves.
                        TxnOp::Abort => until_settled(p, slot, Call::Abort, || {
                            p.abort_transaction(Duration::from_millis(500))
                        }),
                    };
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    // The stream thread gave up on this committer (its call was wedged): stop,
                    // and let the producer go.
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| RuntimeError::Config(format!("cannot start the committer thread: {e}")))?;
        let wedged_after = if inject.is_some() { WEDGED_AFTER_INJECTED } else { WEDGED_AFTER };
        Ok(Committer { ops, results, in_flight: None, current, wedged_after })
    }

    fn submit(&mut self, op: TxnOp) -> Result<(), RuntimeError> {
        let kind = match op {
            TxnOp::Commit { .. } => OpKind::Commit,
            TxnOp::Abort => OpKind::Abort,
        };
        self.ops.send(op).map_err(|_| RuntimeError::Config("the committer thread stopped".into()))?;
        self.in_flight = Some((kind, Instant::now()));
        Ok(())
    }

    /// The result of the call in flight, if it came within `wait`.
    fn result(&mut self, wait: Duration) -> Result<Option<Finished>, RuntimeError> {
        let Some((kind, submitted)) = self.in_flight else { return Ok(None) };
        match self.results.recv_timeout(wait) {
            Ok(result) => {
                self.in_flight = None;
                Ok(Some((kind, result, submitted.elapsed())))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(RuntimeError::Config("the committer thread stopped".into()))
            }
        }
    }

    /// The call in flight, if it has been stuck for longer than [`WEDGED_AFTER`].
    fn wedged(&self) -> Option<(Call, Duration)> {
        self.in_flight?;
        let current = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.map(|(call, since)| (call, since.elapsed())).filter(|(_, stuck)| *stuck > self.wedged_after)
    }
}

/// Repeats a transactional call while it fails only for lack of time (Kafka away): librdkafka
/// resumes the same call where it was. Between attempts, serves the producer's events. Each
/// attempt is recorded in `slot` for the watchdog.
fn until_settled(
    producer: &BaseProducer<DeliveryTracker>,
    slot: &Mutex<Option<(Call, Instant)>>,
    what: Call,
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut logged = false;
    loop {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((what, Instant::now()));
        match call() {
            Err(err) if is_retriable(&err) => {
                if !logged {
                    tracing::warn!(call = what.name(), error = %err, "transaction call timed out; retrying until Kafka answers");
                    logged = true;
                }
                producer.poll(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
