//! How wagon-lits sends a command: to Kafka first; over HTTP to dev-materiels when Kafka does
//! not take it within the delivery timeout, or while the circuit breaker says Kafka is down.
//!
//! Both paths carry the same envelope, with the same command id: a command that reached Kafka
//! after all (a timeout is not a refusal) and also went over HTTP is applied once, since
//! dev-materiels remembers the ids it applied.
//!
//! What dev-materiels answers over HTTP is provisional: the view shows it, marked so, and holds
//! the order's next commands, until `order-updates` carries an update of that command. The
//! instance that decided it may lose its partition (or die with its store) before it can publish
//! it; so once Kafka takes commands again, a command still pending after
//! `--pending-resend-after-ms` is sent again to `orders`, same id, until `order-updates` shows it.
//! Whoever owns the partition then decides it once: an owner that already applied it changes
//! nothing. No pending command is ever given up on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_fallback::Problem;
use hyper::StatusCode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use serde::Serialize;
use state::{CommandEnvelope, OrderUpdate, ViewStore};

use engine::kafka::KafkaArgs;
use wire::fallback::DirectReply;
use wire::Codec;
use wire::{TraceParent, TRACEPARENT};

use crate::metrics::{SenderMetrics, StateLabel};
use crate::view::kafka_err;
use crate::WagonLitsError;

/// Produces commands to `orders`: idempotent, `acks=all`, keyed by order id.
#[derive(Clone)]
pub struct CommandProducer {
    producer: FutureProducer,
    topic: String,
    /// How commands are written (JSON unless [`CommandProducer::with_codec`] says otherwise).
    codec: Codec,
}

impl CommandProducer {
    /// `delivery_timeout` bounds how long a command may wait for Kafka before its delivery fails.
    pub fn new(kafka: &KafkaArgs, topic: &str, delivery_timeout: Duration) -> Result<CommandProducer, WagonLitsError> {
        let mut c: ClientConfig = kafka.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("partitioner", "murmur2_random");
        let producer: FutureProducer = kafka.finish(c).create().map_err(kafka_err("creating the command producer"))?;
        Ok(CommandProducer { producer, topic: topic.to_string(), codec: Codec::json() })
    }

    /// The same producer, writing commands with `codec` (Avro, say).
    pub fn with_codec(self, codec: Codec) -> CommandProducer {
        CommandProducer { codec, ..self }
    }

    /// Queues a command (in a new trace); the returned future resolves once Kafka has it (or
    /// it failed).
    pub fn send(&self, command: &CommandEnvelope) -> Result<DeliveryFuture, WagonLitsError> {
        self.send_traced(command, &TraceParent::root())
    }

    /// Queues a command whose record carries `trace` as its `traceparent` header.
    pub fn send_traced(
        &self,
        command: &CommandEnvelope,
        trace: &TraceParent,
    ) -> Result<DeliveryFuture, WagonLitsError> {
        let payload = self
            .codec
            .encode_command(command)
            .map_err(|e| WagonLitsError::Encode { what: "a command", reason: e.to_string() })?;
        let traceparent = trace.to_string();
        let headers =
            OwnedHeaders::new_with_capacity(1).insert(Header { key: TRACEPARENT, value: Some(traceparent.as_bytes()) });
        self.send_record(Some(command.order_id.as_bytes()), Some(&payload), Some(headers))
    }

    /// Queues any bytes to `orders` (for tools and tests that need bad input too).
    pub fn send_raw(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<DeliveryFuture, WagonLitsError> {
        self.send_record(key, payload, None)
    }

    fn send_record(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<DeliveryFuture, WagonLitsError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((err, _)) => {
                    return Err(WagonLitsError::Kafka { context: format!("producing to {}", self.topic), source: err })
                }
            }
        }
    }

    /// Sends a command and waits until Kafka has it.
    pub fn send_and_wait(&self, command: &CommandEnvelope) -> Result<(i32, i64), WagonLitsError> {
        let future = self.send(command)?;
        match futures::executor::block_on(future) {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((err, _))) => Err(WagonLitsError::Kafka { context: "delivering a command".into(), source: err }),
            Err(_) => {
                Err(WagonLitsError::Kafka { context: "delivering a command".into(), source: KafkaError::Canceled })
            }
        }
    }

    /// Whether a broker answers a metadata request for the topic within `timeout`.
    pub fn reachable(&self, timeout: Duration) -> bool {
        self.producer.client().fetch_metadata(Some(&self.topic), timeout).is_ok_and(|m| {
            m.topics().iter().any(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty())
        })
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), WagonLitsError> {
        self.producer.flush(Timeout::After(timeout)).map_err(kafka_err("flushing the command producer"))
    }
}

