//! A client of a Confluent-compatible schema registry (Apicurio's `/apis/ccompat/v7`, Confluent's
//! own, Karapace): the few calls the services and `dev-materiels schemas` make. Blocking: it is
//! called from the stream threads, the view's thread and the command line, never from async code.
//!
//! Plain HTTP only: no TLS client is built in (see docs/operations.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::Deserialize;

/// The content type of the registry's API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("schema registry {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("schema registry {url}: unreadable answer: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("schema registry {url}: no schema with id {id}")]
    UnknownId { url: String, id: u32 },
    #[error(
        "schema registry refused the schema for subject {subject} (incompatible with its {level} rule): {message}"
    )]
    Incompatible { subject: String, level: String, message: String },
    #[error("invalid schema registry URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

impl RegistryError {
    /// Whether trying again later may succeed (the registry down or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// What the registry says of a schema against a subject's versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatibilityAnswer {
    pub compatible: bool,
    /// The registry's reasons, when it gives them.
    pub messages: Vec<String>,
}

/// What a service shows of its registry: whether the last call got an answer, and how many did
/// not. Shared by every clone of a [`Registry`]; on `/metrics` as `rail_schema_registry_reachable`
/// and `rail_schema_registry_failures_total` once registered as a collector.
#[derive(Debug, Default)]
pub struct RegistryHealth {
    unreachable: AtomicBool,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RegistryHealth {
    /// Whether the last call got an answer (true before any call).
    pub fn is_reachable(&self) -> bool {
        !self.unreachable.load(Ordering::Relaxed)
    }

    /// Calls that got no answer (or a 5xx) so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Why the last failed call failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn answered(&self) {
        self.unreachable.store(false, Ordering::Relaxed);
    }

    fn failed(&self, error: &RegistryError) {
        self.unreachable.store(true, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }
}

impl Collector for RegistryHealth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reachable = ConstGauge::new(i64::from(self.is_reachable()));
        let metric = encoder.encode_descriptor(
            "rail_schema_registry_reachable",
            "1 if the schema registry answered the last call, 0 if it did not",
            None,
            reachable.metric_type(),
        )?;
        reachable.encode(metric)?;
        let failures = ConstCounter::new(self.failures());
        let metric = encoder.encode_descriptor(
            "rail_schema_registry_failures",
            "Calls to the schema registry that got no answer or a server error",
            None,
            failures.metric_type(),
        )?;
        failures.encode(metric)
    }
}

