//! Commands that arrive over HTTP instead of Kafka (the fallback path), and interactive queries.
//!
//! The HTTP server does not touch state: it hands each request to the stream thread, which runs
//! it on the task that owns the order's partition, between records, so an order always has one
//! writer. A command decided this way is written to the task's store and outbox at once, before
//! the answer goes back; the next Kafka transaction publishes it.

use state::CommandEnvelope;
use tokio::sync::oneshot;
pub use wire::fallback::{DirectReply, QueryReply};

/// A request for the stream thread.
pub enum DirectRequest {
    Command { envelope: CommandEnvelope, reply: oneshot::Sender<Result<DirectReply, DirectRefusal>> },
    Query { order_id: String, reply: oneshot::Sender<Result<QueryReply, DirectRefusal>> },
}

/// Why the stream thread did not run a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectRefusal {
    #[error("partition {partition} of the order is not owned by this instance")]
    NotOwner { partition: i32 },
    #[error("the order has writes in a Kafka transaction that is not settled yet; retry shortly")]
    Busy,
    #[error("the processor is stopping")]
    Stopping,
    #[error("{0}")]
    Failed(String),
}

/// The HTTP side's handle on the stream thread.
#[derive(Clone)]
pub struct DirectHandle {
    tx: std::sync::mpsc::Sender<DirectRequest>,
}

impl DirectHandle {
    pub fn channel() -> (DirectHandle, std::sync::mpsc::Receiver<DirectRequest>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (DirectHandle { tx }, rx)
    }

    pub async fn command(&self, envelope: CommandEnvelope) -> Result<DirectReply, DirectRefusal> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(DirectRequest::Command { envelope, reply }).map_err(|_| DirectRefusal::Stopping)?;
        answer.await.map_err(|_| DirectRefusal::Stopping)?
    }

    pub async fn query(&self, order_id: String) -> Result<QueryReply, DirectRefusal> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(DirectRequest::Query { order_id, reply }).map_err(|_| DirectRefusal::Stopping)?;
        answer.await.map_err(|_| DirectRefusal::Stopping)?
    }
}