/// The path a command took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Kafka,
    Http,
}

/// A command that got through.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub path: Path,
    /// The updates dev-materiels answered with (HTTP path only; on the Kafka path they arrive
    /// through `order-updates`).
    pub updates: Vec<OrderUpdate>,
    /// The updates are provisional until `order-updates` carries them (HTTP path).
    pub provisional: bool,
}

/// A command that did not get through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Neither Kafka nor dev-materiels took it.
    #[error("neither Kafka nor dev-materiels took the command: {0}")]
    Unavailable(String),
    /// dev-materiels refused it (a 4xx); its problem is passed on.
    #[error("dev-materiels refused the command: {}", .0.detail)]
    Refused(Problem),
    /// The command could not be encoded (a bug: it is sent nowhere).
    #[error("cannot encode the command: {0}")]
    Encode(String),
    /// The order's previous command was decided over HTTP and is not on `order-updates` yet:
    /// this one waits, so that it cannot be decided before it.
    #[error("command {command_id} of this order was decided over HTTP and is not on Kafka yet; retry shortly")]
    Pending { command_id: String },
}

/// The state of the circuit breaker in front of Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Kafka takes commands.
    Closed,
    /// Kafka failed; commands go over HTTP until a probe reaches Kafka again.
    Open,
    /// A probe reached Kafka; the next command tries it.
    HalfOpen,
}

/// A circuit breaker: opens on a failed delivery, half-opens when the probe reaches Kafka, closes
/// on the next delivery that succeeds.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    opened: AtomicU64,
    /// `rail_breaker_state`: 1 for the current state.
    gauge: Family<StateLabel, Gauge>,
}

impl BreakerState {
    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl Breaker {
    /// A closed breaker, whose state `gauge` shows.
    pub fn new(gauge: Family<StateLabel, Gauge>) -> Breaker {
        let breaker = Breaker { state: Mutex::new(BreakerState::Closed), opened: AtomicU64::new(0), gauge };
        breaker.show(BreakerState::Closed);
        breaker
    }

    fn show(&self, current: BreakerState) {
        for state in [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen] {
            self.gauge.get_or_create(&StateLabel { state: state.label() }).set(i64::from(state == current));
        }
    }
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, state: BreakerState) {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *current != state {
            tracing::info!(from = ?*current, to = ?state, "circuit breaker");
            if state == BreakerState::Open {
                self.opened.fetch_add(1, Ordering::Relaxed);
            }
            *current = state;
            self.show(state);
        }
    }

    pub fn allows_kafka(&self) -> bool {
        self.state() != BreakerState::Open
    }

    pub fn success(&self) {
        self.set(BreakerState::Closed);
    }

    pub fn failure(&self) {
        self.set(BreakerState::Open);
    }

    /// The probe reached Kafka.
    pub fn probe_succeeded(&self) {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *current == BreakerState::Open {
            tracing::info!("circuit breaker: Kafka reachable again; next command tries it");
            *current = BreakerState::HalfOpen;
            self.show(BreakerState::HalfOpen);
        }
    }

    /// How many times it opened.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Sends commands by Kafka, or over HTTP when Kafka is not there.
pub struct CommandSender {
    producer: CommandProducer,
    delivery_timeout: Duration,
    client: Option<http_fallback::Client>,
    /// dev-materiels' instances, by base URL.
    dev_materiels_urls: Vec<String>,
    view: Arc<ViewStore>,
    pub breaker: Arc<Breaker>,
    pub metrics: SenderMetrics,
    /// Journal each command before it goes to Kafka (`--replicated`, [`ViewStore::journal`]).
    journal: bool,
}

impl CommandSender {
    pub fn new(
        producer: CommandProducer,
        delivery_timeout: Duration,
        dev_materiels: Option<(Vec<String>, http_fallback::Client)>,
        view: Arc<ViewStore>,
        metrics: SenderMetrics,
    ) -> CommandSender {
        let (dev_materiels_urls, client) = match dev_materiels {
            Some((urls, client)) => (urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect(), Some(client)),
            None => (Vec::new(), None),
        };
        CommandSender {
            producer,
            delivery_timeout,
            client,
            dev_materiels_urls,
            view,
            breaker: Arc::new(Breaker::new(metrics.breaker.clone())),
            metrics,
            journal: false,
        }
    }

