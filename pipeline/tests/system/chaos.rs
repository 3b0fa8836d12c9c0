//! The chaos runner: orders placed through the wagon-lits API at a steady rate while dev-materiels
//! instances, wagon-lits and brokers are killed (SIGKILL) and restarted, or paused (SIGSTOP, up
//! to twice the group's session timeout) and resumed, at random moments, on a three-broker
//! cluster (replication factor 3, `min.insync.replicas=2`) with three dev-materiels instances in
//! one group. A paused processor comes back as a zombie: its partitions went elsewhere meanwhile.
//! Then it checks, against the oracle (`support/oracle.rs`, the documented rules):
//!
//! - every command the API accepted (202) is applied, every timer fired, and every order is in
//!   the view in the state the oracle gives;
//! - `order-updates` (read_committed) holds each (order, version) once, without gaps, in
//!   version order;
//! - the view never went backwards (a sampler reads orders through the API all along);
//! - `wagon-lits replay` rebuilds a view equal to the live one;
//! - no process exited by itself.
//!
//! It prints the seed first and one summary line at the end, and fails on any loss, duplicate,
//! reordering, unsettled order, step back or self-exit. Clients retry a command whose answer was lost with the same `Idempotency-Key`, as a
//! real client would; a command that got no answer and then a refusal is *uncertain* (it may or
//! may not have reached Kafka), and the model accepts it applied once or not at all.
//!
//! Configured from the environment (defaults: the bounded run of the test suite):
//!
//! | variable          | default | meaning                                          |
//! |-------------------|---------|--------------------------------------------------|
//! | `CHAOS_SEED`      | random  | the seed of the kills and of the orders          |
//! | `CHAOS_SECONDS`   | 100     | how long orders are placed and things killed     |
//! | `CHAOS_MIN_KILLS` | 24      | kills go on past the duration until this many    |
//! | `CHAOS_RATE`      | 40      | orders placed per second (plus their follow-ups) |
//! | `CHAOS_OVERLAP`   | mixed   | overlapped commits: `on`, `off`, or `mixed` (each processor alternates from one incarnation to the next, starting where the seed says) |
//! | `CHAOS_STREAM_THREADS` | mixed | stream threads per processor: `1`, `2`, or `mixed` (each processor alternates every second incarnation) |
//!
//! With `mixed`, both commit modes and both thread counts run in every run, in all four
//! combinations, side by side in one group (as during an upgrade that changes them one instance
//! at a time).
//!
//! ```text
//! CHAOS_SEED=7 CHAOS_SECONDS=900 CHAOS_MIN_KILLS=100 \
//!   cargo test --release --locked --workspace --test system chaos -- --nocapture
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{compare_view, converge_report, now_ms, DevMateriels, TestEnv};
use http_fallback::{Client, ClientError, Secret};
use kafka_harness::ClusterConfig;
use pipeline::workload::{Mix, Workload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use state::{Command, CommandEnvelope, OrderUpdate};

const INSTANCES: usize = 3;
const BROKERS: u32 = 3;
const CLIENTS: usize = 4;
const PARTITIONS: i32 = 6;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What became of one command sent through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// 202: sent (to Kafka, or applied over HTTP).
    Accepted,
    /// Refused on its first attempt (404, 409, 422...): never sent.
    Refused,
    /// No clear answer, then a refusal or no answer at all: it may have been sent.
    Uncertain,
}

/// One client: places its share of the orders at its share of the rate, and confirms or
/// cancels some of them once they have had time to ship.
struct ClientLoop {
    http: Client,
    runtime: tokio::runtime::Runtime,
    base: String,
    sent: Vec<(CommandEnvelope, Fate)>,
    accepted_orders: Arc<Mutex<Vec<String>>>,
}

