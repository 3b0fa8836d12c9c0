use super::*;
use state::{Catalogue, Command, Decision, OrderLine, Outcome, PlaceOrder};

fn rules() -> Rules {
    Rules {
        catalogue: Catalogue::default(),
        prepare_after: std::time::Duration::from_secs(60),
        ship_after: std::time::Duration::from_secs(60),
    }
}

fn place(command_id: &str, quantity: u32) -> CommandEnvelope {
    let order = PlaceOrder {
        wagon_id: "WL-1".into(),
        requested_by: "agent".into(),
        lines: vec![OrderLine { sku: state::catalogue::DEFAULT_SKUS[0].into(), quantity }],
    };
    CommandEnvelope::new(command_id, "ORD-1", 1, Command::PlaceOrder(order))
}

#[test]
fn a_decision_superseded_by_another_owner_is_decided_again_on_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = Task::open(0, dir.path(), &StoreOptions::default()).expect("open");
    let rules = rules();
    // Over HTTP, this instance placed the order (c1) while Kafka was away.
    assert!(matches!(task.process_direct(&place("c1", 2), &rules, 10).expect("direct"), Direct::Applied(_)));
    assert_eq!(task.outbox_len(), 1);
    // Meanwhile another owner placed it with other content (d1): that is the changelog's history.
    let Decision::Update { state: other, .. } = decide(None, &place("d1", 5), &rules, 20) else {
        panic!("d1 places the order")
    };
    task.store().restore(&[(b"ORD-1".to_vec(), Some(encode_state(&other).expect("encode")))], 7).expect("restore");
    task.reload().expect("reload");
    assert_eq!(task.query("ORD-1").expect("query"), Some(other));
    // The next transaction publishes no update of c1's own: it decides c1 again, on d1's
    // state, where it is a conflicting PlaceOrder, refused at version 2.
    let out = task.drain_outbox(&rules, 30).expect("drain");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].update.version, 2);
    assert_eq!(out[0].update.command_id.as_deref(), Some("c1"));
    assert_eq!(out[0].update.outcome, Outcome::Refused);
    task.seal();
    task.flush(Some(8)).expect("flush");
    assert_eq!(task.outbox_len(), 0);
    assert!(task.store().outbox().expect("outbox").is_empty());
}

fn cancel(command_id: &str) -> CommandEnvelope {
    CommandEnvelope::new(command_id, "ORD-1", 1, Command::CancelOrder { reason: "wagon withdrawn".into() })
}

fn open(dir: &Path) -> Task {
    Task::open(0, dir, &StoreOptions::default()).expect("open")
}

/// Versions of ORD-1 in the order a transaction emits them.
fn versions(outputs: &[Output]) -> Vec<u64> {
    outputs.iter().filter(|o| o.update.order_id == "ORD-1").map(|o| o.update.version).collect()
}

#[test]
fn a_superseded_entry_that_decides_to_nothing_leaves_the_outbox_at_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules();
    {
        let mut task = open(dir.path());
        // Over HTTP, this instance placed the order (c1).
        assert!(matches!(task.process_direct(&place("c1", 2), &rules, 10).expect("direct"), Direct::Applied(_)));
        // Another owner placed the same order, same content, under another id (d1): a client
        // retry that went the other way. That is the changelog's history.
        let Decision::Update { state: other, .. } = decide(None, &place("d1", 2), &rules, 20) else {
            panic!("d1 places the order")
        };
        task.store().restore(&[(b"ORD-1".to_vec(), Some(encode_state(&other).expect("encode")))], 7).expect("restore");
        task.reload().expect("reload");
        // Decided again on d1's state, c1 is a retry of the same order: nothing to publish.
        let out = task.drain_outbox(&rules, 30).expect("drain");
        assert!(out.is_empty(), "c1 decides to nothing on d1's state");
        // The transaction commits with no changelog record of this partition acknowledged.
        task.seal();
        let mut tasks = BTreeMap::from([(0, task)]);
        let published = flush_committed(tasks.iter_mut().map(|(p, t)| (*p, t)), &HashMap::new())
            .expect("the commit is written to the store");
        assert_eq!(published, 1, "the entry left the outbox");
        assert_eq!(tasks[&0].store().changelog_position().expect("position"), Some(7), "the position did not move");
    }
    // And it stays gone after a restart (no crash loop).
    let task = open(dir.path());
    assert_eq!(task.outbox_len(), 0);
}

#[test]
fn an_http_decision_goes_out_before_a_later_decision_of_its_order_in_the_same_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = open(dir.path());
    let rules = rules();
    // A transaction is open: a record of another order was processed.
    let other = CommandEnvelope::new("k0", "ORD-2", 1, place("k0", 1).command);
    let mut emitted: Vec<Output> = Vec::new();
    emitted.extend(task.process(&other, &rules, 5).expect("process"));
    // Over HTTP, ORD-1 is placed: version 1, in the outbox.
    assert!(matches!(task.process_direct(&place("c1", 2), &rules, 10).expect("direct"), Direct::Applied(_)));
    // A record of ORD-1 read in the same transaction: its cancellation, version 2.
    emitted.extend(task.process(&cancel("c2"), &rules, 20).expect("process"));
    // The next transaction starts with what is left in the outbox.
    emitted.extend(task.drain_outbox(&rules, 30).expect("drain"));
    assert_eq!(versions(&emitted), vec![1, 2], "ORD-1's updates in the order they reach order-updates");
}

