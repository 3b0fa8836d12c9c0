//! The state machine on its own: an order placed, its timer fired, then a cancellation that comes
//! too late, each printed as the update dev-materiels would publish on `order-updates`.
//!
//! ```sh
//! cargo run --release --example decide     # from the workspace root
//! ```

use std::time::Duration;

use state::{decide, fire_timer, Catalogue, Command, CommandEnvelope, Decision, OrderLine, PlaceOrder, Rules};

fn main() -> Result<(), serde_json::Error> {
    let rules = Rules {
        catalogue: Catalogue::default(),
        prepare_after: Duration::from_secs(60),
        ship_after: Duration::from_secs(60),
    };
    let place = PlaceOrder {
        wagon_id: "WL-42".into(),
        requested_by: "agent-7".into(),
        lines: vec![OrderLine { sku: state::catalogue::DEFAULT_SKUS[0].into(), quantity: 4 }],
    };
    let mut state = None;
    let show = |decision: Decision, state: &mut Option<state::OrderState>| -> Result<(), serde_json::Error> {
        match decision {
            Decision::Update { state: next, update } => {
                println!("{}", serde_json::to_string(&update)?);
                *state = Some(next);
            }
            Decision::Nothing => println!("(nothing: the command changed nothing)"),
        }
        Ok(())
    };
    let placed = CommandEnvelope::new("c-1", "ORD-1", 0, Command::PlaceOrder(place));
    show(decide(state.as_ref(), &placed, &rules, 1_000), &mut state)?;
    // The same command delivered again: applied once.
    show(decide(state.as_ref(), &placed, &rules, 2_000), &mut state)?;
    // A minute later the preparation timer fires, and another minute later the shipping one.
    for now in [61_000, 121_000] {
        if let Some(current) = state.clone() {
            show(fire_timer(&current, &rules, now), &mut state)?;
        }
    }
    let cancel = CommandEnvelope::new("c-2", "ORD-1", 0, Command::CancelOrder { reason: "changed plans".into() });
    show(decide(state.as_ref(), &cancel, &rules, 130_000), &mut state)?;
    Ok(())
}
