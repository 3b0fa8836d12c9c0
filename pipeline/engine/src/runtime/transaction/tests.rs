use std::collections::VecDeque;

use super::*;

/// What a scripted call does.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Fail(TxnErrorKind),
    /// Answers after this many milliseconds: a commit still under way while the test looks.
    Late(u64, Option<TxnErrorKind>),
    /// Never returns, as librdkafka's `send_offsets_to_transaction` after its coordinator went.
    Hang,
}

/// A producer that answers each call from a script, and records the calls. A flush not in the
/// script answers at once.
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
        let next = {
            let mut answers = self.answers.lock().expect("answers");
            if call == "flush" && answers.front().is_none_or(|(c, _)| *c != "flush") {
                return Ok(());
            }
            answers.pop_front()
        };
        let fail = |kind: TxnErrorKind| Err(TxnError::new(kind, format!("scripted {kind:?} on {call}")));
        match next {
            Some((expected, answer)) => {
                assert_eq!(expected, call, "the calls came in another order than scripted");
                match answer {
                    Answer::Ok => Ok(()),
                    Answer::Fail(kind) => fail(kind),
                    Answer::Late(ms, outcome) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        outcome.map_or(Ok(()), fail)
                    }
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

    fn flush(&self, _: Duration) -> Result<(), TxnError> {
        self.answer("flush")
    }
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
    overlapped(&[producer])
}

fn overlapped(producers: &[&Arc<Scripted>]) -> Transactions<Scripted> {
    let producers = producers.iter().map(|p| Arc::clone(p)).collect();
    Transactions::new(producers, Duration::from_secs(1), Duration::from_millis(200)).expect("committer thread")
}

/// Steps until a transaction settles one way or another (or fails).
fn settle(t: &mut Transactions<Scripted>) -> Result<Settled<Vec<(i32, i64)>>, RuntimeError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match t.step(Duration::from_millis(10))? {
            Settled::NotYet => assert!(Instant::now() < deadline, "the transaction never settled"),
            settled => return Ok(settled),
        }
    }
}

fn close(t: &mut Transactions<Scripted>) {
    assert!(t.close(Some(vec![(0, 42)])), "the transaction closes");
}

fn open_with_reads(t: &mut Transactions<Scripted>) {
    t.opened();
    t.read(0, 10);
    t.read(0, 11);
    t.read(3, 7);
}

#[test]
fn a_commit_flushes_sends_the_offsets_then_commits() {
    let producer = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Ok)]);
    let mut t = transactions(&producer);
    open_with_reads(&mut t);
    assert!(matches!(t.step(Duration::ZERO).expect("step"), Settled::Idle), "open: nothing to do");
    close(&mut t);
    assert!(t.is_settling());
    assert!(!t.accepts_records(), "one producer takes no record while it commits");
    let Settled::Committed { txn, .. } = settle(&mut t).expect("settles") else { panic!("committed") };
    assert_eq!(txn.first_offsets, BTreeMap::from([(0, 10), (3, 7)]), "where each partition's reading began");
    assert_eq!(producer.calls(), ["flush", "send_offsets", "commit"]);
    assert!(!t.is_open());
    assert!(matches!(t.step(Duration::ZERO).expect("step"), Settled::Idle));
}

#[test]
fn a_call_that_times_out_is_made_again_until_kafka_answers() {
    let producer = Scripted::new(&[
        ("flush", Answer::Fail(TxnErrorKind::Retriable)),
        ("flush", Answer::Ok),
        ("send_offsets", Answer::Fail(TxnErrorKind::Retriable)),
        ("send_offsets", Answer::Ok),
        ("commit", Answer::Fail(TxnErrorKind::Retriable)),
        ("commit", Answer::Ok),
    ]);
    let mut t = transactions(&producer);
    t.opened();
    close(&mut t);
    assert!(matches!(settle(&mut t).expect("settles"), Settled::Committed { .. }));
    assert_eq!(producer.calls(), ["flush", "flush", "send_offsets", "send_offsets", "commit", "commit"]);
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
    close(&mut t);
    let Settled::Aborted { first_offsets, .. } = settle(&mut t).expect("settles") else { panic!("aborted") };
    assert_eq!(first_offsets.get(&0), Some(&10), "the input to read again");
    assert_eq!(producer.calls(), ["flush", "send_offsets", "commit", "abort"]);
}

