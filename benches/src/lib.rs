//! Shared pieces of the benches: the rules and the workloads they run, and state of a given size.
//!
//! - `benches/processing.rs` and `benches/view_apply.rs` (criterion, `cargo bench`): the cores,
//!   with no broker.
//! - `src/bin/e2e.rs` (`bash scripts/bench.sh`): the end-to-end bench on a
//!   real broker, with the pass-through ceiling (`src/bin/passthrough.rs`) and the Kafka Streams
//!   peer (`peers/kafka-streams/`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pipeline::workload::{Mix, Workload};
use state::{decide, Catalogue, CommandEnvelope, Decision, OrderState, Rules};

/// The rules every bench runs with: the default catalogue, timers an hour away (so one command
/// gives one update, in every contender).
pub fn rules() -> Rules {
    Rules {
        catalogue: Catalogue::default(),
        prepare_after: Duration::from_secs(3_600),
        ship_after: Duration::from_secs(3_600),
    }
}

/// Milliseconds since the epoch, as the services stamp them.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The state size of the criterion benches: `BENCH_STATE_ORDERS`, 1,000,000 by default.
pub fn state_orders() -> usize {
    std::env::var("BENCH_STATE_ORDERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// Orders already placed, as their states: what a store holds after `orders` orders.
pub fn placed_states(orders: usize, now_ms: u64) -> impl Iterator<Item = OrderState> {
    let rules = rules();
    let mut workload = Workload::new(1, "STATE", now_ms);
    workload.place_phase(orders, Mix::CLEAN).into_iter().filter_map(move |command| {
        match decide(None, &command, &rules, now_ms) {
            Decision::Update { state, .. } => Some(state),
            Decision::Nothing => None,
        }
    })
}

/// The id of the `i`th order of [`placed_states`].
pub fn placed_id(i: usize) -> String {
    Workload::new(1, "STATE", 0).order_id(i)
}

/// A batch of traffic as dev-materiels sees it: mostly new orders (with the realistic mix of
/// invalid ones, cancellations, retries and mistakes), plus cancellations and delivery
/// confirmations of orders already in the state (`existing` of them), encoded as on `orders`.
pub fn command_batch(batch: u64, size: usize, existing: usize, now_ms: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    commands(batch, size, existing, now_ms)
        .into_iter()
        .map(|c| (c.order_id.clone().into_bytes(), serde_json::to_vec(&c).unwrap_or_default()))
        .collect()
}

/// The commands of [`command_batch`], before they are encoded.
pub fn commands(batch: u64, size: usize, existing: usize, now_ms: u64) -> Vec<CommandEnvelope> {
    let mut workload = Workload::new(batch, format!("NEW{batch}"), now_ms);
    let mut commands: Vec<CommandEnvelope> = workload.place_phase(size * 9 / 10, Mix::REALISTIC);
    let mut rng_state = batch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let olds: Vec<String> = (0..size / 10)
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            placed_id((rng_state % existing.max(1) as u64) as usize)
        })
        .collect();
    commands.extend(workload.delivery_phase(&olds, 0.5, 0.5, 0.02));
    commands.truncate(size);
    commands
}
