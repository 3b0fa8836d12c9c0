//! The operations page wagon-lits serves under `/ops`: plain server-rendered HTML (no script,
//! nothing fetched from the internet), what an operator of the system looks at first.
//!
//! - `GET /ops`: which path commands take now (Kafka or HTTP), orders by status from the view
//!   (the page refreshes itself every 10 s), the topics with their partitions, end offsets and
//!   the lag of dev-materiels' group and of the view, and the dead letters with their reason, each
//!   with a form to replay it (as it was, or with its value fixed);
//! - `GET /ops?status=Shipped`: the orders in one status;
//! - `GET /ops/orders/{id}`: one order's history, read from `order-updates`;
//! - `POST /ops/dlq/replay`: replays a dead letter to `orders` (the form of the main page);
//! - `GET|POST /ops/login`: a browser cannot send the bearer token the API wants, so the page
//!   takes it once in a form and keeps it in an `HttpOnly`, `SameSite=Strict` cookie that the
//!   server accepts in place of the header.
//!
//! Every value shown is escaped (maud does it): dead letters are hostile input.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{HeaderValue, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use state::{OrderStatus, OrderUpdate};

use engine::kafka::KAFKA_CALL_TIMEOUT;

use crate::dead_letters::{self, DeadLetter};
use crate::sender::BreakerState;
use http_fallback::TOKEN_COOKIE;

/// Most orders listed for one status.
const STATUS_PAGE: usize = 100;
/// Most dead letters shown (the last ones).
const DEAD_LETTERS: usize = 50;
/// Most records of `order-updates` one history page reads.
const HISTORY_SCAN: u64 = 500_000;

fn page(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · wagon-lits" }
                style { (STYLE) }
            }
            body {
                header { a href="/ops" { "wagon-lits operations" } }
                h1 { (title) }
                (body)
            }
        }
    };
    html_response(StatusCode::OK, markup.into_string())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f0f0f0}code,pre{font-size:.85rem}textarea{width:28rem;height:4rem;font-family:monospace}\
.ok{color:#11661b}.bad{color:#a11}.note{background:#fff6d5;padding:.5rem;border:1px solid #e6c200}header{margin-bottom:1rem}";

fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], body).into_response()
}

