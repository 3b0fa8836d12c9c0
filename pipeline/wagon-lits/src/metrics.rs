//! wagon-lits' metrics: typed prometheus-client handles, registered once in the service's
//! registry, bumped by the view materialiser and the command sender, read by `GET /metrics`,
//! `GET /status` and the tests.
//!
//! | family | what |
//! |---|---|
//! | `rail_records_total{topic,direction}` | updates read from `order-updates` (`in`), commands produced to `orders` (`out`) |
//! | `rail_consumer_lag{topic,partition}` | records of `order-updates` the view has not read |
//! | `rail_view_updates_total{result}` | updates applied, stale (already there), undecodable |
//! | `rail_commands_total{path}` | commands sent, by path: `kafka`, `http` (the fallback) |
//! | `rail_kafka_delivery_failures_total` | commands Kafka did not take in time |
//! | `rail_breaker_state{state}` | the circuit breaker in front of Kafka (1 = current) |
//! | `rail_pending_http_decisions`, `rail_pending_http_decision_age_seconds`, `rail_pending_http_decisions_resent_total` | HTTP decisions not on `order-updates` yet, the oldest one's age, and re-sends to `orders` |
//! | `rail_store_keys{store,partition}`, `rail_store_bytes{store,partition}` | the view's size |
//! | `rail_mirror_lag_records{topic,partition}`, `rail_mirror_lag_seconds{topic,partition}` | with `--standby-brokers`: what MirrorMaker 2 has not copied to the standby yet ([`crate::mirror_lag`]) |

use engine::metrics::{ConsumerLag, StorePartition, TopicDirection};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labeled {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// The view materialiser's metrics.
#[derive(Clone, Debug)]
pub struct ViewMetrics {
    /// Records read from `order-updates`.
    pub read: Counter,
    pub applied: Counter,
    pub stale: Counter,
    pub undecodable: Counter,
    pub consumer_lag: ConsumerLag,
    store_keys: Gauge,
    store_bytes: Gauge,
}

impl ViewMetrics {
    /// The view's size (RocksDB's estimates).
    pub fn store_size(&self, size: state::StoreSize) {
        self.store_keys.set(i64::try_from(size.keys).unwrap_or(i64::MAX));
        self.store_bytes.set(i64::try_from(size.bytes).unwrap_or(i64::MAX));
    }
}

/// The command sender's metrics.
#[derive(Clone, Debug)]
pub struct SenderMetrics {
    pub via_kafka: Counter,
    orders_out: Counter,
    pub via_http: Counter,
    pub kafka_failures: Counter,
    /// Commands decided over HTTP sent again to `orders` because `order-updates` had not shown
    /// them yet.
    pub resent: Counter,
    /// Commands decided over HTTP that `order-updates` has not shown yet.
    pub pending: Gauge,
    /// Age of the oldest of them, in seconds.
    pub pending_age_seconds: Gauge,
    /// 1 for the breaker's current state.
    pub breaker: Family<StateLabel, Gauge>,
}

impl SenderMetrics {
    /// A command went to Kafka.
    pub fn sent_by_kafka(&self) {
        self.via_kafka.inc();
        self.orders_out.inc();
    }
}

/// Everything wagon-lits shows on `/metrics`.
#[derive(Clone, Debug)]
pub struct WagonLitsMetrics {
    pub view: ViewMetrics,
    pub sender: SenderMetrics,
}

impl WagonLitsMetrics {
    /// wagon-lits' families, registered in `registry`.
    pub fn new(registry: &mut Registry, orders_topic: &str, updates_topic: &str) -> WagonLitsMetrics {
        let records = Family::<TopicDirection, Counter>::default();
        registry.register("rail_records", "Records read (in) and written (out), by topic", records.clone());
        let view_updates = Family::<Labeled, Counter>::default();
        registry.register(
            "rail_view_updates",
            "Updates read by the view: applied, stale (already there) or undecodable",
            view_updates.clone(),
        );
        let commands = Family::<PathLabel, Counter>::default();
        registry.register(
            "rail_commands",
            "Commands sent, by path: Kafka, or HTTP to dev-materiels (the fallback)",
            commands.clone(),
        );
        let store = Family::<StorePartition, Gauge>::default();
        let store_bytes = Family::<StorePartition, Gauge>::default();
        registry.register("rail_store_keys", "Orders in the view (RocksDB's estimate)", store.clone());
        registry.register("rail_store_bytes", "Bytes of the view in SST files and memtables", store_bytes.clone());
        let view_store = StorePartition { store: "view", partition: -1 };
        let view = ViewMetrics {
            read: records.get_or_create_owned(&TopicDirection { topic: updates_topic.to_string(), direction: "in" }),
            applied: view_updates.get_or_create_owned(&Labeled { result: "applied" }),
            stale: view_updates.get_or_create_owned(&Labeled { result: "stale" }),
            undecodable: view_updates.get_or_create_owned(&Labeled { result: "undecodable" }),
            consumer_lag: ConsumerLag::register(registry, updates_topic),
            store_keys: store.get_or_create_owned(&view_store),
            store_bytes: store_bytes.get_or_create_owned(&view_store),
        };
        let sender = SenderMetrics {
            via_kafka: commands.get_or_create_owned(&PathLabel { path: "kafka" }),
            orders_out: records
                .get_or_create_owned(&TopicDirection { topic: orders_topic.to_string(), direction: "out" }),
            via_http: commands.get_or_create_owned(&PathLabel { path: "http" }),
            kafka_failures: Counter::default(),
            resent: Counter::default(),
            pending: Gauge::default(),
            pending_age_seconds: Gauge::default(),
            breaker: Family::default(),
        };
        registry.register(
            "rail_kafka_delivery_failures",
            "Commands Kafka did not take in time (each sent over HTTP instead, if it can)",
            sender.kafka_failures.clone(),
        );
        registry.register(
            "rail_breaker_state",
            "The circuit breaker in front of Kafka: 1 for its current state",
            sender.breaker.clone(),
        );
        registry.register(
            "rail_pending_http_decisions",
            "Commands decided over HTTP that order-updates has not shown yet (their orders' next commands wait)",
            sender.pending.clone(),
        );
        registry.register(
            "rail_pending_http_decision_age_seconds",
            "Age of the oldest command decided over HTTP that order-updates has not shown yet",
            sender.pending_age_seconds.clone(),
        );
        registry.register(
            "rail_pending_http_decisions_resent",
            "Commands decided over HTTP sent again to orders because order-updates had not shown them",
            sender.resent.clone(),
        );
        WagonLitsMetrics { view, sender }
    }

    /// Metrics registered nowhere (for tools and tests that need none).
    pub fn unregistered() -> WagonLitsMetrics {
        WagonLitsMetrics::new(&mut Registry::default(), "orders", "order-updates")
    }
}
