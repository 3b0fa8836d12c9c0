//! The stream thread's Kafka clients, built in one place: the main consumer (the group member,
//! `read_committed`), the restore consumer (no group: it assigns changelog partitions itself), the
//! watermarks client, and the transactional producers.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::ClientConfig;
use wire::MAX_MESSAGE_BYTES;

use super::producer::KafkaProducer;
use super::{KafkaContext, RuntimeError, StreamConfig};
use crate::kafka::ReadToEndContext;
use crate::kafka::KAFKA_CALL_TIMEOUT;

/// The consumer of `orders`: a member of the application's group, reading committed records
/// only, committing nothing itself (offsets go with the transactions).
pub fn main_consumer<C: ConsumerContext>(config: &StreamConfig, context: C) -> Result<BaseConsumer<C>, RuntimeError> {
    let mut c = config.kafka.consumer_base();
    if config.static_membership {
        c.set("group.instance.id", &config.instance_id);
    }
    c.set("group.id", &config.application_id)
        .set("client.id", format!("{}-consumer", config.transactional_id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        // librdkafka prefetches up to 64 MiB per consumer by default; 8 MiB still holds several
        // commit intervals of records (docs/benchmarks.md: the memory is elsewhere). Once over it,
        // fetching resumes after FETCH_QUEUE_BACKOFF_MS, not librdkafka's 1 s (`consumer_base`).
        .set("queued.max.messages.kbytes", "8192")
        // For the consumer lag of /metrics.
        .set("statistics.interval.ms", "5000");
    config.kafka.finish(c).create_with_context(context).context("creating the orders consumer")
}

/// The consumer restores and standby copies read changelog partitions with (no group
/// membership: it assigns).
pub fn restore_consumer(config: &StreamConfig, role: &str) -> Result<BaseConsumer<ReadToEndContext>, RuntimeError> {
    let mut r = config.kafka.consumer_base();
    r.set("client.id", format!("{}-{role}-consumer", config.transactional_id()))
        .set("group.id", format!("{}-{role}", config.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20");
    config.kafka.finish(r).create_with_context(ReadToEndContext).context("creating the restore consumer")
}

/// A client that only asks for high watermarks: `read_uncommitted`, so that the end it is told
/// includes the records of transactions still open (a `read_committed` client is told the last
/// stable offset). A restore compares the two ([`super::restore`]).
pub fn watermarks_client(config: &StreamConfig) -> Result<BaseConsumer<ReadToEndContext>, RuntimeError> {
    let mut c = config.kafka.base();
    c.set("client.id", format!("{}-watermarks", config.transactional_id()))
        .set("group.id", format!("{}-watermarks", config.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    config.kafka.finish(c).create_with_context(ReadToEndContext).context("creating the watermarks client")
}

/// The consumer that tails the changelog into the standby copies (no group; never waits for a
/// partition's end).
pub fn standby_consumer(config: &StreamConfig) -> Result<BaseConsumer<ReadToEndContext>, RuntimeError> {
    let mut c = config.kafka.consumer_base();
    c.set("client.id", format!("{}-standby-consumer", config.transactional_id()))
        .set("group.id", format!("{}-standby", config.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    config.kafka.finish(c).create_with_context(ReadToEndContext).context("creating the standby consumer")
}

fn producer_config(config: &StreamConfig, transactional_id: &str) -> ClientConfig {
    let mut p = config.kafka.base();
    p.set("transactional.id", transactional_id)
        .set("client.id", format!("{transactional_id}-producer"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string())
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        // Java's partitioner: the same key lands on the same partition whoever produces it.
        .set("partitioner", "murmur2_random");
    config.kafka.finish(p)
}

/// The transactional producer of `slot` ([`StreamConfig::transactional_id_of`]), initialised:
/// fences any previous incarnation with the same transactional id and aborts what it left open.
pub fn transactional_producer(config: &StreamConfig, slot: usize) -> Result<Arc<KafkaProducer>, RuntimeError> {
    let id = config.transactional_id_of(slot);
    let producer = KafkaProducer::create(&producer_config(config, &id), &config.changelog_topic())
        .context(format!("creating the transactional producer {id}"))?;
    producer.init(KAFKA_CALL_TIMEOUT).context(format!("initialising transactions of {id}"))?;
    Ok(Arc::new(producer))
}

/// The stream thread's transactional producers ([`StreamConfig::producer_slots`]). With commits
/// not overlapped, the second transactional id is still initialised once, then let go: a
/// transaction an earlier run left open on it is aborted now rather than holding the readers of
/// its partitions until its timeout.
pub fn transactional_producers(config: &StreamConfig) -> Result<Vec<Arc<KafkaProducer>>, RuntimeError> {
    let producers =
        (0..config.producer_slots()).map(|slot| transactional_producer(config, slot)).collect::<Result<Vec<_>, _>>()?;
    if !config.overlap_commits {
        drop(transactional_producer(config, 1)?);
    }
    Ok(producers)
}
