//! The wagon-lits HTTP API: place, cancel and confirm orders; read them from the view.
//! Described in `docs/openapi.json`; every error is an `application/problem+json` body.
//!
//! [`router`] lists the routes once; the operations page is a router of its own
//! ([`crate::ops::router`]), nested under `/ops`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_fallback::{json, metrics_response, Problem};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use state::order::MAX_ID_LEN;
use state::{status_refusal, Command, CommandEnvelope, OrderLine, OrderStatus, OrderUpdate, PlaceOrder, ViewStore};

use wire::{TraceParent, TRACEPARENT};

use crate::sender::{BreakerState, CommandSender, Path as CommandPath, SendError};

/// Largest page of `GET /orders`.
pub const MAX_PAGE: usize = 500;

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// Chosen by the caller (for retries), or generated.
    pub order_id: Option<String>,
    pub wagon_id: String,
    pub requested_by: String,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: String,
}

/// The answer to a command.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub order_id: String,
    pub command_id: String,
    /// `kafka` or `http` (the fallback).
    pub path: CommandPath,
    /// Updates already known (HTTP path); empty on the Kafka path.
    pub updates: Vec<OrderUpdate>,
    /// The updates are the deciding instance's answer, final once `order-updates` carries them:
    /// if that instance loses its partition first, the next owner decides the command again
    /// and its decision is the one `GET /orders/{id}` ends with.
    pub provisional: bool,
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    update: OrderUpdate,
    /// Present (true) while the update is an answer over HTTP not yet on `order-updates`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    provisional: bool,
}

#[derive(Debug, Serialize)]
struct Page {
    orders: Vec<OrderUpdate>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

pub struct Api {
    pub view: Arc<ViewStore>,
    pub sender: Arc<CommandSender>,
    /// What `GET /metrics` shows.
    pub registry: Arc<Registry>,
    /// The operations page (`/ops`); `None` turns it off.
    pub ops: Option<Arc<crate::ops::Ops>>,
    /// The schema registry's health, when one is configured: `/readyz` fails while it is
    /// unreachable.
    pub schema_registry: Option<Arc<wire::avro::RegistryHealth>>,
    /// What `/readyz/failover` looks at; `None` turns it off.
    pub failover: Option<Failover>,
}

/// What a failover to the standby would cost ([`crate::mirror_lag`]).
pub struct Failover {
    /// MirrorMaker 2's lag, when a standby is configured.
    pub mirror: Option<Arc<crate::mirror_lag::MirrorWatch>>,
    /// Commands are journaled (`--replicated`).
    pub replicated: bool,
    /// How often the lag is measured: a measure older than three of these, plus 20 s (a measure
    /// reads up to two records per partition, and while a transaction is open a read ends only
    /// after a second without a record), is stale.
    pub interval: std::time::Duration,
}

/// `GET /readyz/failover`: 200 if a failover to the standby now would lose no accepted command,
/// with what it would send again and decide again; 503 (problem+json) saying why not otherwise.
async fn failover_ready(State(api): State<Arc<Api>>) -> Response {
    let Some(failover) = &api.failover else {
        return Problem::unavailable("no standby cluster is configured (--standby-brokers)".to_string())
            .into_response();
    };
    let Some(watch) = &failover.mirror else {
        return Problem::unavailable("no standby cluster is configured (--standby-brokers)".to_string())
            .into_response();
    };
    let lag = match watch.last() {
        Ok(lag) => lag,
        Err(err) => {
            return Problem::unavailable(format!("MirrorMaker 2's lag to the standby is unknown: {err}"))
                .into_response()
        }
    };
    let age_ms = now_ms().saturating_sub(lag.measured_ms);
    if u128::from(age_ms) > 3 * failover.interval.as_millis() + 20_000 {
        return Problem::unavailable(format!(
            "MirrorMaker 2's lag was last measured {} s ago: the standby does not answer",
            age_ms / 1000
        ))
        .into_response();
    }
    let orders_behind = lag.records(&watch.topics()[0]);
    if !failover.replicated {
        return Problem::unavailable(format!(
            "wagon-lits does not journal its commands (--replicated): a failover now would lose the {orders_behind} \
             commands of orders not copied yet, and dev-materiels' state could not be rebuilt without its headers"
        ))
        .into_response();
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ready",
            "lost": 0,
            "sent_again": api.view.journal_len() + api.view.pending_count(),
            "answered_not_copied": api.view.journal_answered_len(),
            "decided_again": lag.records(&watch.topics()[1]),
            "lag_seconds": lag.seconds(),
            "lag": lag.topics,
            "measured_ms": lag.measured_ms,
        }),
    )
}

