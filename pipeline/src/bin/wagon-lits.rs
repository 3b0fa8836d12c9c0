//! The `wagon-lits` command line: serve the API and the view, send single commands, read the
//! view, rebuild it from `order-updates`, list and replay dead letters.

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use engine::kafka::KafkaArgs;
use engine::logging::{self, LogFormat};

use state::{Command, CommandEnvelope, OrderLine, OrderStatus, PlaceOrder, StoreOptions, ViewStore};
use wagon_lits::{ensure_service_topics, CommandProducer, WagonLitsArgs};
use wire::avro::Record;
use wire::{Codec, CodecArgs, TopicArgs};

/// wagon-lits: places orders for materials and keeps its own view of them.
///
/// `serve` materialises `order-updates` into the view (RocksDB), exactly once, and serves the
/// HTTP API (with --http-listen) until SIGTERM or SIGINT. Commands go to Kafka, or over HTTP to
/// dev-materiels (--dev-materiels-url) when Kafka does not take them in time. `place`, `cancel`
/// and `confirm` send one command to `orders` from the command line; `get`, `list` and `counts`
/// read the view (also while `serve` runs).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Log format (`RUST_LOG` sets the filter).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
    /// Export spans to an OpenTelemetry collector over OTLP/HTTP, e.g. `http://localhost:4318`
    /// (spans go to `<url>/v1/traces`). Off when unset.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(clap::Args, Clone)]
struct Kafka {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    codec: CodecArgs,
    /// How long a command may wait for Kafka before it fails.
    #[arg(long, env = "DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    delivery_timeout_ms: u64,
}

