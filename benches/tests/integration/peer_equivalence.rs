//! The Kafka Streams peer (`peers/kafka-streams/`) decides exactly as dev-materiels does: fed the
//! same records of `orders` at the same processing times, and the same punctuations, it gives the
//! same updates, byte for byte, in the same order, and dead-letters the same records.
//!
//! Why: the end-to-end bench compares dev-materiels with the peer. That comparison is only fair
//! if both do the same work, so the peer must be the same state machine (`state/src/order/mod.rs`):
//! the same checks in the same order, the same reasons word for word, the same idempotence
//! (applied command ids remembered for life, the last 256 refused ones), the same timers, the
//! same validation of what reaches the machine (`decode_command`), and the same JSON out.
//!
//! How: a deterministic stream of about 20,000 events is made: the workload's place phase
//! (`Workload::place_phase` with `Mix::REALISTIC`), a pause for the timers, its delivery phase for
//! the orders that shipped, then hand-made records (invalid ones of every kind, edge cases of the
//! JSON and of the rules, an order flooded with more than 256 refused commands, a re-placement
//! under a new id), with punctuation ticks every 20 ms of stream time (prepare and ship after
//! 1 s, so timers fire throughout). The reference is the Rust machine itself, in a small driver
//! here (`decode_command`, `decide`, `fire_timer`, a `BTreeSet<(due, order id)>` of timers). The
//! peer runs the same events with `rail.peer.Replay`, which drives the peer's own decoder,
//! machine, task and binary state serde over in-memory stores (no Kafka). The two outputs must be
//! equal line by line; the stream must have produced every status, outcome and trigger.
//!
//! Needs Java 17 and Maven (`scripts/setup.sh`): the peer is built with Maven when its classes are
//! missing or older than its sources. On a difference, the events and both outputs are kept under
//! the target's temporary directory (the path is in the failure message).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, SystemTime};

use pipeline::workload::{Mix, Workload};
use state::{
    decide, decode_command, fire_timer, Catalogue, Command, CommandEnvelope, Decision, OrderLine, OrderState,
    OrderStatus, PlaceOrder, Rules,
};

const PREPARE_AFTER_MS: u64 = 1_000;
const SHIP_AFTER_MS: u64 = 1_000;
/// Stream time between two punctuations.
const TICK_EVERY_MS: u64 = 20;
const START_MS: u64 = 1_764_190_000_000;
/// Orders of the place phase.
const ORDERS: usize = 9_500;

/// One input of both machines, as a line of `rail.peer.Replay`'s input.
enum Event {
    /// A record of `orders`, processed at `at_ms`.
    Record { at_ms: u64, key: Option<String>, value: Option<String> },
    /// A punctuation at `at_ms`: every timer due then fires.
    Tick { at_ms: u64 },
}

impl Event {
    fn line(&self) -> String {
        match self {
            Event::Record { at_ms, key, value } => {
                serde_json::json!({"at_ms": at_ms, "key": key, "value": value}).to_string()
            }
            Event::Tick { at_ms } => serde_json::json!({"at_ms": at_ms, "tick": true}).to_string(),
        }
    }
}

/// The line both sides print for a dead letter.
fn dead_letter_line(key: Option<&str>) -> String {
    format!("{{\"dead_letter\":true,\"key\":{}}}", serde_json::to_string(&key).expect("a key as JSON"))
}

/// dev-materiels' decisions, without Kafka: what a task does with its store and timer queue.
struct Reference {
    rules: Rules,
    states: HashMap<String, OrderState>,
    /// (due, order id), as `state::TimerQueue`.
    timers: BTreeSet<(u64, String)>,
}