    /// The same sender, journaling each command before it goes to Kafka, until `order-updates`
    /// answers it: what a failover to a standby cluster sends again (docs/multi-cluster.md).
    pub fn with_journal(self, journal: bool) -> CommandSender {
        CommandSender { journal, ..self }
    }

    pub fn producer(&self) -> &CommandProducer {
        &self.producer
    }

    /// Sends a command, by Kafka if the breaker allows and Kafka takes it in time, over HTTP
    /// otherwise, in span `trace` (its `traceparent` on the record or the HTTP request).
    pub async fn send(&self, envelope: &CommandEnvelope, trace: &TraceParent) -> Result<Sent, SendError> {
        tracing::debug!(order_id = %envelope.order_id, command_id = %envelope.command_id, trace_id = %trace.trace_id(), command = envelope.command.name(), "sending a command");
        if let Some(pending) = self.view.pending(&envelope.order_id).filter(|p| p.command_id != envelope.command_id) {
            return Err(SendError::Pending { command_id: pending.command_id });
        }
        if self.breaker.allows_kafka() {
            if self.journal {
                self.view
                    .journal(envelope, now_ms())
                    .map_err(|e| SendError::Unavailable(format!("cannot write the journal: {e}")))?;
            }
            // Whether the record was handed to the producer: then Kafka may have it whatever the
            // acknowledgement says (a timeout, a lost answer).
            let mut queued = false;
            let outcome = match self.producer.send_traced(envelope, trace) {
                Ok(future) => {
                    queued = true;
                    match tokio::time::timeout(self.delivery_timeout + Duration::from_millis(500), future).await {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err((err, _)))) => Err(err.to_string()),
                        Ok(Err(_)) => Err("delivery cancelled".to_string()),
                        Err(_) => Err(format!("no acknowledgement within {:?}", self.delivery_timeout)),
                    }
                }
                Err(err) => Err(err.to_string()),
            };
            match outcome {
                Ok(()) => {
                    self.breaker.success();
                    self.metrics.sent_by_kafka();
                    return Ok(Sent { path: Path::Kafka, updates: Vec::new(), provisional: false });
                }
                Err(reason) => {
                    tracing::warn!(order_id = %envelope.order_id, command_id = %envelope.command_id, trace_id = %trace.trace_id(), %reason, "Kafka did not take the command; falling back to HTTP");
                    // Never handed to Kafka: out of the journal (the HTTP path keeps its own
                    // marks). Handed and not acknowledged, it stays: Kafka may have it, and
                    // dev-materiels, having decided it already, would answer the HTTP call with
                    // nothing to mark; sent again at a failover, it is decided once.
                    if self.journal && !queued {
                        if let Err(err) = self.view.forget(&envelope.command_id) {
                            tracing::warn!(command_id = %envelope.command_id, error = %err, "cannot take the command out of the journal; a failover would send it again (decided once)");
                        }
                    }
                    self.metrics.kafka_failures.inc();
                    self.breaker.failure();
                }
            }
        }
        self.via_http(envelope, trace).await
    }

    async fn via_http(&self, envelope: &CommandEnvelope, trace: &TraceParent) -> Result<Sent, SendError> {
        let traceparent = trace.to_string();
        let Some(client) = self.client.as_ref().filter(|_| !self.dev_materiels_urls.is_empty()) else {
            return Err(SendError::Unavailable("Kafka is unreachable and no --dev-materiels-url is set".into()));
        };
        let body = serde_json::to_vec(envelope).map_err(|e| SendError::Encode(e.to_string()))?;
        let mut last = String::new();
        // Each round asks every instance in turn; only the owner of the partition takes it.
        for (attempt, base) in
            self.dev_materiels_urls.iter().cycle().take(6 * self.dev_materiels_urls.len()).enumerate()
        {
            let round = (attempt / self.dev_materiels_urls.len()) as u64;
            if round > 0 && attempt % self.dev_materiels_urls.len() == 0 {
                tokio::time::sleep(Duration::from_millis(100 * round)).await;
            }
            let url = format!("{base}/v1/commands");
            match client.post_json_with(&url, body.clone(), &[(TRACEPARENT, &traceparent)]).await {
                Ok((StatusCode::OK, bytes)) => {
                    let reply: DirectReply = serde_json::from_slice(&bytes)
                        .map_err(|e| SendError::Unavailable(format!("dev-materiels answered something else: {e}")))?;
                    self.view
                        .record_direct(envelope, &reply.updates, now_ms())
                        .map_err(|e| SendError::Unavailable(format!("cannot write the view: {e}")))?;
                    self.metrics.via_http.inc();
                    return Ok(Sent { path: Path::Http, updates: reply.updates, provisional: true });
                }
                Ok((status, bytes)) if status.is_client_error() => {
                    let problem = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Problem::new(status, "refused", String::from_utf8_lossy(&bytes).into_owned())
                    });
                    return Err(SendError::Refused(problem));
                }
                Ok((status, bytes)) => last = format!("{status}: {}", String::from_utf8_lossy(&bytes)),
                Err(err) => last = err.to_string(),
            }
        }
        Err(SendError::Unavailable(last))
    }

    /// Sets the gauges of the commands decided over HTTP and not on `order-updates` yet from the
    /// view (by the re-send loop, and by `GET /metrics` before it answers, so a scrape never
    /// shows a decision the view has confirmed already); returns them.
    pub fn refresh_pending_gauges(&self) -> Vec<(String, state::Pending)> {
        let now = now_ms();
        let pending = self.view.pending_all();
        self.metrics.pending.set(pending.len() as i64);
        let oldest = pending.iter().map(|(_, p)| now.saturating_sub(p.since_ms) / 1000).max().unwrap_or(0);
        self.metrics.pending_age_seconds.set(i64::try_from(oldest).unwrap_or(i64::MAX));
        pending
    }

    /// Every `every`, while the breaker lets commands go to Kafka, sends again to `orders` each
    /// command decided over HTTP that `order-updates` has not shown `after` after it was decided
    /// (and again every `after`), until `stop` is set. The same command id: whoever owns the
    /// partition decides it once.
    pub async fn resend_pending(
        self: Arc<Self>,
        every: Duration,
        after: Duration,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut last_sent: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut warned_without_command = std::collections::HashSet::new();
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            let now = now_ms();
            let pending = self.refresh_pending_gauges();
            if !self.breaker.allows_kafka() {
                continue;
            }
            last_sent.retain(|command_id, _| pending.iter().any(|(_, p)| &p.command_id == command_id));
            for (order_id, mark) in pending {
                let since = last_sent.get(&mark.command_id).copied().unwrap_or(mark.since_ms);
                if now.saturating_sub(since) < after_ms {
                    continue;
                }
                let Some(command) = mark.command else {
                    if warned_without_command.insert(mark.command_id.clone()) {
                        tracing::warn!(%order_id, command_id = %mark.command_id, "a command decided over HTTP by an older version is not on order-updates and was not kept to be sent again; its order's commands stay held");
                    }
                    continue;
                };
                let delivered = match self.producer.send(&command) {
                    Ok(future) => matches!(
                        tokio::time::timeout(self.delivery_timeout + Duration::from_millis(500), future).await,
                        Ok(Ok(Ok(_)))
                    ),
                    Err(_) => false,
                };
                if !delivered {
                    // Kafka did not take it: try again at the next round, once it does.
                    break;
                }
                self.breaker.success();
                last_sent.insert(mark.command_id.clone(), now);
                self.metrics.resent.inc();
                tracing::warn!(%order_id, command_id = %mark.command_id, pending_s = now.saturating_sub(mark.since_ms) / 1000, "a command decided over HTTP is not on order-updates yet; sent it again to orders (same id: it is decided once)");
            }
        }
    }

    /// Probes Kafka every `every` while the breaker is open, until `stop` is set.
    pub async fn probe(self: Arc<Self>, every: Duration, stop: Arc<std::sync::atomic::AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            if self.breaker.state() != BreakerState::Open {
                continue;
            }
            let sender = Arc::clone(&self);
            let reachable =
                tokio::task::spawn_blocking(move || sender.producer.reachable(every)).await.unwrap_or(false);
            if reachable {
                self.breaker.probe_succeeded();
            }
        }
    }
}
