//! The reference model: the pure state machine run over the commands the test sent, compared
//! with what dev-materiels put on `order-updates`.
//!
//! The commands of an order are replayed in the order they were sent (one partition, one
//! idempotent producer: Kafka keeps that order). Timers are wall-clock, so *when* a timer fired
//! between two commands is the one thing the model cannot know in advance: it takes that moment
//! from the timer's update on the topic, and checks that firing the timer then gives exactly that
//! update. Every other update must be exactly the one the model computes for the next command
//! that changes something, with the same timestamp-driven timers. So:
//!
//! - a command processed twice shows as an update the model does not expect (a duplicate);
//! - a command never processed shows as a missing update (a loss);
//! - an (order, version) seen twice on the topic, or a version skipped, is counted as such.

use std::collections::{BTreeMap, HashMap, HashSet};

use state::{decide, fire_timer, CommandEnvelope, Decision, OrderState, OrderStatus, OrderUpdate, Rules, Trigger};

#[derive(Debug, Default)]
pub struct ModelReport {
    /// Orders with at least one update, expected or seen.
    pub orders: usize,
    /// Updates read from the topic.
    pub updates_seen: usize,
    /// (order, version) pairs seen more than once on the topic.
    pub duplicated_versions: usize,
    /// Versions missing between 1 and an order's highest version.
    pub version_gaps: usize,
    /// Commands that should have produced an update and did not.
    pub lost_commands: usize,
    /// Updates that are not the one the model computes.
    pub unexpected_updates: usize,
    /// Orders whose last state still waits on a timer (the run did not settle).
    pub unsettled: usize,
    /// The final (version, status) of every order, per the model.
    pub expected: BTreeMap<String, (u64, Option<OrderStatus>)>,
    /// The first few differences, for the failure message.
    pub examples: Vec<String>,
}

impl ModelReport {
    pub fn is_exactly_once(&self) -> bool {
        self.duplicated_versions == 0
            && self.version_gaps == 0
            && self.lost_commands == 0
            && self.unexpected_updates == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "orders={} updates={} duplicated={} gaps={} lost={} unexpected={} unsettled={}",
            self.orders,
            self.updates_seen,
            self.duplicated_versions,
            self.version_gaps,
            self.lost_commands,
            self.unexpected_updates,
            self.unsettled
        )
    }
}

/// Checks `updates` (as read from the topic, in offset order per partition) against `commands`
/// (in the order they were sent).
pub fn check(commands: &[CommandEnvelope], updates: &[OrderUpdate], rules: &Rules) -> ModelReport {
    check_uncertain(commands, &HashSet::new(), updates, rules)
}

/// [`check`], where the commands whose ids are in `uncertain` may or may not have been sent (a
/// client whose request got no answer, then a refusal on retry): each may be applied once or not
/// at all, and is counted lost by neither.
pub fn check_uncertain(
    commands: &[CommandEnvelope],
    uncertain: &HashSet<String>,
    updates: &[OrderUpdate],
    rules: &Rules,
) -> ModelReport {
    let mut report = ModelReport { updates_seen: updates.len(), ..ModelReport::default() };
    let mut sent: HashMap<&str, Vec<&CommandEnvelope>> = HashMap::new();
    for c in commands {
        sent.entry(c.order_id.as_str()).or_default().push(c);
    }
    let mut seen: HashMap<&str, Vec<&OrderUpdate>> = HashMap::new();
    for u in updates {
        seen.entry(u.order_id.as_str()).or_default().push(u);
    }
    let orders: HashSet<&str> = sent.keys().chain(seen.keys()).copied().collect();
    let mut orders: Vec<&str> = orders.into_iter().collect();
    orders.sort_unstable();

    for order in orders {
        let commands = sent.get(order).cloned().unwrap_or_default();
        let observed = seen.get(order).cloned().unwrap_or_default();

        // (order, version) exactly once, without gaps.
        let mut versions: BTreeMap<u64, usize> = BTreeMap::new();
        for u in &observed {
            *versions.entry(u.version).or_default() += 1;
        }
        for (version, n) in &versions {
            if *n > 1 {
                report.duplicated_versions += n - 1;
                report.note(format!("{order} v{version} appears {n} times"));
            }
        }
        let highest = versions.keys().next_back().copied().unwrap_or(0);
        let gaps = (1..=highest).filter(|v| !versions.contains_key(v)).count();
        if gaps > 0 {
            report.version_gaps += gaps;
            report.note(format!("{order}: {gaps} versions missing below v{highest}"));
        }

        // Replay, taking each version's first copy.
        let mut first_copies: Vec<&OrderUpdate> = Vec::new();
        let mut taken = HashSet::new();
        for u in &observed {
            if taken.insert(u.version) {
                first_copies.push(u);
            }
        }
        first_copies.sort_by_key(|u| u.version);

        let mut state: Option<OrderState> = None;
        let mut next_command = 0;
        for u in first_copies {
            let expected = match u.trigger {
                Trigger::PrepareTimer | Trigger::ShipTimer => match &state {
                    Some(s) => fire_timer(s, rules, u.timestamp_ms),
                    None => Decision::Nothing,
                },
                Trigger::Command => {
                    let mut found = Decision::Nothing;
                    while next_command < commands.len() {
                        let c = commands[next_command];
                        next_command += 1;
                        match decide(state.as_ref(), c, rules, u.timestamp_ms) {
                            Decision::Nothing => continue,
                            _ if Some(c.command_id.as_str()) != u.command_id.as_deref()
                                && uncertain.contains(&c.command_id) =>
                            {
                                continue
                            }
                            decision => {
                                if Some(c.command_id.as_str()) != u.command_id.as_deref() {
                                    report.lost_commands += 1;
                                    report.note(format!(
                                        "{order}: command {} gave no update (next update is for {:?})",
                                        c.command_id, u.command_id
                                    ));
                                    // Re-sync on the command the update names, if it was sent.
                                    if let Some(pos) = commands[next_command..]
                                        .iter()
                                        .position(|x| Some(x.command_id.as_str()) == u.command_id.as_deref())
                                    {
                                        let c = commands[next_command + pos];
                                        next_command += pos + 1;
                                        found = decide(state.as_ref(), c, rules, u.timestamp_ms);
                                    }
                                } else {
                                    found = decision;
                                }
                                break;
                            }
                        }
                    }
                    found
                }
            };
            match expected {
                Decision::Update { state: next, update } if update == *u => state = Some(next),
                Decision::Update { state: next, update } => {
                    report.unexpected_updates += 1;
                    report.note(format!("{order}: topic has {u:?}, model computes {update:?}"));
                    state = Some(next);
                }
                Decision::Nothing => {
                    report.unexpected_updates += 1;
                    report.note(format!("{order}: topic has {u:?}, model expects no update there"));
                }
            }
        }
        // What is left must change nothing.
        for c in &commands[next_command..] {
            if uncertain.contains(&c.command_id) {
                continue;
            }
            if let Decision::Update { state: next, .. } = decide(state.as_ref(), c, rules, u64::MAX / 2) {
                report.lost_commands += 1;
                report.note(format!("{order}: command {} was never applied", c.command_id));
                state = Some(next);
            }
        }
        if let Some(s) = &state {
            if s.timer.is_some() {
                report.unsettled += 1;
            }
            report.expected.insert(order.to_string(), (s.version, s.status));
        }
    }
    report.orders = report.expected.len();
    report
}
