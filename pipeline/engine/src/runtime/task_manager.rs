//! The task manager: every partition's task with its state, and the transitions between states,
//! in one place (Kafka Streams' `TaskManager`).
//!
//! ```text
//!              assigned                restored
//!   (none) ───────────────▶ Restoring ───────────▶ Running
//!     ▲                      │  ▲                    │  │
//!     │ revoked, or a restore│  │ assigned again     │  │ assignment lost (the group
//!     │ failed (store closed)│  │                    │  │ coordinator unreachable for
//!     └──────────────────────┘  └──── Detached ◀─────┘  │ the session timeout)
//!     ▲                               │                 │
//!     └───────────────────────────────┴─────────────────┘
//!          revoked, or not assigned again: closed
//! ```
//!
//! - **Restoring**: assigned, its store being brought up to the end of its changelog. It takes no
//!   record (its partition is paused), fires no timer and answers no HTTP command.
//! - **Running**: processes records, fires timers, publishes its outbox, and commits its input
//!   offsets with every transaction.
//! - **Detached**: the group said the assignment is lost, and another member may own the
//!   partition by now. The task keeps serving the HTTP path (its decisions wait in its outbox)
//!   but takes no record, fires no timer and publishes nothing: its transactions would carry no
//!   offsets for the partition, so nothing would fence them. At the next assignment it is caught
//!   up (Restoring) if the partition comes back, closed otherwise.
//!
//! A partition without a task may have a standby copy ([`super::standby`]): the manager says
//! which partitions have none.

use std::collections::BTreeMap;

use super::task::Task;

/// The state of a partition's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Restoring,
    Running,
    Detached,
}

struct Managed {
    state: TaskState,
    /// `None` while restoring a store that is not open yet.
    task: Option<Task>,
    /// Restoring, and waiting for a transaction open on the changelog to end.
    waiting: bool,
}

/// What an assignment changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    /// Detached tasks whose partitions did not come back, closed, with their outbox sizes.
    pub closed_detached: Vec<(i32, usize)>,
}

#[derive(Default)]
pub struct TaskManager {
    tasks: BTreeMap<i32, Managed>,
}

impl TaskManager {
    pub fn new() -> TaskManager {
        TaskManager::default()
    }

    pub fn state(&self, partition: i32) -> Option<TaskState> {
        self.tasks.get(&partition).map(|m| m.state)
    }

    /// A new assignment (eager rebalancing: everything not detached was revoked before it). Every
    /// assigned partition restores, a detached one by catching up the task it kept; detached
    /// tasks whose partitions were not assigned again are closed.
    pub fn assigned(&mut self, partitions: &[i32]) -> Assigned {
        let mut out = Assigned::default();
        let gone: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(p, m)| m.state == TaskState::Detached && !partitions.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for partition in gone {
            if let Some(m) = self.tasks.remove(&partition) {
                out.closed_detached.push((partition, m.task.as_ref().map_or(0, Task::outbox_len)));
            }
        }
        for partition in partitions {
            let managed = self.tasks.entry(*partition).or_insert(Managed {
                state: TaskState::Restoring,
                task: None,
                waiting: false,
            });
            managed.state = TaskState::Restoring;
            managed.waiting = false;
        }
        out
    }

