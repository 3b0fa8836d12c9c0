//! Kafka outages and a processor outage, with orders placed through the wagon-lits API all along.
//!
//! - The broker is frozen (SIGSTOP) for 12 seconds while orders keep coming: every order is
//!   answered, those placed during the outage go over HTTP, and once the broker is back the
//!   outbox drains; `order-updates` then holds every (order, version) exactly once, without gaps,
//!   and the view equals the reference model.
//! - dev-materiels is down while Kafka is up: orders wait in `orders` and are processed when it
//!   comes back, with the same checks.
//!
//! Both print the latency of placing an order (p50/p99) by path.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::http::{Http, TOKEN};
use crate::support::{compare_view, converge_report, oracle, TestEnv, WagonLits};
use serde_json::json;
use state::{Command, CommandEnvelope, OrderLine, PlaceOrder};

/// What the test sent for one order, and how it went.
struct Placed {
    envelope: CommandEnvelope,
    path: String,
    latency: Duration,
    /// The API's answer.
    answer: serde_json::Value,
}

fn place(api: &Http, i: usize, prefix: &str) -> Placed {
    try_place(api, i, prefix).unwrap_or_else(|e| panic!("{e}"))
}

fn try_place(api: &Http, i: usize, prefix: &str) -> Result<Placed, String> {
    let order_id = format!("{prefix}-{i:05}");
    let lines = vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 1 + (i % 20) as u32 }];
    let body = json!({"order_id": order_id, "wagon_id": "WL-3", "requested_by": "agent", "lines": lines});
    let started = Instant::now();
    let answer = api.post("/orders", body.to_string());
    let latency = started.elapsed();
    if answer.status != 202 {
        return Err(format!("order {order_id} was not accepted: {} {}", answer.status, answer.body));
    }
    let command_id = answer.body["command_id"].as_str().expect("command id").to_string();
    let place = PlaceOrder { wagon_id: "WL-3".into(), requested_by: "agent".into(), lines };
    Ok(Placed {
        envelope: CommandEnvelope::new(command_id, order_id, 0, Command::PlaceOrder(place)),
        path: answer.body["path"].as_str().unwrap_or_default().to_string(),
        latency,
        answer: answer.body,
    })
}

fn percentiles(placed: &[Placed]) -> BTreeMap<String, String> {
    let mut by_path: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for p in placed {
        by_path.entry(p.path.clone()).or_default().push(p.latency);
    }
    by_path
        .into_iter()
        .map(|(path, mut v)| {
            v.sort();
            let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
            (path, format!("n={} p50={:.1?} p99={:.1?}", v.len(), at(0.50), at(0.99)))
        })
        .collect()
}

