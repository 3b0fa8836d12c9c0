//! The order: commands, updates, statuses and the state machine that links them.
//!
//! Everything here is pure: no clock, no I/O. The caller passes the current time in, so the same
//! state, command and time always give the same decision. dev-materiels runs [`decide`] for each
//! command it reads from `orders` and [`fire_timer`] for each timer that falls due; the tests run
//! the very same functions as their reference model.
//!
//! ```text
//!                  PlaceOrder (valid)            timer               timer            ConfirmDelivery
//!   (none) ───────────────────────────▶ Accepted ──────▶ InPreparation ──────▶ Shipped ───────────────▶ Delivered
//!     │                                    │                   │
//!     │ PlaceOrder (invalid)               │ CancelOrder       │ CancelOrder
//!     ▼                                    ▼                   ▼
//!   Rejected                           Cancelled           Cancelled
//! ```
//!
//! Every decision that reaches the outside is an [`OrderUpdate`] with the next version of the
//! order. A command that does not fit the current status gives a [`Outcome::Refused`] update that
//! leaves the status as it was. A command whose id the order already saw gives nothing at all:
//! an order remembers the commands that moved it for its whole life, and its last
//! [`REMEMBERED_REFUSALS`] refused ones.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

use crate::catalogue::Catalogue;

pub mod json;
mod validation;

pub use validation::{check_envelope, decode_command, validate_envelope, InvalidCommand};

/// The only schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Most lines an order may carry.
pub const MAX_LINES: usize = 50;
/// Allowed quantity per line.
pub const QUANTITY_RANGE: std::ops::RangeInclusive<u32> = 1..=999;
/// How many ids of *refused* commands an order remembers for idempotence, the most recent ones.
/// The ids of the commands that moved the order (a handful in its life: the placement, then a
/// cancellation or a delivery) are remembered for the order's whole life. So a command that
/// moved the order never applies twice, whenever it is delivered again; a refused one delivered
/// again after 256 later refusals of the same order is decided again (and refused again, with a
/// new version). The bound only matters for a flood of refused commands on one order.
pub const REMEMBERED_REFUSALS: usize = 256;
/// Longest order id or command id accepted.
pub const MAX_ID_LEN: usize = 128;

/// The status of an order, as both services see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrderStatus {
    Accepted,
    Rejected,
    InPreparation,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Accepted,
        OrderStatus::Rejected,
        OrderStatus::InPreparation,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    /// No transition leaves a final status.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Delivered | OrderStatus::Cancelled)
    }

    /// A stable one-byte code, used as a key prefix by the stores.
    pub fn code(self) -> u8 {
        match self {
            OrderStatus::Accepted => 1,
            OrderStatus::Rejected => 2,
            OrderStatus::InPreparation => 3,
            OrderStatus::Shipped => 4,
            OrderStatus::Delivered => 5,
            OrderStatus::Cancelled => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Accepted => "Accepted",
            OrderStatus::Rejected => "Rejected",
            OrderStatus::InPreparation => "InPreparation",
            OrderStatus::Shipped => "Shipped",
            OrderStatus::Delivered => "Delivered",
            OrderStatus::Cancelled => "Cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown status {s:?}; expected one of Accepted, Rejected, InPreparation, Shipped, Delivered, Cancelled"))
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
}

/// The content of a `PlaceOrder` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub wagon_id: String,
    pub requested_by: String,
    pub lines: Vec<OrderLine>,
}

/// What wagon-lits asks of dev-materiels. Read from JSON in one pass ([`json`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", try_from = "json::WireCommand")]
pub enum Command {
    PlaceOrder(PlaceOrder),
    CancelOrder { reason: String },
    ConfirmDelivery {},
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::PlaceOrder(_) => "PlaceOrder",
            Command::CancelOrder { .. } => "CancelOrder",
            Command::ConfirmDelivery {} => "ConfirmDelivery",
        }
    }
}

/// A command as it travels on topic `orders` (key: the order id), in JSON:
///
/// ```json
/// {"schema_version":1,"command_id":"7f7c…","issued_at_ms":1764190000000,"order_id":"ORD-1",
///  "command":{"type":"PlaceOrder","wagon_id":"WL-42","requested_by":"agent-7",
///             "lines":[{"sku":"BRAKE-PAD-UIC","quantity":4}]}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandEnvelope {
    pub schema_version: u32,
    /// Unique per command: a command id seen twice by an order is applied once.
    pub command_id: String,
    /// When wagon-lits issued the command, in milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    pub order_id: String,
    pub command: Command,
}

