//! Several stream threads in one process (`--stream-threads`, Kafka Streams'
//! `num.stream.threads`): each is a member of the consumer group in its own right, with its own
//! transactional producer(s) and tasks, so the group spreads the partitions over them as over
//! processes, and fencing works between them as between processes.
//!
//! - Thread 0 keeps the instance's names (transactional id, `group.instance.id`), so a process
//!   that goes from one thread to several still fences its previous incarnation; thread `i` adds
//!   `-t<i>` to the instance id.
//! - The threads share the state directory, one store per partition, as Kafka Streams' threads
//!   share theirs: a partition that moves from one thread to another (the group assigns each
//!   thread on its own) finds its store where the other left it, written up to its changelog
//!   position, outbox included. RocksDB's lock keeps a store to one thread at a time: a thread
//!   assigned a partition whose store another still holds (a detached task not closed yet, a
//!   standby copy) waits, and tries again every 200 ms.
//! - Standby copies (`--standby`) are kept by thread 0 only, of every partition no thread has a
//!   task for; it lets a copy go as soon as another thread takes the partition.
//! - A store left behind (HTTP decisions of a detached task whose partition did not come back
//!   to its thread) is handed over ([`super::hand_over`]) 2 s after the assignment, and only if
//!   no thread has a task for its partition by then: a sibling that took the partition in the
//!   same rebalance publishes those decisions as they were answered (those another owner
//!   superseded meanwhile are decided again), as one thread does with a partition that comes back
//!   to it.
//! - Requests that came over HTTP are routed to the thread whose task serves the order's
//!   partition ([`Ownership`]): a running task first, then one restoring (which answers "busy"),
//!   then a detached one; a partition no thread has goes to thread 0, which says so.
//! - The first thread to stop (an error, or the shutdown) stops the others; the process reports
//!   the first error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use wire::partitioner::partition_for;

use super::direct::DirectRequest;
use super::ownership::Ownership;
use super::{stream_thread, RuntimeError, StreamConfig};
use crate::metrics::{StreamMetrics, StreamStats};

/// Runs `config.stream_threads` stream threads until `shutdown` is set (or one of them stops),
/// then returns the process's counters, or the first thread's error.
pub fn run(
    config: StreamConfig,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
    direct: Receiver<DirectRequest>,
) -> Result<StreamStats, RuntimeError> {
    let threads = config.stream_threads.max(1);
    let partitions = stream_thread::prepare_topics_patiently(&config)?;
    super::state_dir::claim(&config.state_dir, &super::state_dir::cluster_id(&config.kafka)?)?;
    metrics.stream_threads(threads);
    let ownership = Arc::new(Ownership::new(threads));
    if threads == 1 {
        return stream_thread::run(config, 0, partitions, ownership, shutdown, metrics, direct);
    }
    let mut inboxes = Vec::new();
    let mut handles = Vec::new();
    let mut first_error = None;
    for thread in 0..threads {
        let (inbox, requests) = std::sync::mpsc::channel();
        inboxes.push(inbox);
        let config = config.for_thread(thread);
        let stopped = Stopped { thread, shutdown: Arc::clone(&shutdown), ownership: Arc::clone(&ownership) };
        let metrics = Arc::clone(&metrics);
        let spawned = std::thread::Builder::new().name(format!("stream-thread-{thread}")).spawn(move || {
            let _span = tracing::info_span!("stream_thread", thread).entered();
            let (ownership, shutdown) = (Arc::clone(&stopped.ownership), Arc::clone(&stopped.shutdown));
            let result = stream_thread::run(config, thread, partitions, ownership, shutdown, metrics, requests);
            drop(stopped);
            result
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(source) => {
                // The threads started so far stop too.
                shutdown.store(true, Ordering::Relaxed);
                first_error = Some(RuntimeError::Thread { name: "stream", source });
                break;
            }
        }
    }
    route(&direct, &inboxes, &ownership, partitions, &shutdown);
    drop(inboxes);
    for handle in handles {
        match handle.join() {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(_) => {
                first_error.get_or_insert(RuntimeError::ThreadStopped { name: "stream" });
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(metrics.snapshot()),
    }
}

/// Dropped when a stream thread ends, however it ends (an error, the shutdown, a panic): one
/// thread stopping stops the process, the others settle and stop too; and no request is routed
/// to it any more.
struct Stopped {
    thread: usize,
    shutdown: Arc<AtomicBool>,
    ownership: Arc<Ownership>,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.ownership.publish(self.thread, Vec::new());
    }
}

/// Hands each request that came over HTTP to the thread that serves its order's partition, until
/// `shutdown` is set.
fn route(
    direct: &Receiver<DirectRequest>,
    inboxes: &[Sender<DirectRequest>],
    ownership: &Ownership,
    partitions: i32,
    shutdown: &AtomicBool,
) {
    while !shutdown.load(Ordering::Relaxed) {
        let request = match direct.recv_timeout(Duration::from_millis(100)) {
            Ok(request) => request,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let order_id = match &request {
            DirectRequest::Command { envelope, .. } => envelope.order_id.as_bytes(),
            DirectRequest::Query { order_id, .. } => order_id.as_bytes(),
        };
        let thread = ownership.thread_for(partition_for(order_id, partitions));
        // A thread that has stopped drops the request, and its asker hears "stopping".
        let _ = inboxes[thread].send(request);
    }
}
