//! dev-materiels' processing step, as the stream thread runs it, with no broker: for each batch
//! of records polled, read the committed states of their orders in one multi-get, then decode
//! each record, run the state machine on the task (its write-back cache over the RocksDB store),
//! encode the update, and at each commit write the cache to RocksDB in one batch. The store holds
//! 1,000,000 orders; the traffic is mostly new orders, with invalid ones, cancellations, retries
//! and confirmations of orders in the state. Reported in commands per second.
//!
//! A second bench decodes the same records alone.
//!
//! `cargo bench --workspace --bench processing` (with `--workspace`: the build's features, not a second RocksDB build) (`BENCH_STATE_ORDERS` sets the state size).

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use engine::runtime::task::Task;
use rail_benches::{command_batch, now_ms, placed_states, rules, state_orders};
use state::store::encode_state;
use state::{decode_command, StoreOptions};

/// Records per batch measured.
const BATCH: usize = 20_000;
/// Records per transaction: a commit every 100 ms at about 50,000 records per second.
const PER_COMMIT: usize = 5_000;
/// Records per poll batch (the stream thread's `MAX_BATCH`).
const PER_POLL: usize = 500;

fn processing(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = Task::open(0, dir.path(), &StoreOptions::default()).expect("open the store");
    let orders = state_orders();
    let started = Instant::now();
    let now = now_ms();
    let mut chunk = Vec::with_capacity(10_000);
    let mut position = 0i64;
    for state in placed_states(orders, now) {
        chunk.push((state.order_id.clone().into_bytes(), Some(encode_state(&state).expect("encode"))));
        if chunk.len() == 10_000 {
            position += chunk.len() as i64;
            task.store().restore(&chunk, position).expect("fill the store");
            chunk.clear();
        }
    }
    position += chunk.len() as i64;
    task.store().restore(&chunk, position).expect("fill the store");
    task.reload().expect("reload");
    eprintln!("processing: {orders} orders in the store, filled in {:.1} s", started.elapsed().as_secs_f64());

    let rules = rules();
    let mut batch_no = 0u64;
    let mut group = c.benchmark_group("dev-materiels");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("processing step (decode, state machine, store, encode)", |b| {
        b.iter_batched(
            || {
                batch_no += 1;
                command_batch(batch_no, BATCH, orders, now)
            },
            |records| {
                let mut bytes = 0usize;
                let mut done = 0;
                for poll in records.chunks(PER_POLL) {
                    task.prefetch(poll.iter().map(|(key, _)| key.as_slice())).expect("prefetch");
                    for (key, value) in poll {
                        match decode_command(Some(key), Some(value)) {
                            Ok(envelope) => {
                                for output in task.process(&envelope, &rules, now).expect("process") {
                                    // The update as produced to order-updates; the changelog
                                    // value is `output.state`, encoded once by the task.
                                    bytes +=
                                        serde_json::to_vec(&output.update).map_or(0, |u| u.len()) + output.state.len();
                                }
                            }
                            Err(_) => bytes += value.len(), // to the dead-letter topic, as it is
                        }
                        done += 1;
                        if done % PER_COMMIT == 0 {
                            position += PER_COMMIT as i64;
                            task.seal();
                            task.flush(Some(position)).expect("flush");
                        }
                    }
                    task.end_batch();
                }
                position += 1;
                task.seal();
                task.flush(Some(position)).expect("flush");
                bytes
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Decoding alone: the records of one batch, as they come from `orders` (JSON), into commands.
fn decoding(c: &mut Criterion) {
    let records = command_batch(1, BATCH, state_orders(), now_ms());
    let mut group = c.benchmark_group("dev-materiels");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(20);
    group.bench_function("decode command (JSON)", |b| {
        b.iter(|| records.iter().filter(|(key, value)| decode_command(Some(key), Some(value)).is_ok()).count())
    });
    group.finish();
}

criterion_group!(benches, processing, decoding);
criterion_main!(benches);
