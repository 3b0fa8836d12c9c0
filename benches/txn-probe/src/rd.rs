//! The loop with librdkafka (rdkafka 0.39, librdkafka 2.12.1: transactions v1, classic group
//! protocol), configured and called as the project's stream thread does
//! (`pipeline/engine/src/runtime/clients.rs`, `producer.rs`): a `ThreadedProducer` whose thread
//! serves the delivery reports, a flush that waits on a condition until every record sent is
//! acknowledged, then `send_offsets_to_transaction` and `commit_transaction`.
//!
//! `--rdkafka-flush` chooses how the records are waited for before the offsets are sent:
//! - `drained` (the project's, since commit 435921c): wait on the condition; the last batch still
//!   waits out `linger.ms` (nothing tells librdkafka a flush is under way);
//! - `native`: librdkafka's own `rd_kafka_flush(rk, timeout)`, called directly: with delivery
//!   reports as events (rdkafka's mode) it waits for the count of records in flight to reach zero
//!   while the polling thread serves the reports, and while it waits librdkafka sends without
//!   lingering;
//! - `wrapper`: no flush of ours; `commit_transaction` calls rdkafka's `BaseProducer::flush`,
//!   which polls in 100 ms slices that each run to their end (the project's way before 435921c).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{Run, RunSpec, Txn, INPUT, OUTPUT};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts the records sent and not yet acknowledged (as the project's `DeliveryTracker`).
#[derive(Default)]
struct Tracker {
    in_flight: Mutex<usize>,
    drained: Condvar,
    failed: Mutex<Option<String>>,
}

impl Tracker {
    fn sent_one(&self) {
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn acknowledged_one(&self) {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.drained.notify_all();
        }
    }

    fn wait_drained(&self, timeout: Duration) -> bool {
        let n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (n, _) = self.drained.wait_timeout_while(n, timeout, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
        *n == 0
    }
}

impl ClientContext for Tracker {}

impl ProducerContext for Tracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
        self.acknowledged_one();
    }
}

pub fn run(bootstrap: &str, spec: &RunSpec) -> Result<Run> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.nagle.disable", "true")
        .set("group.id", &spec.group)
        .set("group.protocol", &spec.rdkafka_group_protocol)
        .set("client.id", format!("{}-consumer", spec.transactional_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50");
    let consumer: BaseConsumer = c.create().context("creating the consumer")?;
    consumer.subscribe(&[INPUT]).context("subscribing")?;

    let mut p = ClientConfig::new();
    p.set("bootstrap.servers", bootstrap)
        .set("socket.nagle.disable", "true")
        .set("transactional.id", &spec.transactional_id)
        .set("client.id", format!("{}-producer", spec.transactional_id))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", "60000")
        .set("partitioner", "murmur2_random");
    for (k, v) in &spec.rdkafka_options {
        p.set(k, v);
    }
    let producer: ThreadedProducer<Tracker> =
        p.create_with_context(Tracker::default()).context("creating the producer")?;
    producer.init_transactions(CALL_TIMEOUT).context("init_transactions")?;

    // Join the group: poll until the first record arrives (it is kept for the first transaction).
    let mut pending = None;
    let joined = Instant::now();
    while pending.is_none() {
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("no record of {INPUT} within 60 s of subscribing");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                pending =
                    Some((m.partition(), m.offset(), m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)))
            }
            Some(Err(e)) => bail!("consumer: {e}"),
            None => {}
        }
    }
    let group = consumer.group_metadata().context("no group metadata")?;

    let total = spec.warmup + spec.transactions;
    let mut txns = Vec::with_capacity(spec.transactions);
    let mut measured_start = None;
    let mut last_end = Instant::now();
    for i in 0..total {
        if i == spec.warmup {
            measured_start = Some(Instant::now());
        }
        let begin = Instant::now();
        producer.begin_transaction().context("begin_transaction")?;
        let mut offsets = [None::<i64>; 64];
        let mut produced = 0;
        while produced < spec.records {
            let (partition, offset, key, value) = match pending.take() {
                Some(r) => r,
                None => match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        (m.partition(), m.offset(), m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec))
                    }
                    Some(Err(e)) => bail!("consumer: {e}"),
                    None => continue,
                },
            };
            offsets[partition as usize] = Some(offset + 1);
            let mut record = BaseRecord::<[u8], [u8]>::to(OUTPUT).payload(value.as_deref().unwrap_or_default());
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            loop {
                producer.context().sent_one();
                let sent = producer.send(record);
                if sent.is_err() {
                    producer.context().acknowledged_one();
                }
                match sent {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => bail!("produce: {e}"),
                }
            }
            produced += 1;
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in offsets.iter().enumerate() {
            if let Some(o) = offset {
                tpl.add_partition_offset(INPUT, partition as i32, Offset::Offset(*o))?;
            }
        }
        let commit_start = Instant::now();
        match spec.rdkafka_flush.as_str() {
            "drained" if !producer.context().wait_drained(CALL_TIMEOUT) => {
                bail!("flush: records not acknowledged within {CALL_TIMEOUT:?}")
            }
            "native" => native_flush(&producer)?,
            _ => {}
        }
        if let Some(e) = producer.context().failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bail!("a record was not delivered: {e}");
        }
        let flushed = Instant::now();
        producer.send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT).context("send_offsets_to_transaction")?;
        let offsets_sent = Instant::now();
        producer.commit_transaction(CALL_TIMEOUT).context("commit_transaction")?;
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
            std::thread::sleep(spec.gap);
        }
    }
    let wall = measured_start.map(|s| last_end - s).unwrap_or_default();
    consumer.unsubscribe();
    Ok(Run { txns, wall })
}

/// librdkafka's `rd_kafka_flush` with a timeout, called directly (rdkafka's `flush` calls it with
/// 0 and then polls in 100 ms slices).
#[allow(unsafe_code)]
fn native_flush(producer: &ThreadedProducer<Tracker>) -> Result<()> {
    // SAFETY: the pointer is the live producer's; rd_kafka_flush is thread-safe, and with event
    // delivery reports it only waits (the producer's polling thread serves the reports).
    let err =
        unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), CALL_TIMEOUT.as_millis() as i32) };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        bail!("rd_kafka_flush: {:?}", RDKafkaErrorCode::from(err));
    }
    Ok(())
}
