//! dev-materiels over HTTP: the fallback path for commands, and interactive queries.
//!
//! - `POST /v1/commands`: a command envelope, as on `orders`. It runs on the stream thread, on
//!   the task that owns the order, and the answer carries the update(s) it produced, already
//!   durable in the outbox. 400 for a body that is not a command, 422 for one that fails
//!   validation, 503 when the order's task is not here or its state is not settled yet.
//! - `GET /v1/orders/{id}`: the order's state in its state store (404 if none).
//! - `GET /v1/status`: the stream thread's counters (records, commits, outbox...).
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]).
//! - `GET /healthz` (the process answers), `GET /readyz` (ready once the group has assigned
//!   partitions and every one of them is restored).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_fallback::{json, metrics_response, Handler, Problem, Request, Response};
use hyper::{Method, StatusCode};
use prometheus_client::registry::Registry;
use state::{validate_envelope, CommandEnvelope};

use crate::runtime::direct::{DirectHandle, DirectRefusal};
use crate::runtime::StreamMetrics;

pub fn handler(direct: DirectHandle, metrics: Arc<StreamMetrics>, registry: Arc<Registry>) -> Handler {
    Arc::new(move |request: Request| {
        let direct = direct.clone();
        let metrics = Arc::clone(&metrics);
        let registry = Arc::clone(&registry);
        Box::pin(async move { route(request, direct, metrics, &registry).await })
    })
}

/// The route template of a request, for the HTTP metrics.
pub fn route_of(_: &Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "commands"] => "/v1/commands",
        ["v1", "orders", _] => "/v1/orders/{id}",
        ["v1", "status"] => "/v1/status",
        ["metrics"] => "/metrics",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        _ => "other",
    }
}

async fn route(request: Request, direct: DirectHandle, metrics: Arc<StreamMetrics>, registry: &Registry) -> Response {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::POST, ["v1", "commands"]) => {
            let trace = request
                .headers()
                .get(crate::trace::TRACEPARENT)
                .and_then(|v| crate::trace::TraceParent::from_bytes(v.as_bytes()));
            if let Some(trace) = trace {
                tracing::debug!(trace_id = %trace.trace_id(), "command over HTTP");
            }
            command(request.body(), &direct).await
        }
        (&Method::GET, ["v1", "orders", id]) => query(id, &direct).await,
        (&Method::GET, ["v1", "status"]) => json(StatusCode::OK, &metrics.snapshot()),
        (&Method::GET, ["metrics"]) => metrics_response(registry),
        (&Method::GET, ["healthz"]) => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => {
            if metrics.is_ready() {
                json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
            } else {
                let restoring = metrics.partitions_restoring.load(Ordering::Relaxed);
                Problem::unavailable(format!("not ready: no assignment yet, or {restoring} partition(s) restoring"))
                    .into_response()
            }
        }
        (_, ["v1", "commands"] | ["v1", "orders", _] | ["v1", "status"] | ["metrics"] | ["healthz"] | ["readyz"]) => {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{} is not allowed on {path}", request.method()),
            )
            .into_response()
        }
        _ => Problem::not_found(format!("no route for {path}")).into_response(),
    }
}

async fn command(body: &[u8], direct: &DirectHandle) -> Response {
    let envelope: CommandEnvelope = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(err) => return Problem::bad_request(format!("not a command: {err}")).into_response(),
    };
    if let Err(invalid) = validate_envelope(&envelope) {
        return Problem::unprocessable(invalid.to_string()).into_response();
    }
    match direct.command(envelope).await {
        Ok(reply) => json(StatusCode::OK, &reply),
        Err(refusal) => refusal_response(refusal),
    }
}

async fn query(order_id: &str, direct: &DirectHandle) -> Response {
    match direct.query(order_id.to_string()).await {
        Ok(reply) if reply.state.is_some() => json(StatusCode::OK, &reply),
        Ok(_) => Problem::not_found(format!("no order {order_id}")).into_response(),
        Err(refusal) => refusal_response(refusal),
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
    response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    response
}
