//! What both services show on `GET /metrics` (Prometheus, OpenMetrics text format).
//!
//! The services keep their counters anyway (atomics the loops bump, for `/status` and the logs);
//! the collectors here read them at each scrape, so a scrape costs the loops nothing. The HTTP
//! families (`http_requests`, `http_request_duration_seconds`) come from the server itself
//! ([`http_fallback::HttpMetrics`]).
//!
//! | family | service | what |
//! |---|---|---|
//! | `rail_records_total{topic,direction}` | both | records read (`in`) and written (`out`) per topic |
//! | `rail_consumer_lag{topic,partition}` | both | records behind the last stable offset |
//! | `rail_transactions_total{outcome}` | dev-materiels | transactions committed and aborted |
//! | `rail_transaction_duration_seconds{outcome}` | dev-materiels | commit and abort calls |
//! | `rail_dead_letters_total` | dev-materiels | records sent to the dead-letter topic |
//! | `rail_commands_total{path}` | both | commands by path: `kafka`, `http` (the fallback) |
//! | `rail_breaker_state{state}` | wagon-lits | the circuit breaker in front of Kafka (1 = current) |
//! | `rail_outbox_pending`, `rail_outbox_published_total` | dev-materiels | HTTP decisions not yet on Kafka |
//! | `rail_store_keys{store,partition}`, `rail_store_bytes{store,partition}` | both | state store size |
//! | `rail_restored_records_total`, `rail_partitions_restoring`, `rail_active_tasks` | dev-materiels | restore progress |
//! | `rail_standby_partitions`, `rail_standby_records_total` | dev-materiels | standby copies |
//! | `rail_producers_replaced_total` | dev-materiels | transactional producers replaced (fenced, stuck) |
//! | `rail_view_updates_total{result}` | wagon-lits | updates applied, stale, undecodable |
//! | `rail_pending_http_decisions`, `rail_pending_http_decision_age_seconds`, `rail_pending_http_decisions_resent_total` | wagon-lits | HTTP decisions not on `order-updates` yet, the oldest one's age, and re-sends to `orders` |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use state::ViewStore;

use crate::runtime::StreamMetrics;
use crate::wagon_lits::sender::{BreakerState, CommandSender};
use crate::wagon_lits::view::ViewMetrics;

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

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One family of labelled series of a kind.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let child = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value.max(0) as u64).encode(child)?,
            _ => ConstGauge::new(value).encode(child)?,
        }
    }
    Ok(())
}

/// `rail_consumer_lag` of `topic`'s partitions, from a consumer's latest statistics.
fn consumer_lag_family(
    encoder: &mut DescriptorEncoder,
    topic: &str,
    lag: &std::sync::Mutex<std::collections::BTreeMap<i32, i64>>,
) -> fmt::Result {
    let series: Vec<_> = lag
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(p, lag)| (TopicPartition { topic: topic.to_string(), partition: *p }, *lag))
        .collect();
    family(
        encoder,
        "rail_consumer_lag",
        "Records behind the last stable offset, by partition",
        MetricType::Gauge,
        series,
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicDirection {
    topic: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicPartition {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorePartition {
    store: &'static str,
    partition: i32,
}

/// The topic names both collectors label with.
#[derive(Debug, Clone)]
pub struct Topics {
    pub orders: String,
    pub updates: String,
    pub changelog: String,
    pub dlq: String,
}

/// dev-materiels' families, from its stream thread's [`StreamMetrics`].
#[derive(Debug)]
pub struct DevMaterielsCollector {
    pub metrics: Arc<StreamMetrics>,
    pub topics: Topics,
}

impl Collector for DevMaterielsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let m = &self.metrics;
        let t = &self.topics;
        let records = [
            (TopicDirection { topic: t.orders.clone(), direction: "in" }, get(&m.records)),
            (TopicDirection { topic: t.updates.clone(), direction: "out" }, get(&m.updates)),
            (TopicDirection { topic: t.changelog.clone(), direction: "out" }, get(&m.updates)),
            (TopicDirection { topic: t.dlq.clone(), direction: "out" }, get(&m.dead_letters)),
        ];
        family(
            &mut e,
            "rail_records",
            "Records read (in) and written (out), by topic",
            MetricType::Counter,
            records.into_iter().map(|(l, v)| (l, v as i64)),
        )?;
        consumer_lag_family(&mut e, &t.orders, &m.consumer_lag)?;
        family(
            &mut e,
            "rail_transactions",
            "Transactions committed and aborted",
            MetricType::Counter,
            [([("outcome", "committed")], get(&m.commits) as i64), ([("outcome", "aborted")], get(&m.aborts) as i64)],
        )?;
        {
            let mut family = e.encode_descriptor(
                "rail_transaction_duration_seconds",
                "Time from asking for a commit or an abort to Kafka's answer",
                None,
                MetricType::Histogram,
            )?;
            m.commit_seconds.encode(family.encode_family(&[("outcome", "committed")])?)?;
            m.abort_seconds.encode(family.encode_family(&[("outcome", "aborted")])?)?;
        }
        counter(&mut e, "rail_dead_letters", "Records sent to the dead-letter topic", get(&m.dead_letters))?;
        family(
            &mut e,
            "rail_commands",
            "Commands decided, by the path they came by",
            MetricType::Counter,
            [
                ([("path", "kafka")], get(&m.records).saturating_sub(get(&m.dead_letters)) as i64),
                ([("path", "http")], get(&m.direct_commands) as i64),
            ],
        )?;
        gauge(
            &mut e,
            "rail_outbox_pending",
            "Decisions taken over HTTP not yet on Kafka",
            get(&m.outbox_pending) as i64,
        )?;
        counter(
            &mut e,
            "rail_outbox_published",
            "Decisions taken over HTTP published to Kafka afterwards",
            get(&m.outbox_published),
        )?;
        let stores = m.stores.lock().unwrap_or_else(|p| p.into_inner()).clone();
        family(
            &mut e,
            "rail_store_keys",
            "Orders in each state store (RocksDB's estimate)",
            MetricType::Gauge,
            stores.iter().map(|(p, s)| (StorePartition { store: "tasks", partition: *p }, s.keys as i64)),
        )?;
        family(
            &mut e,
            "rail_store_bytes",
            "Bytes of each state store in SST files and memtables",
            MetricType::Gauge,
            stores.iter().map(|(p, s)| (StorePartition { store: "tasks", partition: *p }, s.bytes as i64)),
        )?;
        counter(&mut e, "rail_restored_records", "Changelog records replayed by restores", get(&m.restored_records))?;
        gauge(
            &mut e,
            "rail_partitions_restoring",
            "Partitions assigned and waiting for their restore",
            get(&m.partitions_restoring) as i64,
        )?;
        gauge(&mut e, "rail_active_tasks", "Tasks restored and processing", get(&m.active_tasks) as i64)?;
        gauge(
            &mut e,
            "rail_standby_partitions",
            "Partitions kept as standby copies",
            get(&m.standby_partitions) as i64,
        )?;
        counter(
            &mut e,
            "rail_standby_records",
            "Changelog records applied to standby copies",
            get(&m.standby_records),
        )?;
        counter(
            &mut e,
            "rail_producers_replaced",
            "Transactional producers replaced (fenced, or stuck in a call)",
            get(&m.producers_replaced),
        )?;
        Ok(())
    }
}

/// wagon-lits' families, from its sender, view and materialiser.
pub struct WagonLitsCollector {
    pub sender: Arc<CommandSender>,
    pub view: Arc<ViewStore>,
    pub materialiser: Arc<ViewMetrics>,
    pub orders_topic: String,
    pub updates_topic: String,
}

impl fmt::Debug for WagonLitsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WagonLitsCollector").field("view", &self.view.path()).finish_non_exhaustive()
    }
}

