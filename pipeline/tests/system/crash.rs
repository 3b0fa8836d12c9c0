//! dev-materiels killed with SIGKILL at random moments while it processes 20,000 orders, and
//! restarted each time: nothing is lost or doubled, and each restart replays only a sliver of the
//! changelog.

use std::time::Duration;

use crate::support::{converge, now_ms, send_paced, settled, TestEnv};
use pipeline::workload::{Mix, Workload};
use rand::{Rng, SeedableRng};

#[test]
fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    const ORDERS: usize = 20_000;
    const KILLS_WHILE_PLACING: usize = 5;
    const KILLS_WHILE_DELIVERING: usize = 2;
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed: {seed} (set CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let env = TestEnv::start("crash", 4);
    let view = env.start_view("main");
    let producer = env.producer();
    // Incarnations alternate one and two stream threads: the partitions move between the
    // threads' state directories from one to the next.
    let spawn = |incarnation: usize| {
        let threads = if incarnation % 2 == 1 { "2" } else { "1" };
        env.spawn_dev_materiels_with(incarnation, &[("STREAM_THREADS", threads)])
    };
    let mut incarnation = 0;
    let mut dev = spawn(incarnation);
    let mut processes = Vec::new();

    let mut workload = Workload::new(seed, "CRASH", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let mut sent = workload.place_phase(ORDERS, Mix::REALISTIC);

    // Phase one: place the orders at a steady rate while dev-materiels is killed and restarted.
    let kills_done = std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(&producer, &sent, 1_000));
        let mut kills = 0;
        while kills < KILLS_WHILE_PLACING {
            // Let the new incarnation get going, then kill it at a random moment.
            dev.wait_restored(env.topics.partitions, Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(rng.random_range(300..3_000)));
            dev.assert_running();
            dev.kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
            incarnation += 1;
            processes.push(std::mem::replace(&mut dev, spawn(incarnation)));
        }
        sender.join().expect("sender");
        kills
    });
    let unsettled = view.wait_until(&ids, Duration::from_secs(300), settled);
    assert!(
        unsettled.is_empty(),
        "{} orders never settled, e.g. {:?}",
        unsettled.len(),
        &unsettled[..unsettled.len().min(5)]
    );

    // Phase two: deliveries, with more kills.
    let shipped = crate::support::shipped(&view.view, &ids);
    let deliveries = workload.delivery_phase(&shipped, 0.8, 0.5, 0.05);
    let more_kills = std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(&producer, &deliveries, 2_000));
        let mut kills = 0;
        while kills < KILLS_WHILE_DELIVERING {
            dev.wait_restored(env.topics.partitions, Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(rng.random_range(300..2_000)));
            dev.assert_running();
            dev.kill();
            kills += 1;
            incarnation += 1;
            processes.push(std::mem::replace(&mut dev, spawn(incarnation)));
        }
        sender.join().expect("sender");
        kills
    });
    sent.extend(deliveries);

    let report = converge(&env, &view, &sent);
    dev.wait_restored(env.topics.partitions, Duration::from_secs(60));
    dev.terminate();
    processes.push(dev);
    let kills = kills_done + more_kills;
    eprintln!("crash test: kills={kills} {}", report.summary());
    assert!(kills >= 5);
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);

    // Each restart replayed far fewer changelog records than the changelog holds.
    let changelog_records = env.read_all(&env.changelog()).len() as u64;
    for (i, process) in processes.iter().enumerate().skip(1) {
        let restores = process.restores();
        let replayed: u64 = restores.iter().map(|(_, n)| n).sum();
        eprintln!("restart {i}: replayed {replayed} changelog records over {} partitions (changelog holds {changelog_records})", restores.len());
        assert!(!restores.is_empty(), "restart {i} restored nothing; log:\n{}", process.log_text());
        assert!(
            replayed * 10 < changelog_records,
            "restart {i} replayed {replayed} of {changelog_records} changelog records"
        );
    }
}

#[test]
fn a_crash_between_the_kafka_commit_and_the_store_write_replays_only_what_was_missed() {
    const ORDERS: usize = 3_000;
    let env = TestEnv::start("crash-window", 2);
    let view = env.start_view("main");
    let producer = env.producer();
    let mut workload = Workload::new(17, "WINDOW", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let sent = workload.place_phase(ORDERS, Mix::REALISTIC);

    // The first incarnation aborts right after its 10th commit, before writing RocksDB, while
    // orders arrive at a steady rate (so that each transaction holds a slice of them).
    let mut first = env.spawn_dev_materiels_with(0, &[("FAILPOINTS", "engine::after_commit=9*off->1*return->off")]);
    first.wait_restored(env.topics.partitions, Duration::from_secs(60));
    std::thread::scope(|scope| {
        scope.spawn(|| send_paced(&producer, &sent, 1_000));
        assert!(first.wait_exit(Duration::from_secs(120)), "the fault was not injected; log:\n{}", first.log_text());
    });
    assert!(first.log_text().contains("fault injection"), "{}", first.log_text());

    let mut second = env.spawn_dev_materiels(1);
    let restores = second.wait_restored(env.topics.partitions, Duration::from_secs(60));
    let replayed: u64 = restores.iter().map(|(_, n)| n).sum();
    let changelog_now = env.read_all(&env.changelog()).len() as u64;
    eprintln!("after a crash in the commit window: replayed {replayed} changelog records of {changelog_now}");
    assert!(replayed > 0, "the records of the last committed transaction were not replayed");

    assert!(view.wait_until(&ids, Duration::from_secs(120), settled).is_empty(), "orders did not settle");
    let report = converge(&env, &view, &sent);
    second.terminate();
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    let changelog_end = env.read_all(&env.changelog()).len() as u64;
    assert!(replayed * 10 < changelog_end, "replayed {replayed} of {changelog_end}");
}

#[test]
fn a_transactional_call_that_never_returns_is_left_behind_and_nothing_is_lost_or_doubled() {
    const ORDERS: usize = 3_000;
    let mut env = TestEnv::start("wedge", 2);
    // The watchdog's patience, short for the test (30 s past the calls' timeout otherwise).
    env.dev_args = vec!["--transaction-call-stuck-after-ms".into(), "3000".into()];
    let view = env.start_view("main");
    let producer = env.producer();
    let mut workload = Workload::new(23, "WEDGE", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let sent = workload.place_phase(ORDERS, Mix::REALISTIC);

    // The 10th send_offsets_to_transaction never returns (librdkafka#5456 after a coordinator
    // went away): the stream thread must give up on it, fence the stuck producer with a new one
    // and process that transaction again, in the same process.
    let mut dev = env.spawn_dev_materiels_with(0, &[("FAILPOINTS", "engine::send_offsets=9*off->1*return->off")]);
    dev.wait_restored(env.topics.partitions, Duration::from_secs(60));
    send_paced(&producer, &sent, 1_000);
    assert!(view.wait_until(&ids, Duration::from_secs(120), settled).is_empty(), "orders did not settle");
    let report = converge(&env, &view, &sent);
    dev.assert_running();
    let status = dev.status().expect("dev-materiels' status");
    let log = dev.log_text();
    dev.terminate();
    assert!(log.contains("fault injection"), "the fault was not injected; log:\n{log}");
    assert_eq!(status.producers_replaced, 1, "the stuck call was not left behind; log:\n{log}");
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
}
