//! Real Apache Kafka 4.x brokers for tests, benches and local runs: KRaft mode, on 127.0.0.1,
//! started from the jars that Maven fetches (no Docker, no tarball).
//!
//! ```no_run
//! let cluster = kafka_harness::Cluster::start(kafka_harness::ClusterConfig::default())?;
//! println!("bootstrap servers: {}", cluster.bootstrap_servers());
//! // ... the cluster is killed and its files removed when `cluster` is dropped.
//! # Ok::<(), kafka_harness::HarnessError>(())
//! ```
//!
//! The jars come from `kafka/pom.xml` in this crate (the broker, the CLI tools and a log4j2
//! implementation, which the broker's POM leaves out). They are copied once into
//! [`jars_dir`], by [`ensure_jars`] or by `scripts/kafka-jars.sh`.
//!
//! [`registry`] starts a real schema registry (Apicurio) the same way, [`connect`] a Kafka
//! Connect worker with its connector plugins, [`mirror`] MirrorMaker 2 between two clusters,
//! [`postgres`] a PostgreSQL server.

pub mod connect;
mod maven;
pub mod mirror;
pub mod postgres;
pub mod registry;

use maven::fetch_with_maven;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Kafka release the harness runs (keep in step with `kafka/pom.xml`).
pub const KAFKA_VERSION: &str = "4.1.1";

/// Something that stopped a broker from starting or stopping.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("fetching the Kafka jars with Maven failed ({status}); its output:\n{output}")]
    Maven { status: String, output: String },
    #[error("{tool} failed ({status}); its output:\n{output}")]
    Tool { tool: String, status: String, output: String },
    #[error("broker {node} did not accept connections within {waited:?}; last lines of {log}:\n{tail}")]
    NotReady { node: u32, waited: Duration, log: String, tail: String },
    #[error("no broker node {0}")]
    NoSuchNode(u32),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// Where the jars live: `$KAFKA_JARS_DIR`, or `~/.cache/rail-orders/kafka-<version>/libs`.
pub fn jars_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KAFKA_JARS_DIR") {
        return PathBuf::from(dir);
    }
    cache_root().join(format!("kafka-{KAFKA_VERSION}")).join("libs")
}

/// `~/.cache/rail-orders` (or under `$XDG_CACHE_HOME`): where the fetched jars and
/// applications are kept between runs.
fn cache_root() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("rail-orders")
}

/// The POM that lists the jars.
pub fn pom_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka").join("pom.xml")
}

/// Makes sure the jars are in [`jars_dir`], fetching them with Maven if they are not.
pub fn ensure_jars() -> Result<PathBuf, HarnessError> {
    let dir = jars_dir();
    if has_broker_jar(&dir) {
        return Ok(dir);
    }
    let pom = pom_path().display().to_string();
    fetch_with_maven(&dir, &["-f", &pom, "dependency:copy-dependencies"])?;
    if has_broker_jar(&dir) {
        Ok(dir)
    } else {
        Err(HarnessError::Maven {
            status: "no kafka_2.13 jar after the copy".into(),
            output: dir.display().to_string(),
        })
    }
}

fn has_broker_jar(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-")))
        .unwrap_or(false)
}

/// A TCP port that was free a moment ago, and never handed out before by this process: the
/// kernel may give a port just released to the next `bind(0)`, and two services told the same
/// port answer each other's requests (a compose test run once posted an order to dev-materiels,
/// "no route for /orders", while another run shared the machine: this rules out one way).
pub fn free_port() -> Result<u16, HarnessError> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
        let port = listener.local_addr().map(|a| a.port()).map_err(io("read a bound port"))?;
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

