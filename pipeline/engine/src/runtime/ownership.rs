//! Which stream thread of the process serves each partition, for routing the requests that
//! came over HTTP ([`super::threads`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use super::task_manager::TaskState;

/// Which stream thread has a task for each partition, and in what state, as each thread last
/// said (after every change of its tasks).
#[derive(Debug, Default)]
pub struct Ownership {
    threads: RwLock<Vec<Vec<(i32, TaskState)>>>,
    /// Bumped at every change, for the threads that follow the others' tasks.
    version: AtomicU64,
}

impl Ownership {
    pub fn new(threads: usize) -> Ownership {
        Ownership { threads: RwLock::new(vec![Vec::new(); threads]), version: AtomicU64::new(0) }
    }

    /// Stream thread `thread`'s tasks now.
    pub fn publish(&self, thread: usize, tasks: Vec<(i32, TaskState)>) {
        let mut threads = self.threads.write().unwrap_or_else(|e| e.into_inner());
        if threads.len() <= thread {
            threads.resize(thread + 1, Vec::new());
        }
        if threads[thread] != tasks {
            threads[thread] = tasks;
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A number that changes whenever a thread's tasks do.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether a thread other than `thread` has a task (in any state) for `partition`: its
    /// store is that thread's.
    pub fn held_by_another(&self, thread: usize, partition: i32) -> bool {
        let threads = self.threads.read().unwrap_or_else(|e| e.into_inner());
        threads.iter().enumerate().any(|(t, tasks)| t != thread && tasks.iter().any(|&(p, _)| p == partition))
    }

    /// The thread to ask about `partition`: the one running its task, else one restoring it,
    /// else one keeping it detached, else thread 0.
    pub fn thread_for(&self, partition: i32) -> usize {
        let threads = self.threads.read().unwrap_or_else(|e| e.into_inner());
        let holding = |state: TaskState| {
            threads.iter().position(|tasks| tasks.iter().any(|&(p, s)| p == partition && s == state))
        };
        holding(TaskState::Running)
            .or_else(|| holding(TaskState::Restoring))
            .or_else(|| holding(TaskState::Detached))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_to_the_thread_that_runs_the_partition_else_restores_else_keeps_it_detached() {
        let ownership = Ownership::new(3);
        ownership.publish(0, vec![(0, TaskState::Detached), (1, TaskState::Detached)]);
        ownership.publish(1, vec![(1, TaskState::Restoring), (2, TaskState::Running)]);
        ownership.publish(2, vec![(0, TaskState::Running), (1, TaskState::Detached)]);
        assert_eq!([0, 1, 2, 3].map(|p| ownership.thread_for(p)), [2, 1, 1, 0]);
        // Thread 2 lost its tasks: partition 0 goes back to the detached task of thread 0.
        let version = ownership.version();
        ownership.publish(2, Vec::new());
        assert_eq!(ownership.thread_for(0), 0);
        assert_ne!(ownership.version(), version);
        assert!(
            ownership.held_by_another(1, 0) && !ownership.held_by_another(0, 0) && !ownership.held_by_another(0, 3)
        );
    }
}
