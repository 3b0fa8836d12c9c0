//! Failover pause, with and without standby copies: two dev-materiels instances share the
//! partitions, the state holds N orders, one instance is killed (SIGKILL), and the pause is the
//! time from the kill to the first update on `order-updates` for a command sent to one of its
//! partitions, now processed by the survivor. It is the group's session timeout (the kill is
//! noticed) plus the survivor's restore: of the whole changelog of those partitions without
//! standby copies, of the last moments only with them.
//!
//! `FAILOVER_ORDERS` sets N (default 20,000; the figures in docs/failover.md use 1,000,000):
//!
//! ```text
//! FAILOVER_ORDERS=1000000 cargo test --release -p pipeline --test system failover -- --nocapture
//! ```
//!
//! It checks that the survivor's restore read far fewer records with standby copies, and that
//! every probe command got exactly one update. Timings are reported, not asserted.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::support::{now_ms, send_all, TestEnv};
use pipeline::workload::{Mix, Workload};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use state::{Command, CommandEnvelope, OrderLine, PlaceOrder};
use wire::partitioner::partition_for;

const PARTITIONS: i32 = 4;

struct Measure {
    pause: Duration,
    /// From the kill to the survivor's new assignment: the group noticing (the session timeout,
    /// counted from the dead member's last heartbeat).
    detected: Duration,
    /// Changelog records the survivor read to take over, and how long that took (the restores
    /// of its new partitions run one after the other).
    restored_records: u64,
    restore_ms: u64,
    fill_seconds: f64,
}

fn probe(i: usize, run: &str) -> CommandEnvelope {
    let place = PlaceOrder {
        wagon_id: "WL-PROBE".into(),
        requested_by: "failover".into(),
        lines: vec![OrderLine { sku: state::catalogue::DEFAULT_SKUS[0].into(), quantity: 1 }],
    };
    let id = format!("PROBE-{run}-{i}");
    CommandEnvelope::new(format!("{id}:c"), id, now_ms(), Command::PlaceOrder(place))
}

fn measure(standby: bool, orders: usize) -> Measure {
    let run = if standby { "standby" } else { "cold" };
    let mut env = TestEnv::start(&format!("failover-{run}"), PARTITIONS);
    // Orders stay Accepted: one changelog record per order, no timers firing during the fill.
    env.timers_ms = (3_600_000, 3_600_000);
    if standby {
        env.dev_args.push("--standby".into());
    }
    let producer = env.producer();
    let mut a = env.spawn_instance(0, 0);
    // The survivor runs two stream threads: thread 0 keeps the standby copies, and a partition
    // taken over by thread 1 must get its warm store from thread 0.
    let mut b = env.spawn_instance_with(1, 0, &[("STREAM_THREADS", "2")]);
    // Both members in the group, each with its share of the partitions.
    let start = Instant::now();
    loop {
        let (owned_a, owned_b) = (a.assigned(), b.assigned());
        let owned: BTreeSet<i32> = owned_a.iter().chain(owned_b.iter()).copied().collect();
        let shared = !owned_a.is_empty() && !owned_b.is_empty();
        if shared && owned.len() == PARTITIONS as usize && owned_a.len() + owned_b.len() == PARTITIONS as usize {
            break;
        }
        a.assert_running();
        b.assert_running();
        assert!(start.elapsed() < Duration::from_secs(90), "the two instances did not share the partitions");
        std::thread::sleep(Duration::from_millis(200));
    }
    let a_partitions: BTreeSet<i32> = a.assigned().into_iter().collect();

    // The state: `orders` orders, all processed.
    let fill = Instant::now();
    let mut workload = Workload::new(77, format!("FILL-{run}"), now_ms());
    let commands = workload.place_phase(orders, Mix::CLEAN);
    for chunk in commands.chunks(50_000) {
        send_all(&producer, chunk);
    }
    let updates_topic = env.topics.updates_topic.clone();
    let mut watcher = UpdateWatcher::new(&env, &updates_topic, Offset::Beginning);
    watcher.wait_for(orders, Duration::from_secs(1_800));
    let fill_seconds = fill.elapsed().as_secs_f64();
    eprintln!("failover ({run}): {orders} orders in state after {fill_seconds:.1} s; instance 0 owns {a_partitions:?}");
    // Standby copies get a moment to catch up, as they would in a running system.
    std::thread::sleep(Duration::from_secs(2));
    let restores_before = b.restore_records();

    // Kill the owner; send probes to its partitions until the survivor answers one.
    let probes: Vec<CommandEnvelope> = (0..)
        .map(|i| probe(i, run))
        .filter(|c| a_partitions.contains(&partition_for(c.order_id.as_bytes(), PARTITIONS)))
        .take(3_000)
        .collect();
    let killed = Instant::now();
    a.kill();
    let mut sent = 0;
    let mut pending = Vec::new();
    let mut detected = None;
    let pause = loop {
        if sent < probes.len() {
            pending.push(producer.send(&probes[sent]).expect("queue a probe"));
            sent += 1;
        }
        if detected.is_none() && b.assigned().iter().any(|p| a_partitions.contains(p)) {
            detected = Some(killed.elapsed());
        }
        if watcher.poll(Duration::from_millis(10)).iter().any(|id| id.starts_with("PROBE-")) {
            break killed.elapsed();
        }
        b.assert_running();
        assert!(
            killed.elapsed() < Duration::from_secs(300),
            "no update from the survivor after 300 s (it owns {:?}); its log ends:\n{}",
            b.assigned(),
            b.log_tail(60)
        );
    };
    for result in futures::executor::block_on(futures::future::join_all(pending)) {
        result.expect("delivery future").expect("Kafka took the probe");
    }
    // Every probe sent gets exactly one update.
    let probe_updates = watcher.wait_for_prefix("PROBE-", sent, Duration::from_secs(120));
    assert!(
        probe_updates.values().all(|n| *n == 1) && probe_updates.len() == sent,
        "{} probes sent, updates per probe: {:?}",
        sent,
        probe_updates.values().filter(|n| **n != 1).count()
    );
    // The survivor's restores of the partitions it took over, from its metrics.
    let taken_over: Vec<(i32, u64, u64)> = b
        .restore_records()
        .into_iter()
        .filter(|(p, r)| a_partitions.contains(p) && r.count > restores_before.get(p).map_or(0, |before| before.count))
        .map(|(p, r)| (p, r.last_records, r.last_ms))
        .collect();
    b.assert_running();
    b.terminate();
    Measure {
        pause,
        detected: detected.unwrap_or(pause),
        restored_records: taken_over.iter().map(|(_, r, _)| r).sum(),
        restore_ms: taken_over.iter().map(|(_, _, ms)| ms).sum(),
        fill_seconds,
    }
}

