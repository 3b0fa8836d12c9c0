//! What a second cluster needs on the wire to take over (docs/multi-cluster.md): with
//! `--replicated`, each update on `order-updates` carries its order's state and, when a command
//! from `orders` set it off, that command record's timestamp. MirrorMaker 2 copies headers and
//! timestamps with the records, so the standby cluster's `order-updates` says, by itself, what
//! dev-materiels' state was as of each update it holds and which command it had reached.

/// The order's state after the update: the changelog record's value (`state::encoding`),
/// the same bytes.
pub const STATE: &str = "rail-state";
/// The timestamp (ms) of the `orders` record whose command the update decided, in decimal.
/// Absent on updates of timers and of commands decided over HTTP.
pub const COMMAND_TS: &str = "rail-command-ts";
