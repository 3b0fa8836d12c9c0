//! The open transaction, and the committer thread that ends it.
//!
//! A transaction is *open* while the stream thread adds records, timers and outbox entries to it;
//! then *committing* (no more writes may join) or *aborting*, until Kafka answers. The calls that
//! end it (send the consumed offsets, commit, abort) run on a thread of their own, the committer:
//! librdkafka can block in them for the whole request timeout when the broker stops answering,
//! and the stream thread must keep answering the HTTP path meanwhile. The committer also watches
//! them: `send_offsets_to_transaction` can hang for good when the group coordinator it cached went
//! away (confluentinc/librdkafka#5456, #5511; the chaos runner hit it after a broker kill), so a
//! call still running long past its own timeout is *stuck*:
//!
//! - stuck before the commit was asked for (sending the offsets) or while aborting, the
//!   transaction cannot have committed: it is lost, and a new producer fences the stuck one
//!   ([`Settled::ProducerLost`]); its input is processed again;
//! - stuck in the commit itself, whether it committed is unknown: the stream thread stops
//!   ([`RuntimeError::Wedged`]), and the restart restores from what Kafka holds.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::producer::{TransactionalProducer, TxnError, TxnErrorKind};
use super::RuntimeError;

/// Where the open transaction is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking records, timers and outbox entries.
    Open,
    /// Commit asked for; no more writes may join. Resumed each turn until Kafka answers.
    Committing,
    /// Abort asked for (the commit failed, or the assignment was lost). Resumed likewise.
    Aborting,
}

/// The open transaction.
#[derive(Debug)]
pub struct Txn {
    pub phase: Phase,
    /// The first `orders` offset this transaction read, per partition: where to go back to if it
    /// does not commit.
    pub first_offsets: BTreeMap<i32, i64>,
}

/// A transactional call of the committer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    SendOffsets,
    Commit,
    Abort,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::SendOffsets => "send_offsets_to_transaction",
            Call::Commit => "commit_transaction",
            Call::Abort => "abort_transaction",
        }
    }
}

/// What a step of a settling transaction came to.
#[derive(Debug)]
pub enum Settled {
    /// Nothing was open.
    Idle,
    /// Still under way.
    NotYet,
    /// Kafka committed it: write the stores.
    Committed { txn: Txn, took: Duration },
    /// Kafka aborted it: drop its writes, read its input again.
    Aborted { txn: Txn, took: Duration },
    /// The producer cannot go on (fenced, failed fatally, or stuck where the transaction cannot
    /// have committed): the transaction is lost. Start a new producer ([`Transactions::replace`]),
    /// drop the writes, read the input again.
    ProducerLost { txn: Txn, reason: String },
}

enum Op<O> {
    Commit(Option<O>),
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Commit,
    Abort,
}

/// A call of the committer thread that finished: what it was, how it went, how long it took.
type Finished = (OpKind, Result<(), TxnError>, Duration);

/// The committer thread, and what it is doing.
struct Committer<O> {
    ops: Sender<Op<O>>,
    results: Receiver<Result<(), TxnError>>,
    in_flight: Option<(OpKind, Instant)>,
    /// The call under way on the committer thread, and since when.
    current: Arc<Mutex<Option<(Call, Instant)>>>,
    stuck_after: Duration,
}

impl<O: Send + 'static> Committer<O> {
    fn start<P: TransactionalProducer<Offsets = O>>(
        producer: Arc<P>,
        call_timeout: Duration,
        stuck_after: Duration,
    ) -> Result<Committer<O>, RuntimeError> {
        let (ops, op_rx) = channel::<Op<O>>();
        let (result_tx, results) = channel();
        let current = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&current);
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                for op in op_rx {
                    let p = &*producer;
                    let result = match op {
                        Op::Commit(offsets) => offsets
                            .as_ref()
                            .map_or(Ok(()), |o| {
                                until_settled(p, &slot, Call::SendOffsets, || p.send_offsets(o, call_timeout))
                            })
                            .and_then(|()| until_settled(p, &slot, Call::Commit, || p.commit(call_timeout))),
                        // Short attempts: an abort waits for the delivery reports of the purged
                        // records, which only polling the producer (between attempts) serves.
                        Op::Abort => until_settled(p, &slot, Call::Abort, || p.abort(Duration::from_millis(500))),
                    };
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    // The stream thread gave up on this committer (a call was stuck): stop, and
                    // let the producer go.
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| RuntimeError::Thread { name: "committer", source })?;
        Ok(Committer { ops, results, in_flight: None, current, stuck_after })
    }

    fn submit(&mut self, op: Op<O>) -> Result<(), RuntimeError> {
        let kind = match op {
            Op::Commit(_) => OpKind::Commit,
            Op::Abort => OpKind::Abort,
        };
        self.ops.send(op).map_err(|_| RuntimeError::ThreadStopped { name: "committer" })?;
        self.in_flight = Some((kind, Instant::now()));
        Ok(())
    }

    /// The result of the call in flight, if it came within `wait`.
    fn result(&mut self, wait: Duration) -> Result<Option<Finished>, RuntimeError> {
        let Some((kind, submitted)) = self.in_flight else { return Ok(None) };
        match self.results.recv_timeout(wait) {
            Ok(result) => {
                self.in_flight = None;
                Ok(Some((kind, result, submitted.elapsed())))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(RuntimeError::ThreadStopped { name: "committer" }),
        }
    }

    /// The call in flight, if it has run longer than `stuck_after`.
    fn stuck(&self) -> Option<(Call, Duration)> {
        self.in_flight?;
        let current = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.map(|(call, since)| (call, since.elapsed())).filter(|(_, stuck)| *stuck > self.stuck_after)
    }
}

