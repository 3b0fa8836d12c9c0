//! A task: the processing of one `orders` partition, with its state store.
//!
//! A task reads and writes order states for the open transaction in memory (its write-back
//! cache), on top of the committed state in its RocksDB [`OrderStore`]. When the transaction
//! commits, [`Task::flush`] writes the cache to RocksDB in one batch with the changelog position;
//! when it aborts, [`Task::discard`] drops it. RocksDB never holds state Kafka did not commit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use state::store::encode_state;
use state::{
    decide, decide_in_place, fire_timer_in_place, CommandEnvelope, Decision, OrderState, OrderStore, OrderUpdate,
    OutboxEntry, Rules, StoreBatch, StoreError, StoreOptions, Timer, TimerQueue,
};

/// What the task decided for one command or timer: the update to emit and the new state to
/// write to the changelog.
pub struct Output {
    pub update: OrderUpdate,
    /// The state's changelog record value ([`state::encoding`]), encoded once for Kafka and
    /// RocksDB.
    pub state: Bytes,
}

struct Pending {
    state: OrderState,
    encoded: Bytes,
    /// The timer of the committed state this one replaces, for the store's timer index.
    committed_timer: Option<Timer>,
}

pub struct Task {
    pub partition: i32,
    store: OrderStore,
    pending: HashMap<String, Pending>,
    timers: TimerQueue,
    /// The next `orders` offset to commit for this partition: the committed group offset at
    /// assignment, then one past each record processed.
    pub next_input_offset: Option<i64>,
    /// Decisions taken over HTTP and not yet published, by sequence number (mirrors the store).
    outbox: BTreeMap<u64, OutboxEntry>,
    /// Outbox entries produced in the open transaction, deleted from the store when it commits.
    outbox_in_txn: Vec<u64>,
    /// Changelog records this task produced in the open transaction.
    changelog_records: usize,
    /// Committed states of the orders of the batch being processed, read at once by
    /// [`Task::prefetch`]; each is taken by the first command of its order, and what is left is
    /// dropped at the end of the batch ([`Task::end_batch`]).
    prefetched: HashMap<String, Option<OrderState>>,
}

/// What a command read from `orders` produced, in the order it goes out.
pub struct Processed {
    /// Decisions taken over HTTP since the transaction began, to publish first.
    pub outbox: Vec<Output>,
    /// The command's own decision; `None` if it changed nothing.
    pub decided: Option<Output>,
}

impl IntoIterator for Processed {
    type Item = Output;
    type IntoIter = std::iter::Chain<std::vec::IntoIter<Output>, std::option::IntoIter<Output>>;

    fn into_iter(self) -> Self::IntoIter {
        self.outbox.into_iter().chain(self.decided)
    }
}

/// What an HTTP command did to a task.
pub enum Direct {
    /// Nothing changed (a command id seen before, a repeated order).
    Nothing,
    /// The update, already durable in the store and queued in the outbox.
    Applied(OrderUpdate),
    /// The order has writes in the open transaction: its state is not settled yet.
    Busy,
}

impl Task {
    /// Opens the task's store. Call [`crate::runtime::restore`] before processing anything.
    pub fn open(partition: i32, dir: &Path, options: &StoreOptions) -> Result<Task, StoreError> {
        let store = OrderStore::open(dir, options)?;
        let timers = TimerQueue::from_entries(store.timers()?);
        let outbox = store.outbox()?.into_iter().collect();
        Ok(Task {
            partition,
            store,
            pending: HashMap::new(),
            timers,
            next_input_offset: None,
            outbox,
            outbox_in_txn: Vec::new(),
            changelog_records: 0,
            prefetched: HashMap::new(),
        })
    }

    pub fn store(&self) -> &OrderStore {
        &self.store
    }

