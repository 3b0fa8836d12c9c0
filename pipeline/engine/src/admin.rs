//! The topics of the system: creating them when they are missing, and checking the ones that
//! exist against what they should be (`dev-materiels topics check|apply`).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::KafkaArgs;
use wire::topics::TopicSpec;

/// How a topic differs from its [`TopicSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Missing {
        topic: String,
    },
    /// A setting with another value than the spec's. `fixable`: `apply` can change it (topic
    /// configuration); partitions and replication need an operator's decision.
    Drift {
        topic: String,
        setting: String,
        actual: String,
        expected: String,
        fixable: bool,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Missing { topic } => write!(f, "{topic}: missing"),
            Finding::Drift { topic, setting, actual, expected, fixable } => write!(
                f,
                "{topic}: {setting} is {actual}, expected {expected}{}",
                if *fixable { "" } else { " (not changed by apply: decide and change it by hand)" }
            ),
        }
    }
}
/// A topic problem that stops a service from starting.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("Kafka admin call failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("deleting topic {topic}: {code}")]
    Delete { topic: String, code: RDKafkaErrorCode },
    #[error("topic {topic} has {actual} partitions, expected {expected}{hint}")]
    PartitionMismatch { topic: String, actual: i32, expected: i32, hint: String },
    #[error("topic {0} is missing from the cluster's metadata")]
    Missing(String),
}

/// Creates the topics that do not exist yet. Existing topics are left as they are.
pub fn ensure_topics(kafka: &KafkaArgs, specs: &[TopicSpec]) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = kafka.finish(kafka.base()).create()?;
    let configs: Vec<Vec<(&'static str, String)>> = specs.iter().map(TopicSpec::configs).collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&configs)
        .map(|(spec, configs)| {
            configs.iter().fold(
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor)),
                |topic, (key, value)| topic.set(key, value),
            )
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

/// Deletes those of `topics` that exist; returns their names. A topic already gone is no error.
pub fn delete_topics(kafka: &KafkaArgs, topics: &[&str]) -> Result<Vec<String>, TopicError> {
    let admin: AdminClient<DefaultClientContext> = kafka.finish(kafka.base()).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.delete_topics(topics, &options))?;
    let mut deleted = Vec::new();
    for result in results {
        match result {
            Ok(topic) => deleted.push(topic),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(TopicError::Delete { topic, code }),
        }
    }
    Ok(deleted)
}

/// The number of partitions of `topic`, waiting up to `timeout` for it to show in metadata.
pub fn partition_count(kafka: &KafkaArgs, topic: &str, timeout: Duration) -> Result<i32, TopicError> {
    let consumer: BaseConsumer = kafka.finish(kafka.base()).create()?;
    let start = std::time::Instant::now();
    loop {
        // A broker that does not answer (paused, restarting) fails one call; another broker may
        // answer the next, within `timeout` (the chaos runner saw dev-materiels exit at start-up
        // on one such call while a broker of three was paused).
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(metadata) => {
                if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                    if t.error().is_none() && !t.partitions().is_empty() {
                        return Ok(t.partitions().len() as i32);
                    }
                }
                if start.elapsed() > timeout {
                    return Err(TopicError::Missing(topic.to_string()));
                }
            }
            Err(err) if start.elapsed() > timeout => return Err(err.into()),
            Err(err) => tracing::warn!(topic, error = %err, "reading the topic's metadata failed; trying again"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compares the topics of the cluster with `specs`. A changelog (compacted spec) is expected to
/// have as many partitions as the first spec's topic has in fact (`orders`), when it exists.
pub fn check_topics(kafka: &KafkaArgs, specs: &[TopicSpec]) -> Result<Vec<Finding>, TopicError> {
    let consumer: BaseConsumer = kafka.finish(kafka.base()).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    let layout: BTreeMap<&str, (i32, i32)> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let replicas = t.partitions().iter().map(|p| p.replicas().len() as i32).min().unwrap_or(0);
            (t.name(), (t.partitions().len() as i32, replicas))
        })
        .collect();
    let admin: AdminClient<DefaultClientContext> = kafka.finish(kafka.base()).create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let mut findings = Vec::new();
    let inputs = specs.first().and_then(|first| layout.get(first.name.as_str())).map(|(p, _)| *p);
    for spec in specs {
        let Some((partitions, replicas)) = layout.get(spec.name.as_str()).copied() else {
            findings.push(Finding::Missing { topic: spec.name.clone() });
            continue;
        };
        let expected_partitions = if spec.compacted { inputs.unwrap_or(spec.partitions) } else { spec.partitions };
        let mut drift = |setting: &str, actual: String, expected: String, fixable: bool| {
            if actual != expected {
                findings.push(Finding::Drift {
                    topic: spec.name.clone(),
                    setting: setting.into(),
                    actual,
                    expected,
                    fixable,
                });
            }
        };
        drift("partitions", partitions.to_string(), expected_partitions.to_string(), false);
        drift("replication factor", replicas.to_string(), spec.replication_factor.to_string(), false);
        let described =
            futures::executor::block_on(admin.describe_configs(&[ResourceSpecifier::Topic(&spec.name)], &options))?;
        let resource = match described.into_iter().next() {
            Some(Ok(resource)) => resource,
            Some(Err(code)) => return Err(TopicError::Create { topic: spec.name.clone(), code }),
            None => return Err(TopicError::Missing(spec.name.clone())),
        };
        for (key, expected) in spec.configs() {
            let actual = resource.get(key).and_then(|e| e.value.clone()).unwrap_or_default();
            drift(key, actual, expected, true);
        }
    }
    Ok(findings)
}

/// Creates the missing topics and sets the topic configuration that drifted (keeping the other
/// settings set on the topic). Returns what it found, before fixing it.
pub fn apply_topics(kafka: &KafkaArgs, specs: &[TopicSpec]) -> Result<Vec<Finding>, TopicError> {
    let findings = check_topics(kafka, specs)?;
    let missing: Vec<TopicSpec> = specs
        .iter()
        .filter(|s| findings.iter().any(|f| matches!(f, Finding::Missing { topic } if *topic == s.name)))
        .cloned()
        .collect();
    if !missing.is_empty() {
        ensure_topics(kafka, &missing)?;
    }
    let admin: AdminClient<DefaultClientContext> = kafka.finish(kafka.base()).create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    for spec in specs {
        let drifted =
            findings.iter().any(|f| matches!(f, Finding::Drift { topic, fixable: true, .. } if *topic == spec.name));
        if !drifted {
            continue;
        }
        // AlterConfigs replaces the topic's whole configuration: start from what is set on it.
        let described =
            futures::executor::block_on(admin.describe_configs(&[ResourceSpecifier::Topic(&spec.name)], &options))?;
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        if let Some(Ok(resource)) = described.into_iter().next() {
            for entry in resource.entries.iter().filter(|e| e.source == ConfigSource::DynamicTopic) {
                if let Some(value) = &entry.value {
                    settings.insert(entry.name.clone(), value.clone());
                }
            }
        }
        for (key, value) in spec.configs() {
            settings.insert(key.to_string(), value);
        }
        let alter =
            settings.iter().fold(AlterConfig::new(ResourceSpecifier::Topic(&spec.name)), |a, (k, v)| a.set(k, v));
        for result in futures::executor::block_on(admin.alter_configs(&[alter], &options))? {
            if let Err((_, code)) = result {
                return Err(TopicError::Create { topic: spec.name.clone(), code });
            }
        }
    }
    Ok(findings)
}
