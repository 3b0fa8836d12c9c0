//! The HTTP server both services run.
//!
//! Before a request reaches the service's handler, the server has:
//! - checked `Authorization: Bearer <token>` against the shared token in constant time (401
//!   otherwise), except on the public paths (health checks);
//! - read the whole body within the size limit (413 past it, whatever `Content-Length` says);
//! - bounded the time to read the request head (slow clients are dropped) and the time the
//!   handler may take (503 past it).
//!
//! On shutdown it stops accepting, lets in-flight requests finish (up to a grace period), then
//! returns.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::HttpMetrics;
use crate::problem::Problem;
use crate::secret::Secret;

/// A request whose body has been read.
pub type Request = hyper::Request<Bytes>;
pub type Response = hyper::Response<Full<Bytes>>;
/// What a service does with a request.
pub type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

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

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
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
                let for_service = Arc::clone(&config);
                let handler = Arc::clone(&handler);
                let service = service_fn(move |req| {
                    let config = Arc::clone(&for_service);
                    let handler = Arc::clone(&handler);
                    async move { Ok::<_, Infallible>(handle(req, peer, &config, handler).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(config.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service);
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

async fn handle(req: hyper::Request<Incoming>, peer: SocketAddr, config: &ServerConfig, handler: Handler) -> Response {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = checked(req, peer, config, handler).await;
    tracing::debug!(%peer, %method, %path, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    if let Some(metrics) = &config.metrics {
        metrics.observe(&method, &path, response.status(), started.elapsed());
    }
    response
}

/// The checks of the module's description, then the handler.
async fn checked(req: hyper::Request<Incoming>, peer: SocketAddr, config: &ServerConfig, handler: Handler) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(token) = &config.token {
        if !config.public_paths.contains(&path) {
            let presented = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            let browser = config.browser.as_ref().filter(|b| path.starts_with(&b.prefix));
            let from_cookie = browser.is_some() && cookie(&req, TOKEN_COOKIE).is_some_and(|c| token.matches(c));
            if !token.matches(presented) && !from_cookie {
                if let Some(browser) = browser {
                    let mut response = hyper::Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = StatusCode::SEE_OTHER;
                    if let Ok(login) = HeaderValue::from_str(&browser.login) {
                        response.headers_mut().insert(hyper::header::LOCATION, login);
                    }
                    return response;
                }
                tracing::debug!(%peer, %method, %path, "rejected: missing or wrong bearer token");
                let mut response =
                    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
                        .into_response();
                response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        }
    }
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body_bytes as u64) {
        return too_large(config.max_body_bytes);
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, config.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return too_large(config.max_body_bytes)
        }
        Err(err) => return Problem::bad_request(format!("could not read the request body: {err}")).into_response(),
    };
    let request = hyper::Request::from_parts(parts, body);
    match tokio::time::timeout(config.request_timeout, handler(request)).await {
        Ok(response) => response,
        Err(_) => Problem::unavailable(format!("no answer within {:?}", config.request_timeout)).into_response(),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'r>(req: &'r hyper::Request<Incoming>, name: &str) -> Option<&'r str> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn too_large(limit: usize) -> Response {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("the request body is larger than {limit} bytes"),
    )
    .into_response()
}