/// A SCRAM user created when the cluster's storage is formatted.
#[derive(Debug, Clone)]
pub struct ScramUser {
    pub name: String,
    pub password: String,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of nodes (each is broker and controller). 1 or 3 in practice.
    pub nodes: u32,
    /// Where the data and logs go; a temporary directory, removed on drop, when `None`.
    pub data_dir: Option<PathBuf>,
    /// The client port of node 1; free ports when `None`.
    pub first_port: Option<u16>,
    /// Extra `server.properties` lines, `key=value`.
    pub extra_properties: Vec<(String, String)>,
    /// Java heap per node.
    pub heap: String,
    /// How long to wait for every node to accept connections.
    pub ready_timeout: Duration,
    /// SCRAM-SHA-256 users: when given, each node also listens with SASL_PLAINTEXT on a port of
    /// its own ([`Cluster::sasl_bootstrap_servers`]), and the users are created at format time.
    pub scram_users: Vec<ScramUser>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 1,
            data_dir: None,
            first_port: None,
            extra_properties: Vec::new(),
            heap: "512m".into(),
            ready_timeout: Duration::from_secs(90),
            scram_users: Vec::new(),
        }
    }
}

struct Node {
    id: u32,
    port: u16,
    sasl_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }
}

/// A running Kafka cluster. Dropping it kills every node and, for a temporary data directory,
/// removes it.
pub struct Cluster {
    nodes: Vec<Node>,
    jars: PathBuf,
    heap: String,
    _temp: Option<tempfile::TempDir>,
    root: PathBuf,
    ready_timeout: Duration,
}

