//! The stream thread: the exactly-once loop of dev-materiels.
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
//! The parts: [`super::task_manager`] (each partition's task and its state),
//! [`super::transaction`] (the open transaction and the committer thread),
//! [`super::clients`] (the Kafka clients), [`super::collector`] (the records a transaction
//! produces), [`super::restore`] and [`super::standby`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use state::{decode_command, validate_envelope};
use wire::partitioner::partition_for;
use wire::{TraceParent, TRACEPARENT};

use super::collector::RecordCollector;
use super::direct::{DirectRefusal, DirectReply, DirectRequest, QueryReply};
use super::producer::{KafkaProducer, TransactionalProducer};
use super::restore::RestoreContext;
use super::standby::Standbys;
use super::task::{flush_committed, Direct};
use super::task_manager::TaskManager;
use super::transaction::{Settled, Transactions};
use super::{clients, prepare_topics, KafkaContext, RuntimeError, StreamConfig};
use crate::kafka::KAFKA_CALL_TIMEOUT;
use crate::metrics::{StreamMetrics, StreamStats};

/// How long one `poll` waits for a record (and so how long an HTTP request may wait for its
/// turn on an idle thread).
const POLL: Duration = Duration::from_millis(5);
/// How long the stream thread waits for the committer thread at each turn of the loop before it
/// goes back to answering HTTP requests.
const COMMIT_STEP: Duration = Duration::from_millis(5);
/// How long a revocation or a shutdown waits for the open transaction to settle.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Everything the loop and the rebalance callbacks share.
pub(super) struct Engine {
    pub(super) config: StreamConfig,
    /// Partitions of `orders` (and of the changelog).
    pub(super) partitions: i32,
    pub(super) producer: Arc<KafkaProducer>,
    pub(super) records: RecordCollector,
    pub(super) txns: Transactions<KafkaProducer>,
    pub(super) restore_consumer: BaseConsumer<RestoreContext>,
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

/// The consumer's context: routes rebalance callbacks to the engine, and librdkafka's
/// statistics to the metrics.
pub(super) struct StreamContext {
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
        if let Some(lag) = crate::stats::consumer_lag(statistics, &self.orders_topic) {
            self.metrics.consumer_lag.set(&lag);
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

pub(super) type Consumer_ = BaseConsumer<StreamContext>;

/// Runs dev-materiels' stream thread until `shutdown` is set, then commits what is open and
/// returns its counters. `direct` brings the commands and queries that came over HTTP.
pub fn run(
    config: StreamConfig,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
    direct: Receiver<DirectRequest>,
) -> Result<StreamStats, RuntimeError> {
    let partitions = prepare_topics(&config)?;
    let engine = Arc::new(Mutex::new(Engine::new(config.clone(), partitions, Arc::clone(&metrics), direct)?));
    let context = StreamContext {
        engine: Arc::clone(&engine),
        metrics: Arc::clone(&metrics),
        orders_topic: config.topics.orders_topic.clone(),
    };
    let consumer = clients::main_consumer(&config, context)?;
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
        let settling = lock(&engine).txns.is_settling();
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
        if !engine.txns.is_settling() {
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
        if !engine.txns.is_settling() {
            // (While the committer thread commits, it serves the producer's events itself.)
            engine.records.producer().poll(Duration::ZERO);
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
        partitions: i32,
        metrics: Arc<StreamMetrics>,
        direct: Receiver<DirectRequest>,
    ) -> Result<Engine, RuntimeError> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|source| RuntimeError::Io { path: config.state_dir.clone(), source })?;
        let producer = clients::transactional_producer(&config)?;
        let txns = Transactions::new(Arc::clone(&producer), KAFKA_CALL_TIMEOUT, config.stuck_call_after)?;
        let records = RecordCollector::new(&config, Arc::clone(&producer), Arc::clone(&metrics));
        let restore_consumer = clients::restore_consumer(&config, "restore")?;
        let standbys = if config.standby { Some(Standbys::new(&config)?) } else { None };
        Ok(Engine {
            config,
            partitions,
            producer,
            records,
            txns,
            restore_consumer,
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
        self.metrics.store_sizes(&sizes);
    }

    /// Applies what the changelog has for the standby copies, without waiting.
    fn poll_standbys(&mut self) -> Result<(), RuntimeError> {
        if let Some(standbys) = &mut self.standbys {
            let applied = standbys.poll()?;
            self.metrics.standby_records.inc_by(applied as u64);
        }
        Ok(())
    }

    pub(super) fn update_gauges(&self) {
        let (restoring, running, _) = self.tasks.counts();
        self.metrics.active_tasks.set(running as i64);
        self.metrics.partitions_restoring.set(restoring as i64);
        self.metrics.outbox_pending.set(self.tasks.outbox_len() as i64);
    }

    /// Opens a transaction if none is, and puts the outbox entries of every running task first
    /// in it, so that what was decided over HTTP is published before anything decided after it.
    pub(super) fn begin(&mut self) -> Result<(), RuntimeError> {
        if self.txns.is_open() {
            return Ok(());
        }
        self.producer.begin().context("beginning a transaction")?;
        self.txns.opened();
        let now = now_ms();
        let rules = &self.config.rules;
        let mut drained = Vec::new();
        for (partition, task) in self.tasks.running() {
            for output in task.drain_outbox(rules, now)? {
                drained.push((partition, output));
            }
        }
        for (partition, output) in &drained {
            self.records.emit(*partition, output, None)?;
        }
        Ok(())
    }

    /// Processes one record of `orders` inside the open transaction.
    fn process(&mut self, consumer: &Consumer_, message: &BorrowedMessage<'_>) -> Result<(), RuntimeError> {
        let partition = message.partition();
        let offset = message.offset();
        if self.tasks.restoring().contains(&partition) {
            // Fetched before the partition was paused for its restore: read it again afterwards.
            consumer
                .seek(&self.config.topics.orders_topic, partition, Offset::Offset(offset), KAFKA_CALL_TIMEOUT)
                .context(format!("rewinding partition {partition} to offset {offset}"))?;
            return Ok(());
        }
        if self.tasks.running_task(partition).is_none() {
            // A record fetched just before its partition was revoked, or lost: a detached task
            // takes no record (its transaction would not be fenced; the next owner reads it).
            tracing::debug!(partition, offset, "record for a partition this thread does not run; skipped");
            return Ok(());
        }
        self.begin()?;
        self.txns.read(partition, offset);
        self.metrics.records.inc();
        // The command's span, from its record (if it came with one).
        let trace = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == TRACEPARENT).and_then(|h| h.value))
            .and_then(TraceParent::from_bytes);
        let trace_id = trace.as_ref().map(TraceParent::trace_id).unwrap_or_default();
        match decode_command(message.key(), message.payload()) {
            Ok(envelope) => {
                self.metrics.commands_kafka.inc();
                let Some(task) = self.tasks.running_task(partition) else { return Ok(()) };
                let processed = task.process(&envelope, &self.config.rules, now_ms())?;
                for output in &processed.outbox {
                    self.records.emit(partition, output, None)?;
                }
                match processed.decided {
                    Some(output) => {
                        tracing::debug!(partition, offset, order_id = %envelope.order_id, command_id = %envelope.command_id, %trace_id, version = output.update.version, "command decided");
                        self.records.emit(partition, &output, trace.as_ref())?
                    }
                    None => {
                        tracing::debug!(partition, offset, order_id = %envelope.order_id, command_id = %envelope.command_id, %trace_id, "command already applied; nothing to do");
                        self.metrics.unchanged.inc();
                    }
                }
            }
            Err(invalid) => {
                tracing::warn!(partition, offset, error = %invalid, %trace_id, "invalid command sent to the dead-letter topic");
                self.records.dead_letter(message, &invalid)?;
            }
        }
        if let Some(task) = self.tasks.running_task(partition) {
            task.next_input_offset = Some(offset + 1);
        }
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
        self.update_gauges();
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

    /// Every commit interval: fires due timers, publishes the outbox, commits. While a commit or
    /// abort is under way, takes it one step further instead.
    fn maybe_commit(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        if self.txns.is_settling() {
            self.step(consumer, COMMIT_STEP)?;
            return Ok(());
        }
        if self.last_commit.elapsed() < self.config.commit_interval {
            return Ok(());
        }
        self.punctuate()?;
        if self.tasks.running().any(|(_, t)| t.outbox_len() > 0) {
            self.begin()?;
        }
        if self.txns.is_open() {
            self.txns.commit();
            self.step(consumer, COMMIT_STEP)?;
        } else {
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Fires the due timers of the running tasks. A detached task fires none: another member may
    /// own its partition already, and its transaction would carry no offsets (no group
    /// generation) for it, so nothing would fence a zombie's timer updates. The chaos runner
    /// found this: the same timer fired by the new owner and by the detached task, both
    /// committed.
    fn punctuate(&mut self) -> Result<(), RuntimeError> {
        let now = now_ms();
        let rules = &self.config.rules;
        let mut fired = Vec::new();
        for (partition, task) in self.tasks.running() {
            for output in task.punctuate(rules, now)? {
                fired.push((partition, output));
            }
        }
        if fired.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for (partition, output) in &fired {
            self.records.emit(*partition, output, None)?;
        }
        Ok(())
    }

    /// Commits (or aborts) the open transaction, whatever its phase, waiting up to `timeout`.
    /// Returns whether it settled.
    pub(super) fn settle(&mut self, consumer: &Consumer_, timeout: Duration) -> Result<bool, RuntimeError> {
        self.txns.commit();
        let deadline = Instant::now() + timeout;
        loop {
            if self.step(consumer, COMMIT_STEP)? {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
        }
    }

    /// Takes the settling transaction one step further, waiting at most `wait` for the committer
    /// thread; returns whether nothing is left to settle.
    fn step(&mut self, consumer: &Consumer_, wait: Duration) -> Result<bool, RuntimeError> {
        let orders = self.config.topics.orders_topic.clone();
        let tasks = &mut self.tasks;
        let settled = self.txns.step(wait, || offsets_to_commit(consumer, &orders, tasks))?;
        match settled {
            Settled::Idle => Ok(true),
            Settled::NotYet => Ok(false),
            Settled::Committed { took, .. } => {
                self.metrics.commit_seconds.observe(took.as_secs_f64());
                self.after_commit()?;
                Ok(true)
            }
            Settled::Aborted { txn, took } => {
                self.metrics.abort_seconds.observe(took.as_secs_f64());
                self.after_abort(consumer, &txn.first_offsets)?;
                Ok(true)
            }
            Settled::ProducerLost { txn, reason } => {
                tracing::error!(%reason, "the transactional producer cannot go on; its transaction is lost; starting a new producer");
                self.after_abort(consumer, &txn.first_offsets)?;
                let producer = clients::transactional_producer(&self.config)?;
                self.txns.replace(Arc::clone(&producer))?;
                self.records.replace_producer(Arc::clone(&producer));
                self.producer = producer;
                self.metrics.producers_replaced.inc();
                Ok(true)
            }
        }
    }

    /// After Kafka committed: the write-back caches go to RocksDB with their changelog positions.
    fn after_commit(&mut self) -> Result<(), RuntimeError> {
        let acknowledged = self.producer.take_acknowledged();
        // The one moment at which Kafka is ahead of RocksDB: a crash here must cost a replay of
        // exactly what was missed (the crash test aborts the process at this fail point).
        fail::fail_point!("engine::after_commit", |_| {
            tracing::error!(
                "fault injection (engine::after_commit): aborting between the Kafka commit and the store write"
            );
            std::process::abort()
        });
        let published = flush_committed(self.tasks.tasks_mut(), &acknowledged)?;
        self.metrics.outbox_published.inc_by(published as u64);
        // The next commit interval counts from here: the thread gets a full interval of records.
        self.last_commit = Instant::now();
        self.metrics.commits.inc();
        self.update_gauges();
        Ok(())
    }

    /// After a transaction that did not commit: the caches are dropped and the consumer goes back
    /// to the first record the transaction read on each partition it still runs.
    fn after_abort(
        &mut self,
        consumer: &Consumer_,
        first_offsets: &std::collections::BTreeMap<i32, i64>,
    ) -> Result<(), RuntimeError> {
        self.producer.take_acknowledged();
        self.metrics.aborts.inc();
        self.last_commit = Instant::now();
        for (_, task) in self.tasks.tasks_mut() {
            task.discard()?;
        }
        for (partition, first) in first_offsets {
            if let Some(task) = self.tasks.running_task(*partition) {
                task.next_input_offset = Some(*first);
                consumer
                    .seek(&self.config.topics.orders_topic, *partition, Offset::Offset(*first), KAFKA_CALL_TIMEOUT)
                    .context(format!("rewinding partition {partition} to offset {first}"))?;
            }
        }
        self.update_gauges();
        Ok(())
    }
}

/// The consumed offsets to send with the commit, with the group metadata: one for every running
/// task, not only those that read records, so that a transaction made of timers or outbox
/// entries alone still carries the group generation, and a zombie's cannot commit.
fn offsets_to_commit(
    consumer: &Consumer_,
    orders: &str,
    tasks: &mut TaskManager,
) -> Result<Option<(TopicPartitionList, ConsumerGroupMetadata)>, RuntimeError> {
    let mut offsets = TopicPartitionList::new();
    for (partition, task) in tasks.running() {
        if let Some(next) = task.next_input_offset {
            offsets.add_partition_offset(orders, partition, Offset::Offset(next))?;
        }
    }
    if offsets.count() == 0 {
        return Ok(None);
    }
    let group = consumer.group_metadata().ok_or(RuntimeError::NoGroupMetadata)?;
    Ok(Some((offsets, group)))
}
