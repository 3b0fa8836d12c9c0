//! MirrorMaker 2's lag, as wagon-lits sees it (`--standby-brokers`, docs/multi-cluster.md): for
//! each partition of the system's topics, the committed records of the active cluster that the
//! standby's copy does not have yet, and the age of the oldest of them. MirrorMaker 2 does not
//! keep offsets (the copy's differ), so a copy's position is found by its last record: looked up
//! on the active cluster by its timestamp (`offsetsForTimes`; MirrorMaker keeps timestamps), then
//! forward to the record with the same key and value.
//!
//! On `/metrics` (`rail_mirror_lag_records`, `rail_mirror_lag_seconds`) and behind
//! `GET /readyz/failover`, which says what a failover now would cost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use engine::kafka::{KafkaArgs, ReadToEndContext};

/// How long one look at a partition may take.
const CALL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicPartition {
    topic: String,
    partition: i32,
}

/// The copy's lag on one partition.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PartitionLag {
    /// Committed records of the active cluster not on the copy yet.
    pub records: u64,
    /// Age of the oldest of them, in seconds (0 when none).
    pub seconds: f64,
    /// The active cluster's offset below which the copy holds every committed record.
    #[serde(skip)]
    pub copied_until: i64,
}

/// The last look at the copy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MirrorLag {
    /// By topic, then partition.
    pub topics: BTreeMap<String, BTreeMap<i32, PartitionLag>>,
    /// When it was measured, in milliseconds since the Unix epoch.
    pub measured_ms: u64,
}

impl MirrorLag {
    /// Records of `topic` not copied yet, over its partitions.
    pub fn records(&self, topic: &str) -> u64 {
        self.topics.get(topic).map_or(0, |p| p.values().map(|l| l.records).sum())
    }

    /// Per partition of `topic`, the active cluster's offset below which the copy holds every
    /// committed record.
    pub fn copied_until(&self, topic: &str) -> BTreeMap<i32, i64> {
        self.topics.get(topic).map_or_else(BTreeMap::new, |p| p.iter().map(|(p, l)| (*p, l.copied_until)).collect())
    }

    /// The age of the oldest record not copied yet, over every topic.
    pub fn seconds(&self) -> f64 {
        self.topics.values().flat_map(|p| p.values()).map(|l| l.seconds).fold(0.0, f64::max)
    }
}

/// Watches the copy: [`MirrorWatch::run`] measures every interval; the last result (or why it
/// failed) is read by `/readyz/failover`.
pub struct MirrorWatch {
    active: KafkaArgs,
    standby: KafkaArgs,
    topics: Vec<String>,
    last: Mutex<Result<MirrorLag, String>>,
    records: Family<TopicPartition, Gauge>,
    seconds: Family<TopicPartition, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl MirrorWatch {
    /// A watch of `topics` copied from `active` to `standby`, its families registered.
    pub fn new(active: KafkaArgs, standby: KafkaArgs, topics: Vec<String>, registry: &mut Registry) -> MirrorWatch {
        let records = Family::<TopicPartition, Gauge>::default();
        let seconds = Family::<TopicPartition, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "rail_mirror_lag_records",
            "Committed records of the active cluster MirrorMaker 2 has not copied to the standby yet",
            records.clone(),
        );
        registry.register(
            "rail_mirror_lag_seconds",
            "Age of the oldest record MirrorMaker 2 has not copied to the standby yet",
            seconds.clone(),
        );
        MirrorWatch { active, standby, topics, last: Mutex::new(Err("not measured yet".into())), records, seconds }
    }

    /// The topics watched: `orders`, `order-updates`, the changelog, the dead-letter topic.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The last measure, or why it failed.
    pub fn last(&self) -> Result<MirrorLag, String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Measures every `every` until `stop` is set, handing each measure to `after`.
    pub fn run(&self, every: Duration, stop: &AtomicBool, after: &dyn Fn(&MirrorLag)) {
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let measured = self.measure();
            if let Ok(lag) = &measured {
                for (topic, partitions) in &lag.topics {
                    for (partition, l) in partitions {
                        let labels = TopicPartition { topic: topic.clone(), partition: *partition };
                        self.records.get_or_create(&labels).set(i64::try_from(l.records).unwrap_or(i64::MAX));
                        self.seconds.get_or_create(&labels).set(l.seconds);
                    }
                }
                after(lag);
            } else if let Err(err) = &measured {
                tracing::warn!(error = %err, "cannot measure MirrorMaker 2's lag");
            }
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = measured;
            while started.elapsed() < every && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// One look at every partition of every topic.
    pub fn measure(&self) -> Result<MirrorLag, String> {
        let active = reader(&self.active).map_err(|e| format!("the active cluster: {e}"))?;
        let standby = reader(&self.standby).map_err(|e| format!("the standby cluster: {e}"))?;
        let now = now_ms();
        let mut topics = BTreeMap::new();
        for topic in &self.topics {
            let metadata = active
                .fetch_metadata(Some(topic), CALL)
                .map_err(|e| format!("the active cluster's metadata of {topic}: {e}"))?;
            let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len() as i32);
            let mut lags = BTreeMap::new();
            for partition in 0..partitions {
                let copied = last_record(&standby, topic, partition)
                    .map_err(|e| format!("the standby's {topic} partition {partition}: {e}"))?;
                let behind = records_after(&active, topic, partition, copied.as_ref())
                    .map_err(|e| format!("the active cluster's {topic} partition {partition}: {e}"))?;
                // After the read: a record written while it ran is not in the future.
                let read_ms = now_ms();
                let seconds = behind.oldest_ms.map_or(0.0, |ts| read_ms.saturating_sub(ts) as f64 / 1000.0);
                lags.insert(
                    partition,
                    PartitionLag { records: behind.records, seconds, copied_until: behind.copied_until },
                );
            }
            topics.insert(topic.clone(), lags);
        }
        Ok(MirrorLag { topics, measured_ms: now })
    }
}

