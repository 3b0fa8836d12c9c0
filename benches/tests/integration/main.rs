//! The benches' integration tests, one binary (modules per area):
//!
//! - [`peer_equivalence`]: the Kafka Streams peer decides exactly as dev-materiels does (no
//!   broker: both machines replay the same records and punctuations);
//! - [`e2e_small`]: the end-to-end bench at a small size on a real broker, every contender
//!   exactly once.

mod e2e_small;
mod peer_equivalence;