impl Collector for WagonLitsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.sender.metrics;
        let v = &self.materialiser;
        family(
            &mut e,
            "rail_records",
            "Records read (in) and written (out), by topic",
            MetricType::Counter,
            [
                (TopicDirection { topic: self.updates_topic.clone(), direction: "in" }, get(&v.read) as i64),
                (TopicDirection { topic: self.orders_topic.clone(), direction: "out" }, get(&s.via_kafka) as i64),
            ],
        )?;
        consumer_lag_family(&mut e, &self.updates_topic, &v.consumer_lag)?;
        family(
            &mut e,
            "rail_commands",
            "Commands sent, by path: Kafka, or HTTP to dev-materiels (the fallback)",
            MetricType::Counter,
            [([("path", "kafka")], get(&s.via_kafka) as i64), ([("path", "http")], get(&s.via_http) as i64)],
        )?;
        counter(
            &mut e,
            "rail_kafka_delivery_failures",
            "Commands Kafka did not take in time (each sent over HTTP instead, if it can)",
            get(&s.kafka_failures),
        )?;
        let current = self.sender.breaker.state();
        family(
            &mut e,
            "rail_breaker_state",
            "The circuit breaker in front of Kafka: 1 for its current state",
            MetricType::Gauge,
            [
                ([("state", "closed")], BreakerState::Closed),
                ([("state", "open")], BreakerState::Open),
                ([("state", "half-open")], BreakerState::HalfOpen),
            ]
            .map(|(l, state)| (l, i64::from(state == current))),
        )?;
        family(
            &mut e,
            "rail_view_updates",
            "Updates read by the view: applied, stale (already there) or undecodable",
            MetricType::Counter,
            [
                ([("result", "applied")], get(&v.applied) as i64),
                ([("result", "stale")], get(&v.stale) as i64),
                ([("result", "undecodable")], get(&v.undecodable) as i64),
            ],
        )?;
        let pending = self.view.pending_all();
        gauge(
            &mut e,
            "rail_pending_http_decisions",
            "Commands decided over HTTP that order-updates has not shown yet (their orders' next commands wait)",
            pending.len() as i64,
        )?;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        gauge(
            &mut e,
            "rail_pending_http_decision_age_seconds",
            "Age of the oldest command decided over HTTP that order-updates has not shown yet",
            pending.iter().map(|(_, p)| now.saturating_sub(p.since_ms) / 1000).max().unwrap_or(0) as i64,
        )?;
        counter(
            &mut e,
            "rail_pending_http_decisions_resent",
            "Commands decided over HTTP sent again to orders because order-updates had not shown them",
            get(&s.resent),
        )?;
        let size = self.view.size();
        let view = StorePartition { store: "view", partition: -1 };
        family(
            &mut e,
            "rail_store_keys",
            "Orders in the view (RocksDB's estimate)",
            MetricType::Gauge,
            [(view.clone(), size.keys as i64)],
        )?;
        family(
            &mut e,
            "rail_store_bytes",
            "Bytes of the view in SST files and memtables",
            MetricType::Gauge,
            [(view, size.bytes as i64)],
        )?;
        Ok(())
    }
}

/// A registry with `collector` and the HTTP server's families; returns it with the HTTP metrics
/// to give the server.
pub fn registry(
    collector: impl Collector,
    route_of: http_fallback::RouteOf,
) -> (Arc<Registry>, http_fallback::HttpMetrics) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let http = http_fallback::HttpMetrics::new(&mut registry, route_of);
    (Arc::new(registry), http)
}
