//! `dev-materiels cluster take-over`: after the primary cluster is lost, makes dev-materiels'
//! state and input positions on the standby cluster (the copy MirrorMaker 2 kept) exactly what
//! they were on the primary as of the last update the standby holds. The design is in
//! docs/architecture.md ("Two clusters"), the procedure in docs/multi-cluster.md.
//!
//! MirrorMaker 2 copies each partition on its own: on the standby, the changelog, `order-updates`
//! and `orders` are each a prefix of the primary's, ending at unrelated points. With
//! `--replicated`, each update carries its order's state and its command record's timestamp
//! ([`wire::replication`]), so for each partition:
//!
//! - **State**: the state of an order is the one carried by its last update on the standby's
//!   `order-updates`. The standby's changelog is corrected to it where it differs (it may be
//!   ahead: a state whose update never crossed, then after a tombstone, since a restore never
//!   lowers an order's version; or behind), and an order the changelog has but no
//!   update shows is dropped (its commands are decided again), unless `order-updates` has lost
//!   records to retention (its start offset is not 0), where it is kept as it is.
//! - **Input**: reading `orders` starts right after the command of the last update that a
//!   command set off (found by its timestamp, `offsetsForTimes`, then forward to its command id):
//!   every command before it was decided before an update the standby has; every command after it
//!   is decided on the standby, in order. Translated offsets (MirrorMaker's checkpoints) are not
//!   used: they lag, and the commands behind the true position whose updates crossed would be
//!   decided twice. The positions are committed as the consumer group's offsets on the standby.
//!
//! Finally the local state directory is made the standby's ([`engine::runtime::state_dir`]): the
//! stores of the primary are dropped and restored from the corrected changelog at start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use state::store::decode_state;

use engine::kafka::{KafkaArgs, ReadToEndContext, KAFKA_CALL_TIMEOUT};
use engine::runtime::state_dir;
use wire::Codec;

/// Why the take-over stopped. It changes nothing that a second run would not redo: it can be run
/// again after any failure.
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("{context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error(transparent)]
    Runtime(#[from] engine::runtime::RuntimeError),
    #[error(transparent)]
    Topics(#[from] engine::admin::TopicError),
    #[error(
        "the cluster being left, at {brokers}, answers: taking over now would let two clusters decide orders. Stop \
         both services there and let MirrorMaker 2 catch up (a switchover, docs/multi-cluster.md), then run again \
         with --force; or run again once that cluster is gone"
    )]
    PrimaryAnswers { brokers: String },
    #[error("dev-materiels' group {group} still has members on {brokers}: stop every instance there first")]
    GroupActive { group: String, brokers: String },
    #[error("reading {topic} partition {partition} made no progress for {waited:?}")]
    Stalled { topic: String, partition: i32, waited: Duration },
    #[error(
        "{topic} partition {partition} still has a transaction open after {waited:?} (MirrorMaker 2 running, or \
         its transaction not timed out yet): stop MirrorMaker 2 and run again"
    )]
    OpenTransaction { topic: String, partition: i32, waited: Duration },
    #[error("{0} corrected changelog records were not acknowledged")]
    Undelivered(usize),
    #[error("{topic} partition {partition} offset {offset}: {reason}")]
    Undecodable { topic: String, partition: i32, offset: i64, reason: String },
}

fn failed(context: impl Into<String>) -> impl FnOnce(KafkaError) -> TakeOverError {
    let context = context.into();
    move |source| TakeOverError::Kafka { context, source }
}

/// What the take-over found and did for one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionTakeOver {
    pub partition: i32,
    /// Orders with a state on the standby's changelog before the take-over.
    pub changelog_states: usize,
    /// Updates read on the standby's `order-updates`, and those without a state header (written
    /// without `--replicated`: their orders keep the changelog's state).
    pub updates: usize,
    pub updates_without_state: usize,
    /// Changelog states replaced by the state of the order's last update (the changelog was
    /// ahead of `order-updates`, or behind).
    pub corrected: usize,
    /// Orders dropped: a state on the changelog, no update on `order-updates`.
    pub dropped: usize,
    /// The command of the last update a command set off: its record's timestamp and id.
    pub last_command: Option<(i64, String)>,
    /// Where reading `orders` starts on the standby, and where the partition ends there.
    pub start_offset: i64,
    pub orders_end: i64,
}

impl std::fmt::Display for PartitionTakeOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {}: {} states on the changelog, {} updates ({} without a state header), {} states corrected, {} \
             dropped; orders from offset {} of {}",
            self.partition,
            self.changelog_states,
            self.updates,
            self.updates_without_state,
            self.corrected,
            self.dropped,
            self.start_offset,
            self.orders_end
        )
    }
}