    /// Reads the committed states of the orders of a batch of records at once (`keys`: the
    /// records' keys, the order ids), so that processing them does not look each one up alone.
    /// Orders with writes in the open transaction are skipped: the write-back cache has them.
    pub fn prefetch<'k>(&mut self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<(), StoreError> {
        let mut ids: Vec<&str> = keys
            .into_iter()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter(|id| !self.pending.contains_key(*id) && !self.prefetched.contains_key(*id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        let states = self.store.get_many(&ids)?;
        self.prefetched.extend(ids.into_iter().map(str::to_string).zip(states));
        Ok(())
    }

    /// Drops what [`Task::prefetch`] read and no record took: the committed state may change
    /// between batches (a decision over HTTP, a restore, a commit).
    pub fn end_batch(&mut self) {
        self.prefetched.clear();
    }

    /// Reloads the timer queue and the outbox from the store (after a restore changed them
    /// underneath).
    pub fn reload(&mut self) -> Result<(), StoreError> {
        self.prefetched.clear();
        self.timers = TimerQueue::from_entries(self.store.timers()?);
        self.outbox = self.store.outbox()?.into_iter().collect();
        Ok(())
    }

    /// Decisions taken over HTTP that still wait to be published.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Runs a command that came over HTTP, outside any Kafka transaction: the decision is written
    /// to the store and the outbox at once, durably, and published by the next transaction.
    /// Decided on committed state only, so an order with writes in the open transaction is busy.
    pub fn process_direct(
        &mut self,
        envelope: &CommandEnvelope,
        rules: &Rules,
        now_ms: u64,
    ) -> Result<Direct, StoreError> {
        if self.pending.contains_key(&envelope.order_id) {
            return Ok(Direct::Busy);
        }
        self.prefetched.remove(&envelope.order_id);
        let current = self.store.get(&envelope.order_id)?;
        let old_timer = current.as_ref().and_then(|s| s.timer);
        let Decision::Update { state, update } = decide(current.as_ref(), envelope, rules, now_ms) else {
            return Ok(Direct::Nothing);
        };
        let seq = self.outbox.keys().next_back().map_or(1, |last| last + 1);
        let entry = OutboxEntry { update: update.clone(), state, command: Some(envelope.clone()), superseded: false };
        let mut batch = StoreBatch::new();
        // The only copy of this decision until Kafka has it: through the log, synced.
        batch.make_durable();
        self.store.put(&mut batch, &entry.state, &encode_state(&entry.state)?, old_timer)?;
        self.store.put_outbox(&mut batch, seq, &entry)?;
        self.store.write(batch)?;
        self.timers.replace(&entry.state.order_id, old_timer, entry.state.timer);
        self.outbox.insert(seq, entry);
        Ok(Direct::Applied(update))
    }

    /// The outbox entries not yet in a transaction, in order, marked as now in the open one.
    /// A superseded entry (the changelog holds another history of its order, written by another
    /// owner) publishes nothing of its own: its command is decided again, on that history.
    pub fn drain_outbox(&mut self, rules: &Rules, now_ms: u64) -> Result<Vec<Output>, StoreError> {
        let mut out = Vec::new();
        if self.outbox.len() == self.outbox_in_txn.len() {
            return Ok(out);
        }
        let waiting: Vec<u64> = self.outbox.keys().filter(|seq| !self.outbox_in_txn.contains(seq)).copied().collect();
        for seq in waiting {
            self.outbox_in_txn.push(seq);
            let Some(entry) = self.outbox.get(&seq) else { continue };
            if !entry.superseded {
                out.push(Output { update: entry.update.clone(), state: Bytes::from(encode_state(&entry.state)?) });
                self.changelog_records += 1;
                continue;
            }
            match entry.command.clone() {
                Some(command) => {
                    tracing::warn!(partition = self.partition, order_id = %command.order_id, command_id = %command.command_id, "a decision taken over HTTP was superseded by another owner's; deciding its command again");
                    out.extend(self.decide(&command, rules, now_ms)?);
                }
                None => {
                    tracing::error!(partition = self.partition, order_id = %entry.update.order_id, "a superseded outbox entry has no command to decide again; dropped")
                }
            }
        }
        Ok(out)
    }

    /// Whether the open transaction carries anything of this task's to write after the commit.
    pub fn needs_flush(&self) -> bool {
        !self.pending.is_empty() || !self.outbox_in_txn.is_empty()
    }

    /// Changelog records this task produced in the open transaction. None means the transaction
    /// acknowledges no changelog offset for it, and its store's position stays where it is.
    pub fn changelog_records_in_txn(&self) -> usize {
        self.changelog_records
    }

    /// The committed (or outbox-applied) state of an order: what an interactive query sees.
    pub fn query(&self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        self.store.get(order_id)
    }

    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Records a decision in the open transaction: the new state goes to the write-back cache
    /// (encoded once, for the changelog and for RocksDB), its timer to the queue.
    fn take(
        &mut self,
        state: OrderState,
        update: OrderUpdate,
        previous_timer: Option<Timer>,
        committed_timer: Option<Timer>,
    ) -> Result<Output, StoreError> {
        let encoded = Bytes::from(encode_state(&state)?);
        self.changelog_records += 1;
        self.timers.replace(&state.order_id, previous_timer, state.timer);
        let output = Output { update, state: encoded.clone() };
        match self.pending.get_mut(&state.order_id) {
            Some(pending) => {
                pending.state = state;
                pending.encoded = encoded;
            }
            None => {
                self.pending.insert(state.order_id.clone(), Pending { state, encoded, committed_timer });
            }
        }
        Ok(output)
    }

    /// The order's state as the open transaction sees it (a copy only when the write-back cache
    /// holds it; a committed state is decoded fresh), and the timer of its committed state.
    fn current(&self, order_id: &str) -> Result<(Option<OrderState>, Option<Timer>), StoreError> {
        match self.pending.get(order_id) {
            Some(p) => Ok((Some(p.state.clone()), p.committed_timer)),
            None => {
                let committed = self.store.get(order_id)?;
                let timer = committed.as_ref().and_then(|s| s.timer);
                Ok((committed, timer))
            }
        }
    }

    /// Runs a command through the state machine, in the open transaction. Decisions taken over
    /// HTTP since the transaction began go out first: an order's updates reach `order-updates`
    /// and the changelog in version order, whatever path each came by.
    pub fn process(&mut self, envelope: &CommandEnvelope, rules: &Rules, now_ms: u64) -> Result<Processed, StoreError> {
        let outbox = self.drain_outbox(rules, now_ms)?;
        let decided = self.decide(envelope, rules, now_ms)?;
        Ok(Processed { outbox, decided })
    }

    fn decide(&mut self, envelope: &CommandEnvelope, rules: &Rules, now_ms: u64) -> Result<Option<Output>, StoreError> {
        // In the write-back cache: decided in place there (the machine leaves a state it does
        // not change as it was).
        if let Some(pending) = self.pending.get_mut(&envelope.order_id) {
            let previous_timer = pending.state.timer;
            let mut state = std::mem::replace(&mut pending.state, OrderState::new(String::new()));
            let update = decide_in_place(&mut state, envelope, rules, now_ms);
            let committed_timer = pending.committed_timer;
            return match update {
                Some(update) => self.take(state, update, previous_timer, committed_timer).map(Some),
                None => {
                    pending.state = state;
                    Ok(None)
                }
            };
        }
        let committed = match self.prefetched.remove(&envelope.order_id) {
            Some(prefetched) => prefetched,
            None => self.store.get(&envelope.order_id)?,
        };
        let committed_timer = committed.as_ref().and_then(|s| s.timer);
        let mut state = committed.unwrap_or_else(|| OrderState::new(envelope.order_id.clone()));
        match decide_in_place(&mut state, envelope, rules, now_ms) {
            Some(update) => self.take(state, update, committed_timer, committed_timer).map(Some),
            None => Ok(None),
        }
    }

    /// Fires the timers due at `now_ms` (the task's punctuation), after the decisions taken over
    /// HTTP since the transaction began (see [`Task::process`]).
    pub fn punctuate(&mut self, rules: &Rules, now_ms: u64) -> Result<Vec<Output>, StoreError> {
        let mut out = Vec::new();
        let due = self.timers.pop_due(now_ms);
        if due.is_empty() {
            return Ok(out);
        }
        out.extend(self.drain_outbox(rules, now_ms)?);
        for order_id in due {
            let (Some(mut state), committed_timer) = self.current(&order_id)? else { continue };
            let previous_timer = state.timer;
            if let Some(update) = fire_timer_in_place(&mut state, rules, now_ms) {
                out.push(self.take(state, update, previous_timer, committed_timer)?);
            }
        }
        Ok(out)
    }

    /// After Kafka committed the transaction: writes its states to RocksDB with the changelog
    /// position they reach (`None`: the transaction wrote nothing to this task's changelog
    /// partition, the position stays), in one batch.
    pub fn flush(&mut self, next_changelog_offset: Option<i64>) -> Result<usize, StoreError> {
        let mut batch = StoreBatch::new();
        for pending in self.pending.values() {
            self.store.put(&mut batch, &pending.state, &pending.encoded, pending.committed_timer)?;
        }
        for seq in &self.outbox_in_txn {
            self.store.delete_outbox(&mut batch, *seq)?;
        }
        if let Some(next) = next_changelog_offset {
            batch.set_position(next);
        }
        let written = batch.len();
        self.store.write(batch)?;
        self.pending.clear();
        self.prefetched.clear();
        self.changelog_records = 0;
        for seq in self.outbox_in_txn.drain(..) {
            self.outbox.remove(&seq);
        }
        Ok(written)
    }

    /// After the transaction aborted: forgets its writes (outbox entries stay, to go out with
    /// the next transaction).
    pub fn discard(&mut self) -> Result<(), StoreError> {
        self.pending.clear();
        self.outbox_in_txn.clear();
        self.changelog_records = 0;
        self.reload()
    }
}

/// After Kafka committed a transaction: writes each task's cache to RocksDB with the changelog
/// position its records reached (`acknowledged`: the last acknowledged changelog offset per
/// partition). Returns how many outbox entries left the outboxes.
pub fn flush_committed<'a>(
    tasks: impl Iterator<Item = (i32, &'a mut Task)>,
    acknowledged: &HashMap<i32, i64>,
) -> Result<usize, super::RuntimeError> {
    let mut published = 0;
    for (partition, task) in tasks {
        if !task.needs_flush() {
            continue;
        }
        // A transaction may carry a task's outbox entries without any changelog record of it:
        // an entry superseded by another owner's history whose command, decided again there,
        // changes nothing. Then no offset was acknowledged, and the position stays.
        let next = match (acknowledged.get(&partition), task.changelog_records_in_txn()) {
            (Some(last), _) => Some(last + 1),
            (None, 0) => None,
            (None, _) => return Err(super::RuntimeError::MissingChangelogOffset { partition }),
        };
        let before = task.outbox_len();
        task.flush(next)?;
        published += before - task.outbox_len();
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
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
            task.store()
                .restore(&[(b"ORD-1".to_vec(), Some(encode_state(&other).expect("encode")))], 7)
                .expect("restore");
            task.reload().expect("reload");
            // Decided again on d1's state, c1 is a retry of the same order: nothing to publish.
            let out = task.drain_outbox(&rules, 30).expect("drain");
            assert!(out.is_empty(), "c1 decides to nothing on d1's state");
            // The transaction commits with no changelog record of this partition acknowledged.
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
}