fn redirect(to: &str) -> Response {
    let mut response = html_response(StatusCode::SEE_OTHER, String::new());
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn query(raw: Option<String>) -> BTreeMap<String, String> {
    form(raw.unwrap_or_default().as_bytes())
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let markup = html! { p class="bad" { (message) } p { a href="/ops" { "Back" } } };
    let mut response = page("Error", markup);
    *response.status_mut() = status;
    response
}

/// What the operations page reads and acts on.
pub struct Ops {
    pub view: Arc<state::ViewStore>,
    pub sender: Arc<crate::sender::CommandSender>,
    /// The token, to check the sign-in form; `None` when auth is off.
    pub token: Option<http_fallback::Secret>,
    pub config: OpsConfig,
}

/// The operations page's routes, nested under `/ops` by [`crate::api::router`]; every path answers
/// "off" when the page is not configured.
pub fn router(ops: Option<Arc<Ops>>) -> Router {
    let Some(ops) = ops else {
        return Router::new().fallback(|| async { error_page(StatusCode::NOT_FOUND, "The operations page is off.") });
    };
    Router::new()
        .route("/", get(overview))
        .route("/orders", get(find_order))
        .route("/orders/{id}", get(history))
        .route("/dlq/replay", post(replay))
        .route("/login", get(|| async { login_page(None) }).post(login))
        .fallback(|| async { error_page(StatusCode::NOT_FOUND, "No such page.") })
        .with_state(ops)
}

async fn overview(State(ops): State<Arc<Ops>>, RawQuery(raw): RawQuery) -> Response {
    ops.overview(&ops.config, &query(raw)).await
}

async fn find_order(RawQuery(raw): RawQuery) -> Response {
    match query(raw).get("id") {
        Some(id) => {
            redirect(&format!("/ops/orders/{}", form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()))
        }
        None => redirect("/ops"),
    }
}

async fn history(State(ops): State<Arc<Ops>>, Path(id): Path<String>) -> Response {
    ops.history(&ops.config, &id).await
}

async fn replay(State(ops): State<Arc<Ops>>, body: Bytes) -> Response {
    ops.replay(&ops.config, &body).await
}

async fn login(State(ops): State<Arc<Ops>>, body: Bytes) -> Response {
    ops.login(&body)
}

impl Ops {
    fn login(&self, body: &[u8]) -> Response {
        let token = form(body).remove("token").unwrap_or_default();
        let Some(secret) = &self.token else { return redirect("/ops") };
        if !secret.matches(&token) {
            let mut response = login_page(Some("Wrong token."));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            return response;
        }
        let mut response = redirect("/ops");
        let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(SET_COOKIE, value);
        }
        response
    }

    async fn overview(&self, config: &OpsConfig, query: &BTreeMap<String, String>) -> Response {
        let topics = {
            let inputs = config.clone();
            tokio::task::spawn_blocking(move || topic_table(&inputs)).await
        };
        let letters = {
            let inputs = config.clone();
            tokio::task::spawn_blocking(move || dead_letters::list(&inputs.kafka, &inputs.dlq_topic, DEAD_LETTERS))
                .await
        };
        let breaker = self.sender.breaker.state();
        let m = &self.sender.metrics;
        let counts = self.view.counts();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut pending = self.view.pending_all();
        pending.sort_by_key(|(_, p)| p.since_ms);
        let chosen: Option<OrderStatus> = query.get("status").and_then(|s| s.parse().ok());
        let listed = chosen.map(|s| self.view.list_by_status(s, None, STATUS_PAGE));
        let body = html! {
            meta http-equiv="refresh" content="10";
            @if let Some(message) = query.get("replayed") {
                p class="note" id="replay-result" { (message) }
            }
            section id="path" {
                h2 { "Path of commands" }
                p {
                    "Commands go through "
                    strong id="current-path" { @if breaker == BreakerState::Open { "HTTP (fallback)" } @else { "Kafka" } }
                    " (circuit breaker " strong id="breaker" { (format!("{breaker:?}").to_lowercase()) } ")."
                }
                table {
                    tr { th { "via Kafka" } th { "via HTTP" } th { "Kafka failures" } }
                    tr {
                        td id="via-kafka" { (m.via_kafka.get()) }
                        td id="via-http" { (m.via_http.get()) }
                        td { (m.kafka_failures.get()) }
                    }
                }
            }
            section id="pending" {
                h2 { "Decisions taken over HTTP, not on order-updates yet" }
                p {
                    strong id="pending-count" { (pending.len()) }
                    " pending; their orders' next commands wait. Each is sent again to orders (same command id) while \
                     Kafka takes commands; "
                    strong id="pending-resent" { (m.resent.get()) }
                    " re-sends so far."
                }
                @if !pending.is_empty() {
                    table id="pending-list" {
                        tr { th { "order" } th { "command" } th { "answered" } th { "waiting (s)" } }
                        @for (order_id, p) in pending.iter().take(STATUS_PAGE) {
                            tr {
                                td { a href={ "/ops/orders/" (order_id) } { (order_id) } }
                                td { (p.command_id) }
                                td { (p.answered.as_ref().and_then(|u| u.status).map_or("-", OrderStatus::as_str)) }
                                td { (now.saturating_sub(p.since_ms) / 1000) }
                            }
                        }
                    }
                }
            }
            section id="orders" {
                h2 { "Orders by status (the view)" }
                table {
                    tr { th { "status" } th { "orders" } }
                    @for (status, n) in &counts {
                        tr data-status=(status.as_str()) {
                            td { a href={ "/ops?status=" (status.as_str()) } { (status.as_str()) } }
                            td class="count" { (n) }
                        }
                    }
                }
                form method="get" action="/ops/orders" {
                    "Order history: " input name="id" id="order-id" placeholder="order id";
                    " " button type="submit" { "Show" }
                }
                @if let (Some(status), Some(listed)) = (chosen, &listed) {
                    h3 { (status.as_str()) " (first " (STATUS_PAGE) ")" }
                    @match listed {
                        Ok(rows) => table id="status-list" {
                            tr { th { "order" } th { "version" } th { "updated" } }
                            @for row in rows {
                                tr {
                                    td { a href={ "/ops/orders/" (row.order_id) } { (row.order_id) } }
                                    td { (row.version) }
                                    td { (row.timestamp_ms) }
                                }
                            }
                        },
                        Err(err) => p class="bad" { (err.to_string()) },
                    }
                }
            }
            section id="topics" {
                h2 { "Topics" }
                p { "End offsets count the markers of Kafka transactions: a consumer that has read everything can show a lag of 1." }
                @match topics {
                    Ok(Ok(rows)) => table id="topic-table" {
                        tr { th { "topic" } th { "partition" } th { "start" } th { "end" } th { "dev-materiels lag" } th { "view lag" } }
                        @for row in &rows {
                            tr data-topic=(row.topic) data-partition=(row.partition) {
                                td { (row.topic) } td { (row.partition) } td { (row.low) } td class="end" { (row.high) }
                                td class="group-lag" { @if let Some(lag) = row.group_lag { (lag) } }
                                td class="view-lag" { @if let Some(lag) = row.view_lag { (lag) } }
                            }
                        }
                    },
                    Ok(Err(err)) => p class="bad" { "Kafka: " (err) },
                    Err(err) => p class="bad" { (err.to_string()) },
                }
            }
            section id="dead-letters" {
                h2 { "Dead letters (" (config.dlq_topic) ")" }
                @match letters {
                    Ok(Ok(letters)) => {
                        @if letters.is_empty() {
                            p { "None." }
                        } @else {
                            table id="dlq-table" {
                                tr { th { "where" } th { "reason" } th { "from" } th { "key" } th { "value (fix it, then replay)" } }
                                @for letter in &letters {
                                    (dead_letter_row(letter))
                                }
                            }
                        }
                    }
                    Ok(Err(err)) => p class="bad" { (err.to_string()) },
                    Err(err) => p class="bad" { (err.to_string()) },
                }
            }
        };
        page("Operations", body)
    }

    async fn history(&self, config: &OpsConfig, order_id: &str) -> Response {
        let inputs = config.clone();
        let id = order_id.to_string();
        let found = tokio::task::spawn_blocking(move || order_history(&inputs, &id)).await;
        let current = self.view.get(order_id);
        let body = html! {
            p { "In the view: "
                @match &current {
                    Ok(Some(row)) => strong id="view-status" { (row.status.map_or("none", OrderStatus::as_str)) " (v" (row.version) ")" },
                    Ok(None) => strong id="view-status" { "not in the view" },
                    Err(err) => span class="bad" { (err.to_string()) },
                }
            }
            @match found {
                Ok(Ok((updates, complete))) => {
                    @if !complete { p class="note" { "Only the first " (HISTORY_SCAN) " records of the partition were read." } }
                    table id="history" {
                        tr { th { "offset" } th { "version" } th { "status" } th { "outcome" } th { "trigger" } th { "command" } th { "reason" } th { "at (ms)" } }
                        @for (offset, u) in &updates {
                            tr {
                                td { (offset) } td class="version" { (u.version) }
                                td { (u.status.map_or("", OrderStatus::as_str)) }
                                td { (format!("{:?}", u.outcome)) } td { (format!("{:?}", u.trigger)) }
                                td { (u.command_id.as_deref().unwrap_or("")) } td { (u.reason.as_deref().unwrap_or("")) }
                                td { (u.timestamp_ms) }
                            }
                        }
                    }
                }
                Ok(Err(err)) => p class="bad" { "Kafka: " (err) },
                Err(err) => p class="bad" { (err.to_string()) },
            }
        };
        page(&format!("Order {order_id}"), body)
    }

    async fn replay(&self, config: &OpsConfig, body: &[u8]) -> Response {
        let fields = form(body);
        let (Some(partition), Some(offset)) = (
            fields.get("partition").and_then(|p| p.parse::<i32>().ok()),
            fields.get("offset").and_then(|o| o.parse::<i64>().ok()),
        ) else {
            return error_page(StatusCode::BAD_REQUEST, "A replay needs the dead letter's partition and offset.");
        };
        let value = fields.get("value").cloned();
        let inputs = config.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let letter = dead_letters::fetch(&inputs.kafka, &inputs.dlq_topic, partition, offset)?;
            let original = letter.value.clone().unwrap_or_default();
            // The form always sends the value; it is a fix only if it differs from the original.
            let fixed = value.filter(|v| v.as_bytes() != original.as_slice());
            dead_letters::replay(
                &inputs.kafka,
                &inputs.dlq_topic,
                &inputs.orders_topic,
                &letter,
                fixed.as_deref().map(str::as_bytes),
            )
        })
        .await;
        match outcome {
            Ok(Ok(done)) => {
                tracing::info!(partition, offset, order_id = %done.order_id, command_id = %done.command_id, "dead letter replayed from the operations page");
                let message = format!(
                    "Replayed {}/{partition}/{offset} to {}/{}/{} (order {}, command {}).",
                    config.dlq_topic, done.topic, done.partition, done.offset, done.order_id, done.command_id
                );
                let target: String =
                    form_urlencoded::Serializer::new(String::new()).append_pair("replayed", &message).finish();
                redirect(&format!("/ops?{target}"))
            }
            Ok(Err(
                err @ (dead_letters::DeadLetterError::StillInvalid { .. }
                | dead_letters::DeadLetterError::Truncated { .. }),
            )) => error_page(StatusCode::UNPROCESSABLE_ENTITY, &err.to_string()),
            Ok(Err(err @ dead_letters::DeadLetterError::NotFound { .. })) => {
                error_page(StatusCode::NOT_FOUND, &err.to_string())
            }
            Ok(Err(err)) => error_page(StatusCode::BAD_GATEWAY, &err.to_string()),
            Err(err) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        }
    }
}

