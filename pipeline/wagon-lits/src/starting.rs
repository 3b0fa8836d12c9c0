//! While wagon-lits waits for its schema registry at start, its API address already answers
//! `GET /healthz`, `GET /readyz` (503, saying why) and `GET /metrics` (the registry's health), so
//! that an outage at start shows where an operator looks. The API itself starts on the same
//! address once the registry has answered (the view and the producer need it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_fallback::{json, metrics_response, until_set, Problem, ServerConfig};
use prometheus_client::registry::Registry;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use wire::avro::RegistryHealth;

use crate::WagonLitsError;

/// The server answering while wagon-lits starts.
pub struct Starting {
    stop: Arc<AtomicBool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Starting {
    /// Serves the start-up routes on `addr` until [`Starting::stop`].
    pub fn serve(
        runtime: &Runtime,
        addr: SocketAddr,
        health: Arc<RegistryHealth>,
        config: &ServerConfig,
    ) -> Result<Starting, WagonLitsError> {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|source| WagonLitsError::Listen { addr, source })?;
        let mut metrics = Registry::default();
        metrics.register_collector(Box::new(Arc::clone(&health)));
        let metrics = Arc::new(metrics);
        let router = Router::new()
            .route("/healthz", get(|| async { json(StatusCode::OK, &serde_json::json!({"status": "ok"})) }))
            .route(
                "/readyz",
                get(move || {
                    let health = Arc::clone(&health);
                    async move {
                        let why = match health.last_error() {
                            Some(error) => format!(
                                "the schema registry is unreachable ({} failed calls): {error}",
                                health.failures()
                            ),
                            None => "connecting to the schema registry".to_owned(),
                        };
                        Problem::unavailable(format!("not ready: starting: {why}")).into_response()
                    }
                }),
            )
            .route("/metrics", get(move || async move { metrics_response(&metrics) }));
        let stop = Arc::new(AtomicBool::new(false));
        let until = until_set(Arc::clone(&stop));
        let config = ServerConfig { token: None, metrics: None, browser: None, ..config.clone() };
        let task = runtime.spawn(async move { http_fallback::serve(listener, router, &config, until).await });
        tracing::info!(%addr, "waiting for the schema registry; /readyz says so meanwhile");
        Ok(Starting { stop, task })
    }

    /// Stops it and waits until its address is free again.
    pub fn stop(self, runtime: &Runtime) {
        self.stop.store(true, Ordering::Relaxed);
        match runtime.block_on(self.task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the start-up server failed"),
            Err(e) => tracing::warn!(error = %e, "the start-up server's task failed"),
        }
    }
}
