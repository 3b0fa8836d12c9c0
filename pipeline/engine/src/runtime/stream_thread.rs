//! The stream thread: the exactly-once loop of dev-materiels.
//!
//! ```text
//! loop {
//!     poll a batch of records from `orders`    (rebalance callbacks run inside these polls)
//!     restore newly assigned tasks             (before any of their records is processed)
//!     begin a transaction if none is open      (it starts with the outbox: decisions taken
//!                                               over HTTP while Kafka was away, in order)
//!     decode -> task -> state machine          (state changes go to the task's write-back cache)
//!     produce the update to `order-updates`, the new state to the changelog, or the record to
//!     the dead-letter topic                    (all inside the transaction)
//!     answer the commands that came over HTTP  (decided on committed state, written to the
//!                                               store and the outbox at once)
//!     every commit interval, once the previous transaction has committed:
//!         fire due timers (punctuation)        (same transaction)
//!         close the transaction: seal each task's cache, then on the committer thread flush,
//!         send the consumed offsets with the group metadata, commit
//!                                              (meanwhile the loop answers HTTP and, once the
//!                                               flush is done, takes records into the next
//!                                               transaction, on the other producer)
//!         then, and only then, write each task's sealed cache to RocksDB with its changelog
//!         position
//! }
//! ```
//!
//! This is Kafka Streams' `exactly_once_v2`: zombies fenced by the consumer group generation
//! carried with the offsets. What differs: the state store is written after the commit, never
//! before, so it never holds state that Kafka might still abort, and a crash costs a replay of
//! the changelog from the store's position only; and the thread can have two transactional
//! producers that take turns, so that it keeps working while a commit is under way (overlapped commits,
//! [`super::transaction`], `--overlap-commits`, on by default; with `false` the thread keeps one).
//!
//! The parts: [`super::task_manager`] (each partition's task and its state),
//! [`super::commit`] (the commit interval, settling, writing the caches after the commit),
//! [`super::transaction`] (the open transaction and the committer thread),
//! [`super::clients`] (the Kafka clients), [`super::collector`] (the records a transaction
//! produces), [`super::restore`] and [`super::standby`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use state::validate_envelope;
use wire::codec::CommandError;
use wire::partitioner::partition_for;
use wire::{TraceParent, TRACEPARENT};

use super::collector::RecordCollector;
use super::direct::{DirectRefusal, DirectReply, DirectRequest, QueryReply};
use super::ownership::Ownership;
use super::producer::KafkaProducer;
use super::standby::Standbys;
use super::task::Direct;
use super::task_manager::TaskManager;
use super::transaction::Transactions;
use super::{clients, prepare_topics, KafkaContext, RuntimeError, StreamConfig};
use crate::kafka::ReadToEndContext;
use crate::kafka::KAFKA_CALL_TIMEOUT;
use crate::metrics::{StreamMetrics, StreamStats};

/// How long one `poll` waits for a record (and so how long an HTTP request may wait for its
/// turn on an idle thread).
const POLL: Duration = Duration::from_millis(5);
/// How long the stream thread waits for the committer thread at each turn of the loop before it
/// goes back to answering HTTP requests.
pub(super) const COMMIT_STEP: Duration = Duration::from_millis(5);
/// How long a revocation or a shutdown waits for the open transaction to settle.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Everything the loop and the rebalance callbacks share.
pub(super) struct Engine {
    pub(super) config: StreamConfig,
    /// This stream thread's index in the process ([`super::threads`]).
    pub(super) thread: usize,
    /// Where the process's HTTP requests are routed: this thread says which tasks it has.
    pub(super) ownership: Arc<Ownership>,
    /// The [`Ownership::version`] the standby copies were last set for.
    pub(super) ownership_seen: u64,
    /// Partitions of `orders` (and of the changelog).
    pub(super) partitions: i32,
    /// The transactional producers, taking turns ([`Transactions::next_slot`]).
    pub(super) producers: Vec<Arc<KafkaProducer>>,
    pub(super) records: RecordCollector,
    pub(super) txns: Transactions<KafkaProducer>,
    pub(super) restore_consumer: BaseConsumer<ReadToEndContext>,
    /// Asks for the changelog's high watermarks ([`clients::watermarks_client`]).
    pub(super) watermarks: BaseConsumer<ReadToEndContext>,
    /// Not before this instant is a restore tried again that found a transaction open on its
    /// changelog partition.
    pub(super) restore_again_at: Option<Instant>,
    /// When to hand over the stores left behind, with several stream threads
    /// ([`Engine::hand_over_when_due`]).
    pub(super) hand_over_at: Option<Instant>,
    /// Warm copies of the partitions not owned here (`--standby`).
    pub(super) standbys: Option<Standbys>,
    pub(super) tasks: TaskManager,
    pub(super) last_commit: Instant,
    /// Requests that came over HTTP.
    pub(super) direct: Receiver<DirectRequest>,
    /// An error raised inside a rebalance callback, reported by the loop.
    pub(super) fatal: Option<RuntimeError>,
    pub(super) metrics: Arc<StreamMetrics>,
}