/// A record's identity across clusters: MirrorMaker 2 copies key, value and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Copied {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    ts: i64,
}

struct Behind {
    records: u64,
    oldest_ms: Option<u64>,
    /// The offset after the copy's last record on the active cluster (0 when the copy is empty).
    copied_until: i64,
}

fn reader(kafka: &KafkaArgs) -> Result<BaseConsumer<ReadToEndContext>, KafkaError> {
    let mut c: ClientConfig = kafka.base();
    c.set("group.id", "rail-mirror-lag")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    kafka.finish(c).create_with_context(ReadToEndContext)
}

/// Reads `topic`/`partition` from `from` up to offset `until` (its end when measured), handing
/// each committed record to `each`. It stops at the first record at or past `until`, at the
/// partition's end event, or after a second without a record: while MirrorMaker 2 writes, the
/// copy has a transaction open most of the time, and librdkafka then reports no end to a
/// read_committed reader (measured in the multi-cluster test).
fn read(
    consumer: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), String> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(from)).map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CALL;
    let mut last = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last = Instant::now();
                if message.offset() < until {
                    each(&message);
                }
                if message.offset() >= until - 1 {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(err)) => return Err(err.to_string()),
            None if last.elapsed() > Duration::from_secs(1) => return Ok(()),
            // Past `until` already: what is left below it are transaction markers, never handed
            // out as records.
            None if position(consumer, topic, partition).is_some_and(|p| p >= until) => return Ok(()),
            None => {}
        }
        if Instant::now() > deadline {
            return Err(format!("no end reached within {CALL:?}"));
        }
    }
}

/// The reader's next offset on the partition, if it has one.
fn position(consumer: &BaseConsumer<ReadToEndContext>, topic: &str, partition: i32) -> Option<i64> {
    match consumer.position().ok()?.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The last committed record of the partition, if it has one. Transaction markers take offsets,
/// so it reads back a little from the end.
fn last_record(
    consumer: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    partition: i32,
) -> Result<Option<Copied>, String> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, CALL).map_err(|e| e.to_string())?;
    let mut back = 16;
    loop {
        let from = (high - back).max(low);
        if from >= high {
            return Ok(None);
        }
        let mut last = None;
        read(consumer, topic, partition, from, high, |m| {
            last = Some(Copied {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                ts: m.timestamp().to_millis().unwrap_or(-1),
            })
        })?;
        if last.is_some() || from == low {
            return Ok(last);
        }
        back *= 4;
    }
}

/// The committed records of the active cluster's partition after `copied` (all of them when the
/// copy is empty), and the timestamp of the first.
fn records_after(
    consumer: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    partition: i32,
    copied: Option<&Copied>,
) -> Result<Behind, String> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, CALL).map_err(|e| e.to_string())?;
    let from = match copied {
        None => low,
        Some(copied) => {
            let mut query = TopicPartitionList::new();
            query.add_partition_offset(topic, partition, Offset::Offset(copied.ts)).map_err(|e| e.to_string())?;
            let found = consumer.offsets_for_times(query, CALL).map_err(|e| e.to_string())?;
            match found.find_partition(topic, partition).map(|p| p.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => {
                    return Err(
                        "the copy's last record is not on the active cluster (a copy of another cluster?)".into()
                    )
                }
            }
        }
    };
    if from >= high {
        // Nothing to read: claims no copied record.
        return Ok(Behind { records: 0, oldest_ms: None, copied_until: 0 });
    }
    let mut found = copied.is_none();
    // An empty copy holds nothing, not even what the active cluster's retention took: 0.
    let mut behind = Behind { records: 0, oldest_ms: None, copied_until: 0 };
    read(consumer, topic, partition, from, high, |m| {
        if found {
            behind.records += 1;
            if behind.oldest_ms.is_none() {
                behind.oldest_ms = m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok());
            }
        } else if let Some(copied) = copied {
            found = m.key() == copied.key.as_deref()
                && m.payload() == copied.value.as_deref()
                && m.timestamp().to_millis() == Some(copied.ts);
            if found {
                behind.copied_until = m.offset() + 1;
            }
        }
    })?;
    if !found {
        return Err("the copy's last record is not on the active cluster (a copy of another cluster?)".into());
    }
    Ok(behind)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Starts the watch in a thread of its own, measuring every `every` until `stop` is set and
/// handing each measure to `after`.
pub fn spawn(
    watch: Arc<MirrorWatch>,
    every: Duration,
    stop: Arc<AtomicBool>,
    after: impl Fn(&MirrorLag) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("mirror-lag".into()).spawn(move || watch.run(every, &stop, &after)).map(|_| ())
}
