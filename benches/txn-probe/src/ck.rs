//! The loop with confluent-kafka 1.0 (Rust translation of the Java 4.4 client): transactions v2
//! when the broker finalizes `transaction.version` >= 2, and the KIP-848 group protocol (the only
//! one it has; the rdkafka side uses the classic protocol, as the project does).
//!
//! Its API is async (tokio); the loop awaits each call in turn, so it is the same sequence of
//! calls as the rdkafka side (flush, send the offsets, commit: the project's order, which needs
//! every record acknowledged before the commit). Differences that remain, by the clients' nature: the consumer polls
//! batches (up to `max.poll.records` = 500) where librdkafka's hands one record per poll, and
//! `send` returns once the record is in the batch (its acknowledgement is not awaited: the commit
//! flushes, as librdkafka's does).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use confluent_kafka::common::serialization::{ByteArrayDeserializer, ByteArraySerializer};
use confluent_kafka::common::TopicPartition;
use confluent_kafka::consumer::{Consumer, ConsumerConfig, KafkaConsumer, OffsetAndMetadata};
use confluent_kafka::producer::{KafkaProducer, ProducerConfig, ProducerRecord};

use crate::{Run, RunSpec, Txn, INPUT, OUTPUT};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Set when the producer's transaction manager logged that it uses transactions v2.
pub static SAW_TV2: AtomicBool = AtomicBool::new(false);
/// Set when it logged that it does not.
pub static SAW_TV1: AtomicBool = AtomicBool::new(false);

/// A `log` sink that only watches for the transaction manager's "Updating isTV2 enabled to ..."
/// line (and passes warnings and errors to stderr).
struct Tv2Watch;

