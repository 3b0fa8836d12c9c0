//! The runtime that runs dev-materiels, in Kafka Streams' terms:
//!
//! - a **stream thread** ([`stream_thread`]) consumes `orders` in a consumer group and owns a
//!   transactional producer ([`producer`], [`clients`]), or two that take turns with overlapped
//!   commits, so that it keeps taking records while the previous transaction commits; its loop
//!   polls, processes, punctuates and commits;
//! - the **task manager** ([`task_manager`]) holds each assigned partition's **task** ([`task`])
//!   with its state (restoring, running, detached); a task runs the state machine over its
//!   records, with its **state store** (RocksDB) and a write-back cache for the open transaction;
//! - the open **transaction**, the closed one committing meanwhile, and the committer threads that
//!   end them ([`transaction`]); the records they produce go through the **record collector**
//!   ([`collector`]);
//! - each state change is also written to the store's **changelog** topic (compacted, one
//!   partition per `orders` partition), from which a task is **restored** ([`restore`]) when it is
//!   assigned ([`rebalance`]);
//! - order timers fire as **punctuations**, every commit interval;
//! - invalid input goes to the **dead-letter topic** ([`dlq`]);
//! - optionally, **standby tasks** ([`standby`]) keep warm copies of the other partitions;
//! - the state directory names the Kafka cluster its stores belong to ([`state_dir`]);
//! - commands over HTTP reach the stream thread through [`direct`]; a store left behind hands its
//!   unpublished ones over to `orders` ([`hand_over`]);
//! - a process can run several stream threads ([`threads`], `num.stream.threads`), each a group
//!   member with its own tasks; HTTP requests go to the one that serves the order ([`ownership`]);
//! - a **global stream thread** ([`global`]) keeps a whole topic in a global state store on every
//!   instance (a `GlobalKTable`), restored before the stream threads start.

pub mod clients;
pub mod collector;
pub mod commit;
pub mod direct;
pub mod dlq;
pub mod global;
pub mod hand_over;
pub mod ownership;
pub mod producer;
pub mod rebalance;
pub mod restore;
pub mod standby;
pub mod state_dir;
pub mod stream_thread;
pub mod task;
pub mod task_manager;
pub mod threads;
pub mod transaction;

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::error::KafkaError;
use state::{Rules, StoreError, StoreOptions};
use wire::topics::{changelog_topic, service_topics};
use wire::TopicArgs;

use crate::admin::{ensure_topics, partition_count, TopicError};
use crate::kafka::{KafkaArgs, KAFKA_CALL_TIMEOUT};

pub use crate::metrics::{StreamMetrics, StreamStats};
pub use producer::TxnError;
pub use restore::RestoreStats;
pub use threads::run;

/// Everything the stream thread needs.
#[derive(Clone)]
pub struct StreamConfig {
    pub kafka: KafkaArgs,
    pub topics: TopicArgs,
    /// The consumer group id, and the prefix of the changelog topic and transactional id.
    pub application_id: String,
    /// This instance's name: its transactional id is `<application_id>-<instance_id>`. A
    /// restarted instance must keep its name, so that it fences its previous incarnation.
    pub instance_id: String,
    /// Join the group as a static member (`group.instance.id` = the instance id).
    pub static_membership: bool,
    pub state_dir: PathBuf,
    pub commit_interval: Duration,
    pub rules: Rules,
    pub store: StoreOptions,
    pub session_timeout: Duration,
    pub transaction_timeout: Duration,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Keep standby copies of the partitions not owned ([`standby`]).
    pub standby: bool,
    /// A transactional call still running this long after it started is stuck
    /// ([`transaction`]).
    pub stuck_call_after: Duration,
    /// Open the next transaction on a second producer while the previous one commits
    /// ([`transaction`]); off, the stream thread takes no record during a commit.
    pub overlap_commits: bool,
    /// Write on each update what a standby cluster needs to take over: the order's state and the
    /// command's timestamp ([`wire::replication`]; docs/multi-cluster.md).
    pub replicated: bool,
    /// Stream threads in the process, each a group member with its own tasks ([`threads`]).
    pub stream_threads: usize,
    /// How updates (and handed-over commands) are written, and commands read: JSON or Avro.
    pub codec: wire::Codec,
}

/// The watchdog's default patience: 30 s past the calls' own timeout.
pub const STUCK_CALL_AFTER: Duration = Duration::from_secs(KAFKA_CALL_TIMEOUT.as_secs() + 30);

impl StreamConfig {
    /// The changelog topic of the order store, named as Kafka Streams would name it.
    pub fn changelog_topic(&self) -> String {
        wire::topics::changelog_name(&self.application_id)
    }

