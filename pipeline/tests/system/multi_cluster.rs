//! Multi-cluster operation (issue 16; docs/multi-cluster.md): a primary and a standby cluster,
//! MirrorMaker 2 copying `orders`, `order-updates`, the changelog and the dead-letter topic from
//! the primary to the standby, both services on the primary with `--replicated`. While orders are
//! placed through wagon-lits' API at a steady rate, every broker of the primary is SIGKILLed; the
//! services are moved to the standby (`dev-materiels cluster take-over`, then `wagon-lits cluster
//! take-over`) and started there. Every command the API accepted must end with exactly one update
//! of its command id on the standby's `order-updates`, each order's versions 1..n with no gap or
//! duplicate, and wagon-lits' view must equal both the oracle's and a rebuild from the standby's
//! `order-updates`. Prints the time from the primary's death to the first order decided on the
//! standby, and the commands wagon-lits sent again.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kafka_harness::mirror::{MirrorConfig, MirrorMaker};
use serde_json::json;
use state::{CommandEnvelope, OrderLine, PlaceOrder};

use crate::support::http::{Http, TOKEN};
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

/// Runs a take-over command; returns its exit code and output.
fn take_over(mut command: Command, what: &str) -> (i32, String) {
    let output = command.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

fn wagon_lits_take_over(env: &TestEnv, primary: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wagon-lits"));
    command
        .args(["cluster", "take-over", "--brokers"])
        .arg(&env.kafka.brokers)
        .arg("--partitions")
        .arg(env.topics.partitions.to_string())
        .arg("--state-dir")
        .arg(env.wagon_lits_state_dir())
        .arg("--primary")
        .arg(primary)
        .env("RUST_LOG", "warn");
    command
}

fn dev_materiels_take_over(env: &TestEnv, primary: &str) -> Command {
    let mut command = env.dev_materiels_command("instance-0", &env.dev_state_dir());
    command.args(["cluster", "take-over", "--primary", primary]).env("RUST_LOG", "info");
    command
}

#[test]
fn the_primary_cluster_dies_and_both_services_take_over_on_the_standby_losing_and_doubling_nothing() {
    const PER_SECOND: u64 = 20;
    let mut primary = TestEnv::start("multi-primary", 2);
    let mut standby = TestEnv::start("multi-standby", 2);
    // The same deployment on both sides: names, ports, and the state directories the services
    // leave behind on the primary's side are the ones they take over with.
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
    let mut mirror = MirrorMaker::start(&MirrorConfig::new(
        primary.cluster.bootstrap_servers(),
        standby.cluster.bootstrap_servers(),
        &regex,
    ))
    .expect("starting MirrorMaker 2");
    let replicated = [("REPLICATED", "true")];
    let mut dev = primary.spawn_dev_materiels_with(0, &replicated);
    let mut wagon_lits = primary.spawn_wagon_lits_with(0, 1_000, &replicated);
    let api = Http::new(primary.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(90));

    // Asked while the primary answers, a take-over refuses and says why.
    let (code, said) =
        take_over(dev_materiels_take_over(&standby, &primary.kafka.brokers), "dev-materiels cluster take-over");
    assert_eq!(code, 1, "a take-over with the primary alive must refuse: {said}");
    assert!(said.contains("answers"), "{said}");
    let (code, said) =
        take_over(wagon_lits_take_over(&standby, &primary.kafka.brokers), "wagon-lits cluster take-over");
    assert_eq!(code, 1, "a take-over with the primary alive must refuse: {said}");

    let placed = Mutex::new(Placed::default());
    let stop = AtomicBool::new(false);
    let (killed_ms, dev_report, view_report) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let client = Http::new(primary.api_port, Some(TOKEN));
            let start = Instant::now();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                place(&client, i, &placed);
                i += 1;
                let due = start + Duration::from_millis(1_000 * i as u64 / PER_SECOND);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        std::thread::sleep(Duration::from_secs(10));
        let killed_ms = now_ms();
        for node in primary.cluster.node_ids() {
            primary.cluster.kill(node).expect("SIGKILL a broker of the primary");
        }
        eprintln!("multi-cluster: every broker of the primary SIGKILLed");
        std::thread::sleep(Duration::from_secs(3));
        // The procedure: MirrorMaker 2 stops (it must not copy a primary that comes back), the
        // services stop on the primary's side, then take over on the standby.
        mirror.stop(Duration::from_secs(20));
        dev.kill();
        wagon_lits.kill();
        let primary_brokers = primary.kafka.brokers.clone();
        let (code, dev_report) =
            take_over(dev_materiels_take_over(&standby, &primary_brokers), "dev-materiels cluster take-over");
        assert_eq!(code, 0, "dev-materiels cluster take-over failed:\n{dev_report}");
        let (code, view_report) =
            take_over(wagon_lits_take_over(&standby, &primary_brokers), "wagon-lits cluster take-over");
        assert_eq!(code, 0, "wagon-lits cluster take-over failed:\n{view_report}");
        dev = standby.spawn_dev_materiels_with(1, &replicated);
        wagon_lits = standby.spawn_wagon_lits_with(1, 1_000, &replicated);
        api.wait_ok("/readyz", Duration::from_secs(90));
        // Orders go on on the standby for a while.
        std::thread::sleep(Duration::from_secs(8));
        stop.store(true, Ordering::Relaxed);
        (killed_ms, dev_report, view_report)
    });
    eprintln!("multi-cluster: dev-materiels cluster take-over:\n{dev_report}");
    eprintln!("multi-cluster: wagon-lits cluster take-over:\n{view_report}");
    let placed = placed.into_inner().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "multi-cluster: {} orders accepted by the API ({} over HTTP), {} not accepted",
        placed.accepted.len(),
        placed.over_http,
        placed.uncertain.len()
    );
    assert!(placed.accepted.len() >= 300, "too few orders accepted: {}", placed.accepted.len());

    let (report, diffs) = converge_report(&standby, &placed.accepted, &placed.uncertain, |expected| {
        compare_view(&standby.wagon_lits_view(), expected)
    });
    assert!(
        diffs.is_empty(),
        "the view differs from the oracle in {} orders, e.g. {:#?}\n{}\n--- wagon-lits:\n{}",
        diffs.len(),
        &diffs[..diffs.len().min(10)],
        report.summary(),
        wagon_lits.log_tail(60)
    );
    assert!(report.holds(), "{}\n{:#?}\n--- dev-materiels:\n{}", report.summary(), report.examples, dev.log_tail(60));
    eprintln!("multi-cluster: standby's order-updates against the oracle: {}", report.summary());

    // The view equals a rebuild from the standby's order-updates.
    let rebuilt = standby.dir.path().join("rebuilt");
    let live = standby.wagon_lits_state_dir();
    let replay =
        wagon_lits::replay(&standby.kafka, &standby.codec, &standby.topics.updates_topic, &rebuilt, Some(&live))
            .expect("rebuilding the view from the standby");
    assert_eq!(replay.differences, 0, "the view differs from a rebuild: {:#?}", replay.examples);

    // The time from the primary's death to the first order decided on the standby.
    let first_on_standby = standby.updates().iter().map(|u| u.timestamp_ms).filter(|ts| *ts > killed_ms).min();
    let first = first_on_standby.expect("orders decided on the standby");
    eprintln!(
        "multi-cluster: first order decided on the standby {:.1} s after the primary died; the view has {} orders, equal to a rebuild",
        (first - killed_ms) as f64 / 1000.0,
        replay.orders
    );
    wagon_lits.terminate();
    dev.terminate();
}
