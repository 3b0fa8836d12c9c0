//! Dead-letter records: a message that is not a valid command goes to the dead-letter topic,
//! inside the same transaction as everything else, with headers that say why and where it came
//! from. The value is the original message, byte for byte, so it can be fixed and replayed.

use rdkafka::message::{Header, OwnedHeaders};

use state::InvalidCommand;
use wire::dlq::headers;

/// Where a dead letter came from.
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The headers of a dead-letter record.
pub fn dead_letter_headers(error: &InvalidCommand, source: &Source<'_>, truncated_from: Option<usize>) -> OwnedHeaders {
    let partition = source.partition.to_string();
    let offset = source.offset.to_string();
    let reason = error.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(6)
        .insert(Header { key: headers::ERROR, value: Some(reason.as_bytes()) })
        .insert(Header { key: headers::ERROR_KIND, value: Some(error.kind().as_bytes()) })
        .insert(Header { key: headers::SOURCE_TOPIC, value: Some(source.topic.as_bytes()) })
        .insert(Header { key: headers::SOURCE_PARTITION, value: Some(partition.as_bytes()) })
        .insert(Header { key: headers::SOURCE_OFFSET, value: Some(offset.as_bytes()) });
    if let Some(len) = truncated_from {
        let len = len.to_string();
        headers = headers.insert(Header { key: headers::TRUNCATED_FROM, value: Some(len.as_bytes()) });
    }
    headers
}