impl log::Log for Tv2Watch {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Debug || std::env::var_os("TXN_PROBE_LOG").is_some()
    }

    fn log(&self, r: &log::Record<'_>) {
        if let Ok(filter) = std::env::var("TXN_PROBE_LOG") {
            if r.target().contains(filter.as_str()) {
                let ms =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
                        % 100_000;
                eprintln!("  {ms:>5} {} {} {}", r.level(), r.target(), r.args());
            }
        }
        if !r.target().starts_with("confluent_kafka") {
            return;
        }
        if r.level() <= log::Level::Warn {
            eprintln!("  confluent-kafka {}: {}", r.level(), r.args());
            return;
        }
        let text = r.args().to_string();
        if text.contains("isTV2 enabled to true") {
            SAW_TV2.store(true, Ordering::Relaxed);
        } else if text.contains("isTV2 enabled to false") {
            SAW_TV1.store(true, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static WATCH: Tv2Watch = Tv2Watch;

fn props(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn err(what: &'static str) -> impl FnOnce(confluent_kafka::common::Error) -> anyhow::Error {
    move |e| anyhow!("{what}: {e}")
}

/// Installs the log sink (once, before any client is made). `TXN_PROBE_LOG=<target part>`
/// prints every record whose target contains it (e.g. `rdkafka` with `--rdkafka-option debug=eos`).
pub fn install_logger() {
    if log::set_logger(&WATCH).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

pub fn run(bootstrap: &str, spec: &RunSpec) -> Result<Run> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run_async(bootstrap, spec))
}

struct In {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

async fn run_async(bootstrap: &str, spec: &RunSpec) -> Result<Run> {
    let consumer_config = ConsumerConfig::new(&props(&[
        ("bootstrap.servers", bootstrap.to_string()),
        ("group.id", spec.group.clone()),
        ("group.protocol", "consumer".into()),
        ("client.id", format!("{}-consumer", spec.transactional_id)),
        ("enable.auto.commit", "false".into()),
        ("isolation.level", "read_committed".into()),
        ("auto.offset.reset", "earliest".into()),
        ("fetch.max.wait.ms", "50".into()),
    ]))
    .map_err(err("consumer config"))?;
    let mut consumer: KafkaConsumer<Vec<u8>, Vec<u8>> =
        KafkaConsumer::new(consumer_config, ByteArrayDeserializer::new(), ByteArrayDeserializer::new())
            .map_err(err("creating the consumer"))?;
    consumer.subscribe_with_topics(vec![INPUT.to_string()]).await.map_err(err("subscribing"))?;

    let producer_config = ProducerConfig::new(&props(&[
        ("bootstrap.servers", bootstrap.to_string()),
        ("transactional.id", spec.transactional_id.clone()),
        ("client.id", format!("{}-producer", spec.transactional_id)),
        ("enable.idempotence", "true".into()),
        ("acks", "all".into()),
        ("linger.ms", "5".into()),
        ("transaction.timeout.ms", "60000".into()),
    ]))
    .map_err(err("producer config"))?;
    let producer: KafkaProducer<Vec<u8>, Vec<u8>> =
        KafkaProducer::new(producer_config, ByteArraySerializer::new(), ByteArraySerializer::new())
            .map_err(err("creating the producer"))?;
    tokio::time::timeout(CALL_TIMEOUT, producer.init_transactions())
        .await
        .context("init_transactions timed out")?
        .map_err(err("init_transactions"))?;

    // Join the group: poll until the first records arrive (they are kept for the first transaction).
    let mut buffer: VecDeque<In> = VecDeque::new();
    let joined = Instant::now();
    while buffer.is_empty() {
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("no record of {INPUT} within 60 s of subscribing");
        }
        fill(&mut consumer, &mut buffer).await?;
    }

    let total = spec.warmup + spec.transactions;
    let mut txns = Vec::with_capacity(spec.transactions);
    let mut measured_start = None;
    let mut last_end = Instant::now();
    for i in 0..total {
        if i == spec.warmup {
            measured_start = Some(Instant::now());
        }
        let begin = Instant::now();
        producer.begin_transaction().map_err(err("begin_transaction"))?;
        let mut offsets = [None::<i64>; 64];
        let mut produced = 0;
        while produced < spec.records {
            let Some(r) = buffer.pop_front() else {
                fill(&mut consumer, &mut buffer).await?;
                continue;
            };
            offsets[r.partition as usize] = Some(r.offset + 1);
            let record = ProducerRecord::with_key(OUTPUT.to_string(), r.key.as_deref(), r.value.as_deref());
            // The acknowledgement's future is dropped: the commit flushes the transaction.
            let _ack = producer.send(record, None).await.map_err(err("send"))?;
            produced += 1;
        }
        let mut map = HashMap::new();
        for (partition, offset) in offsets.iter().enumerate() {
            if let Some(o) = offset {
                map.insert(
                    TopicPartition::new(INPUT, partition as i32),
                    OffsetAndMetadata::new(*o).map_err(err("offset"))?,
                );
            }
        }
        let group = consumer.group_metadata();
        let commit_start = Instant::now();
        tokio::time::timeout(CALL_TIMEOUT, confluent_kafka::producer::Producer::flush(&producer))
            .await
            .context("flush timed out")?
            .map_err(err("flush"))?;
        let flushed = Instant::now();
        tokio::time::timeout(CALL_TIMEOUT, producer.send_offsets_to_transaction(map, &*group))
            .await
            .context("send_offsets_to_transaction timed out")?
            .map_err(err("send_offsets_to_transaction"))?;
        let offsets_sent = Instant::now();
        tokio::time::timeout(CALL_TIMEOUT, producer.commit_transaction())
            .await
            .context("commit_transaction timed out")?
            .map_err(err("commit_transaction"))?;
        let end = Instant::now();
        last_end = end;
        if i >= spec.warmup {
            txns.push(Txn {
                produce: commit_start - begin,
                flush: flushed - commit_start,
                send_offsets: offsets_sent - flushed,
                commit: end - offsets_sent,
            });
        }
        if !spec.gap.is_zero() {
            tokio::time::sleep(spec.gap).await;
        }
    }
    let wall = measured_start.map(|s| last_end - s).unwrap_or_default();
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), confluent_kafka::producer::Producer::close(&producer)).await;
    Ok(Run { txns, wall })
}

async fn fill(consumer: &mut KafkaConsumer<Vec<u8>, Vec<u8>>, buffer: &mut VecDeque<In>) -> Result<()> {
    let records = consumer.poll(Duration::from_millis(100)).await.map_err(err("poll"))?;
    for r in records {
        buffer.push_back(In {
            partition: r.partition(),
            offset: r.offset(),
            key: r.key().cloned(),
            value: r.value().cloned(),
        });
    }
    Ok(())
}