/// A schema registry, by its base URL (up to and including `/apis/ccompat/v7` for Apicurio).
#[derive(Clone)]
pub struct Registry {
    base: String,
    http: Client,
    health: Arc<RegistryHealth>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("base", &self.base).finish()
    }
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct VersionAnswer {
    id: u32,
    schema: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigAnswer {
    #[serde(alias = "compatibility")]
    compatibility_level: String,
}

#[derive(Deserialize)]
struct CompatibilityBody {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

/// A subject name in a URL path (topic names are `[a-zA-Z0-9._-]`, which need no escaping;
/// anything else is escaped anyway).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl Registry {
    /// A client of the registry at `url`, each call bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Registry, RegistryError> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RegistryError::BadUrl { url: url.to_owned(), reason: "expected http://host:port/...".into() });
        }
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RegistryError::BadUrl { url: url.to_owned(), reason: e.to_string() })?;
        Ok(Registry { base, http, health: Arc::default() })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Its health, as the calls so far found it.
    pub fn health(&self) -> Arc<RegistryHealth> {
        Arc::clone(&self.health)
    }

    fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, url: &str, request: RequestBuilder) -> Result<Response, RegistryError> {
        match request.header(reqwest::header::ACCEPT, CONTENT_TYPE).send() {
            Ok(response) => Ok(response),
            Err(e) => {
                let error = RegistryError::Unreachable { url: url.to_owned(), reason: error_chain(&e) };
                self.health.failed(&error);
                Err(error)
            }
        }
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, url: &str, response: Response) -> Result<T, RegistryError> {
        let status = response.status();
        let bytes = response.bytes().map_err(|e| {
            let error = RegistryError::Unreachable { url: url.to_owned(), reason: error_chain(&e) };
            self.health.failed(&error);
            error
        })?;
        if !status.is_success() {
            let error = RegistryError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            };
            if error.is_transient() {
                self.health.failed(&error);
            } else {
                self.health.answered();
            }
            return Err(error);
        }
        self.health.answered();
        serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::BadAnswer { url: url.to_owned(), reason: e.to_string() })
    }

    fn post<T: for<'de> Deserialize<'de>>(&self, path: &str, body: &serde_json::Value) -> Result<T, RegistryError> {
        let url = self.url_of(path);
        let response = self.send(
            &url,
            self.http.post(&url).header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE).body(body.to_string()),
        )?;
        self.read(&url, response)
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, RegistryError> {
        let url = self.url_of(path);
        let response = self.send(&url, self.http.get(&url))?;
        self.read(&url, response)
    }

    /// Whether the registry answers at all (`GET /subjects`).
    pub fn ping(&self) -> Result<(), RegistryError> {
        self.get::<serde_json::Value>("/subjects").map(|_| ())
    }

    /// The schema (its JSON text) registered under `id`.
    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        match self.get::<SchemaAnswer>(&format!("/schemas/ids/{id}")) {
            Ok(answer) => Ok(answer.schema),
            Err(RegistryError::Status { status: 404, url, .. }) => Err(RegistryError::UnknownId { url, id }),
            Err(e) => Err(e),
        }
    }

    /// Registers `schema` under `subject` (nothing new if it is there already) and returns its
    /// id. A schema the subject's compatibility rule refuses is [`RegistryError::Incompatible`].
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", path_segment(subject));
        match self.post::<IdAnswer>(&path, &serde_json::json!({ "schema": schema })) {
            Ok(answer) => Ok(answer.id),
            Err(RegistryError::Status { status: 409, body, .. }) => Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                level: self.compatibility(subject).ok().flatten().unwrap_or_else(|| "compatibility".into()),
                message: body,
            }),
            Err(e) => Err(e),
        }
    }

    /// The id of `schema` under `subject`, if it is registered there.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let path = format!("/subjects/{}", path_segment(subject));
        match self.post::<IdAnswer>(&path, &serde_json::json!({ "schema": schema })) {
            Ok(answer) => Ok(Some(answer.id)),
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The versions registered under `subject`, oldest first (none if the subject is unknown).
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        match self.get::<Vec<u32>>(&format!("/subjects/{}/versions", path_segment(subject))) {
            Ok(mut versions) => {
                versions.sort_unstable();
                Ok(versions)
            }
            Err(RegistryError::Status { status: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The id and schema of one version of `subject`.
    pub fn version(&self, subject: &str, version: u32) -> Result<(u32, String), RegistryError> {
        let answer: VersionAnswer = self.get(&format!("/subjects/{}/versions/{version}", path_segment(subject)))?;
        Ok((answer.id, answer.schema))
    }

    /// The compatibility level set on `subject` itself, if any.
    pub fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        match self.get::<ConfigAnswer>(&format!("/config/{}", path_segment(subject))) {
            Ok(answer) => Ok(Some(answer.compatibility_level)),
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the compatibility level of `subject` (`FULL_TRANSITIVE` and the like).
    pub fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let url = self.url_of(&format!("/config/{}", path_segment(subject)));
        let response = self.send(
            &url,
            self.http
                .put(&url)
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(serde_json::json!({ "compatibility": level }).to_string()),
        )?;
        self.read::<serde_json::Value>(&url, response).map(|_| ())
    }

    /// Whether `schema` could be registered under `subject` now (its rule checked against the
    /// versions there; compatible when the subject has none).
    pub fn check(&self, subject: &str, schema: &str) -> Result<CompatibilityAnswer, RegistryError> {
        let path = format!("/compatibility/subjects/{}/versions/latest?verbose=true", path_segment(subject));
        match self.post::<CompatibilityBody>(&path, &serde_json::json!({ "schema": schema })) {
            Ok(body) => Ok(CompatibilityAnswer { compatible: body.is_compatible, messages: body.messages }),
            Err(RegistryError::Status { status: 404, .. }) => {
                Ok(CompatibilityAnswer { compatible: true, messages: vec![] })
            }
            Err(RegistryError::Status { status: 409, body, .. }) => {
                Ok(CompatibilityAnswer { compatible: false, messages: vec![body] })
            }
            Err(e) => Err(e),
        }
    }
}

/// An error and its causes on one line (reqwest's own message is only the outermost).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
