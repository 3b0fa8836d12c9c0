//! The record collector (Kafka Streams' `RecordCollector`): what a transaction produces, through
//! the transactional producer. Each decision is an update on `order-updates` (with a trace span
//! of its own) and the order's new state on the changelog partition of its task; a record that
//! is not a valid command goes to the dead-letter topic with its reason.

use std::sync::Arc;
use std::time::SystemTime;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use wire::{TraceParent, TRACEPARENT};

use super::dlq::{dead_letter_headers, Source};
use super::producer::KafkaProducer;
use super::task::Output;
use super::{RuntimeError, StreamConfig};
use crate::metrics::StreamMetrics;

/// A dead letter whose value does not fit is cut to this many bytes.
const DLQ_TRUNCATE: usize = 64 << 10;

pub struct RecordCollector {
    producer: Arc<KafkaProducer>,
    updates_topic: String,
    changelog: String,
    dlq_topic: String,
    /// How updates are written (JSON or Avro).
    codec: wire::Codec,
    /// Headers for a standby cluster on each update ([`wire::replication`]).
    replicated: bool,
    metrics: Arc<StreamMetrics>,
}

impl RecordCollector {
    pub fn new(config: &StreamConfig, producer: Arc<KafkaProducer>, metrics: Arc<StreamMetrics>) -> RecordCollector {
        RecordCollector {
            producer,
            updates_topic: config.topics.updates_topic.clone(),
            changelog: config.changelog_topic(),
            dlq_topic: config.topics.dlq_topic.clone(),
            codec: config.codec.clone(),
            replicated: config.replicated,
            metrics,
        }
    }

    /// The producer of the transaction just opened (the producers take turns).
    pub fn replace_producer(&mut self, producer: Arc<KafkaProducer>) {
        self.producer = producer;
    }

    /// Produces an update and its changelog record. The update carries a span of its own, child
    /// of `parent` (the command's), or a new trace (timers, the outbox, commands without one).
    /// `command_ts` is the timestamp of the `orders` record whose command it decided (none for
    /// timers and commands decided over HTTP); with `--replicated` it goes in a header, with the
    /// state.
    pub fn emit(
        &self,
        partition: i32,
        output: &Output,
        parent: Option<&TraceParent>,
        command_ts: Option<i64>,
    ) -> Result<(), RuntimeError> {
        let started = SystemTime::now();
        let update = self
            .codec
            .encode_update(&output.update)
            .map_err(|e| RuntimeError::Encode { what: "an update", reason: e.to_string() })?;
        let key = output.update.order_id.as_str();
        let span = parent.map_or_else(TraceParent::root, TraceParent::child);
        crate::otel::span("decide", opentelemetry::trace::SpanKind::Consumer, &span, parent, started, || {
            vec![
                opentelemetry::KeyValue::new("order_id", output.update.order_id.clone()),
                opentelemetry::KeyValue::new("version", output.update.version as i64),
                opentelemetry::KeyValue::new("trigger", format!("{:?}", output.update.trigger)),
            ]
        });
        let traceparent = span.to_string();
        let mut headers =
            OwnedHeaders::new_with_capacity(3).insert(Header { key: TRACEPARENT, value: Some(traceparent.as_bytes()) });
        if self.replicated {
            headers = headers.insert(Header { key: wire::replication::STATE, value: Some(&output.state[..]) });
            if let Some(ts) = command_ts {
                headers = headers
                    .insert(Header { key: wire::replication::COMMAND_TS, value: Some(ts.to_string().as_bytes()) });
            }
        }
        self.producer.send(BaseRecord::to(&self.updates_topic).key(key).payload(&update).headers(headers))?;
        self.producer.send(BaseRecord::to(&self.changelog).partition(partition).key(key).payload(&output.state[..]))?;
        self.metrics.update_produced();
        Ok(())
    }

    /// Sends a record that is not a valid command to the dead-letter topic, as it was (cut if it
    /// does not fit), with headers saying why and where it came from.
    pub fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        invalid: &state::InvalidCommand,
    ) -> Result<(), RuntimeError> {
        let source = Source { topic: message.topic(), partition: message.partition(), offset: message.offset() };
        let value = message.payload().unwrap_or_default();
        let key = message.key().unwrap_or_default();
        let topic = &self.dlq_topic;
        let record = BaseRecord::to(topic).key(key).payload(value).headers(dead_letter_headers(invalid, &source, None));
        match self.producer.send(record) {
            Err(RuntimeError::Kafka {
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                ..
            }) => {
                let cut = &value[..value.len().min(DLQ_TRUNCATE)];
                let headers = dead_letter_headers(invalid, &source, Some(value.len()));
                self.producer.send(BaseRecord::to(topic).key(key).payload(cut).headers(headers))?;
            }
            other => other?,
        }
        self.metrics.dead_lettered();
        Ok(())
    }
}

/// Whether a send failed because the producer's transaction has failed: librdkafka's
/// `RD_KAFKA_RESP_ERR__STATE` (it takes no record until the transaction is aborted), or
/// `RD_KAFKA_RESP_ERR__FATAL` (the producer was fenced, or hit another fatal error: it takes no
/// record again; aborting its transaction fails as fatal too, and the producer is replaced, as
/// when a commit finds it so).
pub fn refused_by_failed_transaction(err: &RuntimeError) -> bool {
    matches!(
        err,
        RuntimeError::Kafka {
            source: KafkaError::MessageProduction(RDKafkaErrorCode::State | RDKafkaErrorCode::Fatal),
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_or_fatal_error_means_the_transaction_failed() {
        let kafka = |source| RuntimeError::Kafka { context: "producing to order-updates".into(), source };
        assert!(refused_by_failed_transaction(&kafka(KafkaError::MessageProduction(RDKafkaErrorCode::State))));
        assert!(refused_by_failed_transaction(&kafka(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal))));
        assert!(!refused_by_failed_transaction(&kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        ))));
    }
}
