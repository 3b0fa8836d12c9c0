//! Runs a real Apache Kafka broker (or a small cluster) on 127.0.0.1 until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kafka_harness::{Cluster, ClusterConfig};

/// Start a local Apache Kafka (KRaft, no Docker) from the jars Maven fetches, and keep it running
/// until Ctrl-C or SIGTERM.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Client port of the first node (node N uses PORT + 2(N-1); controllers use the next port).
    #[arg(long, env = "KAFKA_PORT", default_value_t = 9092)]
    port: u16,
    /// Number of nodes (each is both broker and controller).
    #[arg(long, env = "KAFKA_NODES", default_value_t = 1)]
    nodes: u32,
    /// Keep data here (kept after exit); a temporary directory otherwise.
    #[arg(long, env = "KAFKA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Only fetch the jars (into $KAFKA_JARS_DIR or ~/.cache/rail-orders), then exit.
    #[arg(long)]
    fetch_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.fetch_only {
        let dir = kafka_harness::ensure_jars().context("fetching the Kafka jars")?;
        println!("Kafka {} jars in {}", kafka_harness::KAFKA_VERSION, dir.display());
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    eprintln!("starting Kafka {} ({} node(s))...", kafka_harness::KAFKA_VERSION, args.nodes);
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: args.nodes,
        data_dir: args.data_dir,
        first_port: Some(args.port),
        ..ClusterConfig::default()
    })
    .context("starting Kafka")?;
    println!("{}", cluster.bootstrap_servers());
    eprintln!(
        "ready: bootstrap servers {} (data and logs in {}); Ctrl-C stops it",
        cluster.bootstrap_servers(),
        cluster.root().display()
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping...");
    for id in cluster.node_ids() {
        cluster.stop(id, Duration::from_secs(30)).context("stopping a node")?;
    }
    Ok(())
}
