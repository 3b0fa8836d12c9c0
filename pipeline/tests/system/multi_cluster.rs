//! Multi-cluster operation (issue 16; docs/multi-cluster.md): a primary and a standby cluster,
//! MirrorMaker 2 copying `orders`, `order-updates`, the changelog and the dead-letter topic from
//! the primary to the standby, both services on the primary with `--replicated`.
//!
//! - **The copy watched**: `/readyz/failover` says what a failover would cost; then (the standby
//!   frozen 8 s or more) that it cannot say; then (the standby back) that MirrorMaker 2 has caught
//!   up within 90 s.
//! - **Failover**: while orders are placed through wagon-lits' API at a steady rate, MirrorMaker 2
//!   is frozen (SIGSTOP) for 6 s or more, until `/readyz/failover` counts the commands the primary
//!   answered and the copy lacks (at least 20), then every broker of the primary is SIGKILLed and
//!   MirrorMaker 2 with them, still frozen; the services are moved to the standby
//!   (`dev-materiels cluster take-over`, then `wagon-lits cluster take-over`) and started there.
//! - **Failback**: the primary's brokers come back, its topics are deleted (`dev-materiels
//!   cluster clear`), MirrorMaker 2 copies the standby to it while orders go on, then a switchover
//!   moves both services back (the take-overs with `--force`).
//!
//! After each move, every command the API accepted must have exactly one update of its command
//! id on that cluster's `order-updates`, each order's versions 1..n with no gap or duplicate, and
//! wagon-lits' view must equal both the oracle's and a rebuild from that `order-updates`. Prints
//! the time to the first order decided after each move, and the commands wagon-lits sent again.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_harness::mirror::{MirrorConfig, MirrorMaker};
use serde_json::json;
use state::{CommandEnvelope, OrderLine, PlaceOrder};

use crate::support::http::{Answer, Http, TOKEN};
use crate::support::{compare_view, converge_report, now_ms, TestEnv};

/// What the placer sent: accepted by the API (202), or not known (an error or no answer).
#[derive(Default)]
struct Placed {
    accepted: Vec<CommandEnvelope>,
    uncertain: HashSet<String>,
    over_http: usize,
}

fn place(api: &Http, i: usize, placed: &Mutex<Placed>) {
    let order_id = format!("MC-{i:05}");
    let command_id = format!("mc-place-{i:05}");
    let lines = vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 1 + (i % 20) as u32 }];
    let body = json!({"order_id": order_id, "wagon_id": "WL-9", "requested_by": "agent", "lines": lines});
    let answer = api.try_post_with("/orders", body.to_string(), &[("Idempotency-Key", &command_id)]);
    let mut placed = placed.lock().unwrap_or_else(|p| p.into_inner());
    match answer {
        Ok(answer) if answer.status == 202 => {
            if answer.body["path"] == "http" {
                placed.over_http += 1;
            }
            let place = PlaceOrder { wagon_id: "WL-9".into(), requested_by: "agent".into(), lines };
            placed.accepted.push(CommandEnvelope::new(command_id, order_id, 0, state::Command::PlaceOrder(place)));
        }
        // Refused (503 while no cluster takes commands) or no answer (wagon-lits moving): the
        // command may or may not have reached a cluster.
        _ => {
            placed.uncertain.insert(command_id);
        }
    }
}

