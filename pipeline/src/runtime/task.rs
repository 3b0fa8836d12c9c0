//! A task: the processing of one `orders` partition, with its state store.
//!
//! A task reads and writes order states for the open transaction in memory (its write-back
//! cache), on top of the committed state in its RocksDB [`OrderStore`]. When the transaction
//! commits, [`Task::flush`] writes the cache to RocksDB in one batch with the changelog position;
//! when it aborts, [`Task::discard`] drops it. RocksDB never holds state Kafka did not commit.

use std::collections::HashMap;
use std::path::Path;

use state::store::encode_state;
use state::{
    decide, fire_timer, CommandEnvelope, Decision, OrderState, OrderStore, OrderUpdate, Rules, StoreBatch, StoreError,
    StoreOptions, Timer, TimerQueue,
};

/// What the task decided for one command or timer: the update to emit and the new state to
/// write to the changelog.
pub struct Output {
    pub update: OrderUpdate,
    /// The state's changelog record value (JSON), encoded once for Kafka and RocksDB.
    pub state: Vec<u8>,
}

struct Pending {
    state: OrderState,
    encoded: Vec<u8>,
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
}

impl Task {
    /// Opens the task's store. Call [`crate::runtime::restore`] before processing anything.
    pub fn open(partition: i32, dir: &Path, options: &StoreOptions) -> Result<Task, StoreError> {
        let store = OrderStore::open(dir, options)?;
        let timers = TimerQueue::from_entries(store.timers()?);
        Ok(Task { partition, store, pending: HashMap::new(), timers, next_input_offset: None })
    }

    pub fn store(&self) -> &OrderStore {
        &self.store
    }

    /// Reloads the timer queue from the store (after a restore changed it underneath).
    pub fn reload_timers(&mut self) -> Result<(), StoreError> {
        self.timers = TimerQueue::from_entries(self.store.timers()?);
        Ok(())
    }

    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Whether the open transaction wrote state for this task.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The order's state as the open transaction sees it, and the timer of its committed state.
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

    fn take(
        &mut self,
        decision: Decision,
        previous_timer: Option<Timer>,
        committed_timer: Option<Timer>,
    ) -> Option<Output> {
        let Decision::Update { state, update } = decision else { return None };
        let encoded = encode_state(&state);
        self.timers.replace(&state.order_id, previous_timer, state.timer);
        self.pending.insert(state.order_id.clone(), Pending { state, encoded: encoded.clone(), committed_timer });
        Some(Output { update, state: encoded })
    }

    /// Runs a command through the state machine.
    pub fn process(
        &mut self,
        envelope: &CommandEnvelope,
        rules: &Rules,
        now_ms: u64,
    ) -> Result<Option<Output>, StoreError> {
        let (current, committed_timer) = self.current(&envelope.order_id)?;
        let previous_timer = current.as_ref().and_then(|s| s.timer);
        let decision = decide(current.as_ref(), envelope, rules, now_ms);
        Ok(self.take(decision, previous_timer, committed_timer))
    }

    /// Fires the timers due at `now_ms` (the task's punctuation).
    pub fn punctuate(&mut self, rules: &Rules, now_ms: u64) -> Result<Vec<Output>, StoreError> {
        let mut out = Vec::new();
        for order_id in self.timers.pop_due(now_ms) {
            let (Some(state), committed_timer) = self.current(&order_id)? else { continue };
            if let Some(output) = self.take(fire_timer(&state, rules, now_ms), state.timer, committed_timer) {
                out.push(output);
            }
        }
        Ok(out)
    }

    /// After Kafka committed the transaction: writes its states to RocksDB with the changelog
    /// position they reach, in one batch.
    pub fn flush(&mut self, next_changelog_offset: i64) -> Result<usize, StoreError> {
        let mut batch = StoreBatch::new();
        for pending in self.pending.values() {
            self.store.put(&mut batch, &pending.state, &pending.encoded, pending.committed_timer)?;
        }
        batch.set_position(next_changelog_offset);
        let written = batch.len();
        self.store.write(batch)?;
        self.pending.clear();
        Ok(written)
    }

    /// After the transaction aborted: forgets its writes.
    pub fn discard(&mut self) -> Result<(), StoreError> {
        self.pending.clear();
        self.reload_timers()
    }
}
