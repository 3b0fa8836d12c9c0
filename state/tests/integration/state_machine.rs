//! The order state machine: examples of each rule, then property tests of its invariants.

use std::time::Duration;

use proptest::prelude::*;
use state::order::{check_order, MAX_LINES};
use state::{
    decide, decode_command, fire_timer, Catalogue, Command, CommandEnvelope, Decision, InvalidCommand, OrderLine,
    OrderState, OrderStatus, OrderUpdate, Outcome, PlaceOrder, Rules, Trigger,
};

fn rules() -> Rules {
    Rules {
        catalogue: Catalogue::default(),
        prepare_after: Duration::from_millis(100),
        ship_after: Duration::from_millis(200),
    }
}

fn place(lines: Vec<(&str, u32)>) -> Command {
    Command::PlaceOrder(PlaceOrder {
        wagon_id: "WL-1".into(),
        requested_by: "agent".into(),
        lines: lines.into_iter().map(|(sku, quantity)| OrderLine { sku: sku.into(), quantity }).collect(),
    })
}

fn cmd(id: &str, command: Command) -> CommandEnvelope {
    CommandEnvelope::new(id, "ORD-1", 1, command)
}

/// Applies a command, returning the new state and update, or None for `Decision::Nothing`.
fn step(state: Option<&OrderState>, envelope: &CommandEnvelope, now: u64) -> Option<(OrderState, OrderUpdate)> {
    match decide(state, envelope, &rules(), now) {
        Decision::Nothing => None,
        Decision::Update { state, update } => Some((state, update)),
    }
}

fn fire(state: &OrderState, now: u64) -> Option<(OrderState, OrderUpdate)> {
    match fire_timer(state, &rules(), now) {
        Decision::Nothing => None,
        Decision::Update { state, update } => Some((state, update)),
    }
}

#[test]
fn a_valid_order_goes_accepted_in_preparation_shipped_delivered() {
    let (s, u) = step(None, &cmd("c1", place(vec![("BRAKE-PAD-UIC", 4)])), 1000).expect("accepted");
    assert_eq!(
        (u.version, u.status, u.previous_status, u.outcome),
        (1, Some(OrderStatus::Accepted), None, Outcome::Applied)
    );
    assert_eq!(s.timer.map(|t| t.due_ms), Some(1100));
    assert!(fire(&s, 1099).is_none(), "timer not due yet");
    let (s, u) = fire(&s, 1100).expect("in preparation");
    assert_eq!((u.version, u.status, u.trigger), (2, Some(OrderStatus::InPreparation), Trigger::PrepareTimer));
    assert_eq!(s.timer.map(|t| t.due_ms), Some(1300));
    let (s, u) = fire(&s, 1300).expect("shipped");
    assert_eq!((u.version, u.status, u.trigger), (3, Some(OrderStatus::Shipped), Trigger::ShipTimer));
    assert_eq!(s.timer, None);
    let (s, u) = step(Some(&s), &cmd("c2", Command::ConfirmDelivery {}), 2000).expect("delivered");
    assert_eq!((u.version, u.status, u.previous_status), (4, Some(OrderStatus::Delivered), Some(OrderStatus::Shipped)));
    assert_eq!(u.command_id.as_deref(), Some("c2"));
    assert!(s.status.is_some_and(OrderStatus::is_final));
}

#[test]
fn invalid_orders_are_rejected_with_a_reason() {
    let cases: Vec<(Command, &str)> = vec![
        (place(vec![]), "no lines"),
        (place(vec![("BRAKE-PAD-UIC", 1); MAX_LINES + 1]), "51 lines"),
        (place(vec![("BRAKE-PAD-UIC", 0)]), "quantity 0"),
        (place(vec![("BRAKE-PAD-UIC", 1000)]), "quantity 1000"),
        (place(vec![("BRAKE-PAD-UIC", 1), ("FLUX-CAPACITOR", 1)]), "unknown SKU \"FLUX-CAPACITOR\""),
    ];
    for (command, expected) in cases {
        let (s, u) = step(None, &cmd("c1", command), 0).expect("rejected");
        assert_eq!(u.status, Some(OrderStatus::Rejected));
        assert_eq!(u.outcome, Outcome::Applied);
        let reason = u.reason.unwrap_or_default();
        assert!(reason.contains(expected), "reason {reason:?} should mention {expected:?}");
        assert_eq!(s.timer, None, "a rejected order waits for nothing");
    }
    assert!(check_order(
        &PlaceOrder {
            wagon_id: "w".into(),
            requested_by: "r".into(),
            lines: vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 999 }; MAX_LINES]
        },
        &Catalogue::default()
    )
    .is_ok());
}