/// Asks `GET /readyz/failover` every 500 ms until `done` holds for the answer or `deadline` has
/// passed; returns the last answer.
fn ask_failover(api: &Http, deadline: Instant, done: impl Fn(&Answer) -> bool) -> Answer {
    loop {
        let answer = api.get("/readyz/failover");
        if done(&answer) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs a take-over command; returns its exit code and output.
fn take_over(mut command: Command, what: &str) -> (i32, String) {
    let output = command.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

fn wagon_lits_take_over(env: &TestEnv, from: &str, force: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wagon-lits"));
    command
        .args(["cluster", "take-over", "--brokers"])
        .arg(&env.kafka.brokers)
        .arg("--partitions")
        .arg(env.topics.partitions.to_string())
        .arg("--state-dir")
        .arg(env.wagon_lits_state_dir())
        .arg("--from")
        .arg(from)
        .env("RUST_LOG", "warn");
    if force {
        command.arg("--force");
    }
    command
}

fn dev_materiels_take_over(env: &TestEnv, from: &str, force: bool) -> Command {
    let mut command = env.dev_materiels_command("instance-0", &env.dev_state_dir());
    command.args(["cluster", "take-over", "--from", from]).env("RUST_LOG", "warn");
    if force {
        command.arg("--force");
    }
    command
}

/// Places orders through the API at a steady rate, in a thread, until stopped.
struct Placer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Placer {
    fn start(port: u16, next: Arc<AtomicUsize>, placed: Arc<Mutex<Placed>>) -> Placer {
        const PER_SECOND: u64 = 20;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let client = Http::new(port, Some(TOKEN));
            let start = Instant::now();
            let mut sent = 0u64;
            while !flag.load(Ordering::Relaxed) {
                place(&client, next.fetch_add(1, Ordering::Relaxed), &placed);
                sent += 1;
                let due = start + Duration::from_millis(1_000 * sent / PER_SECOND);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Placer { stop, thread: Some(thread) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the placer");
        }
    }
}

/// Checks the cluster `env` against the oracle: every accepted command has exactly one update of
/// its id on its `order-updates`, versions 1..n, every timer fired, and wagon-lits' view equals
/// the oracle's and a rebuild from that `order-updates`. Returns the orders in the view.
fn check_cluster(
    env: &TestEnv,
    placed: &Placed,
    label: &str,
    dev: &crate::support::DevMateriels,
    wagon_lits: &crate::support::WagonLits,
) -> usize {
    let (report, diffs) = converge_report(env, &placed.accepted, &placed.uncertain, |expected| {
        compare_view(&env.wagon_lits_view(), expected)
    });
    assert!(
        diffs.is_empty(),
        "{label}: the view differs from the oracle in {} orders, e.g. {:#?}\n{}\n--- wagon-lits:\n{}",
        diffs.len(),
        &diffs[..diffs.len().min(10)],
        report.summary(),
        wagon_lits.log_tail(60)
    );
    assert!(
        report.holds(),
        "{label}: {}\n{:#?}\n--- dev-materiels:\n{}",
        report.summary(),
        report.examples,
        dev.log_tail(60)
    );
    eprintln!("multi-cluster: {label}: order-updates against the oracle: {}", report.summary());
    let rebuilt = env.dir.path().join(format!("rebuilt-{label}"));
    let live = env.wagon_lits_state_dir();
    let replay = wagon_lits::replay(&env.kafka, &env.codec, &env.topics.updates_topic, &rebuilt, Some(&live))
        .expect("rebuilding the view");
    assert_eq!(replay.differences, 0, "{label}: the view differs from a rebuild: {:#?}", replay.examples);
    replay.orders
}

/// How long after `since_ms` the first update was decided on `env`'s cluster.
fn first_decision_after(env: &TestEnv, since_ms: u64) -> f64 {
    let first = env.updates().iter().map(|u| u.timestamp_ms).filter(|ts| *ts > since_ms).min();
    (first.expect("orders decided after the move") - since_ms) as f64 / 1000.0
}

/// Waits until each of `topics` holds on `copy` as many committed records as on `source`.
fn wait_copied(source: &TestEnv, copy: &TestEnv, topics: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    for topic in topics {
        loop {
            let (want, have) = (source.read_all(topic).len(), copy.read_all(topic).len());
            if have >= want {
                break;
            }
            assert!(Instant::now() < deadline, "{topic}: {have} of {want} records copied");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[test]
fn the_primary_cluster_dies_the_services_fail_over_to_the_standby_and_back_losing_and_doubling_nothing() {
    let mut primary = TestEnv::start("multi-primary", 2);
    let mut standby = TestEnv::start("multi-standby", 2);
    // The same deployment on both sides: names, ports, and the state directories the services
    // leave behind on one side are the ones they take over with on the other.
    standby.application_id = primary.application_id.clone();
    standby.api_port = primary.api_port;
    standby.dev_port = primary.dev_port;
    for dir in ["dev-materiels", "wagon-lits-process"] {
        std::fs::create_dir_all(primary.dir.path().join(dir)).expect("a state directory");
        std::os::unix::fs::symlink(primary.dir.path().join(dir), standby.dir.path().join(dir)).expect("symlink");
    }
    let topics = [
        primary.topics.orders_topic.clone(),
        primary.topics.updates_topic.clone(),
        primary.topics.dlq_topic.clone(),
        primary.changelog(),
    ];
    let regex = topics.iter().map(|t| t.replace('.', "\\.")).collect::<Vec<_>>().join("|");
    let (primary_brokers, standby_brokers) = (primary.cluster.bootstrap_servers(), standby.cluster.bootstrap_servers());
    let mut mirror = MirrorMaker::start(&MirrorConfig::new(primary_brokers.clone(), standby_brokers.clone(), &regex))
        .expect("starting MirrorMaker 2");
    let replicated = [("REPLICATED", "true")];
    let mut dev = primary.spawn_dev_materiels_with(0, &replicated);
    let watched =
        [("REPLICATED", "true"), ("STANDBY_BROKERS", standby_brokers.as_str()), ("MIRROR_LAG_INTERVAL_MS", "2000")];
    let mut wagon_lits = primary.spawn_wagon_lits_with(0, 1_000, &watched);
    let api = Http::new(primary.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(90));

    // Asked while the primary answers, a take-over refuses and says why.
    let (code, said) =
        take_over(dev_materiels_take_over(&standby, &primary_brokers, false), "dev-materiels cluster take-over");
    assert_eq!(code, 1, "a take-over with the primary alive must refuse: {said}");
    assert!(said.contains("answers"), "{said}");
    let (code, said) =
        take_over(wagon_lits_take_over(&standby, &primary_brokers, false), "wagon-lits cluster take-over");
    assert_eq!(code, 1, "a take-over with the primary alive must refuse: {said}");

    // Failover: orders flow, the whole primary dies.
    let placed = Arc::new(Mutex::new(Placed::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let placer = Placer::start(primary.api_port, Arc::clone(&next), Arc::clone(&placed));
    // While MirrorMaker 2 copies, wagon-lits shows its lag and what a failover would cost.
    let started = Instant::now();
    let readiness = ask_failover(&api, started + Duration::from_secs(60), |answer| answer.status == 200);
    assert_eq!(readiness.status, 200, "/readyz/failover: {}", readiness.body);
    assert_eq!(readiness.body["lost"], 0, "{}", readiness.body);
    crate::support::http::OpenApi::load().check("get", "/readyz/failover", &readiness);
    eprintln!("multi-cluster: /readyz/failover before the failover: {}", readiness.body);
    let metrics = String::from_utf8_lossy(&api.get("/metrics").raw).into_owned();
    assert!(
        metrics.lines().any(|l| l.starts_with("rail_mirror_lag_seconds{") && l.contains(&primary.topics.orders_topic)),
        "no lag of orders on /metrics"
    );
    // The standby unreachable for a while: /readyz/failover says a failover cannot be judged,
    // and once the standby is back the copy catches up. The freeze outlasts the MirrorMaker 2
    // worker's session (10 s): it rejoins as a new member, and its tasks come back only after
    // `scheduled.rebalance.max.delay.ms` (300 s by default, which is why the clean-clone CI run of
    // 41a909a saw no copy for 90 s; the harness sets 5 s, as deploy/mirror/mm2.properties does).
    {
        for node in standby.cluster.node_ids() {
            standby.cluster.pause(node).expect("SIGSTOP a broker of the standby");
        }
        let paused = Instant::now();
        let unready = ask_failover(&api, paused + Duration::from_secs(40), |answer| answer.status == 503);
        assert_eq!(unready.status, 503, "/readyz/failover with the standby frozen: {}", unready.body);
        eprintln!("multi-cluster: /readyz/failover with the standby frozen: {}", unready.body["detail"]);
        std::thread::sleep(Duration::from_secs(8u64.saturating_sub(paused.elapsed().as_secs())));
        for node in standby.cluster.node_ids() {
            standby.cluster.resume(node).expect("SIGCONT a broker of the standby");
        }
        let resumed = Instant::now();
        let caught_up = ask_failover(&api, resumed + Duration::from_secs(90), |answer| {
            answer.status == 200 && answer.body["lag_seconds"].as_f64().unwrap_or(f64::MAX) < 10.0
        });
        assert_eq!(caught_up.status, 200, "/readyz/failover after the standby came back: {}", caught_up.body);
        let behind = caught_up.body["lag_seconds"].as_f64().unwrap_or(f64::MAX);
        assert!(
            behind < 10.0,
            "MirrorMaker 2 did not catch up within 90 s of the standby's return: {behind:.1} s behind ({})",
            caught_up.body
        );
        eprintln!(
            "multi-cluster: the standby frozen {:.0} s; MirrorMaker 2 {:.1} s behind again {:.0} s after it came back",
            resumed.duration_since(paused).as_secs_f64(),
            caught_up.body["lag_seconds"].as_f64().unwrap_or(-1.0),
            resumed.elapsed().as_secs_f64()
        );
    }
    std::thread::sleep(Duration::from_secs(10u64.saturating_sub(started.elapsed().as_secs()).max(3)));
    // MirrorMaker 2 stalls while orders flow, so that the primary answers commands the standby
    // never gets the answers of (what the clean-clone CI run of 41a909a lost): wagon-lits keeps
    // them in its journal, and /readyz/failover counts them.
    mirror.pause();
    let frozen = Instant::now();
    let frozen_ms = now_ms();
    std::thread::sleep(Duration::from_secs(6));
    // A measure begun well into the freeze.
    let stalled = ask_failover(&api, frozen + Duration::from_secs(40), |answer| {
        answer.status == 200 && answer.body["measured_ms"].as_u64().unwrap_or(0) > frozen_ms + 4_000
    });
    assert_eq!(stalled.status, 200, "/readyz/failover with MirrorMaker 2 stalled: {}", stalled.body);
    let kept = stalled.body["answered_not_copied"].as_u64().unwrap_or(0);
    assert!(kept >= 20, "answered commands the copy lacks must stay in the journal: {}", stalled.body);
    eprintln!(
        "multi-cluster: MirrorMaker 2 frozen {:.0} s: /readyz/failover: {kept} answered commands not copied kept, {} to send again, lost {}",
        frozen.elapsed().as_secs_f64(),
        stalled.body["sent_again"],
        stalled.body["lost"]
    );
    let killed_ms = now_ms();
    for node in primary.cluster.node_ids() {
        primary.cluster.kill(node).expect("SIGKILL a broker of the primary");
    }
    eprintln!("multi-cluster: every broker of the primary SIGKILLed");
    std::thread::sleep(Duration::from_secs(3));
    // The procedure: MirrorMaker 2 stops (it must not copy a primary that comes back), the
    // services stop on the primary's side, then both take over on the standby. Here MirrorMaker 2
    // dies frozen (SIGKILL): what it had read and not written never reaches the standby, neither
    // the answers nor their commands, and a transaction it left open there is aborted by its
    // timeout, which dev-materiels' take-over waits out.
    mirror.kill();
    dev.kill();
    wagon_lits.kill();
    let (code, dev_report) =
        take_over(dev_materiels_take_over(&standby, &primary_brokers, false), "dev-materiels cluster take-over");
    assert_eq!(code, 0, "dev-materiels cluster take-over failed:\n{dev_report}");
    let (code, view_report) =
        take_over(wagon_lits_take_over(&standby, &primary_brokers, false), "wagon-lits cluster take-over");
    assert_eq!(code, 0, "wagon-lits cluster take-over failed:\n{view_report}");
    dev = standby.spawn_dev_materiels_with(1, &replicated);
    wagon_lits = standby.spawn_wagon_lits_with(1, 1_000, &replicated);
    api.wait_ok("/readyz", Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(8));
    placer.stop();
    eprintln!("multi-cluster: failover: dev-materiels cluster take-over:\n{dev_report}");
    eprintln!("multi-cluster: failover: wagon-lits cluster take-over:\n{view_report}");
    {
        let placed = placed.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!(
            "multi-cluster: failover: {} orders accepted by the API ({} over HTTP), {} not accepted",
            placed.accepted.len(),
            placed.over_http,
            placed.uncertain.len()
        );
        assert!(placed.accepted.len() >= 300, "too few orders accepted: {}", placed.accepted.len());
        let orders = check_cluster(&standby, &placed, "failover", &dev, &wagon_lits);
        eprintln!(
            "multi-cluster: failover: first order decided on the standby {:.1} s after the primary died; the view has {orders} orders, equal to a rebuild",
            first_decision_after(&standby, killed_ms)
        );
    }

    // Failback: the primary comes back with the records that never crossed; its topics go, and
    // MirrorMaker 2 makes it a copy of the standby while orders go on there.
    for node in primary.cluster.node_ids() {
        primary.cluster.restart(node).expect("restarting a broker of the primary");
    }
    let (code, said) = take_over(
        {
            let mut command = primary.dev_materiels_command("instance-0", &primary.dev_state_dir());
            command.args(["cluster", "clear", "--yes"]).env("RUST_LOG", "warn");
            command
        },
        "dev-materiels cluster clear",
    );
    assert_eq!(code, 0, "dev-materiels cluster clear failed:\n{said}");
    eprintln!("multi-cluster: failback: {}", said.trim());
    let placer = Placer::start(standby.api_port, Arc::clone(&next), Arc::clone(&placed));
    let mut back = MirrorMaker::start(&MirrorConfig {
        source_alias: "standby".into(),
        target_alias: "primary".into(),
        ..MirrorConfig::new(standby_brokers.clone(), primary_brokers.clone(), &regex)
    })
    .expect("starting MirrorMaker 2 from the standby to the primary");
    std::thread::sleep(Duration::from_secs(5));
    // A switchover: wagon-lits stops taking commands, dev-materiels stops, the copy catches up,
    // MirrorMaker 2 stops, both take over on the primary (--force: the standby answers).
    wagon_lits.terminate();
    placer.stop();
    std::thread::sleep(Duration::from_secs(2));
    dev.terminate();
    wait_copied(&standby, &primary, &topics);
    back.stop(Duration::from_secs(20));
    let switched_ms = now_ms();
    let (code, dev_report) =
        take_over(dev_materiels_take_over(&primary, &standby_brokers, true), "dev-materiels cluster take-over");
    assert_eq!(code, 0, "dev-materiels cluster take-over (failback) failed:\n{dev_report}");
    let (code, view_report) =
        take_over(wagon_lits_take_over(&primary, &standby_brokers, true), "wagon-lits cluster take-over");
    assert_eq!(code, 0, "wagon-lits cluster take-over (failback) failed:\n{view_report}");
    dev = primary.spawn_dev_materiels_with(2, &replicated);
    wagon_lits = primary.spawn_wagon_lits_with(2, 1_000, &replicated);
    api.wait_ok("/readyz", Duration::from_secs(90));
    let placer = Placer::start(primary.api_port, Arc::clone(&next), Arc::clone(&placed));
    std::thread::sleep(Duration::from_secs(6));
    placer.stop();
    eprintln!("multi-cluster: failback: dev-materiels cluster take-over:\n{dev_report}");
    eprintln!("multi-cluster: failback: wagon-lits cluster take-over:\n{view_report}");
    let placed = placed.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "multi-cluster: failback: {} orders accepted in all, {} not accepted",
        placed.accepted.len(),
        placed.uncertain.len()
    );
    let orders = check_cluster(&primary, &placed, "failback", &dev, &wagon_lits);
    eprintln!(
        "multi-cluster: failback: first order decided on the primary {:.1} s after the switchover began; the view has {orders} orders, equal to a rebuild",
        first_decision_after(&primary, switched_ms)
    );
    wagon_lits.terminate();
    dev.terminate();
}

/// The take-over's state and start position, on a standby staged by hand the way MirrorMaker 2
/// can leave it: per partition, the changelog, `order-updates` and `orders` copies each end at
/// another point. Order A's changelog state is ahead of its last update (a cancellation whose
/// update never crossed), B's behind it, C has a state and no update (its placement's update never
/// crossed), D agrees, E was never decided. After `dev-materiels cluster take-over` and a start on
/// the standby, the oracle must find every command of `orders` decided exactly once, versions
/// without gap or duplicate, and every timer fired.
#[test]
fn the_take_over_makes_the_state_that_of_the_last_update_the_standby_holds() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use state::{decide, Command, Decision, OrderState, OrderUpdate};

    let standby = TestEnv::start("take-over-state", 1);
    crate::support::changelog::create(&standby);
    let producer: BaseProducer = standby.kafka.finish(standby.kafka.base()).create().expect("a producer");
    let rules = crate::support::rules();
    let codec = wire::Codec::json();
    let start_ms = now_ms() - 60_000;
    let place = |order: &str| {
        let lines = vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 2 }];
        let place = PlaceOrder { wagon_id: "WL-9".into(), requested_by: "agent".into(), lines };
        CommandEnvelope::new(format!("{order}-place"), order, start_ms, Command::PlaceOrder(place))
    };
    let cancel = |order: &str| {
        CommandEnvelope::new(format!("{order}-cancel"), order, start_ms, Command::CancelOrder { reason: "no".into() })
    };
    let decided = |state: Option<&OrderState>, command: &CommandEnvelope| -> (OrderState, OrderUpdate) {
        match decide(state, command, &rules, now_ms()) {
            Decision::Update { state, update } => (state, update),
            Decision::Nothing => panic!("{} changes nothing", command.command_id),
        }
    };
    // `orders` on the standby: A, D, B placed, B cancelled, C and E placed, 10 ms apart.
    let commands = [place("A"), place("D"), place("B"), cancel("B"), place("C"), place("E")];
    let ts = |i: usize| (start_ms + 10 * i as u64) as i64;
    for (i, command) in commands.iter().enumerate() {
        let value = codec.encode_command(command).expect("encode a command");
        producer
            .send(
                BaseRecord::to(&standby.topics.orders_topic)
                    .key(command.order_id.as_str())
                    .payload(&value)
                    .timestamp(ts(i)),
            )
            .map_err(|(e, _)| e)
            .expect("queue a command");
    }
    let (a1, a1_update) = decided(None, &commands[0]);
    let (a2, _) = decided(Some(&a1), &cancel("A"));
    let (d1, d1_update) = decided(None, &commands[1]);
    let (b1, b1_update) = decided(None, &commands[2]);
    let (b2, b2_update) = decided(Some(&b1), &commands[3]);
    let (c1, _) = decided(None, &commands[4]);
    // `order-updates`: A v1, D v1, B v1, B v2, each with its state and its command's timestamp.
    for (update, state, command_ts) in
        [(&a1_update, &a1, ts(0)), (&d1_update, &d1, ts(1)), (&b1_update, &b1, ts(2)), (&b2_update, &b2, ts(3))]
    {
        let value = codec.encode_update(update).expect("encode an update");
        let encoded = state::store::encode_state(state).expect("encode a state");
        let command_ts = command_ts.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: wire::replication::STATE, value: Some(&encoded) })
            .insert(Header { key: wire::replication::COMMAND_TS, value: Some(command_ts.as_bytes()) });
        producer
            .send(
                BaseRecord::to(&standby.topics.updates_topic)
                    .key(update.order_id.as_str())
                    .payload(&value)
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .expect("queue an update");
    }
    // The changelog: A ahead (v2), B behind (v1), C with no update, D as its update.
    for state in [&a2, &b1, &c1, &d1] {
        crate::support::changelog::send(&producer, &standby.changelog(), 0, state);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let (code, said) = take_over(
        {
            let mut command = standby.dev_materiels_command("instance-0", &standby.dev_state_dir());
            command.args(["cluster", "take-over"]).env("RUST_LOG", "warn");
            command
        },
        "dev-materiels cluster take-over",
    );
    assert_eq!(code, 0, "{said}");
    eprintln!("take-over: {said}");
    assert!(
        said.contains("4 states on the changelog, 4 updates (0 without a state header), 2 states corrected, 1 dropped; orders from offset 4 of 6"),
        "A and B corrected, C dropped, orders read from C's placement on: {said}"
    );

    let mut dev = standby.spawn_dev_materiels(0);
    let (report, _) = converge_report(&standby, &commands, &HashSet::new(), |_| Vec::new());
    assert!(report.holds(), "{}\n{:#?}\n--- dev-materiels:\n{}", report.summary(), report.examples, dev.log_tail(40));
    eprintln!("take-over: {}", report.summary());
    dev.terminate();
}
