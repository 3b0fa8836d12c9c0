//! Handing over the outbox of a store left behind: decisions taken over HTTP by this instance for
//! a partition another member owns now (it lost the partition while Kafka was away, or died before
//! it could publish and the partition went elsewhere). Their *commands* go back to `orders` for the
//! owner to decide (one it has already applied changes nothing), and the local copy is deleted, to
//! be restored afresh if the partition comes back.

use super::{KafkaContext, RuntimeError, StreamConfig};
use crate::kafka::KAFKA_CALL_TIMEOUT;

/// Sends the commands of the outbox in the store at `dir` back to `orders`, then deletes the
/// store. Returns how many commands were sent.
pub fn hand_over(config: &StreamConfig, dir: &std::path::Path) -> Result<usize, RuntimeError> {
    // The store stays open (locked) until its directory is gone: another stream thread of the
    // process that is assigned the partition meanwhile waits, then starts from the changelog.
    let store = state::OrderStore::open(dir, &config.store)?;
    let outbox = store.outbox()?;
    if outbox.is_empty() {
        return Ok(0);
    }
    let commands: Vec<state::CommandEnvelope> = outbox.into_iter().filter_map(|(_, entry)| entry.command).collect();
    // An idempotent producer with Java's partitioner, as wagon-lits produces commands: each
    // command lands on its order's partition.
    let mut p = config.kafka.base();
    p.set("enable.idempotence", "true").set("acks", "all").set("partitioner", "murmur2_random");
    let producer: rdkafka::producer::FutureProducer =
        config.kafka.finish(p).create().context("creating the hand-over producer")?;
    let mut payloads = Vec::with_capacity(commands.len());
    for command in &commands {
        payloads.push(
            config
                .codec
                .encode_command(command)
                .map_err(|e| RuntimeError::Encode { what: "a handed-over command", reason: e.to_string() })?,
        );
    }
    let topic = &config.topics.orders_topic;
    let deliveries: Vec<_> = commands
        .iter()
        .zip(&payloads)
        .map(|(command, payload)| {
            let record = rdkafka::producer::FutureRecord::to(topic).key(command.order_id.as_bytes()).payload(payload);
            producer.send(record, KAFKA_CALL_TIMEOUT)
        })
        .collect();
    for delivery in futures::executor::block_on(futures::future::join_all(deliveries)) {
        delivery
            .map_err(|(source, _)| RuntimeError::Kafka { context: "handing commands over to orders".into(), source })?;
    }
    std::fs::remove_dir_all(dir).map_err(|source| RuntimeError::Io { path: dir.to_path_buf(), source })?;
    drop(store);
    Ok(commands.len())
}
