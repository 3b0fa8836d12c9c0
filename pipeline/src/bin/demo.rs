//! The demo: the whole order flow in one process, on an embedded cluster or a real one.

/// jemalloc for Rust and, unprefixed, for RocksDB and librdkafka too: less time in malloc and
/// less fragmentation than glibc's allocator under this load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;
use pipeline::demo::{self, DemoArgs};
use pipeline::logging::{self, LogFormat};

/// Run the whole order flow in one process: place orders (wagon-lits), process them exactly once
/// (dev-materiels), follow them in the view, confirm deliveries, and print where every order
/// ended. Exits non-zero if any order is missing from the view.
///
/// Without --brokers it runs on an embedded in-process Kafka-protocol cluster that keeps nothing
/// and does not prove exactly-once; with --brokers, on a real cluster.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: DemoArgs,
    /// Log format (`RUST_LOG` sets the filter).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "warn");
    match demo::run(&cli.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
