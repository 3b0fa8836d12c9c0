//! dev-materiels: the stateful processor, wired from flags and environment onto the runtime,
//! with its HTTP server (the fallback path and interactive queries, [`http`]).

pub mod catalogue;
pub mod connectors;
pub mod http;
pub mod takeover;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use state::{Catalogue, Rules, StoreOptions};

use engine::kafka::KafkaArgs;
use engine::metrics::Topics;
use engine::runtime::direct::DirectHandle;
use engine::runtime::global::{GlobalConfig, GlobalMetrics, GlobalStreamThread};
use engine::runtime::{self, RuntimeError, StreamConfig, StreamMetrics, StreamStats};
use http_fallback::{until_set, HttpArgs};
use prometheus_client::registry::Registry;
use wire::avro::Record;
use wire::codec::CodecError;
use wire::{Codec, CodecArgs, TopicArgs};

/// dev-materiels' settings.
#[derive(Debug, Clone, Args)]
pub struct DevMaterielsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub codec: CodecArgs,
    /// Consumer group id; also names the changelog topic (`<id>-order-store-changelog`) and
    /// prefixes the transactional id.
    #[arg(long, env = "APPLICATION_ID", default_value = "dev-materiels")]
    pub application_id: String,
    /// This instance's stable name. A restarted instance must keep it: it fences its previous
    /// incarnation by it.
    #[arg(long, env = "INSTANCE_ID", default_value = "dev-materiels-0")]
    pub instance_id: String,
    /// Join the consumer group as a static member (group.instance.id = the instance id): a
    /// restart gets its partitions back without a rebalance. Off by default: after a broker
    /// outage longer than the session timeout, librdkafka can fence its own static member.
    #[arg(long, env = "STATIC_MEMBERSHIP")]
    pub static_membership: bool,
    /// Where the state stores live (one RocksDB per partition).
    #[arg(long, env = "STATE_DIR", default_value = "./state/dev-materiels")]
    pub state_dir: PathBuf,
    /// How often the transaction commits (and timers are checked).
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Time an accepted order waits before going into preparation.
    #[arg(long, env = "PREPARE_AFTER_MS", default_value_t = 2_000)]
    pub prepare_after_ms: u64,
    /// Time an order stays in preparation before it ships.
    #[arg(long, env = "SHIP_AFTER_MS", default_value_t = 5_000)]
    pub ship_after_ms: u64,
    /// File with the SKUs dev-materiels accepts, one per line; a built-in catalogue of 20
    /// rolling-stock materials otherwise. Not used when --catalogue-topic is given.
    #[arg(long, env = "CATALOGUE_FILE")]
    pub catalogue: Option<PathBuf>,
    #[command(flatten)]
    pub live_catalogue: catalogue::CatalogueArgs,
    /// Block cache shared by all state stores of the process, in MiB.
    #[arg(long, env = "STORE_CACHE_MB", default_value_t = 64)]
    pub store_cache_mb: usize,
    /// Consumer group session timeout: how long before a dead instance's partitions move.
    #[arg(long, env = "SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Transaction timeout: how long the broker lets a transaction of a dead instance stay open.
    #[arg(long, env = "TRANSACTION_TIMEOUT_MS", default_value_t = 10_000)]
    pub transaction_timeout_ms: u64,
    /// Create missing topics at start (`orders`, `order-updates`, the dead-letter topic and the
    /// compacted changelog). Turn off where topics are managed elsewhere.
    #[arg(long, env = "CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// Keep a warm copy of every partition this instance does not own (standby tasks), by
    /// tailing the changelog: a failover then restores seconds of changelog, not all of it.
    #[arg(long, env = "STANDBY")]
    pub standby: bool,
    /// A transactional call (send offsets, commit, abort) still running this long after it
    /// started is stuck in librdkafka: the transaction is processed again with a new producer
    /// (or, stuck in the commit itself, the process stops for a restart to resolve it).
    #[arg(long, env = "TRANSACTION_CALL_STUCK_AFTER_MS", default_value_t = runtime::STUCK_CALL_AFTER.as_millis() as u64)]
    pub transaction_call_stuck_after_ms: u64,
    /// Overlapped commits: the stream thread opens the next transaction on a second
    /// transactional producer (`<application id>-<instance id>#1`) while the previous one
    /// commits, instead of taking no record until it has. Order and fencing are kept (see
    /// docs/architecture.md). On by default since the consumer no longer starves (2026-12-08):
    /// lower latency, no more CPU per order (docs/benchmarks.md). `false`: one commit at a time.
    #[arg(long, env = "OVERLAP_COMMITS", default_value_t = true, action = clap::ArgAction::Set)]
    pub overlap_commits: bool,
    /// Stream threads (Kafka Streams' `num.stream.threads`): each is a member of the consumer
    /// group with its own tasks and producer(s); they share the state directory, and HTTP
    /// requests go to the thread that serves the order. Default: one per two
    /// cores, at least one (a stream thread keeps about two cores busy with its librdkafka,
    /// committer and RocksDB threads, docs/benchmarks.md).
    #[arg(long, env = "STREAM_THREADS", default_value_t = default_stream_threads(), value_parser = clap::value_parser!(u16).range(1..))]
    pub stream_threads: u16,
    /// A standby cluster copies this one with MirrorMaker 2: each update carries its order's
    /// state and its command's timestamp in headers (about 100 bytes), from which
    /// `dev-materiels cluster take-over` rebuilds the state on the standby and finds where to
    /// start reading `orders` there (docs/multi-cluster.md).
    #[arg(long, env = "REPLICATED", default_value_t = false, action = clap::ArgAction::Set)]
    pub replicated: bool,
}