#[test]
fn cancel_from_accepted_or_in_preparation_only() {
    let (accepted, _) = step(None, &cmd("c1", place(vec![("BUFFER-105MM", 2)])), 0).expect("accepted");
    let cancel = cmd("c2", Command::CancelOrder { reason: "wagon withdrawn".into() });
    let (s, u) = step(Some(&accepted), &cancel, 10).expect("cancelled");
    assert_eq!((u.status, u.reason.as_deref()), (Some(OrderStatus::Cancelled), Some("wagon withdrawn")));
    assert_eq!(s.timer, None, "cancelling drops the pending timer");
    assert!(fire(&s, u64::MAX).is_none());

    let (prep, _) = fire(&accepted, 100).expect("in preparation");
    let (_, u) = step(Some(&prep), &cancel, 150).expect("cancelled from preparation");
    assert_eq!(u.status, Some(OrderStatus::Cancelled));

    let (shipped, _) = fire(&prep, 300).expect("shipped");
    let (s, u) = step(Some(&shipped), &cancel, 400).expect("refused");
    assert_eq!(
        (u.outcome, u.status, u.previous_status),
        (Outcome::Refused, Some(OrderStatus::Shipped), Some(OrderStatus::Shipped))
    );
    assert_eq!(u.reason.as_deref(), Some("cannot cancel an order that is Shipped"));
    assert_eq!(s.version, shipped.version + 1, "a refusal is an update too");
}

#[test]
fn confirm_before_shipping_and_commands_for_unknown_orders_are_refused() {
    let (accepted, _) = step(None, &cmd("c1", place(vec![("BUFFER-105MM", 2)])), 0).expect("accepted");
    let (_, u) = step(Some(&accepted), &cmd("c2", Command::ConfirmDelivery {}), 1).expect("refused");
    assert_eq!((u.outcome, u.status), (Outcome::Refused, Some(OrderStatus::Accepted)));
    assert_eq!(u.reason.as_deref(), Some("cannot confirm delivery of an order that is Accepted"));

    let (s, u) = step(None, &cmd("c3", Command::CancelOrder { reason: "x".into() }), 1).expect("refused");
    assert_eq!(
        (u.outcome, u.status, u.version, u.reason.as_deref()),
        (Outcome::Refused, None, 1, Some("unknown order"))
    );
    // Placing it afterwards works, at the next version.
    let (_, u) = step(Some(&s), &cmd("c4", place(vec![("BUFFER-105MM", 2)])), 2).expect("accepted");
    assert_eq!((u.status, u.version), (Some(OrderStatus::Accepted), 2));
}

#[test]
fn a_command_id_seen_before_changes_nothing() {
    let first = cmd("c1", place(vec![("BUFFER-105MM", 2)]));
    let (s, _) = step(None, &first, 0).expect("accepted");
    assert!(step(Some(&s), &first, 5).is_none());
    let cancel = cmd("c2", Command::CancelOrder { reason: "r".into() });
    let (s, _) = step(Some(&s), &cancel, 6).expect("cancelled");
    assert!(step(Some(&s), &cancel, 7).is_none(), "a refused or applied id is never applied again");
}

#[test]
fn a_second_place_order_is_ignored_if_identical_and_refused_otherwise() {
    let (s, _) = step(None, &cmd("c1", place(vec![("BUFFER-105MM", 2)])), 0).expect("accepted");
    assert!(step(Some(&s), &cmd("c2", place(vec![("BUFFER-105MM", 2)])), 1).is_none());
    let (_, u) = step(Some(&s), &cmd("c3", place(vec![("BUFFER-105MM", 3)])), 1).expect("refused");
    assert_eq!(u.outcome, Outcome::Refused);
    assert_eq!(u.reason.as_deref(), Some("order already placed with different content"));
}