/// What `cluster take-over` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeOverReport {
    pub cluster_id: String,
    pub partitions: Vec<PartitionTakeOver>,
    /// Local stores of the previous cluster dropped.
    pub stores_dropped: usize,
    pub elapsed: Duration,
}

/// The take-over's settings, beside dev-materiels' own (brokers: the standby's).
#[derive(Debug, Clone)]
pub struct TakeOver<'a> {
    pub args: &'a crate::DevMaterielsArgs,
    /// The brokers of the cluster being left: if they answer, the take-over refuses unless
    /// `force`.
    pub primary: Option<KafkaArgs>,
    pub force: bool,
    pub codec: Codec,
    /// How long to wait for a transaction left open on the standby (by a MirrorMaker 2 that
    /// died) to be aborted by the broker: longer than MirrorMaker's transaction timeout.
    pub open_transaction_patience: Duration,
}

impl TakeOver<'_> {
    pub fn run(&self) -> Result<TakeOverReport, TakeOverError> {
        let started = Instant::now();
        if let (Some(primary), false) = (&self.primary, self.force) {
            if primary.check(Duration::from_secs(5)).is_ok() {
                return Err(TakeOverError::PrimaryAnswers { brokers: primary.brokers.clone() });
            }
        }
        let kafka = &self.args.kafka;
        let cluster_id = state_dir::cluster_id(kafka)?;
        let topics = &self.args.topics;
        let changelog_topic = wire::topics::changelog_name(&self.args.application_id);
        let partitions = engine::admin::partition_count(kafka, &topics.orders_topic, KAFKA_CALL_TIMEOUT)?;
        // A MirrorMaker 2 that died mid-transaction leaves records no reader sees until the broker
        // aborts it (its transaction timeout); a correction written after them would be hidden as
        // long. So the copies must have no transaction open.
        let waited = wait_for_no_open_transaction(
            kafka,
            &[&changelog_topic, &topics.updates_topic, &topics.orders_topic],
            partitions,
            self.open_transaction_patience,
        )?;
        if waited > Duration::from_secs(1) {
            tracing::info!(?waited, "waited for a transaction left open on the standby to end");
        }
        let mut c: ClientConfig = kafka.base();
        c.set("enable.idempotence", "true").set("acks", "all");
        let producer: ThreadedProducer<Deliveries> = kafka
            .finish(c)
            .create_with_context(Deliveries::default())
            .map_err(failed("creating the changelog producer"))?;
        let mut positions = TopicPartitionList::new();
        let mut report = Vec::new();
        for partition in 0..partitions {
            let mut part = PartitionTakeOver { partition, ..PartitionTakeOver::default() };
            let mut states: HashMap<Vec<u8>, u64> = HashMap::new();
            read_to_end(kafka, &changelog_topic, partition, 0, |m| {
                let Some(key) = m.key() else { return Ok(true) };
                match m.payload() {
                    None => {
                        states.remove(key);
                    }
                    Some(value) => {
                        // An undecodable state is replaced if an update says otherwise.
                        let version = decode_state(value).map_or(u64::MAX, |s| s.version);
                        states.insert(key.to_vec(), version);
                    }
                }
                Ok(true)
            })?;
            part.changelog_states = states.len();
            // Per order, the state its last update carries (None: that update carries none).
            let mut last: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
            let mut last_command: Option<(i64, Vec<u8>)> = None;
            read_to_end(kafka, &topics.updates_topic, partition, 0, |m| {
                let Some(key) = m.key() else { return Ok(true) };
                part.updates += 1;
                let header = |name: &str| {
                    m.headers().and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value.map(<[u8]>::to_vec)))
                };
                let state = header(wire::replication::STATE);
                if state.is_none() {
                    part.updates_without_state += 1;
                }
                let command_ts = header(wire::replication::COMMAND_TS)
                    .and_then(|ts| std::str::from_utf8(&ts).ok().and_then(|ts| ts.parse::<i64>().ok()));
                if let (Some(ts), Some(value)) = (command_ts, m.payload()) {
                    last_command = Some((ts, value.to_vec()));
                }
                last.insert(key.to_vec(), state);
                Ok(true)
            })?;
            let (updates_start, _) = watermarks(kafka, &topics.updates_topic, partition)?;
            for (key, state) in &last {
                let Some(state) = state else { continue };
                let version = decode_state(state).map_err(|e| TakeOverError::Undecodable {
                    topic: topics.updates_topic.clone(),
                    partition,
                    offset: -1,
                    reason: format!("the state header of order {}: {e}", String::from_utf8_lossy(key)),
                })?;
                match states.get(key) {
                    Some(v) if *v == version.version => {}
                    changelog => {
                        // A restore never lowers an order's version (a record of an older
                        // version is taken for one overtaken): a state behind the changelog's goes
                        // after a tombstone.
                        if changelog.is_some_and(|v| *v > version.version) {
                            produce(&producer, &changelog_topic, partition, key, None)?;
                        }
                        produce(&producer, &changelog_topic, partition, key, Some(state))?;
                        part.corrected += 1;
                    }
                }
            }
            if updates_start == 0 {
                for key in states.keys().filter(|k| !last.contains_key(*k)) {
                    produce(&producer, &changelog_topic, partition, key, None)?;
                    part.dropped += 1;
                }
            }
            let (orders_start, orders_end) = watermarks(kafka, &topics.orders_topic, partition)?;
            part.orders_end = orders_end;
            part.start_offset = match &last_command {
                None => orders_start,
                Some((ts, update)) => {
                    let command_id = self
                        .codec
                        .decode_update(update)
                        .map_err(|e| TakeOverError::Undecodable {
                            topic: topics.updates_topic.clone(),
                            partition,
                            offset: -1,
                            reason: e.to_string(),
                        })?
                        .command_id
                        .unwrap_or_default();
                    let start = self.after_command(kafka, partition, *ts, &command_id, orders_end)?;
                    part.last_command = Some((*ts, command_id));
                    start
                }
            };
            positions
                .add_partition_offset(&topics.orders_topic, partition, Offset::Offset(part.start_offset))
                .map_err(failed("listing the start offsets"))?;
            tracing::info!("{part}");
            report.push(part);
        }
        producer.flush(KAFKA_CALL_TIMEOUT).map_err(failed("writing the corrected changelog"))?;
        let undelivered = producer.context().0.load(std::sync::atomic::Ordering::Relaxed);
        if undelivered > 0 {
            return Err(TakeOverError::Undelivered(undelivered));
        }
        // The group's offsets on the standby (MirrorMaker's synced ones are overwritten).
        let mut c: ClientConfig = kafka.base();
        c.set("group.id", &self.args.application_id).set("enable.auto.commit", "false");
        let committer: BaseConsumer =
            kafka.finish(c).create().map_err(failed("creating the consumer that commits the start offsets"))?;
        committer.commit(&positions, CommitMode::Sync).map_err(failed(format!(
            "committing the start offsets of group {} (is dev-materiels still running on this cluster?)",
            self.args.application_id
        )))?;
        let dropped = state_dir::adopt(&self.args.state_dir, &cluster_id)?;
        Ok(TakeOverReport { cluster_id, partitions: report, stores_dropped: dropped.len(), elapsed: started.elapsed() })
    }

    /// The offset right after the command record with this timestamp and id on the standby's
    /// `orders`, or the partition's end if that record is not there (then the copy ends before
    /// it, and every command it holds was decided).
    fn after_command(
        &self,
        kafka: &KafkaArgs,
        partition: i32,
        ts: i64,
        command_id: &str,
        end: i64,
    ) -> Result<i64, TakeOverError> {
        let topic = &self.args.topics.orders_topic;
        let consumer = reader(kafka)?;
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(topic, partition, Offset::Offset(ts)).map_err(failed("asking for a timestamp"))?;
        let found = consumer.offsets_for_times(query, KAFKA_CALL_TIMEOUT).map_err(failed("offsetsForTimes"))?;
        // The first record at or after the timestamp: the command's record is there or later.
        let from = match found.find_partition(topic, partition).map(|p| p.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => return Ok(end),
        };
        let mut after = None;
        read_to_end(kafka, topic, partition, from, |m| {
            if m.timestamp().to_millis() != Some(ts) {
                return Ok(true);
            }
            match self.codec.decode_command(m.key(), m.payload()) {
                Ok(envelope) if envelope.command_id == command_id => {
                    after = Some(m.offset() + 1);
                    Ok(false)
                }
                _ => Ok(true),
            }
        })?;
        Ok(after.unwrap_or(end))
    }
}