impl CommandEnvelope {
    pub fn new(
        command_id: impl Into<String>,
        order_id: impl Into<String>,
        issued_at_ms: u64,
        command: Command,
    ) -> Self {
        CommandEnvelope {
            schema_version: SCHEMA_VERSION,
            command_id: command_id.into(),
            issued_at_ms,
            order_id: order_id.into(),
            command,
        }
    }
}

/// Whether an update moved the order or only reported a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The order moved from `previous_status` to `status`.
    Applied,
    /// The command did not fit the current status; `status` is unchanged and `reason` says why.
    Refused,
}

/// What set an update off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Trigger {
    /// A command; its id is in `command_id`.
    Command,
    /// The preparation timer (Accepted -> InPreparation).
    PrepareTimer,
    /// The shipping timer (InPreparation -> Shipped).
    ShipTimer,
}

/// What dev-materiels decided, on topic `order-updates` (key: the order id), in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderUpdate {
    pub schema_version: u32,
    pub order_id: String,
    /// 1 for the order's first update, then one more for each update.
    pub version: u64,
    /// The status after this update; `None` while the order was never placed.
    pub status: Option<OrderStatus>,
    pub previous_status: Option<OrderStatus>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub trigger: Trigger,
    /// The command that caused the update; `None` for timers.
    pub command_id: Option<String>,
    /// When the order is expected to ship ([`expected_ship`]), in milliseconds since the Unix
    /// epoch. Only version 2 of the Avro update schema carries it: the JSON form (whose readers
    /// refuse unknown fields) and the view's rows leave it out, so it reads as `None` from them.
    #[serde(skip)]
    pub expected_ship_ms: Option<u64>,
    /// When dev-materiels decided, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl OrderUpdate {
    /// The same update without its timestamp, for comparisons across runs.
    pub fn without_timestamp(&self) -> OrderUpdate {
        OrderUpdate { timestamp_ms: 0, ..self.clone() }
    }
}

/// Which timer an order waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimerKind {
    Prepare,
    Ship,
}

impl TimerKind {
    fn trigger(self) -> Trigger {
        match self {
            TimerKind::Prepare => Trigger::PrepareTimer,
            TimerKind::Ship => Trigger::ShipTimer,
        }
    }
}

/// A wall-clock timer kept with the order's state (a Kafka Streams punctuator, per order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timer {
    pub kind: TimerKind,
    pub due_ms: u64,
}

/// Everything dev-materiels keeps about one order: the value of its state store and of its
/// changelog records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub order_id: String,
    /// The version of the last update emitted for this order (0: none yet).
    pub version: u64,
    pub status: Option<OrderStatus>,
    /// The content of the `PlaceOrder` that created the order.
    pub placed: Option<PlaceOrder>,
    /// Ids of the commands that moved the order (outcome `Applied`), for its whole life.
    #[serde(default)]
    pub applied_commands: Vec<String>,
    /// Ids of the last refused commands, oldest first (at most [`REMEMBERED_REFUSALS`]). A state
    /// written before the two lists were kept apart has every id here (`seen_commands`).
    #[serde(alias = "seen_commands")]
    pub refused_commands: Vec<String>,
    pub timer: Option<Timer>,
}

impl OrderState {
    pub fn new(order_id: impl Into<String>) -> Self {
        OrderState {
            order_id: order_id.into(),
            version: 0,
            status: None,
            placed: None,
            applied_commands: Vec::new(),
            refused_commands: Vec::new(),
            timer: None,
        }
    }

    /// Whether the command was applied to this order (moved it, or was refused and is still
    /// remembered): delivered again, it changes nothing.
    pub fn has_seen(&self, command_id: &str) -> bool {
        self.applied_commands.iter().chain(&self.refused_commands).any(|c| c == command_id)
    }
}

/// The rules dev-materiels is configured with.
#[derive(Debug, Clone)]
pub struct Rules {
    pub catalogue: Catalogue,
    /// From Accepted to InPreparation.
    pub prepare_after: Duration,
    /// From InPreparation to Shipped.
    pub ship_after: Duration,
}