#[test]
fn decoding_says_what_is_wrong() {
    let good = serde_json::to_vec(&cmd("c1", place(vec![("BUFFER-105MM", 2)]))).expect("json");
    assert!(decode_command(Some(b"ORD-1"), Some(&good)).is_ok());
    assert_eq!(decode_command(Some(b"ORD-1"), None), Err(InvalidCommand::Empty));
    assert_eq!(decode_command(Some(b"ORD-1"), Some(b"")), Err(InvalidCommand::Empty));
    assert!(matches!(decode_command(None, Some(b"not json")), Err(InvalidCommand::Malformed(_))));
    assert!(matches!(decode_command(Some(b"ORD-2"), Some(&good)), Err(InvalidCommand::KeyMismatch { .. })));
    let v2 = String::from_utf8(good.clone()).expect("utf8").replace("\"schema_version\":1", "\"schema_version\":2");
    assert_eq!(decode_command(None, Some(v2.as_bytes())), Err(InvalidCommand::UnsupportedSchemaVersion { found: 2 }));
    let unknown =
        br#"{"schema_version":1,"command_id":"c","issued_at_ms":1,"order_id":"o","command":{"type":"Teleport"}}"#;
    match decode_command(None, Some(unknown)) {
        Err(InvalidCommand::Malformed(reason)) => assert!(reason.contains("Teleport"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let missing = br#"{"schema_version":1,"command_id":"c","issued_at_ms":1,"command":{"type":"ConfirmDelivery"}}"#;
    match decode_command(None, Some(missing)) {
        Err(InvalidCommand::Malformed(reason)) => assert!(reason.contains("order_id"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let empty_id = br#"{"schema_version":1,"command_id":" ","issued_at_ms":1,"order_id":"o","command":{"type":"ConfirmDelivery"}}"#;
    assert_eq!(decode_command(None, Some(empty_id)), Err(InvalidCommand::EmptyField { field: "command_id" }));
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Event {
    /// A command with an id from a small pool, so that ids repeat.
    Command { id: u8, command: Command },
    /// Time passes by this many milliseconds, then due timers fire.
    Tick(u64),
}

fn arb_command() -> impl Strategy<Value = Command> {
    let sku = prop_oneof![Just("BRAKE-PAD-UIC"), Just("BUFFER-105MM"), Just("NOT-IN-CATALOGUE")];
    let line = (sku, 0u32..1100).prop_map(|(sku, quantity)| OrderLine { sku: sku.to_string(), quantity });
    let place = proptest::collection::vec(line, 0..4)
        .prop_map(|lines| Command::PlaceOrder(PlaceOrder { wagon_id: "WL".into(), requested_by: "r".into(), lines }));
    prop_oneof![
        3 => place,
        2 => Just(Command::CancelOrder { reason: "changed plans".into() }),
        2 => Just(Command::ConfirmDelivery {}),
    ]
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    let event = prop_oneof![
        3 => (0u8..12, arb_command()).prop_map(|(id, command)| Event::Command { id, command }),
        2 => (0u64..400).prop_map(Event::Tick),
    ];
    proptest::collection::vec(event, 0..40)
}

/// Runs the events on one order; returns every update and the final state.
fn run(events: &[Event]) -> (Vec<OrderUpdate>, Option<OrderState>) {
    let mut now = 0u64;
    let mut state: Option<OrderState> = None;
    let mut updates = Vec::new();
    // A command id always carries the same command, as a real producer would send it.
    let mut by_id: std::collections::HashMap<u8, Command> = Default::default();
    for event in events {
        match event {
            Event::Command { id, command } => {
                let command = by_id.entry(*id).or_insert_with(|| command.clone()).clone();
                let envelope = CommandEnvelope::new(format!("c{id}"), "ORD-1", now, command);
                if let Some((s, u)) = step(state.as_ref(), &envelope, now) {
                    state = Some(s);
                    updates.push(u);
                }
            }
            Event::Tick(d) => {
                now += d;
                while let Some((s, u)) = state.as_ref().and_then(|s| fire(s, now)) {
                    state = Some(s);
                    updates.push(u);
                }
            }
        }
    }
    (updates, state)
}

proptest! {
    #[test]
    fn versions_are_contiguous_from_one(events in arb_events()) {
        let (updates, state) = run(&events);
        for (i, u) in updates.iter().enumerate() {
            prop_assert_eq!(u.version, i as u64 + 1);
        }
        prop_assert_eq!(state.map_or(0, |s| s.version), updates.len() as u64);
    }

    #[test]
    fn nothing_leaves_a_final_status(events in arb_events()) {
        let (updates, _) = run(&events);
        let mut finished = false;
        for u in &updates {
            if finished {
                prop_assert_eq!(u.outcome, Outcome::Refused, "update after a final status: {:?}", u);
                prop_assert_eq!(u.status, u.previous_status);
            }
            finished |= u.status.is_some_and(OrderStatus::is_final);
        }
    }

    #[test]
    fn refusals_never_change_the_status_and_applied_updates_always_do(events in arb_events()) {
        let (updates, _) = run(&events);
        for u in &updates {
            match u.outcome {
                Outcome::Refused => prop_assert_eq!(u.status, u.previous_status),
                Outcome::Applied => prop_assert_ne!(u.status, u.previous_status),
            }
        }
    }

    #[test]
    fn each_command_id_gives_at_most_one_update(events in arb_events()) {
        let (updates, _) = run(&events);
        let ids: Vec<_> = updates.iter().filter_map(|u| u.command_id.clone()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        prop_assert_eq!(ids.len(), unique.len());
    }

    #[test]
    fn replaying_the_same_commands_gives_the_same_updates(events in arb_events()) {
        let (first, state_a) = run(&events);
        let (second, state_b) = run(&events);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(&state_a, &state_b);
        // Replaying them onto the state they produced (redelivery) gives nothing new.
        if let Some(state) = state_a {
            for event in &events {
                if let Event::Command { id, command } = event {
                    let envelope = CommandEnvelope::new(format!("c{id}"), "ORD-1", 0, command.clone());
                    if state.has_seen(&envelope.command_id) {
                        prop_assert!(step(Some(&state), &envelope, u64::MAX / 2).is_none());
                    }
                }
            }
        }
    }
}

/// `n` refused commands (`ConfirmDelivery` on an order that is not shipped), ids `r0..`.
fn refusals(mut state: OrderState, n: usize, now: u64) -> OrderState {
    for i in 0..n {
        let (next, update) =
            step(Some(&state), &cmd(&format!("r{i}"), Command::ConfirmDelivery {}), now).expect("refused");
        assert_eq!(update.outcome, Outcome::Refused);
        state = next;
    }
    state
}

#[test]
fn a_command_that_moved_the_order_is_remembered_for_the_order_s_life() {
    let (s, _) = step(None, &cmd("c1", place(vec![("BRAKE-PAD-UIC", 4)])), 0).expect("accepted");
    let (s, _) = step(Some(&s), &cmd("c2", Command::CancelOrder { reason: "r".into() }), 1).expect("cancelled");
    // A flood of refused commands on the order...
    let s = refusals(s, 1_000, 2);
    // ...does not make it forget the commands that moved it: their re-delivery changes nothing.
    assert_eq!(step(Some(&s), &cmd("c2", Command::CancelOrder { reason: "r".into() }), 3), None);
    assert_eq!(step(Some(&s), &cmd("c1", place(vec![("BRAKE-PAD-UIC", 4)])), 3), None);
}

#[test]
fn a_refused_command_is_remembered_among_the_last_256_refused() {
    let (placed, _) = step(None, &cmd("c1", place(vec![("BRAKE-PAD-UIC", 4)])), 0).expect("accepted");
    let first = cmd("r0", Command::ConfirmDelivery {});
    // r0 and 255 later refusals: r0 is among the last 256, its re-delivery changes nothing.
    let s = refusals(placed.clone(), 256, 1);
    assert_eq!(step(Some(&s), &first, 2), None, "r0 is still remembered");
    // One more refusal pushes r0 out of the window: a re-delivery is decided again, and refused
    // again (the documented limit: a second Refused update for the same command id).
    let s = refusals(placed, 257, 1);
    let (_, again) = step(Some(&s), &first, 2).expect("r0 is decided again");
    assert_eq!(again.outcome, Outcome::Refused);
}
