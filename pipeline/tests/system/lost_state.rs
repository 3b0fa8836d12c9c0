//! dev-materiels' state directory deleted: a restart restores the very same state from the
//! changelog, and processing goes on from there.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{converge, now_ms, send_all, settled, TestEnv};
use pipeline::workload::{Mix, Workload};
use state::{OrderState, OrderStore, StoreOptions};

fn snapshot(env: &TestEnv) -> BTreeMap<String, OrderState> {
    let mut all = BTreeMap::new();
    for p in 0..env.topics.partitions {
        let store = OrderStore::open(&env.dev_state_dir().join(format!("partition-{p}")), &StoreOptions::default())
            .expect("open store");
        for state in store.all().expect("scan store") {
            all.insert(state.order_id.clone(), state);
        }
    }
    all
}

#[test]
fn a_lost_state_directory_is_restored_from_the_changelog() {
    const ORDERS: usize = 3_000;
    let env = TestEnv::start("lost-state", 4);
    let view = env.start_view("main");
    let producer = env.producer();
    let mut dev = env.spawn_dev_materiels(0);

    let mut workload = Workload::new(5, "LOST", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let mut sent = workload.place_phase(ORDERS, Mix::REALISTIC);
    send_all(&producer, &sent);
    assert!(view.wait_until(&ids, Duration::from_secs(180), settled).is_empty(), "orders did not settle");
    dev.terminate();

    let before = snapshot(&env);
    assert!(before.len() >= ORDERS, "the stores hold {} orders", before.len());
    std::fs::remove_dir_all(env.dev_state_dir()).expect("delete the state directory");

    let mut dev = env.spawn_dev_materiels(1);
    let restores = dev.wait_restored(env.topics.partitions, Duration::from_secs(120));
    let replayed: u64 = restores.iter().map(|(_, n)| n).sum();
    let changelog = env.read_all(&env.changelog()).len() as u64;
    eprintln!("full restore replayed {replayed} changelog records (changelog holds {changelog})");
    assert_eq!(replayed, changelog, "a lost store is rebuilt from the whole changelog");
    dev.terminate();
    assert_eq!(snapshot(&env), before, "the restored state differs from the lost one");

    // A clean restart replays nothing, and the restored state serves the next commands.
    let mut dev = env.spawn_dev_materiels(2);
    let restores = dev.wait_restored(env.topics.partitions, Duration::from_secs(60));
    assert_eq!(restores.iter().map(|(_, n)| n).sum::<u64>(), 0, "a restart after a clean stop replays nothing");
    let shipped = crate::support::shipped(&view.view, &ids);
    let deliveries = workload.delivery_phase(&shipped, 0.9, 0.5, 0.05);
    send_all(&producer, &deliveries);
    sent.extend(deliveries);
    let report = converge(&env, &view, &sent);
    dev.terminate();
    eprintln!("lost state: {}", report.summary());
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
}
