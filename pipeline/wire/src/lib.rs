//! What wagon-lits and dev-materiels share on the wire, in one small place: the topics and their
//! settings, the `traceparent` header, the dead-letter headers, the HTTP fallback's request and
//! answer, the headers a standby cluster takes over from ([`replication`]), and Kafka's
//! partitioner (so that dev-materiels can tell which task owns an order that arrives over HTTP),
//! and how the messages are written: JSON or Avro through a schema registry ([`codec`],
//! [`avro`]; the schemas are in `schemas/`). The messages themselves (commands, updates) are the
//! domain's, in `state`.

pub mod avro;
pub mod codec;
pub mod dlq;
pub mod fallback;
pub mod partitioner;
pub mod replication;
pub mod topics;
pub mod trace;

pub use codec::{Codec, CodecArgs, WireFormat};
pub use topics::{TopicArgs, TopicSpec, MAX_MESSAGE_BYTES};
pub use trace::{TraceParent, TRACEPARENT};
