//! The client one service uses to call the other directly.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::secret::Secret;

/// Why a call got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// An HTTP/1.1 client with a bearer token and a per-call timeout.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    token: Option<Secret>,
    timeout: Duration,
}

impl Client {
    pub fn new(token: Option<Secret>, timeout: Duration) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Client { inner, token, timeout }
    }

    /// Sends `body` as JSON and returns the status and body of the answer.
    pub async fn post_json(&self, url: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes), ClientError> {
        self.call(Method::POST, url, Some(body), &[]).await
    }

    /// [`Client::post_json`] with extra headers (an `Idempotency-Key`, typically).
    pub async fn post_json_with(
        &self,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.call(Method::POST, url, Some(body), headers).await
    }

    pub async fn get(&self, url: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.call(Method::GET, url, None, &[]).await
    }

    /// One request, tried a second time if it failed before any answer (a pooled connection the
    /// server had just closed, typically). Safe here: the services' commands are idempotent by
    /// command id.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        match self.call_once(method.clone(), url, body.clone(), headers).await {
            Err(ClientError::Request { .. }) => self.call_once(method, url, body, headers).await,
            other => other,
        }
    }

    async fn call_once(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let mut request = hyper::Request::builder().method(method).uri(uri);
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| ClientError::Url {
                url: url.to_string(),
                reason: "the token is not a valid header value".into(),
            })?;
            request = request.header(AUTHORIZATION, value);
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Url { url: url.to_string(), reason: e.to_string() })?;
        let call = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| ClientError::Request { url: url.to_string(), reason: e.to_string() })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Request { url: url.to_string(), reason: e.to_string() })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout { url: url.to_string(), timeout: self.timeout })?
    }
}
