//! Standby tasks: warm copies of the partitions this instance does not own.
//!
//! With `--standby`, an instance tails the changelog partitions of every `orders` partition it
//! is not processing, into the same per-partition stores its active tasks use. When a partition
//! fails over to it, the restore starts from where the copy is and reads only the last moments
//! of the changelog, instead of all of it (Kafka Streams' `num.standby.replicas`, here "a copy of
//! everything": the group's assignor does not know about standbys, so every instance keeps them
//! all; this costs disk and a changelog read per instance, not processing).
//!
//! A standby applies committed changelog records only (`read_committed`), through the same
//! [`OrderStore::restore`] the active restore uses, so a copy is always a state the changelog
//! held. A store with unpublished outbox entries (decided over HTTP by this instance when it
//! owned the partition) is left alone: its state is ahead of the changelog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use state::{OrderStore, StoreOptions};

use super::{KafkaContext, RuntimeError, StreamConfig};
use crate::kafka::ReadToEndContext;

/// Changelog records (key, value; `None` a tombstone) read for one partition.
type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Changelog records applied per call of [`Standbys::poll`], at most.
const MAX_PER_POLL: usize = 2_000;

/// The standby copies of one instance, and the consumer that feeds them.
pub struct Standbys {
    changelog: String,
    consumer: BaseConsumer<ReadToEndContext>,
    stores: BTreeMap<i32, OrderStore>,
    state_dir: PathBuf,
    options: StoreOptions,
    /// Changelog records applied so far.
    pub records: u64,
    /// Since when a wanted copy could not be opened (another stream thread held its store).
    missing_since: Option<std::time::Instant>,
}

impl Standbys {
    pub fn new(config: &StreamConfig) -> Result<Standbys, RuntimeError> {
        Ok(Standbys {
            changelog: config.changelog_topic(),
            consumer: super::clients::standby_consumer(config)?,
            stores: BTreeMap::new(),
            state_dir: config.state_dir.clone(),
            options: config.store.clone(),
            records: 0,
            missing_since: None,
        })
    }

    /// Whether a wanted copy could not be opened a second ago or more ([`Standbys::set`] again).
    pub fn missing_a_while(&self) -> bool {
        self.missing_since.is_some_and(|since| since.elapsed() > Duration::from_secs(1))
    }

    /// The partitions kept warm now.
    pub fn partitions(&self) -> Vec<i32> {
        self.stores.keys().copied().collect()
    }

    /// Keeps copies of exactly `wanted`: closes the stores of the others (a task is about to
    /// open them), opens the new ones, and points the consumer at each store's position.
    pub fn set(&mut self, wanted: &BTreeSet<i32>) -> Result<(), RuntimeError> {
        let before: BTreeSet<i32> = self.stores.keys().copied().collect();
        self.stores.retain(|p, _| wanted.contains(p));
        self.missing_since = None;
        for partition in wanted.difference(&before) {
            let store = match OrderStore::open(&self.state_dir.join(format!("partition-{partition}")), &self.options) {
                Ok(store) => store,
                // Another stream thread's task still holds it: no copy until the next set.
                Err(state::StoreError::Locked { .. }) => {
                    tracing::debug!(partition, "no standby copy yet: another stream thread holds the store");
                    self.missing_since.get_or_insert_with(std::time::Instant::now);
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            if !store.outbox()?.is_empty() {
                tracing::warn!(partition, "no standby copy: the store holds decisions not yet published");
                continue;
            }
            self.stores.insert(*partition, store);
        }
        let mut assignment = TopicPartitionList::new();
        for (partition, store) in &self.stores {
            let offset = store.changelog_position()?.map_or(Offset::Beginning, Offset::Offset);
            assignment.add_partition_offset(&self.changelog, *partition, offset)?;
        }
        self.consumer.assign(&assignment).context("assigning the standby consumer")?;
        if self.stores.keys().copied().collect::<BTreeSet<_>>() != before {
            tracing::info!(partitions = ?self.partitions(), "standby copies");
        }
        Ok(())
    }

    /// Applies the changelog records that arrived for the standby partitions. Never blocks.
    pub fn poll(&mut self) -> Result<usize, RuntimeError> {
        if self.stores.is_empty() {
            return Ok(0);
        }
        let mut batches: HashMap<i32, (Records, i64)> = HashMap::new();
        let mut read = 0;
        while read < MAX_PER_POLL {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    let entry = batches.entry(message.partition()).or_default();
                    entry.0.push((message.key().unwrap_or_default().to_vec(), message.payload().map(<[u8]>::to_vec)));
                    entry.1 = message.offset() + 1;
                    read += 1;
                }
                // A broker away or a leader moving: the copies just fall behind for a while.
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "standby consumer error");
                    break;
                }
            }
        }
        for (partition, (records, next)) in batches {
            if let Some(store) = self.stores.get(&partition) {
                store.restore(&records, next)?;
            }
        }
        self.records += read as u64;
        Ok(read)
    }
}
