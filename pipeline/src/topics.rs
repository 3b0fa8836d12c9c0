//! Creating the topics at start when they are missing, and checking the ones that exist.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka_config::{KafkaArgs, MAX_MESSAGE_BYTES};

/// A topic the service needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// A compacted topic (a changelog) rather than a deleted-by-time one.
    pub compacted: bool,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i32) -> TopicSpec {
        TopicSpec { name: name.into(), partitions, replication_factor, compacted: false }
    }

    pub fn compacted(mut self) -> TopicSpec {
        self.compacted = true;
        self
    }
}

/// A topic problem that stops a service from starting.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("Kafka admin call failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("topic {topic} has {actual} partitions, expected {expected}{hint}")]
    PartitionMismatch { topic: String, actual: i32, expected: i32, hint: String },
    #[error("topic {0} is missing from the cluster's metadata")]
    Missing(String),
}

/// Creates the topics that do not exist yet. Existing topics are left as they are.
pub fn ensure_topics(kafka: &KafkaArgs, specs: &[TopicSpec]) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = kafka.finish(kafka.base()).create()?;
    let max_bytes = MAX_MESSAGE_BYTES.to_string();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor))
                .set("max.message.bytes", &max_bytes);
            if spec.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(&new_topics, &options))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, waiting up to `timeout` for it to show in metadata.
pub fn partition_count(kafka: &KafkaArgs, topic: &str, timeout: Duration) -> Result<i32, TopicError> {
    let consumer: BaseConsumer = kafka.finish(kafka.base()).create()?;
    let start = std::time::Instant::now();
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().len() as i32);
            }
        }
        if start.elapsed() > timeout {
            return Err(TopicError::Missing(topic.to_string()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
