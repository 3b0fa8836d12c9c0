//! The end-to-end bench, on a real single-node Kafka broker (started here unless `--brokers` is
//! given): for each contender, the traffic of N orders is written to `orders` as fast as the
//! broker takes it, then the contender processes it under exactly-once into `order-updates`, and
//! wagon-lits materialises it into its view. The traffic runs the whole state machine: the
//! realistic mix of placements (invalid ones rejected, early cancellations, retries, mistakes,
//! commands for unknown orders, records sent twice), then a delivery confirmation or a late
//! cancellation for every order; the preparation and shipping timers (2 s each by default) fire
//! while the run goes on, so confirmations read late enough are applied and the others refused.
//! The contenders:
//!
//! - `rust`: dev-materiels, this project;
//! - `passthrough`: the ceiling, a consume-transform-produce loop under the same transactions and
//!   commit interval, with no state and no logic (`src/bin/passthrough.rs`);
//! - `streams`: the peer, the same topology with Apache Kafka Streams (`peers/kafka-streams/`).
//!
//! Reported per contender: sustained throughput (commands and orders per second committed by the
//! processor, and orders per second reaching the view), the CPU seconds per million orders of the
//! processor over that same window (the JVM's start-up and warm-up are left out, as they are of
//! the throughput), the peak RSS of the processor and of the view, and the end-to-end latency
//! (command produced → its update committed on `order-updates`, where the view reads it)
//! p50/p99/p999 at fixed offered rates, with the probes sent and received. `--check` reads
//! `order-updates` back and exits non-zero unless every order's updates are exactly once and in
//! version order (see [`check_exactly_once`]). The raw results of every run are written to
//! `benches/results/<date>-<commit>.json`. Timings are reported, never asserted.
//!
//! ```text
//! bash scripts/bench.sh                  # builds everything, then runs this with its defaults
//! target/release/e2e --orders 20000 --rates 2000 --latency-seconds 3 --check
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use comfy_table::Table;
use engine::admin::ensure_topics;
use engine::kafka::KafkaArgs;
use kafka_harness::{Cluster, ClusterConfig};
use pipeline::check::{read_to_end, UpdateCheck};
use pipeline::workload::{Mix, Workload};
use rail_benches::now_ms;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use wagon_lits::CommandProducer;
use wire::TopicSpec;

/// End-to-end throughput, CPU, memory and latency of dev-materiels beside a pass-through ceiling
/// and a Kafka Streams peer, on a real broker.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Orders placed for the throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    orders: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Offered rates of the latency runs, in orders per second.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000u64, 20_000])]
    rates: Vec<u64>,
    /// Length of each latency run.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Contenders to run, among rust, passthrough, streams.
    #[arg(long, value_delimiter = ',', default_values_t = ["rust".to_string(), "passthrough".to_string(), "streams".to_string()])]
    contenders: Vec<String>,
    /// A broker to use; a single-node broker is started (from the Maven jars) otherwise.
    #[arg(long)]
    brokers: Option<String>,
    /// Commit interval of every contender.
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    /// From Accepted to InPreparation, in the contenders with a state machine.
    #[arg(long, default_value_t = 2_000)]
    prepare_after_ms: u64,
    /// From InPreparation to Shipped.
    #[arg(long, default_value_t = 2_000)]
    ship_after_ms: u64,
    /// Java heap of the Kafka Streams peer (-Xmx).
    #[arg(long, default_value = "1g")]
    peer_heap: String,
    /// Stream threads of the Kafka Streams peer (`num.stream.threads`); by default one per core,
    /// as its own documentation advises.
    #[arg(long)]
    peer_threads: Option<usize>,
    /// Stream threads of dev-materiels (`--stream-threads`); by default its own default, one per
    /// two cores.
    #[arg(long)]
    rust_threads: Option<u16>,
    /// Check that every order got exactly one update; exit non-zero otherwise.
    #[arg(long)]
    check: bool,
    /// Where the raw results of the run go, as `<date>-<commit>.json`; relative to the working
    /// directory (`scripts/bench.sh` runs from the repository's root). Not the build's source
    /// path: a target directory shared by several checkouts would send them to another one.
    #[arg(long, default_value = "benches/results")]
    results_dir: PathBuf,
}

