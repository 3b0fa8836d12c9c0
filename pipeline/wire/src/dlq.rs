//! Dead letters on the wire: the headers that say why a record is on the dead-letter topic and
//! where it came from (written by dev-materiels, read by `wagon-lits dlq`).

/// Header names on dead-letter records.
pub mod headers {
    /// Human-readable reason.
    pub const ERROR: &str = "dlq.error";
    /// Short stable kind of error, e.g. `malformed`, `unsupported-schema-version`.
    pub const ERROR_KIND: &str = "dlq.error.kind";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    /// Set when the original value did not fit and was cut: its original length in bytes.
    pub const TRUNCATED_FROM: &str = "dlq.truncated.from";
}