#[test]
fn a_zombie_s_offsets_refused_by_the_group_abort_its_transaction() {
    // The group coordinator refuses offsets from an old generation: librdkafka makes the
    // transaction abortable, and nothing of it commits.
    let producer = Scripted::new(&[("send_offsets", Answer::Fail(TxnErrorKind::Abortable)), ("abort", Answer::Ok)]);
    let mut t = transactions(&producer);
    t.opened();
    close(&mut t);
    assert!(matches!(settle(&mut t).expect("settles"), Settled::Aborted { .. }));
    assert_eq!(producer.calls(), ["flush", "send_offsets", "abort"], "no commit was asked for");
}

#[test]
fn a_fenced_producer_loses_its_transaction() {
    let producer = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Fail(TxnErrorKind::Fatal))]);
    let mut t = transactions(&producer);
    open_with_reads(&mut t);
    close(&mut t);
    let Settled::ProducerLost { slot, reason } = settle(&mut t).expect("settles") else { panic!("lost") };
    assert_eq!(slot, 0);
    assert!(reason.contains("Fatal"), "{reason}");
    // A new producer takes over with a new committer; the lost transaction's input is read
    // again.
    let fresh = Scripted::new(&[("commit", Answer::Ok)]);
    t.replace(0, Arc::clone(&fresh)).expect("replace");
    let Settled::Aborted { first_offsets, .. } = settle(&mut t).expect("settles") else { panic!("aborted") };
    assert_eq!(first_offsets.get(&3), Some(&7));
    t.opened();
    assert!(t.close(None));
    assert!(matches!(settle(&mut t).expect("settles"), Settled::Committed { .. }));
    assert_eq!(fresh.calls(), ["flush", "commit"]);
}

#[test]
fn a_send_offsets_stuck_past_its_timeout_loses_the_transaction_and_the_producer() {
    let producer = Scripted::new(&[("send_offsets", Answer::Hang)]);
    let mut t = transactions(&producer);
    t.opened();
    close(&mut t);
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
    close(&mut t);
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
    assert!(t.close(None));
    assert!(matches!(settle(&mut t).expect("settles"), Settled::Committed { .. }));
    assert_eq!(producer.calls(), ["flush", "commit"]);
}

/// Waits until the closed transaction's records are all acknowledged: the next may open.
fn until_flushed(t: &mut Transactions<Scripted>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.accepts_records() {
        assert!(matches!(t.step(Duration::from_millis(5)).expect("step"), Settled::NotYet), "still committing");
        assert!(Instant::now() < deadline, "never flushed");
    }
}

#[test]
fn the_next_transaction_opens_on_the_other_producer_while_the_previous_one_commits() {
    let a = Scripted::new(&[
        ("flush", Answer::Late(60, None)),
        ("send_offsets", Answer::Ok),
        ("commit", Answer::Late(120, None)),
    ]);
    let b = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Ok)]);
    let mut t = overlapped(&[&a, &b]);
    assert_eq!(t.next_slot(), 0);
    open_with_reads(&mut t);
    close(&mut t);
    assert!(matches!(t.step(Duration::ZERO).expect("step"), Settled::NotYet));
    assert!(!t.accepts_records(), "N+1 waits until N's records are all acknowledged");
    until_flushed(&mut t);
    assert!(t.accepts_records(), "then records go on while N commits");
    assert_eq!(t.next_slot(), 1, "on the other producer");
    t.opened();
    t.read(0, 12);
    assert!(!t.close(Some(vec![(0, 13)])), "N+1 closes only after N committed");
    let Settled::Committed { txn, .. } = settle(&mut t).expect("settles") else { panic!("N committed") };
    assert_eq!((txn.slot, txn.first_offsets.get(&0)), (0, Some(&10)));
    assert!(t.close(Some(vec![(0, 13)])));
    let Settled::Committed { txn, .. } = settle(&mut t).expect("settles") else { panic!("N+1 committed") };
    assert_eq!((txn.slot, txn.first_offsets.get(&0)), (1, Some(&12)));
    assert_eq!(a.calls(), ["flush", "send_offsets", "commit"]);
    assert_eq!(b.calls(), ["flush", "send_offsets", "commit"]);
    assert_eq!(t.next_slot(), 0, "they take turns");
}