fn dead_letter_row(letter: &DeadLetter) -> Markup {
    let (key, _) = letter.preview(200);
    let value = letter.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
    html! {
        tr class="dead-letter" data-partition=(letter.partition) data-offset=(letter.offset) {
            td { (letter.partition) "/" (letter.offset) }
            td { strong class="kind" { (letter.kind()) } br; span class="reason" { (letter.error()) } }
            td { (letter.source()) }
            td { code { (key) } }
            td {
                form method="post" action="/ops/dlq/replay" {
                    input type="hidden" name="partition" value=(letter.partition);
                    input type="hidden" name="offset" value=(letter.offset);
                    textarea name="value" { (value) }
                    br;
                    button type="submit" class="replay" { "Replay to orders" }
                }
            }
        }
    }
}

fn login_page(message: Option<&str>) -> Response {
    page(
        "Sign in",
        html! {
            @if let Some(message) = message { p class="bad" { (message) } }
            form method="post" action="/ops/login" {
                label { "Token: " input type="password" name="token" id="token" autocomplete="current-password"; }
                " " button type="submit" id="sign-in" { "Sign in" }
            }
        },
    )
}

/// What the operations page reads Kafka with.
#[derive(Clone)]
pub struct OpsConfig {
    pub kafka: engine::kafka::KafkaArgs,
    pub orders_topic: String,
    pub updates_topic: String,
    pub dlq_topic: String,
    /// dev-materiels' consumer group (its application id): its lag on `orders`, and its changelog.
    pub processor_group: String,
    /// The view's directory, for its stored offsets.
    pub view: Arc<state::ViewStore>,
    /// How updates are read, for an order's history.
    pub codec: wire::Codec,
}