/// Waits until every partition of `topics` has no open transaction: its last stable offset
/// (what a read_committed reader is given as its end) reaches its high watermark. Returns how
/// long it waited.
fn wait_for_no_open_transaction(
    kafka: &KafkaArgs,
    topics: &[&str],
    partitions: i32,
    patience: Duration,
) -> Result<Duration, TakeOverError> {
    let started = Instant::now();
    let committed = reader(kafka)?;
    let mut c: ClientConfig = kafka.base();
    c.set("group.id", "rail-take-over").set("isolation.level", "read_uncommitted");
    let uncommitted: BaseConsumer = kafka.finish(c).create().map_err(failed("creating a reader"))?;
    for topic in topics {
        for partition in 0..partitions {
            loop {
                let (_, stable) = committed
                    .fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT)
                    .map_err(failed(format!("the last stable offset of {topic} partition {partition}")))?;
                let (_, high) = uncommitted
                    .fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT)
                    .map_err(failed(format!("the high watermark of {topic} partition {partition}")))?;
                if stable >= high {
                    break;
                }
                if started.elapsed() > patience {
                    return Err(TakeOverError::OpenTransaction {
                        topic: topic.to_string(),
                        partition,
                        waited: started.elapsed(),
                    });
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Ok(started.elapsed())
}

/// `dev-materiels cluster clear`: deletes the system's topics on the cluster `args` names (an old
/// primary, before MirrorMaker 2 makes it a copy of the active cluster), unless dev-materiels'
/// group has members there. Returns the topics deleted.
pub fn clear(args: &crate::DevMaterielsArgs) -> Result<Vec<String>, TakeOverError> {
    let kafka = &args.kafka;
    let consumer: BaseConsumer = kafka.finish(kafka.base()).create().map_err(failed("creating a client"))?;
    // A cluster just back loads its groups first: that answer is waited out, for a while.
    let loading = Instant::now();
    let groups = loop {
        match consumer.fetch_group_list(Some(&args.application_id), KAFKA_CALL_TIMEOUT) {
            Err(KafkaError::GroupListFetch(
                RDKafkaErrorCode::CoordinatorLoadInProgress | RDKafkaErrorCode::CoordinatorNotAvailable,
            )) if loading.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(500)),
            other => break other.map_err(failed(format!("describing group {}", args.application_id)))?,
        }
    };
    if groups.groups().iter().any(|g| g.name() == args.application_id && !g.members().is_empty()) {
        return Err(TakeOverError::GroupActive { group: args.application_id.clone(), brokers: kafka.brokers.clone() });
    }
    let changelog = wire::topics::changelog_name(&args.application_id);
    let topics = [
        args.topics.orders_topic.as_str(),
        args.topics.updates_topic.as_str(),
        args.topics.dlq_topic.as_str(),
        changelog.as_str(),
    ];
    Ok(engine::admin::delete_topics(kafka, &topics)?)
}

fn reader(kafka: &KafkaArgs) -> Result<BaseConsumer<ReadToEndContext>, TakeOverError> {
    let mut c: ClientConfig = kafka.base();
    c.set("group.id", "rail-take-over")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    kafka.finish(c).create_with_context(ReadToEndContext).map_err(failed("creating a reader"))
}

fn watermarks(kafka: &KafkaArgs, topic: &str, partition: i32) -> Result<(i64, i64), TakeOverError> {
    let consumer = reader(kafka)?;
    consumer
        .fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT)
        .map_err(failed(format!("the offsets of {topic} partition {partition}")))
}

