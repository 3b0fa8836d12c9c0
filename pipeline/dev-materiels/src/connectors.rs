//! The Kafka Connect connectors of the system (`deploy/connect/*.json`: the catalogue source and
//! the orders sink), applied to a running Connect worker through its REST API, and their status
//! (`dev-materiels connect apply|status`, docs/integration.md).
//!
//! Applying is idempotent: each connector's configuration is `PUT` to
//! `/connectors/<name>/config`, which creates it or replaces its configuration (Connect restarts
//! it only if the configuration changed).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A connector: its name and configuration, as the files in `deploy/connect/` hold them
/// (`{"name": ..., "config": {...}}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Connector {
    pub name: String,
    pub config: serde_json::Map<String, Value>,
}

/// The connector files of this build (`deploy/connect/`).
const BUILTIN: &[(&str, &str)] = &[
    ("catalogue-source.json", include_str!("../../../deploy/connect/catalogue-source.json")),
    ("orders-sink.json", include_str!("../../../deploy/connect/orders-sink.json")),
];

/// Why connectors could not be read, applied or checked.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("the Connect worker at {url}: {reason}")]
    Worker { url: String, reason: String },
}

impl Connector {
    fn parse(file: &str, text: &str) -> Result<Connector, ConnectError> {
        let bad = |reason: String| ConnectError::File { file: file.to_string(), reason };
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let name = value.get("name").and_then(Value::as_str).ok_or_else(|| bad("no \"name\"".into()))?;
        let config =
            value.get("config").and_then(Value::as_object).ok_or_else(|| bad("no \"config\" object".into()))?;
        if config.values().any(|v| !v.is_string()) {
            return Err(bad("every value of \"config\" is a string in Connect's API".into()));
        }
        Ok(Connector { name: name.to_string(), config: config.clone() })
    }

    /// The connectors of this build.
    pub fn builtin() -> Result<Vec<Connector>, ConnectError> {
        BUILTIN.iter().map(|(file, text)| Connector::parse(file, text)).collect()
    }

    /// The connectors of `dir/*.json`, by file name.
    pub fn from_dir(dir: &Path) -> Result<Vec<Connector>, ConnectError> {
        let unreadable = |reason: String| ConnectError::File { file: dir.display().to_string(), reason };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| unreadable(e.to_string()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
                Connector::parse(&path.display().to_string(), &text)
            })
            .collect()
    }
}

/// A connector's state and its tasks', as the worker reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorStatus {
    pub name: String,
    /// `RUNNING`, `PAUSED`, `FAILED`, `UNASSIGNED`, ..., or `MISSING` when the worker does not
    /// have it.
    pub state: String,
    pub tasks: Vec<(i64, String)>,
    /// The first lines of a failed connector's or task's trace.
    pub trace: Option<String>,
}

impl ConnectorStatus {
    pub fn running(&self) -> bool {
        self.state == "RUNNING" && !self.tasks.is_empty() && self.tasks.iter().all(|(_, s)| s == "RUNNING")
    }

    pub fn failed(&self) -> bool {
        self.state == "FAILED" || self.tasks.iter().any(|(_, s)| s == "FAILED")
    }
}

impl std::fmt::Display for ConnectorStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks: Vec<String> = self.tasks.iter().map(|(id, state)| format!("task {id} {state}")).collect();
        write!(f, "{}: {}", self.name, self.state)?;
        if !tasks.is_empty() {
            write!(f, " ({})", tasks.join(", "))?;
        }
        if let Some(trace) = &self.trace {
            write!(f, "\n  {}", trace.replace('\n', "\n  "))?;
        }
        Ok(())
    }
}

/// A client of a Connect worker's REST API.
pub struct ConnectClient {
    url: String,
    http: reqwest::blocking::Client,
}

