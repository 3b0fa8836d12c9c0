//! The stream thread's metrics: typed prometheus-client handles, registered once in the
//! service's registry, bumped by the stream thread, read by `GET /metrics`, by `GET /v1/status`
//! ([`StreamMetrics::snapshot`]) and by the tests.
//!
//! | family | what |
//! |---|---|
//! | `rail_records_total{topic,direction}` | records read (`in`) and written (`out`) per topic |
//! | `rail_consumer_lag{topic,partition}` | records behind the last stable offset |
//! | `rail_transactions_total{outcome}` | transactions committed and aborted |
//! | `rail_transaction_duration_seconds{outcome}` | commit and abort calls |
//! | `rail_dead_letters_total` | records sent to the dead-letter topic |
//! | `rail_commands_total{path}` | commands decided, by path: `kafka`, `http` (the fallback) |
//! | `rail_commands_unchanged_total` | commands that changed nothing (an id seen before, a retry) |
//! | `rail_outbox_pending`, `rail_outbox_published_total` | HTTP decisions not yet on Kafka, and published |
//! | `rail_store_keys{store,partition}`, `rail_store_bytes{store,partition}` | state store sizes |
//! | `rail_restored_records_total`, `rail_partitions_restoring`, `rail_active_tasks` | restore progress |
//! | `rail_restores_total{partition}`, `rail_restore_last_records{partition}`, `rail_restore_last_seconds{partition}` | each partition's restores and the last one's size and time |
//! | `rail_assignments_total`, `rail_assigned{partition}` | assignments received; 1 for each partition of the last one |
//! | `rail_standby_partitions`, `rail_standby_records_total` | standby copies |
//! | `rail_producers_replaced_total` | transactional producers replaced (fenced, stuck) |
//! | `rail_records_during_commit_total` | records taken while the previous transaction committed (overlapped commits) |
//! | `rail_restore_waits_total` | restores that found a transaction still open on their changelog partition, and waited |

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// Labels: a topic and a direction (`in`, `out`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicDirection {
    pub topic: String,
    pub direction: &'static str,
}

/// Labels: a topic's partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

/// Labels: a state store (`tasks`, `view`) and its partition (-1 for a store of all of them).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorePartition {
    pub store: &'static str,
    pub partition: i32,
}

/// Labels: a partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Partition {
    pub partition: i32,
}

/// Labels: one word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// Labels: a command's path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandPath {
    pub path: &'static str,
}

/// The topic names the families are labelled with.
#[derive(Debug, Clone)]
pub struct Topics {
    pub orders: String,
    pub updates: String,
    pub changelog: String,
    pub dlq: String,
}

/// Records behind the last stable offset of each partition of a topic, as librdkafka's
/// statistics tell it ([`crate::stats::consumer_lag`]).
#[derive(Clone, Debug)]
pub struct ConsumerLag {
    topic: String,
    family: Family<TopicPartition, Gauge>,
    /// What each consumer (each stream thread) last said, merged into `family`.
    sources: Arc<Mutex<Vec<BTreeMap<i32, i64>>>>,
}

impl ConsumerLag {
    /// Registers `rail_consumer_lag` for `topic` in `registry`.
    pub fn register(registry: &mut Registry, topic: &str) -> ConsumerLag {
        let family = Family::<TopicPartition, Gauge>::default();
        registry.register("rail_consumer_lag", "Records behind the last stable offset, by partition", family.clone());
        ConsumerLag { topic: topic.to_string(), family, sources: Arc::default() }
    }

    /// The lag of each partition fetched now (the others are dropped).
    pub fn set(&self, lag: &BTreeMap<i32, i64>) {
        self.set_of(0, lag);
    }

    /// The lag of each partition consumer `source` (a stream thread) fetches now; the others'
    /// partitions stay.
    pub fn set_of(&self, source: usize, lag: &BTreeMap<i32, i64>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() <= source {
            sources.resize(source + 1, BTreeMap::new());
        }
        sources[source] = lag.clone();
        self.family.clear();
        for (partition, lag) in sources.iter().flatten() {
            self.family.get_or_create(&TopicPartition { topic: self.topic.clone(), partition: *partition }).set(*lag);
        }
    }

    pub fn get(&self, partition: i32) -> Option<i64> {
        self.family.get(&TopicPartition { topic: self.topic.clone(), partition }).map(|g| g.get())
    }
}

