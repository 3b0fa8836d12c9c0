//! A three-broker cluster (replication factor 3, min.insync.replicas 2, transaction state log
//! replicated): one broker at a time is killed and restarted while orders flow; nothing is lost
//! or doubled.

use std::time::Duration;

use crate::support::{converge, now_ms, send_paced, settled, TestEnv};
use kafka_harness::ClusterConfig;
use pipeline::workload::{Mix, Workload};

#[test]
fn killing_one_broker_at_a_time_loses_and_doubles_nothing() {
    const ORDERS: usize = 3_000;
    let mut env = TestEnv::start_with("three-brokers", 4, ClusterConfig { nodes: 3, ..ClusterConfig::default() });
    let view = env.start_view("main");
    let producer = env.producer();
    let mut dev = env.spawn_dev_materiels(0);
    let mut workload = Workload::new(33, "TRIO", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let sent = workload.place_phase(ORDERS, Mix::REALISTIC);
    dev.wait_restored(env.topics.partitions, Duration::from_secs(90));

    std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(&producer, &sent, 300));
        for node in [2, 3, 1] {
            std::thread::sleep(Duration::from_secs(2));
            eprintln!("killing broker {node}");
            env.cluster.kill(node).expect("kill a broker");
            std::thread::sleep(Duration::from_secs(3));
            env.cluster.restart(node).expect("restart the broker");
            eprintln!("broker {node} back");
        }
        sender.join().expect("sender");
    });
    let unsettled = view.wait_until(&ids, Duration::from_secs(240), settled);
    assert!(unsettled.is_empty(), "{} orders never settled; log:\n{}", unsettled.len(), dev.log_tail(80));
    let report = converge(&env, &view, &sent);
    dev.assert_running();
    eprintln!("three brokers: {}", report.summary());
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    dev.terminate();
}
