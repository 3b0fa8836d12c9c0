//! The two wire formats, record by record: commands decoded as dev-materiels reads them from
//! `orders`, updates encoded as it writes them to `order-updates` and decoded as wagon-lits reads
//! them, in JSON and in Avro (Confluent framing, the schemas of `schemas/`, the writer's schema
//! already known: the registry is asked once per schema id, not per record). The realistic mix of
//! commands; the updates their decisions would give. Also prints each format's bytes per record.
//!
//! `cargo bench --workspace --bench wire_formats`

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rail_benches::{commands, now_ms, rules, state_orders};
use state::{decide, Decision, OrderUpdate};
use wire::avro::{AvroCodec, Record};
use wire::{Codec, WireFormat};

const RECORDS: usize = 20_000;

fn codecs() -> (Codec, Codec) {
    let ids = [(Record::Command, 1), (Record::Update, 2)];
    let json = Codec::preloaded(WireFormat::Json, AvroCodec::preloaded(&ids).expect("codec"));
    let avro = Codec::preloaded(WireFormat::Avro, AvroCodec::preloaded(&ids).expect("codec"));
    (json, avro)
}

fn formats(c: &mut Criterion) {
    let now = now_ms();
    let commands = commands(1, RECORDS, state_orders(), now);
    let rules = rules();
    let updates: Vec<OrderUpdate> = commands
        .iter()
        .filter_map(|c| match decide(None, c, &rules, now) {
            Decision::Update { update, .. } => Some(update),
            Decision::Nothing => None,
        })
        .collect();
    let mut group = c.benchmark_group("wire formats");
    group.sample_size(20);
    for (name, codec) in [("JSON", codecs().0), ("Avro", codecs().1)] {
        let records: Vec<(Vec<u8>, Vec<u8>)> = commands
            .iter()
            .map(|c| (c.order_id.clone().into_bytes(), codec.encode_command(c).expect("encode")))
            .collect();
        let encoded: Vec<Vec<u8>> = updates.iter().map(|u| codec.encode_update(u).expect("encode")).collect();
        let bytes = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / v.len() as f64;
        let command_bytes: Vec<Vec<u8>> = records.iter().map(|(_, v)| v.clone()).collect();
        eprintln!("{name}: {:.1} bytes per command, {:.1} bytes per update", bytes(&command_bytes), bytes(&encoded));
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(format!("decode command ({name})"), |b| {
            b.iter(|| records.iter().filter(|(k, v)| codec.decode_command(Some(k), Some(v)).is_ok()).count())
        });
        group.throughput(Throughput::Elements(updates.len() as u64));
        group.bench_function(format!("encode update ({name})"), |b| {
            b.iter(|| updates.iter().map(|u| codec.encode_update(u).map_or(0, |v| v.len())).sum::<usize>())
        });
        group.bench_function(format!("decode update ({name})"), |b| {
            b.iter(|| encoded.iter().filter(|v| codec.decode_update(v).is_ok()).count())
        });
    }
    group.finish();
}

criterion_group!(benches, formats);
criterion_main!(benches);
