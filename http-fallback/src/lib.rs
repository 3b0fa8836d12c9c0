//! The HTTP plumbing of wagon-lits and dev-materiels, on axum and tower-http (hyper underneath).
//!
//! - [`server`]: the layers both services' routers get (the bearer token in constant time, body
//!   and time limits, problem+json for every refusal, request metrics by matched route) and an
//!   HTTP/1.1 server with a header-read timeout and graceful shutdown;
//! - [`args`]: the server's settings from flags and environment;
//! - [`client`]: the client one service uses to reach the other when Kafka is not there;
//! - [`metrics`]: Prometheus counters and latency histograms of the requests, and `/metrics`;
//! - [`problem`]: RFC 9457 problem details;
//! - [`secret`]: the shared token, loaded from the environment or a file, never printed.

pub mod args;
pub mod client;
pub mod metrics;
pub mod problem;
pub mod secret;
pub mod server;

pub use args::{until_set, HttpArgs};
pub use client::{Client, ClientError};
pub use metrics::{metrics_response, HttpMetrics};
pub use problem::Problem;
pub use secret::Secret;
pub use server::{json, layered, serve, BrowserPages, ServerConfig, TOKEN_COOKIE};
