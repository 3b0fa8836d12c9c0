//! librdkafka's statistics (`statistics.interval.ms`), the part the metrics use.

/// The part of librdkafka's statistics JSON (`statistics.interval.ms`) the metrics use: read
/// here rather than with rdkafka's full `Statistics`, which fails on fields newer librdkafka
/// versions change.
#[derive(Debug, serde::Deserialize)]
struct RawStatistics {
    #[serde(default)]
    topics: std::collections::HashMap<String, RawTopic>,
}

#[derive(Debug, serde::Deserialize)]
struct RawTopic {
    #[serde(default)]
    partitions: std::collections::HashMap<String, RawPartition>,
}

#[derive(Debug, serde::Deserialize)]
struct RawPartition {
    #[serde(default)]
    fetch_state: String,
    #[serde(default = "unknown")]
    ls_offset: i64,
    #[serde(default = "unknown")]
    app_offset: i64,
}

fn unknown() -> i64 {
    -1
}

/// How far each fetched partition of `topic` is behind its last stable offset, from a statistics
/// JSON: the records after the consumer's position (as Kafka Streams' `records-lag`; the
/// group's committed offsets go with transactions, which librdkafka's consumer does not see).
pub fn consumer_lag(json: &[u8], topic: &str) -> Option<std::collections::BTreeMap<i32, i64>> {
    let stats: RawStatistics = serde_json::from_slice(json).ok()?;
    let topic = stats.topics.get(topic)?;
    Some(
        topic
            .partitions
            .iter()
            .filter_map(|(p, s)| p.parse::<i32>().ok().filter(|p| *p >= 0).map(|p| (p, s)))
            .filter(|(_, s)| s.fetch_state != "none" && s.ls_offset >= 0)
            .filter(|(_, s)| s.app_offset >= 0)
            .map(|(p, s)| (p, (s.ls_offset - s.app_offset).max(0)))
            .collect(),
    )
}