/// Ready unless the schema registry (when one is configured) did not answer its last call: a
/// writer schema not seen yet could not be read.
async fn ready(State(api): State<Arc<Api>>) -> Response {
    match api.schema_registry.as_ref().filter(|h| !h.is_reachable()) {
        None => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Some(health) => Problem::unavailable(format!(
            "not ready: the schema registry is unreachable ({} failed calls): {}",
            health.failures(),
            health.last_error().unwrap_or_default()
        ))
        .into_response(),
    }
}

/// The routes of wagon-lits' API (before [`http_fallback::layered`]).
pub fn router(api: Arc<Api>) -> Router {
    let ops = crate::ops::router(api.ops.clone());
    Router::new()
        .route("/orders", post(place).get(list))
        .route("/orders/counts", get(counts))
        .route("/orders/{id}", get(order))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/orders/{id}/confirm-delivery", post(confirm))
        .route("/status", get(status))
        .route(
            "/metrics",
            get(|State(api): State<Arc<Api>>| async move {
                api.sender.refresh_pending_gauges();
                metrics_response(&api.registry)
            }),
        )
        .route("/healthz", get(|| async { json(StatusCode::OK, &serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/readyz/failover", get(failover_ready))
        .route_layer(middleware::from_fn(traced))
        .with_state(api)
        .nest("/ops", ops)
}

/// The span of a command request: a child of the caller's `traceparent`, or a new trace, handed
/// to the handler (it goes on the command's record) and recorded once the answer is known.
async fn traced(mut request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let started = SystemTime::now();
    let caller = request.headers().get(TRACEPARENT).and_then(|v| TraceParent::from_bytes(v.as_bytes()));
    let trace = caller.map_or_else(TraceParent::root, |parent| parent.child());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "other".to_string(), |m| m.as_str().to_string());
    request.extensions_mut().insert(trace);
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    engine::otel::span(route.clone(), opentelemetry::trace::SpanKind::Server, &trace, caller.as_ref(), started, || {
        vec![
            opentelemetry::KeyValue::new("http.request.method", "POST"),
            opentelemetry::KeyValue::new("http.route", route.clone()),
            opentelemetry::KeyValue::new("http.response.status_code", i64::from(response.status().as_u16())),
        ]
    });
    response
}

/// The `Idempotency-Key` header, if any: it becomes the command id, so a client that retries a
/// command after a lost answer (a timeout, a restart of wagon-lits) sends the same command again,
/// and dev-materiels applies it once.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else { return Ok(IdempotencyKey(None)) };
        let key = value.to_str().map_err(|_| Problem::bad_request("Idempotency-Key is not visible ASCII"))?;
        check_id("Idempotency-Key", key)?;
        Ok(IdempotencyKey(Some(key.to_string())))
    }
}

/// The query of `GET /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

async fn place(
    State(api): State<Arc<Api>>,
    Extension(trace): Extension<TraceParent>,
    IdempotencyKey(key): IdempotencyKey,
    body: Bytes,
) -> Result<Response, Problem> {
    api.place(&body, key, &trace).await
}

async fn cancel(
    State(api): State<Arc<Api>>,
    Extension(trace): Extension<TraceParent>,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    api.cancel(&id, &body, key, &trace).await
}

async fn confirm(
    State(api): State<Arc<Api>>,
    Extension(trace): Extension<TraceParent>,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    api.confirm(&id, key, &trace).await
}

async fn list(State(api): State<Arc<Api>>, Query(query): Query<ListQuery>) -> Result<Response, Problem> {
    api.list(query)
}

async fn counts(State(api): State<Arc<Api>>) -> Response {
    api.counts()
}

async fn order(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Result<Response, Problem> {
    api.get(&id)
}

async fn status(State(api): State<Arc<Api>>) -> Response {
    api.status()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("invalid request body: {e}")))
}