impl Cluster {
    /// Formats the storage of every node and starts them all, then waits until each accepts
    /// connections.
    pub fn start(config: ClusterConfig) -> Result<Cluster, HarnessError> {
        let jars = ensure_jars()?;
        let (temp, root) = match &config.data_dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let temp =
                    tempfile::Builder::new().prefix("kafka-harness-").tempdir().map_err(io("create a temp dir"))?;
                let root = temp.path().to_path_buf();
                (Some(temp), root)
            }
        };
        let n = config.nodes.max(1);
        let mut ports = Vec::new();
        for i in 0..n {
            let client = match config.first_port {
                Some(p) => p + (i as u16) * 2,
                None => free_port()?,
            };
            let controller = match config.first_port {
                Some(p) => p + (i as u16) * 2 + 1,
                None => free_port()?,
            };
            let sasl = if config.scram_users.is_empty() { None } else { Some(free_port()?) };
            ports.push((client, controller, sasl));
        }
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c, _))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let replication = n.min(3);
        let min_isr = if n >= 3 { 2 } else { 1 };
        let cluster_id = random_cluster_id();
        let log4j = root.join("log4j2.properties");
        fs::write(&log4j, LOG4J2).map_err(io("write log4j2.properties"))?;
        let mut nodes = Vec::new();
        for (i, (client, controller, sasl)) in ports.iter().enumerate() {
            let id = i as u32 + 1;
            let dir = root.join(format!("node-{id}"));
            let data = dir.join("data");
            fs::create_dir_all(&data).map_err(io(format!("create {}", data.display())))?;
            let mut props = vec![
                ("process.roles".to_string(), "broker,controller".to_string()),
                ("node.id".into(), id.to_string()),
                ("controller.quorum.voters".into(), voters.clone()),
                ("controller.listener.names".into(), "CONTROLLER".into()),
                ("inter.broker.listener.name".into(), "PLAINTEXT".into()),
                ("log.dirs".into(), data.display().to_string()),
                ("num.partitions".into(), "1".into()),
                ("default.replication.factor".into(), replication.to_string()),
                ("min.insync.replicas".into(), min_isr.to_string()),
                ("offsets.topic.replication.factor".into(), replication.to_string()),
                ("offsets.topic.num.partitions".into(), "4".into()),
                ("transaction.state.log.replication.factor".into(), replication.to_string()),
                ("transaction.state.log.min.isr".into(), min_isr.to_string()),
                ("transaction.state.log.num.partitions".into(), "4".into()),
                ("group.initial.rebalance.delay.ms".into(), "0".into()),
                ("log.segment.bytes".into(), (64 << 20).to_string()),
                ("log.cleaner.dedupe.buffer.size".into(), (16 << 20).to_string()),
                ("auto.create.topics.enable".into(), "false".into()),
            ];
            match sasl {
                None => {
                    props.push((
                        "listeners".into(),
                        format!("PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}"),
                    ));
                    props.push(("advertised.listeners".into(), format!("PLAINTEXT://127.0.0.1:{client}")));
                    props.push((
                        "listener.security.protocol.map".into(),
                        "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".into(),
                    ));
                }
                Some(sasl) => {
                    props.push((
                        "listeners".into(),
                        format!("PLAINTEXT://127.0.0.1:{client},SASL://127.0.0.1:{sasl},CONTROLLER://127.0.0.1:{controller}"),
                    ));
                    props.push((
                        "advertised.listeners".into(),
                        format!("PLAINTEXT://127.0.0.1:{client},SASL://127.0.0.1:{sasl}"),
                    ));
                    props.push((
                        "listener.security.protocol.map".into(),
                        "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL:SASL_PLAINTEXT".into(),
                    ));
                    props.push(("sasl.enabled.mechanisms".into(), "SCRAM-SHA-256".into()));
                    props.push((
                        "listener.name.sasl.scram-sha-256.sasl.jaas.config".into(),
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
                    ));
                }
            }
            for (k, v) in &config.extra_properties {
                props.retain(|(key, _)| key != k);
                props.push((k.clone(), v.clone()));
            }
            let mut text = String::new();
            for (k, v) in &props {
                text.push_str(&format!("{k}={v}\n"));
            }
            let properties = dir.join("server.properties");
            fs::write(&properties, text).map_err(io("write server.properties"))?;
            let mut format = vec![
                "format".to_string(),
                "-t".into(),
                cluster_id.clone(),
                "-c".into(),
                properties.display().to_string(),
            ];
            for user in &config.scram_users {
                format.push("--add-scram".into());
                format.push(format!("SCRAM-SHA-256=[name={},password={}]", user.name, user.password));
            }
            let format: Vec<&str> = format.iter().map(String::as_str).collect();
            run_tool(&jars, &log4j, "kafka.tools.StorageTool", &format)?;
            nodes.push(Node { id, port: *client, sasl_port: *sasl, dir, child: None });
        }
        let mut cluster =
            Cluster { nodes, jars, heap: config.heap, _temp: temp, root, ready_timeout: config.ready_timeout };
        for id in 1..=n {
            cluster.spawn(id)?;
        }
        for id in 1..=n {
            cluster.wait_ready(id)?;
        }
        Ok(cluster)
    }

    /// `host:port,...` for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// `host:port,...` of the SASL_PLAINTEXT listeners (empty without SCRAM users).
    pub fn sasl_bootstrap_servers(&self) -> String {
        self.nodes.iter().filter_map(|n| n.sasl_port).map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The directory holding each node's data, config and `broker.log`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node(&mut self, id: u32) -> Result<&mut Node, HarnessError> {
        self.nodes.iter_mut().find(|n| n.id == id).ok_or(HarnessError::NoSuchNode(id))
    }

    fn spawn(&mut self, id: u32) -> Result<(), HarnessError> {
        let jars = self.jars.clone();
        let heap = self.heap.clone();
        let log4j = self.root.join("log4j2.properties");
        let node = self.node(id)?;
        let log =
            fs::OpenOptions::new().create(true).append(true).open(node.log_path()).map_err(io("open broker.log"))?;
        let log_err = log.try_clone().map_err(io("clone broker.log handle"))?;
        let mut command = Command::new("java");
        command
            .arg(format!("-Xmx{heap}"))
            .arg(format!("-Xms{heap}"))
            .arg("-XX:+UseG1GC")
            .arg("-Djava.awt.headless=true")
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(format!("{}/*", jars.display()))
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(io("start java (is a JDK installed? scripts/setup.sh installs one)"))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `id` accepts TCP connections on its client port (it does so only once
    /// the broker is unfenced).
    pub fn wait_ready(&mut self, id: u32) -> Result<(), HarnessError> {
        let timeout = self.ready_timeout;
        let node = self.node(id)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], node.port));
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let exited = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > timeout {
                let log = node.log_path();
                return Err(HarnessError::NotReady {
                    node: id,
                    waited: start.elapsed(),
                    log: log.display().to_string(),
                    tail: tail(&log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills node `id` with SIGKILL, as a crash would.
    pub fn kill(&mut self, id: u32) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Stops node `id` with SIGTERM (a controlled shutdown), waiting up to `timeout` before
    /// killing it.
    pub fn stop(&mut self, id: u32, timeout: Duration) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        if let Some(mut child) = node.child.take() {
            signal(&child, libc::SIGTERM);
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > timeout {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.wait();
        }
        Ok(())
    }

    /// Freezes node `id` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: u32) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        if let Some(child) = &node.child {
            signal(child, libc::SIGSTOP);
        }
        Ok(())
    }

    /// Thaws node `id` (SIGCONT).
    pub fn resume(&mut self, id: u32) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        if let Some(child) = &node.child {
            signal(child, libc::SIGCONT);
        }
        Ok(())
    }

    /// Starts node `id` again on its existing data, and waits until it is ready.
    pub fn restart(&mut self, id: u32) -> Result<(), HarnessError> {
        self.kill(id)?;
        self.spawn(id)?;
        self.wait_ready(id)
    }

    /// Runs a Kafka CLI tool (a main class from the jars) against this cluster and returns its
    /// standard output.
    pub fn tool(&self, main_class: &str, args: &[&str]) -> Result<String, HarnessError> {
        run_tool(&self.jars, &self.root.join("log4j2.properties"), main_class, args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn run_tool(jars: &Path, log4j: &Path, main_class: &str, args: &[&str]) -> Result<String, HarnessError> {
    let mut command = Command::new("java");
    command
        .arg("-Xmx256m")
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg("-cp")
        .arg(format!("{}/*", jars.display()))
        .arg(main_class)
        .args(args);
    die_with_parent(&mut command);
    let output = command.output().map_err(io(format!("run {main_class}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(HarnessError::Tool {
            tool: main_class.to_string(),
            status: output.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok(stdout)
}

/// Asks Linux to kill the child when the thread that started it ends, so a crashed or
/// interrupted test leaves no broker behind.
#[allow(unsafe_code)] // pre_exec is unsafe by nature; the closure only calls prctl.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as a pre_exec closure requires.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[allow(unsafe_code)] // libc's kill: a plain system call on our own child.
pub(crate) fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A cluster id as `StorageTool random-uuid` makes it: 16 random bytes in URL-safe base64,
/// without padding, and (as Kafka's `Uuid.randomUuid` does) never starting with `-`, which the
/// tools' argument parser would take for an option.
fn random_cluster_id() -> String {
    loop {
        let id = encode_cluster_id(rand::random());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn encode_cluster_id(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

const LOG4J2: &str = "\
status = warn
appender.file.type = Console
appender.file.name = OUT
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.kafkacontroller.name = org.apache.kafka.controller
logger.kafkacontroller.level = WARN
logger.raft.name = org.apache.kafka.raft
logger.raft.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
";

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ids_are_22_url_safe_characters_never_starting_with_a_dash() {
        for _ in 0..2_000 {
            let id = super::random_cluster_id();
            assert_eq!(id.len(), 22);
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert!(!id.starts_with('-'), "{id}");
        }
        // 0xF8 = 111110 00...: the first character is the 63rd, '-' (what the loop avoids).
        assert!(super::encode_cluster_id([0xF8; 16]).starts_with('-'));
        assert_ne!(super::random_cluster_id(), super::random_cluster_id());
    }
}