/// Reads the partition from `from` to its end (read_committed), handing each record to `each`
/// until it returns false.
fn read_to_end(
    kafka: &KafkaArgs,
    topic: &str,
    partition: i32,
    from: i64,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<bool, TakeOverError>,
) -> Result<(), TakeOverError> {
    let (start, end) = watermarks(kafka, topic, partition)?;
    if end <= start.max(from) {
        return Ok(());
    }
    let consumer = reader(kafka)?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from.max(start)))
        .map_err(failed("assigning a partition"))?;
    consumer.assign(&assignment).map_err(failed(format!("reading {topic} partition {partition}")))?;
    let patience = Duration::from_secs(60);
    let mut progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                progress = Instant::now();
                if !each(&message)? {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(err)) => tracing::warn!(%topic, partition, error = %err, "reading"),
            None if progress.elapsed() > patience => {
                return Err(TakeOverError::Stalled { topic: topic.to_string(), partition, waited: patience })
            }
            None => {}
        }
    }
}

/// Counts the records Kafka did not take.
#[derive(Default)]
struct Deliveries(std::sync::atomic::AtomicUsize);

impl rdkafka::ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, _)) = result {
            tracing::warn!(error = %err, "a corrected changelog record was not delivered");
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn produce(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), TakeOverError> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition).key(key);
    if let Some(value) = value {
        record = record.payload(value);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((err, _)) => return Err(TakeOverError::Kafka { context: format!("writing to {topic}"), source: err }),
        }
    }
}
