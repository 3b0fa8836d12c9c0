//! The oracle: what `order-updates` must hold for the commands a test sent, written from the
//! documented rules alone (README, "The messages"; `docs/architecture.md`, "Idempotence and
//! refusals" and "Timers"). It shares no code with `state/`: it reads commands and updates as
//! JSON, in its own types, and decides with its own rules. A bug in the production state machine
//! therefore shows here as a difference, instead of being replayed into the expectation.
//!
//! The rules, as documented:
//!
//! - `PlaceOrder` on an order never placed: `Rejected` if it has no lines, more than 50 lines, a
//!   quantity outside 1..=999 or an SKU outside the catalogue (with a reason), `Accepted`
//!   otherwise (no reason).
//! - `Accepted` becomes `InPreparation` on a timer due `prepare_after` after the transition that
//!   set it; `InPreparation` becomes `Shipped` on a timer due `ship_after` after that.
//! - `CancelOrder` from `Accepted` or `InPreparation`: `Cancelled`, the command's reason as the
//!   update's reason, no timer left. `ConfirmDelivery` from `Shipped`: `Delivered`.
//! - A command that does not fit the status: a `Refused` update with a reason, status unchanged.
//! - `PlaceOrder` on a placed order: the same content under a new id is a retry and gives
//!   nothing; other content is refused.
//! - A command id seen before gives nothing: a command that moved the order is remembered for
//!   the order's life, a refused one among the order's last 256 refused commands.
//! - Every update takes the order's next version, from 1; per order, versions reach the topic in
//!   increasing order.
//!
//! The commands of an order are taken in the order they reached `orders` (one partition, one
//! producer per client; tests pass them in that order). *When* a timer fires is the one thing the
//! oracle cannot know in advance: it takes the timer's update as it comes, checks that it was due
//! (its timestamp at or after the due time) and that it is the transition the rules give.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::Deserialize;

/// Most lines an order may have.
const MAX_LINES: usize = 50;
/// The refused command ids an order remembers.
const REMEMBERED_REFUSALS: usize = 256;

/// The configuration the oracle judges against: dev-materiels' catalogue and timer delays.
#[derive(Debug, Clone)]
pub struct Rules {
    pub catalogue: HashSet<String>,
    pub prepare_after_ms: u64,
    pub ship_after_ms: u64,
}

/// A line of an order, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u64,
}

/// A command's body, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum Body {
    PlaceOrder { wagon_id: String, requested_by: String, lines: Vec<Line> },
    CancelOrder { reason: String },
    ConfirmDelivery {},
}

/// A command, as on `orders`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Sent {
    pub command_id: String,
    pub order_id: String,
    pub command: Body,
}

impl Sent {
    /// Reads a command from its JSON record value.
    pub fn from_json(bytes: &[u8]) -> Result<Sent, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// An update, as on `order-updates`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Update {
    pub order_id: String,
    pub version: u64,
    pub status: Option<String>,
    pub previous_status: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub trigger: String,
    pub command_id: Option<String>,
    pub timestamp_ms: u64,
}

impl Update {
    /// Reads an update from its JSON record value.
    pub fn from_json(bytes: &[u8]) -> Result<Update, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// Orders with at least one update, expected or seen.
    pub orders: usize,
    /// Updates read from the topic.
    pub updates_seen: usize,
    /// (order, version) pairs seen more than once on the topic.
    pub duplicated_versions: usize,
    /// Versions missing between 1 and an order's highest version.
    pub version_gaps: usize,
    /// Updates that reached the topic after a higher version of their order.
    pub out_of_order: usize,
    /// Commands that should have produced an update and did not.
    pub lost_commands: usize,
    /// Updates the rules do not give there.
    pub unexpected_updates: usize,
    /// Orders whose last state still waits on a timer (a timer that never fired, or a run that
    /// did not wait for it).
    pub unsettled: usize,
    /// The final (version, status) of every order, per the rules.
    pub expected: BTreeMap<String, (u64, Option<String>)>,
    /// The first few differences, for the failure message.
    pub examples: Vec<String>,
}

