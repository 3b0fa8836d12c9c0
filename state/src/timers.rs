//! The in-memory queue of a task's pending timers (its punctuation schedule).
//!
//! The durable copy of each timer is the order state that carries it, and the store's `timers`
//! index; this queue mirrors them, including the writes of the open transaction, so a task finds
//! what is due without reading RocksDB.

use std::collections::BTreeSet;

use crate::order::Timer;

#[derive(Debug, Default, Clone)]
pub struct TimerQueue {
    queue: BTreeSet<(u64, String)>,
}

impl TimerQueue {
    pub fn new() -> TimerQueue {
        TimerQueue::default()
    }

    pub fn from_entries(entries: impl IntoIterator<Item = (u64, String)>) -> TimerQueue {
        TimerQueue { queue: entries.into_iter().collect() }
    }

    /// Records that `order_id`'s timer went from `old` to `new`.
    pub fn replace(&mut self, order_id: &str, old: Option<Timer>, new: Option<Timer>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.queue.remove(&(old.due_ms, order_id.to_string()));
        }
        if let Some(new) = new {
            self.queue.insert((new.due_ms, order_id.to_string()));
        }
    }

    /// Removes and returns the orders whose timers are due at `now_ms`, earliest first.
    pub fn pop_due(&mut self, now_ms: u64) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(first) = self.queue.first() {
            if first.0 > now_ms {
                break;
            }
            if let Some((_, id)) = self.queue.pop_first() {
                due.push(id);
            }
        }
        due
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn next_due(&self) -> Option<u64> {
        self.queue.first().map(|(due, _)| *due)
    }
}