/// Repeats a transactional call while it fails only for lack of time (Kafka away): librdkafka
/// resumes the same call where it was. Between attempts, serves the producer's events. Each
/// attempt is recorded in `slot` for the watchdog.
fn until_settled<P: TransactionalProducer>(
    producer: &P,
    slot: &Mutex<Option<(Call, Instant)>>,
    what: Call,
    mut call: impl FnMut() -> Result<(), TxnError>,
) -> Result<(), TxnError> {
    let mut logged = false;
    loop {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((what, Instant::now()));
        match call() {
            Err(err) if err.kind == TxnErrorKind::Retriable => {
                if !logged {
                    tracing::warn!(call = what.name(), error = %err, "transaction call timed out; retrying until Kafka answers");
                    logged = true;
                }
                producer.poll(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The transactions of one stream thread: the open one, and the committer that ends them.
pub struct Transactions<P: TransactionalProducer> {
    committer: Committer<P::Offsets>,
    open: Option<Txn>,
    call_timeout: Duration,
    stuck_after: Duration,
}

impl<P: TransactionalProducer> Transactions<P> {
    /// `call_timeout` is given to each transactional call; a call still running `stuck_after`
    /// after it started is stuck (see the module's documentation).
    pub fn new(producer: Arc<P>, call_timeout: Duration, stuck_after: Duration) -> Result<Self, RuntimeError> {
        let committer = Committer::start(producer, call_timeout, stuck_after)?;
        Ok(Transactions { committer, open: None, call_timeout, stuck_after })
    }

    /// A new committer for a new producer (the old one's thread, if stuck, is left behind).
    pub fn replace(&mut self, producer: Arc<P>) -> Result<(), RuntimeError> {
        self.committer = Committer::start(producer, self.call_timeout, self.stuck_after)?;
        self.open = None;
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Whether a transaction is committing or aborting: no record may join it.
    pub fn is_settling(&self) -> bool {
        self.open.as_ref().is_some_and(|t| t.phase != Phase::Open)
    }

    /// A transaction was begun on the producer.
    pub fn opened(&mut self) {
        self.open = Some(Txn { phase: Phase::Open, first_offsets: BTreeMap::new() });
    }

    /// The open transaction read `offset` of `partition`.
    pub fn read(&mut self, partition: i32, offset: i64) {
        if let Some(txn) = &mut self.open {
            txn.first_offsets.entry(partition).or_insert(offset);
        }
    }

    /// No more writes: commit what is open, at the next [`Transactions::step`].
    pub fn commit(&mut self) {
        if let Some(txn) = self.open.as_mut().filter(|t| t.phase == Phase::Open) {
            txn.phase = Phase::Committing;
        }
    }

    /// Abort what is open (or committing: a commit already asked for is too late to stop).
    pub fn abort(&mut self) {
        if let Some(txn) = &mut self.open {
            txn.phase = Phase::Aborting;
        }
    }

    /// Takes a settling transaction one step further, waiting at most `wait` for the committer.
    /// `offsets` gives the consumed offsets to commit with it (asked for when the commit goes to
    /// the committer).
    pub fn step(
        &mut self,
        wait: Duration,
        offsets: impl FnOnce() -> Result<Option<P::Offsets>, RuntimeError>,
    ) -> Result<Settled, RuntimeError> {
        let Some(phase) = self.open.as_ref().map(|t| t.phase) else { return Ok(Settled::Idle) };
        if phase == Phase::Open {
            return Ok(Settled::NotYet);
        }
        if self.committer.in_flight.is_none() {
            let op = match phase {
                Phase::Committing => Op::Commit(offsets()?),
                _ => Op::Abort,
            };
            self.committer.submit(op)?;
        }
        let Some((kind, result, took)) = self.committer.result(wait)? else {
            return match self.committer.stuck() {
                Some((Call::Commit, stuck)) => Err(RuntimeError::Wedged { call: Call::Commit.name(), stuck }),
                Some((call, stuck)) => Ok(Settled::ProducerLost {
                    txn: self.take(),
                    reason: format!("{} has not returned for {} s, past its own timeout", call.name(), stuck.as_secs()),
                }),
                None => Ok(Settled::NotYet),
            };
        };
        match (kind, result) {
            // Committed (even if an abort was asked for meanwhile: it was too late for that).
            (OpKind::Commit, Ok(())) => Ok(Settled::Committed { txn: self.take(), took }),
            (OpKind::Abort, Ok(())) => Ok(Settled::Aborted { txn: self.take(), took }),
            (_, Err(err)) if err.kind == TxnErrorKind::Fatal => {
                Ok(Settled::ProducerLost { txn: self.take(), reason: err.message })
            }
            (OpKind::Commit, Err(err)) if err.kind == TxnErrorKind::Abortable => {
                tracing::warn!(error = %err, "transaction failed; aborting and reprocessing from the last commit");
                self.abort();
                Ok(Settled::NotYet)
            }
            (OpKind::Commit, Err(source)) => {
                Err(RuntimeError::Transaction { context: "committing the transaction", source })
            }
            (OpKind::Abort, Err(source)) => {
                Err(RuntimeError::Transaction { context: "aborting the transaction", source })
            }
        }
    }

    fn take(&mut self) -> Txn {
        self.open.take().unwrap_or(Txn { phase: Phase::Aborting, first_offsets: BTreeMap::new() })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// What a scripted call does.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        Ok,
        Fail(TxnErrorKind),
        /// Never returns, as librdkafka's `send_offsets_to_transaction` after its coordinator went.
        Hang,
    }

    /// A producer that answers each call from a script, and records the calls.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<(&'static str, Answer)>>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Scripted {
        fn new(script: &[(&'static str, Answer)]) -> Arc<Scripted> {
            Arc::new(Scripted { answers: Mutex::new(script.iter().copied().collect()), calls: Mutex::default() })
        }

        fn answer(&self, call: &'static str) -> Result<(), TxnError> {
            self.calls.lock().expect("calls").push(call);
            let next = self.answers.lock().expect("answers").pop_front();
            match next {
                Some((expected, answer)) => {
                    assert_eq!(expected, call, "the calls came in another order than scripted");
                    match answer {
                        Answer::Ok => Ok(()),
                        Answer::Fail(kind) => Err(TxnError::new(kind, format!("scripted {kind:?} on {call}"))),
                        Answer::Hang => loop {
                            std::thread::park();
                        },
                    }
                }
                None => panic!("unscripted call {call}"),
            }
        }

        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().expect("calls").clone()
        }
    }

    impl TransactionalProducer for Scripted {
        type Offsets = Vec<(i32, i64)>;

        fn send_offsets(&self, _: &Self::Offsets, _: Duration) -> Result<(), TxnError> {
            self.answer("send_offsets")
        }
        fn commit(&self, _: Duration) -> Result<(), TxnError> {
            self.answer("commit")
        }
        fn abort(&self, _: Duration) -> Result<(), TxnError> {
            self.answer("abort")
        }
        fn poll(&self, _: Duration) {}
    }

    fn transactions(producer: &Arc<Scripted>) -> Transactions<Scripted> {
        Transactions::new(Arc::clone(producer), Duration::from_secs(1), Duration::from_millis(200))
            .expect("committer thread")
    }

    /// Steps until the transaction settles one way or another (or fails).
    fn settle(t: &mut Transactions<Scripted>) -> Result<Settled, RuntimeError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match t.step(Duration::from_millis(10), || Ok(Some(vec![(0, 42)])))? {
                Settled::NotYet => assert!(Instant::now() < deadline, "the transaction never settled"),
                settled => return Ok(settled),
            }
        }
    }

    fn open_with_reads(t: &mut Transactions<Scripted>) {
        t.opened();
        t.read(0, 10);
        t.read(0, 11);
        t.read(3, 7);
    }

    #[test]
    fn a_commit_sends_the_offsets_then_commits() {
        let producer = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Ok)]);
        let mut t = transactions(&producer);
        open_with_reads(&mut t);
        assert!(matches!(t.step(Duration::ZERO, || Ok(None)).expect("step"), Settled::NotYet), "open: nothing to do");
        t.commit();
        assert!(t.is_settling());
        let Settled::Committed { txn, .. } = settle(&mut t).expect("settles") else { panic!("committed") };
        assert_eq!(txn.first_offsets, BTreeMap::from([(0, 10), (3, 7)]), "where each partition's reading began");
        assert_eq!(producer.calls(), ["send_offsets", "commit"]);
        assert!(!t.is_open());
        assert!(matches!(t.step(Duration::ZERO, || Ok(None)).expect("step"), Settled::Idle));
    }

    #[test]
    fn a_call_that_times_out_is_made_again_until_kafka_answers() {
        let producer = Scripted::new(&[
            ("send_offsets", Answer::Fail(TxnErrorKind::Retriable)),
            ("send_offsets", Answer::Ok),
            ("commit", Answer::Fail(TxnErrorKind::Retriable)),
            ("commit", Answer::Ok),
        ]);
        let mut t = transactions(&producer);
        t.opened();
        t.commit();
        assert!(matches!(settle(&mut t).expect("settles"), Settled::Committed { .. }));
        assert_eq!(producer.calls(), ["send_offsets", "send_offsets", "commit", "commit"]);
    }

    #[test]
    fn a_commit_that_requires_an_abort_is_aborted() {
        let producer = Scripted::new(&[
            ("send_offsets", Answer::Ok),
            ("commit", Answer::Fail(TxnErrorKind::Abortable)),
            ("abort", Answer::Ok),
        ]);
        let mut t = transactions(&producer);
        open_with_reads(&mut t);
        t.commit();
        let Settled::Aborted { txn, .. } = settle(&mut t).expect("settles") else { panic!("aborted") };
        assert_eq!(txn.first_offsets.get(&0), Some(&10), "the input to read again");
        assert_eq!(producer.calls(), ["send_offsets", "commit", "abort"]);
    }

    #[test]
    fn a_zombie_s_offsets_refused_by_the_group_abort_its_transaction() {
        // The group coordinator refuses offsets from an old generation: librdkafka makes the
        // transaction abortable, and nothing of it commits.
        let producer = Scripted::new(&[("send_offsets", Answer::Fail(TxnErrorKind::Abortable)), ("abort", Answer::Ok)]);
        let mut t = transactions(&producer);
        t.opened();
        t.commit();
        assert!(matches!(settle(&mut t).expect("settles"), Settled::Aborted { .. }));
        assert_eq!(producer.calls(), ["send_offsets", "abort"], "no commit was asked for");
    }

    #[test]
    fn a_fenced_producer_loses_its_transaction() {
        let producer = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Fail(TxnErrorKind::Fatal))]);
        let mut t = transactions(&producer);
        open_with_reads(&mut t);
        t.commit();
        let Settled::ProducerLost { txn, reason } = settle(&mut t).expect("settles") else { panic!("lost") };
        assert!(reason.contains("Fatal"), "{reason}");
        assert_eq!(txn.first_offsets.get(&3), Some(&7));
        // A new producer takes over with a new committer.
        let fresh = Scripted::new(&[("commit", Answer::Ok)]);
        t.replace(Arc::clone(&fresh)).expect("replace");
        t.opened();
        t.commit();
        assert!(matches!(
            t.step(Duration::from_secs(1), || Ok(None)).expect("step"),
            Settled::Committed { .. } | Settled::NotYet
        ));
    }

    #[test]
    fn a_send_offsets_stuck_past_its_timeout_loses_the_transaction_and_the_producer() {
        let producer = Scripted::new(&[("send_offsets", Answer::Hang)]);
        let mut t = transactions(&producer);
        t.opened();
        t.commit();
        let started = Instant::now();
        let Settled::ProducerLost { reason, .. } = settle(&mut t).expect("settles") else { panic!("lost") };
        assert!(reason.starts_with("send_offsets_to_transaction has not returned"), "{reason}");
        assert!(started.elapsed() >= Duration::from_millis(200), "the watchdog waited its patience");
    }

    #[test]
    fn a_commit_stuck_past_its_timeout_stops_the_thread() {
        let producer = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Hang)]);
        let mut t = transactions(&producer);
        t.opened();
        t.commit();
        match settle(&mut t) {
            Err(RuntimeError::Wedged { call, .. }) => assert_eq!(call, "commit_transaction"),
            other => panic!("expected Wedged, got {other:?}"),
        }
    }

    #[test]
    fn a_transaction_with_no_offsets_only_commits() {
        let producer = Scripted::new(&[("commit", Answer::Ok)]);
        let mut t = transactions(&producer);
        t.opened();
        t.commit();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match t.step(Duration::from_millis(10), || Ok(None)).expect("step") {
                Settled::Committed { .. } => break,
                Settled::NotYet => assert!(Instant::now() < deadline),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(producer.calls(), ["commit"]);
    }
}