impl Report {
    /// Nothing lost, doubled, skipped, reordered or made up.
    pub fn is_exactly_once(&self) -> bool {
        self.duplicated_versions == 0
            && self.version_gaps == 0
            && self.out_of_order == 0
            && self.lost_commands == 0
            && self.unexpected_updates == 0
    }

    /// Exactly once, and every timer fired.
    pub fn holds(&self) -> bool {
        self.is_exactly_once() && self.unsettled == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "orders={} updates={} duplicated={} gaps={} out-of-order={} lost={} unexpected={} unsettled={}",
            self.orders,
            self.updates_seen,
            self.duplicated_versions,
            self.version_gaps,
            self.out_of_order,
            self.lost_commands,
            self.unexpected_updates,
            self.unsettled
        )
    }
}

/// The statuses, by their names on the wire.
const ACCEPTED: &str = "Accepted";
const REJECTED: &str = "Rejected";
const IN_PREPARATION: &str = "InPreparation";
const SHIPPED: &str = "Shipped";
const DELIVERED: &str = "Delivered";
const CANCELLED: &str = "Cancelled";

/// What the oracle keeps of an order.
#[derive(Debug, Clone, Default)]
struct Order {
    version: u64,
    status: Option<&'static str>,
    /// The content of the `PlaceOrder` that placed it: (wagon, requester, lines).
    placed: Option<(String, String, Vec<Line>)>,
    moved_by: HashSet<String>,
    refused: VecDeque<String>,
    /// The timer the order waits on: which transition, and when it falls due.
    timer: Option<(&'static str, u64)>,
}

/// An update the rules give, to compare with the topic's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    version: u64,
    status: Option<&'static str>,
    previous_status: Option<&'static str>,
    outcome: &'static str,
    /// `None`: no reason; `Some(None)`: some reason; `Some(Some(r))`: exactly `r`.
    reason: Option<Option<String>>,
    trigger: &'static str,
    command_id: Option<String>,
}

impl Expected {
    fn matches(&self, u: &Update) -> bool {
        let reason_ok = match (&self.reason, &u.reason) {
            (None, None) => true,
            (Some(None), Some(r)) => !r.trim().is_empty(),
            (Some(Some(expected)), Some(r)) => expected == r,
            _ => false,
        };
        self.version == u.version
            && self.status == u.status.as_deref()
            && self.previous_status == u.previous_status.as_deref()
            && self.outcome == u.outcome
            && reason_ok
            && self.trigger == u.trigger
            && self.command_id == u.command_id
    }
}

impl Order {
    fn has_seen(&self, command_id: &str) -> bool {
        self.moved_by.contains(command_id) || self.refused.iter().any(|c| c == command_id)
    }

    /// The order after `to` at `now`, and the update that says so.
    fn moved(
        &self,
        to: &'static str,
        reason: Option<Option<String>>,
        trigger: &'static str,
        command_id: Option<&str>,
        now: u64,
        rules: &Rules,
    ) -> (Order, Expected) {
        let mut next = self.clone();
        next.version += 1;
        next.status = Some(to);
        next.timer = match to {
            ACCEPTED => Some((IN_PREPARATION, now + rules.prepare_after_ms)),
            IN_PREPARATION => Some((SHIPPED, now + rules.ship_after_ms)),
            _ => None,
        };
        if let Some(id) = command_id {
            next.moved_by.insert(id.to_string());
        }
        let expected = Expected {
            version: next.version,
            status: Some(to),
            previous_status: self.status,
            outcome: "Applied",
            reason,
            trigger,
            command_id: command_id.map(str::to_string),
        };
        (next, expected)
    }

