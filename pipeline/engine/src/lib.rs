//! The engine: a Kafka-Streams-like runtime for a stateful, exactly-once processor of `orders`,
//! in Kafka Streams' terms (stream thread, task, state store, changelog, punctuation, standby
//! task). It knows no service: dev-materiels wires its rules onto it, wagon-lits uses its Kafka
//! client builder and topic administration.
//!
//! - [`runtime`]: the stream thread, its tasks, restore, standbys, dead letters, the HTTP path's
//!   entry;
//! - [`kafka`]: Kafka client settings from flags and environment, and the client builder;
//! - [`admin`]: creating and checking topics;
//! - [`metrics`], [`stats`]: the stream thread's Prometheus families, librdkafka's statistics;
//! - [`logging`], [`otel`], [`shutdown`]: logs, trace export, signals.

pub mod admin;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod runtime;
pub mod shutdown;
pub mod stats;
