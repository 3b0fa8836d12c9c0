//! Kafka client settings and topic names, from flags and environment.

use std::time::Duration;

use clap::Args;
use rdkafka::ClientConfig;

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Extra librdkafka client setting, `key=value`; repeat the flag for several, or separate them
    /// with `;` in the environment variable. Applied to every client of the service, after its own
    /// settings. Values are never shown in this help.
    #[arg(long = "kafka-option", env = "KAFKA_OPTIONS", hide_env_values = true, value_delimiter = ';', value_parser = parse_key_value)]
    pub options: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

impl KafkaArgs {
    pub fn new(brokers: impl Into<String>) -> KafkaArgs {
        KafkaArgs { brokers: brokers.into(), options: Vec::new() }
    }

    /// A client configuration with the brokers set. Apply [`KafkaArgs::finish`] after the
    /// caller's own settings so the user's `--kafka-option`s win.
    pub fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Applies the user's extra options on top of `config`.
    pub fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }
}

/// The topics the two services share.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Commands from wagon-lits to dev-materiels.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    pub orders_topic: String,
    /// Decisions from dev-materiels back to wagon-lits.
    #[arg(long, env = "UPDATES_TOPIC", default_value = "order-updates")]
    pub updates_topic: String,
    /// Where commands that cannot be decoded or validated go, with their reason in headers.
    #[arg(long, env = "DLQ_TOPIC", default_value = "orders.dlq")]
    pub dlq_topic: String,
    /// Partitions of `orders` and `order-updates` when the service creates them.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    /// Replication factor of the topics the service creates.
    #[arg(long, env = "TOPIC_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
}

impl Default for TopicArgs {
    fn default() -> Self {
        TopicArgs {
            orders_topic: "orders".into(),
            updates_topic: "order-updates".into(),
            dlq_topic: "orders.dlq".into(),
            partitions: 4,
            replication_factor: 1,
        }
    }
}

/// Largest record the services accept or produce. A 1 MiB poison message must reach the
/// dead-letter topic whole, so topics and clients allow more than Kafka's 1 MB default.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// How long to wait for Kafka in blocking admin and transactional calls.
pub const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);
