//! The commit: every commit interval the stream thread fires the due timers (punctuation),
//! hands the open transaction to the committer thread, and takes it one step further at each
//! turn of its loop until it settles. Then, and only then, each task's write-back cache goes to
//! RocksDB with its changelog position; after an abort, the caches are dropped and the consumer
//! goes back to the transaction's first records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::{Offset, TopicPartitionList};

use super::stream_thread::{now_ms, Consumer_, Engine, COMMIT_STEP};
use super::task::flush_committed;
use super::task_manager::TaskManager;
use super::transaction::Settled;
use super::{clients, KafkaContext, RuntimeError};
use crate::kafka::KAFKA_CALL_TIMEOUT;

impl Engine {
    /// Every commit interval: fires due timers, publishes the outbox, commits. While a commit or
    /// abort is under way, takes it one step further instead.
    pub(super) fn maybe_commit(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        if self.txns.is_settling() {
            self.step(consumer, COMMIT_STEP)?;
            return Ok(());
        }
        if self.last_commit.elapsed() < self.config.commit_interval {
            return Ok(());
        }
        self.punctuate()?;
        if self.tasks.running().any(|(_, t)| t.outbox_len() > 0) {
            self.begin()?;
        }
        if self.txns.is_open() {
            self.txns.commit();
            self.step(consumer, COMMIT_STEP)?;
        } else {
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Fires the due timers of the running tasks. A detached task fires none: another member may
    /// own its partition already, and its transaction would carry no offsets (no group
    /// generation) for it, so nothing would fence a zombie's timer updates. The chaos runner
    /// found this: the same timer fired by the new owner and by the detached task, both
    /// committed.
    fn punctuate(&mut self) -> Result<(), RuntimeError> {
        let now = now_ms();
        let rules = &self.config.rules;
        let mut fired = Vec::new();
        for (partition, task) in self.tasks.running() {
            for output in task.punctuate(rules, now)? {
                fired.push((partition, output));
            }
        }
        if fired.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for (partition, output) in &fired {
            self.records.emit(*partition, output, None)?;
        }
        Ok(())
    }

    /// Commits (or aborts) the open transaction, whatever its phase, waiting up to `timeout`.
    /// Returns whether it settled.
    pub(super) fn settle(&mut self, consumer: &Consumer_, timeout: Duration) -> Result<bool, RuntimeError> {
        self.txns.commit();
        let deadline = Instant::now() + timeout;
        loop {
            if self.step(consumer, COMMIT_STEP)? {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
        }
    }

    /// Takes the settling transaction one step further, waiting at most `wait` for the committer
    /// thread; returns whether nothing is left to settle.
    fn step(&mut self, consumer: &Consumer_, wait: Duration) -> Result<bool, RuntimeError> {
        let orders = self.config.topics.orders_topic.clone();
        let tasks = &mut self.tasks;
        let settled = self.txns.step(wait, || offsets_to_commit(consumer, &orders, tasks))?;
        match settled {
            Settled::Idle => Ok(true),
            Settled::NotYet => Ok(false),
            Settled::Committed { took, .. } => {
                self.metrics.commit_seconds.observe(took.as_secs_f64());
                self.after_commit()?;
                Ok(true)
            }
            Settled::Aborted { txn, took } => {
                self.metrics.abort_seconds.observe(took.as_secs_f64());
                self.after_abort(consumer, &txn.first_offsets)?;
                Ok(true)
            }
            Settled::ProducerLost { txn, reason } => {
                tracing::error!(%reason, "the transactional producer cannot go on; its transaction is lost; starting a new producer");
                self.after_abort(consumer, &txn.first_offsets)?;
                let producer = clients::transactional_producer(&self.config)?;
                self.txns.replace(Arc::clone(&producer))?;
                self.records.replace_producer(Arc::clone(&producer));
                self.producer = producer;
                self.metrics.producers_replaced.inc();
                Ok(true)
            }
        }
    }

    /// After Kafka committed: the write-back caches go to RocksDB with their changelog positions.
    fn after_commit(&mut self) -> Result<(), RuntimeError> {
        let acknowledged = self.producer.take_acknowledged();
        // The one moment at which Kafka is ahead of RocksDB: a crash here must cost a replay of
        // exactly what was missed (the crash test aborts the process at this fail point).
        fail::fail_point!("engine::after_commit", |_| {
            tracing::error!(
                "fault injection (engine::after_commit): aborting between the Kafka commit and the store write"
            );
            std::process::abort()
        });
        let published = flush_committed(self.tasks.tasks_mut(), &acknowledged)?;
        self.metrics.outbox_published.inc_by(published as u64);
        // The next commit interval counts from here: the thread gets a full interval of records.
        self.last_commit = Instant::now();
        self.metrics.commits.inc();
        self.update_gauges();
        Ok(())
    }

    /// After a transaction that did not commit: the caches are dropped and the consumer goes back
    /// to the first record the transaction read on each partition it still runs.
    fn after_abort(
        &mut self,
        consumer: &Consumer_,
        first_offsets: &std::collections::BTreeMap<i32, i64>,
    ) -> Result<(), RuntimeError> {
        self.producer.take_acknowledged();
        self.metrics.aborts.inc();
        self.last_commit = Instant::now();
        for (_, task) in self.tasks.tasks_mut() {
            task.discard()?;
        }
        for (partition, first) in first_offsets {
            if let Some(task) = self.tasks.running_task(*partition) {
                task.next_input_offset = Some(*first);
                consumer
                    .seek(&self.config.topics.orders_topic, *partition, Offset::Offset(*first), KAFKA_CALL_TIMEOUT)
                    .context(format!("rewinding partition {partition} to offset {first}"))?;
            }
        }
        self.update_gauges();
        Ok(())
    }
}

/// The consumed offsets to send with the commit, with the group metadata: one for every running
/// task, not only those that read records, so that a transaction made of timers or outbox
/// entries alone still carries the group generation, and a zombie's cannot commit.
fn offsets_to_commit(
    consumer: &Consumer_,
    orders: &str,
    tasks: &mut TaskManager,
) -> Result<Option<(TopicPartitionList, ConsumerGroupMetadata)>, RuntimeError> {
    let mut offsets = TopicPartitionList::new();
    for (partition, task) in tasks.running() {
        if let Some(next) = task.next_input_offset {
            offsets.add_partition_offset(orders, partition, Offset::Offset(next))?;
        }
    }
    if offsets.count() == 0 {
        return Ok(None);
    }
    let group = consumer.group_metadata().ok_or(RuntimeError::NoGroupMetadata)?;
    Ok(Some((offsets, group)))
}