    fn refuse(&self, command_id: &str) -> (Order, Expected) {
        let mut next = self.clone();
        next.version += 1;
        if next.refused.len() == REMEMBERED_REFUSALS {
            next.refused.pop_front();
        }
        next.refused.push_back(command_id.to_string());
        let expected = Expected {
            version: next.version,
            status: self.status,
            previous_status: self.status,
            outcome: "Refused",
            reason: Some(None),
            trigger: "Command",
            command_id: Some(command_id.to_string()),
        };
        (next, expected)
    }

    /// What `command` does to the order at `now`; `None`: nothing.
    fn decide(&self, command: &Sent, rules: &Rules, now: u64) -> Option<(Order, Expected)> {
        if self.has_seen(&command.command_id) {
            return None;
        }
        let id = command.command_id.as_str();
        match (&command.command, self.status) {
            (Body::PlaceOrder { wagon_id, requested_by, lines }, None) => {
                let content = (wagon_id.clone(), requested_by.clone(), lines.clone());
                let valid = !lines.is_empty()
                    && lines.len() <= MAX_LINES
                    && lines.iter().all(|l| (1..=999).contains(&l.quantity) && rules.catalogue.contains(&l.sku));
                let (mut next, expected) = if valid {
                    self.moved(ACCEPTED, None, "Command", Some(id), now, rules)
                } else {
                    self.moved(REJECTED, Some(None), "Command", Some(id), now, rules)
                };
                next.placed = Some(content);
                Some((next, expected))
            }
            (Body::PlaceOrder { wagon_id, requested_by, lines }, Some(_)) => {
                let content = (wagon_id.clone(), requested_by.clone(), lines.clone());
                if self.placed.as_ref() == Some(&content) {
                    None
                } else {
                    Some(self.refuse(id))
                }
            }
            (Body::CancelOrder { reason }, Some(ACCEPTED | IN_PREPARATION)) => {
                Some(self.moved(CANCELLED, Some(Some(reason.clone())), "Command", Some(id), now, rules))
            }
            (Body::ConfirmDelivery {}, Some(SHIPPED)) => {
                Some(self.moved(DELIVERED, None, "Command", Some(id), now, rules))
            }
            (Body::CancelOrder { .. } | Body::ConfirmDelivery {}, _) => Some(self.refuse(id)),
        }
    }

    /// The timer's transition, if the order waits on one; `due` says whether it was due at `now`.
    fn fire(&self, now: u64, rules: &Rules) -> Option<(Order, Expected, bool)> {
        let (to, due_ms) = self.timer?;
        let trigger = if to == IN_PREPARATION { "PrepareTimer" } else { "ShipTimer" };
        let (next, expected) = self.moved(to, None, trigger, None, now, rules);
        Some((next, expected, now >= due_ms))
    }
}

/// Checks `updates` (as read from the topic, in offset order per partition) against `commands`
/// (in the order they reached `orders`).
pub fn check(commands: &[Sent], updates: &[Update], rules: &Rules) -> Report {
    check_uncertain(commands, &HashSet::new(), updates, rules)
}

