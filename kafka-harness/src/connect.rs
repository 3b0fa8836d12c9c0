//! A real Kafka Connect worker for tests and local runs: distributed mode
//! (`org.apache.kafka.connect.cli.ConnectDistributed`), its config, offset and status topics on
//! the given cluster, with connector plugins from Maven Central in its `plugin.path`:
//!
//! - Debezium's PostgreSQL source ([`DEBEZIUM_POSTGRES_VERSION`], the `plugin` tarball);
//! - Debezium's JDBC sink ([`DEBEZIUM_JDBC_VERSION`], with its PostgreSQL driver);
//! - Apicurio Registry's Avro converter (`connect/apicurio-converter/pom.xml`).
//!
//! The worker's jars come from `connect/pom.xml` (the runtime, the JSON converter, the built-in
//! transforms, MirrorMaker 2). Both sets are fetched once into `~/.cache/rail-orders`, by
//! [`ensure_connect_jars`] and [`ensure_plugins`] or by `scripts/connect.sh`.
//!
//! Connector configurations can name `${env:NAME}`: the worker resolves them from its own
//! environment ([`ConnectConfig::env`]) with Kafka's `EnvVarConfigProvider`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::maven::fetch_with_maven_steps;
use crate::registry::http_status;
use crate::{cache_root, die_with_parent, free_port, io, tail, HarnessError, KAFKA_VERSION};

/// Debezium's PostgreSQL connector (keep in step with `scripts/connect.sh`).
pub const DEBEZIUM_POSTGRES_VERSION: &str = "3.6.1.Final";
/// Debezium's JDBC sink connector: 3.4.3.Final is the newest whose plugin Maven Central serves
/// here (keep in step with `scripts/connect.sh`).
pub const DEBEZIUM_JDBC_VERSION: &str = "3.4.3.Final";

/// Where the worker's jars live: `~/.cache/rail-orders/kafka-connect-<kafka version>/libs`.
pub fn connect_jars_dir() -> PathBuf {
    cache_root().join(format!("kafka-connect-{KAFKA_VERSION}")).join("libs")
}

/// Where the plugins live: `~/.cache/rail-orders/connect-plugins-<versions>`, one directory per
/// plugin.
pub fn plugins_dir() -> PathBuf {
    cache_root().join(format!("connect-plugins-pg{DEBEZIUM_POSTGRES_VERSION}-jdbc{DEBEZIUM_JDBC_VERSION}"))
}

fn pom(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("connect").join(name).display().to_string()
}

/// Makes sure the worker's jars are in [`connect_jars_dir`], fetching them with Maven if not.
pub fn ensure_connect_jars() -> Result<PathBuf, HarnessError> {
    let dir = connect_jars_dir();
    if has_file_starting(&dir, "connect-runtime-") {
        return Ok(dir);
    }
    let pom = pom("pom.xml");
    fetch_with_maven_steps(&dir, &[(&["-f", &pom, "dependency:copy-dependencies"], "")])?;
    if has_file_starting(&dir, "connect-runtime-") {
        Ok(dir)
    } else {
        Err(HarnessError::Maven {
            status: "no connect-runtime jar after the copy".into(),
            output: dir.display().to_string(),
        })
    }
}

/// Makes sure the plugins are in [`plugins_dir`], fetching them with Maven if not.
pub fn ensure_plugins() -> Result<PathBuf, HarnessError> {
    let dir = plugins_dir();
    if dir.join("apicurio-converter").is_dir() {
        return Ok(dir);
    }
    let postgres =
        format!("-Dartifact=io.debezium:debezium-connector-postgres:{DEBEZIUM_POSTGRES_VERSION}:tar.gz:plugin");
    let jdbc = format!("-Dartifact=io.debezium:debezium-connector-jdbc:{DEBEZIUM_JDBC_VERSION}:tar.gz:plugin");
    let converter = pom("apicurio-converter/pom.xml");
    fetch_with_maven_steps(
        &dir,
        &[
            (&["dependency:unpack", &postgres], ""),
            (&["dependency:unpack", &jdbc], ""),
            (&["-f", &converter, "dependency:copy-dependencies"], "apicurio-converter"),
        ],
    )?;
    // The tarballs' pax metadata unpacks as a directory of its own: not a plugin.
    for entry in fs::read_dir(&dir).map_err(io(format!("read {}", dir.display())))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("PaxHeaders") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(dir)
}

fn has_file_starting(dir: &Path, prefix: &str) -> bool {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix)))
        .unwrap_or(false)
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub bootstrap_servers: String,
    /// The Connect cluster's group id; its topics are `<group>-configs`, `-offsets`, `-status`.
    pub group_id: String,
    /// Environment variables of the worker, for the `${env:NAME}` references of connector
    /// configurations.
    pub env: Vec<(String, String)>,
    /// Extra worker properties.
    pub extra_properties: Vec<(String, String)>,
    pub heap: String,
}

