//! A decision taken over HTTP by an instance that is then gone for good, its store with it.
//!
//! While the broker is frozen, wagon-lits sends a cancellation over HTTP; dev-materiels decides it
//! (the client is told: Cancelled) and keeps the decision in its outbox, then dies with its state
//! directory before Kafka is back. Meanwhile another producer's command for the same order reaches
//! `orders` (nothing holds a producer other than wagon-lits). The partition's next owner never saw
//! the HTTP decision. What must happen:
//!
//! - wagon-lits, which keeps the command as pending, sends it again to `orders` (same command id)
//!   once Kafka takes commands: it is decided once, by the owner, on the owner's state;
//! - the client's answer said the decision was provisional; the view and `order-updates` end
//!   with the owner's decision, which here differs from what the client was told;
//! - the order's commands are no longer held, and nothing was lost, doubled or reordered.

use std::time::{Duration, Instant};

use crate::support::http::{Http, TOKEN};
use crate::support::{compare_view, converge_with, TestEnv};
use serde_json::json;
use state::{Command, CommandEnvelope, OrderLine, OrderStatus, PlaceOrder};

/// Waits until `f` gives a value, or panics with `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_decision_lost_with_its_instance_is_decided_again_and_the_answer_said_so() {
    let mut env = TestEnv::start("lost-decision", 2);
    // No timer fires during the test: the order stays Accepted until it is cancelled.
    env.timers_ms = (600_000, 600_000);
    let mut first = env.spawn_instance(0, 0);
    // Pending decisions are sent again 5 s after they were taken (PENDING_RESEND_AFTER_MS).
    let mut wagon_lits = env.spawn_wagon_lits_with(0, 1_000, &[("PENDING_RESEND_AFTER_MS", "5000")]);
    let api = Http::new(env.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(60));
    Http::new(env.dev_port, Some(TOKEN)).wait_ok("/readyz", Duration::from_secs(60));

    let lines = vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 2 }];
    let placed = api.post(
        "/orders",
        json!({"order_id": "LOST-1", "wagon_id": "WL-1", "requested_by": "agent", "lines": lines}).to_string(),
    );
    assert_eq!(placed.status, 202, "{}", placed.body);
    let place_id = placed.body["command_id"].as_str().expect("command id").to_string();
    wait_for("the order in the view", Duration::from_secs(30), || {
        (api.get("/orders/LOST-1").body["status"] == "Accepted").then_some(())
    });

    // Kafka away. A first command finds it gone and opens the circuit breaker (the broker may
    // still append that command when it wakes up: a delivery timeout is not a refusal); the
    // cancellation then goes straight over HTTP, never to Kafka, and the first instance decides it.
    env.cluster.pause(1).expect("SIGSTOP the broker");
    // (An order for an SKU outside the catalogue: rejected, it waits on no timer.)
    let unknown = vec![OrderLine { sku: "FLUX-CAPACITOR".into(), quantity: 1 }];
    let tripping = api.post(
        "/orders",
        json!({"order_id": "LOST-0", "wagon_id": "WL-1", "requested_by": "agent", "lines": unknown}).to_string(),
    );
    assert_eq!((tripping.status, tripping.body["path"].as_str()), (202, Some("http")), "{}", tripping.body);
    let tripping_id = tripping.body["command_id"].as_str().expect("command id").to_string();
    assert_eq!(api.get("/status").body["breaker"], "open");
    let cancelled = api.post("/orders/LOST-1/cancel", json!({"reason": "told over HTTP"}).to_string());
    assert_eq!(cancelled.status, 202, "{}", cancelled.body);
    assert_eq!(cancelled.body["path"], "http", "{}", cancelled.body);
    let cancel_id = cancelled.body["command_id"].as_str().expect("command id").to_string();
    let told = cancelled.body["updates"][0].clone();
    assert_eq!((told["version"].as_u64(), told["status"].as_str()), (Some(2), Some("Cancelled")), "{told}");
    let shown = api.get("/orders/LOST-1").body;

    // The instance dies with its store before it could publish the decision.
    first.kill();
    std::fs::remove_dir_all(env.dev_state_dir()).expect("remove the first instance's state");
    env.cluster.resume(1).expect("SIGCONT the broker");

    // Another producer's command for the order reaches `orders` first.
    let other = CommandEnvelope::new(
        "other-producer-1",
        "LOST-1",
        crate::support::now_ms(),
        Command::CancelOrder { reason: "told by another producer".into() },
    );
    env.producer().send_and_wait(&other).expect("the other producer's command");
    let mut owner = env.spawn_instance(1, 0);

    // wagon-lits sends the pending cancellation again; the owner decides it on its own state.
    let published = wait_for("the HTTP-decided command on order-updates", Duration::from_secs(90), || {
        owner.assert_running();
        wagon_lits.assert_running();
        env.updates().into_iter().find(|u| u.command_id.as_deref() == Some(cancel_id.as_str()))
    });
    eprintln!("lost decision: the client was told {told}; order-updates says {published:?}");
    // The answer said it was provisional, and so did the view while it waited.
    assert_eq!(cancelled.body["provisional"], true, "an HTTP decision is provisional: {}", cancelled.body);
    assert_eq!((shown["status"].as_str(), shown["provisional"].as_bool()), (Some("Cancelled"), Some(true)), "{shown}");
    assert_eq!(published.version, 3, "decided after the other producer's command: {published:?}");
    assert_eq!(published.status, Some(OrderStatus::Cancelled));
    assert_eq!(published.outcome, state::Outcome::Refused, "it found the order cancelled already");
    assert_ne!(
        (Some(published.version), published.outcome),
        (told["version"].as_u64(), state::Outcome::Applied),
        "this run should show an answer that differs from the final decision"
    );

    // The view follows order-updates, not the answer; nothing is held any more.
    let row = wait_for("the view to show the owner's decision", Duration::from_secs(30), || {
        let row = api.get("/orders/LOST-1").body;
        (row["version"] == 3).then_some(row)
    });
    assert_eq!(row["provisional"], serde_json::Value::Null, "{row}");
    assert_eq!(row["reason"], "cannot cancel an order that is Cancelled", "{row}");
    let metrics = String::from_utf8_lossy(&api.get("/metrics").raw).into_owned();
    assert!(metrics.contains("rail_pending_http_decisions 0"), "{metrics}");

    // Exactly once, per the oracle, with the commands in the order they reached `orders`.
    let place = PlaceOrder { wagon_id: "WL-1".into(), requested_by: "agent".into(), lines: lines.clone() };
    let sent = vec![
        CommandEnvelope::new(
            tripping_id,
            "LOST-0",
            0,
            Command::PlaceOrder(PlaceOrder { lines: unknown, ..place.clone() }),
        ),
        CommandEnvelope::new(place_id, "LOST-1", 0, Command::PlaceOrder(place)),
        other,
        CommandEnvelope::new(cancel_id, "LOST-1", 0, Command::CancelOrder { reason: "told over HTTP".into() }),
    ];
    let report = converge_with(&env, &sent, |expected| compare_view(&env.wagon_lits_view(), expected));
    eprintln!("lost decision: {}", report.summary());
    wagon_lits.terminate();
    owner.terminate();
}