impl ClientLoop {
    /// Sends a command until an answer settles its fate, with its command id as the
    /// idempotency key.
    fn send(&mut self, command: &CommandEnvelope) -> Fate {
        let id = &command.order_id;
        let (path, body) = match &command.command {
            Command::PlaceOrder(p) => (
                "/orders".to_string(),
                serde_json::json!({"order_id": id, "wagon_id": p.wagon_id, "requested_by": p.requested_by, "lines": p.lines}),
            ),
            Command::CancelOrder { reason } => {
                (format!("/orders/{id}/cancel"), serde_json::json!({ "reason": reason }))
            }
            Command::ConfirmDelivery {} => (format!("/orders/{id}/confirm-delivery"), serde_json::json!({})),
        };
        let body = body.to_string().into_bytes();
        let url = format!("{}{path}", self.base);
        let mut ambiguous = false;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answer = self.runtime.block_on(self.http.post_json_with(
                &url,
                body.clone(),
                &[("idempotency-key", &command.command_id)],
            ));
            match answer {
                Ok((status, _)) if status.as_u16() == 202 => return Fate::Accepted,
                // Kafka and the HTTP path both failed: the record may still have been written.
                Ok((status, _)) if status.is_server_error() => ambiguous = true,
                Ok(_) if ambiguous => return Fate::Uncertain,
                Ok(_) => return Fate::Refused,
                // Nobody listening (wagon-lits down): the request never got in.
                Err(ClientError::Request { reason, .. }) if reason.contains("onnection refused") => {}
                Err(_) => ambiguous = true,
            }
            if Instant::now() > deadline {
                return if ambiguous { Fate::Uncertain } else { Fate::Refused };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn record(&mut self, mut command: CommandEnvelope) {
        // The workload's command ids hold a '/', which the API refuses in an id.
        command.command_id = command.command_id.replace('/', ":");
        let fate = self.send(&command);
        if fate == Fate::Accepted && matches!(command.command, Command::PlaceOrder(_)) {
            if let Ok(mut orders) = self.accepted_orders.lock() {
                orders.push(command.order_id.clone());
            }
        }
        self.sent.push((command, fate));
    }

    fn run(
        mut self,
        seed: u64,
        client: usize,
        per_second: f64,
        max_orders: usize,
        stop: &AtomicBool,
    ) -> Vec<(CommandEnvelope, Fate)> {
        let mut workload = Workload::new(seed, format!("CHAOS{seed}-{client}"), now_ms());
        let placed = workload.place_phase(max_orders, Mix::REALISTIC);
        let period = Duration::from_secs_f64(1.0 / per_second);
        let start = Instant::now();
        let mut orders = 0u32;
        let mut shipping: VecDeque<(Instant, String)> = VecDeque::new();
        for command in placed {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let is_place = matches!(command.command, Command::PlaceOrder(_));
            if is_place {
                // A steady rate: order n leaves at start + n periods (later if the API was slow).
                if let Some(wait) = (start + period * orders).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                orders += 1;
                shipping.push_back((Instant::now(), command.order_id.clone()));
            }
            self.record(command);
            // Orders placed long enough ago to have shipped: confirm or cancel some.
            while shipping.front().is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(3)) {
                let Some((_, id)) = shipping.pop_front() else { break };
                for follow_up in workload.delivery_phase(&[id], 0.5, 0.2, 0.02) {
                    self.record(follow_up);
                }
            }
        }
        self.sent
    }
}

/// Reads sampled orders through the API all along and counts any that went back (a lower version
/// than seen before, or gone).
fn sample_view(port: u16, accepted: &Mutex<Vec<String>>, stop: &AtomicBool, seed: u64) -> (u64, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let http = Client::new(Some(Secret::new(crate::support::http::TOKEN).expect("token")), Duration::from_secs(5));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5A5A);
    let mut highest: HashMap<String, u64> = HashMap::new();
    let (mut reads, mut back) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<String> = match accepted.lock() {
            Ok(all) if !all.is_empty() => (0..20).map(|_| all[rng.random_range(0..all.len())].clone()).collect(),
            _ => Vec::new(),
        };
        for id in ids {
            let url = format!("http://127.0.0.1:{port}/orders/{id}");
            let Ok((status, body)) = runtime.block_on(http.get(&url)) else { continue };
            reads += 1;
            let seen = highest.get(&id).copied();
            let version = match status.as_u16() {
                200 => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["version"].as_u64())
                    .unwrap_or(0),
                404 => 0,
                _ => continue,
            };
            if seen.is_some_and(|s| version < s) {
                back.push(format!("{id}: v{version} after v{}", seen.unwrap_or(0)));
            }
            highest.insert(id, version.max(seen.unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (reads, back)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Processor(usize),
    WagonLits,
    Broker(u32),
}

fn kind_of(target: Target) -> &'static str {
    match target {
        Target::Processor(_) => "dev-materiels",
        Target::WagonLits => "wagon-lits",
        Target::Broker(_) => "broker",
    }
}

/// What the runner does to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// SIGKILL, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
}

