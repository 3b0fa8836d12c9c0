//! The Kafka Connect connectors of the system (`deploy/connect/*.json`: the catalogue source and
//! the orders sink), applied to a running Connect worker through its REST API, and their status
//! (`dev-materiels connect apply|status|supervise`, docs/integration.md).
//!
//! Applying is idempotent: each connector's configuration is `PUT` to
//! `/connectors/<name>/config`, which creates it or replaces its configuration (Connect restarts
//! it only if the configuration changed).
//!
//! Kafka Connect restarts no failed task by itself: a task that meets an error its connector does
//! not retry (the JDBC sink's database restarted under a statement, a source's database down at
//! the task's start) stays `FAILED` until restarted. [`Supervisor`] is what Strimzi's
//! `autoRestart` does for it: it restarts what failed, backing off while it keeps failing
//! (`dev-materiels connect supervise`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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

    /// Restarts the connector's instance and tasks that are `FAILED` (Connect's
    /// `POST /connectors/<name>/restart?includeTasks=true&onlyFailed=true`); what runs is left
    /// running.
    pub fn restart_failed(&self, name: &str) -> Result<(), ConnectError> {
        let response = self
            .http
            .post(format!("{}/connectors/{name}/restart?includeTasks=true&onlyFailed=true", self.url))
            .send()
            .map_err(|e| self.err(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().unwrap_or_default();
        Err(self.err(format!("restart of {name} answered {status}: {text}")))
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

/// How [`Supervisor`] restarts what failed: at once the first time, then after a delay that
/// doubles from `first_delay` up to `max_delay` while it keeps failing. A connector that has run
/// for `stable_after` since its last restart starts again from the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            stable_after: Duration::from_secs(600),
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `attempt` (0 for the first) of a connector that keeps
    /// failing.
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let doubled = self.first_delay.saturating_mul(1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX));
        doubled.min(self.max_delay)
    }
}

/// A restart the supervisor made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// The connector as it was found, failed (its trace included).
    pub status: ConnectorStatus,
    /// 0 for the first restart since the connector last ran steadily.
    pub attempt: u32,
}

#[derive(Debug, Default)]
struct Attempts {
    count: u32,
    last: Option<Instant>,
}

/// Restarts the connectors' failed instances and tasks, backing off as its [`RestartPolicy`]
/// says; call [`Supervisor::check`] at intervals, or [`Supervisor::run`].
pub struct Supervisor {
    client: ConnectClient,
    names: Vec<String>,
    policy: RestartPolicy,
    attempts: HashMap<String, Attempts>,
}

impl Supervisor {
    pub fn new(client: ConnectClient, names: Vec<String>, policy: RestartPolicy) -> Supervisor {
        Supervisor { client, names, policy, attempts: HashMap::new() }
    }

    /// Looks at each connector once; restarts what failed and is due. Returns the restarts made.
    pub fn check(&mut self) -> Result<Vec<Restart>, ConnectError> {
        let mut restarts = Vec::new();
        for name in &self.names {
            let status = self.client.status(name)?;
            let attempts = self.attempts.entry(name.clone()).or_default();
            let since_last = attempts.last.map(|at| at.elapsed());
            if !status.failed() {
                if status.running() && since_last.is_some_and(|d| d >= self.policy.stable_after) {
                    *attempts = Attempts::default();
                }
                continue;
            }
            if since_last.is_some_and(|d| d >= self.policy.stable_after) {
                *attempts = Attempts::default();
            }
            if since_last.is_some_and(|d| d < self.policy.delay(attempts.count)) {
                continue;
            }
            self.client.restart_failed(name)?;
            restarts.push(Restart { status, attempt: attempts.count });
            attempts.count = attempts.count.saturating_add(1);
            attempts.last = Some(Instant::now());
        }
        Ok(restarts)
    }

    /// Checks every `interval` until `stop` is set; each restart, and each time the worker cannot
    /// be asked, is passed to `report` (the worker unreachable is waited out, not an end).
    pub fn run(
        &mut self,
        interval: Duration,
        stop: &AtomicBool,
        mut report: impl FnMut(Result<&Restart, &ConnectError>),
    ) {
        while !stop.load(Ordering::Relaxed) {
            match self.check() {
                Ok(restarts) => restarts.iter().for_each(|r| report(Ok(r))),
                Err(err) => report(Err(&err)),
            }
            let slept = Instant::now();
            while slept.elapsed() < interval && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100).min(interval));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Connector, RestartPolicy};
    use std::time::Duration;

    #[test]
    fn restarts_back_off_from_at_once_to_the_cap() {
        let policy = RestartPolicy::default();
        let delays: Vec<u64> = (0..12).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(300), "no overflow");
    }

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
