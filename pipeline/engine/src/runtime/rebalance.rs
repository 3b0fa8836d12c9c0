//! Rebalances and restores: what the stream thread does when the group assigns, revokes or
//! loses partitions, and how newly assigned tasks are restored from their changelogs before any
//! of their records is processed.
//!
//! - **Assigned**: each partition's task restores (a detached one is caught up), the stores of
//!   partitions owned elsewhere hand their unpublished HTTP decisions over to `orders`, and the
//!   standby copies follow what has no task.
//! - **Revoked** (an orderly rebalance): the transactions settle first (the closed one, then the
//!   open one), the outbox of the revoked tasks with them, then the tasks close.
//! - **Lost** (the coordinator unreachable for the session timeout): the transactions not yet
//!   committed are aborted and the running tasks kept, detached, to serve the HTTP path.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::restore::restore;
use super::stream_thread::{Consumer_, Engine, SETTLE_TIMEOUT};
use super::task::Task;
use super::{clients, KafkaContext, RuntimeError};
use crate::kafka::KAFKA_CALL_TIMEOUT;

/// How soon a restore that found a transaction open on its changelog partition is tried again.
const RESTORE_AGAIN_AFTER: Duration = Duration::from_millis(200);
/// With several stream threads, how long after an assignment the stores left behind are handed
/// over: long enough for the sibling threads, assigned in the same rebalance, to say which
/// partitions they took (a store one of them took is not left behind).
const HAND_OVER_AFTER: Duration = Duration::from_secs(2);

impl Engine {
    /// Before partitions go to another member: settle what is open, then close their tasks.
    /// When the group says the assignment is already lost (its coordinator unreachable for the
    /// session timeout), the transaction cannot commit any more: it is aborted, and the tasks are
    /// kept, detached, to serve the HTTP path until the next assignment.
    pub(super) fn on_revoke(&mut self, consumer: &Consumer_, partitions: &[i32]) {
        if consumer.assignment_lost() {
            tracing::warn!(
                ?partitions,
                "assignment lost (group coordinator unreachable); tasks kept for the HTTP path"
            );
            self.txns.abort();
            self.tasks.lost(partitions);
            self.update_gauges();
            return;
        }
        tracing::info!(?partitions, "partitions revoked: settling the open transaction");
        // Decisions taken over HTTP go out before another member owns their partitions: with
        // what is open, or in one more transaction once everything else has committed.
        let has_outbox =
            |engine: &mut Engine| engine.tasks.running().any(|(p, t)| partitions.contains(&p) && t.outbox_len() > 0);
        // Long enough for the committer's watchdog to call a stuck call stuck and for what follows
        // (a new producer, the aborts) to finish: a `send_offsets_to_transaction` that never
        // returns (the group coordinator it cached went away, confluentinc/librdkafka#5456)
        // would otherwise outlast the wait, and the thread would stop on a transaction that the
        // watchdog is about to settle. The chaos runner found this (seed 803524, overlapped
        // commits: the call sent its AddOffsetsToTxn, then nothing, for 30 s). The group waits
        // for this member up to its rebalance timeout (`max.poll.interval.ms`, 300 s).
        let patience = self.config.stuck_call_after + SETTLE_TIMEOUT;
        let mut settled = self.settle(consumer, patience);
        if matches!(settled, Ok(true)) && has_outbox(self) {
            settled = self.begin().and_then(|_| self.settle(consumer, patience));
        }
        match settled {
            Ok(true) => {}
            Ok(false) => {
                self.fatal.get_or_insert(RuntimeError::NotSettled { waited: patience });
            }
            Err(err) => {
                tracing::error!(error = %err, "could not settle the transaction before the partitions were revoked");
                self.fatal.get_or_insert(err);
            }
        }
        self.tasks.revoked(partitions);
        self.refresh_standbys();
        self.update_gauges();
    }

    /// New partitions: restore them before processing; close detached tasks that did not come
    /// back.
    pub(super) fn on_assign(&mut self, partitions: &[i32]) {
        tracing::info!(?partitions, "partitions assigned");
        self.metrics.assignment(self.thread, partitions);
        let assigned = self.tasks.assigned(partitions);
        for (partition, outbox) in assigned.closed_detached {
            tracing::warn!(partition, outbox, "detached task not reassigned; closed");
        }
        if self.config.stream_threads > 1 {
            self.hand_over_at = Some(Instant::now() + HAND_OVER_AFTER);
        } else {
            self.hand_over_orphans(partitions);
        }
        // Before the restores open their stores: a standby copy of an assigned partition closes.
        self.refresh_standbys();
        self.update_gauges();
    }

