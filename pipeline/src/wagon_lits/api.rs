//! The wagon-lits HTTP API: place, cancel and confirm orders; read them from the view.
//! Described in `docs/openapi.json`; every error is an `application/problem+json` body.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http_fallback::{json, metrics_response, Handler, Problem, Request, Response};
use hyper::{Method, StatusCode};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use state::order::MAX_ID_LEN;
use state::{status_refusal, Command, CommandEnvelope, OrderLine, OrderStatus, OrderUpdate, PlaceOrder, ViewStore};

use super::sender::{BreakerState, CommandSender, Path, SendError};
use crate::trace::{TraceParent, TRACEPARENT};

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
    pub path: Path,
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
    /// The token, to check the operations page's sign-in form; `None` when auth is off.
    pub token: Option<http_fallback::Secret>,
    /// What the operations page (`/ops`) reads Kafka with; `None` turns the page off.
    pub ops: Option<super::ops::OpsConfig>,
}

/// The route template of a request, for the HTTP metrics.
pub fn route_of(_: &Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["orders"] => "/orders",
        ["orders", "counts"] => "/orders/counts",
        ["orders", _] => "/orders/{id}",
        ["orders", _, "cancel"] => "/orders/{id}/cancel",
        ["orders", _, "confirm-delivery"] => "/orders/{id}/confirm-delivery",
        ["status"] => "/status",
        ["metrics"] => "/metrics",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["ops"] => "/ops",
        ["ops", "login"] => "/ops/login",
        ["ops", "orders"] => "/ops/orders",
        ["ops", "orders", _] => "/ops/orders/{id}",
        ["ops", "dlq", "replay"] => "/ops/dlq/replay",
        _ => "other",
    }
}

pub fn handler(api: Arc<Api>) -> Handler {
    Arc::new(move |request: Request| {
        let api = Arc::clone(&api);
        Box::pin(async move { api.route(request).await })
    })
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
    async fn route(&self, request: Request) -> Response {
        let path = request.uri().path().to_string();
        let key = match idempotency_key(&request) {
            Ok(key) => key,
            Err(problem) => return problem.into_response(),
        };
        // The request's span: a child of the caller's `traceparent`, or a new trace.
        let started = std::time::SystemTime::now();
        let caller = request.headers().get(TRACEPARENT).and_then(|v| TraceParent::from_bytes(v.as_bytes()));
        let trace = caller.map_or_else(TraceParent::root, |parent| parent.child());
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if segments.first() == Some(&"ops") {
            return self.ops(request, &segments).await;
        }
        let result = match (request.method(), segments.as_slice()) {
            (&Method::POST, ["orders"]) => self.place(request.body(), key, &trace).await,
            (&Method::GET, ["orders"]) => self.list(request.uri().query().unwrap_or_default()),
            (&Method::GET, ["orders", "counts"]) => Ok(self.counts()),
            (&Method::GET, ["orders", id]) => self.get(id),
            (&Method::POST, ["orders", id, "cancel"]) => self.cancel(id, request.body(), key, &trace).await,
            (&Method::POST, ["orders", id, "confirm-delivery"]) => self.confirm(id, key, &trace).await,
            (&Method::GET, ["status"]) => Ok(self.status()),
            (&Method::GET, ["metrics"]) => Ok(metrics_response(&self.registry)),
            (&Method::GET, ["healthz"]) => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
            (&Method::GET, ["readyz"]) => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ready"}))),
            (
                _,
                ["orders"] | ["orders", _] | ["orders", _, "cancel" | "confirm-delivery"] | ["status"] | ["metrics"],
            ) => Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{} is not allowed on {path}", request.method()),
            )),
            _ => Err(Problem::not_found(format!("no route for {path}"))),
        };
        let response = result.unwrap_or_else(Problem::into_response);
        if request.method() == Method::POST {
            let route = route_of(request.method(), &path);
            crate::otel::span(
                route,
                opentelemetry::trace::SpanKind::Server,
                &trace,
                caller.as_ref(),
                started,
                vec![
                    opentelemetry::KeyValue::new("http.request.method", "POST"),
                    opentelemetry::KeyValue::new("http.route", route),
                    opentelemetry::KeyValue::new("http.response.status_code", i64::from(response.status().as_u16())),
                ],
            );
        }
        response
    }

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
            Ok(sent) => {
                let mut response = json(
                    StatusCode::ACCEPTED,
                    &Accepted {
                        order_id: envelope.order_id,
                        command_id: envelope.command_id,
                        path: sent.path,
                        updates: sent.updates,
                        provisional: sent.provisional,
                    },
                );
                if let Ok(value) = hyper::header::HeaderValue::from_str(&trace.to_string()) {
                    response.headers_mut().insert(TRACEPARENT, value);
                }
                Ok(response)
            }
            Err(SendError::Refused(problem)) => Err(problem),
            Err(err @ SendError::Pending { .. }) => {
                let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "earlier-command-pending", err.to_string());
                let mut response = problem.into_response();
                response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
                Ok(response)
            }
            Err(err @ SendError::Unavailable(_)) => Err(Problem::unavailable(err.to_string())),
        }
    }

    fn get(&self, order_id: &str) -> Result<Response, Problem> {
        match self.view.read(order_id).map_err(internal)? {
            Some(row) => Ok(json(StatusCode::OK, &Shown { update: row.update, provisional: row.provisional })),
            None => Err(Problem::not_found(format!("no order {order_id}"))),
        }
    }

    fn list(&self, query: &str) -> Result<Response, Problem> {
        let mut status = None;
        let mut after = None;
        let mut limit = 50;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "status" => status = Some(value.parse::<OrderStatus>().map_err(Problem::bad_request)?),
                "after" => after = Some(value.to_string()),
                "limit" => {
                    limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| Problem::bad_request(format!("limit must be 1..={MAX_PAGE}")))?
                }
                other => return Err(Problem::bad_request(format!("unknown query parameter {other:?}"))),
            }
        }
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
        let path = if breaker == BreakerState::Open { Path::Http } else { Path::Kafka };
        let m = &self.sender.metrics;
        json(
            StatusCode::OK,
            &serde_json::json!({
                "breaker": breaker,
                "path": path,
                "via_kafka": m.via_kafka.load(std::sync::atomic::Ordering::Relaxed),
                "via_http": m.via_http.load(std::sync::atomic::Ordering::Relaxed),
                "kafka_failures": m.kafka_failures.load(std::sync::atomic::Ordering::Relaxed),
            }),
        )
    }
}

/// The `Idempotency-Key` header, if any: it becomes the command id, so a client that retries a
/// command after a lost answer (a timeout, a restart of wagon-lits) sends the same command again,
/// and dev-materiels applies it once.
fn idempotency_key(request: &Request) -> Result<Option<String>, Problem> {
    let Some(value) = request.headers().get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| Problem::bad_request("Idempotency-Key is not visible ASCII"))?;
    check_id("Idempotency-Key", key)?;
    Ok(Some(key.to_string()))
}

fn internal(err: state::StoreError) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string())
}