fn check_id(field: &str, value: &str) -> Result<(), Problem> {
    if value.trim().is_empty() {
        return Err(Problem::unprocessable(format!("{field} is empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Problem::unprocessable(format!("{field} is longer than {MAX_ID_LEN} bytes")));
    }
    if value.chars().any(|c| c.is_control() || c == '/') {
        return Err(Problem::unprocessable(format!("{field} contains '/' or control characters")));
    }
    Ok(())
}

impl Api {
    async fn place(&self, body: &[u8], key: Option<String>, trace: &TraceParent) -> Result<Response, Problem> {
        let request: PlaceOrderRequest = parse(body)?;
        let order_id = request.order_id.unwrap_or_else(|| format!("ORD-{}", uuid::Uuid::new_v4()));
        check_id("order_id", &order_id)?;
        check_id("wagon_id", &request.wagon_id)?;
        check_id("requested_by", &request.requested_by)?;
        if self.view.read(&order_id).map_err(internal)?.is_some_and(|row| row.update.status.is_some()) {
            return Err(Problem::new(StatusCode::CONFLICT, "order-exists", format!("order {order_id} already exists")));
        }
        let place = PlaceOrder { wagon_id: request.wagon_id, requested_by: request.requested_by, lines: request.lines };
        self.send(order_id, Command::PlaceOrder(place), key, trace).await
    }

    async fn cancel(
        &self,
        order_id: &str,
        body: &[u8],
        key: Option<String>,
        trace: &TraceParent,
    ) -> Result<Response, Problem> {
        let request: CancelRequest = parse(body)?;
        check_id("reason", &request.reason)?;
        let command = Command::CancelOrder { reason: request.reason };
        self.check_transition(order_id, &command)?;
        self.send(order_id.to_string(), command, key, trace).await
    }

    async fn confirm(&self, order_id: &str, key: Option<String>, trace: &TraceParent) -> Result<Response, Problem> {
        let command = Command::ConfirmDelivery {};
        self.check_transition(order_id, &command)?;
        self.send(order_id.to_string(), command, key, trace).await
    }

    /// Refuses, before anything is sent, a command the view says cannot apply.
    fn check_transition(&self, order_id: &str, command: &Command) -> Result<(), Problem> {
        let row = self.view.read(order_id).map_err(internal)?;
        let Some(status) = row.and_then(|r| r.update.status) else {
            return Err(Problem::not_found(format!("no order {order_id}")));
        };
        if let Some(reason) = status_refusal(Some(status), command) {
            return Err(Problem::new(StatusCode::CONFLICT, "invalid-transition", reason));
        }
        Ok(())
    }

    /// Sends a command under the caller's idempotency key, or a new id, in span `trace`; the
    /// answer names the span in its `traceparent` header.
    async fn send(
        &self,
        order_id: String,
        command: Command,
        key: Option<String>,
        trace: &TraceParent,
    ) -> Result<Response, Problem> {
        let command_id = key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let envelope = CommandEnvelope::new(command_id, order_id, now_ms(), command);
        match self.sender.send(&envelope, trace).await {
            Ok(sent) => Ok(json(
                StatusCode::ACCEPTED,
                &Accepted {
                    order_id: envelope.order_id,
                    command_id: envelope.command_id,
                    path: sent.path,
                    updates: sent.updates,
                    provisional: sent.provisional,
                },
            )),
            Err(SendError::Refused(problem)) => Err(problem),
            Err(err @ SendError::Pending { .. }) => {
                let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "earlier-command-pending", err.to_string());
                let mut response = problem.into_response();
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                Ok(response)
            }
            Err(err @ SendError::Unavailable(_)) => Err(Problem::unavailable(err.to_string())),
            Err(err @ SendError::Encode(_)) => {
                Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string()))
            }
        }
    }

    fn get(&self, order_id: &str) -> Result<Response, Problem> {
        match self.view.read(order_id).map_err(internal)? {
            Some(row) => Ok(json(StatusCode::OK, &Shown { update: row.update, provisional: row.provisional })),
            None => Err(Problem::not_found(format!("no order {order_id}"))),
        }
    }

    fn list(&self, query: ListQuery) -> Result<Response, Problem> {
        let status = query.status.map(|s| s.parse::<OrderStatus>().map_err(Problem::bad_request)).transpose()?;
        let after = query.after;
        let limit = match query.limit {
            None => 50,
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| Problem::bad_request(format!("limit must be 1..={MAX_PAGE}")))?,
        };
        let status = status.ok_or_else(|| Problem::bad_request("status is required"))?;
        let orders = self.view.list_by_status(status, after.as_deref(), limit).map_err(internal)?;
        let next_after = (orders.len() == limit).then(|| orders.last().map(|r| r.order_id.clone())).flatten();
        Ok(json(StatusCode::OK, &Page { orders, next_after }))
    }

    fn counts(&self) -> Response {
        let counts: std::collections::BTreeMap<String, u64> =
            self.view.counts().into_iter().map(|(status, n)| (status.to_string(), n)).collect();
        json(StatusCode::OK, &counts)
    }

    fn status(&self) -> Response {
        let breaker = self.sender.breaker.state();
        let path = if breaker == BreakerState::Open { CommandPath::Http } else { CommandPath::Kafka };
        let m = &self.sender.metrics;
        json(
            StatusCode::OK,
            &serde_json::json!({
                "breaker": breaker,
                "path": path,
                "via_kafka": m.via_kafka.get(),
                "via_http": m.via_http.get(),
                "kafka_failures": m.kafka_failures.get(),
            }),
        )
    }
}

fn internal(err: state::StoreError) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string())
}
