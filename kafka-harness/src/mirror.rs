//! MirrorMaker 2 for tests and local runs, in dedicated mode
//! (`org.apache.kafka.connect.mirror.MirrorMaker`), from the Kafka Connect jars
//! ([`crate::connect::ensure_connect_jars`], which include `connect-mirror`): one direction,
//! `source -> target`, with exactly-once source support on the target (KIP-618, which needs the
//! internal REST server of dedicated mode), `read_committed` on the source, checkpoints and group
//! offset sync every second, and the offset-syncs topic on the target (so that offsets can still
//! be translated once the source is gone).
//!
//! The replication policy is a parameter: [`ReplicationPolicy::Identity`] keeps topic names,
//! [`ReplicationPolicy::Prefixed`] names them `<source>.<topic>` (MirrorMaker's default).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::connect::{ensure_connect_jars, LOG4J2};
use crate::{die_with_parent, free_port, io, tail, HarnessError};

/// How replicated topics are named on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationPolicy {
    /// The same names (`IdentityReplicationPolicy`): no cycle detection, one direction at a time.
    Identity,
    /// `<source alias>.<topic>` (`DefaultReplicationPolicy`).
    Prefixed,
}

/// What to replicate, from where to where.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub source_alias: String,
    pub source_bootstrap: String,
    pub target_alias: String,
    pub target_bootstrap: String,
    /// A regular expression of the topics to replicate.
    pub topics: String,
    /// A regular expression of the consumer groups whose offsets are checkpointed and synced.
    pub groups: String,
    pub policy: ReplicationPolicy,
    pub extra_properties: Vec<(String, String)>,
}

impl MirrorConfig {
    pub fn new(source_bootstrap: impl Into<String>, target_bootstrap: impl Into<String>, topics: &str) -> MirrorConfig {
        MirrorConfig {
            source_alias: "primary".into(),
            source_bootstrap: source_bootstrap.into(),
            target_alias: "standby".into(),
            target_bootstrap: target_bootstrap.into(),
            topics: topics.into(),
            groups: ".*".into(),
            policy: ReplicationPolicy::Identity,
            extra_properties: Vec::new(),
        }
    }
}

/// A running MirrorMaker 2, killed when dropped (and when the thread that started it ends).
pub struct MirrorMaker {
    child: Option<Child>,
    jars: PathBuf,
    dir: tempfile::TempDir,
    started_lines: usize,
}