/// Most records taken from the consumer per turn of the loop. The rest of the turn (HTTP
/// requests, standbys, the producer's events, the commit clock) is paid once per batch rather
/// than once per record; a batch of this size takes a few milliseconds to process.
const MAX_BATCH: usize = 500;
/// The consumer's context: routes rebalance callbacks to the engine, and librdkafka's
/// statistics to the metrics.
pub(super) struct StreamContext {
    engine: Arc<Mutex<Engine>>,
    thread: usize,
    metrics: Arc<StreamMetrics>,
    orders_topic: String,
    /// Rebalances seen (revocations and assignments), for [`poll_batch`].
    rebalances: AtomicU64,
}

impl StreamContext {
    fn new(
        engine: Arc<Mutex<Engine>>,
        thread: usize,
        metrics: Arc<StreamMetrics>,
        orders_topic: &str,
    ) -> StreamContext {
        StreamContext { engine, thread, metrics, orders_topic: orders_topic.to_string(), rebalances: AtomicU64::new(0) }
    }
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
        if let Some(lag) = crate::stats::consumer_lag(statistics, &self.orders_topic) {
            self.metrics.consumer_lag.set_of(self.thread, &lag);
        }
    }
}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        if let Rebalance::Revoke(tpl) = rebalance {
            lock(&self.engine).on_revoke(consumer, &partitions_of(tpl));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        match rebalance {
            Rebalance::Assign(tpl) => lock(&self.engine).on_assign(&partitions_of(tpl)),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }
}

pub(super) type Consumer_ = BaseConsumer<StreamContext>;

/// Takes up to [`MAX_BATCH`] records (or one error) from the consumer, waiting at most [`POLL`]
/// for the first one. Rebalance callbacks run inside these polls: the group's rebalancing is eager
/// (librdkafka's default assignors), so a rebalance puts every assigned partition back at its
/// committed offset, and the records polled before it are dropped here, to be read again from
/// there (processed, they would be applied on top of what another owner may have committed
/// meanwhile).
fn poll_batch(consumer: &Consumer_) -> Vec<KafkaResult<BorrowedMessage<'_>>> {
    let mut batch = Vec::new();
    let mut wait = POLL;
    while batch.len() < MAX_BATCH {
        let rebalances = consumer.context().rebalances.load(Ordering::Acquire);
        let polled = consumer.poll(wait);
        if consumer.context().rebalances.load(Ordering::Acquire) != rebalances {
            batch.clear();
        }
        match polled {
            None => break,
            Some(Err(err)) => {
                batch.push(Err(err));
                break;
            }
            Some(Ok(message)) => batch.push(Ok(message)),
        }
        wait = Duration::ZERO;
    }
    batch
}

