//! Prometheus metrics of the HTTP server: requests by route, method and status, and how long
//! they took, in the OpenMetrics text format both services serve on `GET /metrics`.
//!
//! Routes are labelled by their template (`/orders/{id}`, axum's matched path), never by the raw
//! path.

use std::time::Duration;

use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The server's request counters and latency histograms.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: DurationFamily,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl HttpMetrics {
    /// Registers the families in `registry` (as `http_requests` and `http_request_duration_seconds`).
    pub fn new(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: DurationFamily = Family::new_with_constructor(latency_histogram);
        registry.register("http_requests", "HTTP requests answered, by route, method and status", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head read to its answer, by route and method",
            duration.clone(),
        );
        HttpMetrics { requests, duration }
    }

    /// Counts one answered request to `route` (its template; `other` when no route matched).
    pub fn observe(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let method = method.as_str().to_string();
        let route = route.to_string();
        self.requests
            .get_or_create(&RequestLabels { route: route.clone(), method: method.clone(), status: status.as_u16() })
            .inc();
        self.duration.get_or_create(&RouteLabels { route, method }).observe(elapsed.as_secs_f64());
    }
}

/// The metrics of `registry`, as a `GET /metrics` answer.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return crate::Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("encoding metrics: {err}"))
            .into_response();
    }
    let content_type = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    ([(CONTENT_TYPE, content_type)], text).into_response()
}
