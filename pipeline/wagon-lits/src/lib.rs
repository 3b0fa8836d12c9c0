//! wagon-lits: places orders and keeps its own view of them.
//!
//! - [`view`]: `order-updates` materialised into RocksDB, exactly once by stored offsets;
//! - [`sender`]: commands to Kafka, or over HTTP to dev-materiels when Kafka is not there;
//! - [`api`]: the HTTP API for the people and systems that place orders;
//! - [`ops`]: the operations page (`/ops`) for the people who run the system;
//! - [`dead_letters`]: listing and replaying the dead-letter topic (`wagon-lits dlq`);
//! - [`takeover`]: moving to a standby cluster after a failover (`wagon-lits cluster take-over`);
//! - [`mirror_lag`]: MirrorMaker 2's lag to the standby, and what a failover now would cost;
//! - [`metrics`]: its families on `GET /metrics`.
//!
//! [`serve`] wires the three together.

pub mod api;
pub mod dead_letters;
pub mod metrics;
pub mod mirror_lag;
pub mod ops;
pub mod sender;
pub mod starting;
pub mod takeover;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use prometheus_client::registry::Registry;
use rdkafka::error::KafkaError;
use state::{StoreError, StoreOptions};

use engine::admin::{ensure_topics, TopicError};
use engine::kafka::KafkaArgs;
use http_fallback::{until_set, HttpArgs};
use wire::topics::service_topics;
use wire::TopicArgs;

pub use metrics::WagonLitsMetrics;
pub use sender::{CommandProducer, CommandSender};
pub use view::{Materialiser, ViewConfig};