impl Args {
    /// The peer's stream threads: `--peer-threads`, or one per core.
    fn peer_threads(&self) -> usize {
        self.peer_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// dev-materiels' stream threads: `--rust-threads`, or its own default.
    fn rust_threads(&self) -> u16 {
        self.rust_threads.unwrap_or_else(dev_materiels::default_stream_threads)
    }
}

const TOKEN: &str = "bench-token";

/// A service process, its log, and its resource use read from /proc.
struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(name: &str, mut command: Command, dir: &Path) -> anyhow::Result<Service> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).env("RAIL_TOKEN", TOKEN);
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Service { name: name.to_string(), child, log })
    }

    /// User + system CPU seconds so far (`/proc/<pid>/stat`, in USER_HZ = 100 ticks a second).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        (ticks(11) + ticks(12)) as f64 / 100.0
    }

    /// Peak resident set size so far, in MiB (VmHWM).
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "{} exited with {status}; its log ends:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    fn stop(mut self) {
        let _ = nix_kill(self.child.id());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGTERM, through `kill(1)` (no libc binding needed for one call).
fn nix_kill(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill").arg("-TERM").arg(pid.to_string()).status()
}

/// A sibling executable of this one (the workspace's binaries are built side by side).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name));
    if !path.exists() {
        bail!(
            "{} not found: build the workspace's binaries first (cargo build --release --workspace --bins; scripts/bench.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// Compiles the Kafka Streams peer with Maven if it is not built yet; returns its classpath.
fn peer_classpath() -> anyhow::Result<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers").join("kafka-streams");
    let classes = dir.join("target").join("classes");
    let deps = dir.join("target").join("dependency");
    if !classes.join("rail/peer/Main.class").exists() || !deps.exists() {
        eprintln!("building the Kafka Streams peer with Maven...");
        let status = Command::new("mvn")
            .args(["-B", "-q", "-f"])
            .arg(dir.join("pom.xml"))
            .args(["package", "dependency:copy-dependencies"])
            .status()
            .context("running mvn (scripts/setup.sh installs Maven)")?;
        if !status.success() {
            bail!("building the Kafka Streams peer failed ({status})");
        }
    }
    Ok(format!("{}:{}/*", classes.display(), deps.display()))
}

/// The names one contender's run uses.
struct Names {
    orders: String,
    updates: String,
    dlq: String,
    group: String,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Latency {
    rate: u64,
    sent: usize,
    received: usize,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Outcome {
    contender: String,
    orders: usize,
    /// Records written to `orders` for them (the whole state machine's traffic).
    commands: usize,
    produce_per_sec: f64,
    /// Commands per second committed by the processor (input offsets committed), from its first
    /// commit to its last: its start-up is left out.
    commands_per_sec: f64,
    /// The same window, in orders (`commands_per_sec` × orders / commands).
    orders_per_sec: f64,
    /// Orders per second reaching the view, after its first one.
    viewed_per_sec: f64,
    /// CPU seconds of the processor over the throughput window (not since its start).
    processor_cpu_s: f64,
    processor_cpu_s_per_million: f64,
    processor_peak_rss_mib: f64,
    /// CPU seconds of the view per million orders, over its own window.
    view_cpu_s_per_million: f64,
    view_peak_rss_mib: f64,
    latency: Vec<Latency>,
    checked: bool,
    missing: usize,
    duplicated: usize,
    out_of_order: usize,
}

/// What a run writes to `benches/results/`: the settings, the machine and every contender's
/// outcome.
#[derive(Serialize)]
struct Results<'a> {
    date: String,
    commit: String,
    machine: Machine,
    orders: usize,
    partitions: i32,
    commit_interval_ms: u64,
    prepare_after_ms: u64,
    ship_after_ms: u64,
    rates: &'a [u64],
    latency_seconds: u64,
    peer_threads: usize,
    rust_threads: u16,
    peer_heap: &'a str,
    outcomes: &'a [Outcome],
}

#[derive(Serialize)]
struct Machine {
    cores: usize,
    cpu: String,
    kernel: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        Machine { cores: std::thread::available_parallelism().map_or(1, |n| n.get()), cpu, kernel }
    }
}

/// The commit the bench was built from (`git describe`), `-dirty` if the tree had changes.
fn commit() -> String {
    Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty", "--abbrev=10"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date (UTC), from the `date` command (no date crate for one call).
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown-date".into())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    engine::logging::init(engine::logging::LogFormat::Plain, "warn,librdkafka=error,rdkafka=error");
    match run(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("e2e: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let work = tempfile::Builder::new().prefix("rail-e2e-").tempdir()?;
    let _cluster;
    let brokers = match &args.brokers {
        Some(b) => b.clone(),
        None => {
            eprintln!("starting a single-node Kafka {} broker...", kafka_harness::KAFKA_VERSION);
            let cluster = Cluster::start(ClusterConfig { heap: "1g".into(), ..ClusterConfig::default() })?;
            let b = cluster.bootstrap_servers();
            _cluster = cluster;
            b
        }
    };
    let kafka = KafkaArgs::new(&brokers);
    let run_id = now_ms() % 1_000_000_000;
    let mut outcomes = Vec::new();
    for contender in &args.contenders {
        eprintln!("== {contender}");
        let outcome = run_contender(args, &kafka, contender, run_id, work.path())
            .with_context(|| format!("running {contender}"))?;
        eprintln!("{contender}: {}", serde_json::to_string(&outcome)?);
        outcomes.push(outcome);
    }
    print_table(args, &outcomes);
    if std::env::var_os("E2E_KEEP").is_some() {
        eprintln!("work directory (logs, state) kept: {}", work.keep().display());
    }
    let results = Results {
        date: today(),
        commit: commit(),
        machine: Machine::read(),
        orders: args.orders,
        partitions: args.partitions,
        commit_interval_ms: args.commit_interval_ms,
        prepare_after_ms: args.prepare_after_ms,
        ship_after_ms: args.ship_after_ms,
        rates: &args.rates,
        latency_seconds: args.latency_seconds,
        peer_threads: args.peer_threads(),
        rust_threads: args.rust_threads(),
        peer_heap: &args.peer_heap,
        outcomes: &outcomes,
    };
    std::fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let path = args.results_dir.join(format!("{}-{}.json", results.date, results.commit));
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("raw results: {}", path.display());
    Ok(outcomes.iter().all(|o| o.missing == 0 && o.duplicated == 0 && o.out_of_order == 0))
}

fn run_contender(args: &Args, kafka: &KafkaArgs, contender: &str, run_id: u64, work: &Path) -> anyhow::Result<Outcome> {
    let names = Names {
        orders: format!("orders-{contender}-{run_id}"),
        updates: format!("order-updates-{contender}-{run_id}"),
        dlq: format!("orders.dlq-{contender}-{run_id}"),
        group: format!("bench-{contender}-{run_id}"),
    };
    let dir = work.join(contender);
    std::fs::create_dir_all(&dir)?;
    ensure_topics(
        kafka,
        &[
            TopicSpec::new(&names.orders, args.partitions, 1),
            TopicSpec::new(&names.updates, args.partitions, 1),
            TopicSpec::new(&names.dlq, 1, 1),
        ],
    )?;

    // The traffic, written as fast as the broker takes it: the placements with the realistic mix,
    // then a confirmation or a late cancellation for every order.
    let producer = CommandProducer::new(kafka, &names.orders, Duration::from_secs(120))?;
    let mut workload = Workload::new(run_id, format!("E2E-{contender}"), now_ms());
    let mut commands = workload.place_phase(args.orders, Mix::REALISTIC);
    let placed: Vec<String> = (0..args.orders).map(|i| workload.order_id(i)).collect();
    commands.extend(workload.delivery_phase(&placed, 0.5, 0.5, 0.02));
    let started = Instant::now();
    for chunk in commands.chunks(50_000) {
        let futures = chunk.iter().map(|c| producer.send(c)).collect::<Result<Vec<_>, _>>()?;
        for delivery in futures::executor::block_on(futures::future::join_all(futures)) {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => bail!("placing orders: {err}"),
                Err(_) => bail!("placing orders: delivery cancelled"),
            }
        }
    }
    let produce_per_sec = commands.len() as f64 / started.elapsed().as_secs_f64();
    eprintln!("wrote {} commands for {} orders at {produce_per_sec:.0}/s", commands.len(), args.orders);

    // The view, then the processor.
    let api_port = kafka_harness::free_port()?;
    let mut view_command = Command::new(sibling("wagon-lits")?);
    view_command
        .arg("serve")
        .args(["--brokers", &kafka.brokers, "--orders-topic", &names.orders, "--updates-topic", &names.updates])
        .args(["--dlq-topic", &names.dlq, "--partitions", &args.partitions.to_string()])
        .arg("--state-dir")
        .arg(dir.join("wagon-lits"))
        .args(["--http-listen", &format!("127.0.0.1:{api_port}")])
        .env("RUST_LOG", "warn");
    let mut view = Service::spawn("wagon-lits", view_command, &dir)?;
    let commit = args.commit_interval_ms.to_string();
    let (prepare, ship) = (args.prepare_after_ms.to_string(), args.ship_after_ms.to_string());
    let peer_threads = args.peer_threads();
    let processor_command = match contender {
        "rust" => {
            let mut c = Command::new(sibling("dev-materiels")?);
            c.args(["--brokers", &kafka.brokers, "--orders-topic", &names.orders, "--updates-topic", &names.updates])
                .args(["--dlq-topic", &names.dlq, "--partitions", &args.partitions.to_string()])
                .args(["--application-id", &names.group, "--instance-id", "bench-0"])
                .args(["--commit-interval-ms", &commit, "--prepare-after-ms", &prepare, "--ship-after-ms", &ship])
                .args(["--stream-threads", &args.rust_threads().to_string()])
                .arg("--state-dir")
                .arg(dir.join("dev-materiels"))
                // E2E_RUST_LOG: dev-materiels' log filter, for a diagnosis (`warn` otherwise).
                .env("RUST_LOG", std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "warn".into()));
            c
        }
        "passthrough" => {
            let mut c = Command::new(sibling("passthrough")?);
            c.args(["--brokers", &kafka.brokers, "--input", &names.orders, "--output", &names.updates]).args([
                "--group",
                &names.group,
                "--commit-interval-ms",
                &commit,
            ]);
            c
        }
        "streams" => {
            let mut c = Command::new("java");
            c.arg(format!("-Xmx{}", args.peer_heap))
                .arg("-cp")
                .arg(peer_classpath()?)
                .arg("rail.peer.Main")
                .args(["--bootstrap", &kafka.brokers, "--application-id", &names.group])
                .args(["--orders-topic", &names.orders, "--updates-topic", &names.updates, "--dlq-topic", &names.dlq])
                .args(["--threads", &peer_threads.to_string()])
                .args(["--commit-interval-ms", &commit, "--prepare-after-ms", &prepare, "--ship-after-ms", &ship])
                .arg("--state-dir")
                .arg(dir.join("kafka-streams"));
            c
        }
        other => bail!("unknown contender {other:?} (rust, passthrough, streams)"),
    };
    let mut processor = Service::spawn(contender, processor_command, &dir)?;
    let processor_started = Instant::now();

    // Throughput: committed input offsets of the processor's group, and the view's count.
    let progress = indicatif::ProgressBar::new(args.orders as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} in the view ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(contender.to_string());
    let offsets = OffsetReader::new(kafka, &names.group, &names.orders, args.partitions)?;
    let client = ViewClient::new(api_port)?;
    // (when, how many) at the first look that found progress.
    type FirstSeen = Option<(Instant, u64)>;
    let (mut first_processed, mut first_viewed): (FirstSeen, FirstSeen) = (None, None);
    let (mut processed_at, mut viewed_at) = (None, None);
    // CPU seconds at the start and at the end of each window.
    let (mut processor_cpu, mut view_cpu) = ((0.0, 0.0), (0.0, 0.0));
    let total = commands.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(3_600);
    while viewed_at.is_none() || processed_at.is_none() {
        processor.check_running()?;
        view.check_running()?;
        if Instant::now() > deadline {
            bail!("not done after an hour");
        }
        std::thread::sleep(Duration::from_millis(100));
        if processed_at.is_none() {
            let done = offsets.committed();
            if done > 0 && first_processed.is_none() {
                first_processed = Some((Instant::now(), done));
                processor_cpu.0 = processor.cpu_seconds();
            }
            if done >= total {
                processed_at = Some(Instant::now());
                processor_cpu.1 = processor.cpu_seconds();
            }
        }
        let viewed = client.count();
        progress.set_position(viewed);
        if viewed > 0 && first_viewed.is_none() {
            first_viewed = Some((Instant::now(), viewed));
            view_cpu.0 = view.cpu_seconds();
        }
        if viewed >= args.orders as u64 && viewed_at.is_none() {
            viewed_at = Some(Instant::now());
            view_cpu.1 = view.cpu_seconds();
        }
    }
    progress.finish_and_clear();
    // (per second, the share of the work inside the window, CPU seconds in it)
    let window = |first: FirstSeen, done: Option<Instant>, of: u64, cpu: (f64, f64)| match (first, done) {
        (Some((t0, n0)), Some(t1)) if n0 < of && t1 > t0 => {
            ((of - n0) as f64 / (t1 - t0).as_secs_f64(), (of - n0) as f64 / of as f64, cpu.1 - cpu.0)
        }
        // Everything arrived before the second look (small runs): count from the start.
        (Some(_), Some(t1)) => (of as f64 / t1.duration_since(processor_started).as_secs_f64(), 1.0, cpu.1),
        _ => (0.0, 1.0, cpu.1),
    };
    let (commands_per_sec, processed_share, processor_cpu) =
        window(first_processed, processed_at, total, processor_cpu);
    let (viewed_per_sec, viewed_share, view_cpu) = window(first_viewed, viewed_at, args.orders as u64, view_cpu);

    // Latency at fixed offered rates: new valid orders (one decision each, timed to its update)
    // while the timers of the throughput run's orders keep firing.
    let mut latency = Vec::new();
    let mut sent = commands;
    for (i, rate) in args.rates.iter().enumerate() {
        let mut workload = Workload::new(run_id + 1 + i as u64, format!("LAT{rate}-{contender}"), now_ms());
        let n = (*rate * args.latency_seconds) as usize;
        let probes = workload.place_phase(n, Mix::CLEAN);
        latency.push(measure_latency(kafka, &names.updates, &producer, &probes, *rate)?);
        sent.extend(probes);
        processor.check_running()?;
    }
    let orders = args.orders as f64;
    let mut outcome = Outcome {
        contender: contender.to_string(),
        orders: args.orders,
        commands: total as usize,
        produce_per_sec,
        commands_per_sec,
        orders_per_sec: commands_per_sec * orders / total as f64,
        viewed_per_sec,
        processor_cpu_s: processor_cpu,
        processor_cpu_s_per_million: processor_cpu * 1_000_000.0 / (orders * processed_share),
        processor_peak_rss_mib: processor.peak_rss_mib(),
        view_cpu_s_per_million: view_cpu * 1_000_000.0 / (orders * viewed_share),
        view_peak_rss_mib: view.peak_rss_mib(),
        latency,
        ..Outcome::default()
    };
    processor.stop();
    view.stop();
    if args.check {
        let check = check_exactly_once(kafka, &names.updates, &sent, contender != "passthrough")?;
        outcome.checked = true;
        outcome.missing = check.missing;
        outcome.duplicated = check.duplicated;
        outcome.out_of_order = check.out_of_order;
        eprintln!(
            "{contender}: {} commands checked: missing={} duplicated={} out-of-order={}",
            sent.len(),
            check.missing,
            check.duplicated,
            check.out_of_order
        );
    }
    Ok(outcome)
}

/// Sum of the committed offsets of a group on a topic (records consumed and committed, since the
/// commands are produced without transactions: no markers).
struct OffsetReader {
    consumer: BaseConsumer,
    wanted: TopicPartitionList,
}

impl OffsetReader {
    fn new(kafka: &KafkaArgs, group: &str, topic: &str, partitions: i32) -> anyhow::Result<OffsetReader> {
        let mut config = kafka.base();
        config.set("group.id", group).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = kafka.finish(config).create()?;
        let mut wanted = TopicPartitionList::new();
        for p in 0..partitions {
            wanted.add_partition(topic, p);
        }
        Ok(OffsetReader { consumer, wanted })
    }

    fn committed(&self) -> u64 {
        match self.consumer.committed_offsets(self.wanted.clone(), Duration::from_secs(5)) {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) if o > 0 => o as u64,
                    _ => 0,
                })
                .sum(),
            Err(_) => 0,
        }
    }
}