fn transaction_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Live metrics of one stream thread.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    /// Records read from `orders`.
    pub records: Counter,
    /// Updates emitted to `order-updates` (commands and timers), and their changelog records.
    pub updates: Counter,
    changelog_out: Counter,
    /// Commands read from `orders` and decided (valid ones).
    pub commands_kafka: Counter,
    /// Commands that changed nothing (already seen).
    pub unchanged: Counter,
    pub dead_letters: Counter,
    dead_letters_out: Counter,
    pub commits: Counter,
    pub aborts: Counter,
    pub commit_seconds: Histogram,
    pub abort_seconds: Histogram,
    /// Changelog records replayed by restores.
    pub restored_records: Counter,
    /// Tasks restored and processing.
    pub active_tasks: Gauge,
    /// Partitions assigned and waiting for their restore.
    pub partitions_restoring: Gauge,
    /// Commands received over HTTP and decided (the fallback path).
    pub direct_commands: Counter,
    /// Outbox entries published to Kafka after the fact.
    pub outbox_published: Counter,
    /// Decisions taken over HTTP still waiting in the outbox.
    pub outbox_pending: Gauge,
    /// Changelog records applied to standby copies.
    pub standby_records: Counter,
    /// Partitions kept as standby copies.
    pub standby_partitions: Gauge,
    /// Transactional producers replaced after a fatal error or a stuck call.
    pub producers_replaced: Counter,
    /// Records taken into a transaction while the previous one committed.
    pub records_during_commit: Counter,
    /// Restores that found a transaction still open on their changelog partition.
    pub restore_waits: Counter,
    /// Assignments received from the group.
    pub assignments: Counter,
    assigned: Family<Partition, Gauge>,
    restores: Family<Partition, Counter>,
    restore_last_records: Family<Partition, Gauge>,
    restore_last_seconds: Family<Partition, Gauge<f64, AtomicU64>>,
    store_keys: Family<StorePartition, Gauge>,
    store_bytes: Family<StorePartition, Gauge>,
    /// Consumer lag of each assigned partition of `orders`.
    pub consumer_lag: ConsumerLag,
    /// The last assignment and each partition's restores, as [`StreamStats`] shows them (the
    /// families hold the same, for `/metrics`).
    seen: Arc<Mutex<Seen>>,
    /// Each stream thread's last report, summed into the gauges.
    threads: Arc<Mutex<Vec<ThreadReport>>>,
}