/// A failure of wagon-lits' Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum WagonLitsError {
    #[error("{context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error("the view did not catch up with order-updates within {0:?}")]
    CatchUpTimeout(Duration),
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error(transparent)]
    Connect(#[from] engine::kafka::ConnectError),
    #[error("loading the token: {0}")]
    Token(#[from] http_fallback::secret::SecretError),
    #[error("cannot start the {name} thread: {source}")]
    Thread { name: &'static str, source: std::io::Error },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the HTTP runtime: {0}")]
    HttpRuntime(std::io::Error),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("the schema registry: {0}")]
    Codec(#[from] wire::codec::CodecError),
    #[error("reading an Avro update: {0}")]
    Registry(wire::avro::AvroError),
    #[error("{0} already holds a view; replay into a new directory")]
    ReplayTarget(PathBuf),
    #[error(
        "the cluster being left, at {brokers}, answers: taking over now would send commands to two clusters. Stop \
         wagon-lits there and let MirrorMaker 2 catch up (a switchover, docs/multi-cluster.md), then run again with \
         --force; or run again once that cluster is gone"
    )]
    PrimaryAnswers { brokers: String },
    #[error("the cluster of the view: {0}")]
    Cluster(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Sets the process's shutdown flag when dropped: a thread that holds one stops the process
/// however it ends.
struct StopOnExit(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Orders in the rebuilt view.
    pub orders: usize,
    /// Orders whose (version, status) differ between the rebuilt and the live view, or that only
    /// one of them has, with a few examples.
    pub differences: usize,
    pub examples: Vec<String>,
}

/// Rebuilds the view from `order-updates`, from the beginning, into `into` (a new directory),
/// and compares it with the view at `live` (opened read-only, so the live service may run).
pub fn replay(
    kafka: &KafkaArgs,
    codec: &wire::Codec,
    updates_topic: &str,
    into: &std::path::Path,
    live: Option<&std::path::Path>,
) -> Result<ReplayReport, WagonLitsError> {
    if into.join("view").exists() {
        return Err(WagonLitsError::ReplayTarget(into.to_path_buf()));
    }
    let mut materialiser = Materialiser::new(
        ViewConfig {
            kafka: kafka.clone(),
            updates_topic: updates_topic.to_string(),
            state_dir: into.to_path_buf(),
            max_batch: 5_000,
            codec: codec.clone(),
        },
        &StoreOptions::default(),
        WagonLitsMetrics::unregistered().view,
    )?;
    materialiser.catch_up(Duration::from_secs(600))?;
    let rebuilt: std::collections::BTreeMap<String, (u64, Option<state::OrderStatus>)> =
        materialiser.view().all()?.into_iter().map(|r| (r.order_id, (r.version, r.status))).collect();
    let mut report = ReplayReport { orders: rebuilt.len(), differences: 0, examples: Vec::new() };
    if let Some(live) = live {
        let live = state::ViewStore::open_read_only(&live.join("view"), &StoreOptions::default())?;
        let live: std::collections::BTreeMap<String, (u64, Option<state::OrderStatus>)> =
            live.all()?.into_iter().map(|r| (r.order_id, (r.version, r.status))).collect();
        for id in rebuilt.keys().chain(live.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (a, b) = (rebuilt.get(id), live.get(id));
            if a != b {
                report.differences += 1;
                if report.examples.len() < 10 {
                    report.examples.push(format!("{id}: rebuilt {a:?}, live {b:?}"));
                }
            }
        }
    }
    Ok(report)
}

/// Creates `orders`, `order-updates` and the dead-letter topic if they are missing.
pub fn ensure_service_topics(kafka: &KafkaArgs, topics: &TopicArgs) -> Result<(), TopicError> {
    ensure_topics(kafka, &service_topics(topics))
}

/// wagon-lits' settings.
#[derive(Debug, Clone, Args)]
pub struct WagonLitsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub codec: wire::CodecArgs,
    /// Where the view lives.
    #[arg(long, env = "STATE_DIR", default_value = "./state/wagon-lits")]
    pub state_dir: PathBuf,
    /// Base URLs of dev-materiels' HTTP endpoints (comma-separated, one per instance), used when
    /// Kafka is unreachable. A command goes to the instance that owns its partition: the others
    /// answer "not owner" and the next URL is tried.
    #[arg(long, env = "DEV_MATERIELS_URL", value_delimiter = ',')]
    pub dev_materiels_url: Vec<String>,
    /// How long a command may wait for Kafka before it goes over HTTP instead.
    #[arg(long, env = "DELIVERY_TIMEOUT_MS", default_value_t = 2_000)]
    pub delivery_timeout_ms: u64,
    /// How often the circuit breaker probes Kafka while it is open.
    #[arg(long, env = "BREAKER_PROBE_MS", default_value_t = 1_000)]
    pub breaker_probe_ms: u64,
    /// dev-materiels' consumer group (its application id): the operations page shows its lag on
    /// `orders` and its changelog topic.
    #[arg(long, env = "DEV_MATERIELS_GROUP", default_value = "dev-materiels")]
    pub dev_materiels_group: String,
    /// Time allowed for a call to dev-materiels over HTTP.
    #[arg(long, env = "FALLBACK_TIMEOUT_MS", default_value_t = 5_000)]
    pub fallback_timeout_ms: u64,
    /// A command decided over HTTP that `order-updates` has not shown this long after is sent
    /// again to `orders` (same command id, decided once by whoever owns the partition), and
    /// again as long as it is not shown. Its order's next commands wait until it is.
    #[arg(long, env = "PENDING_RESEND_AFTER_MS", default_value_t = 30_000)]
    pub pending_resend_after_ms: u64,
    /// A standby cluster copies this one with MirrorMaker 2: journal each command (synced, in the
    /// view's store) until the standby has its answer, for `wagon-lits cluster take-over` to send
    /// again after a failover (docs/multi-cluster.md).
    #[arg(long, env = "REPLICATED", default_value_t = false, action = clap::ArgAction::Set)]
    pub replicated: bool,
    /// With --replicated and no --standby-brokers: how long a journaled command is kept after
    /// `order-updates` answered it, taken as the time MirrorMaker 2 needs to copy the answer (a
    /// failover later than that, with the copy further behind, loses what it has not copied).
    /// With --standby-brokers the command is kept until the standby has the answer.
    #[arg(long, env = "JOURNAL_KEEP_ANSWERED_SECS", default_value_t = 900)]
    pub journal_keep_answered_secs: u64,
    /// The standby cluster MirrorMaker 2 copies the system's topics to: its lag goes on
    /// `/metrics` (`rail_mirror_lag_records`, `rail_mirror_lag_seconds`) and `GET
    /// /readyz/failover` says what a failover now would cost (docs/multi-cluster.md). Empty: none.
    #[arg(long, env = "STANDBY_BROKERS")]
    pub standby_brokers: Option<String>,
    /// How often MirrorMaker 2's lag is measured (with --standby-brokers).
    #[arg(long, env = "MIRROR_LAG_INTERVAL_MS", default_value_t = 10_000)]
    pub mirror_lag_interval_ms: u64,
}

/// Starts the watch of MirrorMaker 2's lag, if a standby is configured, and what takes answered
/// commands out of the journal (`--replicated`): the watch once the standby has an answer,
/// else a thread once `--journal-keep-answered-secs` have passed since it.
fn keep_journal(
    args: &WagonLitsArgs,
    mirror: Option<&Arc<mirror_lag::MirrorWatch>>,
    view: &Arc<state::ViewStore>,
    every: Duration,
    shutdown: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), WagonLitsError> {
    let journal = args.replicated.then(|| Arc::clone(view));
    if let Some(watch) = mirror {
        let updates = args.topics.updates_topic.clone();
        return mirror_lag::spawn(Arc::clone(watch), every, Arc::clone(shutdown), move |lag| {
            let Some(view) = &journal else { return };
            match view.forget_copied(&lag.copied_until(&updates)) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(commands = n, "answers on the standby: out of the journal"),
                Err(err) => tracing::warn!(error = %err, "cannot take answered commands out of the journal"),
            }
        })
        .map_err(|source| WagonLitsError::Thread { name: "mirror-lag", source });
    }
    let Some(view) = journal else { return Ok(()) };
    let keep = Duration::from_secs(args.journal_keep_answered_secs);
    let stop = Arc::clone(shutdown);
    std::thread::Builder::new()
        .name("journal-keeper".into())
        .spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let before = sender::now_ms().saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
                if let Err(err) = view.forget_answered_before(before) {
                    tracing::warn!(error = %err, "cannot take answered commands out of the journal");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map(|_| ())
        .map_err(|source| WagonLitsError::Thread { name: "journal-keeper", source })
}

/// Runs wagon-lits (view, API, breaker probe) until `shutdown` is set.
pub fn serve(args: &WagonLitsArgs, shutdown: Arc<std::sync::atomic::AtomicBool>) -> Result<(), WagonLitsError> {
    args.kafka.check(engine::kafka::KAFKA_CALL_TIMEOUT)?;
    // The view's positions are offsets of one cluster: it refuses another (a failover goes
    // through `wagon-lits cluster take-over`).
    let cluster =
        engine::runtime::state_dir::cluster_id(&args.kafka).map_err(|e| WagonLitsError::Cluster(e.to_string()))?;
    engine::runtime::state_dir::claim(&args.state_dir, &cluster).map_err(|e| WagonLitsError::Cluster(e.to_string()))?;
    ensure_service_topics(&args.kafka, &args.topics)?;
    let schema_registry = args.codec.registry().map_err(wire::codec::CodecError::from)?;
    let schema_health = schema_registry.as_ref().map(wire::avro::Registry::health);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wagon-lits-http")
        .enable_all()
        .build()
        .map_err(WagonLitsError::HttpRuntime)?;
    let mut config = args.http.server_config()?;
    // While the registry is awaited, the API's address says so ([`starting`]).
    let starting = match (args.http.http_listen, &schema_health) {
        (Some(addr), Some(health)) => Some(starting::Starting::serve(&runtime, addr, Arc::clone(health), &config)?),
        _ => None,
    };
    let codec = wire::Codec::connect_to(
        schema_registry,
        &args.codec,
        &[(wire::avro::Record::Command, &args.topics.orders_topic)],
    );
    if let Some(starting) = starting {
        starting.stop(&runtime);
    }
    let codec = codec?;
    tracing::info!(writes = ?codec.writes(), registry = ?codec.registry().map(|r| r.url()), "wire format");
    let mut registry = Registry::default();
    if let Some(health) = &schema_health {
        registry.register_collector(Box::new(Arc::clone(health)));
    }
    let metrics = WagonLitsMetrics::new(&mut registry, &args.topics.orders_topic, &args.topics.updates_topic);
    let mirror = args.standby_brokers.as_ref().filter(|b| !b.is_empty()).map(|brokers| {
        let topics = vec![
            args.topics.orders_topic.clone(),
            args.topics.updates_topic.clone(),
            wire::topics::changelog_name(&args.dev_materiels_group),
            args.topics.dlq_topic.clone(),
        ];
        let standby = KafkaArgs { brokers: brokers.clone(), ..args.kafka.clone() };
        Arc::new(mirror_lag::MirrorWatch::new(args.kafka.clone(), standby, topics, &mut registry))
    });
    let mirror_interval = Duration::from_millis(args.mirror_lag_interval_ms.max(1_000));
    let materialiser = Materialiser::new(
        ViewConfig {
            kafka: args.kafka.clone(),
            updates_topic: args.topics.updates_topic.clone(),
            state_dir: args.state_dir.clone(),
            max_batch: 5_000,
            codec: codec.clone(),
        },
        &StoreOptions::default(),
        metrics.view.clone(),
    )?;
    let view = materialiser.view();
    view.set_journaling(args.replicated);
    keep_journal(args, mirror.as_ref(), &view, mirror_interval, &shutdown)?;
    let view_thread = {
        let shutdown = Arc::clone(&shutdown);
        std::thread::Builder::new()
            .name("wagon-lits-view".into())
            .spawn(move || {
                // The view ends only when asked: any other end (an error, a panic) stops the
                // process, rather than leave the API serving a view that no longer moves.
                let _stop = StopOnExit(Arc::clone(&shutdown));
                let result = materialiser.run(shutdown);
                if let Err(err) = &result {
                    tracing::error!(error = %err, "the view failed; stopping");
                }
                result
            })
            .map_err(|source| WagonLitsError::Thread { name: "view", source })?
    };
    let delivery_timeout = Duration::from_millis(args.delivery_timeout_ms);
    let producer =
        CommandProducer::new(&args.kafka, &args.topics.orders_topic, delivery_timeout)?.with_codec(codec.clone());
    let fallback = (!args.dev_materiels_url.is_empty()).then(|| {
        (
            args.dev_materiels_url.clone(),
            http_fallback::Client::new(config.token.clone(), Duration::from_millis(args.fallback_timeout_ms)),
        )
    });
    let sender = Arc::new(
        CommandSender::new(producer, delivery_timeout, fallback, Arc::clone(&view), metrics.sender.clone())
            .with_journal(args.replicated),
    );
    runtime.spawn(Arc::clone(&sender).probe(Duration::from_millis(args.breaker_probe_ms), Arc::clone(&shutdown)));
    runtime.spawn(Arc::clone(&sender).resend_pending(
        Duration::from_secs(1),
        Duration::from_millis(args.pending_resend_after_ms),
        Arc::clone(&shutdown),
    ));
    let served = match args.http.http_listen {
        Some(addr) => {
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|source| WagonLitsError::Listen { addr, source })?;
            config.metrics = Some(http_fallback::HttpMetrics::new(&mut registry));
            config.public_paths.push("/ops/login".into());
            config.browser = Some(http_fallback::BrowserPages { prefix: "/ops".into(), login: "/ops/login".into() });
            tracing::info!(%addr, auth = config.token.is_some(), fallback = ?args.dev_materiels_url, "wagon-lits API listening");
            let ops = ops::Ops {
                view: Arc::clone(&view),
                sender: Arc::clone(&sender),
                token: config.token.clone(),
                config: ops::OpsConfig {
                    kafka: args.kafka.clone(),
                    orders_topic: args.topics.orders_topic.clone(),
                    updates_topic: args.topics.updates_topic.clone(),
                    dlq_topic: args.topics.dlq_topic.clone(),
                    processor_group: args.dev_materiels_group.clone(),
                    view: Arc::clone(&view),
                    codec,
                },
            };
            let api = api::Api {
                view: Arc::clone(&view),
                sender,
                registry: Arc::new(registry),
                ops: Some(Arc::new(ops)),
                schema_registry: schema_health,
                failover: Some(api::Failover { mirror, replicated: args.replicated, interval: mirror_interval }),
            };
            let router = http_fallback::layered(api::router(Arc::new(api)), &config);
            runtime.block_on(http_fallback::serve(listener, router, &config, until_set(Arc::clone(&shutdown))))
        }
        None => {
            runtime.block_on(until_set(Arc::clone(&shutdown)));
            Ok(())
        }
    };
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    let viewed = view_thread.join().map_err(|_| WagonLitsError::Panicked("view"))?;
    served.map_err(WagonLitsError::Http)?;
    let stats = viewed?;
    tracing::info!(applied = stats.applied, stale = stats.stale, "wagon-lits stopped");
    Ok(())
}