impl MirrorMaker {
    /// Starts it and waits until its connectors have started (15-30 s here).
    pub fn start(config: &MirrorConfig) -> Result<MirrorMaker, HarnessError> {
        let jars = ensure_connect_jars()?;
        let dir = tempfile::Builder::new().prefix("rail-mm2-").tempdir().map_err(io("create a temp dir"))?;
        let (source, target) = (&config.source_alias, &config.target_alias);
        let policy = match config.policy {
            ReplicationPolicy::Identity => "org.apache.kafka.connect.mirror.IdentityReplicationPolicy",
            ReplicationPolicy::Prefixed => "org.apache.kafka.connect.mirror.DefaultReplicationPolicy",
        };
        let mut props: Vec<(String, String)> = vec![
            ("clusters".into(), format!("{source},{target}")),
            (format!("{source}.bootstrap.servers"), config.source_bootstrap.clone()),
            (format!("{target}.bootstrap.servers"), config.target_bootstrap.clone()),
            (format!("{source}->{target}.enabled"), "true".into()),
            (format!("{target}->{source}.enabled"), "false".into()),
            (format!("{source}->{target}.topics"), config.topics.clone()),
            (format!("{source}->{target}.groups"), config.groups.clone()),
            ("replication.policy.class".into(), policy.into()),
            // Only records of committed transactions cross over; the copies are written in
            // transactions of MirrorMaker's own (exactly-once source, KIP-618).
            (format!("{source}.consumer.isolation.level"), "read_committed".into()),
            (format!("{target}.exactly.once.source.support"), "enabled".into()),
            ("dedicated.mode.enable.internal.rest".into(), "true".into()),
            ("listeners".into(), format!("http://127.0.0.1:{}", free_port()?)),
            ("offset-syncs.topic.location".into(), "target".into()),
            ("sync.group.offsets.enabled".into(), "true".into()),
            ("sync.group.offsets.interval.seconds".into(), "1".into()),
            ("emit.checkpoints.interval.seconds".into(), "1".into()),
            ("refresh.topics.interval.seconds".into(), "5".into()),
            ("refresh.groups.interval.seconds".into(), "5".into()),
            ("replication.factor".into(), "1".into()),
            ("checkpoints.topic.replication.factor".into(), "1".into()),
            ("heartbeats.topic.replication.factor".into(), "1".into()),
            ("offset-syncs.topic.replication.factor".into(), "1".into()),
            ("offset.storage.replication.factor".into(), "1".into()),
            ("status.storage.replication.factor".into(), "1".into()),
            ("config.storage.replication.factor".into(), "1".into()),
            ("sync.topic.acls.enabled".into(), "false".into()),
            // After the target was unreachable for longer than the worker's session, the worker
            // rejoins as a new member and Connect holds its lost tasks for this long before it
            // assigns them again (300 s by default: no copy for 5 minutes, seen in the
            // multi-cluster test as `delay=300000` in the assignment MirrorMaker 2 logs).
            ("scheduled.rebalance.max.delay.ms".into(), "5000".into()),
        ];
        for (k, v) in &config.extra_properties {
            props.retain(|(key, _)| key != k);
            props.push((k.clone(), v.clone()));
        }
        let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        fs::write(dir.path().join("mm2.properties"), text).map_err(io("write mm2.properties"))?;
        fs::write(dir.path().join("log4j2.properties"), LOG4J2).map_err(io("write log4j2.properties"))?;
        let mut mirror = MirrorMaker { child: None, jars, dir, started_lines: 0 };
        mirror.spawn()?;
        Ok(mirror)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = self.log();
        let out = fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io("open mm2.log"))?;
        let err = out.try_clone().map_err(io("clone a file handle"))?;
        let mut command = Command::new("java");
        command
            .arg("-Xmx512m")
            .arg(format!("-Dlog4j2.configurationFile={}", self.dir.path().join("log4j2.properties").display()))
            .arg("-cp")
            .arg(format!("{}/*", self.jars.display()))
            .arg("org.apache.kafka.connect.mirror.MirrorMaker")
            .arg(self.dir.path().join("mm2.properties"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut command);
        self.child = Some(command.spawn().map_err(io("start MirrorMaker 2 (java)"))?);
        self.wait_started(Duration::from_secs(120))
    }

    /// Waits for a new "Kafka MirrorMaker started" line in the log.
    fn wait_started(&mut self, patience: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(self.log()).unwrap_or_default();
            let lines = text.matches("Kafka MirrorMaker started").count();
            if lines > self.started_lines {
                self.started_lines = lines;
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > patience {
                return Err(HarnessError::Tool {
                    tool: "MirrorMaker 2".into(),
                    status: exited.map_or_else(|| format!("not started after {patience:?}"), |s| s.to_string()),
                    output: tail(&self.log(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Where its output goes.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("mm2.log")
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM (it ends its transactions), or SIGKILL after `patience`.
    pub fn stop(&mut self, patience: Duration) {
        if let Some(child) = self.child.as_mut() {
            crate::signal(child, libc::SIGTERM);
            let deadline = Instant::now() + patience;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.kill();
    }

    /// Freezes it (SIGSTOP): it copies nothing until [`MirrorMaker::resume`], its transactions
    /// left as they were.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            crate::signal(child, libc::SIGSTOP);
        }
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            crate::signal(child, libc::SIGCONT);
        }
    }

    /// Starts it again (after [`MirrorMaker::kill`]) with the same settings.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for MirrorMaker {
    fn drop(&mut self) {
        self.kill();
        // A failing test: its errors and warnings (connection noise aside) go to the test's
        // output, and its log is kept, since the temporary directory goes with it.
        if std::thread::panicking() {
            let text = fs::read_to_string(self.log()).unwrap_or_default();
            let noted: Vec<&str> = text
                .lines()
                .filter(|l| (l.contains(" ERROR ") || l.contains(" WARN ")) && !l.contains("NetworkClient"))
                .collect();
            let name = self.dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let kept = std::env::temp_dir().join(format!("{name}-failed.log"));
            let _ = fs::copy(self.log(), &kept);
            eprintln!(
                "MirrorMaker 2's last errors and warnings (log kept at {}):\n{}",
                kept.display(),
                noted[noted.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
