//! The order domain of the two railway services and their state stores. No Kafka, no HTTP.
//!
//! - [`order`]: commands, updates, statuses and the pure state machine (and, in [`order::json`],
//!   how a command is read from JSON in one pass);
//! - [`catalogue`]: the SKUs dev-materiels accepts (a fixed list, or the live catalogue table);
//! - [`encoding`]: how an order state is written in the store and on the changelog;
//! - [`store`]: dev-materiels' per-partition order store (RocksDB, committed state only), and its
//!   copy of the catalogue table ([`store::catalogue`]);
//! - [`timers`]: a task's queue of pending timers;
//! - [`view`]: wagon-lits' materialised view (RocksDB, exactly once by stored offsets).

pub mod catalogue;
pub mod encoding;
pub mod order;
pub mod store;
pub mod timers;
pub mod view;

pub use catalogue::{Catalogue, CatalogueItem, CatalogueTable};
pub use order::{
    check_envelope, decide, decide_in_place, decode_command, fire_timer, fire_timer_in_place, status_refusal,
    validate_envelope, Command, CommandEnvelope, Decision, InvalidCommand, OrderLine, OrderState, OrderStatus,
    OrderUpdate, Outcome, PlaceOrder, Rules, Timer, TimerKind, Trigger,
};
pub use store::{OrderStore, OutboxEntry, StoreBatch, StoreError, StoreOptions, StoreSize};
pub use timers::TimerQueue;
pub use view::{Answer, ApplyStats, JournalEntry, Pending, ViewRecord, ViewRow, ViewStore};

/// The hash map of the per-record paths (a task's write-back cache and prefetched states, a view
/// batch's rows), keyed by order ids: foldhash, seeded per map like std's `RandomState` (so
/// order ids chosen to collide cannot be chosen once for all processes), without SipHash's cost
/// on every lookup; std's maps hash each id with SipHash 1-3.
pub type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
