//! wagon-lits: places material orders and keeps its own view of them, from `order-updates`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use pipeline::kafka_config::{KafkaArgs, TopicArgs};
use pipeline::logging::{self, LogFormat};
use pipeline::wagon_lits::{ensure_service_topics, CommandProducer, Materialiser, ViewConfig};
use state::{Command, CommandEnvelope, OrderLine, OrderStatus, PlaceOrder, StoreOptions, ViewStore};

/// wagon-lits: places orders for materials and keeps its own view of them.
///
/// `run` materialises `order-updates` into the view (RocksDB), exactly once, until SIGTERM or
/// SIGINT. `place`, `cancel` and `confirm` send one command to `orders`. `get`, `list` and
/// `counts` read the view (also while `run` is running).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Where the view lives.
    #[arg(long, global = true, env = "STATE_DIR", default_value = "./state/wagon-lits")]
    state_dir: PathBuf,
    /// Log format (`RUST_LOG` sets the filter).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
}

#[derive(clap::Args, Clone)]
struct Kafka {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    /// How long a command may wait for Kafka before it fails.
    #[arg(long, env = "DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    delivery_timeout_ms: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Materialise `order-updates` into the view until stopped.
    Run {
        #[command(flatten)]
        kafka: Kafka,
    },
    /// Place an order.
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
    /// Cancel an order.
    Cancel {
        #[command(flatten)]
        kafka: Kafka,
        #[arg(long)]
        order_id: String,
        #[arg(long, default_value = "cancelled by wagon-lits")]
        reason: String,
    },
    /// Confirm that an order was delivered.
    Confirm {
        #[command(flatten)]
        kafka: Kafka,
        #[arg(long)]
        order_id: String,
    },
    /// Show one order from the view, as JSON.
    Get { order_id: String },
    /// List orders in a status from the view, as JSON lines.
    List {
        status: OrderStatus,
        /// Start after this order id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Orders per status in the view.
    Counts,
}

fn parse_line(s: &str) -> Result<OrderLine, String> {
    let (sku, quantity) = s.split_once('=').ok_or_else(|| format!("expected SKU=QUANTITY, got {s:?}"))?;
    let quantity = quantity.parse().map_err(|e| format!("quantity in {s:?}: {e}"))?;
    Ok(OrderLine { sku: sku.to_string(), quantity })
}

fn send(kafka: &Kafka, order_id: String, command: Command) -> anyhow::Result<()> {
    ensure_service_topics(&kafka.kafka, &kafka.topics).context("creating topics")?;
    let producer = CommandProducer::new(
        &kafka.kafka,
        &kafka.topics.orders_topic,
        Duration::from_millis(kafka.delivery_timeout_ms),
    )?;
    let issued_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let envelope = CommandEnvelope::new(uuid::Uuid::new_v4().to_string(), order_id, issued_at_ms, command);
    let (partition, offset) = producer.send_and_wait(&envelope).context("sending the command")?;
    println!(
        "{}",
        serde_json::json!({"command_id": envelope.command_id, "order_id": envelope.order_id, "partition": partition, "offset": offset})
    );
    Ok(())
}

fn open_view(cli: &Cli) -> anyhow::Result<ViewStore> {
    let path = cli.state_dir.join("view");
    if !path.exists() {
        bail!("no view at {} (has `wagon-lits run` run with this --state-dir?)", path.display());
    }
    Ok(ViewStore::open_read_only(&path, &StoreOptions::default())?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info,librdkafka=warn,rdkafka=warn");
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wagon-lits: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Run { kafka } => {
            let shutdown = pipeline::shutdown::on_signal()?;
            ensure_service_topics(&kafka.kafka, &kafka.topics).context("creating topics")?;
            let materialiser = Materialiser::new(
                ViewConfig {
                    kafka: kafka.kafka.clone(),
                    updates_topic: kafka.topics.updates_topic.clone(),
                    state_dir: cli.state_dir.clone(),
                    max_batch: 5_000,
                },
                &StoreOptions::default(),
            )?;
            tracing::info!(state_dir = %cli.state_dir.display(), "wagon-lits view running");
            let stats = materialiser.run(shutdown)?;
            tracing::info!(applied = stats.applied, stale = stats.stale, "stopped");
            Ok(())
        }
        Cmd::Place { kafka, order_id, wagon_id, requested_by, lines } => send(
            kafka,
            order_id.clone(),
            Command::PlaceOrder(PlaceOrder {
                wagon_id: wagon_id.clone(),
                requested_by: requested_by.clone(),
                lines: lines.clone(),
            }),
        ),
        Cmd::Cancel { kafka, order_id, reason } => {
            send(kafka, order_id.clone(), Command::CancelOrder { reason: reason.clone() })
        }
        Cmd::Confirm { kafka, order_id } => send(kafka, order_id.clone(), Command::ConfirmDelivery {}),
        Cmd::Get { order_id } => match open_view(cli)?.get(order_id)? {
            Some(row) => {
                println!("{}", serde_json::to_string_pretty(&row)?);
                Ok(())
            }
            None => bail!("order {order_id} is not in the view"),
        },
        Cmd::List { status, after, limit } => {
            for row in open_view(cli)?.list_by_status(*status, after.as_deref(), *limit)? {
                println!("{}", serde_json::to_string(&row)?);
            }
            Ok(())
        }
        Cmd::Counts => {
            for (status, n) in open_view(cli)?.counts() {
                println!("{status:<14} {n}");
            }
            Ok(())
        }
    }
}
