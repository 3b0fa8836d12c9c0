//! The oracle catches what it is there to catch: a lost command, a command applied twice, a
//! duplicated, skipped or reordered version, a timer that fired early or never, an update the
//! documented rules do not give. (Without this, an oracle that always says "fine" would pass
//! every other test.)
//!
//! The honest processor here is the production state machine (`state::decide`): the oracle,
//! written from the documented rules only, agreeing with it on a realistic workload is also a
//! check that the code does what the README says.

use crate::support::oracle::{self, Update};
use crate::support::{rules, wire_commands, PREPARE_AFTER_MS, SHIP_AFTER_MS};
use pipeline::workload::{Mix, Workload};
use state::{decide, fire_timer, CommandEnvelope, Decision, OrderState, OrderUpdate};

/// What a correct processor emits for `commands`, firing each timer as soon as it is due.
fn honest_updates(commands: &[CommandEnvelope]) -> Vec<OrderUpdate> {
    let rules = rules();
    let mut states: std::collections::HashMap<String, OrderState> = Default::default();
    let mut out = Vec::new();
    let mut now = 1_000_000u64;
    for c in commands {
        now += 1;
        if let Decision::Update { state, update } = decide(states.get(&c.order_id), c, &rules, now) {
            states.insert(c.order_id.clone(), state);
            out.push(update);
        }
    }
    // Then time passes and every timer fires.
    for _ in 0..3 {
        now += 10_000;
        for state in states.values_mut() {
            if let Decision::Update { state: next, update } = fire_timer(state, &rules, now) {
                *state = next;
                out.push(update);
            }
        }
    }
    out
}

fn oracle_rules() -> oracle::Rules {
    oracle::Rules {
        catalogue: state::catalogue::DEFAULT_SKUS.iter().map(|s| s.to_string()).collect(),
        prepare_after_ms: PREPARE_AFTER_MS,
        ship_after_ms: SHIP_AFTER_MS,
    }
}

/// The updates as the oracle reads them off the topic.
fn wire(updates: &[OrderUpdate]) -> Vec<Update> {
    updates.iter().map(|u| Update::from_json(&serde_json::to_vec(u).expect("encode")).expect("decode")).collect()
}

fn check(commands: &[CommandEnvelope], updates: &[OrderUpdate]) -> oracle::Report {
    oracle::check(&wire_commands(commands), &wire(updates), &oracle_rules())
}

fn workload() -> Vec<CommandEnvelope> {
    Workload::new(9, "SELF", 0).place_phase(300, Mix::REALISTIC)
}

#[test]
fn an_honest_run_passes() {
    let commands = workload();
    let report = check(&commands, &honest_updates(&commands));
    assert!(report.holds(), "{}: {:#?}", report.summary(), report.examples);
    // Every kind of update was judged: rejections, refusals, cancellations, both timers.
    let updates = honest_updates(&commands);
    for status in ["Rejected", "Cancelled", "InPreparation", "Shipped"] {
        assert!(updates.iter().any(|u| u.status.map(|s| s.as_str()) == Some(status)), "no {status} in the workload");
    }
    assert!(updates.iter().any(|u| u.outcome == state::Outcome::Refused), "no refusal in the workload");
}

#[test]
fn a_lost_command_is_caught() {
    let commands = workload();
    let mut updates = honest_updates(&commands);
    // Drop the update of the first cancellation: as if the command was never processed.
    let i = updates.iter().position(|u| u.status == Some(state::OrderStatus::Cancelled)).expect("a cancellation");
    let dropped = updates.remove(i);
    // Later versions of that order would then be renumbered by a real processor; keep it simple:
    // remove them too.
    updates.retain(|u| u.order_id != dropped.order_id || u.version < dropped.version);
    let report = check(&commands, &updates);
    assert!(report.lost_commands >= 1, "{}", report.summary());
    assert!(!report.is_exactly_once());
}