/// One stream thread per two cores, at least one.
pub fn default_stream_threads() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u16::try_from(cores / 2).unwrap_or(u16::MAX).max(1)
}

impl DevMaterielsArgs {
    /// The runtime configuration these settings describe.
    pub fn stream_config(&self) -> Result<StreamConfig, RuntimeError> {
        let catalogue = match &self.catalogue {
            Some(path) => Catalogue::from_file(path)?,
            None => Catalogue::default(),
        };
        Ok(StreamConfig {
            kafka: self.kafka.clone(),
            topics: self.topics.clone(),
            application_id: self.application_id.clone(),
            instance_id: self.instance_id.clone(),
            static_membership: self.static_membership,
            state_dir: self.state_dir.clone(),
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            rules: Rules {
                catalogue,
                prepare_after: Duration::from_millis(self.prepare_after_ms),
                ship_after: Duration::from_millis(self.ship_after_ms),
            },
            store: StoreOptions::with_cache_bytes(self.store_cache_mb << 20),
            session_timeout: Duration::from_millis(self.session_timeout_ms),
            transaction_timeout: Duration::from_millis(self.transaction_timeout_ms),
            create_topics: self.create_topics,
            standby: self.standby,
            stuck_call_after: Duration::from_millis(self.transaction_call_stuck_after_ms),
            overlap_commits: self.overlap_commits,
            replicated: self.replicated,
            stream_threads: usize::from(self.stream_threads),
            // Connected to the registry when the processor starts ([`DevMateriels::run`]).
            codec: Codec::json(),
        })
    }
}

/// Why dev-materiels stopped, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevMaterielsError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("loading the token: {0}")]
    Token(#[from] http_fallback::secret::SecretError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the HTTP runtime: {0}")]
    HttpRuntime(std::io::Error),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("the schema registry: {0}")]
    Codec(#[from] CodecError),
}

/// dev-materiels, configured and with its metrics registered, ready to run.
pub struct DevMateriels {
    config: StreamConfig,
    live_catalogue: catalogue::CatalogueArgs,
    /// The live catalogue's global stream thread's metrics (registered whether or not it runs).
    global_metrics: GlobalMetrics,
    codec: CodecArgs,
    /// The schema registry's client, when one is configured (its health is on `/metrics` and
    /// `/readyz` from the start).
    schema_registry: Option<wire::avro::Registry>,
    http: HttpArgs,
    metrics: Arc<StreamMetrics>,
    registry: Registry,
}

impl DevMateriels {
    pub fn new(args: &DevMaterielsArgs) -> Result<DevMateriels, DevMaterielsError> {
        let config = args.stream_config()?;
        let mut registry = Registry::default();
        let topics = Topics {
            orders: config.topics.orders_topic.clone(),
            updates: config.topics.updates_topic.clone(),
            changelog: config.changelog_topic(),
            dlq: config.topics.dlq_topic.clone(),
        };
        let metrics = Arc::new(StreamMetrics::new(&mut registry, &topics));
        let schema_registry = args.codec.registry().map_err(CodecError::from)?;
        if let Some(client) = &schema_registry {
            registry.register_collector(Box::new(client.health()));
        }
        let global_metrics = match args.live_catalogue.topic() {
            Some(topic) => GlobalMetrics::register(&mut registry, topic),
            None => GlobalMetrics::default(),
        };
        Ok(DevMateriels {
            config,
            live_catalogue: args.live_catalogue.clone(),
            global_metrics,
            codec: args.codec.clone(),
            schema_registry,
            http: args.http.clone(),
            metrics,
            registry,
        })
    }