#[derive(clap::Args, Clone)]
struct ViewDir {
    /// Where the view lives.
    #[arg(long, env = "STATE_DIR", default_value = "./state/wagon-lits")]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Materialise `order-updates` into the view and serve the HTTP API until stopped.
    Serve {
        #[command(flatten)]
        args: WagonLitsArgs,
    },
    /// Place an order (through Kafka).
    Place {
        #[command(flatten)]
        kafka: Kafka,
        #[arg(long)]
        order_id: String,
        #[arg(long)]
        wagon_id: String,
        #[arg(long)]
        requested_by: String,
        /// An order line, `SKU=QUANTITY`; repeat for several.
        #[arg(long = "line", value_parser = parse_line, required = true)]
        lines: Vec<OrderLine>,
    },
    /// Cancel an order (through Kafka).
    Cancel {
        #[command(flatten)]
        kafka: Kafka,
        #[arg(long)]
        order_id: String,
        #[arg(long, default_value = "cancelled by wagon-lits")]
        reason: String,
    },
    /// Confirm that an order was delivered (through Kafka).
    Confirm {
        #[command(flatten)]
        kafka: Kafka,
        #[arg(long)]
        order_id: String,
    },
    /// Show one order from the view, as JSON.
    Get {
        #[command(flatten)]
        view: ViewDir,
        order_id: String,
    },
    /// List orders in a status from the view, as JSON lines.
    List {
        #[command(flatten)]
        view: ViewDir,
        status: OrderStatus,
        /// Start after this order id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Rebuild the view from `order-updates`, from the beginning, into a new directory, and
    /// compare it with the live view. Exits non-zero if they differ.
    Replay {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicArgs,
        #[command(flatten)]
        codec: CodecArgs,
        /// A new directory for the rebuilt view.
        #[arg(long)]
        into: PathBuf,
        /// The live view's --state-dir, to compare with.
        #[arg(long)]
        compare_with: Option<PathBuf>,
    },
    /// Orders per status in the view.
    Counts {
        #[command(flatten)]
        view: ViewDir,
    },
    /// Multi-cluster operation (docs/multi-cluster.md). `cluster take-over`, run against the
    /// standby cluster's brokers with wagon-lits stopped, after `dev-materiels cluster
    /// take-over`: rebuilds the view from the standby's `order-updates` (the old one is kept
    /// beside it), then sends again to the standby's `orders` every command the old view's journal
    /// (--replicated) and pending marks hold that the standby has not answered. Then start
    /// `wagon-lits serve` against the standby. Exits 1 if the primary answers (without --force).
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// The dead-letter topic: list its records with their reasons, or replay one to `orders`.
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Take over on the cluster --brokers names (the standby), from the cluster being left.
    TakeOver {
        #[command(flatten)]
        args: WagonLitsArgs,
        /// The brokers of the cluster being left (the primary in a failover, the standby in a
        /// failback): if they answer, the take-over refuses (commands would go to two clusters)
        /// unless --force.
        #[arg(long, env = "TAKE_OVER_FROM")]
        from: Option<String>,
        /// Take over although the cluster being left answers: a switchover, once wagon-lits is
        /// stopped there and MirrorMaker 2 has copied everything.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List the last dead letters, as JSON lines: where each is, why it was refused, where it
    /// came from, and its key and value (cut to 200 characters).
    List {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicArgs,
        /// How many of the last records of each partition.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Replay one dead letter to `orders`, as it is or with a fixed value. It must decode as a
    /// valid command now; it is keyed by its order id and carries a `dlq.replayed.from` header.
    Replay {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicArgs,
        /// Partition of the dead letter.
        #[arg(long, default_value_t = 0)]
        partition: i32,
        /// Offset of the dead letter (from `dlq list`).
        #[arg(long)]
        offset: i64,
        /// A file with the fixed value (a command as JSON) to send instead of the original.
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
}

fn parse_line(s: &str) -> Result<OrderLine, String> {
    let (sku, quantity) = s.split_once('=').ok_or_else(|| format!("expected SKU=QUANTITY, got {s:?}"))?;
    let quantity = quantity.parse().map_err(|e| format!("quantity in {s:?}: {e}"))?;
    Ok(OrderLine { sku: sku.to_string(), quantity })
}

fn send(kafka: &Kafka, order_id: String, command: Command) -> anyhow::Result<()> {
    kafka.kafka.check(Duration::from_secs(15))?;
    ensure_service_topics(&kafka.kafka, &kafka.topics).context("creating topics")?;
    let codec = Codec::connect(&kafka.codec, &[(Record::Command, &kafka.topics.orders_topic)])?;
    let producer = CommandProducer::new(
        &kafka.kafka,
        &kafka.topics.orders_topic,
        Duration::from_millis(kafka.delivery_timeout_ms),
    )?
    .with_codec(codec);
    let issued_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let envelope = CommandEnvelope::new(uuid::Uuid::new_v4().to_string(), order_id, issued_at_ms, command);
    let (partition, offset) = producer.send_and_wait(&envelope).context("sending the command")?;
    println!(
        "{}",
        serde_json::json!({"command_id": envelope.command_id, "order_id": envelope.order_id, "partition": partition, "offset": offset})
    );
    Ok(())
}

fn open_view(dir: &ViewDir) -> anyhow::Result<ViewStore> {
    let path = dir.state_dir.join("view");
    if !path.exists() {
        bail!("no view at {} (has `wagon-lits serve` run with this --state-dir?)", path.display());
    }
    Ok(ViewStore::open_read_only(&path, &StoreOptions::default())?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info,librdkafka=warn,rdkafka=warn");
    if let Some(endpoint) = &cli.otlp_endpoint {
        if let Err(err) = engine::otel::init(endpoint, "wagon-lits") {
            eprintln!("wagon-lits: {err}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let result = run(cli.command);
    engine::otel::shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wagon-lits: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Serve { args } => Ok(wagon_lits::serve(&args, engine::shutdown::on_signal()?)?),
        Cmd::Place { kafka, order_id, wagon_id, requested_by, lines } => {
            send(&kafka, order_id, Command::PlaceOrder(PlaceOrder { wagon_id, requested_by, lines }))
        }
        Cmd::Cancel { kafka, order_id, reason } => send(&kafka, order_id, Command::CancelOrder { reason }),
        Cmd::Confirm { kafka, order_id } => send(&kafka, order_id, Command::ConfirmDelivery {}),
        Cmd::Get { view, order_id } => match open_view(&view)?.get(&order_id)? {
            Some(row) => {
                println!("{}", serde_json::to_string_pretty(&row)?);
                Ok(())
            }
            None => bail!("order {order_id} is not in the view"),
        },
        Cmd::List { view, status, after, limit } => {
            for row in open_view(&view)?.list_by_status(status, after.as_deref(), limit)? {
                println!("{}", serde_json::to_string(&row)?);
            }
            Ok(())
        }
        Cmd::Replay { kafka, topics, codec, into, compare_with } => {
            kafka.check(Duration::from_secs(15))?;
            let codec = Codec::connect(&codec, &[])?;
            let report = wagon_lits::replay(&kafka, &codec, &topics.updates_topic, &into, compare_with.as_deref())?;
            println!("rebuilt {} orders from {} into {}", report.orders, topics.updates_topic, into.display());
            if compare_with.is_some() {
                if report.differences > 0 {
                    for example in &report.examples {
                        println!("  {example}");
                    }
                    bail!("the rebuilt view differs from the live one in {} orders", report.differences);
                }
                println!("the rebuilt view equals the live one");
            }
            Ok(())
        }
        Cmd::Cluster { command: ClusterCmd::TakeOver { args, from, force } } => {
            args.kafka.check(Duration::from_secs(15))?;
            let codec = Codec::connect(&args.codec, &[(Record::Command, &args.topics.orders_topic)])?;
            let primary = from.map(|brokers| KafkaArgs { brokers, ..args.kafka.clone() });
            let take_over = wagon_lits::takeover::TakeOver { args: &args, codec, primary, force };
            let done = match take_over.run() {
                Ok(done) => done,
                Err(err @ wagon_lits::WagonLitsError::PrimaryAnswers { .. }) => {
                    eprintln!("wagon-lits cluster take-over: {err}");
                    std::process::exit(1);
                }
                Err(err) => return Err(err.into()),
            };
            println!(
                "took over on cluster {} in {:.1} s: view rebuilt ({} orders); {} journaled and {} pending commands \
                 carried, {} answered by the standby, {} sent again; old view kept at {}",
                done.cluster_id,
                done.elapsed.as_secs_f64(),
                done.orders,
                done.journaled,
                done.pending,
                done.answered,
                done.resent,
                done.old_view.map_or_else(|| "(none)".to_string(), |p| p.display().to_string())
            );
            Ok(())
        }
        Cmd::Dlq { command: DlqCmd::List { kafka, topics, limit } } => {
            kafka.check(Duration::from_secs(15))?;
            for letter in wagon_lits::dead_letters::list(&kafka, &topics.dlq_topic, limit)? {
                let (key, value) = letter.preview(200);
                println!(
                    "{}",
                    serde_json::json!({
                        "partition": letter.partition,
                        "offset": letter.offset,
                        "kind": letter.kind(),
                        "error": letter.error(),
                        "source": letter.source(),
                        "key": key,
                        "value": value,
                    })
                );
            }
            Ok(())
        }
        Cmd::Dlq { command: DlqCmd::Replay { kafka, topics, partition, offset, value_file } } => {
            kafka.check(Duration::from_secs(15))?;
            let letter = wagon_lits::dead_letters::fetch(&kafka, &topics.dlq_topic, partition, offset)?;
            let fixed = match &value_file {
                Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
                None => None,
            };
            let replayed = wagon_lits::dead_letters::replay(
                &kafka,
                &topics.dlq_topic,
                &topics.orders_topic,
                &letter,
                fixed.as_deref(),
            )
            .with_context(|| format!("replaying {}/{partition}/{offset}", topics.dlq_topic))?;
            println!("{}", serde_json::to_string(&replayed)?);
            Ok(())
        }
        Cmd::Counts { view } => {
            for (status, n) in open_view(&view)?.counts() {
                println!("{status:<14} {n}");
            }
            Ok(())
        }
    }
}
