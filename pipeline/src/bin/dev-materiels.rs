//! The `dev-materiels` command line: run the processor, or check and apply the topics.

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md). The
/// `system-allocator` feature leaves it out, for heaptrack.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`MALLOC_CONF` in the environment still overrides
/// them): pages freed go back to the system after 1 s rather than 10 (`muzzy_decay_ms` is
/// already 0 by default). Peak RSS with 1M orders: 191 and 197 MiB against 210, 218 and 226 MiB
/// without, for 5-10% more CPU per order (docs/benchmarks.md, 2026-12-02).
// SAFETY: jemalloc reads this symbol (a `const char *`, here a reference to the first byte of a
// NUL-terminated string) as its compiled-in `malloc_conf`; nothing else defines it.
#[cfg(not(feature = "system-allocator"))]
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &u8 = &b"dirty_decay_ms:1000\0"[0];

use clap::{Parser, Subcommand};
use engine::admin::{apply_topics, check_topics, Finding};
use engine::logging::{self, LogFormat};
use wire::avro::subjects::{self, SchemaSet};
use wire::avro::Registry;
use wire::topics::system_topics;

use dev_materiels::connectors::{ConnectClient, Connector, RestartPolicy, Supervisor};
use dev_materiels::DevMaterielsArgs;

/// dev-materiels: the exactly-once stateful processor of material orders.
///
/// Reads `orders`, keeps each order's state machine in RocksDB (one store per partition, backed
/// by the compacted changelog `<application-id>-order-store-changelog`), and emits to
/// `order-updates`; updates, changelog records and consumed offsets commit in one Kafka
/// transaction. Invalid commands go to the dead-letter topic with their reason. SIGTERM or
/// SIGINT commits what is open and stops.
///
/// `dev-materiels topics check|apply` checks (or creates and fixes) the topics of the system
/// instead of running; `dev-materiels schemas check|apply` does the same for the Avro schemas in
/// the schema registry, and `dev-materiels connect apply|status|supervise` for the Kafka Connect
/// connectors.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: DevMaterielsArgs,
    /// Log format (`RUST_LOG` sets the filter, e.g. `info,pipeline=debug`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain", global = true)]
    log_format: LogFormat,
    /// Export spans to an OpenTelemetry collector over OTLP/HTTP, e.g. `http://localhost:4318`
    /// (spans go to `<url>/v1/traces`). Off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The topics of the system: `orders`, `order-updates`, the dead-letter topic and the
    /// compacted changelog, with the partitions, replication, retention and cleanup policy the
    /// flags give; with --catalogue-topic, the catalogue topic (compacted) and its dead-letter
    /// topic too.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// The Avro schemas of `orders` and `order-updates` in the schema registry
    /// (--schema-registry-url): subjects `<topic>-value`, compatibility FULL_TRANSITIVE, every
    /// version of the repository's `schemas/` registered in order.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
        /// Check or apply the schemas in this directory (laid out as `schemas/`:
        /// `order-command/v1.avsc`, ...) instead of this build's, e.g. a new version before it is
        /// committed.
        #[arg(long, global = true)]
        schemas_dir: Option<std::path::PathBuf>,
    },
    /// The Kafka Connect connectors of the system (`deploy/connect/`: the catalogue source from
    /// PostgreSQL, the orders sink to PostgreSQL) on a running Connect worker, through its REST
    /// API (docs/integration.md).
    /// Multi-cluster operation (docs/multi-cluster.md). `cluster take-over`, run against the
    /// standby cluster's brokers with dev-materiels stopped everywhere and MirrorMaker 2 stopped,
    /// after the primary cluster is lost: corrects the standby's changelog to the state each
    /// order's last update there carries (updates written with --replicated), commits the group's
    /// offsets on `orders` right after the last command decided, and makes --state-dir the
    /// standby's. Then start dev-materiels against the standby. Prints one line per partition.
    /// Exits 1 if the cluster left answers (without --force), 2 on any other failure; safe to run
    /// again. `cluster clear` deletes the system's topics on an old primary before a failback.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    Connect {
        #[command(subcommand)]
        action: ConnectAction,
        /// The Connect worker's REST API.
        #[arg(long, env = "CONNECT_URL", default_value = "http://localhost:8083", global = true)]
        connect_url: String,
        /// Apply the connectors of this directory (`*.json`, laid out as `deploy/connect/`)
        /// instead of this build's.
        #[arg(long, global = true)]
        connectors_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum ConnectAction {
    /// Create each connector, or replace its configuration (idempotent), then wait up to a
    /// minute for it and its tasks to run and print their states. Exits 1 unless all run, 2 if
    /// the worker cannot be reached (a worker still starting is waited for, up to two minutes)
    /// or a connector file cannot be read.
    Apply,
    /// Print each connector's state and its tasks' (with the trace of a failure). Exits 1
    /// unless all run, 2 if the worker cannot be reached (waited for up to two minutes).
    Status,
    /// Keep the connectors running: Kafka Connect restarts no failed task by itself, so restart
    /// each failed connector and task (at once, then backing off from 2 s to 5 min while it keeps
    /// failing; a connector that ran 10 min starts over), logging each restart with its trace.
    /// Runs until SIGTERM or Ctrl-C; a worker that cannot be reached is waited out.
    Supervise {
        /// Seconds between two looks at the connectors' status.
        #[arg(long, env = "CONNECT_SUPERVISE_INTERVAL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        interval_secs: u64,
    },
}

