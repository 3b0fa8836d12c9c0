//! The transactional producer, behind the small trait the transaction logic needs, so that commit,
//! abort, fencing and the committer's watchdog can be tested without a broker.
//!
//! [`KafkaProducer`] is the real one: librdkafka's producer with `transactional.id`, counting the
//! changelog offsets each transaction's records were acknowledged at ([`DeliveryTracker`]), which
//! the state stores record as their changelog position after the commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::TopicPartitionList;

use super::RuntimeError;

/// How a transactional call failed, as the transaction logic needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnErrorKind {
    /// Only for lack of time (Kafka slow or away): the same call, made again, resumes where it
    /// was.
    Retriable,
    /// The transaction cannot commit: abort it, and process its input again.
    Abortable,
    /// The producer cannot go on (fenced by a newer one with the same transactional id, or its
    /// epoch bumped by the coordinator after a timeout): start a new producer.
    Fatal,
    /// Anything else: the stream thread stops.
    Other,
}

/// A failed transactional call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TxnError {
    pub kind: TxnErrorKind,
    pub message: String,
}

impl TxnError {
    pub fn new(kind: TxnErrorKind, message: impl Into<String>) -> TxnError {
        TxnError { kind, message: message.into() }
    }
}

impl From<&KafkaError> for TxnError {
    fn from(err: &KafkaError) -> TxnError {
        let kind = match err {
            KafkaError::Transaction(e) if e.is_retriable() => TxnErrorKind::Retriable,
            KafkaError::Transaction(e) if e.txn_requires_abort() => TxnErrorKind::Abortable,
            KafkaError::Transaction(e) if e.is_fatal() => TxnErrorKind::Fatal,
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => TxnErrorKind::Retriable,
            _ => TxnErrorKind::Other,
        };
        TxnError::new(kind, err.to_string())
    }
}

/// What the transaction logic asks of a transactional producer. Each call blocks (librdkafka's
/// do), which is why they run on the committer thread.
pub trait TransactionalProducer: Send + Sync + 'static {
    /// The consumed offsets a transaction commits, with the group metadata that fences zombies.
    type Offsets: Send + 'static;

    /// Waits until every record sent in the open transaction is acknowledged.
    fn flush(&self, timeout: Duration) -> Result<(), TxnError>;
    fn send_offsets(&self, offsets: &Self::Offsets, timeout: Duration) -> Result<(), TxnError>;
    fn commit(&self, timeout: Duration) -> Result<(), TxnError>;
    fn abort(&self, timeout: Duration) -> Result<(), TxnError>;
    /// Serves the producer's events (delivery reports) for up to `timeout`.
    fn poll(&self, timeout: Duration);
}

/// Counts the producer's acknowledged changelog offsets, per partition, for the open
/// transaction, and the records sent and not yet acknowledged (for [`KafkaProducer`]'s flush).
/// Its delivery callback runs on the producer's polling thread.
pub struct DeliveryTracker {
    changelog: String,
    last_offsets: Mutex<HashMap<i32, i64>>,
    /// Counted without a lock (two atomic operations per record, on the stream thread and the
    /// polling thread); the lock below is only taken to wait for zero and to say it was reached.
    in_flight: AtomicUsize,
    drained_lock: Mutex<()>,
    /// Signalled when `in_flight` reaches zero.
    drained: Condvar,
}

impl DeliveryTracker {
    /// A tracker of the offsets acknowledged on `changelog`, nothing in flight.
    fn new(changelog: &str) -> DeliveryTracker {
        DeliveryTracker {
            changelog: changelog.to_string(),
            last_offsets: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            drained_lock: Mutex::new(()),
            drained: Condvar::new(),
        }
    }

    fn sent_one(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn acknowledged_one(&self) {
        let before = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)))
            .unwrap_or_else(|n| n);
        if before <= 1 {
            // Taken before notifying: a waiter checks the count and starts waiting under this
            // lock, so the notification cannot fall between its check and its wait.
            let _guard = self.drained_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.drained.notify_all();
        }
    }

    /// Waits until every record sent is acknowledged; false if `timeout` passed first.
    fn wait_drained(&self, timeout: Duration) -> bool {
        let guard = self.drained_lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .drained
            .wait_timeout_while(guard, timeout, |_| self.in_flight.load(Ordering::Acquire) > 0)
            .unwrap_or_else(|e| e.into_inner());
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.acknowledged_one();
        match result {
            Ok(message) if message.topic() == self.changelog => {
                let mut offsets = self.last_offsets.lock().unwrap_or_else(|e| e.into_inner());
                let last = offsets.entry(message.partition()).or_insert(message.offset());
                *last = (*last).max(message.offset());
            }
            Ok(_) => {}
            Err((err, message)) => {
                // The transaction will fail to commit; this only says why.
                tracing::warn!(topic = message.topic(), partition = message.partition(), error = %err, "a record of the transaction was not delivered");
            }
        }
    }
}

/// librdkafka's transactional producer, its events (delivery reports) served by a thread of its
/// own: a flush wakes up as soon as the last report is in, and nobody else needs to poll it.
pub struct KafkaProducer {
    inner: ThreadedProducer<DeliveryTracker>,
}

