//! The operators' side of the dead-letter topic: list what is there and why, and replay a record
//! to `orders`, as it was or fixed (`wagon-lits dlq list|replay`).
//!
//! A dead letter keeps the original key and value byte for byte, and its headers say why it was
//! refused and where it came from ([`wire::dlq::headers`]). A replay checks the value
//! with the same decoder dev-materiels uses, so a record that is still invalid is refused here,
//! with its reason, instead of going round again; a valid one is produced to `orders` keyed by its
//! order id, with a `dlq.replayed.from` header naming the dead letter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use state::{decode_command, InvalidCommand};

use engine::kafka::{KafkaArgs, ReadToEndContext, KAFKA_CALL_TIMEOUT};
use wire::dlq::headers;

/// The header a replayed record carries: `<dead-letter topic>/<partition>/<offset>`.
pub const REPLAYED_FROM: &str = "dlq.replayed.from";

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("{context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error("no record at offset {offset} of {topic}/{partition}")]
    NotFound { topic: String, partition: i32, offset: i64 },
    #[error("the record is still not a valid command ({kind}): {reason}")]
    StillInvalid { kind: &'static str, reason: String },
    #[error("the dead letter was cut from {original} bytes; give the fixed value to replay it")]
    Truncated { original: usize },
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> DeadLetterError {
    let context = context.into();
    move |source| DeadLetterError::Kafka { context, source }
}

/// One record of the dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub value: Option<Vec<u8>>,
    /// The header values (`dlq.error`, `dlq.error.kind`, `dlq.source.*`...).
    pub headers: HashMap<String, String>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn kind(&self) -> &str {
        self.header(headers::ERROR_KIND)
    }

    pub fn error(&self) -> &str {
        self.header(headers::ERROR)
    }

    /// `topic/partition/offset` of the original message.
    pub fn source(&self) -> String {
        format!(
            "{}/{}/{}",
            self.header(headers::SOURCE_TOPIC),
            self.header(headers::SOURCE_PARTITION),
            self.header(headers::SOURCE_OFFSET)
        )
    }

    /// The key and value as text (lossy), the value cut to `max` characters: for display.
    pub fn preview(&self, max: usize) -> (String, String) {
        let text = |b: &Option<Vec<u8>>| b.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
        let mut value = text(&self.value);
        if value.chars().count() > max {
            value = value.chars().take(max).collect::<String>() + "…";
        }
        (text(&self.key), value)
    }
}

fn reader(kafka: &KafkaArgs) -> Result<BaseConsumer<ReadToEndContext>, DeadLetterError> {
    let mut config = kafka.base();
    config
        .set("group.id", "dead-letter-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    kafka.finish(config).create_with_context(ReadToEndContext).map_err(self::kafka("creating a dead-letter reader"))
}

fn to_letter(message: &impl Message) -> DeadLetter {
    let mut headers = HashMap::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            headers
                .insert(header.key.to_string(), String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned());
        }
    }
    DeadLetter {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// The last `limit` dead letters of each partition of `topic`, oldest first.
pub fn list(kafka: &KafkaArgs, topic: &str, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let consumer = reader(kafka)?;
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_CALL_TIMEOUT).map_err(self::kafka("reading metadata"))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut assignment = TopicPartitionList::new();
    let mut open = 0;
    for p in &partitions {
        let (low, high) =
            consumer.fetch_watermarks(topic, *p, KAFKA_CALL_TIMEOUT).map_err(self::kafka("reading offsets"))?;
        if high > low {
            let from = (high - limit as i64).max(low);
            assignment.add_partition_offset(topic, *p, Offset::Offset(from)).map_err(self::kafka("assigning"))?;
            open += 1;
        }
    }
    if open == 0 {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment).map_err(self::kafka("assigning"))?;
    let mut letters = Vec::new();
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < open && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => letters.push(to_letter(&message)),
            Some(Err(KafkaError::PartitionEOF(_))) => done += 1,
            Some(Err(err)) => return Err(DeadLetterError::Kafka { context: format!("reading {topic}"), source: err }),
            None => {}
        }
    }
    letters.sort_by_key(|l| (l.timestamp_ms, l.partition, l.offset));
    Ok(letters)
}

/// The dead letter at `partition`/`offset` of `topic`.
pub fn fetch(kafka: &KafkaArgs, topic: &str, partition: i32, offset: i64) -> Result<DeadLetter, DeadLetterError> {
    let not_found = || DeadLetterError::NotFound { topic: topic.to_string(), partition, offset };
    let consumer = reader(kafka)?;
    let (low, high) =
        consumer.fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT).map_err(self::kafka("reading offsets"))?;
    if offset < low || offset >= high {
        return Err(not_found());
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(offset)).map_err(self::kafka("assigning"))?;
    consumer.assign(&assignment).map_err(self::kafka("assigning"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.offset() == offset => return Ok(to_letter(&message)),
            // The offset held a transaction marker or an aborted record: the next is another one.
            Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => return Err(not_found()),
            Some(Err(err)) => return Err(DeadLetterError::Kafka { context: format!("reading {topic}"), source: err }),
            None => {}
        }
    }
    Err(not_found())
}

/// Where a replayed record went.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub order_id: String,
    pub command_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Produces `letter` (or `fixed`, its corrected value) to `orders_topic`, keyed by its order id,
/// if it is a valid command now.
pub fn replay(
    kafka: &KafkaArgs,
    dlq_topic: &str,
    orders_topic: &str,
    letter: &DeadLetter,
    fixed: Option<&[u8]>,
) -> Result<Replayed, DeadLetterError> {
    let value = match fixed {
        Some(value) => value,
        None => {
            if let Some(original) = letter.headers.get(headers::TRUNCATED_FROM).and_then(|v| v.parse().ok()) {
                return Err(DeadLetterError::Truncated { original });
            }
            letter.value.as_deref().unwrap_or_default()
        }
    };
    // The key is the order id: a dead letter refused for a wrong key is replayed under the right one.
    let envelope = decode_command(None, Some(value))
        .map_err(|e: InvalidCommand| DeadLetterError::StillInvalid { kind: e.kind(), reason: e.to_string() })?;
    let mut config = kafka.base();
    config.set("enable.idempotence", "true").set("acks", "all").set("partitioner", "murmur2_random");
    let producer: FutureProducer = kafka.finish(config).create().map_err(self::kafka("creating a producer"))?;
    let from = format!("{dlq_topic}/{}/{}", letter.partition, letter.offset);
    let record = FutureRecord::to(orders_topic)
        .key(envelope.order_id.as_bytes())
        .payload(value)
        .headers(OwnedHeaders::new().insert(Header { key: REPLAYED_FROM, value: Some(from.as_bytes()) }));
    let delivery = futures::executor::block_on(producer.send(record, Duration::from_secs(30)))
        .map_err(|(err, _)| DeadLetterError::Kafka { context: format!("producing to {orders_topic}"), source: err })?;
    Ok(Replayed {
        order_id: envelope.order_id,
        command_id: envelope.command_id,
        topic: orders_topic.to_string(),
        partition: delivery.partition,
        offset: delivery.offset,
    })
}