/// The result of running a command or a timer through the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // returned and consumed at once, never stored
pub enum Decision {
    /// Nothing to emit and nothing to store: a command id already seen, a `PlaceOrder` repeated
    /// with the same content, or a timer that no longer applies.
    Nothing,
    /// Store `state` and emit `update` (whose version is `state.version`).
    Update { state: OrderState, update: OrderUpdate },
}

/// Runs one command through the state machine. `state` is the order's current state, if it has
/// one; `now_ms` is the processing time.
pub fn decide(state: Option<&OrderState>, envelope: &CommandEnvelope, rules: &Rules, now_ms: u64) -> Decision {
    let mut current = state.cloned().unwrap_or_else(|| OrderState::new(envelope.order_id.clone()));
    match decide_in_place(&mut current, envelope, rules, now_ms) {
        Some(update) => Decision::Update { state: current, update },
        None => Decision::Nothing,
    }
}

/// [`decide`] on a state the caller owns, without copying it: `state` becomes the new state and
/// the update is returned, or `state` is left exactly as it was and `None` is returned. For an
/// order never seen, pass `OrderState::new(order_id)`.
pub fn decide_in_place(
    state: &mut OrderState,
    envelope: &CommandEnvelope,
    rules: &Rules,
    now_ms: u64,
) -> Option<OrderUpdate> {
    if state.has_seen(&envelope.command_id) {
        return None;
    }
    let status = state.status;
    let transition = match (&envelope.command, status) {
        (Command::PlaceOrder(place), None) => match check_order(place, &rules.catalogue) {
            Ok(()) => Step::to(OrderStatus::Accepted, None)
                .timer(Timer { kind: TimerKind::Prepare, due_ms: now_ms.saturating_add(millis(rules.prepare_after)) })
                .placed(place.clone()),
            Err(reason) => Step::to(OrderStatus::Rejected, Some(reason)).placed(place.clone()),
        },
        (Command::PlaceOrder(place), Some(_)) => {
            if state.placed.as_ref() == Some(place) {
                // The same order placed again under a new command id: a client retry.
                return None;
            }
            Step::refuse("order already placed with different content".to_string())
        }
        (Command::CancelOrder { reason }, _) => match status_refusal(status, &envelope.command) {
            Some(refusal) => Step::refuse(refusal),
            None => Step::to(OrderStatus::Cancelled, Some(reason.clone())).clear_timer(),
        },
        (Command::ConfirmDelivery {}, _) => match status_refusal(status, &envelope.command) {
            Some(refusal) => Step::refuse(refusal),
            None => Step::to(OrderStatus::Delivered, None),
        },
    };
    Some(transition.apply(state, Trigger::Command, Some(&envelope.command_id), rules, now_ms))
}

/// Why `command` does not fit an order in `status`, if it does not. A `PlaceOrder` always fits
/// here: whether it repeats or contradicts the placed order depends on its content.
pub fn status_refusal(status: Option<OrderStatus>, command: &Command) -> Option<String> {
    match (command, status) {
        (Command::PlaceOrder(_), _) => None,
        (_, None) => Some("unknown order".to_string()),
        (Command::CancelOrder { .. }, Some(OrderStatus::Accepted | OrderStatus::InPreparation)) => None,
        (Command::CancelOrder { .. }, Some(s)) => Some(format!("cannot cancel an order that is {s}")),
        (Command::ConfirmDelivery {}, Some(OrderStatus::Shipped)) => None,
        (Command::ConfirmDelivery {}, Some(s)) => Some(format!("cannot confirm delivery of an order that is {s}")),
    }
}

/// Fires the order's timer, if it is due and still applies.
pub fn fire_timer(state: &OrderState, rules: &Rules, now_ms: u64) -> Decision {
    let mut next = state.clone();
    match fire_timer_in_place(&mut next, rules, now_ms) {
        Some(update) => Decision::Update { state: next, update },
        None => Decision::Nothing,
    }
}

