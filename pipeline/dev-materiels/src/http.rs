//! dev-materiels over HTTP: the fallback path for commands, and interactive queries.
//!
//! - `POST /v1/commands`: a command envelope, as on `orders`. It runs on the stream thread, on
//!   the task that owns the order, and the answer carries the update(s) it produced, already
//!   durable in the outbox (provisional until `order-updates` carries them). 400 for a body that
//!   is not a command, 422 for one that fails validation, 503 when the order's task is not here
//!   or its state is not settled yet.
//! - `GET /v1/orders/{id}`: the order's state in its state store (404 if none).
//! - `GET /v1/status`: the stream thread's counters (records, commits, outbox...).
//! - `GET /metrics`: Prometheus metrics ([`engine::metrics`]).
//! - `GET /healthz` (the process answers), `GET /readyz` (ready once the group has assigned
//!   partitions and every one of them is restored, and the schema registry, if one is
//!   configured, answers).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use engine::runtime::direct::{DirectHandle, DirectRefusal};
use engine::runtime::StreamMetrics;
use http_fallback::{json, metrics_response, Problem};
use prometheus_client::registry::Registry;
use state::{validate_envelope, CommandEnvelope};
use wire::avro::RegistryHealth;
use wire::fallback::COMMANDS_PATH;
use wire::{TraceParent, TRACEPARENT};

/// What the handlers share.
#[derive(Clone)]
struct Endpoint {
    direct: DirectHandle,
    metrics: Arc<StreamMetrics>,
    registry: Arc<Registry>,
    /// The schema registry's health, when one is configured.
    schema_registry: Option<Arc<RegistryHealth>>,
}

/// The routes of dev-materiels' HTTP server (before [`http_fallback::layered`]).
pub fn router(
    direct: DirectHandle,
    metrics: Arc<StreamMetrics>,
    registry: Arc<Registry>,
    schema_registry: Option<Arc<RegistryHealth>>,
) -> Router {
    Router::new()
        .route(COMMANDS_PATH, post(command))
        .route("/v1/orders/{id}", get(query))
        .route("/v1/status", get(status))
        .route("/metrics", get(|State(e): State<Endpoint>| async move { metrics_response(&e.registry) }))
        .route("/healthz", get(|| async { json(StatusCode::OK, &serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .with_state(Endpoint { direct, metrics, registry, schema_registry })
}

async fn command(State(e): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(trace) = headers.get(TRACEPARENT).and_then(|v| TraceParent::from_bytes(v.as_bytes())) {
        tracing::debug!(trace_id = %trace.trace_id(), "command over HTTP");
    }
    let envelope: CommandEnvelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(err) => return Problem::bad_request(format!("not a command: {err}")).into_response(),
    };
    if let Err(invalid) = validate_envelope(&envelope) {
        return Problem::unprocessable(invalid.to_string()).into_response();
    }
    match e.direct.command(envelope).await {
        Ok(reply) => json(StatusCode::OK, &reply),
        Err(refusal) => refusal_response(refusal),
    }
}

async fn query(State(e): State<Endpoint>, Path(order_id): Path<String>) -> Response {
    match e.direct.query(order_id.clone()).await {
        Ok(reply) if reply.state.is_some() => json(StatusCode::OK, &reply),
        Ok(_) => Problem::not_found(format!("no order {order_id}")).into_response(),
        Err(refusal) => refusal_response(refusal),
    }
}

async fn status(State(e): State<Endpoint>) -> Response {
    json(StatusCode::OK, &e.metrics.snapshot())
}

async fn ready(State(e): State<Endpoint>) -> Response {
    if let Some(health) = e.schema_registry.as_ref().filter(|h| !h.is_reachable()) {
        let why = health.last_error().unwrap_or_default();
        let detail =
            format!("not ready: the schema registry is unreachable ({} failed calls): {why}", health.failures());
        return Problem::unavailable(detail).into_response();
    }
    if e.metrics.is_ready() {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        let restoring = e.metrics.partitions_restoring.get();
        Problem::unavailable(format!("not ready: no assignment yet, or {restoring} partition(s) restoring"))
            .into_response()
    }
}

fn refusal_response(refusal: DirectRefusal) -> Response {
    let slug = match refusal {
        DirectRefusal::NotOwner { .. } => "not-owner",
        DirectRefusal::Busy => "busy",
        DirectRefusal::Stopping => "stopping",
        DirectRefusal::Failed(_) => {
            return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", refusal.to_string()).into_response()
        }
    };
    let mut response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, slug, refusal.to_string()).into_response();
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
