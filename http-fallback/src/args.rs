//! HTTP server settings from flags and environment, shared by both services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::{Secret, SecretError};
use crate::server::ServerConfig;
use clap::Args;

/// The service's HTTP server.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = "HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Bearer token shared by the services (and the API's clients). Prefer --token-file.
    #[arg(long, env = "RAIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "RAIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes (413 past it).
    #[arg(long, env = "HTTP_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Time allowed to read a request's headers.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,
    /// Time allowed to answer a request.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_MS", default_value_t = 15_000)]
    pub request_timeout_ms: u64,
}

impl HttpArgs {
    pub fn secret(&self) -> Result<Option<Secret>, SecretError> {
        Secret::load(self.token.as_deref(), self.token_file.as_deref())
    }

    pub fn server_config(&self) -> Result<ServerConfig, SecretError> {
        Ok(ServerConfig {
            token: self.secret()?,
            max_body_bytes: self.max_body_bytes,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            ..ServerConfig::default()
        })
    }
}

impl Default for HttpArgs {
    fn default() -> Self {
        HttpArgs {
            http_listen: None,
            token: None,
            token_file: None,
            max_body_bytes: 64 * 1024,
            header_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
        }
    }
}

/// Waits until `flag` is set (the service's shutdown), for the HTTP server's graceful stop.
pub async fn until_set(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