impl Reference {
    fn new() -> Reference {
        Reference {
            rules: Rules {
                catalogue: Catalogue::default(),
                prepare_after: Duration::from_millis(PREPARE_AFTER_MS),
                ship_after: Duration::from_millis(SHIP_AFTER_MS),
            },
            states: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    fn run(&mut self, event: &Event, out: &mut Vec<String>) {
        match event {
            Event::Record { at_ms, key, value } => {
                match decode_command(key.as_deref().map(str::as_bytes), value.as_deref().map(str::as_bytes)) {
                    Err(_) => out.push(dead_letter_line(key.as_deref())),
                    Ok(envelope) => {
                        let decision = decide(self.states.get(&envelope.order_id), &envelope, &self.rules, *at_ms);
                        if let Decision::Update { state, update } = decision {
                            self.store(state);
                            out.push(serde_json::to_string(&update).expect("an update as JSON"));
                        }
                    }
                }
            }
            Event::Tick { at_ms } => {
                // TimerQueue::pop_due: the due entries leave the queue first, then fire in order.
                let mut due = Vec::new();
                while self.timers.first().is_some_and(|(due_ms, _)| due_ms <= at_ms) {
                    if let Some((_, order_id)) = self.timers.pop_first() {
                        due.push(order_id);
                    }
                }
                for order_id in due {
                    let Some(state) = self.states.get(&order_id) else { continue };
                    let decision = fire_timer(state, &self.rules, *at_ms);
                    if let Decision::Update { state, update } = decision {
                        self.store(state);
                        out.push(serde_json::to_string(&update).expect("an update as JSON"));
                    }
                }
            }
        }
    }

    /// Stores a new state and moves its timer in the queue (`TimerQueue::replace`).
    fn store(&mut self, state: OrderState) {
        let old = self.states.get(&state.order_id).and_then(|s| s.timer);
        if old != state.timer {
            if let Some(old) = old {
                self.timers.remove(&(old.due_ms, state.order_id.clone()));
            }
            if let Some(new) = state.timer {
                self.timers.insert((new.due_ms, state.order_id.clone()));
            }
        }
        self.states.insert(state.order_id.clone(), state);
    }

    fn status(&self, order_id: &str) -> Option<OrderStatus> {
        self.states.get(order_id).and_then(|s| s.status)
    }
}

/// The event stream being made, with the reference run over it as it grows (the delivery phase
/// depends on which orders shipped).
struct Stream {
    events: Vec<Event>,
    now_ms: u64,
    next_tick_ms: u64,
    reference: Reference,
    decided: usize,
    expected: Vec<String>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            events: Vec::new(),
            now_ms: START_MS,
            next_tick_ms: START_MS + TICK_EVERY_MS,
            reference: Reference::new(),
            decided: 0,
            expected: Vec::new(),
        }
    }

    /// Lets `ms` of stream time pass, with the punctuations that fall in it.
    fn wait(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        while self.next_tick_ms <= until {
            self.events.push(Event::Tick { at_ms: self.next_tick_ms });
            self.next_tick_ms += TICK_EVERY_MS;
        }
        self.now_ms = until;
    }

    /// A record, one millisecond after the previous one.
    fn record(&mut self, key: Option<&str>, value: Option<&str>) {
        self.wait(1);
        self.events.push(Event::Record {
            at_ms: self.now_ms,
            key: key.map(str::to_string),
            value: value.map(str::to_string),
        });
    }

    /// A command as wagon-lits sends it: keyed by its order id, in JSON.
    fn command(&mut self, envelope: &CommandEnvelope) {
        let value = serde_json::to_string(envelope).expect("a command as JSON");
        self.record(Some(envelope.order_id.as_str()), Some(value.as_str()));
    }

    /// Runs the reference over the events added since the last call.
    fn decide(&mut self) {
        for event in &self.events[self.decided..] {
            self.reference.run(event, &mut self.expected);
        }
        self.decided = self.events.len();
    }
}

fn place(order_id: &str, command_id: &str, lines: Vec<(&str, u32)>) -> CommandEnvelope {
    let lines = lines.into_iter().map(|(sku, quantity)| OrderLine { sku: sku.to_string(), quantity }).collect();
    let place = PlaceOrder { wagon_id: "WL-1042".into(), requested_by: "agent-7".into(), lines };
    CommandEnvelope::new(command_id, order_id, START_MS, Command::PlaceOrder(place))
}

fn cancel(order_id: &str, command_id: &str, reason: &str) -> CommandEnvelope {
    CommandEnvelope::new(command_id, order_id, START_MS, Command::CancelOrder { reason: reason.into() })
}

fn confirm(order_id: &str, command_id: &str) -> CommandEnvelope {
    CommandEnvelope::new(command_id, order_id, START_MS, Command::ConfirmDelivery {})
}

fn json(envelope: &CommandEnvelope) -> String {
    serde_json::to_string(envelope).expect("a command as JSON")
}