/// Waits until dev-materiels has published its whole outbox and processed everything sent.
fn wait_drained(direct: &Http, dev: &mut crate::support::DevMateriels, timeout: Duration) {
    let start = Instant::now();
    loop {
        dev.assert_running();
        let status = direct.get("/v1/status");
        if status.status == 200 && status.body["outbox_pending"] == 0 {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "the outbox did not drain: {}\n--- dev-materiels:\n{}",
            status.body,
            dev.log_tail(80)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_exactly_once(env: &TestEnv, placed: &[Placed], wagon_lits: &WagonLits) -> oracle::Report {
    let commands: Vec<CommandEnvelope> = placed.iter().map(|p| p.envelope.clone()).collect();
    let (report, diffs) =
        converge_report(env, &commands, &HashSet::new(), |expected| compare_view(&env.wagon_lits_view(), expected));
    assert!(
        diffs.is_empty(),
        "view differs from the oracle in {} orders, e.g. {:#?}\n{}\n--- wagon-lits:\n{}",
        diffs.len(),
        &diffs[..diffs.len().min(10)],
        report.summary(),
        wagon_lits.log_tail(80)
    );
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    assert_eq!(report.unsettled, 0, "{}", report.summary());
    report
}

#[test]
fn a_frozen_broker_sends_orders_over_http_and_nothing_is_lost_or_doubled() {
    let mut env = TestEnv::start("outage", 2);
    let mut dev = env.spawn_dev_materiels(0);
    let mut wagon_lits = env.spawn_wagon_lits(0, 1_000);
    let api = Http::new(env.api_port, Some(TOKEN));
    let direct = Http::new(env.dev_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(60));
    direct.wait_ok("/readyz", Duration::from_secs(60));

    // Orders at a steady rate (about 10 a second) for about 30 seconds; the broker freezes for 12
    // seconds after the first 5.
    let placed = std::thread::scope(|scope| {
        let placer = scope.spawn(|| {
            let mut placed = Vec::new();
            let start = Instant::now();
            for i in 0..300 {
                match try_place(&api, i, "OUT") {
                    Ok(p) => placed.push(p),
                    Err(e) => return Err(e),
                }
                let due = start + Duration::from_millis(100 * (i as u64 + 1));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(placed)
        });
        std::thread::sleep(Duration::from_secs(5));
        eprintln!("freezing the broker (SIGSTOP)");
        env.cluster.pause(1).expect("SIGSTOP the broker");
        std::thread::sleep(Duration::from_secs(12));
        env.cluster.resume(1).expect("SIGCONT the broker");
        eprintln!("broker resumed");
        placer.join().expect("placer")
    });
    let placed = placed.unwrap_or_else(|e| {
        panic!("{e}\n--- dev-materiels:\n{}\n--- wagon-lits:\n{}", dev.log_tail(80), wagon_lits.log_tail(40))
    });
    let over_http = placed.iter().filter(|p| p.path == "http").count();
    let over_kafka = placed.iter().filter(|p| p.path == "kafka").count();
    eprintln!(
        "outage: {} orders placed, {over_kafka} via Kafka, {over_http} via HTTP; latency {:?}",
        placed.len(),
        percentiles(&placed)
    );
    assert!(
        over_http >= 50,
        "orders placed during the outage should go over HTTP ({over_http} did)\n--- dev-materiels:\n{}\n--- wagon-lits:\n{}",
        dev.log_tail(60),
        wagon_lits.log_tail(60)
    );
    assert!(over_kafka >= 50, "orders placed outside the outage should go by Kafka ({over_kafka} did)");

    wait_drained(&direct, &mut dev, Duration::from_secs(120));
    let report = check_exactly_once(&env, &placed, &wagon_lits);
    eprintln!("outage: {}", report.summary());

    // Every answer given over HTTP said it was provisional, and is what order-updates carries
    // (one instance that never lost its partition: nobody decided it again).
    let published: std::collections::HashMap<String, serde_json::Value> = env
        .read_all(&env.topics.updates_topic)
        .into_iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.value?).ok())
        .filter_map(|u| Some((u["command_id"].as_str()?.to_string(), u)))
        .collect();
    let mut differ = Vec::new();
    for p in placed.iter().filter(|p| p.path == "http") {
        let answered = &p.answer["updates"][0];
        let final_one = published.get(&p.envelope.command_id);
        if p.answer["provisional"] != true || final_one != Some(answered) {
            differ.push(format!(
                "{}: answered {} (provisional: {}), published {final_one:?}",
                p.envelope.command_id, answered, p.answer["provisional"]
            ));
        }
    }
    eprintln!("outage: {over_http} HTTP answers compared with order-updates, {} differ", differ.len());
    assert!(
        differ.is_empty(),
        "HTTP answers that differ from what was published: {:#?}",
        &differ[..differ.len().min(10)]
    );
    let status = direct.get("/v1/status").body;
    assert!(status["direct_commands"].as_u64().unwrap_or(0) >= over_http as u64, "{status}");
    assert!(status["outbox_published"].as_u64().unwrap_or(0) >= over_http as u64, "{status}");
    wagon_lits.terminate();
    dev.terminate();
}

#[test]
fn orders_placed_while_dev_materiels_is_down_wait_in_kafka() {
    let env = TestEnv::start("dev-down", 2);
    let mut dev = env.spawn_dev_materiels(0);
    let mut wagon_lits = env.spawn_wagon_lits(0, 2_000);
    let api = Http::new(env.api_port, Some(TOKEN));
    let direct = Http::new(env.dev_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(60));
    direct.wait_ok("/readyz", Duration::from_secs(60));

    let mut placed: Vec<Placed> = (0..50).map(|i| place(&api, i, "DOWN")).collect();
    dev.kill();
    let while_down: Vec<Placed> = (50..250).map(|i| place(&api, i, "DOWN")).collect();
    assert!(
        while_down.iter().all(|p| p.path == "kafka"),
        "with Kafka up, commands go by Kafka even when dev-materiels is down"
    );
    eprintln!("dev-materiels down: latency {:?}", percentiles(&while_down));
    placed.extend(while_down);
    let mut dev = env.spawn_dev_materiels(1);
    direct.wait_ok("/readyz", Duration::from_secs(60));
    let report = check_exactly_once(&env, &placed, &wagon_lits);
    eprintln!("dev-materiels down: {}", report.summary());
    wagon_lits.terminate();
    dev.terminate();
}
