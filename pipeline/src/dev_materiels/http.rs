//! dev-materiels over HTTP: the fallback path for commands, and interactive queries.
//!
//! - `POST /v1/commands`: a command envelope, as on `orders`. It runs on the stream thread, on
//!   the task that owns the order, and the answer carries the update(s) it produced, already
//!   durable in the outbox. 400 for a body that is not a command, 422 for one that fails
//!   validation, 503 when the order's task is not here or its state is not settled yet.
//! - `GET /v1/orders/{id}`: the order's state in its state store (404 if none).
//! - `GET /v1/status`: the stream thread's counters (records, commits, outbox...).
//! - `GET /healthz`, `GET /readyz` (ready once every assigned task is restored).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_fallback::{json, Handler, Problem, Request, Response};
use hyper::{Method, StatusCode};
use state::{validate_envelope, CommandEnvelope};

use crate::runtime::direct::{DirectHandle, DirectRefusal};
use crate::runtime::StreamMetrics;

pub fn handler(direct: DirectHandle, metrics: Arc<StreamMetrics>) -> Handler {
    Arc::new(move |request: Request| {
        let direct = direct.clone();
        let metrics = Arc::clone(&metrics);
        Box::pin(async move { route(request, direct, metrics).await })
    })
}

async fn route(request: Request, direct: DirectHandle, metrics: Arc<StreamMetrics>) -> Response {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::POST, ["v1", "commands"]) => command(request.body(), &direct).await,
        (&Method::GET, ["v1", "orders", id]) => query(id, &direct).await,
        (&Method::GET, ["v1", "status"]) => json(StatusCode::OK, &metrics.snapshot()),
        (&Method::GET, ["healthz"]) => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => {
            if metrics.active_tasks.load(Ordering::Relaxed) > 0 {
                json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
            } else {
                Problem::unavailable("no task restored yet").into_response()
            }
        }
        (_, ["v1", "commands"] | ["v1", "orders", _] | ["v1", "status"] | ["healthz"] | ["readyz"]) => Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{} is not allowed on {path}", request.method()),
        )
        .into_response(),
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