    /// The transactional id of the first producer: `<application_id>-<instance_id>`.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.application_id, self.instance_id)
    }

    /// The transactional id of producer `slot`: the first keeps [`StreamConfig::transactional_id`]
    /// (so an instance upgraded to overlapped commits fences its previous incarnation), the
    /// second adds `#1`.
    pub fn transactional_id_of(&self, slot: usize) -> String {
        match slot {
            0 => self.transactional_id(),
            n => format!("{}#{n}", self.transactional_id()),
        }
    }

    /// The configuration of stream thread `thread` ([`threads`]): thread 0 keeps the instance's
    /// names; thread `i` adds `-t<i>` to the instance id; they share the state directory; only
    /// thread 0 keeps standby copies.
    pub fn for_thread(&self, thread: usize) -> StreamConfig {
        let mut config = self.clone();
        if thread > 0 {
            config.instance_id = format!("{}-t{thread}", self.instance_id);
            config.standby = false;
        }
        config
    }

    /// How many transactional producers a stream thread runs: two when commits overlap.
    pub fn producer_slots(&self) -> usize {
        if self.overlap_commits {
            2
        } else {
            1
        }
    }
}

/// Why the stream thread stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error("restoring partition {partition} made no progress for {waited:?}")]
    RestoreStalled { partition: i32, waited: Duration },
    #[error("the transaction committed but partition {partition}'s changelog writes were not acknowledged")]
    MissingChangelogOffset { partition: i32 },
    #[error(transparent)]
    Connect(#[from] crate::kafka::ConnectError),
    #[error(
        "the transactional call {call} has not returned for {stuck:?}, past its own timeout; whether the transaction \
         committed is unknown, so the stream thread stops and a restart restores from what Kafka holds"
    )]
    Wedged { call: &'static str, stuck: Duration },
    #[error(transparent)]
    Catalogue(#[from] state::catalogue::CatalogueError),
    #[error("{context}: {source}")]
    Transaction { context: &'static str, source: TxnError },
    #[error("the open transaction did not settle within {waited:?} before the partitions were revoked")]
    NotSettled { waited: Duration },
    #[error("the consumer has no group metadata (it is not a member of the group)")]
    NoGroupMetadata,
    #[error("cannot start the {name} thread: {source}")]
    Thread { name: &'static str, source: std::io::Error },
    #[error("the {name} thread stopped")]
    ThreadStopped { name: &'static str },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// A record's writer schema could not be fetched: the registry is unreachable.
    #[error(transparent)]
    Registry(wire::avro::AvroError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the brokers at {brokers} did not give their cluster id")]
    NoClusterId { brokers: String },
    #[error(
        "{dir} holds the stores of Kafka cluster {holds}, and the brokers are cluster {brokers}: its positions mean \
         nothing here. After a failover, run `dev-materiels cluster take-over` against the new cluster (or empty the \
         directory of an instance that did not run it)"
    )]
    ForeignState { dir: PathBuf, holds: String, brokers: String },
    #[error("the global topic {topic} does not exist (create it, or let --create-topics do it)")]
    GlobalTopicMissing { topic: String },
    #[error("restoring the global store from {topic} made no progress for {waited:?}")]
    GlobalStalled { topic: String, waited: Duration },
    #[error("a position of the global store is no longer on {topic} (recreated?): a restart reads it again")]
    GlobalPositionLost { topic: String },
}

impl From<KafkaError> for RuntimeError {
    fn from(source: KafkaError) -> Self {
        RuntimeError::Kafka { context: "Kafka call failed".into(), source }
    }
}

/// Adds context to a Kafka result.
pub(crate) trait KafkaContext<T> {
    fn context(self, what: impl Into<String>) -> Result<T, RuntimeError>;
}

impl<T> KafkaContext<T> for Result<T, KafkaError> {
    fn context(self, what: impl Into<String>) -> Result<T, RuntimeError> {
        self.map_err(|source| RuntimeError::Kafka { context: what.into(), source })
    }
}

/// Creates the topics if missing (when configured to), checks that the changelog has one
/// partition per `orders` partition, and returns that number.
pub fn prepare_topics(config: &StreamConfig) -> Result<i32, RuntimeError> {
    let t = &config.topics;
    let changelog = config.changelog_topic();
    if config.create_topics {
        ensure_topics(&config.kafka, &service_topics(t))?;
    }
    let orders = partition_count(&config.kafka, &t.orders_topic, KAFKA_CALL_TIMEOUT)?;
    if config.create_topics {
        ensure_topics(&config.kafka, &[changelog_topic(t, &changelog, orders)])?;
    }
    let actual = partition_count(&config.kafka, &changelog, KAFKA_CALL_TIMEOUT)?;
    if actual != orders {
        return Err(TopicError::PartitionMismatch {
            topic: changelog,
            actual,
            expected: orders,
            hint: format!(" (one per partition of {})", t.orders_topic),
        }
        .into());
    }
    Ok(orders)
}
