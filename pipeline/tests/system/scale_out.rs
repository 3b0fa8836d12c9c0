//! Several dev-materiels instances in one consumer group: partitions move when one joins, leaves
//! cleanly or dies, their state follows through the changelog, and exactly once holds across the
//! moves (zombies fenced by the group generation carried with the offsets).

use std::time::Duration;

use crate::support::{converge, now_ms, send_paced, settled, TestEnv};
use pipeline::workload::{Mix, Workload};

#[test]
fn partitions_move_between_instances_without_loss_or_duplicates() {
    const ORDERS: usize = 6_000;
    let env = TestEnv::start("scale-out", 6);
    let view = env.start_view("main");
    let producer = env.producer();
    let mut workload = Workload::new(21, "SCALE", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let mut sent = workload.place_phase(ORDERS, Mix::REALISTIC);

    let mut a = env.spawn_instance(0, 0);
    let mut b = env.spawn_instance(1, 0);
    let mut c_instance = None;
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(&producer, &sent, 800));
        std::thread::sleep(Duration::from_secs(3));
        eprintln!("a third instance joins");
        // The survivor runs two stream threads: the partitions move between threads as between
        // processes.
        c_instance = Some(env.spawn_instance_with(2, 0, &[("STREAM_THREADS", "2")]));
        std::thread::sleep(Duration::from_secs(3));
        eprintln!("instance 0 leaves cleanly (SIGTERM)");
        a.terminate();
        std::thread::sleep(Duration::from_secs(1));
        eprintln!("instance 1 dies (SIGKILL)");
        b.kill();
        sender.join().expect("sender");
    });
    let mut c = c_instance.expect("third instance");
    let unsettled = view.wait_until(&ids, Duration::from_secs(240), settled);
    assert!(unsettled.is_empty(), "{} orders never settled; survivor log:\n{}", unsettled.len(), c.log_tail(60));
    assert_eq!(
        c.restores().iter().map(|(p, _)| *p).collect::<std::collections::BTreeSet<_>>().len(),
        6,
        "the survivor took every partition"
    );

    let shipped = crate::support::shipped(&view.view, &ids);
    let deliveries = workload.delivery_phase(&shipped, 0.8, 0.5, 0.05);
    // A new instance joins while the deliveries come in.
    let mut d = env.spawn_instance_with(3, 0, &[("STREAM_THREADS", "2")]);
    send_paced(&producer, &deliveries, 2_000);
    sent.extend(deliveries);
    let report = converge(&env, &view, &sent);
    c.assert_running();
    d.assert_running();
    eprintln!("scale-out: {}", report.summary());
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    c.terminate();
    d.terminate();
}
