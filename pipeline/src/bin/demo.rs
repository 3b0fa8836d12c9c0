//! The demo: the whole order flow in one process, on a single-node Apache Kafka broker it starts
//! from the jars the set-up fetched (or a cluster you name, or librdkafka's mock cluster), and a
//! check of exactly-once on what it reads back from `order-updates`.

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use dev_materiels::DevMaterielsArgs;
use engine::kafka::KafkaArgs;
use engine::logging::{self, LogFormat};
use indicatif::{ProgressBar, ProgressStyle};
use pipeline::check::{read_to_end, UpdateCheck};
use pipeline::workload::{Mix, Workload};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use state::{CommandEnvelope, OrderStatus, OrderUpdate, StoreOptions, ViewStore};
use wagon_lits::{CommandProducer, Materialiser, ViewConfig};
use wire::topics::changelog_name as changelog_topic;
use wire::TopicArgs;

/// Run the whole order flow in one process: place orders (wagon-lits), process them exactly once
/// (dev-materiels), follow them in the view, confirm deliveries, print where every order ended,
/// then check exactly-once on what `order-updates` holds. Exits non-zero if any order is missing
/// from the view or the check fails.
///
/// By default it starts a single-node Apache Kafka broker (KRaft) from the jars the set-up
/// fetched (Java needed), and stops it at the end; --brokers runs on a cluster of yours; --mock
/// on librdkafka's in-process mock cluster, which needs no Java but proves nothing about
/// exactly-once.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: DemoArgs,
    /// Log format (`RUST_LOG` sets the filter; by default only errors of the services show).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
}