impl StreamMetrics {
    /// The stream thread's families, registered in `registry`.
    pub fn new(registry: &mut Registry, topics: &Topics) -> StreamMetrics {
        let records_family = Family::<TopicDirection, Counter>::default();
        registry.register("rail_records", "Records read (in) and written (out), by topic", records_family.clone());
        let io = |topic: &str, direction: &'static str| {
            records_family.get_or_create_owned(&TopicDirection { topic: topic.to_string(), direction })
        };
        let transactions = Family::<Outcome, Counter>::default();
        registry.register("rail_transactions", "Transactions committed and aborted", transactions.clone());
        let durations = Family::<Outcome, Histogram>::new_with_constructor(transaction_histogram as fn() -> Histogram);
        registry.register(
            "rail_transaction_duration_seconds",
            "Time from asking for a commit or an abort to Kafka's answer",
            durations.clone(),
        );
        let commands = Family::<CommandPath, Counter>::default();
        registry.register("rail_commands", "Commands decided, by the path they came by", commands.clone());
        let m = StreamMetrics {
            records: io(&topics.orders, "in"),
            updates: io(&topics.updates, "out"),
            changelog_out: io(&topics.changelog, "out"),
            dead_letters_out: io(&topics.dlq, "out"),
            commands_kafka: commands.get_or_create_owned(&CommandPath { path: "kafka" }),
            direct_commands: commands.get_or_create_owned(&CommandPath { path: "http" }),
            unchanged: Counter::default(),
            dead_letters: Counter::default(),
            commits: transactions.get_or_create_owned(&Outcome { outcome: "committed" }),
            aborts: transactions.get_or_create_owned(&Outcome { outcome: "aborted" }),
            commit_seconds: durations.get_or_create_owned(&Outcome { outcome: "committed" }),
            abort_seconds: durations.get_or_create_owned(&Outcome { outcome: "aborted" }),
            restored_records: Counter::default(),
            active_tasks: Gauge::default(),
            partitions_restoring: Gauge::default(),
            outbox_published: Counter::default(),
            outbox_pending: Gauge::default(),
            standby_records: Counter::default(),
            standby_partitions: Gauge::default(),
            producers_replaced: Counter::default(),
            records_during_commit: Counter::default(),
            restore_waits: Counter::default(),
            assignments: Counter::default(),
            assigned: Family::default(),
            restores: Family::default(),
            restore_last_records: Family::default(),
            restore_last_seconds: Family::default(),
            store_keys: Family::default(),
            store_bytes: Family::default(),
            consumer_lag: ConsumerLag::register(registry, &topics.orders),
            seen: Arc::default(),
            threads: Arc::default(),
        };
        registry.register(
            "rail_commands_unchanged",
            "Commands that changed nothing (an id seen before, a retried placement)",
            m.unchanged.clone(),
        );
        registry.register("rail_dead_letters", "Records sent to the dead-letter topic", m.dead_letters.clone());
        registry.register(
            "rail_restored_records",
            "Changelog records replayed by restores",
            m.restored_records.clone(),
        );
        registry.register("rail_active_tasks", "Tasks restored and processing", m.active_tasks.clone());
        registry.register(
            "rail_partitions_restoring",
            "Partitions assigned and waiting for their restore",
            m.partitions_restoring.clone(),
        );
        registry.register(
            "rail_outbox_published",
            "Decisions taken over HTTP published to Kafka afterwards",
            m.outbox_published.clone(),
        );
        registry.register(
            "rail_outbox_pending",
            "Decisions taken over HTTP not yet on Kafka",
            m.outbox_pending.clone(),
        );
        registry.register(
            "rail_standby_records",
            "Changelog records applied to standby copies",
            m.standby_records.clone(),
        );
        registry.register("rail_standby_partitions", "Partitions kept as standby copies", m.standby_partitions.clone());
        registry.register(
            "rail_producers_replaced",
            "Transactional producers replaced (fenced, or stuck in a call)",
            m.producers_replaced.clone(),
        );
        registry.register(
            "rail_records_during_commit",
            "Records taken into a transaction while the previous one committed (overlapped commits)",
            m.records_during_commit.clone(),
        );
        registry.register(
            "rail_restore_waits",
            "Restores that found a transaction still open on their changelog partition, and waited for it to end",
            m.restore_waits.clone(),
        );
        registry.register("rail_assignments", "Assignments received from the consumer group", m.assignments.clone());
        registry.register("rail_assigned", "1 for each partition of the last assignment", m.assigned.clone());
        registry.register("rail_restores", "Restores completed, by partition", m.restores.clone());
        registry.register(
            "rail_restore_last_records",
            "Changelog records the last restore of the partition replayed",
            m.restore_last_records.clone(),
        );
        registry.register(
            "rail_restore_last_seconds",
            "How long the last restore of the partition took",
            m.restore_last_seconds.clone(),
        );
        registry.register("rail_store_keys", "Orders in each state store (RocksDB's estimate)", m.store_keys.clone());
        registry.register(
            "rail_store_bytes",
            "Bytes of each state store in SST files and memtables",
            m.store_bytes.clone(),
        );
        m
    }

    /// Metrics registered nowhere (for tools and tests that need none).
    pub fn unregistered() -> StreamMetrics {
        let topics = Topics {
            orders: "orders".into(),
            updates: "order-updates".into(),
            changelog: "changelog".into(),
            dlq: "dlq".into(),
        };
        StreamMetrics::new(&mut Registry::default(), &topics)
    }

    /// An update and its changelog record were produced.
    pub fn update_produced(&self) {
        self.updates.inc();
        self.changelog_out.inc();
    }

    /// A record went to the dead-letter topic.
    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
        self.dead_letters_out.inc();
    }

    /// A restore of `partition` completed.
    pub fn restore_done(&self, partition: i32, records: u64, elapsed: Duration) {
        let p = Partition { partition };
        self.restored_records.inc_by(records);
        self.restores.get_or_create(&p).inc();
        self.restore_last_records.get_or_create(&p).set(i64::try_from(records).unwrap_or(i64::MAX));
        self.restore_last_seconds.get_or_create(&p).set(elapsed.as_secs_f64());
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let record = seen.1.entry(partition).or_default();
        record.count += 1;
        record.last_records = records;
        record.last_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    }

    /// The process runs `threads` stream threads: each reports its own tasks, and the gauges
    /// show their sums.
    pub fn stream_threads(&self, threads: usize) {
        self.with_threads(true, |reports| *reports = vec![ThreadReport::default(); threads]);
    }

    /// Runs `f` on the threads' reports (grown to hold `thread`), then sets the gauges from them;
    /// the families by partition too if `partitions` (an assignment, new store sizes: not at
    /// every turn of the loop, where a scrape could find them half rebuilt).
    fn report(&self, thread: usize, partitions: bool, f: impl FnOnce(&mut ThreadReport)) {
        self.with_threads(partitions, |reports| {
            if reports.len() <= thread {
                reports.resize(thread + 1, ThreadReport::default());
            }
            f(&mut reports[thread]);
        });
    }

    fn with_threads(&self, partitions: bool, f: impl FnOnce(&mut Vec<ThreadReport>)) {
        let mut reports = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut reports);
        let sum = |field: fn(&ThreadReport) -> i64| reports.iter().map(field).sum::<i64>();
        self.active_tasks.set(sum(|r| r.running));
        self.partitions_restoring.set(sum(|r| r.restoring));
        self.outbox_pending.set(sum(|r| r.outbox));
        self.standby_partitions.set(sum(|r| r.standby));
        if !partitions {
            return;
        }
        let assigned: std::collections::BTreeSet<i32> =
            reports.iter().flat_map(|r| r.assigned.iter().flatten().copied()).collect();
        self.assigned.clear();
        for partition in &assigned {
            self.assigned.get_or_create(&Partition { partition: *partition }).set(1);
        }
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).0 = assigned.into_iter().collect();
        self.store_keys.clear();
        self.store_bytes.clear();
        for (partition, size) in reports.iter().flat_map(|r| r.sizes.iter()) {
            let labels = StorePartition { store: "tasks", partition: *partition };
            self.store_keys.get_or_create(&labels).set(i64::try_from(size.keys).unwrap_or(i64::MAX));
            self.store_bytes.get_or_create(&labels).set(i64::try_from(size.bytes).unwrap_or(i64::MAX));
        }
    }

    /// Stream thread `thread`'s tasks: running, restoring, and the outbox entries they hold.
    pub fn tasks(&self, thread: usize, running: usize, restoring: usize, outbox: usize) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.report(thread, false, |r| {
            r.running = count(running);
            r.restoring = count(restoring);
            r.outbox = count(outbox);
        });
    }

    /// Stream thread `thread` keeps `partitions` standby copies.
    pub fn standbys(&self, thread: usize, partitions: usize) {
        self.report(thread, false, |r| r.standby = i64::try_from(partitions).unwrap_or(i64::MAX));
    }

    /// The group assigned `partitions` to stream thread `thread`.
    pub fn assignment(&self, thread: usize, partitions: &[i32]) {
        self.assignments.inc();
        self.report(thread, true, |r| r.assigned = Some(partitions.to_vec()));
    }

    /// The sizes of stream thread `thread`'s task stores, by partition.
    pub fn store_sizes(&self, thread: usize, sizes: &BTreeMap<i32, state::StoreSize>) {
        self.report(thread, true, |r| r.sizes = sizes.clone());
    }

    /// Whether every stream thread has had an assignment and restored all of it.
    pub fn is_ready(&self) -> bool {
        let reports = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        !reports.is_empty() && reports.iter().all(|r| r.assigned.is_some()) && self.partitions_restoring.get() == 0
    }

    /// The counters at one moment (`GET /v1/status`, the demo, the logs).
    pub fn snapshot(&self) -> StreamStats {
        let gauge = |g: &Gauge| u64::try_from(g.get()).unwrap_or(0);
        // One guard for both fields: two `lock()` calls in one expression would both live to its
        // end, and the second would wait for the first forever.
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        StreamStats {
            records: self.records.get(),
            updates: self.updates.get(),
            unchanged: self.unchanged.get(),
            dead_letters: self.dead_letters.get(),
            commits: self.commits.get(),
            aborts: self.aborts.get(),
            restored_records: self.restored_records.get(),
            active_tasks: gauge(&self.active_tasks),
            direct_commands: self.direct_commands.get(),
            outbox_published: self.outbox_published.get(),
            outbox_pending: gauge(&self.outbox_pending),
            standby_records: self.standby_records.get(),
            standby_partitions: gauge(&self.standby_partitions),
            producers_replaced: self.producers_replaced.get(),
            records_during_commit: self.records_during_commit.get(),
            restore_waits: self.restore_waits.get(),
            assignments: self.assignments.get(),
            assigned: seen.0,
            restores: seen.1,
        }
    }
}

