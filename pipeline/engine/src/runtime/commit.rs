//! The commit: every commit interval the stream thread fires the due timers (punctuation),
//! closes the open transaction (each task seals its write-back cache) and hands it to a committer
//! thread, and takes it one step further at each turn of its loop until it settles. With
//! overlapped commits the loop takes records into the next transaction meanwhile, on the other
//! producer. Once Kafka has committed, and only then, each task's sealed cache goes to RocksDB
//! with its changelog position; after an abort (which takes every later transaction with it), the
//! caches are dropped and the consumer goes back to the first records the aborted transactions
//! read.

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
    /// Takes a closed transaction one step further; then, every commit interval once nothing is
    /// left settling: fires due timers, publishes the outbox, closes the open transaction.
    pub(super) fn maybe_commit(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        if self.txns.is_settling() {
            // While records go on into the next transaction, only look; otherwise wait a little
            // for the committer.
            let wait = if self.txns.accepts_records() { Duration::ZERO } else { COMMIT_STEP };
            self.step(consumer, wait)?;
            if self.txns.is_settling() {
                return Ok(());
            }
        }
        if self.last_commit.elapsed() < self.config.commit_interval {
            return Ok(());
        }
        self.punctuate()?;
        if self.tasks.running().any(|(_, t)| t.outbox_len() > 0) {
            self.begin()?;
        }
        if self.txns.is_open() {
            self.close(consumer)?;
            self.step(consumer, Duration::ZERO)?;
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
        if !self.txns.accepts_records() {
            return Ok(());
        }
        let now = now_ms();
        let rules = &self.config.rules;
        let mut fired = Vec::new();
        for (partition, task) in self.tasks.running() {
            for output in task.punctuate(rules, now)? {
                fired.push((partition, output));
            }
        }
        if fired.is_empty() || !self.begin()? {
            return Ok(());
        }
        for (partition, output) in &fired {
            self.emit(*partition, output, None, None)?;
        }
        Ok(())
    }

    /// Closes the open transaction, if the previous one has settled: it commits the consumed
    /// offsets as they stand now, and each task seals what it wrote.
    fn close(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        if !self.txns.may_close() {
            return Ok(());
        }
        let offsets = offsets_to_commit(consumer, &self.config.topics.orders_topic, &mut self.tasks)?;
        for (_, task) in self.tasks.tasks_mut() {
            task.seal();
        }
        self.txns.close(offsets);
        tracing::debug!(interval_ms = self.last_commit.elapsed().as_millis() as u64, "transaction closed");
        if self.txns.overlapped() {
            // The next transaction takes records from now: the next commit interval counts from
            // here.
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Commits (or aborts) every transaction, the open one included, waiting up to `timeout`.
    /// Returns whether they settled.
    pub(super) fn settle(&mut self, consumer: &Consumer_, timeout: Duration) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.txns.is_settling() {
                if !self.txns.is_open() {
                    return Ok(true);
                }
                self.close(consumer)?;
            }
            self.step(consumer, COMMIT_STEP)?;
            if !self.txns.is_settling() && !self.txns.is_open() {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
        }
    }

    /// Takes the oldest closed transaction one step further, waiting at most `wait` for its
    /// committer thread.
    fn step(&mut self, consumer: &Consumer_, wait: Duration) -> Result<(), RuntimeError> {
        match self.txns.step(wait)? {
            Settled::Idle | Settled::NotYet => {}
            Settled::Committed { txn, took } => {
                self.metrics.commit_seconds.observe(took.as_secs_f64());
                self.after_commit(txn.slot)?;
            }
            Settled::Aborted { first_offsets, took } => {
                self.metrics.abort_seconds.observe(took.as_secs_f64());
                self.after_abort(consumer, &first_offsets)?;
            }
            Settled::ProducerLost { slot, reason } => {
                tracing::error!(%reason, slot, "a transactional producer cannot go on; its transaction is lost, and the ones after it are aborted; starting a new producer");
                let producer = clients::transactional_producer(&self.config, slot)?;
                self.txns.replace(slot, Arc::clone(&producer))?;
                self.producers[slot] = producer;
                self.metrics.producers_replaced.inc();
            }
        }
        Ok(())
    }

    /// After Kafka committed the transaction of producer `slot`: the sealed caches go to RocksDB
    /// with their changelog positions.
    fn after_commit(&mut self, slot: usize) -> Result<(), RuntimeError> {
        let acknowledged = self.producers[slot].take_acknowledged();
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
        if !self.txns.overlapped() {
            // The next commit interval counts from here: the thread gets a full interval of
            // records.
            self.last_commit = Instant::now();
        }
        self.metrics.commits.inc();
        self.update_gauges();
        Ok(())
    }

    /// After the transactions that did not commit aborted: the caches are dropped and the
    /// consumer goes back to the first record they read on each partition it still runs.
    fn after_abort(
        &mut self,
        consumer: &Consumer_,
        first_offsets: &std::collections::BTreeMap<i32, i64>,
    ) -> Result<(), RuntimeError> {
        for producer in &self.producers {
            producer.take_acknowledged();
        }
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