/// Settings of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Kafka bootstrap servers of a cluster to run on. Without it, the demo starts a single-node
    /// broker of its own.
    #[arg(long, env = "KAFKA_BROKERS", conflicts_with = "mock")]
    pub brokers: Option<String>,
    /// Run on librdkafka's in-process mock cluster instead of a real broker: no Java needed, but
    /// it ignores read_committed and stores no transactional offsets, so it proves nothing about
    /// exactly-once.
    #[arg(long)]
    pub mock: bool,
    /// Orders to place.
    #[arg(long, default_value_t = 10_000)]
    pub orders: usize,
    /// Partitions of the topics (when the demo creates them).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Time an accepted order waits before going into preparation.
    #[arg(long, default_value_t = 200)]
    pub prepare_after_ms: u64,
    /// Time an order stays in preparation before it ships.
    #[arg(long, default_value_t = 300)]
    pub ship_after_ms: u64,
    /// Transaction commit interval of dev-materiels.
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Where the two services keep their state; a temporary directory otherwise.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Give up waiting for the view after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Hide the progress bars.
    #[arg(long)]
    pub quiet: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn progress(quiet: bool, len: u64, message: &'static str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// Where the demo's Kafka is.
enum Kafka {
    /// A broker the demo started; stopped when dropped.
    Started {
        _broker: kafka_harness::Cluster,
    },
    Cluster,
    /// The mock cluster, alive as long as this is.
    Mock {
        _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    },
}

/// Runs the demo; returns an error (and a non-zero exit) if any order is missing from the view
/// or the exactly-once check fails.
fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let topics = TopicArgs { partitions: args.partitions, ..TopicArgs::default() };
    let application_id = "dev-materiels".to_string();

    let (where_, brokers, create_topics) = if args.mock {
        println!(
            "--mock: running on librdkafka's in-process mock cluster. It keeps nothing once the demo ends and does NOT \
             prove exactly-once (it ignores read_committed and never stores transactional offsets)."
        );
        let mock = MockCluster::new(1).context("starting the mock cluster")?;
        for (topic, partitions) in [
            (topics.orders_topic.as_str(), args.partitions),
            (topics.updates_topic.as_str(), args.partitions),
            (topics.dlq_topic.as_str(), 1),
            (changelog_topic(&application_id).as_str(), args.partitions),
        ] {
            mock.create_topic(topic, partitions, 1).with_context(|| format!("creating {topic}"))?;
        }
        let brokers = mock.bootstrap_servers();
        (Kafka::Mock { _cluster: mock }, brokers, false)
    } else if let Some(brokers) = &args.brokers {
        println!("Running on the Kafka cluster at {brokers}.");
        (Kafka::Cluster, brokers.clone(), true)
    } else {
        let started = Instant::now();
        println!("Starting a single-node Apache Kafka broker (KRaft) from {} ...", kafka_harness::jars_dir().display());
        let cluster = kafka_harness::Cluster::start(kafka_harness::ClusterConfig::default()).context(
            "starting a Kafka broker (Java and the jars of scripts/kafka-jars.sh are needed; --mock runs without them)",
        )?;
        let brokers = cluster.bootstrap_servers();
        println!("Broker up at {brokers} in {:.1} s.", started.elapsed().as_secs_f64());
        (Kafka::Started { _broker: cluster }, brokers, true)
    };
    let kafka = KafkaArgs::new(brokers);

    let temp;
    let state_root = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("rail-demo-").tempdir().context("creating a state directory")?;
            temp.path().to_path_buf()
        }
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    let dev = DevMaterielsArgs {
        kafka: kafka.clone(),
        topics: topics.clone(),
        http: Default::default(),
        codec: Default::default(),
        application_id,
        instance_id: "demo".into(),
        static_membership: false,
        state_dir: state_root.join("dev-materiels"),
        commit_interval_ms: args.commit_interval_ms,
        prepare_after_ms: args.prepare_after_ms,
        ship_after_ms: args.ship_after_ms,
        catalogue: None,
        live_catalogue: Default::default(),
        store_cache_mb: 64,
        session_timeout_ms: 10_000,
        transaction_timeout_ms: 10_000,
        create_topics,
        standby: false,
        transaction_call_stuck_after_ms: engine::runtime::STUCK_CALL_AFTER.as_millis() as u64,
        overlap_commits: true,
        replicated: false,
        stream_threads: dev_materiels::default_stream_threads(),
    };
    let processor = dev_materiels::DevMateriels::new(&dev).context("configuring dev-materiels")?;
    let metrics = processor.metrics();
    let processor = {
        let shutdown = Arc::clone(&shutdown);
        std::thread::Builder::new()
            .name("dev-materiels".into())
            .spawn(move || processor.run(shutdown))
            .context("starting dev-materiels")?
    };
    if create_topics {
        wagon_lits::ensure_service_topics(&kafka, &topics).context("creating topics")?;
    }
    let materialiser = Materialiser::new(
        ViewConfig {
            kafka: kafka.clone(),
            updates_topic: topics.updates_topic.clone(),
            state_dir: state_root.join("wagon-lits"),
            max_batch: 5_000,
            codec: wire::Codec::json(),
        },
        &StoreOptions::default(),
        wagon_lits::WagonLitsMetrics::unregistered().view,
    )
    .context("starting the wagon-lits view")?;
    let view = materialiser.view();
    let view_thread = {
        let shutdown = Arc::clone(&shutdown);
        std::thread::Builder::new()
            .name("wagon-lits-view".into())
            .spawn(move || materialiser.run(shutdown))
            .context("starting the view")?
    };
    let producer =
        CommandProducer::new(&kafka, &topics.orders_topic, Duration::from_secs(30)).context("creating the producer")?;

    // Start the clock once dev-materiels owns its partitions and has restored them.
    let ready_by = Instant::now() + Duration::from_secs(120);
    while metrics.active_tasks.get() < i64::from(args.partitions)
        && Instant::now() < ready_by
        && !processor.is_finished()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = drive(args, &run_id, &producer, &view);

    shutdown.store(true, Ordering::Relaxed);
    let processed = processor.join().map_err(|_| anyhow::anyhow!("dev-materiels thread panicked"))?;
    let viewed = view_thread.join().map_err(|_| anyhow::anyhow!("view thread panicked"))?;
    let report = outcome?;
    let processed = processed.context("dev-materiels")?;
    viewed.context("wagon-lits view")?;
    println!(
        "dev-materiels: {} commands read, {} updates, {} unchanged (retries), {} dead letters, {} transactions committed",
        processed.records, processed.updates, processed.unchanged, processed.dead_letters, processed.commits
    );
    if report.missing > 0 {
        bail!("{} of {} orders never reached the view", report.missing, args.orders);
    }
    println!("Every one of the {} orders is in the wagon-lits view.", args.orders);
    match where_ {
        Kafka::Mock { .. } => println!("Exactly-once is not checked on the mock cluster (it ignores read_committed)."),
        Kafka::Started { .. } | Kafka::Cluster => {
            let check = check_exactly_once(&kafka, &topics.updates_topic, &report)?;
            println!("{}", summary(&check));
            if !check.holds() {
                bail!("the exactly-once check failed: {:#?}", check.examples);
            }
        }
    }
    Ok(())
}

struct Report {
    missing: usize,
    /// The orders of this run and the commands sent for them.
    ids: Vec<String>,
    commands: Vec<CommandEnvelope>,
}

fn send_all(producer: &CommandProducer, commands: &[CommandEnvelope], bar: &ProgressBar) -> anyhow::Result<()> {
    let mut futures = Vec::with_capacity(commands.len());
    for command in commands {
        futures.push(producer.send(command)?);
        bar.inc(1);
    }
    for result in futures::executor::block_on(futures::future::join_all(futures)) {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => bail!("Kafka refused a command: {err}"),
            Err(_) => bail!("a command's delivery was cancelled"),
        }
    }
    bar.finish();
    Ok(())
}

