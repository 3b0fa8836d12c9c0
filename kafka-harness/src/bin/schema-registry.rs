//! Runs a real schema registry (Apicurio Registry, in memory) on 127.0.0.1 until Ctrl-C or
//! SIGTERM, for local work with `--wire-format avro`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kafka_harness::registry::{SchemaRegistry, APICURIO_VERSION};

/// Start a local Apicurio Registry (the application Maven fetches, run by a Java 21 or newer)
/// and keep it running until Ctrl-C or SIGTERM. It keeps its schemas in memory: register them
/// again after a restart (`dev-materiels schemas apply`).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Port of its HTTP API (the Confluent-compatible one is under /apis/ccompat/v7).
    #[arg(long, env = "REGISTRY_PORT", default_value_t = 8085)]
    port: u16,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    eprintln!("starting Apicurio Registry {APICURIO_VERSION}...");
    let registry = SchemaRegistry::start_on(args.port).context("starting the schema registry")?;
    println!("{}", registry.url());
    eprintln!("ready: {} (log in {}); Ctrl-C stops it", registry.url(), registry.log().display());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping...");
    drop(registry);
    Ok(())
}
