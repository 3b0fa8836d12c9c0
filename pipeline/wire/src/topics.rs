//! The topics of the system, as both services name and create them.

use clap::Args;

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
    /// How long `orders` and `order-updates` keep their records (the view and the replay
    /// command read `order-updates` from its beginning: keep it long enough to rebuild).
    #[arg(long, env = "TOPIC_RETENTION_MS", default_value_t = 7 * 24 * 3_600_000)]
    pub retention_ms: i64,
    /// How long the dead-letter topic keeps its records.
    #[arg(long, env = "DLQ_RETENTION_MS", default_value_t = 30 * 24 * 3_600_000)]
    pub dlq_retention_ms: i64,
}

impl Default for TopicArgs {
    fn default() -> Self {
        TopicArgs {
            orders_topic: "orders".into(),
            updates_topic: "order-updates".into(),
            dlq_topic: "orders.dlq".into(),
            partitions: 4,
            replication_factor: 1,
            retention_ms: 7 * 24 * 3_600_000,
            dlq_retention_ms: 30 * 24 * 3_600_000,
        }
    }
}

/// Largest record the services accept or produce. A 1 MiB poison message must reach the
/// dead-letter topic whole, so topics and clients allow more than Kafka's 1 MB default.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// A topic the service needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// A compacted topic (a changelog) rather than a deleted-by-time one.
    pub compacted: bool,
    /// How long a deleted-by-time topic keeps its records; the broker's default if `None`.
    pub retention_ms: Option<i64>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i32) -> TopicSpec {
        TopicSpec { name: name.into(), partitions, replication_factor, compacted: false, retention_ms: None }
    }

    pub fn compacted(mut self) -> TopicSpec {
        self.compacted = true;
        self
    }

    pub fn retention_ms(mut self, retention_ms: i64) -> TopicSpec {
        self.retention_ms = Some(retention_ms);
        self
    }

    /// The topic-level settings it must have.
    pub fn configs(&self) -> Vec<(&'static str, String)> {
        let mut configs = vec![
            ("cleanup.policy", if self.compacted { "compact" } else { "delete" }.to_string()),
            ("max.message.bytes", MAX_MESSAGE_BYTES.to_string()),
            // With three replicas, a write needs two: one broker may go, none is lost.
            ("min.insync.replicas", if self.replication_factor >= 3 { "2" } else { "1" }.to_string()),
        ];
        if let (false, Some(ms)) = (self.compacted, self.retention_ms) {
            configs.push(("retention.ms", ms.to_string()));
        }
        configs
    }
}

/// The topics of the system as `topics` describes them: `orders`, `order-updates`, the
/// dead-letter topic (one partition) and dev-materiels' compacted changelog `changelog` (as many
/// partitions as `orders`).
pub fn system_topics(topics: &TopicArgs, changelog: &str) -> Vec<TopicSpec> {
    let mut specs = service_topics(topics);
    specs.push(changelog_topic(topics, changelog, topics.partitions));
    specs
}

/// The topics both services use: `orders`, `order-updates` and the dead-letter topic.
pub fn service_topics(topics: &TopicArgs) -> Vec<TopicSpec> {
    let rf = topics.replication_factor;
    vec![
        TopicSpec::new(&topics.orders_topic, topics.partitions, rf).retention_ms(topics.retention_ms),
        TopicSpec::new(&topics.updates_topic, topics.partitions, rf).retention_ms(topics.retention_ms),
        TopicSpec::new(&topics.dlq_topic, 1, rf).retention_ms(topics.dlq_retention_ms),
    ]
}

/// dev-materiels' compacted changelog, with `partitions` (those of `orders`).
pub fn changelog_topic(topics: &TopicArgs, name: &str, partitions: i32) -> TopicSpec {
    TopicSpec::new(name, partitions, topics.replication_factor).compacted()
}

/// The changelog topic of dev-materiels' order store, named as Kafka Streams would name it.
pub fn changelog_name(application_id: &str) -> String {
    format!("{application_id}-order-store-changelog")
}