    /// The stream thread's metrics, live.
    pub fn metrics(&self) -> Arc<StreamMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` is set: the stream thread on this thread, the HTTP server (when
    /// `--http-listen` is given) on a small Tokio runtime beside it.
    pub fn run(self, shutdown: Arc<AtomicBool>) -> Result<StreamStats, DevMaterielsError> {
        let DevMateriels {
            mut config,
            live_catalogue,
            global_metrics,
            codec,
            schema_registry,
            http,
            metrics,
            mut registry,
        } = self;
        tracing::info!(
            brokers = %config.kafka.brokers,
            orders = %config.topics.orders_topic,
            updates = %config.topics.updates_topic,
            changelog = %config.changelog_topic(),
            state_dir = %config.state_dir.display(),
            "starting dev-materiels"
        );
        // Wrong credentials or no broker: say so now, rather than retry forever.
        config.kafka.check(engine::kafka::KAFKA_CALL_TIMEOUT).map_err(RuntimeError::from)?;
        let (direct, requests) = DirectHandle::channel();
        let server = match http.http_listen {
            None => None,
            Some(addr) => {
                let mut server_config = http.server_config()?;
                server_config.metrics = Some(http_fallback::HttpMetrics::new(&mut registry));
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("dev-materiels-http")
                    .enable_all()
                    .build()
                    .map_err(DevMaterielsError::HttpRuntime)?;
                let listener = runtime
                    .block_on(tokio::net::TcpListener::bind(addr))
                    .map_err(|source| DevMaterielsError::Listen { addr, source })?;
                tracing::info!(%addr, auth = server_config.token.is_some(), "HTTP fallback endpoint listening");
                let health = schema_registry.as_ref().map(wire::avro::Registry::health);
                let routes = http::router(direct.clone(), Arc::clone(&metrics), Arc::new(registry), health);
                let router = http_fallback::layered(routes, &server_config);
                let stop = Arc::clone(&shutdown);
                let task = runtime.spawn(async move {
                    http_fallback::serve(listener, router, &server_config, until_set(stop)).await
                });
                Some((runtime, task))
            }
        };
        // The registry is waited for with the HTTP server up, so that /readyz and /metrics show
        // an outage. Updates go on their topic, and the commands of an outbox handed over back
        // on `orders`.
        let writes = [
            (Record::Update, config.topics.updates_topic.as_str()),
            (Record::Command, config.topics.orders_topic.as_str()),
        ];
        let result = match Codec::connect_to(schema_registry, &codec, &writes) {
            Ok(wire) => {
                tracing::info!(writes = ?wire.writes(), registry = ?wire.registry().map(|r| r.url()), "wire format");
                config.codec = wire;
                run_with_catalogue(config, &live_catalogue, global_metrics, &shutdown, metrics, requests)
            }
            Err(e) => Err(DevMaterielsError::Codec(e)),
        };
        // Whatever ended the stream thread ends the HTTP server too (gracefully).
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some((runtime, task)) = server {
            match runtime.block_on(task) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "the HTTP server failed"),
                Err(err) => tracing::warn!(error = %err, "the HTTP server task failed"),
            }
        }
        result
    }
}

/// Runs the stream threads, after the live catalogue (when configured) is restored; its global
/// stream thread stops with them.
fn run_with_catalogue(
    mut config: StreamConfig,
    live: &catalogue::CatalogueArgs,
    global_metrics: GlobalMetrics,
    shutdown: &Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
    requests: std::sync::mpsc::Receiver<runtime::direct::DirectRequest>,
) -> Result<StreamStats, DevMaterielsError> {
    let Some(topic) = live.topic().map(str::to_string) else {
        return runtime::run(config, Arc::clone(shutdown), metrics, requests).map_err(DevMaterielsError::from);
    };
    if config.create_topics {
        engine::admin::ensure_topics(&config.kafka, &catalogue::topic_specs(live, &config.topics))
            .map_err(RuntimeError::from)?;
    }
    let store = catalogue::CatalogueGlobalStore::open(&config.state_dir, &config.store).map_err(RuntimeError::from)?;
    let global = GlobalConfig {
        kafka: config.kafka.clone(),
        topic: topic.clone(),
        dead_letter_topic: live.catalogue_dlq_topic.clone(),
        client_id: config.transactional_id(),
        batch_interval: Duration::from_millis(100),
    };
    let table = store.0.table();
    let (thread, restore) = GlobalStreamThread::start(global, store, global_metrics, Arc::clone(shutdown))?;
    tracing::info!(%topic, rows = restore.entries, records = restore.records, dead_letters = restore.dead_letters, elapsed = ?restore.elapsed, "the catalogue is restored: processing starts");
    config.rules.catalogue = Catalogue::table(table);
    let result = runtime::run(config, Arc::clone(shutdown), metrics, requests).map_err(DevMaterielsError::from);
    let stopped = thread.stop().map_err(DevMaterielsError::from);
    let stats = result?;
    stopped?;
    Ok(stats)
}

/// Runs dev-materiels until `shutdown` is set ([`DevMateriels::run`]).
pub fn run(args: &DevMaterielsArgs, shutdown: Arc<AtomicBool>) -> Result<StreamStats, DevMaterielsError> {
    DevMateriels::new(args)?.run(shutdown)
}
