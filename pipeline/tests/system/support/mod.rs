//! What the integration tests share: a real broker, the services as real processes, readers of
//! the topics, and the oracle that the results are checked against.

#![allow(dead_code)]

pub mod changelog;
pub mod http;
pub mod oracle;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::kafka::{KafkaArgs, ReadToEndContext};
use engine::metrics::{RestoreRecord, StreamStats};
use kafka_harness::{Cluster, ClusterConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use state::{Catalogue, CommandEnvelope, OrderStatus, OrderUpdate, Rules, StoreOptions, ViewStore};
use wagon_lits::{ensure_service_topics, CommandProducer, Materialiser, ViewConfig};
use wire::topics::changelog_name as changelog_topic;
use wire::TopicArgs;

pub const PREPARE_AFTER_MS: u64 = 300;
pub const SHIP_AFTER_MS: u64 = 300;

/// The catalogue every dev-materiels of the tests runs with, and the oracle judges against.
pub const CATALOGUE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/catalogue.txt");

pub fn rules() -> Rules {
    Rules {
        catalogue: Catalogue::default(),
        prepare_after: Duration::from_millis(PREPARE_AFTER_MS),
        ship_after: Duration::from_millis(SHIP_AFTER_MS),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One test's world: a broker of its own, topic names, a scratch directory.
pub struct TestEnv {
    /// dev-materiels' HTTP port (fallback endpoint, interactive queries).
    pub dev_port: u16,
    /// wagon-lits' API port.
    pub api_port: u16,
    pub cluster: Cluster,
    pub kafka: KafkaArgs,
    pub topics: TopicArgs,
    pub application_id: String,
    pub dir: tempfile::TempDir,
    /// dev-materiels' preparation and shipping delays (the model's rules assume the defaults).
    pub timers_ms: (u64, u64),
    /// Extra arguments for every dev-materiels started from now on.
    pub dev_args: Vec<String>,
    /// How the test's own views read updates (JSON; Avro too once a registry is set).
    pub codec: wire::Codec,
}

impl TestEnv {
    pub fn start(name: &str, partitions: i32) -> TestEnv {
        TestEnv::start_with(name, partitions, ClusterConfig::default())
    }

    /// A test world on a cluster started with `config`. With SCRAM users, the test's clients use
    /// the first one, over SASL_PLAINTEXT.
    pub fn start_with(name: &str, partitions: i32, config: ClusterConfig) -> TestEnv {
        let users = config.scram_users.clone();
        let replication_factor = if config.nodes >= 3 { 3 } else { 1 };
        let cluster = Cluster::start(config).expect("starting a Kafka broker");
        let mut kafka = match users.first() {
            None => KafkaArgs::new(cluster.bootstrap_servers()),
            Some(user) => KafkaArgs {
                security_protocol: "sasl_plaintext".into(),
                sasl_username: Some(user.name.clone()),
                sasl_password: Some(user.password.clone()),
                ..KafkaArgs::new(cluster.sasl_bootstrap_servers())
            },
        };
        // Lets the tests produce the 1 MiB poison message.
        kafka.options.push(("message.max.bytes".into(), (8 << 20).to_string()));
        let topics = TopicArgs { partitions, replication_factor, ..TopicArgs::default() };
        let env = TestEnv {
            dev_port: kafka_harness::free_port().expect("port"),
            api_port: kafka_harness::free_port().expect("port"),
            cluster,
            kafka,
            topics,
            application_id: format!("dev-materiels-{name}"),
            dir: tempfile::Builder::new().prefix(&format!("rail-test-{name}-")).tempdir().expect("tempdir"),
            timers_ms: (PREPARE_AFTER_MS, SHIP_AFTER_MS),
            dev_args: Vec::new(),
            codec: wire::Codec::json(),
        };
        ensure_service_topics(&env.kafka, &env.topics).expect("creating topics");
        env
    }

    pub fn changelog(&self) -> String {
        changelog_topic(&self.application_id)
    }

    pub fn producer(&self) -> CommandProducer {
        CommandProducer::new(&self.kafka, &self.topics.orders_topic, Duration::from_secs(60)).expect("producer")
    }

    pub fn dev_state_dir(&self) -> PathBuf {
        self.dir.path().join("dev-materiels")
    }

    /// Starts dev-materiels as a separate process.
    pub fn spawn_dev_materiels(&self, incarnation: usize) -> DevMateriels {
        self.spawn_dev_materiels_with(incarnation, &[])
    }

    /// Starts instance `n` of a group of dev-materiels (instance 0 is the one the other helpers
    /// start; only it serves HTTP). Each instance has its own state directory.
    pub fn spawn_instance(&self, n: usize, incarnation: usize) -> DevMateriels {
        self.spawn_instance_with(n, incarnation, &[])
    }

    /// [`TestEnv::spawn_instance`] with extra environment variables.
    pub fn spawn_instance_with(&self, n: usize, incarnation: usize, env: &[(&str, &str)]) -> DevMateriels {
        if n == 0 {
            return self.spawn_dev_materiels_with(incarnation, env);
        }
        let mut command =
            self.dev_materiels_command(&format!("instance-{n}"), &self.dir.path().join(format!("dev-materiels-{n}")));
        command.envs(env.iter().copied());
        let port = kafka_harness::free_port().expect("port");
        command.arg("--http-listen").arg(format!("127.0.0.1:{port}"));
        let mut process = self.spawn(command, &format!("dev-materiels-i{n}-{incarnation}"));
        process.http_port = Some(port);
        process
    }

    /// Starts dev-materiels with extra environment variables.
    pub fn spawn_dev_materiels_with(&self, incarnation: usize, env: &[(&str, &str)]) -> DevMateriels {
        let mut command = self.dev_materiels_command("instance-0", &self.dev_state_dir());
        command.arg("--http-listen").arg(format!("127.0.0.1:{}", self.dev_port)).envs(env.iter().copied());
        let mut process = self.spawn(command, &format!("dev-materiels-{incarnation}"));
        process.http_port = Some(self.dev_port);
        process
    }

    /// The dev-materiels command line shared by every instance of a test.
    pub fn dev_materiels_command(&self, instance_id: &str, state_dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dev-materiels"));
        // One stream thread unless a test asks for more (the default depends on the cores).
        command.env("STREAM_THREADS", "1");
        command
            .arg("--brokers")
            .arg(&self.kafka.brokers)
            .arg("--partitions")
            .arg(self.topics.partitions.to_string())
            .arg("--replication-factor")
            .arg(self.topics.replication_factor.to_string())
            .arg("--application-id")
            .arg(&self.application_id)
            .arg("--instance-id")
            .arg(instance_id)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--prepare-after-ms")
            .arg(self.timers_ms.0.to_string())
            .arg("--ship-after-ms")
            .arg(self.timers_ms.1.to_string())
            .arg("--session-timeout-ms")
            .arg("6000")
            .arg("--catalogue")
            .arg(CATALOGUE_FILE)
            .args(&self.dev_args);
        command
    }

    /// Starts a service process with the test's token (unless it is given one in a file),
    /// logging to `<name>.log`.
    pub fn spawn(&self, mut command: Command, name: &str) -> DevMateriels {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        if !command.get_envs().any(|(k, _)| k == "RAIL_TOKEN_FILE") {
            command.env("RAIL_TOKEN", http::TOKEN);
        }
        command
            // RAIL_TEST_LOG replaces the filter, to look closer at a failure (for example
            // `info,engine=debug`, with KAFKA_OPTIONS="debug=eos,cgrp" and `librdkafka=debug`).
            .env(
                "RUST_LOG",
                std::env::var("RAIL_TEST_LOG").unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                libc_prctl_pdeathsig();
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        DevMateriels { child: Some(child), log, http_port: None, last_status: std::sync::Mutex::new(None) }
    }

    /// Runs the wagon-lits view in this process, in a thread of its own.
    pub fn start_view(&self, name: &str) -> ViewRunner {
        let materialiser = Materialiser::new(
            ViewConfig {
                kafka: self.kafka.clone(),
                updates_topic: self.topics.updates_topic.clone(),
                state_dir: self.dir.path().join(format!("wagon-lits-{name}")),
                max_batch: 5_000,
                codec: self.codec.clone(),
            },
            &StoreOptions::default(),
            wagon_lits::WagonLitsMetrics::unregistered().view,
        )
        .expect("view");
        let view = materialiser.view();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            materialiser.run(flag).expect("view materialiser");
        });
        ViewRunner { view, stop, thread: Some(thread) }
    }

    /// Every record of `topic`, read with read_committed from the beginning to the end.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        read_topic(&self.kafka, topic)
    }

    /// Every update on `order-updates`, as the oracle reads them, in offset order per partition.
    /// An Avro record is read with the test's codec and given to the oracle as JSON.
    pub fn wire_updates(&self) -> Vec<oracle::Update> {
        self.read_all(&self.topics.updates_topic)
            .into_iter()
            .map(|r| {
                let value = r.value.unwrap_or_default();
                let json = if value.first() == Some(&wire::avro::MAGIC) {
                    let update = self.codec.decode_update(&value).expect("an Avro update on order-updates");
                    serde_json::to_vec(&update).expect("JSON of an update")
                } else {
                    value
                };
                oracle::Update::from_json(&json).expect("an update on order-updates")
            })
            .collect()
    }

    /// The rules the oracle judges this test's dev-materiels by.
    pub fn oracle_rules(&self) -> oracle::Rules {
        let text = std::fs::read_to_string(CATALOGUE_FILE).expect("testdata/catalogue.txt");
        oracle::Rules {
            catalogue: text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect(),
            prepare_after_ms: self.timers_ms.0,
            ship_after_ms: self.timers_ms.1,
        }
    }

    /// Every update on `order-updates`.
    pub fn updates(&self) -> Vec<OrderUpdate> {
        self.read_all(&self.topics.updates_topic)
            .into_iter()
            .map(|r| self.codec.decode_update(&r.value.unwrap_or_default()).expect("an update on order-updates"))
            .collect()
    }
}

/// wagon-lits running as a child process (`wagon-lits serve`).
pub type WagonLits = DevMateriels;

impl TestEnv {
    /// Starts `wagon-lits serve` as a separate process, with its API and the HTTP fallback to
    /// dev-materiels.
    pub fn spawn_wagon_lits(&self, incarnation: usize, delivery_timeout_ms: u64) -> WagonLits {
        self.spawn_wagon_lits_with(incarnation, delivery_timeout_ms, &[])
    }

    /// [`TestEnv::spawn_wagon_lits`] with extra environment variables.
    pub fn spawn_wagon_lits_with(
        &self,
        incarnation: usize,
        delivery_timeout_ms: u64,
        env: &[(&str, &str)],
    ) -> WagonLits {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wagon-lits"));
        command.envs(env.iter().copied());
        command
            .arg("serve")
            .arg("--brokers")
            .arg(&self.kafka.brokers)
            .arg("--partitions")
            .arg(self.topics.partitions.to_string())
            .arg("--state-dir")
            .arg(self.wagon_lits_state_dir())
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--dev-materiels-url")
            .arg(format!("http://127.0.0.1:{}", self.dev_port))
            .arg("--dev-materiels-group")
            .arg(&self.application_id)
            .arg("--delivery-timeout-ms")
            .arg(delivery_timeout_ms.to_string())
            .arg("--breaker-probe-ms")
            .arg("500");
        self.spawn(command, &format!("wagon-lits-{incarnation}"))
    }

    pub fn wagon_lits_state_dir(&self) -> PathBuf {
        self.dir.path().join("wagon-lits-process")
    }

    /// The wagon-lits view, opened read-only beside the running process.
    pub fn wagon_lits_view(&self) -> ViewStore {
        ViewStore::open_read_only(&self.wagon_lits_state_dir().join("view"), &StoreOptions::default())
            .expect("open the view")
    }
}

fn libc_prctl_pdeathsig() {
    // Kill the child if the test thread that started it dies.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

pub fn read_topic(kafka: &KafkaArgs, topic: &str) -> Vec<Record> {
    let mut config = kafka.base();
    config
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<ReadToEndContext> =
        kafka.finish(config).create_with_context(ReadToEndContext).expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions as usize {
        assert!(Instant::now() < deadline, "reading {topic} did not reach its end");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The sum of the end offsets of `topic`'s partitions (records plus transaction markers).
pub fn end_offsets(kafka: &KafkaArgs, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka.finish(kafka.base()).create().expect("client");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks").1)
        .sum()
}

/// dev-materiels running as a child process.
pub struct DevMateriels {
    child: Option<Child>,
    pub log: PathBuf,
    /// Its HTTP port (dev-materiels' `/v1/status` says what it assigned and restored).
    pub http_port: Option<u16>,
    /// What `/v1/status` said last, kept after the process is gone.
    last_status: std::sync::Mutex<Option<StreamStats>>,
}

/// A GET on a local port with the test token, blocking, without a runtime: the body of a 200,
/// or `None` (nobody listening, a paused process, another status).
pub fn local_get(port: u16, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        http::TOKEN
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    head.starts_with("HTTP/1.1 200").then(|| answer[split + 4..].to_vec())
}

impl DevMateriels {
    /// SIGKILL: no chance to commit or flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes where it is (its sockets stay open, its timers stop).
    pub fn pause(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT: a paused process carries on from where it froze.
    pub fn resume(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "dev-materiels exited with {status} after SIGTERM; log:\n{}",
                        self.log_text()
                    );
                    return;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "dev-materiels did not stop after SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits for the process to exit by itself; returns whether it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) | None => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    /// Whether the process has exited by itself (it was neither killed nor stopped here).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    pub fn assert_running(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited early with {status}; log:\n{}", self.log.display(), self.log_tail(80));
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// What the process's `/v1/status` says now (and keeps it), or what it said last.
    pub fn status(&self) -> Option<StreamStats> {
        let fresh = self
            .http_port
            .and_then(|port| local_get(port, "/v1/status"))
            .and_then(|body| serde_json::from_slice::<StreamStats>(&body).ok());
        if let Some(status) = &fresh {
            *self.last_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
        }
        fresh.or_else(|| self.last_status.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The partitions this process restored, with the records its last restore of each replayed
    /// (its metrics).
    pub fn restores(&self) -> Vec<(i32, u64)> {
        self.restore_records().into_iter().map(|(p, r)| (p, r.last_records)).collect()
    }

    /// Each partition's restores by this process (its metrics).
    pub fn restore_records(&self) -> BTreeMap<i32, RestoreRecord> {
        self.status().map(|s| s.restores).unwrap_or_default()
    }

    /// The partitions of the last assignment this process received (its metrics).
    pub fn assigned(&self) -> Vec<i32> {
        self.status().map(|s| s.assigned).unwrap_or_default()
    }

    /// Waits until every partition in `0..partitions` has been restored by this process.
    pub fn wait_restored(&mut self, partitions: i32, timeout: Duration) -> Vec<(i32, u64)> {
        let start = Instant::now();
        loop {
            self.assert_running();
            let restores = self.restores();
            let seen: HashSet<i32> = restores.iter().map(|(p, _)| *p).collect();
            if (0..partitions).all(|p| seen.contains(&p)) {
                return restores;
            }
            assert!(
                start.elapsed() < timeout,
                "dev-materiels did not restore its tasks in {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for DevMateriels {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The wagon-lits view running in a thread.
pub struct ViewRunner {
    pub view: Arc<ViewStore>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ViewRunner {
    /// Waits until `done` holds for every order in `ids`; returns the ids for which it does not
    /// at the deadline.
    pub fn wait_until(
        &self,
        ids: &[String],
        timeout: Duration,
        done: impl Fn(Option<&OrderUpdate>) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut waiting: Vec<String> = ids.to_vec();
        loop {
            waiting.retain(|id| !done(self.view.get(id).expect("view read").as_ref()));
            if waiting.is_empty() || Instant::now() > deadline {
                return waiting;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn stop(mut self) -> Arc<ViewStore> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("view thread");
        }
        Arc::clone(&self.view)
    }
}

impl Drop for ViewRunner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The poison corpus of `testdata/poison/`: (file name, expected `dlq.error.kind`, bytes).
pub fn poison_corpus() -> Vec<(String, &'static str, Vec<u8>)> {
    const KINDS: [&str; 6] =
        ["unsupported-schema-version", "field-too-long", "key-mismatch", "empty-field", "malformed", "empty"];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/poison");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("testdata/poison") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some((_, rest)) = name.strip_suffix(".bin").and_then(|n| n.split_once('-')) else { continue };
        let kind = KINDS.iter().find(|k| rest.starts_with(*k)).unwrap_or_else(|| panic!("{name}: no known kind"));
        out.push((name.clone(), *kind, std::fs::read(&path).expect("read")));
    }
    out.sort();
    out
}

/// The orders in `ids` that the view shows as Shipped.
pub fn shipped(view: &ViewStore, ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter(|id| view.get(id).ok().flatten().and_then(|r| r.status) == Some(OrderStatus::Shipped))
        .cloned()
        .collect()
}

/// A status after which the first phase has nothing more to do.
pub fn settled(row: Option<&OrderUpdate>) -> bool {
    matches!(row.and_then(|r| r.status), Some(OrderStatus::Shipped | OrderStatus::Rejected | OrderStatus::Cancelled))
}

/// Sends commands and waits for Kafka to have them all.
pub fn send_all(producer: &CommandProducer, commands: &[CommandEnvelope]) {
    let futures: Vec<_> = commands.iter().map(|c| producer.send(c).expect("queue a command")).collect();
    for result in futures::executor::block_on(futures::future::join_all(futures)) {
        result.expect("delivery future").expect("Kafka took the command");
    }
}

/// Sends commands at about `per_second`, in small bursts, and waits for them all.
pub fn send_paced(producer: &CommandProducer, commands: &[CommandEnvelope], per_second: usize) {
    let burst = (per_second / 20).max(1);
    let start = Instant::now();
    let mut futures = Vec::with_capacity(commands.len());
    for (i, chunk) in commands.chunks(burst).enumerate() {
        for c in chunk {
            futures.push(producer.send(c).expect("queue a command"));
        }
        let due = start + Duration::from_millis(50 * (i as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    for result in futures::executor::block_on(futures::future::join_all(futures)) {
        result.expect("delivery future").expect("Kafka took the command");
    }
}

/// Commands as the oracle reads them (from their JSON on the wire).
pub fn wire_commands(commands: &[CommandEnvelope]) -> Vec<oracle::Sent> {
    commands
        .iter()
        .map(|c| {
            oracle::Sent::from_json(&serde_json::to_vec(c).expect("a command encodes")).expect("a command decodes")
        })
        .collect()
}

/// What the oracle expects of every order at the end: (version, status).
pub type Expected = BTreeMap<String, (u64, Option<String>)>;

/// Orders whose final row the oracle and the view disagree on.
pub fn compare_view(view: &ViewStore, expected: &Expected) -> Vec<String> {
    let mut diffs = Vec::new();
    for (id, (version, status)) in expected {
        match view.get(id).expect("view read") {
            Some(row) if row.version == *version && row.status.map(|s| s.as_str()) == status.as_deref() => {}
            Some(row) => diffs
                .push(format!("{id}: view has v{} {:?}, oracle says v{version} {status:?}", row.version, row.status)),
            None => diffs.push(format!("{id}: missing from the view (oracle says v{version} {status:?})")),
        }
    }
    let rows = view.all().expect("view scan");
    for row in rows {
        if !expected.contains_key(&row.order_id) {
            diffs.push(format!("{}: in the view but unknown to the oracle", row.order_id));
        }
    }
    diffs
}

/// The test binary's schema registry (Apicurio), started by the first test that asks for it
/// and killed with the process. Tests keep apart by their topics' names (subjects).
pub fn schema_registry() -> &'static kafka_harness::registry::SchemaRegistry {
    static REGISTRY: std::sync::OnceLock<kafka_harness::registry::SchemaRegistry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let started = Instant::now();
        // Started from a thread that lives as long as the test binary: the registry dies with the
        // thread that started it (PR_SET_PDEATHSIG), and a test's thread ends with its test.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("schema-registry".into())
            .spawn(move || {
                let _ = sender.send(kafka_harness::registry::SchemaRegistry::start());
                loop {
                    std::thread::park();
                }
            })
            .expect("starting the registry's thread");
        let registry = receiver.recv().expect("the registry's thread").expect("starting Apicurio Registry");
        eprintln!("schema registry at {} (started in {:?})", registry.url(), started.elapsed());
        registry
    })
}

pub fn print_path(label: &str, path: &Path) {
    eprintln!("{label}: {}", path.display());
}

/// Reads `order-updates` until the oracle finds every command applied and every timer fired, and
/// the view agrees with it; asserts that it holds and returns the last report.
pub fn converge(env: &TestEnv, view: &ViewRunner, sent: &[CommandEnvelope]) -> oracle::Report {
    converge_with(env, sent, |expected| compare_view(&view.view, expected))
}

/// [`converge`], with the view compared by `diffs` (for a view held by another process).
pub fn converge_with(
    env: &TestEnv,
    sent: &[CommandEnvelope],
    diffs: impl Fn(&Expected) -> Vec<String>,
) -> oracle::Report {
    converge_uncertain(env, sent, &HashSet::new(), diffs)
}

/// [`converge_with`], where the commands in `uncertain` may or may not have been sent
/// ([`oracle::check_uncertain`]).
pub fn converge_uncertain(
    env: &TestEnv,
    sent: &[CommandEnvelope],
    uncertain: &HashSet<String>,
    diffs: impl Fn(&Expected) -> Vec<String>,
) -> oracle::Report {
    let (report, diffs) = converge_report(env, sent, uncertain, diffs);
    assert!(
        diffs.is_empty(),
        "view differs from the oracle in {} orders, e.g. {:#?}\n{}",
        diffs.len(),
        &diffs[..diffs.len().min(10)],
        report.summary()
    );
    assert!(report.holds(), "{}: {:#?}", report.summary(), report.examples);
    report
}

/// Waits (up to 4 minutes) until the oracle finds every command applied and every timer fired,
/// and the view agrees; returns the last report and the view's differences, without judging them.
pub fn converge_report(
    env: &TestEnv,
    sent: &[CommandEnvelope],
    uncertain: &HashSet<String>,
    diffs: impl Fn(&Expected) -> Vec<String>,
) -> (oracle::Report, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(240);
    let sent = wire_commands(sent);
    let rules = env.oracle_rules();
    loop {
        let report = oracle::check_uncertain(&sent, uncertain, &env.wire_updates(), &rules);
        let diffs = diffs(&report.expected);
        let done = report.lost_commands == 0 && report.unsettled == 0 && diffs.is_empty();
        if done || Instant::now() > deadline {
            return (report, diffs);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