/// [`prepare_topics`], tried again (three times in all) when an admin call fails for want of an
/// answer: a broker of several paused or restarting fails one call, not the start.
pub(super) fn prepare_topics_patiently(config: &StreamConfig) -> Result<i32, RuntimeError> {
    let mut attempt = 1;
    loop {
        match prepare_topics(config) {
            Err(RuntimeError::Topics(crate::admin::TopicError::Kafka(err))) if attempt < 3 => {
                tracing::warn!(error = %err, attempt, "preparing the topics failed; trying again in 1 s");
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Runs stream thread `thread` of the process until `shutdown` is set, then commits what is
/// open and returns the process's counters. `direct` brings the commands and queries that came
/// over HTTP for the partitions it serves ([`Ownership`]); `partitions` is the number of
/// partitions of `orders`, the topics being ready ([`prepare_topics_patiently`]).
pub(super) fn run(
    config: StreamConfig,
    thread: usize,
    partitions: i32,
    ownership: Arc<Ownership>,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
    direct: Receiver<DirectRequest>,
) -> Result<StreamStats, RuntimeError> {
    let engine = Engine::new(config.clone(), thread, ownership, partitions, Arc::clone(&metrics), direct)?;
    let engine = Arc::new(Mutex::new(engine));
    let context = StreamContext::new(Arc::clone(&engine), thread, Arc::clone(&metrics), &config.topics.orders_topic);
    let consumer = clients::main_consumer(&config, context)?;
    consumer.subscribe(&[&config.topics.orders_topic]).context("subscribing to orders")?;
    tracing::info!(
        group = %config.application_id,
        transactional_ids = ?(0..config.producer_slots()).map(|s| config.transactional_id_of(s)).collect::<Vec<_>>(),
        commit_interval_ms = config.commit_interval.as_millis() as u64,
        "dev-materiels stream thread started"
    );

    let mut last_report = Instant::now();
    let mut last_sizes = Instant::now();
    let mut last_consumer_error: Option<Instant> = None;
    while !shutdown.load(Ordering::Relaxed) {
        // While no transaction may take records (one commit at a time, or the previous
        // transaction's records not all acknowledged yet), leave them in the consumer; the commit
        // step below waits for the committer meanwhile.
        let accepts = lock(&engine).txns.accepts_records();
        let batch = if accepts { poll_batch(&consumer) } else { Vec::new() };
        let mut engine = lock(&engine);
        if let Some(err) = engine.fatal.take() {
            return Err(err);
        }
        if !engine.txns.is_settling() {
            engine.restore_assigned(&consumer)?;
        }
        engine.hand_over_when_due();
        engine.prefetch(&batch)?;
        // Partitions rewound in this batch: their later records in it are read again too.
        let mut rewound = BTreeSet::new();
        for polled in batch {
            match polled {
                Ok(message) if rewound.contains(&message.partition()) => {}
                Ok(message) => {
                    if let Some(partition) = engine.process(&consumer, &message)? {
                        rewound.insert(partition);
                    }
                }
                // The consumer cannot go on (librdkafka says so): stop, and let a restart rebuild it.
                Err(err @ KafkaError::MessageConsumptionFatal(_)) => {
                    return Err(RuntimeError::Kafka { context: "consuming orders".into(), source: err });
                }
                // Transient consumer errors (a broker down, a partition moving): librdkafka
                // retries by itself. Say so at most once a second.
                Err(err) if last_consumer_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) => {
                    tracing::warn!(error = %err, "consumer error");
                    last_consumer_error = Some(Instant::now());
                }
                Err(_) => {}
            }
        }
        for (_, task) in engine.tasks.tasks_mut() {
            task.end_batch();
        }
        engine.serve_direct();
        engine.poll_standbys()?;
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
    if !settled {
        tracing::warn!("the open transaction did not settle before shutdown; the next start resolves it");
    }
    // Closing the consumer runs the revoke callback, which finds nothing left to commit.
    drop(consumer);
    Ok(metrics.snapshot())
}

impl Engine {
    fn new(
        config: StreamConfig,
        thread: usize,
        ownership: Arc<Ownership>,
        partitions: i32,
        metrics: Arc<StreamMetrics>,
        direct: Receiver<DirectRequest>,
    ) -> Result<Engine, RuntimeError> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|source| RuntimeError::Io { path: config.state_dir.clone(), source })?;
        let producers = clients::transactional_producers(&config)?;
        let txns = Transactions::new(producers.clone(), KAFKA_CALL_TIMEOUT, config.stuck_call_after)?;
        let records = RecordCollector::new(&config, Arc::clone(&producers[0]), Arc::clone(&metrics));
        let restore_consumer = clients::restore_consumer(&config, "restore")?;
        let watermarks = clients::watermarks_client(&config)?;
        let standbys = if config.standby { Some(Standbys::new(&config)?) } else { None };
        Ok(Engine {
            config,
            thread,
            ownership,
            ownership_seen: 0,
            partitions,
            producers,
            records,
            txns,
            restore_consumer,
            watermarks,
            restore_again_at: None,
            hand_over_at: None,
            standbys,
            tasks: TaskManager::new(),
            last_commit: Instant::now(),
            direct,
            fatal: None,
            metrics,
        })
    }

    /// Refreshes the store sizes `/metrics` shows.
    fn refresh_store_sizes(&self) {
        let sizes = self.tasks.tasks().map(|(partition, task)| (partition, task.store().size())).collect();
        self.metrics.store_sizes(self.thread, &sizes);
    }

    /// Applies what the changelog has for the standby copies, without waiting; first sets them
    /// again if another stream thread's tasks changed.
    fn poll_standbys(&mut self) -> Result<(), RuntimeError> {
        // Set again when another thread's tasks changed, or a second after a copy could not be
        // opened (its store was still held).
        let retry = self.standbys.as_ref().is_some_and(Standbys::missing_a_while);
        if self.standbys.is_some() && (retry || self.ownership.version() != self.ownership_seen) {
            self.refresh_standbys();
        }
        if let Some(standbys) = &mut self.standbys {
            let applied = standbys.poll()?;
            self.metrics.standby_records.inc_by(applied as u64);
        }
        Ok(())
    }

    /// The task gauges, and the tasks [`Ownership`] routes to: after any change of the tasks.
    pub(super) fn update_gauges(&self) {
        self.report_tasks();
        self.ownership.publish(self.thread, self.tasks.states());
    }

    /// The task gauges alone (the outbox grew, no task changed).
    fn report_tasks(&self) {
        let (restoring, running, _) = self.tasks.counts();
        self.metrics.tasks(self.thread, running, restoring, self.tasks.outbox_len());
    }

    /// Opens a transaction if none is, and puts the outbox entries of every running task first
    /// in it, so that what was decided over HTTP is published before anything decided after it.
    /// Returns whether a transaction is open: none can be while the previous one's records are
    /// not all acknowledged, or while a transaction aborts ([`Transactions::accepts_records`]).
    pub(super) fn begin(&mut self) -> Result<bool, RuntimeError> {
        if self.txns.is_open() {
            return Ok(true);
        }
        if !self.txns.accepts_records() {
            return Ok(false);
        }
        let producer = Arc::clone(&self.producers[self.txns.next_slot()]);
        producer.begin().context("beginning a transaction")?;
        self.txns.opened();
        self.records.replace_producer(producer);
        let now = now_ms();
        let rules = &self.config.rules;
        let mut drained = Vec::new();
        for (partition, task) in self.tasks.running() {
            for output in task.drain_outbox(rules, now)? {
                drained.push((partition, output));
            }
        }
        for (partition, output) in &drained {
            self.emit(*partition, output, None, None)?;
        }
        // Not open any more if the producer refused the outbox ([`Engine::produced`]).
        Ok(self.txns.is_open())
    }

    /// Produces a decision into the open transaction ([`RecordCollector::emit`]), through
    /// [`Engine::produced`].
    pub(super) fn emit(
        &mut self,
        partition: i32,
        output: &super::task::Output,
        parent: Option<&TraceParent>,
        command_ts: Option<i64>,
    ) -> Result<(), RuntimeError> {
        let sent = self.records.emit(partition, output, parent, command_ts);
        self.produced(sent)
    }

    /// What a record sent into the open transaction came to. A producer whose transaction has
    /// failed (records timed out while a broker was away, say: librdkafka then requires an
    /// abort) refuses every record after it with a state error, and a fenced one with a fatal
    /// error: the transaction is aborted (for a fatal producer the abort fails as fatal and the
    /// producer is replaced), and its input read again once it has, as for a commit that fails.
    /// Any other error stops the thread. (The chaos runner found both: a processor stopped on
    /// "Erroneous state", seed 448921, and on "Fatal error" after a fence, seed 133683.)
    fn produced(&mut self, sent: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
        match sent {
            Err(err) if super::collector::refused_by_failed_transaction(&err) => {
                if self.txns.is_open() {
                    tracing::warn!(error = %err, "the transaction has failed: the producer takes no more records; aborting it, and reading its input again");
                }
                self.txns.abort();
                Ok(())
            }
            other => other,
        }
    }

    /// Reads the committed states of the batch's orders, task by task, in one multi-get each.
    fn prefetch(&mut self, batch: &[KafkaResult<BorrowedMessage<'_>>]) -> Result<(), RuntimeError> {
        let mut keys: std::collections::BTreeMap<i32, Vec<&[u8]>> = std::collections::BTreeMap::new();
        for message in batch.iter().flatten() {
            if let Some(key) = message.key() {
                keys.entry(message.partition()).or_default().push(key);
            }
        }
        for (partition, keys) in keys {
            if let Some(task) = self.tasks.running_task(partition) {
                task.prefetch(keys)?;
            }
        }
        Ok(())
    }

    /// Processes one record of `orders` inside the open transaction. Returns the record's
    /// partition if it was rewound to this record instead (its task is restoring).
    fn process(&mut self, consumer: &Consumer_, message: &BorrowedMessage<'_>) -> Result<Option<i32>, RuntimeError> {
        let partition = message.partition();
        let offset = message.offset();
        // Fetched before the partition was paused for its restore, or with no transaction to take
        // it (an abort under way): read it again afterwards.
        if self.tasks.restoring().contains(&partition)
            || (self.tasks.running_task(partition).is_some() && !self.begin()?)
        {
            consumer
                .seek(&self.config.topics.orders_topic, partition, Offset::Offset(offset), KAFKA_CALL_TIMEOUT)
                .context(format!("rewinding partition {partition} to offset {offset}"))?;
            return Ok(Some(partition));
        }
        if self.tasks.running_task(partition).is_none() {
            // A record fetched just before its partition was revoked, or lost: a detached task
            // takes no record (its transaction would not be fenced; the next owner reads it).
            tracing::debug!(partition, offset, "record for a partition this thread does not run; skipped");
            return Ok(None);
        }
        self.txns.read(partition, offset);
        self.metrics.records.inc();
        if self.txns.is_settling() {
            self.metrics.records_during_commit.inc();
        }
        // The command's span, from its record (if it came with one).
        let trace = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == TRACEPARENT).and_then(|h| h.value))
            .and_then(TraceParent::from_bytes);
        let trace_id = wire::trace::TraceId(trace.as_ref().map(|t| t.trace_id));
        match self.config.codec.decode_command(message.key(), message.payload()) {
            Ok(envelope) => {
                self.metrics.commands_kafka.inc();
                let Some(task) = self.tasks.running_task(partition) else { return Ok(None) };
                let processed = task.process(&envelope, &self.config.rules, now_ms())?;
                for output in &processed.outbox {
                    self.emit(partition, output, None, None)?;
                }
                match processed.decided {
                    Some(output) => {
                        tracing::debug!(partition, offset, order_id = %envelope.order_id, command_id = %envelope.command_id, %trace_id, version = output.update.version, "command decided");
                        self.emit(partition, &output, trace.as_ref(), message.timestamp().to_millis())?
                    }
                    None => {
                        tracing::debug!(partition, offset, order_id = %envelope.order_id, command_id = %envelope.command_id, %trace_id, "command already applied; nothing to do");
                        self.metrics.unchanged.inc();
                    }
                }
            }
            // Nothing is taken: the transaction aborts and the record is read again after a restart.
            Err(CommandError::Registry(e)) => return Err(RuntimeError::Registry(e)),
            Err(CommandError::Invalid(invalid)) => {
                tracing::warn!(partition, offset, error = %invalid, %trace_id, "invalid command sent to the dead-letter topic");
                let sent = self.records.dead_letter(message, &invalid);
                self.produced(sent)?;
            }
        }
        if let Some(task) = self.tasks.running_task(partition) {
            task.next_input_offset = Some(offset + 1);
        }
        Ok(None)
    }

    /// Answers the requests that came over HTTP since the last turn.
    fn serve_direct(&mut self) {
        let mut served = false;
        while let Ok(request) = self.direct.try_recv() {
            served = true;
            match request {
                DirectRequest::Command { envelope, reply } => {
                    let _ = reply.send(self.direct_command(&envelope));
                }
                DirectRequest::Query { order_id, reply } => {
                    let partition = partition_for(order_id.as_bytes(), self.partitions);
                    let answer = match self.tasks.serving_task(partition) {
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
        if served {
            self.report_tasks();
        }
    }

    fn direct_command(&mut self, envelope: &state::CommandEnvelope) -> Result<DirectReply, DirectRefusal> {
        validate_envelope(envelope).map_err(|e| DirectRefusal::Failed(e.to_string()))?;
        let partition = partition_for(envelope.order_id.as_bytes(), self.partitions);
        if self.tasks.restoring().contains(&partition) {
            return Err(DirectRefusal::Busy);
        }
        let rules = &self.config.rules;
        let task = self.tasks.serving_task(partition).ok_or(DirectRefusal::NotOwner { partition })?;
        match task.process_direct(envelope, rules, now_ms()) {
            Ok(Direct::Applied(update)) => {
                self.metrics.direct_commands.inc();
                tracing::info!(partition, order_id = %envelope.order_id, command_id = %envelope.command_id, "command applied over HTTP; queued in the outbox");
                Ok(DirectReply { partition, updates: vec![update] })
            }
            Ok(Direct::Nothing) => Ok(DirectReply { partition, updates: Vec::new() }),
            Ok(Direct::Busy) => Err(DirectRefusal::Busy),
            Err(err) => Err(DirectRefusal::Failed(err.to_string())),
        }
    }
}