/// The processes under test, and their kills, pauses and restarts.
struct Services<'a> {
    env: &'a mut TestEnv,
    processors: Vec<Option<DevMateriels>>,
    wagon_lits: Option<DevMateriels>,
    /// The broker killed or paused, if one is.
    broker_down: Option<u32>,
    /// Processes paused now.
    paused: HashSet<Target>,
    incarnations: HashMap<Target, usize>,
    kills: HashMap<&'static str, u32>,
    pauses: HashMap<&'static str, u32>,
    restarts: u32,
    /// Processes that exited by themselves (and were restarted).
    exits: Vec<String>,
    overlap: Alternating,
    two_threads: Alternating,
}

/// A processor setting that a variable fixes (`on`/`off`, `2`/`1`), or that alternates from
/// one incarnation to the next (`mixed`, the default), every `every` incarnations, starting where
/// the seed says.
#[derive(Clone, Copy, Debug)]
enum Alternating {
    Fixed(bool),
    Mixed { start: u64, every: usize },
}

impl Alternating {
    fn from_env(variable: &str, on: &str, off: &str, start: u64, every: usize) -> Alternating {
        match std::env::var(variable).as_deref() {
            Ok(v) if v == on => Alternating::Fixed(true),
            Ok(v) if v == off => Alternating::Fixed(false),
            Ok("mixed") | Err(_) => Alternating::Mixed { start, every },
            Ok(other) => panic!("{variable}={other}: expected {on}, {off} or mixed"),
        }
    }

    fn of(self, processor: usize, incarnation: usize) -> bool {
        match self {
            Alternating::Fixed(on) => on,
            Alternating::Mixed { start, every } => {
                (start as usize).wrapping_add(processor).wrapping_add(incarnation / every).is_multiple_of(2)
            }
        }
    }
}

/// Which processors run with overlapped commits (`CHAOS_OVERLAP`), and which with two stream
/// threads (`CHAOS_STREAM_THREADS`).
fn modes(seed: u64) -> (Alternating, Alternating) {
    (
        Alternating::from_env("CHAOS_OVERLAP", "on", "off", seed, 1),
        Alternating::from_env("CHAOS_STREAM_THREADS", "2", "1", seed / 2, 2),
    )
}

