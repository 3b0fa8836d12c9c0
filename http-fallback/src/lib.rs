//! The HTTP plumbing of wagon-lits and dev-materiels, on hyper 1.x.
//!
//! - [`server`]: an HTTP/1.1 server that checks the bearer token (in constant time), bounds the
//!   body size (413), the time to read headers and the time to answer, turns every error into an
//!   `application/problem+json` body, and shuts down gracefully, finishing in-flight requests;
//! - [`client`]: the client one service uses to reach the other when Kafka is not there;
//! - [`metrics`]: Prometheus counters and latency histograms of the requests, and `/metrics`;
//! - [`problem`]: RFC 9457 problem details;
//! - [`secret`]: the shared token, loaded from the environment or a file, never printed.

pub mod client;
pub mod metrics;
pub mod problem;
pub mod secret;
pub mod server;

pub use client::{Client, ClientError};
pub use metrics::{metrics_response, HttpMetrics, RouteOf};
pub use problem::Problem;
pub use secret::Secret;
pub use server::{json, serve, BrowserPages, Handler, Request, Response, ServerConfig, TOKEN_COOKIE};