impl ConnectConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> ConnectConfig {
        ConnectConfig {
            bootstrap_servers: bootstrap_servers.into(),
            group_id: "rail-connect".into(),
            env: Vec::new(),
            extra_properties: Vec::new(),
            heap: "768m".into(),
        }
    }
}

/// A running Connect worker, killed when dropped (and when the thread that started it ends).
pub struct ConnectWorker {
    child: Option<Child>,
    port: u16,
    config: ConnectConfig,
    jars: PathBuf,
    dir: tempfile::TempDir,
}

impl ConnectWorker {
    /// Starts a worker on a free port and waits until its REST API answers (20-40 s here).
    pub fn start(config: ConnectConfig) -> Result<ConnectWorker, HarnessError> {
        let jars = ensure_connect_jars()?;
        let plugins = ensure_plugins()?;
        let dir = tempfile::Builder::new().prefix("rail-connect-").tempdir().map_err(io("create a temp dir"))?;
        let port = free_port()?;
        let group = &config.group_id;
        let mut props = vec![
            ("bootstrap.servers".to_string(), config.bootstrap_servers.clone()),
            ("group.id".into(), group.clone()),
            ("config.storage.topic".into(), format!("{group}-configs")),
            ("offset.storage.topic".into(), format!("{group}-offsets")),
            ("status.storage.topic".into(), format!("{group}-status")),
            ("config.storage.replication.factor".into(), "1".into()),
            ("offset.storage.replication.factor".into(), "1".into()),
            ("status.storage.replication.factor".into(), "1".into()),
            ("key.converter".into(), "org.apache.kafka.connect.storage.StringConverter".into()),
            ("value.converter".into(), "org.apache.kafka.connect.json.JsonConverter".into()),
            ("plugin.path".into(), plugins.display().to_string()),
            ("listeners".into(), format!("http://127.0.0.1:{port}")),
            ("rest.advertised.host.name".into(), "127.0.0.1".into()),
            ("rest.advertised.port".into(), port.to_string()),
            ("connector.client.config.override.policy".into(), "All".into()),
            ("config.providers".into(), "env".into()),
            (
                "config.providers.env.class".into(),
                "org.apache.kafka.common.config.provider.EnvVarConfigProvider".into(),
            ),
            ("offset.flush.interval.ms".into(), "1000".into()),
            ("scheduled.rebalance.max.delay.ms".into(), "5000".into()),
        ];
        for (k, v) in &config.extra_properties {
            props.retain(|(key, _)| key != k);
            props.push((k.clone(), v.clone()));
        }
        let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        fs::write(dir.path().join("worker.properties"), text).map_err(io("write worker.properties"))?;
        fs::write(dir.path().join("log4j2.properties"), LOG4J2).map_err(io("write log4j2.properties"))?;
        let mut worker = ConnectWorker { child: None, port, config, jars, dir };
        worker.spawn()?;
        Ok(worker)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = self.log();
        let out = fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io("open connect.log"))?;
        let err = out.try_clone().map_err(io("clone a file handle"))?;
        let mut command = Command::new("java");
        command
            .arg(format!("-Xmx{}", self.config.heap))
            .arg("-XX:+UseG1GC")
            .arg("-Djava.awt.headless=true")
            .arg(format!("-Dlog4j2.configurationFile={}", self.dir.path().join("log4j2.properties").display()))
            .arg("-cp")
            .arg(format!("{}/*", self.jars.display()))
            .arg("org.apache.kafka.connect.cli.ConnectDistributed")
            .arg(self.dir.path().join("worker.properties"))
            .envs(self.config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut command);
        self.child = Some(command.spawn().map_err(io("start the Connect worker (java)"))?);
        self.wait_ready(Duration::from_secs(180))
    }

    fn wait_ready(&mut self, patience: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            // /connectors answers once the worker has joined its cluster and read its configs.
            if http_status(self.port, "/connectors") == Some(200) {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > patience {
                return Err(HarnessError::Tool {
                    tool: format!("Kafka Connect worker on port {}", self.port),
                    status: exited.map_or_else(|| format!("not ready after {patience:?}"), |s| s.to_string()),
                    output: tail(&self.log(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Its REST API: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where its output goes.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("connect.log")
    }

    /// Kills the worker with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the worker again (after [`ConnectWorker::kill`]) on the same port and settings, and
    /// waits until it is ready.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The log settings of the Connect worker and of MirrorMaker 2 (Connect's runtime both).
pub(crate) const LOG4J2: &str = "\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
logger.kafkaclients.name = org.apache.kafka.clients
logger.kafkaclients.level = WARN
";