impl ConnectClient {
    pub fn new(url: &str) -> Result<ConnectClient, ConnectError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ConnectError::Worker { url: url.to_string(), reason: e.to_string() })?;
        Ok(ConnectClient { url: url.trim_end_matches('/').to_string(), http })
    }

    fn err(&self, reason: impl std::fmt::Display) -> ConnectError {
        ConnectError::Worker { url: self.url.clone(), reason: reason.to_string() }
    }

    /// Waits until the worker answers (a worker starting takes 20-40 s), up to `patience`.
    pub fn wait_ready(&self, patience: Duration) -> Result<(), ConnectError> {
        let started = Instant::now();
        loop {
            let answer = self.http.get(format!("{}/connectors", self.url)).send();
            match answer {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if started.elapsed() > patience => {
                    return Err(self.err(format!("not ready after {patience:?}: {}", response.status())))
                }
                Err(e) if started.elapsed() > patience => return Err(self.err(e)),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Creates the connector or replaces its configuration; says which.
    pub fn apply(&self, connector: &Connector) -> Result<&'static str, ConnectError> {
        let body = Value::Object(connector.config.clone()).to_string();
        let response = self
            .http
            .put(format!("{}/connectors/{}/config", self.url, connector.name))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .map_err(|e| self.err(e))?;
        let status = response.status();
        let text = response.text().unwrap_or_default();
        match status.as_u16() {
            201 => Ok("created"),
            200 => Ok("configured"),
            _ => Err(self.err(format!("PUT of {} answered {status}: {text}", connector.name))),
        }
    }

    /// The connector's status (`MISSING` if the worker does not have it).
    pub fn status(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        let response =
            self.http.get(format!("{}/connectors/{name}/status", self.url)).send().map_err(|e| self.err(e))?;
        let status = response.status();
        let text = response.text().map_err(|e| self.err(e))?;
        if status.as_u16() == 404 {
            return Ok(ConnectorStatus {
                name: name.to_string(),
                state: "MISSING".into(),
                tasks: Vec::new(),
                trace: None,
            });
        }
        if !status.is_success() {
            return Err(self.err(format!("status of {name} answered {status}: {text}")));
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| self.err(format!("status of {name}: {e}")))?;
        let state = value.pointer("/connector/state").and_then(Value::as_str).unwrap_or("UNKNOWN").to_string();
        let mut trace = value.pointer("/connector/trace").and_then(Value::as_str).map(str::to_string);
        let mut tasks = Vec::new();
        for task in value.get("tasks").and_then(Value::as_array).into_iter().flatten() {
            let id = task.get("id").and_then(Value::as_i64).unwrap_or(-1);
            tasks.push((id, task.get("state").and_then(Value::as_str).unwrap_or("UNKNOWN").to_string()));
            if trace.is_none() {
                trace = task.get("trace").and_then(Value::as_str).map(str::to_string);
            }
        }
        let trace = trace.map(|t| t.lines().take(6).collect::<Vec<_>>().join("\n"));
        Ok(ConnectorStatus { name: name.to_string(), state, tasks, trace })
    }

    /// Waits until every connector runs (or one fails, or `patience` passes); returns their last
    /// statuses.
    pub fn wait_running(&self, names: &[String], patience: Duration) -> Result<Vec<ConnectorStatus>, ConnectError> {
        let started = Instant::now();
        loop {
            let statuses = names.iter().map(|n| self.status(n)).collect::<Result<Vec<_>, _>>()?;
            let settled = statuses.iter().all(|s| s.running() || s.failed());
            if settled || started.elapsed() > patience {
                return Ok(statuses);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Connector;

    #[test]
    fn the_builtin_connectors_parse_and_name_their_environment() {
        let connectors = Connector::builtin().expect("the deploy/connect files parse");
        let names: Vec<&str> = connectors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["catalogue-source", "orders-sink"]);
        for connector in &connectors {
            let text = serde_json::Value::Object(connector.config.clone()).to_string();
            assert!(
                text.contains("${env:RAIL_PG_HOST}"),
                "{} reads the database host from the worker's environment",
                connector.name
            );
        }
        assert!(Connector::parse("x.json", r#"{"name":"x","config":{"tasks.max":1}}"#).is_err(), "numbers are refused");
    }
}