#[test]
fn a_transaction_that_does_not_commit_aborts_the_one_opened_after_it() {
    let a = Scripted::new(&[
        ("send_offsets", Answer::Ok),
        ("commit", Answer::Late(120, Some(TxnErrorKind::Abortable))),
        ("abort", Answer::Ok),
    ]);
    let b = Scripted::new(&[("abort", Answer::Ok)]);
    let mut t = overlapped(&[&a, &b]);
    open_with_reads(&mut t);
    close(&mut t);
    until_flushed(&mut t);
    t.opened();
    t.read(0, 12);
    t.read(5, 3);
    let Settled::Aborted { first_offsets, .. } = settle(&mut t).expect("settles") else { panic!("aborted") };
    assert_eq!(
        first_offsets,
        BTreeMap::from([(0, 10), (3, 7), (5, 3)]),
        "both transactions' input is read again, from N's first record"
    );
    assert_eq!(a.calls(), ["flush", "send_offsets", "commit", "abort"]);
    assert_eq!(b.calls(), ["abort"], "N+1 never commits");
    assert!(!t.is_open() && !t.is_settling());
}

#[test]
fn a_lost_producer_aborts_the_transaction_opened_after_it() {
    let a = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Late(120, Some(TxnErrorKind::Fatal)))]);
    let b = Scripted::new(&[("abort", Answer::Ok)]);
    let mut t = overlapped(&[&a, &b]);
    open_with_reads(&mut t);
    close(&mut t);
    until_flushed(&mut t);
    t.opened();
    t.read(1, 4);
    let Settled::ProducerLost { slot, .. } = settle(&mut t).expect("settles") else { panic!("lost") };
    assert_eq!(slot, 0);
    assert!(!t.accepts_records(), "no record until N+1 has aborted too");
    t.replace(0, Scripted::new(&[])).expect("replace");
    let Settled::Aborted { first_offsets, .. } = settle(&mut t).expect("settles") else { panic!("aborted") };
    assert_eq!(first_offsets, BTreeMap::from([(0, 10), (1, 4), (3, 7)]));
    assert_eq!(b.calls(), ["abort"]);
}

#[test]
fn an_abort_asked_for_during_a_commit_lets_it_commit_and_aborts_what_follows() {
    // The assignment is lost while N commits and N+1 is open: N's commit decides for N, N+1
    // aborts.
    let a = Scripted::new(&[("send_offsets", Answer::Ok), ("commit", Answer::Late(120, None))]);
    let b = Scripted::new(&[("abort", Answer::Ok)]);
    let mut t = overlapped(&[&a, &b]);
    open_with_reads(&mut t);
    close(&mut t);
    until_flushed(&mut t);
    t.opened();
    t.read(0, 12);
    t.abort();
    assert!(matches!(settle(&mut t).expect("settles"), Settled::Committed { .. }));
    let Settled::Aborted { first_offsets, .. } = settle(&mut t).expect("settles") else { panic!("aborted") };
    assert_eq!(first_offsets, BTreeMap::from([(0, 12)]), "only N+1's input is read again");
}
