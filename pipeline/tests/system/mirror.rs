//! MirrorMaker 2 between two real clusters (the first step of multi-cluster operation, issue
//! 16): while dev-materiels works on the primary, MirrorMaker copies `orders`, `order-updates`,
//! the changelog and the dead-letter topic to the standby, exactly once (KIP-618 on the target,
//! `read_committed` on the source), and is SIGKILLed and restarted mid-run. Each partition of
//! each topic on the standby ends with exactly the committed records of the primary, in their
//! order: nothing lost, nothing doubled, nothing aborted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_harness::mirror::{MirrorConfig, MirrorMaker};
use kafka_harness::{Cluster, ClusterConfig};
use pipeline::workload::{Mix, Workload};

use crate::support::{now_ms, read_topic, send_paced, Record, TestEnv};

type Copies = BTreeMap<i32, Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>>;

fn by_partition(records: Vec<Record>) -> Copies {
    let mut out = Copies::new();
    for r in records {
        out.entry(r.partition).or_default().push((r.key, r.value));
    }
    out
}

#[test]
fn mirror_maker_copies_every_committed_record_once_in_order_through_its_own_crash() {
    const ORDERS: usize = 2_000;
    let env = TestEnv::start("mirror", 2);
    let standby = Cluster::start(ClusterConfig::default()).expect("the standby cluster");
    let standby_kafka = engine::kafka::KafkaArgs::new(standby.bootstrap_servers());
    let topics = [
        env.topics.orders_topic.clone(),
        env.topics.updates_topic.clone(),
        env.topics.dlq_topic.clone(),
        env.changelog(),
    ];
    let regex = topics.iter().map(|t| t.replace('.', "\\.")).collect::<Vec<_>>().join("|");
    let started = Instant::now();
    let mut mirror =
        MirrorMaker::start(&MirrorConfig::new(env.cluster.bootstrap_servers(), standby.bootstrap_servers(), &regex))
            .expect("starting MirrorMaker 2");
    eprintln!("MirrorMaker 2 started in {:?} (log {})", started.elapsed(), mirror.log().display());
    let mut dev = env.spawn_dev_materiels(0);
    dev.wait_restored(env.topics.partitions, Duration::from_secs(90));

    let producer = env.producer();
    let mut workload = Workload::new(41, "MIRROR", now_ms());
    let sent = workload.place_phase(ORDERS, Mix::REALISTIC);
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(&producer, &sent, 200));
        std::thread::sleep(Duration::from_secs(4));
        mirror.kill();
        eprintln!("MirrorMaker 2 SIGKILLed");
        std::thread::sleep(Duration::from_secs(2));
        let restarted = Instant::now();
        mirror.restart().expect("restarting MirrorMaker 2");
        eprintln!("MirrorMaker 2 back in {:?}", restarted.elapsed());
        sender.join().expect("the sender");
    });
    // Timers fire on the primary for a while after the last command: let them finish.
    std::thread::sleep(Duration::from_secs(10));

    let deadline = Instant::now() + Duration::from_secs(120);
    for topic in &topics {
        let primary = by_partition(read_topic(&env.kafka, topic));
        let total: usize = primary.values().map(Vec::len).sum();
        let copies = loop {
            let copies = by_partition(read_topic(&standby_kafka, topic));
            let copied: usize = copies.values().map(Vec::len).sum();
            if copied >= total || Instant::now() > deadline {
                break copies;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        let copied: usize = copies.values().map(Vec::len).sum();
        eprintln!("{topic}: {total} committed records on the primary, {copied} on the standby");
        let strays: Vec<&i32> = copies.keys().filter(|p| !primary.contains_key(p)).collect();
        assert!(strays.is_empty(), "{topic} partitions {strays:?}: records on the standby, none on the primary");
        for (partition, records) in &primary {
            let copy = copies.get(partition).map(Vec::as_slice).unwrap_or_default();
            let lost = records.len().saturating_sub(copy.len());
            let extra = copy.len().saturating_sub(records.len());
            let first_difference = records.iter().zip(copy).position(|(a, b)| a != b);
            assert!(
                lost == 0 && extra == 0 && first_difference.is_none(),
                "{topic} partition {partition}: {} records on the primary, {} on the standby, first difference at {first_difference:?}",
                records.len(),
                copy.len()
            );
        }
    }
    dev.assert_running();
}
