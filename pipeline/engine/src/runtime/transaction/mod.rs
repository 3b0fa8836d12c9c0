//! The transactions of a stream thread, and the committer threads that end them.
//!
//! A transaction is *open* while the stream thread adds records, timers and outbox entries to it;
//! then *closed*: committing (no more writes may join) or aborting, until Kafka answers. The calls
//! that end it (flush, send the consumed offsets, commit, abort) run on a committer thread, one
//! per producer: librdkafka can block in them for the whole request timeout when the broker stops
//! answering, and the stream thread must keep answering the HTTP path meanwhile.
//!
//! **Overlapped commits.** With two producers (two transactional ids), the stream thread opens
//! transaction N+1 on one while N commits on the other, so it keeps taking records during a
//! commit; and since N+1's producer is not the one whose commit markers the broker is still
//! writing, its first record is not answered `CONCURRENT_TRANSACTIONS` (librdkafka speaks the
//! first transaction protocol, which retries that every 20 ms). Order and fencing are kept:
//!
//! - N+1 takes its first record only once N's records are all acknowledged (the committer
//!   flushes N first and says so, [`Transactions::accepts_records`]): on every partition, N's
//!   records come before N+1's;
//! - N+1 is closed only after N has committed, so the consumed offsets commit in order;
//! - if N does not commit, N+1 is aborted too ([`Transactions::abort`]), and the input is read
//!   again from N's first records: whatever N+1 decided was built on N's writes.
//!
//! Each transaction carries the consumed offsets with the group metadata, as with one producer:
//! a zombie's transactions are fenced by the group generation, whichever producer sends them.
//!
//! The committer also watches its calls: `send_offsets_to_transaction` can hang for good when the
//! group coordinator it cached went away (confluentinc/librdkafka#5456, #5511; the chaos runner
//! hit it after a broker kill), so a call still running long past its own timeout is *stuck*:
//!
//! - stuck before the commit was asked for (flushing, sending the offsets) or while aborting, the
//!   transaction cannot have committed: it is lost, and a new producer fences the stuck one
//!   ([`Settled::ProducerLost`]); its input is processed again;
//! - stuck in the commit itself, whether it committed is unknown: the stream thread stops
//!   ([`RuntimeError::Wedged`]), and the restart restores from what Kafka holds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::producer::{TransactionalProducer, TxnError, TxnErrorKind};
use super::RuntimeError;

/// Where a transaction is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking records, timers and outbox entries.
    Open,
    /// Commit asked for; no more writes may join. Resumed each turn until Kafka answers.
    Committing,
    /// Abort asked for (the commit failed, an earlier transaction did not commit, or the
    /// assignment was lost). Resumed likewise.
    Aborting,
}

/// A transaction of the stream thread.
#[derive(Debug)]
pub struct Txn<O> {
    /// The producer it runs on (an index into the producers given to [`Transactions::new`]).
    pub slot: usize,
    pub phase: Phase,
    /// The first `orders` offset this transaction read, per partition: where to go back to if it
    /// does not commit.
    pub first_offsets: BTreeMap<i32, i64>,
    /// The consumed offsets it commits, taken when it closed.
    offsets: Option<O>,
}

/// A transactional call of a committer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Flush,
    SendOffsets,
    Commit,
    Abort,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Flush => "flush",
            Call::SendOffsets => "send_offsets_to_transaction",
            Call::Commit => "commit_transaction",
            Call::Abort => "abort_transaction",
        }
    }
}

