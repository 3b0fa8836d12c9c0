//! Reading `order-updates` back after a run, to check exactly-once from the outside: what the
//! demo prints and what the end-to-end bench's `--check` counts.
//!
//! Per order, in topic order, the updates must carry versions 1, 2, 3…: a version at or below
//! the last one seen is a repeat, a jump over versions is a skip. No command id may be decided
//! twice, and every order placed must have updates.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engine::kafka::{KafkaArgs, ReadToEndContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use state::{CommandEnvelope, OrderUpdate};

/// Reads every committed record of `topic` from its beginning to its end (the writers are
/// stopped), handing each to `each`; gives up after `timeout`.
pub fn read_to_end(
    kafka: &KafkaArgs,
    topic: &str,
    group: &str,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut config = kafka.base();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<ReadToEndContext> =
        kafka.finish(config).create_with_context(ReadToEndContext).context("creating the reader")?;
    let partitions = engine::admin::partition_count(kafka, topic, Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = HashSet::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < partitions as usize {
        if Instant::now() > deadline {
            bail!("reading {topic} did not reach its end in {} s", timeout.as_secs());
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => each(&message)?,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(err)) => return Err(err).context(format!("reading {topic}")),
            None => {}
        }
    }
    Ok(())
}

/// What `order-updates` says about a run's orders.
#[derive(Debug, Default)]
pub struct UpdateCheck {
    pub updates: usize,
    /// Updates whose version is at or below the order's last one.
    pub repeated_versions: usize,
    /// Updates that jumped over versions of their order.
    pub skipped_versions: usize,
    /// Updates of a command id already on an earlier update.
    pub repeated_commands: usize,
    /// Orders placed that have no update.
    pub orders_without_updates: usize,
    /// A few of the orders whose versions went wrong, to show.
    pub examples: Vec<String>,
    /// Per order, the last version seen.
    versions: HashMap<String, u64>,
    /// The command ids on the updates seen.
    commands: HashSet<String>,
}

impl UpdateCheck {
    pub fn new() -> UpdateCheck {
        UpdateCheck::default()
    }

    /// Takes the next update of the topic (in topic order, per partition).
    pub fn record(&mut self, update: OrderUpdate) {
        self.updates += 1;
        let last = self.versions.entry(update.order_id.clone()).or_default();
        let wrong = if update.version <= *last {
            self.repeated_versions += 1;
            true
        } else {
            let skipped = update.version != *last + 1;
            if skipped {
                self.skipped_versions += 1;
            }
            *last = update.version;
            if let Some(id) = update.command_id {
                if !self.commands.insert(id) {
                    self.repeated_commands += 1;
                }
            }
            skipped
        };
        if wrong && self.examples.len() < 10 {
            self.examples.push(format!("{}: version {} after {}", update.order_id, update.version, last));
        }
    }

    /// After the last update: counts the orders placed in `sent` that got none.
    pub fn finish(&mut self, sent: &[CommandEnvelope]) {
        let placed: HashSet<&str> = sent
            .iter()
            .filter(|c| matches!(c.command, state::Command::PlaceOrder(_)))
            .map(|c| c.order_id.as_str())
            .collect();
        self.orders_without_updates = placed.iter().filter(|id| !self.versions.contains_key(**id)).count();
    }

    /// Orders with at least one update.
    pub fn orders(&self) -> usize {
        self.versions.len()
    }

    pub fn holds(&self) -> bool {
        self.repeated_versions == 0
            && self.skipped_versions == 0
            && self.repeated_commands == 0
            && self.orders_without_updates == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state::{Command, OrderStatus, Outcome, Trigger};

    fn update(order: &str, version: u64, command: Option<&str>) -> OrderUpdate {
        OrderUpdate {
            schema_version: 1,
            order_id: order.into(),
            version,
            status: Some(OrderStatus::Accepted),
            previous_status: None,
            outcome: Outcome::Applied,
            reason: None,
            trigger: if command.is_some() { Trigger::Command } else { Trigger::PrepareTimer },
            command_id: command.map(str::to_string),
            timestamp_ms: 0,
            expected_ship_ms: None,
        }
    }

    #[test]
    fn an_honest_topic_holds_and_each_fault_is_counted() {
        let mut honest = UpdateCheck::new();
        honest.record(update("A", 1, Some("a1")));
        honest.record(update("A", 2, None));
        honest.finish(&[]);
        assert!(honest.holds(), "{honest:?}");

        let mut check = UpdateCheck::new();
        check.record(update("A", 1, Some("a1")));
        check.record(update("A", 1, Some("a1"))); // a version again
        check.record(update("A", 3, None)); // version 2 skipped
        check.record(update("B", 1, Some("a1"))); // a command id on a second update
        let place = state::PlaceOrder { wagon_id: "WL-1".into(), requested_by: "agent".into(), lines: Vec::new() };
        let sent = [CommandEnvelope::new("c1", "C", 0, Command::PlaceOrder(place))];
        check.finish(&sent); // C was placed and has no update
        assert_eq!(
            (check.repeated_versions, check.skipped_versions, check.repeated_commands, check.orders_without_updates),
            (1, 1, 1, 1)
        );
        assert!(!check.holds());
        assert_eq!(check.orders(), 2);
    }
}
