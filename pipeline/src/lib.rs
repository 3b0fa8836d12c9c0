//! The Kafka side of the two railway services.
//!
//! - [`runtime`]: the engine (stream thread, tasks, changelog restore, the exactly-once loop);
//! - [`dev_materiels`]: the processor, wired onto the runtime;
//! - [`wagon_lits`]: the command producer and the view materialiser;
//! - [`kafka_config`], [`topics`]: client settings and topic creation;
//! - [`workload`]: reproducible order traffic for the demo, tests and benches;
//! - [`demo`]: the whole flow in one process.

pub mod dead_letters;
pub mod demo;
pub mod dev_materiels;
pub mod http_args;
pub mod kafka_config;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod partitioner;
pub mod runtime;
pub mod shutdown;
pub mod topics;
pub mod trace;
pub mod wagon_lits;
pub mod workload;
