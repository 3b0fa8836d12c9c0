//! The ceiling of the end-to-end bench: a consume-transform-produce loop under the same
//! exactly-once transactions and commit interval as dev-materiels, with no state and no logic.
//! Each record of the input topic becomes one update on the output topic, made from its key
//! alone (the value is not even parsed), so the view can count it.
//!
//! Before each commit it waits for every record's acknowledgement, as dev-materiels' committer
//! does. With `PASSTHROUGH_TIMINGS` set, it prints how long the flush with
//! `send_offsets_to_transaction`, and `commit_transaction`, took (this is how the ~100 ms commit
//! of librdkafka in docs/benchmarks.md was seen).

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use engine::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Consume, transform and produce under exactly-once transactions, with no state.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long, default_value = "passthrough")]
    group: String,
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    engine::logging::init(engine::logging::LogFormat::Plain, "warn");
    let stop = engine::shutdown::on_signal()?;
    // The same consumer settings as dev-materiels' (the fetch-queue backoff): the ceiling is not
    // held back by what the contender is spared.
    let mut c = args.kafka.consumer_base();
    c.set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50");
    let consumer: BaseConsumer = args.kafka.finish(c).create().context("consumer")?;
    consumer.subscribe(&[&args.input]).context("subscribe")?;
    let mut p = args.kafka.base();
    p.set("transactional.id", format!("{}-0", args.group))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random");
    let producer: BaseProducer = args.kafka.finish(p).create().context("producer")?;
    producer.init_transactions(TIMEOUT).context("init transactions")?;

    let interval = Duration::from_millis(args.commit_interval_ms);
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut open = false;
    let mut last_commit = Instant::now();
    let mut value = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) {
        if let Some(message) = consumer.poll(Duration::from_millis(5)) {
            let message = message.context("consume")?;
            if !open {
                producer.begin_transaction().context("begin")?;
                open = true;
            }
            let key = message.key().unwrap_or_default();
            value.clear();
            value.extend_from_slice(br#"{"schema_version":1,"order_id":""#);
            value.extend_from_slice(key);
            value.extend_from_slice(
                br#"","version":1,"status":"Accepted","previous_status":null,"outcome":"Applied","reason":null,"trigger":"Command","command_id":null,"timestamp_ms":0}"#,
            );
            let mut record = BaseRecord::to(&args.output).key(key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((err, _)) => return Err(err).context("produce"),
                }
            }
            next_offsets.insert(message.partition(), message.offset() + 1);
        }
        producer.poll(Duration::ZERO);
        // As dev-materiels: every commit interval, commit what is open.
        if last_commit.elapsed() >= interval {
            if open {
                commit(&consumer, &producer, &args.input, &next_offsets)?;
                open = false;
            }
            last_commit = Instant::now();
        }
    }
    if open {
        commit(&consumer, &producer, &args.input, &next_offsets)?;
    }
    Ok(())
}

fn commit(
    consumer: &BaseConsumer,
    producer: &BaseProducer,
    input: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next_offsets {
        offsets.add_partition_offset(input, *partition, Offset::Offset(*offset))?;
    }
    let group = consumer.group_metadata().context("group metadata")?;
    let started = Instant::now();
    // Every record acknowledged before the offsets go, as dev-materiels' committer does: left to
    // `commit_transaction`, the delivery reports are served in 100 ms slices, and the ceiling's
    // latency would carry a wait dev-materiels does not have. Short polls: `poll(d)` runs to the
    // end of the slice it waits in.
    let deadline = started + TIMEOUT;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
    producer.send_offsets_to_transaction(&offsets, &group, TIMEOUT).context("send offsets")?;
    let offsets_sent = started.elapsed();
    producer.commit_transaction(TIMEOUT).context("commit")?;
    if std::env::var_os("PASSTHROUGH_TIMINGS").is_some() {
        eprintln!("commit: flush and send offsets {offsets_sent:?}, commit {:?}", started.elapsed() - offsets_sent);
    }
    Ok(())
}