#[derive(Subcommand, Clone)]
enum ClusterAction {
    /// Take over on the cluster --brokers names (the standby), from the cluster being left.
    TakeOver {
        /// The brokers of the cluster being left (the primary in a failover, the standby in a
        /// failback): if they answer, the take-over refuses (two clusters would decide orders)
        /// unless --force.
        #[arg(long, env = "TAKE_OVER_FROM")]
        from: Option<String>,
        /// Take over although the cluster being left answers: a switchover, once both services
        /// are stopped there and MirrorMaker 2 has copied everything (docs/multi-cluster.md).
        #[arg(long)]
        force: bool,
        /// How long to wait for a transaction MirrorMaker 2 left open on the standby (if it died
        /// mid-transaction) to be aborted by the broker: beyond its transaction timeout.
        #[arg(long, default_value_t = 120)]
        open_transaction_patience_secs: u64,
    },
    /// Delete the system's topics (`orders`, `order-updates`, the dead-letter topic, the
    /// changelog) on the cluster --brokers names, for MirrorMaker 2 to make it a copy of the
    /// active one: the first step of a failback to an old primary, whose records that never
    /// crossed were sent again to the standby and decided there. Refuses while dev-materiels'
    /// group has members there.
    Clear {
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs `cluster clear`.
fn clear(args: &DevMaterielsArgs, yes: bool) -> std::process::ExitCode {
    if !yes {
        eprintln!(
            "dev-materiels cluster clear: this deletes the system's topics on {}; confirm with --yes",
            args.kafka.brokers
        );
        return std::process::ExitCode::from(1);
    }
    match dev_materiels::takeover::clear(args) {
        Ok(deleted) => {
            println!("deleted on {}: {}", args.kafka.brokers, deleted.join(", "));
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dev-materiels cluster clear: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs `cluster take-over`.
fn cluster(args: &DevMaterielsArgs, action: &ClusterAction) -> std::process::ExitCode {
    let (from, force, open_transaction_patience_secs) = match action {
        ClusterAction::TakeOver { from, force, open_transaction_patience_secs } => {
            (from, force, open_transaction_patience_secs)
        }
        ClusterAction::Clear { yes } => return clear(args, *yes),
    };
    let failed = |err: &dyn std::fmt::Display, code: u8| {
        eprintln!("dev-materiels cluster take-over: {err}");
        std::process::ExitCode::from(code)
    };
    let codec = match wire::Codec::connect(&args.codec, &[]) {
        Ok(codec) => codec,
        Err(err) => return failed(&err, 2),
    };
    let primary =
        from.as_ref().map(|brokers| engine::kafka::KafkaArgs { brokers: brokers.clone(), ..args.kafka.clone() });
    let take_over = dev_materiels::takeover::TakeOver {
        args,
        primary,
        force: *force,
        codec,
        open_transaction_patience: std::time::Duration::from_secs(*open_transaction_patience_secs),
    };
    match take_over.run() {
        Ok(report) => {
            for partition in &report.partitions {
                println!("{partition}");
            }
            println!(
                "took over on cluster {} in {:.1} s: {} states corrected, {} dropped, {} local stores dropped; start dev-materiels against it",
                report.cluster_id,
                report.elapsed.as_secs_f64(),
                report.partitions.iter().map(|p| p.corrected).sum::<usize>(),
                report.partitions.iter().map(|p| p.dropped).sum::<usize>(),
                report.stores_dropped
            );
            std::process::ExitCode::SUCCESS
        }
        Err(err @ dev_materiels::takeover::TakeOverError::PrimaryAnswers { .. }) => failed(&err, 1),
        Err(err) => failed(&err, 2),
    }
}

#[derive(Subcommand, Clone, Copy)]
enum SchemasAction {
    /// Report what differs: a version not registered, a registered version the repository does
    /// not have, a version the registry refuses (with the field at fault), the compatibility
    /// level, and versions of the repository that do not read each other. Exits 1 if anything
    /// does.
    Check,
    /// Set the compatibility level and register the versions in order; a version the registry
    /// refuses is reported, never forced. Exits 1 if anything is left.
    Apply,
}

/// Runs `connect apply|status|supervise`; prints one line per connector.
fn connect(action: ConnectAction, url: &str, dir: Option<&std::path::Path>) -> std::process::ExitCode {
    let failed = |err: &dyn std::fmt::Display| {
        eprintln!("dev-materiels connect: {err}");
        std::process::ExitCode::from(2)
    };
    let connectors = match dir {
        Some(dir) => Connector::from_dir(dir),
        None => Connector::builtin(),
    };
    let (connectors, client) = match (connectors, ConnectClient::new(url)) {
        (Ok(connectors), Ok(client)) => (connectors, client),
        (Err(err), _) | (_, Err(err)) => return failed(&err),
    };
    let names: Vec<String> = connectors.iter().map(|c| c.name.clone()).collect();
    if let ConnectAction::Supervise { interval_secs } = action {
        let stop = match engine::shutdown::on_signal() {
            Ok(stop) => stop,
            Err(err) => return failed(&format!("cannot install signal handlers: {err}")),
        };
        tracing::info!(connectors = ?names, interval_secs, "supervising the connectors");
        let mut supervisor = Supervisor::new(client, names, RestartPolicy::default());
        supervisor.run(std::time::Duration::from_secs(interval_secs), &stop, |event| match event {
            Ok(restart) => tracing::warn!(
                connector = %restart.status.name,
                attempt = restart.attempt + 1,
                "restarted what failed: {}",
                restart.status
            ),
            Err(err) => tracing::warn!("cannot supervise the connectors now: {err}"),
        });
        return std::process::ExitCode::SUCCESS;
    }
    if let Err(err) = client.wait_ready(std::time::Duration::from_secs(120)) {
        return failed(&err);
    }
    if matches!(action, ConnectAction::Apply) {
        for connector in &connectors {
            match client.apply(connector) {
                Ok(what) => println!("{}: {what}", connector.name),
                Err(err) => return failed(&err),
            }
        }
    }
    let patience = match action {
        ConnectAction::Apply => std::time::Duration::from_secs(60),
        ConnectAction::Status | ConnectAction::Supervise { .. } => std::time::Duration::ZERO,
    };
    let statuses = match client.wait_running(&names, patience) {
        Ok(statuses) => statuses,
        Err(err) => return failed(&err),
    };
    for status in &statuses {
        println!("{status}");
    }
    if statuses.iter().all(|s| s.running()) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[derive(Subcommand, Clone, Copy)]
enum TopicsAction {
    /// Report what is missing or differs (drift). Exits 1 if anything does.
    Check,
    /// Create the missing topics and set the topic settings that drifted (cleanup policy,
    /// retention, min.insync.replicas, max.message.bytes). Partition counts and replication
    /// factors are reported, never changed. Exits 1 if such drift remains.
    Apply,
}

/// Runs `topics check|apply`; prints one line per finding.
fn topics(args: &DevMaterielsArgs, action: TopicsAction) -> std::process::ExitCode {
    let changelog = format!("{}-order-store-changelog", args.application_id);
    let mut specs = system_topics(&args.topics, &changelog);
    specs.extend(dev_materiels::catalogue::topic_specs(&args.live_catalogue, &args.topics));
    let result = match action {
        TopicsAction::Check => check_topics(&args.kafka, &specs),
        TopicsAction::Apply => apply_topics(&args.kafka, &specs),
    };
    let findings = match result {
        Ok(findings) => findings,
        Err(err) => {
            eprintln!("dev-materiels topics: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let fixed = matches!(action, TopicsAction::Apply);
    for spec in &specs {
        let mine: Vec<&Finding> = findings.iter().filter(|f| finding_topic(f) == spec.name).collect();
        if mine.is_empty() {
            println!("{}: ok", spec.name);
        }
        for finding in mine {
            let done = match finding {
                Finding::Missing { .. } if fixed => " (created)",
                Finding::Drift { fixable: true, .. } if fixed => " (set)",
                _ => "",
            };
            println!("{finding}{done}");
        }
    }
    let remaining = findings.iter().any(|f| !fixed || matches!(f, Finding::Drift { fixable: false, .. }));
    if remaining {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Runs `schemas check|apply`; prints one line per finding.
fn schemas(args: &DevMaterielsArgs, action: SchemasAction, dir: Option<&std::path::Path>) -> std::process::ExitCode {
    let failed = |err: &dyn std::fmt::Display| {
        eprintln!("dev-materiels schemas: {err}");
        std::process::ExitCode::from(2)
    };
    let Some(url) = &args.codec.schema_registry_url else {
        return failed(&"no schema registry: set --schema-registry-url (or SCHEMA_REGISTRY_URL)");
    };
    let registry = match Registry::new(url, std::time::Duration::from_secs(10)) {
        Ok(registry) => registry,
        Err(err) => return failed(&err),
    };
    // A registry still starting (the compose stack) is waited for, up to the patience set.
    let patience = std::time::Duration::from_millis(args.codec.schema_registry_patience_ms);
    if let Err(err) = wire::avro::retrying(patience, || registry.ping()) {
        return failed(&err);
    }
    let set = match dir {
        Some(dir) => match SchemaSet::from_dir(dir) {
            Ok(set) => set,
            Err(err) => return failed(&err),
        },
        None => SchemaSet::builtin(),
    };
    let (orders, updates) = (&args.topics.orders_topic, &args.topics.updates_topic);
    let result = match action {
        SchemasAction::Check => subjects::check(&registry, &set, orders, updates),
        SchemasAction::Apply => subjects::apply(&registry, &set, orders, updates),
    };
    match result {
        Err(err) => failed(&err),
        Ok(findings) => {
            for finding in &findings {
                println!("{finding}");
            }
            if findings.iter().all(|f| matches!(f, subjects::Finding::Ok { .. })) {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn finding_topic(finding: &Finding) -> &str {
    match finding {
        Finding::Missing { topic } | Finding::Drift { topic, .. } => topic,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Fault injection for the tests, from `FAILPOINTS`; compiled in only with the `failpoints`
    // feature.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    logging::init(cli.log_format, "info,librdkafka=warn,rdkafka=warn");
    match &cli.command {
        Some(Command::Topics { action }) => return topics(&cli.args, *action),
        Some(Command::Schemas { action, schemas_dir }) => return schemas(&cli.args, *action, schemas_dir.as_deref()),
        Some(Command::Cluster { action }) => return cluster(&cli.args, action),
        Some(Command::Connect { action, connect_url, connectors_dir }) => {
            return connect(*action, connect_url, connectors_dir.as_deref())
        }
        None => {}
    }
    let shutdown = match engine::shutdown::on_signal() {
        Ok(flag) => flag,
        Err(err) => {
            eprintln!("dev-materiels: cannot install signal handlers: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(endpoint) = &cli.otlp_endpoint {
        if let Err(err) = engine::otel::init(endpoint, "dev-materiels") {
            eprintln!("dev-materiels: {err}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let result = dev_materiels::run(&cli.args, shutdown);
    engine::otel::shutdown();
    match result {
        Ok(stats) => {
            tracing::info!(
                records = stats.records,
                updates = stats.updates,
                dead_letters = stats.dead_letters,
                commits = stats.commits,
                "stopped"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "dev-materiels stopped on an error");
            eprintln!("dev-materiels: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
