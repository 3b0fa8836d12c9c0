//! wagon-lits' view apply, as the materialiser runs it, with no broker: decode each record of
//! `order-updates` and apply a batch (rows, status index, counts and the partition offsets in one
//! RocksDB write batch). The view holds 1,000,000 orders; the updates are the first update of new
//! orders (70%) and the next version of orders in the view (30%). Reported in updates per second.
//!
//! `cargo bench --workspace --bench view_apply` (`BENCH_STATE_ORDERS` sets the view size).

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipeline::workload::{Mix, Workload};
use rail_benches::{now_ms, placed_states, rules, state_orders};
use state::{decide, fire_timer, Decision, OrderUpdate, StoreOptions, ViewRecord, ViewStore};

/// Updates per batch measured, and per apply (the materialiser's `max_batch`).
const BATCH: usize = 20_000;
const PER_APPLY: usize = 5_000;

fn first_update(state: &state::OrderState) -> OrderUpdate {
    OrderUpdate {
        schema_version: 1,
        order_id: state.order_id.clone(),
        version: state.version,
        status: state.status,
        previous_status: None,
        outcome: state::Outcome::Applied,
        reason: None,
        trigger: state::Trigger::Command,
        command_id: state.applied_commands.last().cloned(),
        timestamp_ms: 0,
        expected_ship_ms: None,
    }
}

fn view_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open the view");
    let orders = state_orders();
    let now = now_ms();
    let started = Instant::now();
    let states: Vec<state::OrderState> = placed_states(orders, now).collect();
    let mut offset = 0i64;
    for chunk in states.chunks(PER_APPLY) {
        let records: Vec<ViewRecord> = chunk
            .iter()
            .map(|s| {
                offset += 1;
                ViewRecord { position: Some((0, offset)), update: Some(first_update(s)) }
            })
            .collect();
        view.apply(&records).expect("fill the view");
    }
    eprintln!("view apply: {orders} orders in the view, filled in {:.1} s", started.elapsed().as_secs_f64());

    let rules = rules();
    let mut batch_no = 0u64;
    let mut group = c.benchmark_group("wagon-lits");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("view apply (decode, apply batch)", |b| {
        b.iter_batched(
            || {
                batch_no += 1;
                // New orders' first updates, and the next version (preparation) of old ones.
                let mut workload = Workload::new(batch_no, format!("NEW{batch_no}"), now);
                let mut updates: Vec<Vec<u8>> = workload
                    .place_phase(BATCH * 7 / 10, Mix::REALISTIC)
                    .iter()
                    .filter_map(|c| match decide(None, c, &rules, now) {
                        Decision::Update { update, .. } => Some(update),
                        Decision::Nothing => None,
                    })
                    .map(|u| serde_json::to_vec(&u).unwrap_or_default())
                    .collect();
                let step = (states.len() / (BATCH - updates.len()).max(1)).max(1);
                let mut i = (batch_no as usize * 7919) % states.len().max(1);
                while updates.len() < BATCH && !states.is_empty() {
                    if let Decision::Update { update, .. } = fire_timer(&states[i], &rules, u64::MAX / 2) {
                        updates.push(serde_json::to_vec(&update).unwrap_or_default());
                    }
                    i = (i + step) % states.len();
                }
                updates
            },
            |updates| {
                let mut applied = 0;
                for chunk in updates.chunks(PER_APPLY) {
                    let records: Vec<ViewRecord> = chunk
                        .iter()
                        .map(|bytes| {
                            offset += 1;
                            ViewRecord {
                                position: Some((0, offset)),
                                update: serde_json::from_slice::<OrderUpdate>(bytes).ok(),
                            }
                        })
                        .collect();
                    applied += view.apply(&records).expect("apply").applied;
                }
                applied
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, view_apply);
criterion_main!(benches);