/// The whole event stream, and the reference's output for it.
fn make_stream() -> Stream {
    let mut s = Stream::new();

    // The workload: its place phase, a pause long enough for every accepted order to ship, then
    // its delivery phase for the orders that shipped.
    let mut workload = Workload::new(20_251_127, "EQ", START_MS);
    let placements = workload.place_phase(ORDERS, Mix::REALISTIC);
    for command in &placements {
        s.command(command);
    }
    s.wait(PREPARE_AFTER_MS + SHIP_AFTER_MS + 5 * TICK_EVERY_MS);
    s.decide();
    let shipped: Vec<String> = (0..ORDERS)
        .map(|i| workload.order_id(i))
        .filter(|id| s.reference.status(id) == Some(OrderStatus::Shipped))
        .collect();
    assert!(shipped.len() > ORDERS / 2, "only {} orders shipped", shipped.len());
    for command in workload.delivery_phase(&shipped, 0.8, 0.5, 0.05) {
        s.command(&command);
    }

    // Re-placements: the same content under a new id is a client retry (nothing), other content
    // is refused; for a workload order, and for an order placed here.
    let mut retry = placements[0].clone();
    retry.command_id = format!("{}/retry", retry.order_id);
    s.command(&retry);
    let mut placed = place("EQ-replaced", "EQ-replaced/p", vec![("BRAKE-PAD-UIC", 4), ("BERTH-LADDER", 1)]);
    s.command(&placed);
    placed.command_id = "EQ-replaced/p2".into();
    s.command(&placed); // same content, new id: nothing
    let mut different = placed.clone();
    different.command_id = "EQ-replaced/p3".into();
    if let Command::PlaceOrder(p) = &mut different.command {
        p.lines[0].quantity = 5;
    }
    s.command(&different); // refused

    // A flood of refused commands on one order: the first refused id is forgotten after 256
    // later refusals and decided again; a recent one and the placement are still remembered.
    s.command(&place("EQ-flood", "EQ-flood/p", vec![("HVAC-FILTER-G4", 2)]));
    for i in 0..300 {
        s.command(&confirm("EQ-flood", &format!("EQ-flood/c{i}")));
    }
    s.command(&confirm("EQ-flood", "EQ-flood/c0")); // forgotten: refused again, a new version
    s.command(&confirm("EQ-flood", "EQ-flood/c299")); // remembered: nothing
    s.command(&confirm("EQ-flood", "EQ-flood/c10")); // forgotten too
    s.command(&place("EQ-flood", "EQ-flood/p", vec![("HVAC-FILTER-G4", 2)])); // applied: remembered for life

    // Cancellation in preparation; no timer fires for it afterwards.
    s.command(&place("EQ-prep", "EQ-prep/p", vec![("DOOR-SEAL-1800", 3)]));
    s.wait(PREPARE_AFTER_MS + 2 * TICK_EVERY_MS);
    s.command(&cancel("EQ-prep", "EQ-prep/x", "wagon withdrawn"));
    s.command(&confirm("EQ-prep", "EQ-prep/d")); // cannot confirm a cancelled order

    // A refused command before the placement: the order has a state (version 1) but no status.
    s.command(&cancel("EQ-late", "EQ-late/x", "too early"));
    s.command(&place("EQ-late", "EQ-late/p", vec![("BUFFER-105MM", 1)]));
    // Rules: every check of check_order, in its order.
    s.command(&place("EQ-nolines", "EQ-nolines/p", vec![]));
    s.command(&place("EQ-51", "EQ-51/p", vec![("BRAKE-PAD-UIC", 1); 51]));
    s.command(&place("EQ-50", "EQ-50/p", vec![("BRAKE-PAD-UIC", 999); 50]));
    s.command(&place("EQ-q0", "EQ-q0/p", vec![("BRAKE-PAD-UIC", 1), ("X\"y\u{1}", 0)]));
    s.command(&place("EQ-q1000", "EQ-q1000/p", vec![("BRAKE-PAD-UIC", 1000)]));
    s.command(&place("EQ-qmax", "EQ-qmax/p", vec![("BRAKE-PAD-UIC", u32::MAX)]));
    s.command(&place("EQ-order", "EQ-order/p", vec![("NOPE", 1), ("BRAKE-PAD-UIC", 0)]));
    s.command(&place("EQ-sku", "EQ-sku/p", vec![("WEIRD \"q\" \\ \t\n\r\0 é\u{301} \u{1F600} \u{a0}\u{1}\u{7f}'", 2)]));
    s.command(&cancel("EQ-nolines", "EQ-nolines/x", "rejected already")); // cannot cancel Rejected
    s.command(&place("EQ-nolines", "EQ-nolines/p2", vec![])); // same content as the rejected one: nothing
    s.command(&place("EQ-text", "EQ-text/p", vec![("LINEN-SET-DOUBLE", 2)]));
    s.command(&cancel("EQ-text", "EQ-text/x", "bye \u{1}\u{1f} \u{1F600} / \u{2028} \u{7f} \\ \"")); // the reason, in JSON
    s.command(&confirm("EQ-\u{1F600}-é", "\u{1c}")); // an id Java's isWhitespace calls blank, Rust does not
    let long_ok = "é".repeat(64); // 128 bytes
    s.command(&cancel(&long_ok, &long_ok, "x"));

    // Records that never reach the machine, and valid ones in unusual JSON.
    let good = json(&confirm("EQ-json", "EQ-json/c"));
    let with = |from: &str, to: &str| {
        assert!(good.contains(from), "{from} is not in {good}");
        good.replacen(from, to, 1)
    };
    let key = Some("EQ-json");
    let records: Vec<(Option<&str>, Option<String>)> = vec![
        (key, Some(String::new())),
        (key, Some(" \t\r\n\u{c}".into())),
        (key, None),
        (None, None),
        (key, Some("this is not json {".into())),
        (key, Some(with("}}", "},\"extra\":true}"))),
        (Some("EQ-other"), Some(good.clone())),
        (Some(""), Some(good.clone())),
        (key, Some(with("\"schema_version\":1", "\"schema_version\":2"))),
        (key, Some(with("\"schema_version\":1", "\"schema_version\":0"))),
        (key, Some(with("\"schema_version\":1", "\"schema_version\":1.0"))),
        (key, Some(with("\"schema_version\":1", "\"schema_version\":\"1\""))),
        (key, Some(with("\"schema_version\":1", "\"schema_version\":4294967297"))),
        (key, Some(with("EQ-json/c", &"c".repeat(129)))),
        (key, Some(with("EQ-json/c", " \u{a0}\u{3000}\u{2009}"))),
        (key, Some(with("EQ-json/c", ""))),
        (Some(""), Some(with("\"order_id\":\"EQ-json\"", "\"order_id\":\"\""))),
        (key, Some(with("EQ-json/c", "\\ud800"))),
        (key, Some(with("EQ-json/c", "\\udc00x"))),
        (key, Some(with("\"issued_at_ms\":1764190000000", "\"issued_at_ms\":-1"))),
        (key, Some(with("\"issued_at_ms\":1764190000000", "\"issued_at_ms\":18446744073709551616"))),
        (key, Some(with("\"issued_at_ms\":1764190000000", "\"issued_at_ms\":1e3"))),
        (key, Some(with("\"issued_at_ms\":1764190000000", "\"issued_at_ms\":-0"))),
        (key, Some(with("\"issued_at_ms\":1764190000000", "\"issued_at_ms\":null"))),
        (key, Some(format!("\u{feff}{good}"))),
        (key, Some(format!("{good} x"))),
        (key, Some(format!("{good}{{}}"))),
        (key, Some(with("\"command_id\"", "\"command_id\":\"dup\",\"command_id\""))),
        (key, Some(with("{\"type\":", "{\"type\":\"ConfirmDelivery\",\"type\":"))),
        (key, Some(with("\"ConfirmDelivery\"", "\"CancelOrder\""))),
        (key, Some(with("\"ConfirmDelivery\"", "\"ConfirmDelivery\",\"reason\":\"x\""))),
        (key, Some(with("\"ConfirmDelivery\"", "\"Teleport\""))),
        (key, Some(with("\"ConfirmDelivery\"", "0"))),
        (key, Some(with("{\"type\":\"ConfirmDelivery\"}", "{}"))),
        (key, Some(with("{\"type\":\"ConfirmDelivery\"}", "\"ConfirmDelivery\""))),
        (key, Some(with("\"command\"", "\"Command\""))),
        (key, Some("null".into())),
        (key, Some("42".into())),
        (key, Some("[]".into())),
        (key, Some("[{\"schema_version\":1}]".into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",["ConfirmDelivery"],1]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json"]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",["ConfirmDelivery",1]]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",["CancelOrder"]]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",[]]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",["PlaceOrder","W","r",[["BRAKE-PAD-UIC",1,2]]]]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",{"type":"PlaceOrder","wagon_id":"W","requested_by":"r","lines":[{"sku":"BRAKE-PAD-UIC","quantity":1,"x":0}]}]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",{"type":"PlaceOrder","wagon_id":"W","requested_by":"r","lines":[{"sku":"BRAKE-PAD-UIC","quantity":-0}]}]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",{"type":"PlaceOrder","wagon_id":"W","requested_by":"r","lines":[{"sku":"BRAKE-PAD-UIC","quantity":2.5}]}]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",{"type":"PlaceOrder","wagon_id":"W","requested_by":"r","lines":[{"sku":"BRAKE-PAD-UIC","quantity":4294967296}]}]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",{"type":"PlaceOrder","wagon_id":"W","requested_by":"r","lines":{"sku":"BRAKE-PAD-UIC","quantity":1}}]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",{"type":"PlaceOrder","wagon_id":"W","requested_by":"r","lines":[],"reason":"x"}]"#.into())),
        (key, Some(r#"[1,"EQ-json/a",0,"EQ-json",{"type":"PlaceOrder","wagon_id":7,"requested_by":"r","lines":[]}]"#.into())),
        // Valid, though unusual: each gives an update.
        (None, Some(with("EQ-json/c", "EQ-json/nokey"))),
        (key, Some(format!(" \n{good}\t\r\n "))),
        (key, Some(r#"[1,"EQ-json/s1",0,"EQ-json",["CancelOrder","why"]]"#.into())),
        (Some("EQ-json2"), Some(r#"[1,"EQ-json2/p",18446744073709551615,"EQ-json2",["PlaceOrder","W","r",[["BRAKE-PAD-UIC",2],{"quantity":3,"sku":"BERTH-LADDER"}]]]"#.into())),
        (Some("EQ-json2"), Some(r#"{"command":{"lines":[["BRAKE-PAD-UIC",2],["BERTH-LADDER",3]],"requested_by":"r","typ\u0065":"PlaceOrder","wagon_id":"W"},"order_id":"EQ-json2","issued_at_ms":0,"command_id":"EQ-json2/p2","schema_version":1}"#.into())),
        (Some("EQ-json2"), Some(r#"{"command":{"lines":[["BRAKE-PAD-UIC",2]],"requested_by":"r","type":"PlaceOrder","wagon_id":"W"},"order_id":"EQ-json2","issued_at_ms":0,"command_id":"EQ-json2/p3","schema_version":1}"#.into())),
        (Some("EQ-json3"), Some(r#"{"schema_version":1,"command_id":"EQ-json3/\u00e9\ud83d\ude00\/","issued_at_ms":0,"order_id":"EQ-json3","command":{"type":"CancelOrder","reason":"\u0000\b\f\u001f\u007f\u2028 \"\\"}}"#.into())),
        (Some("EQ-json4"), Some(r#"{"schema_version":1,"command_id":"EQ-json4/c","issued_at_ms":0,"order_id":"EQ-json4","command":["PlaceOrder","W","r",[["LED-READING-LAMP",40]]]}"#.into())),
    ];
    s.command(&place("EQ-json3", "EQ-json3/p", vec![("BRAKE-PAD-UIC", 1)])); // cancelled below, with an escaped reason
    for (key, value) in &records {
        s.record(*key, value.as_deref());
    }
    // Let the last timers fire.
    s.wait(PREPARE_AFTER_MS + SHIP_AFTER_MS + 5 * TICK_EVERY_MS);
    s.decide();
    s
}

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers").join("kafka-streams")
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() { newest(&path) } else { entry.metadata().and_then(|m| m.modified()).ok() };
        latest = latest.max(time);
    }
    latest
}

/// Builds the peer with Maven when its classes are missing or older than its sources (as the e2e
/// bench does, see `peer_classpath` in `src/bin/e2e.rs`); returns its classpath.
fn peer_classpath() -> String {
    let dir = peer_dir();
    let classes = dir.join("target").join("classes");
    let deps = dir.join("target").join("dependency");
    let replay_class = classes.join("rail/peer/Replay.class");
    let built = std::fs::metadata(&replay_class).and_then(|m| m.modified()).ok();
    let sources = newest(&dir.join("src")).max(std::fs::metadata(dir.join("pom.xml")).and_then(|m| m.modified()).ok());
    if built.is_none() || !deps.exists() || sources > built {
        eprintln!("building the Kafka Streams peer with Maven...");
        let status = Process::new("mvn")
            .args(["-B", "-q", "-f"])
            .arg(dir.join("pom.xml"))
            .args(["package", "dependency:copy-dependencies"])
            .status()
            .expect("running mvn (scripts/setup.sh installs Maven)");
        assert!(status.success(), "building the Kafka Streams peer failed ({status})");
    }
    format!("{}:{}/*", classes.display(), deps.display())
}

/// Runs `rail.peer.Replay` on the events; its stdout, line by line.
fn run_peer(input: String) -> Vec<String> {
    let mut child = Process::new("java")
        .arg("-cp")
        .arg(peer_classpath())
        .arg("rail.peer.Replay")
        .args(["--prepare-after-ms", &PREPARE_AFTER_MS.to_string(), "--ship-after-ms", &SHIP_AFTER_MS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting java (Java 17: scripts/setup.sh installs it)");
    let mut stdin = child.stdin.take().expect("the replay's stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("running rail.peer.Replay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rail.peer.Replay failed ({}):\n{stderr}", output.status);
    writer.join().expect("the thread writing the events").expect("writing the events to rail.peer.Replay");
    let stdout = String::from_utf8(output.stdout).expect("the replay's output is UTF-8");
    stdout.lines().map(str::to_string).collect()
}

/// Keeps the inputs and outputs of a failed comparison; returns where.
fn keep(events: &str, expected: &[String], actual: &[String]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peer_equivalence");
    std::fs::create_dir_all(&dir).expect("a directory for the outputs");
    std::fs::write(dir.join("events.jsonl"), events).expect("writing the events");
    std::fs::write(dir.join("rust.jsonl"), expected.join("\n") + "\n").expect("writing the Rust output");
    std::fs::write(dir.join("java.jsonl"), actual.join("\n") + "\n").expect("writing the Java output");
    dir
}

/// How many outputs have each status, outcome and trigger, and how many are dead letters.
fn tally(lines: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).expect("an output line is JSON");
        if value["dead_letter"].as_bool() == Some(true) {
            *counts.entry("dead letter".to_string()).or_insert(0) += 1;
            continue;
        }
        for field in ["status", "outcome", "trigger"] {
            if let Some(name) = value[field].as_str() {
                *counts.entry(format!("{field} {name}")).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[test]
fn the_kafka_streams_peer_decides_exactly_as_the_rust_machine() {
    let stream = make_stream();
    let events: String = stream.events.iter().map(|e| e.line() + "\n").collect();
    let expected = &stream.expected;
    eprintln!("{} events, {} outputs from the Rust machine", stream.events.len(), expected.len());
    assert!(stream.events.len() >= 15_000, "only {} events", stream.events.len());

    // The stream exercises the whole machine.
    let counts = tally(expected);
    eprintln!("{counts:#?}");
    for what in [
        "status Accepted",
        "status Rejected",
        "status InPreparation",
        "status Shipped",
        "status Delivered",
        "status Cancelled",
        "outcome Applied",
        "outcome Refused",
        "trigger Command",
        "trigger PrepareTimer",
        "trigger ShipTimer",
        "dead letter",
    ] {
        assert!(counts.get(what).copied().unwrap_or(0) > 0, "no output with {what}: {counts:#?}");
    }
    // The first refused command of the flood was decided twice (forgotten after 256 refusals).
    let c0 = expected.iter().filter(|l| l.contains("\"command_id\":\"EQ-flood/c0\"")).count();
    assert_eq!(c0, 2, "EQ-flood/c0 should be refused twice");

    let actual = run_peer(events.clone());
    let first_difference = (0..expected.len().max(actual.len())).find(|&i| expected.get(i) != actual.get(i));
    if let Some(i) = first_difference {
        let dir = keep(&events, expected, &actual);
        let from = i.saturating_sub(3);
        let show = |lines: &[String]| -> String {
            (from..=i + 2)
                .filter_map(|j| lines.get(j).map(|l| format!("{}{j:>6}: {l}", if j == i { ">" } else { " " })))
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "the peer's output differs from the Rust machine's at line {} (of {} from Rust, {} from the peer)\n\
             Rust:\n{}\npeer:\n{}\nevents and both outputs kept in {}",
            i,
            expected.len(),
            actual.len(),
            show(expected.as_slice()),
            show(actual.as_slice()),
            dir.display()
        );
    }
}