#[test]
fn an_http_decision_goes_out_before_a_timer_of_its_order_in_the_same_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = open(dir.path());
    let rules = rules();
    let mut emitted: Vec<Output> = Vec::new();
    emitted.extend(
        task.process(&CommandEnvelope::new("k0", "ORD-2", 1, place("k0", 1).command), &rules, 5).expect("process"),
    );
    // Over HTTP, ORD-1 is placed at t=10: its preparation timer is due at 60,010.
    assert!(matches!(task.process_direct(&place("c1", 2), &rules, 10).expect("direct"), Direct::Applied(_)));
    // The punctuation of the same transaction, once the timer is due: version 2.
    emitted.extend(task.punctuate(&rules, 70_000).expect("punctuate"));
    emitted.extend(task.drain_outbox(&rules, 70_001).expect("drain"));
    assert_eq!(versions(&emitted), vec![1, 2], "ORD-1's updates in the order they reach order-updates");
}

#[test]
fn the_next_transaction_decides_on_top_of_the_one_committing_and_the_store_gets_each_at_its_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = open(dir.path());
    let rules = rules();
    // Transaction N places ORD-1, then closes: its writes are sealed while it commits.
    let placed: Vec<Output> = task.process(&place("c1", 2), &rules, 10).expect("process").into_iter().collect();
    assert_eq!(versions(&placed), [1]);
    task.seal();
    // Transaction N+1, open meanwhile, cancels it: decided on N's state, not on RocksDB's.
    let cancelled: Vec<Output> = task.process(&cancel("c2"), &rules, 20).expect("process").into_iter().collect();
    assert_eq!(versions(&cancelled), [2]);
    assert!(
        matches!(task.process_direct(&cancel("c3"), &rules, 25).expect("direct"), Direct::Busy),
        "an order with writes in a transaction not yet committed is busy for the HTTP path"
    );
    assert_eq!(task.query("ORD-1").expect("query"), None, "RocksDB holds nothing Kafka has not committed");
    // N commits: its state, and only its, reaches RocksDB.
    task.flush(Some(1)).expect("flush N");
    assert_eq!(task.query("ORD-1").expect("query").map(|s| s.version), Some(1));
    // N+1 closes and commits.
    task.seal();
    task.flush(Some(2)).expect("flush N+1");
    assert_eq!(task.query("ORD-1").expect("query").map(|s| s.version), Some(2));
    assert_eq!(task.store().changelog_position().expect("position"), Some(2));
}

#[test]
fn an_abort_drops_the_committing_transaction_s_writes_and_the_open_one_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = open(dir.path());
    let rules = rules();
    let _ = task.process(&place("c1", 2), &rules, 10).expect("process");
    task.seal();
    let _ = task.process(&cancel("c2"), &rules, 20).expect("process");
    task.discard().expect("discard");
    assert!(!task.needs_flush());
    assert_eq!(task.query("ORD-1").expect("query"), None);
    // Read again, the commands decide from scratch: version 1, then 2.
    let again: Vec<Output> = task.process(&place("c1", 2), &rules, 30).expect("process").into_iter().collect();
    assert_eq!(versions(&again), [1]);
    assert_eq!(task.pending_timers(), 1, "the timer queue follows what is left: the new placement's");
}

#[test]
fn a_burst_of_due_timers_fires_every_one_in_due_order_across_prefetch_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut task = open(dir.path());
    let rules = rules();
    let orders = 2 * PUNCTUATE_CHUNK + PUNCTUATE_CHUNK / 2;
    // Placed one millisecond apart, committed: their states are read from the store.
    let ids: Vec<String> = (0..orders).map(|i| format!("ORD-{i:05}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let command = CommandEnvelope::new(format!("c{i}"), id.as_str(), 1, place("c", 1).command);
        let _ = task.process(&command, &rules, 10 + i as u64).expect("process");
    }
    task.seal();
    task.flush(Some(orders as i64)).expect("flush");
    let fired = task.punctuate(&rules, 70_000 + orders as u64).expect("fire");
    let fired_ids: Vec<&str> = fired.iter().map(|o| o.update.order_id.as_str()).collect();
    assert_eq!(fired_ids, ids.iter().map(String::as_str).collect::<Vec<_>>(), "every order once, in due order");
    assert!(fired.iter().all(|o| o.update.version == 2));
    assert!(task.prefetched.capacity() < 2 * PUNCTUATE_CHUNK, "the prefetched map stays a chunk's size");
}