#[test]
fn a_command_applied_twice_and_a_duplicated_version_are_caught() {
    let commands = workload();
    let mut updates = honest_updates(&commands);
    // The same update delivered twice.
    updates.push(updates[0].clone());
    let report = check(&commands, &updates);
    assert_eq!(report.duplicated_versions, 1, "{}", report.summary());

    // A command processed again under the next version.
    let mut updates = honest_updates(&commands);
    let first = updates.iter().find(|u| u.version == 1).expect("an update").clone();
    let last_version =
        updates.iter().filter(|u| u.order_id == first.order_id).map(|u| u.version).max().expect("versions");
    updates.push(OrderUpdate { version: last_version + 1, ..first });
    let report = check(&commands, &updates);
    assert!(report.unexpected_updates >= 1, "{}", report.summary());
    assert!(!report.is_exactly_once());
}

#[test]
fn a_skipped_version_is_caught() {
    let commands = workload();
    let mut updates = honest_updates(&commands);
    let i = updates.iter().position(|u| u.version == 2).expect("a second version");
    updates.remove(i);
    let report = check(&commands, &updates);
    assert!(report.version_gaps >= 1 || report.lost_commands >= 1, "{}", report.summary());
    assert!(!report.is_exactly_once());
}

#[test]
fn versions_out_of_topic_order_are_caught() {
    let commands = workload();
    let mut updates = honest_updates(&commands);
    // An order's version 2 reaches the topic before its version 1 (an HTTP decision published
    // after a later Kafka decision of the same order).
    let v1 = updates.iter().position(|u| u.version == 1 && u.status == Some(state::OrderStatus::Accepted)).expect("v1");
    let order = updates[v1].order_id.clone();
    let v2 = updates.iter().position(|u| u.order_id == order && u.version == 2).expect("v2");
    updates.swap(v1, v2);
    let report = check(&commands, &updates);
    assert!(report.out_of_order >= 1, "{}", report.summary());
    assert!(!report.is_exactly_once(), "a reordering passed: {}", report.summary());
}

#[test]
fn a_timer_that_never_fired_or_fired_early_is_caught() {
    let commands = workload();
    // The last shipping timer never fires: the order stays in preparation.
    let mut updates = honest_updates(&commands);
    let i = updates.iter().rposition(|u| u.trigger == state::Trigger::ShipTimer).expect("a shipping timer");
    updates.remove(i);
    let report = check(&commands, &updates);
    assert_eq!(report.unsettled, 1, "{}", report.summary());
    assert!(!report.holds());

    // A preparation timer fires 1 ms before it is due.
    let mut updates = honest_updates(&commands);
    let i = updates.iter().position(|u| u.trigger == state::Trigger::PrepareTimer).expect("a preparation timer");
    let set_at = updates.iter().find(|u| u.order_id == updates[i].order_id && u.version == 1).expect("v1").timestamp_ms;
    updates[i].timestamp_ms = set_at + PREPARE_AFTER_MS - 1;
    let report = check(&commands, &updates);
    assert!(report.unexpected_updates >= 1, "{}", report.summary());
}

#[test]
fn an_update_the_rules_do_not_give_is_caught() {
    let commands = workload();
    let honest = honest_updates(&commands);
    // A cancellation that does not carry the command's reason.
    let mut updates = honest.clone();
    let i = updates.iter().position(|u| u.status == Some(state::OrderStatus::Cancelled)).expect("a cancellation");
    updates[i].reason = Some("something else".into());
    assert!(check(&commands, &updates).unexpected_updates >= 1);
    // A rejected order that says it was accepted.
    let mut updates = honest.clone();
    let i = updates.iter().position(|u| u.status == Some(state::OrderStatus::Rejected)).expect("a rejection");
    updates[i].status = Some(state::OrderStatus::Accepted);
    let (order, version) = (updates[i].order_id.clone(), updates[i].version);
    updates.retain(|u| u.order_id != order || u.version <= version);
    assert!(check(&commands, &updates).unexpected_updates >= 1);
    // A refusal that moved the order.
    let mut updates = honest;
    let i = updates.iter().position(|u| u.outcome == state::Outcome::Refused).expect("a refusal");
    updates[i].status = Some(state::OrderStatus::Delivered);
    assert!(check(&commands, &updates).unexpected_updates >= 1);
}