/// Reads `order-updates` (read_committed) and counts updates per order.
struct UpdateWatcher {
    consumer: BaseConsumer,
    counts: HashMap<String, usize>,
}

impl UpdateWatcher {
    fn new(env: &TestEnv, topic: &str, from: Offset) -> UpdateWatcher {
        let mut config = env.kafka.base();
        config
            .set("group.id", "failover-watcher")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = env.kafka.finish(config).create().expect("watcher");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, from).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        UpdateWatcher { consumer, counts: HashMap::new() }
    }

    /// The order ids of the updates read within `wait`.
    fn poll(&mut self, wait: Duration) -> Vec<String> {
        let mut ids = Vec::new();
        let mut timeout = wait;
        while let Some(Ok(message)) = self.consumer.poll(timeout) {
            let id = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            *self.counts.entry(id.clone()).or_default() += 1;
            ids.push(id);
            timeout = Duration::ZERO;
        }
        ids
    }

    fn wait_for(&mut self, orders: usize, timeout: Duration) {
        let start = Instant::now();
        while self.counts.len() < orders {
            assert!(start.elapsed() < timeout, "only {} of {orders} orders updated", self.counts.len());
            self.poll(Duration::from_millis(200));
        }
    }

    fn wait_for_prefix(&mut self, prefix: &str, n: usize, timeout: Duration) -> HashMap<String, usize> {
        let start = Instant::now();
        loop {
            self.poll(Duration::from_millis(200));
            let seen: HashMap<String, usize> =
                self.counts.iter().filter(|(id, _)| id.starts_with(prefix)).map(|(k, v)| (k.clone(), *v)).collect();
            if seen.len() >= n || start.elapsed() > timeout {
                return seen;
            }
        }
    }
}

#[test]
fn failover_pause_with_and_without_standby_copies() {
    let orders: usize = std::env::var("FAILOVER_ORDERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let cold = measure(false, orders);
    let warm = measure(true, orders);
    for (label, m) in [("without standby", &cold), ("with standby", &warm)] {
        eprintln!(
            "failover: orders={orders} {label}: pause={} ms = detection {} ms (session timeout 6000 ms after the last heartbeat) + takeover {} ms; survivor restored {} records in {} ms (fill took {:.1} s)",
            m.pause.as_millis(),
            m.detected.as_millis(),
            (m.pause - m.detected).as_millis(),
            m.restored_records,
            m.restore_ms,
            m.fill_seconds
        );
    }
    assert!(
        cold.restored_records as usize >= orders / 4,
        "without standby the survivor restores its new partitions in full"
    );
    assert!(
        warm.restored_records * 10 < cold.restored_records,
        "standby copies should leave little to restore: {} vs {}",
        warm.restored_records,
        cold.restored_records
    );
}