impl Services<'_> {
    fn next_incarnation(&mut self, target: Target) -> usize {
        let n = self.incarnations.entry(target).or_default();
        *n += 1;
        *n
    }

    fn start(&mut self, target: Target) {
        let incarnation = self.next_incarnation(target);
        match target {
            Target::Processor(i) => {
                let overlap = self.overlap.of(i, incarnation);
                let threads = if self.two_threads.of(i, incarnation) { "2" } else { "1" };
                let env = [("OVERLAP_COMMITS", if overlap { "true" } else { "false" }), ("STREAM_THREADS", threads)];
                self.processors[i] = Some(self.env.spawn_instance_with(i, incarnation, &env));
                eprintln!(
                    "chaos: processor {i} incarnation {incarnation}: overlapped commits {overlap}, stream threads {threads}"
                );
            }
            Target::WagonLits => self.wagon_lits = Some(self.env.spawn_wagon_lits(incarnation, 2_000)),
            Target::Broker(node) => {
                self.env.cluster.restart(node).expect("restart a broker");
                self.broker_down = None;
            }
        }
    }

    fn kill(&mut self, target: Target) {
        match target {
            Target::Processor(i) => {
                if let Some(mut p) = self.processors[i].take() {
                    p.kill();
                }
            }
            Target::WagonLits => {
                if let Some(mut w) = self.wagon_lits.take() {
                    w.kill();
                }
            }
            Target::Broker(node) => {
                self.env.cluster.kill(node).expect("kill a broker");
                self.broker_down = Some(node);
            }
        }
        *self.kills.entry(kind_of(target)).or_default() += 1;
    }

    fn pause(&mut self, target: Target) {
        match target {
            Target::Processor(i) => self.processors[i].as_mut().map_or((), DevMateriels::pause),
            Target::WagonLits => self.wagon_lits.as_mut().map_or((), DevMateriels::pause),
            Target::Broker(node) => {
                self.env.cluster.pause(node).expect("pause a broker");
                self.broker_down = Some(node);
            }
        }
        self.paused.insert(target);
        *self.pauses.entry(kind_of(target)).or_default() += 1;
    }

    fn resume(&mut self, target: Target) {
        match target {
            Target::Processor(i) => self.processors[i].as_mut().map_or((), DevMateriels::resume),
            Target::WagonLits => self.wagon_lits.as_mut().map_or((), DevMateriels::resume),
            Target::Broker(node) => {
                self.env.cluster.resume(node).expect("resume a broker");
                self.broker_down = None;
            }
        }
        self.paused.remove(&target);
    }

    /// What may be killed or paused now: a running processor, wagon-lits if it runs, a broker if
    /// none is down; nothing that is paused.
    fn candidates(&self) -> Vec<(Target, u32)> {
        let mut out = Vec::new();
        for (i, p) in self.processors.iter().enumerate() {
            if p.is_some() && !self.paused.contains(&Target::Processor(i)) {
                out.push((Target::Processor(i), 2));
            }
        }
        if self.wagon_lits.is_some() && !self.paused.contains(&Target::WagonLits) {
            out.push((Target::WagonLits, 2));
        }
        if self.broker_down.is_none() {
            for node in 1..=BROKERS {
                out.push((Target::Broker(node), 1));
            }
        }
        out
    }

    /// Restarts a process that stopped by itself, saying so (the run fails at its end).
    fn restart_exited(&mut self) {
        for i in 0..self.processors.len() {
            if self.processors[i].as_mut().is_some_and(DevMateriels::exited) {
                let tail = self.processors[i].as_ref().map(|p| p.log_tail(15)).unwrap_or_default();
                eprintln!("chaos: dev-materiels {i} exited by itself; restarting it. Its log ends:\n{tail}");
                self.exits.push(format!("dev-materiels {i}"));
                self.start(Target::Processor(i));
            }
        }
        if self.wagon_lits.as_mut().is_some_and(DevMateriels::exited) {
            let tail = self.wagon_lits.as_ref().map(|p| p.log_tail(15)).unwrap_or_default();
            eprintln!("chaos: wagon-lits exited by itself; restarting it. Its log ends:\n{tail}");
            self.exits.push("wagon-lits".into());
            self.start(Target::WagonLits);
        }
    }
}

/// On a failure: the model's examples, every update and every command of the orders involved,
/// and the services' logs copied to `/tmp/chaos-failure-<seed>/` (the test's directory goes away).
fn dump_failure(
    env: &TestEnv,
    seed: u64,
    report: &crate::support::oracle::Report,
    diffs: &[String],
    sent: &[(CommandEnvelope, Fate)],
) {
    let out = std::path::PathBuf::from(format!("/tmp/chaos-failure-{seed}"));
    let _ = std::fs::create_dir_all(&out);
    let mut text = format!("{}\nexamples: {:#?}\nview diffs: {:#?}\n", report.summary(), report.examples, diffs);
    let records = env.read_all(&env.topics.updates_topic);
    // Orders with a duplicated version first (the examples list may have no room for them).
    let mut versions: HashMap<(String, u64), usize> = HashMap::new();
    for r in &records {
        if let Some(u) = r.value.as_deref().and_then(|v| serde_json::from_slice::<OrderUpdate>(v).ok()) {
            *versions.entry((u.order_id, u.version)).or_default() += 1;
        }
    }
    let duplicated = versions.into_iter().filter(|(_, n)| *n > 1).map(|((order, _), _)| order).take(10);
    let orders: HashSet<String> = duplicated
        .chain(
            report
                .examples
                .iter()
                .chain(diffs.iter())
                .filter_map(|e| e.split([':', ' ']).next().map(str::to_string))
                .take(30),
        )
        .collect();
    // Where each command went: on `orders` (so Kafka took it) or not, and dead-lettered or not.
    let commands = env.read_all(&env.topics.orders_topic);
    let dead = env.read_all(&env.topics.dlq_topic);
    for order in &orders {
        text.push_str(&format!("\n== {order}\n"));
        for (command, fate) in sent.iter().filter(|(c, _)| &c.order_id == order) {
            text.push_str(&format!("sent {fate:?}: {}\n", serde_json::to_string(command).unwrap_or_default()));
        }
        for (what, list) in [("on orders", &commands), ("update", &records), ("dead-lettered", &dead)] {
            for r in list.iter().filter(|r| r.key.as_deref() == Some(order.as_bytes())) {
                text.push_str(&format!(
                    "{what} p{} o{}: {}\n",
                    r.partition,
                    r.offset,
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                ));
            }
        }
    }
    let _ = std::fs::write(out.join("report.txt"), &text);
    if let Ok(entries) = std::fs::read_dir(env.dir.path()) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(entry.path(), out.join(entry.file_name()));
            }
        }
    }
    eprintln!("chaos: failure details in {}", out.display());
}