/// [`check`], where the commands whose ids are in `uncertain` may or may not have been sent (a
/// client whose request got no answer, then a refusal on retry): each may be applied once or not
/// at all, and is counted lost by neither.
pub fn check_uncertain(commands: &[Sent], uncertain: &HashSet<String>, updates: &[Update], rules: &Rules) -> Report {
    let mut report = Report { updates_seen: updates.len(), ..Report::default() };
    let mut sent: HashMap<&str, Vec<&Sent>> = HashMap::new();
    for c in commands {
        sent.entry(c.order_id.as_str()).or_default().push(c);
    }
    let mut seen: HashMap<&str, Vec<&Update>> = HashMap::new();
    for u in updates {
        seen.entry(u.order_id.as_str()).or_default().push(u);
    }
    let mut orders: Vec<&str> = sent.keys().chain(seen.keys()).copied().collect::<HashSet<_>>().into_iter().collect();
    orders.sort_unstable();

    for order in orders {
        let commands = sent.get(order).cloned().unwrap_or_default();
        let observed = seen.get(order).cloned().unwrap_or_default();
        check_versions(order, &observed, &mut report);

        // Each version's first copy, in version order.
        let mut first_copies: Vec<&Update> = Vec::new();
        let mut taken = HashSet::new();
        for u in &observed {
            if taken.insert(u.version) {
                first_copies.push(u);
            }
        }
        first_copies.sort_by_key(|u| u.version);

        let mut state = Order::default();
        let mut next_command = 0;
        for u in first_copies {
            let expected = if u.trigger == "Command" {
                expected_for_command(order, u, &state, &commands, &mut next_command, uncertain, rules, &mut report)
            } else {
                match state.fire(u.timestamp_ms, rules) {
                    Some((next, expected, true)) => Some((next, expected)),
                    Some((_, _, false)) => {
                        report.unexpected_updates += 1;
                        report.note(format!("{order}: {} fired before it was due: {u:?}", u.trigger));
                        None
                    }
                    None => None,
                }
            };
            match expected {
                Some((next, expected)) if expected.matches(u) => state = next,
                Some((next, expected)) => {
                    report.unexpected_updates += 1;
                    report.note(format!("{order}: topic has {u:?}, the rules give {expected:?}"));
                    state = next;
                }
                None => {
                    report.unexpected_updates += 1;
                    report.note(format!("{order}: topic has {u:?}, the rules give no update there"));
                }
            }
        }
        // What is left must change nothing.
        for c in &commands[next_command..] {
            if uncertain.contains(&c.command_id) {
                continue;
            }
            if let Some((next, _)) = state.decide(c, rules, u64::MAX / 4) {
                report.lost_commands += 1;
                report.note(format!("{order}: command {} was never applied", c.command_id));
                state = next;
            }
        }
        if state.version > 0 {
            if state.timer.is_some() {
                report.unsettled += 1;
                report.note(format!("{order}: still {:?}, waiting on a timer", state.status));
            }
            report.expected.insert(order.to_string(), (state.version, state.status.map(str::to_string)));
        }
    }
    report.orders = report.expected.len();
    report
}

/// Each (order, version) once, no gap below the highest, and in increasing order on the topic.
fn check_versions(order: &str, observed: &[&Update], report: &mut Report) {
    let mut versions: BTreeMap<u64, usize> = BTreeMap::new();
    let mut highest_so_far = 0;
    for u in observed {
        *versions.entry(u.version).or_default() += 1;
        if u.version < highest_so_far {
            report.out_of_order += 1;
            report.note(format!("{order}: v{} reached the topic after v{highest_so_far}", u.version));
        }
        highest_so_far = highest_so_far.max(u.version);
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
}

/// The next command that changes the order is the one `u` names; the ones before it that should
/// have changed something are lost.
#[allow(clippy::too_many_arguments)]
fn expected_for_command(
    order: &str,
    u: &Update,
    state: &Order,
    commands: &[&Sent],
    next_command: &mut usize,
    uncertain: &HashSet<String>,
    rules: &Rules,
    report: &mut Report,
) -> Option<(Order, Expected)> {
    while *next_command < commands.len() {
        let c = commands[*next_command];
        *next_command += 1;
        let named = Some(c.command_id.as_str()) == u.command_id.as_deref();
        let Some(decision) = state.decide(c, rules, u.timestamp_ms) else { continue };
        if named {
            return Some(decision);
        }
        if uncertain.contains(&c.command_id) {
            continue;
        }
        report.lost_commands += 1;
        report
            .note(format!("{order}: command {} gave no update (next update is for {:?})", c.command_id, u.command_id));
        // Re-sync on the command the update names, if it was sent.
        let pos =
            commands[*next_command..].iter().position(|x| Some(x.command_id.as_str()) == u.command_id.as_deref())?;
        let c = commands[*next_command + pos];
        *next_command += pos + 1;
        return state.decide(c, rules, u.timestamp_ms);
    }
    None
}
