//! Restoring a task's state store from its changelog partition.
//!
//! The store keeps the changelog position its state reaches, so a restore reads only what the
//! store has not applied yet: after a clean stop nothing, after a crash the last transaction or
//! two, after a lost state directory everything. Kafka Streams under exactly-once wipes the
//! store after a crash and reads the whole changelog again; this does not need to, because the
//! store only ever holds committed state.
//!
//! **A transaction still open on the changelog.** A restore reads committed records only, so it
//! ends at the partition's last stable offset (LSO): the first record of the oldest transaction
//! still open there. Records committed after that one are invisible until it ends, and a task
//! that ran on what comes before them would decide again what they already decided. Such a
//! transaction is a zombie's (a previous owner frozen, or killed before it could commit or
//! abort): an orderly owner settles everything before it lets a partition go. So a restore is
//! complete only once the LSO has reached the high watermark seen when it started; until then
//! the task keeps restoring (what is committed so far is applied) and is tried again, until the
//! zombie's transaction commits, is fenced, or is aborted by the broker at its
//! `transaction.timeout.ms`. The chaos runner found this: a paused instance's open transaction
//! held partition 3's LSO for 15 s, across two owners, and both fired the same timer
//! (`docs/reliability.md`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::task::Task;
use super::RuntimeError;
use crate::kafka::KAFKA_CALL_TIMEOUT;

/// Records applied to RocksDB per batch during a restore.
const RESTORE_BATCH: usize = 5_000;
/// A restore that makes no progress for this long is an error (the changelog is unreachable).
const RESTORE_STALL: Duration = Duration::from_secs(120);

/// What one restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    pub partition: i32,
    /// The stored position it started from; `None` for an empty store (a full restore).
    pub from: Option<i64>,
    /// The position reached: the end of the changelog partition (its last stable offset).
    pub to: i64,
    /// The partition's high watermark when the restore started. Past `to` while a transaction is
    /// open there: the restore is not complete.
    pub high_watermark: i64,
    /// Changelog records read and applied.
    pub records: u64,
    pub elapsed: Duration,
}

impl RestoreStats {
    /// Whether the store holds everything the changelog had when the restore started: no
    /// transaction was left open there (see the module's documentation).
    pub fn complete(&self) -> bool {
        self.to >= self.high_watermark
    }
}

/// Brings `task`'s store up to the end of its changelog partition, reading committed records
/// only. `consumer` is a consumer without a group, configured with `read_committed` and
/// `enable.partition.eof`; `watermarks` one configured with `read_uncommitted`, asked for the
/// high watermark. The restore is complete ([`RestoreStats::complete`]) only if no transaction
/// was open on the partition; otherwise call again later.
pub fn restore<C: ConsumerContext, W: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    watermarks: &BaseConsumer<W>,
    changelog: &str,
    task: &mut Task,
) -> Result<RestoreStats, RuntimeError> {
    let started = Instant::now();
    let partition = task.partition;
    let from = task.store().changelog_position()?;
    // The high watermark first, then the last stable offset (what a read_committed client is
    // told the end is): if the second has reached the first, every transaction that had written
    // here has ended.
    let (_, high_watermark) = watermarks.fetch_watermarks(changelog, partition, KAFKA_CALL_TIMEOUT)?;
    let (low, high) = consumer.fetch_watermarks(changelog, partition, KAFKA_CALL_TIMEOUT)?;
    if from.unwrap_or(low) >= high {
        // Nothing after the stored position (or an empty changelog): no need to wait for a fetch.
        let to = from.unwrap_or(high);
        if from.is_none() {
            task.store().restore(&[], to)?;
        }
        task.reload()?;
        return Ok(RestoreStats { partition, from, to, high_watermark, records: 0, elapsed: started.elapsed() });
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(changelog, partition, from.map_or(Offset::Beginning, Offset::Offset))?;
    consumer.assign(&assignment)?;
    tracing::debug!(partition, from = ?from, high_watermark = high, "restoring from changelog");
    let read = read_to_end(consumer, changelog, task, from, high);
    // Whatever happened, the restore consumer lets the partition go: a failed attempt must not
    // leave it fetching for the next one.
    let unassigned = consumer.unassign();
    let (position, records) = read?;
    unassigned?;
    task.reload()?;
    Ok(RestoreStats { partition, from, to: position, high_watermark, records, elapsed: started.elapsed() })
}

/// Reads the assigned changelog partition from `from` to its end into `task`'s store; returns
/// the position reached and the records applied. `stable` is the partition's last stable offset
/// when the restore started: the end reached is at or past it.
fn read_to_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    changelog: &str,
    task: &mut Task,
    from: Option<i64>,
    stable: i64,
) -> Result<(i64, u64), RuntimeError> {
    let partition = task.partition;
    let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(RESTORE_BATCH);
    let mut total = 0u64;
    let mut next = from.unwrap_or(0);
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if message.topic() != changelog || message.partition() != partition {
                    continue;
                }
                let key = message.key().unwrap_or_default().to_vec();
                records.push((key, message.payload().map(<[u8]>::to_vec)));
                next = message.offset() + 1;
                last_progress = Instant::now();
                if records.len() >= RESTORE_BATCH {
                    total += task.store().restore(&records, next)? as u64;
                    records.clear();
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break,
            Some(Err(KafkaError::PartitionEOF(_))) => continue,
            Some(Err(err)) => {
                return Err(RuntimeError::Kafka {
                    context: format!("restoring partition {partition} of {changelog}"),
                    source: err,
                })
            }
            None => {
                if last_progress.elapsed() > RESTORE_STALL {
                    return Err(RuntimeError::RestoreStalled { partition, waited: RESTORE_STALL });
                }
            }
        }
    }
    // The consumer's position is past any transaction markers after the last record; and the end
    // of the partition, once reached, is at or past the last stable offset read at the start
    // (what lies below it and was not delivered is aborted records and markers).
    let position = consumer
        .position()?
        .find_partition(changelog, partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(next)
        .max(next)
        .max(stable);
    total += task.store().restore(&records, position)? as u64;
    Ok((position, total))
}
