//! The system tests, one binary (modules per area): both services as real processes against real
//! Apache Kafka brokers started by `kafka-harness`, checked against the oracle of
//! `support/oracle.rs`. Most start a broker of their own; run one area with a filter, e.g.
//! `cargo test --release -p pipeline --test system chaos -- --nocapture`.

mod avro;
mod chaos;
mod compose;
mod connect;
mod contracts;
mod crash;
mod dead_letters;
mod demo;
mod end_to_end;
mod failover;
mod http_api;
mod http_decisions;
mod http_fuzz;
mod lost_state;
mod mirror;
mod model_self_check;
mod multi_cluster;
mod open_transaction;
mod ops_page;
mod otel;
mod outage;
mod scale_out;
mod scram;
mod support;
mod three_brokers;
mod zombie;