/// Reads the view's order count through its API.
struct ViewClient {
    runtime: tokio::runtime::Runtime,
    client: http_fallback::Client,
    url: String,
}

impl ViewClient {
    fn new(port: u16) -> anyhow::Result<ViewClient> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = http_fallback::Client::new(Some(http_fallback::Secret::new(TOKEN)?), Duration::from_secs(5));
        Ok(ViewClient { runtime, client, url: format!("http://127.0.0.1:{port}/orders/counts") })
    }

    fn count(&self) -> u64 {
        match self.runtime.block_on(self.client.get(&self.url)) {
            Ok((status, body)) if status.is_success() => {
                serde_json::from_slice::<HashMap<String, u64>>(&body).map(|counts| counts.values().sum()).unwrap_or(0)
            }
            _ => 0,
        }
    }
}

/// Produces `commands` at `rate` per second and times each one to its update, read with
/// read_committed from `updates`.
fn measure_latency(
    kafka: &KafkaArgs,
    updates: &str,
    producer: &CommandProducer,
    commands: &[state::CommandEnvelope],
    rate: u64,
) -> anyhow::Result<Latency> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(commands.len())));
    let mut config = kafka.base();
    config
        .set("group.id", "e2e-latency")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer = kafka.finish(config).create()?;
    let metadata = consumer.fetch_metadata(Some(updates), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer.fetch_watermarks(updates, p.id(), Duration::from_secs(10))?;
        tpl.add_partition_offset(updates, p.id(), Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    let done = Arc::new(AtomicBool::new(false));
    let expected = commands.len();
    let reader = {
        let sent = Arc::clone(&sent);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut latencies = Vec::with_capacity(expected);
            let idle_deadline = || Instant::now() + Duration::from_secs(30);
            let mut give_up = idle_deadline();
            while latencies.len() < expected && !(done.load(Ordering::Relaxed) && Instant::now() > give_up) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let at = Instant::now();
                        let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                        if let Some(t) = sent.lock().ok().and_then(|mut s| s.remove(&id)) {
                            latencies.push(at.duration_since(t));
                            give_up = idle_deadline();
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                    Some(Err(_)) => {}
                }
            }
            latencies
        })
    };
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut deliveries = Vec::with_capacity(commands.len());
    for (i, command) in commands.iter().enumerate() {
        if let Some(wait) = (start + period * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Ok(mut s) = sent.lock() {
            s.insert(command.order_id.clone(), Instant::now());
        }
        deliveries.push(producer.send(command)?);
    }
    for delivery in futures::executor::block_on(futures::future::join_all(deliveries)) {
        if !matches!(delivery, Ok(Ok(_))) {
            bail!("a latency probe was not delivered");
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut latencies = reader.join().map_err(|_| anyhow::anyhow!("latency reader panicked"))?;
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(
                ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1).min(latencies.len().saturating_sub(1)),
            )
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    eprintln!(
        "latency at {rate}/s: {} of {} timed; p50 {:.1} ms p99 {:.1} ms p999 {:.1} ms",
        latencies.len(),
        commands.len(),
        pick(0.5),
        pick(0.99),
        pick(0.999)
    );
    Ok(Latency {
        rate,
        sent: commands.len(),
        received: latencies.len(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        p999_ms: pick(0.999),
    })
}

/// What [`check_exactly_once`] found.
struct Check {
    missing: usize,
    duplicated: usize,
    out_of_order: usize,
}

/// Reads all of `updates` (read_committed), once the writers are stopped, and checks it against
/// what was `sent`.
///
/// With a state machine (`machine`), [`UpdateCheck`]: each order's updates carry versions 1,
/// 2, 3… in topic order (a version seen again, or a command id decided twice, is a duplicate; a
/// jump is out of order), and every order placed has updates (else it is missing). Whether a
/// given command moves its order depends on when it was read (a confirmation before shipping is
/// refused): the system tests' oracle checks decisions, this check checks delivery.
///
/// Without one (the pass-through), each order gets exactly one record per command sent for it.
fn check_exactly_once(
    kafka: &KafkaArgs,
    updates: &str,
    sent: &[state::CommandEnvelope],
    machine: bool,
) -> anyhow::Result<Check> {
    let timeout = Duration::from_secs(600);
    if machine {
        let mut check = UpdateCheck::new();
        read_to_end(kafka, updates, "e2e-check", timeout, |m| {
            let update: state::OrderUpdate = serde_json::from_slice(m.payload().unwrap_or_default())
                .with_context(|| format!("an update on {updates} does not read"))?;
            check.record(update);
            Ok(())
        })?;
        check.finish(sent);
        return Ok(Check {
            missing: check.orders_without_updates,
            duplicated: check.repeated_versions + check.repeated_commands,
            out_of_order: check.skipped_versions,
        });
    }
    let mut records: HashMap<Vec<u8>, usize> = HashMap::new();
    read_to_end(kafka, updates, "e2e-check", timeout, |m| {
        *records.entry(m.key().unwrap_or_default().to_vec()).or_default() += 1;
        Ok(())
    })?;
    let mut expected: HashMap<&str, usize> = HashMap::new();
    for c in sent {
        *expected.entry(c.order_id.as_str()).or_default() += 1;
    }
    let (mut missing, mut duplicated) = (0, 0);
    for (id, n) in expected {
        let got = records.get(id.as_bytes()).copied().unwrap_or(0);
        missing += n.saturating_sub(got);
        duplicated += got.saturating_sub(n);
    }
    Ok(Check { missing, duplicated, out_of_order: 0 })
}

fn print_table(args: &Args, outcomes: &[Outcome]) {
    let mut table = Table::new();
    let mut header = vec![
        "contender".to_string(),
        "commands/s".into(),
        "orders/s".into(),
        "in view/s".into(),
        "CPU s per 1M orders (processor)".into(),
        "peak RSS MiB (processor)".into(),
        "CPU s per 1M (view)".into(),
        "peak RSS MiB (view)".into(),
    ];
    for rate in &args.rates {
        header.push(format!("latency @{rate}/s p50/p99/p999 ms (received/sent)"));
    }
    header.push("exactly once".into());
    table.set_header(header);
    for o in outcomes {
        let mut row = vec![
            o.contender.clone(),
            format!("{:.0}", o.commands_per_sec),
            format!("{:.0}", o.orders_per_sec),
            format!("{:.0}", o.viewed_per_sec),
            format!("{:.1}", o.processor_cpu_s_per_million),
            format!("{:.0}", o.processor_peak_rss_mib),
            format!("{:.1}", o.view_cpu_s_per_million),
            format!("{:.0}", o.view_peak_rss_mib),
        ];
        for l in &o.latency {
            row.push(format!("{:.1} / {:.1} / {:.1} ({}/{})", l.p50_ms, l.p99_ms, l.p999_ms, l.received, l.sent));
        }
        row.push(if o.checked {
            format!("missing {} dup {} out-of-order {}", o.missing, o.duplicated, o.out_of_order)
        } else {
            "not checked".into()
        });
        table.add_row(row);
    }
    println!(
        "{} orders ({} commands), {} partitions, commit interval {} ms, timers {} ms + {} ms",
        args.orders,
        outcomes.first().map_or(0, |o| o.commands),
        args.partitions,
        args.commit_interval_ms,
        args.prepare_after_ms,
        args.ship_after_ms
    );
    println!("{table}");
}