#[test]
fn chaos_loses_and_doubles_nothing() {
    let seed = env_u64("CHAOS_SEED", now_ms() % 1_000_000);
    let seconds = env_u64("CHAOS_SECONDS", 100);
    let min_kills = env_u64("CHAOS_MIN_KILLS", 24) as u32;
    let rate = env_u64("CHAOS_RATE", 40) as f64;
    eprintln!(
        "chaos: seed={seed} seconds={seconds} min_kills={min_kills} rate={rate}/s (overlap, two stream threads)={:?} (CHAOS_SEED={seed} \
         reproduces the kills and orders)",
        modes(seed)
    );

    let config = ClusterConfig {
        nodes: BROKERS,
        // A dead broker is noticed, and its partitions led elsewhere, in 4 s rather than 9.
        extra_properties: vec![
            ("broker.session.timeout.ms".into(), "4000".into()),
            ("broker.heartbeat.interval.ms".into(), "1000".into()),
        ],
        ..ClusterConfig::default()
    };
    let mut env = TestEnv::start_with(&format!("chaos-{seed}"), PARTITIONS, config);
    let api_port = env.api_port;
    let wagon_lits_dir = env.wagon_lits_state_dir();
    let mut services = Services {
        env: &mut env,
        processors: (0..INSTANCES).map(|_| None).collect(),
        wagon_lits: None,
        broker_down: None,
        paused: HashSet::new(),
        incarnations: HashMap::new(),
        kills: HashMap::new(),
        pauses: HashMap::new(),
        restarts: 0,
        exits: Vec::new(),
        overlap: modes(seed).0,
        two_threads: modes(seed).1,
    };
    for i in 0..INSTANCES {
        services.start(Target::Processor(i));
    }
    services.start(Target::WagonLits);
    crate::support::http::Http::new(api_port, Some(crate::support::http::TOKEN))
        .wait_ok("/readyz", Duration::from_secs(60));

    let stop_clients = AtomicBool::new(false);
    let stop_sampler = AtomicBool::new(false);
    let accepted_orders = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let (sent, (reads, went_back)) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let client = ClientLoop {
                    http: Client::new(
                        Some(Secret::new(crate::support::http::TOKEN).expect("token")),
                        Duration::from_secs(10),
                    ),
                    runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"),
                    base: format!("http://127.0.0.1:{api_port}"),
                    sent: Vec::new(),
                    accepted_orders: Arc::clone(&accepted_orders),
                };
                let stop = &stop_clients;
                let per_client = rate / CLIENTS as f64;
                // Enough orders for the run at its rate, however long the kills make it last.
                let max_orders = (per_client * seconds as f64 * 4.0) as usize + 1_000;
                let client_seed = seed.wrapping_mul(31).wrapping_add(c as u64);
                scope.spawn(move || client.run(client_seed, c, per_client, max_orders, stop))
            })
            .collect();
        let sampler = scope.spawn(|| sample_view(api_port, &accepted_orders, &stop_sampler, seed));

        // The kills and pauses: a mean gap that spreads `min_kills` kills (a third as many pauses
        // again) over the run; each restart due 0.5-4 s (brokers 2-6 s) after its kill, each
        // resume 1-12 s after its pause (the group's session timeout is 6 s: a longer pause makes
        // a processor a zombie).
        let mean_gap = seconds as f64 / (f64::from(min_kills) * 1.25 * 4.0 / 3.0);
        let mut due_back: Vec<(Instant, Action, Target)> = Vec::new();
        let mut first_kinds = vec!["dev-materiels", "wagon-lits", "broker"];
        for i in (1..first_kinds.len()).rev() {
            first_kinds.swap(i, rng.random_range(0..=i));
        }
        let mut first_pause_done = false;
        let mut next_event = Instant::now() + Duration::from_secs_f64(rng.random_range(0.5..1.5) * mean_gap);
        loop {
            let total_kills: u32 = services.kills.values().sum();
            if started.elapsed() >= Duration::from_secs(seconds) && total_kills >= min_kills {
                break;
            }
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = due_back.into_iter().partition(|(at, _, _)| *at <= now);
            due_back = later;
            for (_, action, target) in due {
                match action {
                    Action::Kill => {
                        services.start(target);
                        services.restarts += 1;
                    }
                    Action::Pause => services.resume(target),
                }
            }
            services.restart_exited();
            if Instant::now() >= next_event {
                let mut candidates = services.candidates();
                // The first kills take each kind of process once, in a seeded order, then a
                // processor is paused past the session timeout; then it is the luck of the seed.
                let action = if let Some(kind) = first_kinds.pop() {
                    candidates.retain(|(t, _)| kind_of(*t) == kind);
                    Action::Kill
                } else if !first_pause_done {
                    candidates.retain(|(t, _)| matches!(t, Target::Processor(_)));
                    Action::Pause
                } else if rng.random_bool(0.25) {
                    Action::Pause
                } else {
                    Action::Kill
                };
                let total: u32 = candidates.iter().map(|(_, w)| w).sum();
                let mut pick = rng.random_range(0..total.max(1));
                if let Some((target, _)) = candidates.iter().find(|(_, w)| {
                    let hit = pick < *w;
                    pick = pick.saturating_sub(*w);
                    hit
                }) {
                    let down_for = match (action, target) {
                        (Action::Pause, _) if !first_pause_done => 10.0,
                        (Action::Pause, Target::Broker(_)) => rng.random_range(2.0..8.0),
                        (Action::Pause, _) => rng.random_range(1.0..12.0),
                        (Action::Kill, Target::Broker(_)) => rng.random_range(2.0..6.0),
                        (Action::Kill, _) => rng.random_range(0.5..4.0),
                    };
                    eprintln!(
                        "chaos: t={:>5.1}s {} {target:?}, back in {down_for:.1}s",
                        started.elapsed().as_secs_f64(),
                        if action == Action::Kill { "kill" } else { "pause" }
                    );
                    match action {
                        Action::Kill => services.kill(*target),
                        Action::Pause => {
                            services.pause(*target);
                            first_pause_done = true;
                        }
                    }
                    due_back.push((Instant::now() + Duration::from_secs_f64(down_for), action, *target));
                }
                next_event = Instant::now() + Duration::from_secs_f64(rng.random_range(0.5..1.5) * mean_gap);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, action, target) in due_back {
            match action {
                Action::Kill => {
                    services.start(target);
                    services.restarts += 1;
                }
                Action::Pause => services.resume(target),
            }
        }
        stop_clients.store(true, Ordering::Relaxed);
        let mut sent = Vec::new();
        for client in clients {
            sent.extend(client.join().expect("client thread"));
        }
        services.restart_exited();
        // Let the view catch up before the sampler stops, so it sees the last steps too.
        std::thread::sleep(Duration::from_secs(3));
        stop_sampler.store(true, Ordering::Relaxed);
        (sent, sampler.join().expect("sampler thread"))
    });

    let Services { mut processors, kills, pauses, restarts, exits, .. } = services;
    let count = |fate: Fate| sent.iter().filter(|(_, f)| *f == fate).count();
    let (accepted, refused, uncertain_n) = (count(Fate::Accepted), count(Fate::Refused), count(Fate::Uncertain));
    let uncertain: HashSet<String> =
        sent.iter().filter(|(_, f)| *f == Fate::Uncertain).map(|(c, _)| c.command_id.clone()).collect();
    let commands: Vec<CommandEnvelope> =
        sent.iter().filter(|(_, f)| *f != Fate::Refused).map(|(c, _)| c.clone()).collect();
    let orders_accepted = accepted_orders.lock().map(|o| o.len()).unwrap_or(0);
    eprintln!("chaos: {accepted} commands accepted, {refused} refused, {uncertain_n} uncertain; {orders_accepted} orders placed; {reads} view reads");

    let view_dir = wagon_lits_dir.join("view");
    let (report, view_diffs) = converge_report(&env, &commands, &uncertain, |expected| {
        match state::ViewStore::open_read_only(&view_dir, &state::StoreOptions::default()) {
            Ok(view) => compare_view(&view, expected),
            Err(e) => vec![format!("cannot open the view: {e}")],
        }
    });

    // The view rebuilt from order-updates equals the live one.
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_wagon-lits"))
        .args(["replay", "--brokers", &env.kafka.brokers, "--into"])
        .arg(env.dir.path().join("replayed"))
        .arg("--compare-with")
        .arg(&wagon_lits_dir)
        .output()
        .expect("running wagon-lits replay");
    let replay_out = String::from_utf8_lossy(&replay.stdout).into_owned();
    let replay_equal = replay.status.success() && replay_out.contains("the rebuilt view equals the live one");

    let total_kills: u32 = kills.values().sum();
    let total_pauses: u32 = pauses.values().sum();
    let kills = |kind: &str| kills.get(kind).copied().unwrap_or(0);
    let pauses = |kind: &str| pauses.get(kind).copied().unwrap_or(0);
    let duplicated = report.duplicated_versions + report.unexpected_updates;
    eprintln!(
        "chaos summary: seed={seed} seconds={} orders={orders_accepted} commands={accepted} kills={total_kills} \
         (dev-materiels={} wagon-lits={} broker={}) pauses={total_pauses} (dev-materiels={} wagon-lits={} broker={}) \
         restarts={} self-exits={} lost={} duplicated={duplicated} gaps={} out-of-order={} unsettled={} went-back={} \
         replay={}",
        started.elapsed().as_secs(),
        kills("dev-materiels"),
        kills("wagon-lits"),
        kills("broker"),
        pauses("dev-materiels"),
        pauses("wagon-lits"),
        pauses("broker"),
        restarts,
        exits.len(),
        report.lost_commands,
        report.version_gaps,
        report.out_of_order,
        report.unsettled,
        went_back.len(),
        if replay_equal { "equal" } else { "DIFFERENT" },
    );
    if !report.holds() || !view_diffs.is_empty() || !went_back.is_empty() || !exits.is_empty() {
        dump_failure(&env, seed, &report, &view_diffs, &sent);
    }
    assert!(
        view_diffs.is_empty(),
        "the view differs from the oracle in {} orders: {:#?}",
        view_diffs.len(),
        &view_diffs[..view_diffs.len().min(10)]
    );
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    assert_eq!(report.unsettled, 0, "orders whose timer never fired: {}\n{:#?}", report.summary(), report.examples);
    assert!(went_back.is_empty(), "the view went back: {went_back:#?}");
    assert!(replay_equal, "replay: {replay_out}{}", String::from_utf8_lossy(&replay.stderr));
    assert!(
        exits.is_empty(),
        "processes exited by themselves during the run: {exits:?} (logs in /tmp/chaos-failure-{seed}/)"
    );
    assert!(total_kills >= min_kills, "only {total_kills} kills");
    for kind in ["dev-materiels", "wagon-lits", "broker"] {
        assert!(kills(kind) > 0, "no {kind} was killed");
    }
    assert!(pauses("dev-materiels") > 0, "no dev-materiels was paused");
    assert!(orders_accepted > 0, "no order was accepted");
    for p in processors.iter_mut().flatten() {
        p.terminate();
    }
}