impl KafkaProducer {
    /// Wraps a producer created with `transactional.id` (not initialised yet), tracking the
    /// offsets of the records it sends to `changelog`.
    pub fn create(config: &rdkafka::ClientConfig, changelog: &str) -> Result<KafkaProducer, KafkaError> {
        Ok(KafkaProducer { inner: config.create_with_context(DeliveryTracker::new(changelog))? })
    }

    /// Fences any previous incarnation with the same transactional id and aborts what it left
    /// open.
    pub fn init(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.init_transactions(timeout)
    }

    pub fn begin(&self) -> Result<(), KafkaError> {
        self.inner.begin_transaction()
    }

    /// Sends a record in the open transaction, waiting while the producer's queue is full.
    pub fn send<K, P>(&self, record: BaseRecord<'_, K, P>) -> Result<(), RuntimeError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let mut record = record;
        loop {
            // Counted before the send: its delivery report may come before `send` returns.
            self.inner.context().sent_one();
            let sent = self.inner.send(record);
            if sent.is_err() {
                self.inner.context().acknowledged_one();
            }
            match sent {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // The polling thread serves the delivery reports that make room.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((source, returned)) => {
                    return Err(RuntimeError::Kafka { context: format!("producing to {}", returned.topic), source });
                }
            }
        }
    }

    /// The last acknowledged changelog offset of each partition since the last call.
    pub fn take_acknowledged(&self) -> HashMap<i32, i64> {
        std::mem::take(&mut *self.inner.context().last_offsets.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl TransactionalProducer for KafkaProducer {
    type Offsets = (TopicPartitionList, ConsumerGroupMetadata);

    /// Waits until every record sent is acknowledged. Not rdkafka's `flush`: it polls in slices
    /// of 100 ms that each run to their end, so it took at least 100 ms whenever a record was in
    /// flight (the overlapped commits' first measurement showed it). librdkafka's own
    /// `rd_kafka_flush` is called instead: it tells the broker threads to send what lingers at
    /// once, and waits for the delivery reports, which the polling thread serves meanwhile
    /// (`benches/txn-probe`: 3.5-4.2 ms at p50 against 8.2 ms for waiting on the tracker alone,
    /// which let the last batch sit out `linger.ms`). The tracker confirms.
    fn flush(&self, timeout: Duration) -> Result<(), TxnError> {
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the pointer is this producer's live librdkafka handle, valid while `self` is;
        // rd_kafka_flush is thread-safe and only waits (the polling thread serves the reports).
        #[allow(unsafe_code)]
        let _ = unsafe { rdkafka::bindings::rd_kafka_flush(self.inner.client().native_ptr(), millis) };
        if self.inner.context().wait_drained(Duration::from_millis(100)) {
            Ok(())
        } else {
            Err(TxnError::new(TxnErrorKind::Retriable, "flush: records not acknowledged in time"))
        }
    }

    fn send_offsets(&self, (offsets, group): &Self::Offsets, timeout: Duration) -> Result<(), TxnError> {
        // The test of the watchdog makes this call never return, as librdkafka's does when the
        // group coordinator it cached went away.
        fail::fail_point!("engine::send_offsets", |_| {
            tracing::error!("fault injection (engine::send_offsets): this call never returns");
            loop {
                std::thread::park();
            }
        });
        self.inner.send_offsets_to_transaction(offsets, group, timeout).map_err(|e| TxnError::from(&e))
    }

    fn commit(&self, timeout: Duration) -> Result<(), TxnError> {
        self.inner.commit_transaction(timeout).map_err(|e| TxnError::from(&e))
    }

    fn abort(&self, timeout: Duration) -> Result<(), TxnError> {
        self.inner.abort_transaction(timeout).map_err(|e| TxnError::from(&e))
    }

    fn poll(&self, timeout: Duration) {
        self.inner.poll(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_waits_for_the_last_report_and_no_longer() {
        let tracker = std::sync::Arc::new(DeliveryTracker::new("changelog"));
        assert!(tracker.wait_drained(Duration::ZERO), "nothing sent: drained at once");
        for _ in 0..1_000 {
            tracker.sent_one();
        }
        assert!(!tracker.wait_drained(Duration::from_millis(20)), "1,000 records unacknowledged");
        // The reports come on another thread, as from the polling thread, the last one later.
        let reporter = {
            let tracker = std::sync::Arc::clone(&tracker);
            std::thread::spawn(move || {
                for _ in 0..999 {
                    tracker.acknowledged_one();
                }
                std::thread::sleep(Duration::from_millis(50));
                tracker.acknowledged_one();
            })
        };
        let started = std::time::Instant::now();
        assert!(tracker.wait_drained(Duration::from_secs(10)), "every record acknowledged");
        assert!(started.elapsed() < Duration::from_secs(5), "woken by the last report, not by the timeout");
        reporter.join().expect("reporter thread");
        // A report with nothing in flight (never expected) does not wrap the count around.
        tracker.acknowledged_one();
        assert!(tracker.wait_drained(Duration::ZERO));
    }
}
