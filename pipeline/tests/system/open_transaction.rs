//! A transaction left open on the changelog: a zombie (a previous owner frozen, or killed before
//! it could end its transaction) wrote a record there and neither committed nor aborted; a later
//! owner then committed the orders' newer states after it. A read_committed restore ends at the
//! zombie's first record (the last stable offset), before the later owner's states: a task that
//! ran on what it read would fire again the timers the later owner already fired. The restore
//! must wait until the zombie's transaction ends. The chaos runner found this with seed 839750
//! (`docs/reliability.md`).

use std::time::{Duration, Instant};

use crate::support::changelog::{self, accepted, send};
use crate::support::{now_ms, send_all, TestEnv};
use pipeline::workload::{Mix, Workload};
use rdkafka::producer::{BaseProducer, Producer};
use state::{OrderState, OrderStatus};

const PARTITIONS: i32 = 1;
const ORDERS: usize = 10;
/// What dev-materiels logs when a restore waits for a transaction open on its changelog.
const WAITING: &str = "a transaction is still open on the changelog partition";

/// The same order shipped: both timers fired, nothing left to do.
fn shipped(id: &str) -> OrderState {
    OrderState { version: 3, status: Some(OrderStatus::Shipped), timer: None, ..accepted(id, 0) }
}

fn transactional(env: &TestEnv, id: &str) -> BaseProducer {
    let mut config = env.kafka.base();
    config.set("transactional.id", id).set("transaction.timeout.ms", "120000");
    let producer: BaseProducer = env.kafka.finish(config).create().expect("transactional producer");
    producer.init_transactions(Duration::from_secs(30)).expect("init transactions");
    producer
}

#[test]
fn a_restore_waits_for_a_transaction_left_open_on_the_changelog() {
    let env = TestEnv::start("open-txn", PARTITIONS);
    changelog::create(&env);
    let changelog = env.changelog();
    let ids: Vec<String> = (0..ORDERS).map(|i| format!("OPEN-{i:03}")).collect();

    // Committed long ago: the orders accepted, their preparation due now.
    let plain: BaseProducer = env.kafka.finish(env.kafka.base()).create().expect("producer");
    for id in &ids {
        send(&plain, &changelog, 0, &accepted(id, now_ms()));
    }
    plain.flush(Duration::from_secs(30)).expect("committed states written");
    // A zombie's transaction, left open.
    let zombie = transactional(&env, "open-txn-zombie");
    zombie.begin_transaction().expect("begin");
    send(&zombie, &changelog, 0, &accepted(&ids[0], now_ms()));
    zombie.flush(Duration::from_secs(30)).expect("the zombie's record written");
    // A later owner's transaction, committed after it: every order shipped, no timer left.
    let later = transactional(&env, "open-txn-later-owner");
    later.begin_transaction().expect("begin");
    for id in &ids {
        send(&later, &changelog, 0, &shipped(id));
    }
    later.commit_transaction(Duration::from_secs(30)).expect("the later owner's states committed");

    let mut dev = env.spawn_dev_materiels(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dev.log_text().contains(WAITING) && dev.restores().is_empty() {
        dev.assert_running();
        assert!(Instant::now() < deadline, "dev-materiels neither restored nor waited:\n{}", dev.log_tail(40));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The zombie's transaction stays open a few seconds more, then ends (fenced, or timed out:
    // an abort either way).
    std::thread::sleep(Duration::from_secs(3));
    let restored_while_open = !dev.restores().is_empty();
    zombie.abort_transaction(Duration::from_secs(30)).expect("abort the zombie's transaction");
    dev.wait_restored(PARTITIONS, Duration::from_secs(60));

    // A control order: once its update is out, a stale restore would have fired the seeded
    // timers already (they are due at the first punctuation).
    let mut workload = Workload::new(11, "OPEN-CONTROL", now_ms());
    let control = workload.place_phase(1, Mix::CLEAN);
    send_all(&env.producer(), &control);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.updates().iter().any(|u| u.order_id == control[0].order_id) {
        dev.assert_running();
        assert!(Instant::now() < deadline, "the control order was never decided:\n{}", dev.log_tail(40));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));

    let stale: Vec<String> = env
        .updates()
        .into_iter()
        .filter(|u| ids.contains(&u.order_id))
        .map(|u| format!("{} v{} {:?}", u.order_id, u.version, u.status))
        .collect();
    assert!(
        stale.is_empty() && !restored_while_open,
        "the task ran on the state before the open transaction (restored while it was open: \
         {restored_while_open}); it fired timers the later owner had fired: {stale:#?}\n{}",
        dev.log_tail(40)
    );
    let waits = dev.status().map_or(0, |s| s.restore_waits);
    assert!(waits >= 1, "the restore never said it waited (rail_restore_waits_total = {waits})");
    dev.terminate();
}
