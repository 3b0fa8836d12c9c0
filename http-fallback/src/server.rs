//! The HTTP server both services run: an axum [`Router`] of the service's routes, wrapped in the
//! layers both share, served by hyper.
//!
//! Before a request reaches the service's handler, the layers have:
//! - checked `Authorization: Bearer <token>` against the shared token in constant time (401
//!   otherwise), except on the public paths (health checks); under the browser pages' prefix the
//!   token may come in the [`TOKEN_COOKIE`] cookie instead, and a request with neither is sent to
//!   the sign-in page;
//! - bounded the body (413 past the limit, whatever `Content-Length` says) and the time the
//!   handler may take (503 past it);
//! - and afterwards turned every refusal into an `application/problem+json` body (axum's own
//!   rejections, 404 and 405 included), and counted the request by its matched route.
//!
//! [`serve`] bounds the time to read a request head (slow clients are dropped), and on shutdown
//! stops accepting, lets in-flight requests finish (up to a grace period), then returns.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::HttpMetrics;
use crate::problem::{Problem, PROBLEM_JSON};
use crate::secret::Secret;

/// Limits and credentials of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The bearer token clients must present; `None` disables the check.
    pub token: Option<Secret>,
    /// Paths served without a token (health checks).
    pub public_paths: Vec<String>,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Where answered requests are counted, if anywhere.
    pub metrics: Option<HttpMetrics>,
    /// Pages for browsers, which cannot send the bearer header: requests under `prefix` may
    /// carry the token in the [`TOKEN_COOKIE`] cookie instead, and are sent to `login` (a public
    /// path that sets it) when they carry neither.
    pub browser: Option<BrowserPages>,
}

/// See [`ServerConfig::browser`].
#[derive(Debug, Clone)]
pub struct BrowserPages {
    pub prefix: String,
    pub login: String,
}

/// The cookie that carries the token for [`BrowserPages`].
pub const TOKEN_COOKIE: &str = "rail_token";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            public_paths: vec!["/healthz".into(), "/readyz".into(), "/metrics".into()],
            max_body_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
            metrics: None,
            browser: None,
        }
    }
}

/// A JSON response. A value that cannot be encoded is a 500 with its reason, never an empty body.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(err) => {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot encode the answer: {err}"))
                .into_response()
        }
    }
}

/// Wraps a service's routes in the layers of the module's description.
pub fn layered(routes: Router, config: &ServerConfig) -> Router {
    let config = Arc::new(config.clone());
    routes
        .fallback(no_route)
        // tower-http's limit refuses a declared Content-Length past it at once, and cuts a chunked
        // body off while it is read; axum's own (2 MB by default) steps aside.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, config.request_timeout))
        .layer(middleware::from_fn_with_state(Arc::clone(&config), authenticate))
        .layer(middleware::map_response(problem_bodies))
        .layer(middleware::from_fn_with_state(config, observe))
}

async fn no_route(request: Request) -> Problem {
    Problem::not_found(format!("no route for {}", request.uri().path()))
}

/// The token check: the bearer header, or the cookie on browser pages.
async fn authenticate(State(config): State<Arc<ServerConfig>>, request: Request, next: Next) -> Response {
    let Some(token) = &config.token else { return next.run(request).await };
    let path = request.uri().path();
    if config.public_paths.iter().any(|p| p == path) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let browser = config.browser.as_ref().filter(|b| path.starts_with(&b.prefix));
    let from_cookie = browser.is_some() && cookie(&request, TOKEN_COOKIE).is_some_and(|c| token.matches(&c));
    if token.matches(presented) || from_cookie {
        return next.run(request).await;
    }
    if let Some(browser) = browser {
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(login) = HeaderValue::from_str(&browser.login) {
            response.headers_mut().insert(LOCATION, login);
        }
        return response;
    }
    tracing::debug!(method = %request.method(), path, "rejected: missing or wrong bearer token");
    let mut response =
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required").into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// Every refusal as problem details: the services' own are already; axum's rejections (a body
/// past the limit, a wrong method, a bad path segment) and the timeout's are made so here.
async fn problem_bodies(response: Response) -> Response {
    let status = response.status();
    let is_problem = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem || status == StatusCode::SEE_OTHER {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let detail = match (status, text) {
        (StatusCode::SERVICE_UNAVAILABLE, Ok(t)) if t.is_empty() => "no answer in time".to_string(),
        (StatusCode::METHOD_NOT_ALLOWED, _) => "this method is not allowed on this path".to_string(),
        (_, Ok(t)) if !t.is_empty() => t,
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let slug = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::NOT_FOUND => "not-found",
        s if s.is_server_error() => "internal",
        _ => "malformed-request",
    };
    let mut problem = Problem::new(status, slug, detail).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

/// Counts the request by its route template (never its raw path) and logs it.
async fn observe(State(config): State<Arc<ServerConfig>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "other".to_string(), |m| m.as_str().to_string());
    let response = next.run(request).await;
    tracing::debug!(%method, %route, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    if let Some(metrics) = &config.metrics {
        metrics.observe(&route, &method, response.status(), started.elapsed());
    }
    response
}

/// Serves `router` (made with [`layered`]) on `listener` until `shutdown` completes, then drains
/// in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(config.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("HTTP server stopped; in-flight requests finished"),
        () = tokio::time::sleep(config.shutdown_grace) => tracing::warn!("HTTP server stopped with requests still in flight"),
    }
    Ok(())
}

/// A body of bytes, for tests and handlers that build responses by hand.
pub fn body(bytes: impl Into<axum::body::Bytes>) -> Body {
    Body::from(bytes.into())
}
