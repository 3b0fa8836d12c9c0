//! dev-materiels: reads commands from `orders`, runs each order's state machine with its state in
//! RocksDB (backed by a compacted changelog), and emits decisions to `order-updates`, exactly once.

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;
use pipeline::dev_materiels::{self, DevMaterielsArgs};
use pipeline::logging::{self, LogFormat};

/// dev-materiels: the exactly-once stateful processor of material orders.
///
/// Reads `orders`, keeps each order's state machine in RocksDB (one store per partition, backed
/// by the compacted changelog `<application-id>-order-store-changelog`), and emits to
/// `order-updates`; updates, changelog records and consumed offsets commit in one Kafka
/// transaction. Invalid commands go to the dead-letter topic with their reason. SIGTERM or
/// SIGINT commits what is open and stops.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: DevMaterielsArgs,
    /// Log format (`RUST_LOG` sets the filter, e.g. `info,pipeline=debug`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info,librdkafka=warn,rdkafka=warn");
    let shutdown = match pipeline::shutdown::on_signal() {
        Ok(flag) => flag,
        Err(err) => {
            eprintln!("dev-materiels: cannot install signal handlers: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match dev_materiels::run(&cli.args, shutdown, Default::default()) {
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