/// [`fire_timer`] on a state the caller owns: `state` becomes the new state and the update is
/// returned, or `state` is left as it was and `None` is returned.
pub fn fire_timer_in_place(state: &mut OrderState, rules: &Rules, now_ms: u64) -> Option<OrderUpdate> {
    let timer = state.timer?;
    if timer.due_ms > now_ms {
        return None;
    }
    let step = match (timer.kind, state.status) {
        (TimerKind::Prepare, Some(OrderStatus::Accepted)) => Step::to(OrderStatus::InPreparation, None)
            .timer(Timer { kind: TimerKind::Ship, due_ms: now_ms.saturating_add(millis(rules.ship_after)) }),
        (TimerKind::Ship, Some(OrderStatus::InPreparation)) => Step::to(OrderStatus::Shipped, None).clear_timer(),
        // A timer left behind by a status that moved on: never emitted, since every transition
        // out of a timed status clears or replaces the timer. Kept total for safety.
        _ => return None,
    };
    Some(step.apply(state, timer.kind.trigger(), None, rules, now_ms))
}

/// When an order is expected to ship, from its pending timer: the shipping timer's due time, or
/// the preparation timer's plus the shipping delay; `None` when no timer is pending (never
/// placed, rejected, shipped, delivered or cancelled).
pub fn expected_ship(state: &OrderState, rules: &Rules) -> Option<u64> {
    state.timer.map(|timer| match timer.kind {
        TimerKind::Ship => timer.due_ms,
        TimerKind::Prepare => timer.due_ms.saturating_add(millis(rules.ship_after)),
    })
}

/// Business checks of a new order. An order that fails them is `Rejected` (an update), not
/// dead-lettered: it was a well-formed command.
pub fn check_order(place: &PlaceOrder, catalogue: &Catalogue) -> Result<(), String> {
    if place.lines.is_empty() {
        return Err("order has no lines".to_string());
    }
    if place.lines.len() > MAX_LINES {
        return Err(format!("order has {} lines, at most {MAX_LINES} are allowed", place.lines.len()));
    }
    for (index, line) in place.lines.iter().enumerate() {
        if !QUANTITY_RANGE.contains(&line.quantity) {
            return Err(format!(
                "line {} ({}): quantity {} is outside {}..={}",
                index + 1,
                line.sku,
                line.quantity,
                QUANTITY_RANGE.start(),
                QUANTITY_RANGE.end()
            ));
        }
        catalogue.check(&line.sku, line.quantity).map_err(|why| format!("line {}: {why}", index + 1))?;
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One step of the machine, before it is stamped with a version.
struct Step {
    outcome: Outcome,
    status: Option<OrderStatus>,
    reason: Option<String>,
    timer: Option<Option<Timer>>,
    placed: Option<PlaceOrder>,
}

impl Step {
    fn to(status: OrderStatus, reason: Option<String>) -> Step {
        Step { outcome: Outcome::Applied, status: Some(status), reason, timer: None, placed: None }
    }
    fn refuse(reason: String) -> Step {
        Step { outcome: Outcome::Refused, status: None, reason: Some(reason), timer: None, placed: None }
    }
    fn timer(mut self, timer: Timer) -> Step {
        self.timer = Some(Some(timer));
        self
    }
    fn clear_timer(mut self) -> Step {
        self.timer = Some(None);
        self
    }
    fn placed(mut self, place: PlaceOrder) -> Step {
        self.placed = Some(place);
        self
    }

    fn apply(
        self,
        state: &mut OrderState,
        trigger: Trigger,
        command_id: Option<&str>,
        rules: &Rules,
        now_ms: u64,
    ) -> OrderUpdate {
        let previous_status = state.status;
        if let Some(status) = self.status {
            state.status = Some(status);
        }
        if let Some(timer) = self.timer {
            state.timer = timer;
        }
        if let Some(place) = self.placed {
            state.placed = Some(place);
        }
        if let Some(id) = command_id {
            match self.outcome {
                Outcome::Applied => state.applied_commands.push(id.to_string()),
                Outcome::Refused => {
                    if state.refused_commands.len() >= REMEMBERED_REFUSALS {
                        state.refused_commands.remove(0);
                    }
                    state.refused_commands.push(id.to_string());
                }
            }
        }
        state.version += 1;
        OrderUpdate {
            schema_version: SCHEMA_VERSION,
            order_id: state.order_id.clone(),
            version: state.version,
            status: state.status,
            previous_status,
            outcome: self.outcome,
            reason: self.reason,
            trigger,
            command_id: command_id.map(str::to_string),
            timestamp_ms: now_ms,
            expected_ship_ms: expected_ship(state, rules),
        }
    }
}