struct TopicRow {
    topic: String,
    partition: i32,
    low: i64,
    high: i64,
    group_lag: Option<i64>,
    view_lag: Option<i64>,
}

fn reader(config: &OpsConfig, group: &str) -> Result<BaseConsumer, KafkaError> {
    let mut c = config.kafka.base();
    c.set("group.id", group).set("enable.auto.commit", "false").set("isolation.level", "read_committed");
    config.kafka.finish(c).create()
}

fn topic_table(config: &OpsConfig) -> Result<Vec<TopicRow>, KafkaError> {
    let consumer = reader(config, &config.processor_group)?;
    let changelog = format!("{}-order-store-changelog", config.processor_group);
    let view_offsets = config.view.offsets().unwrap_or_default();
    let mut rows = Vec::new();
    for topic in [&config.orders_topic, &config.updates_topic, &config.dlq_topic, &changelog] {
        let metadata = consumer.fetch_metadata(Some(topic), KAFKA_CALL_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let committed = if *topic == config.orders_topic && !partitions.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(topic, *p);
            }
            // The group's committed offsets (OffsetFetch): reading them does not join the group.
            Some(consumer.committed_offsets(tpl, KAFKA_CALL_TIMEOUT)?)
        } else {
            None
        };
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT)?;
            let group_lag = committed.as_ref().map(|c| {
                let at = c.find_partition(topic, partition).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
                high - at.unwrap_or(low)
            });
            let view_lag = (*topic == config.updates_topic)
                .then(|| high - view_offsets.get(&partition).copied().unwrap_or(low).max(low));
            rows.push(TopicRow { topic: topic.clone(), partition, low, high, group_lag, view_lag });
        }
    }
    Ok(rows)
}

/// The updates of `order_id` on `order-updates`, with their offsets, and whether the partition
/// was read to its end.
fn order_history(config: &OpsConfig, order_id: &str) -> Result<(Vec<(i64, OrderUpdate)>, bool), KafkaError> {
    let consumer = reader(config, "wagon-lits-ops-history")?;
    let partitions = engine::admin::partition_count(&config.kafka, &config.updates_topic, KAFKA_CALL_TIMEOUT)
        .map_err(|_| KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition))?;
    let partition = wire::partitioner::partition_for(order_id.as_bytes(), partitions);
    let (low, high) = consumer.fetch_watermarks(&config.updates_topic, partition, KAFKA_CALL_TIMEOUT)?;
    let mut updates = Vec::new();
    if high <= low {
        return Ok((updates, true));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&config.updates_topic, partition, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let mut read = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                read += 1;
                if message.key() == Some(order_id.as_bytes()) {
                    if let Some(u) = message.payload().and_then(|p| config.codec.decode_update(p).ok()) {
                        updates.push((message.offset(), u));
                    }
                }
                if message.offset() + 1 >= high {
                    return Ok((updates, true));
                }
                if read >= HISTORY_SCAN {
                    return Ok((updates, false));
                }
            }
            Some(Err(err)) => return Err(err),
            // Transaction markers at the end: the position may pass `high` without a record.
            None => {
                let position = consumer.position()?;
                let at = position.find_partition(&config.updates_topic, partition).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
                if at.is_some_and(|o| o >= high) || std::time::Instant::now() > deadline {
                    return Ok((updates, at.is_some_and(|o| o >= high)));
                }
            }
        }
    }
}
