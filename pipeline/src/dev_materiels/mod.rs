//! dev-materiels: the stateful processor, wired from flags and environment onto the runtime,
//! with its HTTP server (the fallback path and interactive queries, [`http`]).

pub mod http;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use state::{Catalogue, Rules, StoreOptions};

use crate::http_args::{until_set, HttpArgs};
use crate::kafka_config::{KafkaArgs, TopicArgs};
use crate::runtime::direct::DirectHandle;
use crate::runtime::{self, RuntimeError, StreamConfig, StreamMetrics, StreamStats};

/// dev-materiels' settings.
#[derive(Debug, Clone, Args)]
pub struct DevMaterielsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub http: HttpArgs,
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
    /// rolling-stock materials otherwise.
    #[arg(long, env = "CATALOGUE_FILE")]
    pub catalogue: Option<PathBuf>,
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
}

impl DevMaterielsArgs {
    /// The runtime configuration these settings describe.
    pub fn stream_config(&self) -> Result<StreamConfig, RuntimeError> {
        let catalogue = match &self.catalogue {
            Some(path) => Catalogue::from_file(path).map_err(|e| RuntimeError::Config(e.to_string()))?,
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
        })
    }
}

/// Runs dev-materiels until `shutdown` is set: the stream thread on this thread, the HTTP server
/// (when `--http-listen` is given) on a small Tokio runtime beside it.
pub fn run(
    args: &DevMaterielsArgs,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
) -> Result<StreamStats, RuntimeError> {
    let config = args.stream_config()?;
    tracing::info!(
        brokers = %config.kafka.brokers,
        orders = %config.topics.orders_topic,
        updates = %config.topics.updates_topic,
        changelog = %config.changelog_topic(),
        state_dir = %config.state_dir.display(),
        "starting dev-materiels"
    );
    // Wrong credentials or no broker: say so now, rather than retry forever.
    config.kafka.check(crate::kafka_config::KAFKA_CALL_TIMEOUT)?;
    let (direct, requests) = DirectHandle::channel();
    let server = match args.http.http_listen {
        None => None,
        Some(addr) => {
            let mut server_config = args.http.server_config().map_err(|e| RuntimeError::Config(e.to_string()))?;
            let collector = crate::metrics::DevMaterielsCollector {
                metrics: Arc::clone(&metrics),
                topics: crate::metrics::Topics {
                    orders: config.topics.orders_topic.clone(),
                    updates: config.topics.updates_topic.clone(),
                    changelog: config.changelog_topic(),
                    dlq: config.topics.dlq_topic.clone(),
                },
            };
            let (registry, http_metrics) = crate::metrics::registry(collector, http::route_of);
            server_config.metrics = Some(http_metrics);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("dev-materiels-http")
                .enable_all()
                .build()
                .map_err(|e| RuntimeError::Config(format!("cannot start the HTTP runtime: {e}")))?;
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|e| RuntimeError::Config(format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(%addr, auth = server_config.token.is_some(), "HTTP fallback endpoint listening");
            let handler = http::handler(direct.clone(), Arc::clone(&metrics), registry);
            let stop = Arc::clone(&shutdown);
            let task = runtime.spawn(http_fallback::serve(listener, server_config, handler, until_set(stop)));
            Some((runtime, task))
        }
    };
    let result = runtime::run(config, Arc::clone(&shutdown), metrics, requests);
    // Whatever ended the stream thread ends the HTTP server too (gracefully).
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some((runtime, task)) = server {
        let _ = runtime.block_on(task);
    }
    result
}
