//! The binaries of the two railway services and the demo (`src/bin/`), on the crates beside this
//! one:
//!
//! - `wire/` (`rail-wire`): what both services share on the wire;
//! - `engine/` (`rail-engine`): the Kafka-Streams-like runtime, which knows no service;
//! - `dev-materiels/`: the processor, wired onto the engine, with its HTTP endpoint;
//! - `wagon-lits/`: the command sender, the view, the API and the operations page.
//!
//! This library holds [`workload`]: reproducible order traffic for the demo, the tests and the
//! benches; and [`check`]: `order-updates` read back and checked for exactly-once, by the demo and
//! the end-to-end bench.

pub mod check;
pub mod workload;