    /// Partitions going to another member in an orderly rebalance (after the open transaction
    /// settled): their tasks close.
    pub fn revoked(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.tasks.remove(partition);
        }
    }

    /// The group says the assignment is lost: running tasks are kept, detached; restoring ones
    /// close.
    pub fn lost(&mut self, partitions: &[i32]) {
        for partition in partitions {
            match self.tasks.get(partition).map(|m| m.state) {
                Some(TaskState::Running) => {
                    if let Some(m) = self.tasks.get_mut(partition) {
                        m.state = TaskState::Detached;
                    }
                }
                Some(TaskState::Restoring) => {
                    self.tasks.remove(partition);
                }
                Some(TaskState::Detached) | None => {}
            }
        }
    }

    /// The partitions waiting for their restore.
    pub fn restoring(&self) -> Vec<i32> {
        self.in_state(TaskState::Restoring)
    }

    /// Takes the task a restore should catch up (the one a detached task kept), if any; the
    /// restore opens the store otherwise.
    pub fn take_for_restore(&mut self, partition: i32) -> Option<Task> {
        self.tasks.get_mut(&partition).filter(|m| m.state == TaskState::Restoring).and_then(|m| m.task.take())
    }

    /// A restore could not complete yet (a transaction is open on the changelog): the task stays
    /// restoring, its store open, for the next attempt. Returns whether this is the first attempt
    /// that waited.
    pub fn still_restoring(&mut self, task: Task) -> bool {
        match self.tasks.get_mut(&task.partition) {
            Some(m) if m.state == TaskState::Restoring => {
                m.task = Some(task);
                !std::mem::replace(&mut m.waiting, true)
            }
            // Revoked meanwhile: the task closes.
            _ => false,
        }
    }

    /// A restore completed: the task runs.
    pub fn restored(&mut self, task: Task) {
        let partition = task.partition;
        match self.tasks.get_mut(&partition) {
            Some(m) if m.state == TaskState::Restoring => {
                m.state = TaskState::Running;
                m.task = Some(task);
                m.waiting = false;
            }
            // Revoked while it restored: the task closes.
            _ => {}
        }
    }

    fn in_state(&self, state: TaskState) -> Vec<i32> {
        self.tasks.iter().filter(|(_, m)| m.state == state).map(|(p, _)| *p).collect()
    }

    /// The running tasks: they take records, fire timers, publish their outbox and commit their
    /// offsets.
    pub fn running(&mut self) -> impl Iterator<Item = (i32, &mut Task)> {
        self.tasks
            .iter_mut()
            .filter(|(_, m)| m.state == TaskState::Running)
            .filter_map(|(p, m)| m.task.as_mut().map(|t| (*p, t)))
    }

    /// The task of `partition` if it runs.
    pub fn running_task(&mut self, partition: i32) -> Option<&mut Task> {
        self.tasks.get_mut(&partition).filter(|m| m.state == TaskState::Running).and_then(|m| m.task.as_mut())
    }

    /// The task that answers HTTP commands and queries for `partition`: a running or a detached
    /// one.
    pub fn serving_task(&mut self, partition: i32) -> Option<&mut Task> {
        self.tasks
            .get_mut(&partition)
            .filter(|m| matches!(m.state, TaskState::Running | TaskState::Detached))
            .and_then(|m| m.task.as_mut())
    }

    /// Every task with a store open (for sizes and gauges).
    pub fn tasks(&self) -> impl Iterator<Item = (i32, &Task)> {
        self.tasks.iter().filter_map(|(p, m)| m.task.as_ref().map(|t| (*p, t)))
    }

    /// Every task with a store open, to write after a commit or drop after an abort.
    pub fn tasks_mut(&mut self) -> impl Iterator<Item = (i32, &mut Task)> {
        self.tasks.iter_mut().filter_map(|(p, m)| m.task.as_mut().map(|t| (*p, t)))
    }

    /// Whether `partition` has a task with its store open (a detached one kept for a catch-up).
    pub fn has_store(&self, partition: i32) -> bool {
        self.tasks.get(&partition).is_some_and(|m| m.task.is_some())
    }

    /// Whether `partition` has a task in any state.
    pub fn has(&self, partition: i32) -> bool {
        self.tasks.contains_key(&partition)
    }

    /// Of `0..partitions`, those with no task: candidates for a standby copy, or for handing
    /// over the outbox of a store left behind.
    pub fn without_task(&self, partitions: i32) -> Vec<i32> {
        (0..partitions).filter(|p| !self.tasks.contains_key(p)).collect()
    }

    /// Every task's partition and state.
    pub fn states(&self) -> Vec<(i32, TaskState)> {
        self.tasks.iter().map(|(p, m)| (*p, m.state)).collect()
    }

    /// How many tasks are in each state: (restoring, running, detached).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |s| self.tasks.values().filter(|m| m.state == s).count();
        (count(TaskState::Restoring), count(TaskState::Running), count(TaskState::Detached))
    }

    /// Outbox entries waiting, over every task.
    pub fn outbox_len(&self) -> usize {
        self.tasks().map(|(_, t)| t.outbox_len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state::StoreOptions;

    fn task(dir: &tempfile::TempDir, partition: i32) -> Task {
        Task::open(partition, &dir.path().join(format!("p{partition}")), &StoreOptions::default()).expect("open")
    }

    fn restore_all(manager: &mut TaskManager, dir: &tempfile::TempDir) {
        for partition in manager.restoring() {
            let t = manager.take_for_restore(partition).unwrap_or_else(|| task(dir, partition));
            manager.restored(t);
        }
    }

    fn running(manager: &mut TaskManager) -> Vec<i32> {
        manager.running().map(|(p, _)| p).collect()
    }

    #[test]
    fn an_assigned_partition_restores_then_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = TaskManager::new();
        assert_eq!(m.assigned(&[0, 2]), Assigned::default());
        assert_eq!(m.restoring(), [0, 2]);
        assert_eq!(m.state(0), Some(TaskState::Restoring));
        assert!(running(&mut m).is_empty(), "a restoring task takes no record");
        assert!(m.serving_task(0).is_none(), "nor an HTTP command");
        assert_eq!(m.without_task(4), [1, 3]);
        restore_all(&mut m, &dir);
        assert_eq!(running(&mut m), [0, 2]);
        assert_eq!(m.counts(), (0, 2, 0));
    }

    #[test]
    fn a_restore_that_waits_keeps_its_task_restoring_and_says_so_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = TaskManager::new();
        m.assigned(&[0]);
        let t = m.take_for_restore(0).unwrap_or_else(|| task(&dir, 0));
        assert!(m.still_restoring(t), "the first wait is new");
        assert_eq!(m.state(0), Some(TaskState::Restoring));
        assert!(running(&mut m).is_empty() && m.serving_task(0).is_none(), "a waiting task neither runs nor serves");
        let again = m.take_for_restore(0);
        assert!(again.is_some(), "the next attempt goes on with the store already open");
        assert!(!m.still_restoring(again.expect("kept")), "the same wait goes on");
        let done = m.take_for_restore(0).expect("kept");
        m.restored(done);
        assert_eq!(running(&mut m), [0]);
        m.revoked(&[0]);
        m.assigned(&[0]);
        assert!(m.still_restoring(task(&dir, 0)), "a new assignment, a new wait");
    }

    #[test]
    fn a_revoked_task_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = TaskManager::new();
        m.assigned(&[0, 1]);
        restore_all(&mut m, &dir);
        m.revoked(&[0, 1]);
        assert_eq!(m.state(0), None);
        assert_eq!(m.without_task(2), [0, 1]);
    }

    #[test]
    fn a_task_revoked_while_it_restores_closes_when_its_restore_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = TaskManager::new();
        m.assigned(&[0]);
        let t = task(&dir, 0);
        m.revoked(&[0]);
        m.restored(t);
        assert_eq!(m.state(0), None);
    }

    #[test]
    fn a_lost_assignment_detaches_running_tasks_and_closes_restoring_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = TaskManager::new();
        m.assigned(&[0]);
        restore_all(&mut m, &dir);
        m.assigned(&[0, 1]); // 0 restores again (caught up); 1 is new
        let caught_up = m.take_for_restore(0).unwrap_or_else(|| task(&dir, 0));
        m.restored(caught_up);
        m.lost(&[0, 1]);
        assert_eq!(m.state(0), Some(TaskState::Detached));
        assert_eq!(m.state(1), None, "a restoring task closes");
        assert!(running(&mut m).is_empty(), "a detached task takes no record and fires no timer");
        assert!(m.serving_task(0).is_some(), "but keeps serving the HTTP path");
        assert!(m.running_task(0).is_none());
    }

    #[test]
    fn a_detached_task_assigned_again_is_caught_up_not_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = TaskManager::new();
        m.assigned(&[0]);
        restore_all(&mut m, &dir);
        m.lost(&[0]);
        m.assigned(&[0]);
        assert_eq!(m.state(0), Some(TaskState::Restoring));
        let kept = m.take_for_restore(0);
        assert!(kept.is_some(), "the task it kept is handed to the restore");
        m.restored(kept.expect("kept"));
        assert_eq!(running(&mut m), [0]);
    }

    #[test]
    fn a_detached_task_not_assigned_again_is_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = TaskManager::new();
        m.assigned(&[0, 1]);
        restore_all(&mut m, &dir);
        m.lost(&[0, 1]);
        let assigned = m.assigned(&[1]);
        assert_eq!(assigned.closed_detached, [(0, 0)]);
        assert_eq!(m.state(0), None);
        assert_eq!(m.state(1), Some(TaskState::Restoring));
    }
}
