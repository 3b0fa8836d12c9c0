//! A task: the processing of one `orders` partition, with its state store.
//!
//! A task reads and writes order states for the open transaction in memory (its write-back
//! cache), on top of the committed state in its RocksDB [`OrderStore`]. The cache has two layers:
//! when a transaction closes, its layer is sealed ([`Task::seal`]) and the next transaction writes
//! a new one on top of it while it commits (overlapped commits). When the sealed transaction
//! commits, [`Task::flush`] writes its layer to RocksDB in one batch with the changelog position;
//! when it aborts, [`Task::discard`] drops both layers (the open transaction aborts with it).
//! RocksDB never holds state Kafka did not commit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use state::store::encode_state;
use state::{
    decide, decide_in_place, fire_timer_in_place, CommandEnvelope, Decision, FastHashMap, OrderState, OrderStore,
    OrderUpdate, OutboxEntry, Rules, StoreBatch, StoreError, StoreOptions, Timer, TimerQueue,
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
}

/// The writes of one transaction, not yet in RocksDB.
#[derive(Default)]
struct Layer {
    /// The orders it changed, in their latest state.
    pending: FastHashMap<String, Pending>,
    /// Outbox entries it produced, deleted from the store when it commits.
    outbox: Vec<u64>,
    /// Changelog records it produced.
    changelog_records: usize,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.outbox.is_empty()
    }
}

pub struct Task {
    pub partition: i32,
    store: OrderStore,
    /// The open transaction's writes.
    open: Layer,
    /// The closed transaction's writes, while it commits.
    sealed: Layer,
    timers: TimerQueue,
    /// The next `orders` offset to commit for this partition: the committed group offset at
    /// assignment, then one past each record processed.
    pub next_input_offset: Option<i64>,
    /// Decisions taken over HTTP and not yet published, by sequence number (mirrors the store).
    outbox: BTreeMap<u64, OutboxEntry>,
    /// Committed states of the orders of the batch being processed, read at once by
    /// [`Task::prefetch`]; each is taken by the first command of its order, and what is left is
    /// dropped at the end of the batch ([`Task::end_batch`]).
    prefetched: FastHashMap<String, Option<OrderState>>,
    /// The map of the last layer written, emptied, for the next transaction to write into: a
    /// new map grew to a transaction's size again each time, on freshly faulted pages.
    spare: FastHashMap<String, Pending>,
}