    /// Stores of partitions this instance no longer owns that still hold decisions taken over
    /// HTTP, never published (it lost the partition while Kafka was away, or died before it could
    /// publish and the partition went elsewhere): the commands go back to `orders`, for the owner
    /// to decide (a command it has already applied changes nothing), and the local copy is
    /// dropped, to be restored afresh if the partition comes back.
    fn hand_over_orphans(&mut self, assigned: &[i32]) {
        self.hand_over_at = None;
        let standby: BTreeSet<i32> =
            self.standbys.as_ref().map(|s| s.partitions().into_iter().collect()).unwrap_or_default();
        for partition in self.tasks.without_task(self.partitions) {
            if assigned.contains(&partition)
                || standby.contains(&partition)
                || self.ownership.held_by_another(self.thread, partition)
            {
                continue;
            }
            let dir = self.config.state_dir.join(format!("partition-{partition}"));
            if !dir.exists() {
                continue;
            }
            match super::hand_over::hand_over(&self.config, &dir) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(partition, commands = n, "partition owned elsewhere now: its unpublished HTTP decisions were handed over to orders as commands, and the local copy dropped"),
                // Another stream thread of the process has the store open (its standby copy, or a
                // task it just took): not left behind.
                Err(RuntimeError::Store(state::StoreError::Locked { .. })) => {
                    tracing::debug!(partition, "store held by another stream thread; not handed over")
                }
                Err(err) => tracing::warn!(partition, error = %err, "could not hand over the unpublished HTTP decisions of a partition owned elsewhere; trying again at the next rebalance"),
            }
        }
    }

    /// The hand-over an assignment put off ([`HAND_OVER_AFTER`]), once it is due.
    pub(super) fn hand_over_when_due(&mut self) {
        if self.hand_over_at.is_some_and(|at| Instant::now() >= at) {
            // The partitions this thread was assigned have tasks by now: none is handed over.
            self.hand_over_orphans(&[]);
        }
    }

    /// Standby copies of every partition that has no task in any stream thread of the process.
    pub(super) fn refresh_standbys(&mut self) {
        self.ownership_seen = self.ownership.version();
        let Some(standbys) = &mut self.standbys else { return };
        let wanted: BTreeSet<i32> = self
            .tasks
            .without_task(self.partitions)
            .into_iter()
            .filter(|p| !self.ownership.held_by_another(self.thread, *p))
            .collect();
        if let Err(err) = standbys.set(&wanted) {
            tracing::error!(error = %err, "could not set up the standby copies");
            self.fatal.get_or_insert(err);
        }
        self.metrics.standbys(self.thread, standbys.partitions().len());
    }

    /// Restores the tasks of newly assigned partitions, before any of their records is processed.
    /// Each partition resumes as soon as its own restore completes; one that fails (a leader
    /// moving, a broker restarting: not a reason to stop) waits, paused and without a task, and
    /// is tried again at the next turn.
    pub(super) fn restore_assigned(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        let partitions = self.tasks.restoring();
        if partitions.is_empty() || self.restore_again_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        self.restore_again_at = None;
        let failure = match self.committed_inputs(consumer, &partitions) {
            Ok(committed) => {
                let mut failure = None;
                for partition in partitions {
                    match self.restore_one(consumer, partition, &committed) {
                        Ok(true) => self.resume(consumer, &[partition]),
                        // A transaction is open on its changelog: the next turns go on serving the
                        // other tasks, and the restore is tried again shortly.
                        Ok(false) => self.restore_again_at = Some(Instant::now() + RESTORE_AGAIN_AFTER),
                        Err(RuntimeError::Kafka { context, source }) => {
                            failure = Some((context, source));
                            break;
                        }
                        Err(other) => return Err(other),
                    }
                }
                failure
            }
            Err(RuntimeError::Kafka { context, source }) => Some((context, source)),
            Err(other) => return Err(other),
        };
        self.update_gauges();
        if let Some((context, source)) = failure {
            let waiting = self.tasks.restoring();
            tracing::warn!(%context, error = %source, partitions = ?waiting, "restore failed; retrying shortly");
            // A fresh client for the next attempt: an idle consumer refreshes the metadata of a
            // topic it is not assigned only every few minutes, and after a broker kill its cache
            // can keep saying "unknown partition" that long (the three-broker test found it).
            match (clients::restore_consumer(&self.config, "restore"), clients::watermarks_client(&self.config)) {
                (Ok(fresh), Ok(watermarks)) => {
                    self.restore_consumer = fresh;
                    self.watermarks = watermarks;
                }
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(error = %err, "could not recreate the restore consumers")
                }
            }
            self.pause(consumer, &waiting);
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    fn partition_list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.config.topics.orders_topic, *p);
        }
        tpl
    }

    fn pause(&self, consumer: &Consumer_, partitions: &[i32]) {
        if let Err(err) = consumer.pause(&self.partition_list(partitions)) {
            tracing::warn!(error = %err, "could not pause partitions");
        }
    }

    fn resume(&self, consumer: &Consumer_, partitions: &[i32]) {
        if let Err(err) = consumer.resume(&self.partition_list(partitions)) {
            tracing::debug!(error = %err, "could not resume partitions");
        }
    }

    /// The committed offsets of `partitions` of `orders`, asked for with read_committed: the
    /// broker answers only once no transaction that carries offsets for these partitions is
    /// pending (KIP-447), so a zombie cannot commit changelog records after a restore has read to
    /// the end.
    fn committed_inputs(&self, consumer: &Consumer_, partitions: &[i32]) -> Result<TopicPartitionList, RuntimeError> {
        consumer
            .committed_offsets(self.partition_list(partitions), KAFKA_CALL_TIMEOUT)
            .context("reading committed offsets")
    }

    /// Restores one partition's task and makes it run; returns whether it does. A restore that
    /// found a transaction still open on the changelog keeps its task restoring, with what is
    /// committed so far applied ([`super::restore`]). On failure the task is closed (a detached
    /// one too: its store keeps what it holds, outbox included, for the next attempt).
    fn restore_one(
        &mut self,
        consumer: &Consumer_,
        partition: i32,
        committed: &TopicPartitionList,
    ) -> Result<bool, RuntimeError> {
        // A sibling thread's task still holds the store (detached, closed at its next
        // assignment): wait without trying the open, each attempt of which would make RocksDB
        // start a new info log in the store's directory.
        if !self.tasks.has_store(partition) && self.ownership.held_by_another(self.thread, partition) {
            tracing::debug!(partition, "another stream thread still has a task for this partition; waiting");
            return Ok(false);
        }
        // A task kept through a lost assignment is caught up, not reopened.
        let mut task = match self.tasks.take_for_restore(partition) {
            Some(task) => task,
            None => match Task::open(
                partition,
                &self.config.state_dir.join(format!("partition-{partition}")),
                &self.config.store,
            ) {
                Ok(task) => task,
                // Another stream thread of the process still holds the store (a detached task it
                // closes at its own next assignment, a standby copy it lets go at its next turn):
                // wait, as for a transaction open on the changelog ([`super::threads`]).
                Err(state::StoreError::Locked { .. }) => {
                    tracing::debug!(partition, "the store is still held by another stream thread; waiting");
                    return Ok(false);
                }
                Err(err) => return Err(err.into()),
            },
        };
        let stats = restore(&self.restore_consumer, &self.watermarks, &self.config.changelog_topic(), &mut task)?;
        if !stats.complete() {
            // Said once per wait, then at debug level at each attempt.
            let first = self.tasks.still_restoring(task);
            let message = "a transaction is still open on the changelog partition: its records, and what committed \
                           after them, cannot be read yet; the task waits until it commits or is aborted (fenced, \
                           or by the broker at its transaction.timeout.ms)";
            if first {
                self.metrics.restore_waits.inc();
                tracing::info!(partition, stable = stats.to, high_watermark = stats.high_watermark, "{message}");
            } else {
                tracing::debug!(partition, stable = stats.to, high_watermark = stats.high_watermark, "{message}");
            }
            return Ok(false);
        }
        tracing::info!(
            partition,
            from = stats.from.unwrap_or(-1),
            to = stats.to,
            records = stats.records,
            elapsed_ms = stats.elapsed.as_millis() as u64,
            pending_timers = task.pending_timers(),
            outbox = task.outbox_len(),
            "restore complete"
        );
        // Where processing resumes, and what every transaction of this task commits until it
        // reads a record: a transaction must carry an offset for each task, or nothing fences a
        // zombie's transaction made of timers or outbox entries alone. With no committed offset
        // (a new group, or one whose offsets expired on a quiet partition), that is where the
        // consumer starts: the partition's first offset (`auto.offset.reset=earliest`).
        let orders = &self.config.topics.orders_topic;
        task.next_input_offset = match committed.find_partition(orders, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => {
                let (low, _) = consumer
                    .fetch_watermarks(orders, partition, KAFKA_CALL_TIMEOUT)
                    .context(format!("reading the first offset of partition {partition}"))?;
                Some(low)
            }
        };
        self.metrics.restore_done(partition, stats.records, stats.elapsed);
        self.tasks.restored(task);
        Ok(true)
    }
}