/// The last assignment, and each partition's restores.
type Seen = (Vec<i32>, BTreeMap<i32, RestoreRecord>);

/// What one stream thread last reported of its tasks.
#[derive(Debug, Clone, Default)]
struct ThreadReport {
    running: i64,
    restoring: i64,
    outbox: i64,
    standby: i64,
    /// Its last assignment; `None` before the first.
    assigned: Option<Vec<i32>>,
    sizes: BTreeMap<i32, state::StoreSize>,
}

/// One partition's restores, in [`StreamStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// Restores completed.
    pub count: u64,
    /// Changelog records the last one replayed.
    pub last_records: u64,
    /// How long the last one took, in milliseconds.
    pub last_ms: u64,
}

/// A copy of [`StreamMetrics`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    pub records: u64,
    pub updates: u64,
    pub unchanged: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub aborts: u64,
    pub restored_records: u64,
    pub active_tasks: u64,
    pub direct_commands: u64,
    pub outbox_published: u64,
    pub outbox_pending: u64,
    pub standby_records: u64,
    pub standby_partitions: u64,
    pub producers_replaced: u64,
    /// Records taken into a transaction while the previous one committed.
    #[serde(default)]
    pub records_during_commit: u64,
    /// Restores that waited for a transaction open on their changelog partition.
    #[serde(default)]
    pub restore_waits: u64,
    pub assignments: u64,
    /// The partitions of the last assignment.
    pub assigned: Vec<i32>,
    /// Each partition's restores.
    pub restores: BTreeMap<i32, RestoreRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_and_the_scrape_say_what_the_stream_thread_did() {
        let mut registry = Registry::default();
        let topics = Topics { orders: "o".into(), updates: "u".into(), changelog: "c".into(), dlq: "d".into() };
        let m = StreamMetrics::new(&mut registry, &topics);
        m.stream_threads(1);
        m.assignment(0, &[3, 1]);
        m.restore_done(1, 40, Duration::from_millis(250));
        m.restore_done(1, 2, Duration::from_millis(5));
        m.restore_done(3, 0, Duration::from_millis(1));
        m.records.inc();
        m.update_produced();
        m.tasks(0, 2, 0, 0);
        let s = m.snapshot();
        assert_eq!(s.assigned, [1, 3]);
        assert_eq!(s.restores[&1], RestoreRecord { count: 2, last_records: 2, last_ms: 5 });
        assert_eq!((s.records, s.updates, s.restored_records, s.assignments), (1, 1, 42, 1));
        assert!(m.is_ready());
        // The same, read twice in a row (a lock held by the first read would hang the second).
        assert_eq!(m.snapshot(), s);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "rail_records_total{topic=\"o\",direction=\"in\"} 1",
            "rail_records_total{topic=\"c\",direction=\"out\"} 1",
            "rail_restores_total{partition=\"1\"} 2",
            "rail_assigned{partition=\"3\"} 1",
            "rail_restored_records_total 42",
        ] {
            assert!(text.contains(line), "{line} is not in:\n{text}");
        }
    }

    #[test]
    fn the_gauges_sum_what_each_stream_thread_reports() {
        let m = StreamMetrics::unregistered();
        m.stream_threads(2);
        m.assignment(0, &[0, 2]);
        m.tasks(0, 1, 1, 3);
        assert!(!m.is_ready(), "thread 1 has had no assignment yet");
        m.assignment(1, &[1]);
        m.tasks(1, 1, 0, 2);
        assert!(!m.is_ready(), "thread 0 is still restoring a partition");
        m.tasks(0, 2, 0, 3);
        m.standbys(1, 2);
        m.consumer_lag.set_of(0, &BTreeMap::from([(0, 5), (2, 7)]));
        m.consumer_lag.set_of(1, &BTreeMap::from([(1, 11)]));
        assert!(m.is_ready());
        let s = m.snapshot();
        assert_eq!(s.assigned, [0, 1, 2]);
        assert_eq!((s.active_tasks, s.outbox_pending, s.standby_partitions), (3, 5, 2));
        assert_eq!([0, 1, 2].map(|p| m.consumer_lag.get(p)), [Some(5), Some(11), Some(7)]);
        // A new assignment of one thread leaves the other's partitions where they are.
        m.assignment(1, &[]);
        m.tasks(1, 0, 0, 0);
        let s = m.snapshot();
        assert_eq!((s.assigned, s.active_tasks, s.assignments), (vec![0, 2], 2, 3));
    }
}