/// What a step of the closed transactions came to.
#[derive(Debug)]
pub enum Settled<O> {
    /// Nothing is closed.
    Idle,
    /// Still under way.
    NotYet,
    /// Kafka committed the oldest closed transaction: write its stores.
    Committed { txn: Txn<O>, took: Duration },
    /// Kafka aborted every transaction left (the first that did not commit, and all after it):
    /// drop their writes, read their input again from `first_offsets`.
    Aborted { first_offsets: BTreeMap<i32, i64>, took: Duration },
    /// The producer of `slot` cannot go on (fenced, failed fatally, or stuck where the
    /// transaction cannot have committed): its transaction is lost. Start a new producer for the
    /// slot ([`Transactions::replace`]); the transactions after it are aborted, and
    /// [`Settled::Aborted`] follows once they are.
    ProducerLost { slot: usize, reason: String },
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

/// A committer thread, and what it is doing.
struct Committer<O> {
    ops: Sender<Op<O>>,
    results: Receiver<Result<(), TxnError>>,
    in_flight: Option<(OpKind, Instant)>,
    /// The call under way on the committer thread, and since when.
    current: Arc<Mutex<Option<(Call, Instant)>>>,
    /// Set once the commit in flight has flushed: every record of its transaction is
    /// acknowledged.
    flushed: Arc<AtomicBool>,
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
        let flushed = Arc::new(AtomicBool::new(false));
        let slot = Arc::clone(&current);
        let flushed_here = Arc::clone(&flushed);
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                for op in op_rx {
                    let p = &*producer;
                    let result = match op {
                        Op::Commit(offsets) => until_settled(p, &slot, Call::Flush, || p.flush(call_timeout))
                            .map(|()| flushed_here.store(true, Ordering::Release))
                            .and_then(|()| {
                                offsets.as_ref().map_or(Ok(()), |o| {
                                    until_settled(p, &slot, Call::SendOffsets, || p.send_offsets(o, call_timeout))
                                })
                            })
                            .and_then(|()| until_settled(p, &slot, Call::Commit, || p.commit(call_timeout))),
                        // Short attempts, made again while Kafka does not answer (the abort
                        // waits for the delivery reports of the purged records).
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
        Ok(Committer { ops, results, in_flight: None, current, flushed, stuck_after })
    }

    fn submit(&mut self, op: Op<O>) -> Result<(), RuntimeError> {
        let kind = match op {
            Op::Commit(_) => OpKind::Commit,
            Op::Abort => OpKind::Abort,
        };
        self.flushed.store(false, Ordering::Release);
        self.ops.send(op).map_err(|_| RuntimeError::ThreadStopped { name: "committer" })?;
        self.in_flight = Some((kind, Instant::now()));
        Ok(())
    }

    /// Whether a commit is in flight and its transaction's records are all acknowledged.
    fn flushed(&self) -> bool {
        matches!(self.in_flight, Some((OpKind::Commit, _))) && self.flushed.load(Ordering::Acquire)
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
        let started = Instant::now();
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((what, started));
        let result = call();
        tracing::debug!(
            call = what.name(),
            took_us = started.elapsed().as_micros() as u64,
            ok = result.is_ok(),
            "transactional call"
        );
        match result {
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

/// Transactions aborted one after the other (the first that did not commit, then every later
/// one): where their reading began, and since when.
struct Cascade {
    first_offsets: BTreeMap<i32, i64>,
    aborted: usize,
    since: Instant,
}

/// The transactions of one stream thread: at most one open, and the closed ones (oldest first),
/// with one committer per producer.
pub struct Transactions<P: TransactionalProducer> {
    committers: Vec<Committer<P::Offsets>>,
    open: Option<Txn<P::Offsets>>,
    closed: VecDeque<Txn<P::Offsets>>,
    /// The producer the next transaction opens on: they take turns.
    next_slot: usize,
    cascade: Option<Cascade>,
    call_timeout: Duration,
    stuck_after: Duration,
}

impl<P: TransactionalProducer> Transactions<P> {
    /// One producer: a transaction opens only once the previous one settled. Two: the next one
    /// opens on the other producer while the previous one commits. `call_timeout` is given to
    /// each transactional call; a call still running `stuck_after` after it started is stuck (see
    /// the module's documentation).
    pub fn new(producers: Vec<Arc<P>>, call_timeout: Duration, stuck_after: Duration) -> Result<Self, RuntimeError> {
        let committers = producers
            .into_iter()
            .map(|p| Committer::start(p, call_timeout, stuck_after))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Transactions {
            committers,
            open: None,
            closed: VecDeque::new(),
            next_slot: 0,
            cascade: None,
            call_timeout,
            stuck_after,
        })
    }

    /// A new committer for the new producer of `slot` (the old one's thread, if stuck, is left
    /// behind).
    pub fn replace(&mut self, slot: usize, producer: Arc<P>) -> Result<(), RuntimeError> {
        self.committers[slot] = Committer::start(producer, self.call_timeout, self.stuck_after)?;
        Ok(())
    }

    /// Whether commits overlap (two producers).
    pub fn overlapped(&self) -> bool {
        self.committers.len() > 1
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Whether a closed transaction is committing or aborting.
    pub fn is_settling(&self) -> bool {
        !self.closed.is_empty() || self.cascade.is_some()
    }

    /// Whether a transaction may be open and take records now: nothing is closed; or the commits
    /// overlap, the one closed transaction is committing (not aborting: its input is about to be
    /// read again) and its records are all acknowledged, so that the next transaction's come
    /// after them on every partition.
    pub fn accepts_records(&self) -> bool {
        if self.cascade.is_some() {
            return false;
        }
        match self.closed.len() {
            0 => true,
            1 => {
                let txn = &self.closed[0];
                self.overlapped() && txn.phase == Phase::Committing && self.committers[txn.slot].flushed()
            }
            _ => false,
        }
    }

    /// The producer the next transaction opens on; call [`Transactions::opened`] once it has
    /// begun there.
    pub fn next_slot(&self) -> usize {
        self.next_slot
    }

    /// A transaction was begun on the producer of [`Transactions::next_slot`].
    pub fn opened(&mut self) {
        let slot = self.next_slot;
        self.next_slot = (slot + 1) % self.committers.len();
        self.open = Some(Txn { slot, phase: Phase::Open, first_offsets: BTreeMap::new(), offsets: None });
    }

    /// The open transaction read `offset` of `partition`.
    pub fn read(&mut self, partition: i32, offset: i64) {
        if let Some(txn) = &mut self.open {
            txn.first_offsets.entry(partition).or_insert(offset);
        }
    }

    /// Whether the open transaction may close now: the one before it has committed.
    pub fn may_close(&self) -> bool {
        self.open.is_some() && !self.is_settling()
    }

    /// No more writes: the open transaction commits `offsets` (the consumed offsets with the
    /// group metadata, as they stand now), from the next [`Transactions::step`]. Returns whether
    /// it closed ([`Transactions::may_close`]).
    pub fn close(&mut self, offsets: Option<P::Offsets>) -> bool {
        if !self.may_close() {
            return false;
        }
        let Some(mut txn) = self.open.take() else { return false };
        txn.phase = Phase::Committing;
        txn.offsets = offsets;
        self.closed.push_back(txn);
        true
    }

    /// Abort everything not yet committed: the closed transactions (a commit already asked for
    /// is too late to stop: its result decides) and the open one.
    pub fn abort(&mut self) {
        for txn in &mut self.closed {
            txn.phase = Phase::Aborting;
        }
        if let Some(mut txn) = self.open.take() {
            txn.phase = Phase::Aborting;
            self.closed.push_back(txn);
        }
        self.cascade.get_or_insert_with(|| Cascade {
            first_offsets: BTreeMap::new(),
            aborted: 0,
            since: Instant::now(),
        });
    }

    /// A transaction that did not commit: where its reading began counts for the cascade.
    fn aborted(&mut self, txn: Txn<P::Offsets>) {
        let cascade = self.cascade.get_or_insert_with(|| Cascade {
            first_offsets: BTreeMap::new(),
            aborted: 0,
            since: Instant::now(),
        });
        cascade.aborted += 1;
        for (partition, first) in txn.first_offsets {
            let at = cascade.first_offsets.entry(partition).or_insert(first);
            *at = (*at).min(first);
        }
    }

    /// Takes the oldest closed transaction one step further, waiting at most `wait` for its
    /// committer.
    pub fn step(&mut self, wait: Duration) -> Result<Settled<P::Offsets>, RuntimeError> {
        let Some(front) = self.closed.front_mut() else {
            return Ok(match self.cascade.take() {
                Some(c) if c.aborted > 0 => {
                    Settled::Aborted { first_offsets: c.first_offsets, took: c.since.elapsed() }
                }
                _ => Settled::Idle,
            });
        };
        let slot = front.slot;
        let committer = &mut self.committers[slot];
        if committer.in_flight.is_none() {
            let op = match front.phase {
                Phase::Committing => Op::Commit(front.offsets.take()),
                _ => Op::Abort,
            };
            committer.submit(op)?;
        }
        let Some((kind, result, took)) = committer.result(wait)? else {
            return match committer.stuck() {
                Some((Call::Commit, stuck)) => Err(RuntimeError::Wedged { call: Call::Commit.name(), stuck }),
                Some((call, stuck)) => {
                    let reason =
                        format!("{} has not returned for {} s, past its own timeout", call.name(), stuck.as_secs());
                    Ok(self.lose_front(reason))
                }
                None => Ok(Settled::NotYet),
            };
        };
        match (kind, result) {
            // Committed (even if an abort was asked for meanwhile: it was too late for that).
            (OpKind::Commit, Ok(())) => {
                let txn = self.pop();
                Ok(Settled::Committed { txn, took })
            }
            (OpKind::Abort, Ok(())) => {
                let txn = self.pop();
                self.aborted(txn);
                // The transactions after it abort too, then the input is read again.
                self.abort();
                self.step(Duration::ZERO)
            }
            (_, Err(err)) if err.kind == TxnErrorKind::Fatal => Ok(self.lose_front(err.message)),
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

    /// The oldest closed transaction is lost with its producer; everything after it aborts.
    fn lose_front(&mut self, reason: String) -> Settled<P::Offsets> {
        let txn = self.pop();
        let slot = txn.slot;
        self.aborted(txn);
        self.abort();
        Settled::ProducerLost { slot, reason }
    }

    fn pop(&mut self) -> Txn<P::Offsets> {
        self.closed.pop_front().unwrap_or(Txn {
            slot: 0,
            phase: Phase::Aborting,
            first_offsets: BTreeMap::new(),
            offsets: None,
        })
    }
}

#[cfg(test)]
mod tests;
