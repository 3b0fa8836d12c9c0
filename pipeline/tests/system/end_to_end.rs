//! 10,000 orders end to end on a real broker: the wagon-lits view equals the reference model,
//! and `order-updates` holds each (order, version) exactly once, without gaps.

use std::time::Duration;

use crate::support::{converge, now_ms, send_all, settled, TestEnv};
use pipeline::workload::{Mix, Workload};
use state::{OrderStatus, Outcome};

#[test]
fn ten_thousand_orders_match_the_reference_model_exactly_once() {
    const ORDERS: usize = 10_000;
    let env = TestEnv::start("e2e", 4);
    let view = env.start_view("main");
    // One commit at a time (`--overlap-commits false`; every other system test runs the default,
    // overlapped): checked below, no record joins a transaction while one commits.
    let mut dev = env.spawn_dev_materiels_with(0, &[("OVERLAP_COMMITS", "false")]);
    let producer = env.producer();

    let mut workload = Workload::new(11, "E2E", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let mut sent = workload.place_phase(ORDERS, Mix::REALISTIC);
    send_all(&producer, &sent);
    let unsettled = view.wait_until(&ids, Duration::from_secs(240), settled);
    assert!(
        unsettled.is_empty(),
        "{} orders never settled, e.g. {:?}; log:\n{}",
        unsettled.len(),
        &unsettled[..unsettled.len().min(5)],
        dev.log_text()
    );

    let shipped = crate::support::shipped(&view.view, &ids);
    let deliveries = workload.delivery_phase(&shipped, 0.8, 0.5, 0.05);
    send_all(&producer, &deliveries);
    sent.extend(deliveries);

    let report = converge(&env, &view, &sent);
    dev.assert_running();
    let status = dev.status().expect("dev-materiels' status");
    assert_eq!(status.records_during_commit, 0, "a record was taken during a commit: {status:?}");
    dev.terminate();

    // The replay command rebuilds an equal view from `order-updates` alone.
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_wagon-lits"))
        .args(["replay", "--brokers", &env.kafka.brokers, "--into"])
        .arg(env.dir.path().join("replayed"))
        .arg("--compare-with")
        .arg(env.dir.path().join("wagon-lits-main"))
        .output()
        .expect("running wagon-lits replay");
    let replay_out = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "replay: {replay_out}{}", String::from_utf8_lossy(&replay.stderr));
    assert!(replay_out.contains("the rebuilt view equals the live one"), "{replay_out}");
    eprintln!("end to end: {}", report.summary());
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    assert_eq!(report.unsettled, 0);

    // The run exercised every branch of the machine.
    let updates = env.updates();
    let count = |f: &dyn Fn(&state::OrderUpdate) -> bool| updates.iter().filter(|u| f(u)).count();
    for status in [
        OrderStatus::Accepted,
        OrderStatus::Rejected,
        OrderStatus::InPreparation,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ] {
        assert!(count(&|u| u.status == Some(status) && u.outcome == Outcome::Applied) > 0, "no update to {status}");
    }
    assert!(count(&|u| u.outcome == Outcome::Refused && u.status.is_none()) > 0, "no refusal for an unknown order");
    assert!(
        count(&|u| u.outcome == Outcome::Refused && u.status == Some(OrderStatus::Shipped)) > 0,
        "no late cancellation"
    );
    assert!(
        count(&|u| u.outcome == Outcome::Refused && u.status == Some(OrderStatus::Accepted)) > 0,
        "no early confirmation"
    );
    let resends = sent.len() - sent.iter().map(|c| &c.command_id).collect::<std::collections::HashSet<_>>().len();
    assert!(resends > 0, "the workload sent no command twice");
}
