//! A zombie: a processor frozen (SIGSTOP) longer than the group's session timeout while orders
//! flow, whose partition goes to another instance meanwhile, then thawed (SIGCONT). It wakes up
//! believing it still owns the partition, with timers that fell due while it slept. Nothing it
//! does as a zombie may reach `order-updates`: its transactions must be fenced by the group
//! generation they carry, even those made of timers alone on a partition whose input offsets were
//! never committed (a quiet partition whose committed offset expired, `offsets.retention.minutes`,
//! while its changelog still holds orders waiting on timers; the test writes that changelog).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::{changelog, compare_view, now_ms, oracle, send_paced, wire_commands, TestEnv};
use pipeline::workload::{Mix, Workload};
use rdkafka::producer::{BaseProducer, Producer};
use state::OrderStatus;
use wire::partitioner::partition_for;

const PARTITIONS: i32 = 2;
/// The partition the zombie owns: quiet, its state only in the changelog.
const QUIET: i32 = 0;
const SEEDED_ORDERS: usize = 20;

/// Order ids that land on `partition`.
fn ids_on(partition: i32, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i:05}"))
        .filter(|id| partition_for(id.as_bytes(), PARTITIONS) == partition)
        .take(n)
        .collect()
}

/// Writes accepted orders, waiting on their preparation timer due at `due_ms`, into the
/// changelog partition of `QUIET`: the state a task restores, with no input offset committed.
fn seed_changelog(env: &TestEnv, ids: &[String], due_ms: u64) {
    let producer: BaseProducer = env.kafka.finish(env.kafka.base()).create().expect("producer");
    let changelog = env.changelog();
    for id in ids {
        changelog::send(&producer, &changelog, QUIET, &changelog::accepted(id, due_ms));
    }
    producer.flush(Duration::from_secs(30)).expect("changelog records written");
}

/// Waits (up to 4 minutes) until the oracle finds every flowing command applied and every timer
/// fired; the seeded orders, which came from no command, are judged apart.
fn converge_flowing(env: &TestEnv, flowing: &[state::CommandEnvelope], seeded: &[String]) -> oracle::Report {
    let sent = wire_commands(flowing);
    let rules = env.oracle_rules();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let updates: Vec<oracle::Update> =
            env.wire_updates().into_iter().filter(|u| !seeded.contains(&u.order_id)).collect();
        let report = oracle::check(&sent, &updates, &rules);
        if (report.lost_commands == 0 && report.unsettled == 0) || Instant::now() > deadline {
            return report;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Waits until `f` holds, or panics with `what`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_thawed_zombie_publishes_nothing() {
    let env = TestEnv::start("zombie", PARTITIONS);
    changelog::create(&env);
    let seeded = ids_on(QUIET, "QUIET", SEEDED_ORDERS);
    let due_ms = now_ms() + 40_000;
    seed_changelog(&env, &seeded, due_ms);

    // The zombie-to-be starts alone and restores both partitions; the second instance joins and
    // the range assignor gives the first member (instance-0) partition 0, the other partition 1.
    let mut zombie = env.spawn_instance(0, 0);
    zombie.wait_restored(PARTITIONS, Duration::from_secs(60));
    let mut owner = env.spawn_instance(1, 0);
    wait_for("instance-1 to own partition 1 and instance-0 partition 0", Duration::from_secs(60), || {
        zombie.assert_running();
        owner.assert_running();
        owner.assigned() == vec![1] && zombie.assigned() == vec![QUIET] && owner.restores().iter().any(|(p, _)| *p == 1)
    });

    // Orders flow to partition 1 all along.
    let producer = env.producer();
    let mut workload = Workload::new(5, "FLOW", now_ms());
    let flowing: Vec<_> = workload
        .place_phase(4_000, Mix::REALISTIC)
        .into_iter()
        .filter(|c| partition_for(c.order_id.as_bytes(), PARTITIONS) == 1)
        .take(1_500)
        .collect();
    let view = env.start_view("main");
    let mut aborts_before = 0;
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(&producer, &flowing, 50));
        // Frozen shortly before the seeded timers fall due: they fall due while it sleeps.
        let left = due_ms.saturating_sub(now_ms());
        assert!(left > 6_000, "the instances took too long to start: the timers fall due in {left} ms");
        let freeze_at = Duration::from_millis(left - 4_000);
        std::thread::sleep(freeze_at);
        eprintln!("zombie: freezing instance-0 (SIGSTOP)");
        zombie.pause();
        // The group moves partition 0 to instance-1, which restores the seeded orders and fires
        // their timers: versions 2 (InPreparation) and 3 (Shipped) of each.
        wait_for("instance-1 to take partition 0 and fire its timers", Duration::from_secs(90), || {
            owner.assert_running();
            let updates = env.updates();
            seeded.iter().all(|id| updates.iter().any(|u| &u.order_id == id && u.status == Some(OrderStatus::Shipped)))
        });
        eprintln!("zombie: the seeded orders shipped on instance-1; thawing instance-0 (SIGCONT)");
        aborts_before = zombie.status().map_or(0, |s| s.aborts + s.producers_replaced);
        zombie.resume();
        // Whatever the zombie does now happens while orders keep flowing.
        std::thread::sleep(Duration::from_secs(15));
        sender.join().expect("sender");
    });

    // The seeded orders: versions 2 and 3 once each, in order, and nothing after.
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let updates = env.updates();
    for u in &updates {
        if let Some(id) = seeded.iter().find(|id| **id == u.order_id) {
            versions.entry(id.as_str()).or_default().push(u.version);
        }
    }
    let wrong: Vec<String> = seeded
        .iter()
        .filter(|id| versions.get(id.as_str()).map(Vec::as_slice) != Some(&[2, 3][..]))
        .map(|id| format!("{id}: versions {:?} on order-updates", versions.get(id.as_str())))
        .collect();
    assert!(
        wrong.is_empty(),
        "the zombie's timer updates reached order-updates: {wrong:#?}\n--- zombie log:\n{}",
        zombie.log_tail(60)
    );
    // The flowing orders: exactly once, per the oracle, and in the view as it says.
    let report = converge_flowing(&env, &flowing, &seeded);
    eprintln!("zombie: flowing orders {}", report.summary());
    assert!(report.holds(), "{}: {:#?}", report.summary(), report.examples);
    let diffs: Vec<String> = compare_view(&view.view, &report.expected)
        .into_iter()
        .filter(|d| !seeded.iter().any(|id| d.starts_with(id.as_str())))
        .collect();
    assert!(diffs.is_empty(), "the view differs from the oracle: {:#?}", &diffs[..diffs.len().min(10)]);

    // The zombie did try: it woke up with due timers, and its transaction was refused (its
    // metrics count the abort).
    let aborts_after = zombie.status().map_or(0, |s| s.aborts + s.producers_replaced);
    assert!(
        aborts_after > aborts_before,
        "the zombie never tried to commit after it woke up: the test did not exercise it\n{}",
        zombie.log_tail(60)
    );
    owner.assert_running();
    zombie.terminate();
    owner.terminate();
}
