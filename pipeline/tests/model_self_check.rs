//! The reference model catches what it is there to catch: a lost command, a command applied
//! twice, a duplicated or skipped version. (Without this, a model that always says "fine" would
//! pass every other test.)

mod support;

use pipeline::workload::{Mix, Workload};
use state::{decide, fire_timer, CommandEnvelope, Decision, OrderState, OrderUpdate};
use support::{model, rules};

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

fn workload() -> Vec<CommandEnvelope> {
    Workload::new(9, "SELF", 0).place_phase(300, Mix::REALISTIC)
}

#[test]
fn an_honest_run_passes() {
    let commands = workload();
    let report = model::check(&commands, &honest_updates(&commands), &rules());
    assert!(report.is_exactly_once(), "{}: {:#?}", report.summary(), report.examples);
    assert_eq!(report.unsettled, 0);
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
    let report = model::check(&commands, &updates, &rules());
    assert!(report.lost_commands >= 1, "{}", report.summary());
    assert!(!report.is_exactly_once());
}

#[test]
fn a_command_applied_twice_and_a_duplicated_version_are_caught() {
    let commands = workload();
    let mut updates = honest_updates(&commands);
    // The same update delivered twice.
    updates.push(updates[0].clone());
    let report = model::check(&commands, &updates, &rules());
    assert_eq!(report.duplicated_versions, 1, "{}", report.summary());

    // A command processed again under the next version.
    let mut updates = honest_updates(&commands);
    let first = updates.iter().find(|u| u.version == 1).expect("an update").clone();
    let last_version =
        updates.iter().filter(|u| u.order_id == first.order_id).map(|u| u.version).max().expect("versions");
    updates.push(OrderUpdate { version: last_version + 1, ..first });
    let report = model::check(&commands, &updates, &rules());
    assert!(report.unexpected_updates >= 1, "{}", report.summary());
    assert!(!report.is_exactly_once());
}

#[test]
fn a_skipped_version_is_caught() {
    let commands = workload();
    let mut updates = honest_updates(&commands);
    let i = updates.iter().position(|u| u.version == 2).expect("a second version");
    updates.remove(i);
    let report = model::check(&commands, &updates, &rules());
    assert!(report.version_gaps >= 1 || report.lost_commands >= 1, "{}", report.summary());
    assert!(!report.is_exactly_once());
}