/// Waits until every order in `ids` satisfies `done`, with a progress bar. Returns the ids
/// still not done at the deadline.
fn wait_for(
    view: &ViewStore,
    ids: &[String],
    bar: &ProgressBar,
    deadline: Instant,
    done: impl Fn(Option<OrderStatus>) -> bool,
) -> anyhow::Result<Vec<String>> {
    let mut waiting: Vec<String> = ids.to_vec();
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for id in waiting {
            let status = view.get(&id)?.and_then(|row| row.status);
            if done(status) {
                bar.inc(1);
            } else {
                still.push(id);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    bar.finish();
    Ok(waiting)
}

fn drive(args: &DemoArgs, run_id: &str, producer: &CommandProducer, view: &ViewStore) -> anyhow::Result<Report> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut workload = Workload::new(args.seed, format!("DEMO-{run_id}"), now_ms());
    let ids: Vec<String> = (0..args.orders).map(|i| workload.order_id(i)).collect();
    let mut commands = workload.place_phase(args.orders, Mix::REALISTIC);

    let started = Instant::now();
    send_all(producer, &commands, &progress(args.quiet, commands.len() as u64, "placing orders"))?;
    let placed_in = started.elapsed();

    let settled = |s: Option<OrderStatus>| {
        matches!(s, Some(OrderStatus::Shipped | OrderStatus::Rejected | OrderStatus::Cancelled))
    };
    let missing =
        wait_for(view, &ids, &progress(args.quiet, ids.len() as u64, "processing and shipping"), deadline, settled)?;
    let settled_in = started.elapsed();

    let mut shipped = Vec::new();
    for id in &ids {
        if view.get(id)?.and_then(|r| r.status) == Some(OrderStatus::Shipped) {
            shipped.push(id.clone());
        }
    }
    let confirmations = workload.delivery_phase(&shipped, 1.0, 0.0, 0.0);
    let confirm_started = Instant::now();
    send_all(producer, &confirmations, &progress(args.quiet, confirmations.len() as u64, "confirming deliveries"))?;
    let undelivered = wait_for(
        view,
        &shipped,
        &progress(args.quiet, shipped.len() as u64, "waiting for deliveries"),
        deadline,
        |s| s == Some(OrderStatus::Delivered),
    )?;
    let delivered_in = confirm_started.elapsed();

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut absent = 0;
    for id in &ids {
        match view.get(id)? {
            Some(row) => *counts.entry(row.status.map_or("(none)".to_string(), |s| s.to_string())).or_default() += 1,
            None => absent += 1,
        }
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["status", "orders"]);
    for status in OrderStatus::ALL {
        let n = counts.get(status.as_str()).copied().unwrap_or(0);
        table.add_row(vec![Cell::new(status), Cell::new(n).set_alignment(CellAlignment::Right)]);
    }
    table.add_row(vec![Cell::new("missing from the view"), Cell::new(absent).set_alignment(CellAlignment::Right)]);
    println!("\nOrders of this run ({}) in the wagon-lits view:\n{table}", format_args!("DEMO-{run_id}"));
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    println!(
        "Placed {} commands for {} orders in {:.2} s ({:.0} commands/s into Kafka).",
        commands.len(),
        args.orders,
        secs(placed_in),
        commands.len() as f64 / secs(placed_in)
    );
    println!(
        "All orders processed and shipped or refused in {:.2} s: {:.0} orders/s end to end (the timers alone take {} ms).",
        secs(settled_in),
        args.orders as f64 / secs(settled_in),
        args.prepare_after_ms + args.ship_after_ms
    );
    println!(
        "Confirmed {} deliveries in {:.2} s ({:.0}/s).",
        shipped.len(),
        secs(delivered_in),
        shipped.len() as f64 / secs(delivered_in)
    );
    if !undelivered.is_empty() {
        println!("{} shipped orders did not show as delivered in time.", undelivered.len());
    }
    commands.extend(confirmations);
    Ok(Report { missing: missing.len().max(absent) + undelivered.len(), ids, commands })
}

/// The line the demo prints about exactly-once.
fn summary(check: &UpdateCheck) -> String {
    let yes = |ok: bool| if ok { "yes" } else { "NO" };
    format!(
        "Exactly-once check, reading order-updates back with read_committed: {} updates for {} orders; every order's \
         versions 1..n, none repeated or skipped: {} ({} repeated, {} skipped); every command id on at most one \
         update: {} ({} on several); every order placed has its updates: {}.",
        check.updates,
        check.orders(),
        yes(check.repeated_versions == 0 && check.skipped_versions == 0),
        check.repeated_versions,
        check.skipped_versions,
        yes(check.repeated_commands == 0),
        check.repeated_commands,
        yes(check.orders_without_updates == 0),
    )
}

/// Reads `order-updates` from its beginning to its end, committed records only, and checks the
/// updates of this run's orders.
fn check_exactly_once(kafka: &KafkaArgs, topic: &str, report: &Report) -> anyhow::Result<UpdateCheck> {
    let ours: HashSet<&str> = report.ids.iter().map(String::as_str).collect();
    let mut check = UpdateCheck::new();
    read_to_end(kafka, topic, "demo-check", Duration::from_secs(120), |message| {
        let update: OrderUpdate = serde_json::from_slice(message.payload().unwrap_or_default())
            .with_context(|| format!("an update at offset {} of {topic}", message.offset()))?;
        if ours.contains(update.order_id.as_str()) {
            check.record(update);
        }
        Ok(())
    })?;
    check.finish(&report.commands);
    Ok(check)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The services' own errors only: the demo's output is its progress and its results.
    logging::init(cli.log_format, "error,librdkafka=off,rdkafka=off");
    match run(&cli.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
