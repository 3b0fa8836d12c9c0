//! The engine that runs dev-materiels, in Kafka Streams' terms:
//!
//! - a **stream thread** ([`stream_thread`]) consumes `orders` in a consumer group and owns one
//!   transactional producer; everything the exactly-once guarantee rests on is in that file;
//! - a **task** ([`task`]) per assigned partition runs the state machine over its records, with
//!   its **state store** (RocksDB) and a write-back cache for the open transaction;
//! - each state change is also written to the store's **changelog** topic (compacted, one
//!   partition per `orders` partition), from which a task is **restored** ([`restore`]);
//! - order timers fire as **punctuations**, every commit interval;
//! - invalid input goes to the **dead-letter topic** ([`dlq`]);
//! - optionally, **standby tasks** ([`standby`]) keep warm copies of the other partitions.

pub mod direct;
pub mod dlq;
pub mod restore;
pub mod standby;
pub mod stream_thread;
pub mod task;

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::error::KafkaError;
use state::{Rules, StoreError, StoreOptions};

use crate::kafka_config::{KafkaArgs, TopicArgs};

pub use restore::RestoreStats;
pub use stream_thread::{run, StreamMetrics, StreamStats};

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
}

impl StreamConfig {
    /// The changelog topic of the order store, named as Kafka Streams would name it.
    pub fn changelog_topic(&self) -> String {
        changelog_topic(&self.application_id)
    }

    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.application_id, self.instance_id)
    }
}

pub fn changelog_topic(application_id: &str) -> String {
    format!("{application_id}-order-store-changelog")
}

/// Why the stream thread stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topics(#[from] crate::topics::TopicError),
    #[error("restoring partition {partition} made no progress for {waited:?}")]
    RestoreStalled { partition: i32, waited: Duration },
    #[error("the transaction committed but partition {partition}'s changelog writes were not acknowledged")]
    MissingChangelogOffset { partition: i32 },
    #[error(transparent)]
    Connect(#[from] crate::kafka_config::ConnectError),
    #[error(
        "the transactional call {call} has not returned for {stuck:?}, past its own timeout; whether the transaction \
         committed is unknown, so the stream thread stops and a restart restores from what Kafka holds"
    )]
    Wedged { call: &'static str, stuck: Duration },
    #[error("{0}")]
    Config(String),
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
