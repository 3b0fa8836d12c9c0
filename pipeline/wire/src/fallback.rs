//! The HTTP fallback on the wire: what wagon-lits sends to dev-materiels when Kafka is not there
//! (`POST /v1/commands`, a command envelope as on `orders`) and what it gets back.

use state::{OrderState, OrderUpdate};

/// The path of the fallback endpoint on dev-materiels.
pub const COMMANDS_PATH: &str = "/v1/commands";

/// What a command over HTTP did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DirectReply {
    pub partition: i32,
    /// The updates it produced: one, or none for a command already applied.
    pub updates: Vec<OrderUpdate>,
}

/// An order's state, as its task holds it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueryReply {
    pub partition: i32,
    pub state: Option<OrderState>,
}