/// Due timers whose states one multi-get reads (a batch of records is at most a poll's worth).
const PUNCTUATE_CHUNK: usize = 1_000;

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
            open: Layer::default(),
            sealed: Layer::default(),
            timers,
            next_input_offset: None,
            outbox,
            prefetched: FastHashMap::default(),
            spare: FastHashMap::default(),
        })
    }

    pub fn store(&self) -> &OrderStore {
        &self.store
    }

    /// Reads the committed states of the orders of a batch of records at once (`keys`: the
    /// records' keys, the order ids), so that processing them does not look each one up alone.
    /// Orders with writes in a transaction not yet committed are skipped: the write-back cache
    /// has them.
    pub fn prefetch<'k>(&mut self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<(), StoreError> {
        let mut ids: Vec<&str> = keys
            .into_iter()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter(|id| !self.in_cache(id) && !self.prefetched.contains_key(*id))
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

    /// Whether a transaction not yet committed changed the order.
    fn in_cache(&self, order_id: &str) -> bool {
        self.open.pending.contains_key(order_id) || self.sealed.pending.contains_key(order_id)
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
    /// Decided on committed state only, so an order with writes in a transaction not yet
    /// committed is busy.
    pub fn process_direct(
        &mut self,
        envelope: &CommandEnvelope,
        rules: &Rules,
        now_ms: u64,
    ) -> Result<Direct, StoreError> {
        if self.in_cache(&envelope.order_id) {
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
        self.store.put(&mut batch, &entry.state, &encode_state(&entry.state)?)?;
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
        if self.outbox.len() == self.open.outbox.len() + self.sealed.outbox.len() {
            return Ok(out);
        }
        let waiting: Vec<u64> = self
            .outbox
            .keys()
            .filter(|seq| !self.open.outbox.contains(seq) && !self.sealed.outbox.contains(seq))
            .copied()
            .collect();
        for seq in waiting {
            self.open.outbox.push(seq);
            let Some(entry) = self.outbox.get(&seq) else { continue };
            if !entry.superseded {
                out.push(Output { update: entry.update.clone(), state: Bytes::from(encode_state(&entry.state)?) });
                self.open.changelog_records += 1;
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

    /// The open transaction closed: its writes are sealed, to be written to RocksDB when it
    /// commits; the next transaction writes on top of them. (The previous sealed layer was
    /// written or dropped when its transaction settled: a transaction closes only then.)
    pub fn seal(&mut self) {
        debug_assert!(self.sealed.is_empty(), "a transaction closed before the previous one settled");
        let next = Layer { pending: std::mem::take(&mut self.spare), ..Layer::default() };
        let open = std::mem::replace(&mut self.open, next);
        let sealed = std::mem::replace(&mut self.sealed, open);
        // Should the debug assertion not hold, keep the older writes rather than lose them.
        for (order_id, pending) in sealed.pending {
            self.sealed.pending.entry(order_id).or_insert(pending);
        }
        self.sealed.outbox.extend(sealed.outbox);
        self.sealed.changelog_records += sealed.changelog_records;
    }

    /// Whether the closed transaction carries anything of this task's to write after the commit.
    pub fn needs_flush(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Changelog records this task produced in the closed transaction. None means the transaction
    /// acknowledges no changelog offset for it, and its store's position stays where it is.
    pub fn changelog_records_in_txn(&self) -> usize {
        self.sealed.changelog_records
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
    ) -> Result<Output, StoreError> {
        let encoded = Bytes::from(encode_state(&state)?);
        self.open.changelog_records += 1;
        self.timers.replace(&state.order_id, previous_timer, state.timer);
        let output = Output { update, state: encoded.clone() };
        match self.open.pending.get_mut(&state.order_id) {
            Some(pending) => {
                pending.state = state;
                pending.encoded = encoded;
            }
            None => {
                self.open.pending.insert(state.order_id.clone(), Pending { state, encoded });
            }
        }
        Ok(output)
    }

    /// The order's state as the open transaction sees it (a copy only when the write-back cache
    /// holds it; a committed state is decoded fresh).
    fn current(&mut self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        if let Some(p) = self.open.pending.get(order_id).or_else(|| self.sealed.pending.get(order_id)) {
            return Ok(Some(p.state.clone()));
        }
        match self.prefetched.remove(order_id) {
            Some(prefetched) => Ok(prefetched),
            None => self.store.get(order_id),
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
        if let Some(pending) = self.open.pending.get_mut(&envelope.order_id) {
            let previous_timer = pending.state.timer;
            let mut state = std::mem::replace(&mut pending.state, OrderState::new(String::new()));
            let update = decide_in_place(&mut state, envelope, rules, now_ms);
            return match update {
                Some(update) => self.take(state, update, previous_timer).map(Some),
                None => {
                    pending.state = state;
                    Ok(None)
                }
            };
        }
        // Otherwise decided on a copy of the sealed layer's state (written by the transaction that
        // is committing, replaced once that is written), or of the committed one.
        let committed = self.current(&envelope.order_id)?;
        let previous_timer = committed.as_ref().and_then(|s| s.timer);
        let mut state = committed.unwrap_or_else(|| OrderState::new(envelope.order_id.clone()));
        match decide_in_place(&mut state, envelope, rules, now_ms) {
            Some(update) => self.take(state, update, previous_timer).map(Some),
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
        // The committed states of the due orders in one multi-get per chunk, as for a batch of
        // records: looked up one by one, they were a quarter of the stream thread's time in the
        // end-to-end bench (docs/benchmarks.md, 2026-12-07). In chunks, because after a burst of
        // orders tens of thousands of timers fall due at once, and the map of prefetched states
        // keeps the size it grew to (8 MiB at the peak of the 1M bench's heap profile).
        for chunk in due.chunks(PUNCTUATE_CHUNK) {
            self.prefetch(chunk.iter().map(|id| id.as_bytes()))?;
            for order_id in chunk {
                let Some(mut state) = self.current(order_id)? else { continue };
                let previous_timer = state.timer;
                if let Some(update) = fire_timer_in_place(&mut state, rules, now_ms) {
                    out.push(self.take(state, update, previous_timer)?);
                }
            }
            self.end_batch();
        }
        Ok(out)
    }

    /// After Kafka committed the closed transaction: writes its sealed states to RocksDB with the
    /// changelog position they reach (`None`: the transaction wrote nothing to this task's
    /// changelog partition, the position stays), in one batch.
    pub fn flush(&mut self, next_changelog_offset: Option<i64>) -> Result<usize, StoreError> {
        let sealed = std::mem::take(&mut self.sealed);
        // In key order: RocksDB's memtable (a skip list) inserts a key next to the previous one
        // from where that one landed, and a random order climbs the list from its top each time.
        let mut states: Vec<&Pending> = sealed.pending.values().collect();
        states.sort_unstable_by(|a, b| a.state.order_id.cmp(&b.state.order_id));
        // The states, the outbox entries' keys (8 bytes), the position (a key and 8 bytes).
        let payload: usize = states.iter().map(|p| p.state.order_id.len() + p.encoded.len()).sum();
        let records = states.len() + sealed.outbox.len() + 1;
        let mut batch = StoreBatch::with_capacity(records, payload + 8 * sealed.outbox.len() + 32);
        for pending in states {
            self.store.put(&mut batch, &pending.state, &pending.encoded)?;
        }
        for seq in &sealed.outbox {
            self.store.delete_outbox(&mut batch, *seq)?;
        }
        if let Some(next) = next_changelog_offset {
            batch.set_position(next);
        }
        let written = batch.len();
        self.store.write(batch)?;
        self.prefetched.clear();
        for seq in sealed.outbox {
            self.outbox.remove(&seq);
        }
        let mut pending = sealed.pending;
        pending.clear();
        self.spare = pending;
        Ok(written)
    }

    /// After the closed transaction aborted (and the open one with it): forgets their writes
    /// (outbox entries stay, to go out with the next transaction).
    pub fn discard(&mut self) -> Result<(), StoreError> {
        self.open = Layer::default();
        self.sealed = Layer::default();
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
mod tests;
