//! # txn-probe: transactional commit latency, librdkafka against confluent-kafka
//!
//! Issue 13, item 4. Runs the same exactly-once loop with two Rust Kafka clients against one real
//! single-node Apache Kafka 4.1.1 broker (KRaft, started with `kafka-harness`; a new 4.x cluster
//! finalizes `transaction.version` 2 and `group.version` 1, which the probe prints), and prints
//! the commit latency of each:
//!
//! - `rdkafka` 0.39 over librdkafka 2.12.1, with the project's features (`ssl`, `tokio`) and
//!   producer settings: the first transaction protocol (AddPartitionsToTxn, AddOffsetsToTxn,
//!   EndTxn v1); classic consumer group unless `--rdkafka-group-protocol consumer`;
//! - `confluent-kafka` 1.0 (Confluent's Rust translation of the Java 4.4 client): transactions v2
//!   (KIP-890) when the broker has them (the probe checks its transaction manager's log line),
//!   KIP-848 consumer group (its only one).
//!
//! The loop, the same for both: one input topic `in` (4 partitions) filled beforehand; a consumer
//! in a fresh group (`read_committed`, no auto-commit) subscribed to it; a transactional producer
//! (`acks=all`, idempotence, `linger.ms=5`). Each transaction: begin; consume N records (default
//! 500 of 100 bytes: a 100 ms commit interval at 5,000 records/s) and produce each to `out`;
//! flush (every record acknowledged, as the project's engine needs before it commits); send the
//! consumed offsets with the consumer's group metadata; commit. Warm-up transactions (default 10)
//! are not counted. Two variants: back to back (`--gaps-ms 0`), and a 100 ms gap between a
//! commit and the next begin (the commit interval). Each client and gap runs `--rounds` times
//! (default 3) on the same broker, every other round in the reverse order of clients; the last
//! rows pool rounds 2 and later (round 1 warms the broker's JVM up and is slower for whoever runs
//! first).
//!
//! Per transaction it records, from the moment the last record is handed to the producer:
//! *end of txn* = flush + send_offsets + commit (what a stream thread waits for to commit), and
//! its parts: *flush*, *send_offsets*, *commit_transaction*, and *send_offsets + commit*. Per run:
//! records committed per second, from the first measured begin to the last commit (gaps
//! included; consuming and producing included, so not only the commit).
//!
//! Checks, after each run: the group's committed offsets add up to the records consumed; at the
//! end, `out` read with `read_committed` holds exactly the records of every transaction.
//!
//! ```sh
//! cd benches/txn-probe && cargo run --release -- --transactions 300
//! cargo run --release -- --transactions 300 --rdkafka-flush native   # librdkafka's rd_kafka_flush
//! cargo run --release -- --clients rdkafka --gaps-ms 0 --bootstrap 127.0.0.1:9092   # a broker of yours
//! ```
//!
//! `--rdkafka-flush` (see rd.rs): `drained` (default, the project's flush), `native`
//! (`rd_kafka_flush`, which stops lingering), `wrapper` (rdkafka's 100 ms poll slices).
//! `--rdkafka-option k=v` adds a librdkafka producer setting. `TXN_PROBE_LOG=librdkafka` with
//! `--rdkafka-option debug=eos,protocol` prints librdkafka's transaction log.
//!
//! Not a member of the main workspace (its own `[workspace]`, its own `Cargo.lock`); build it with
//! its own target directory if the workspace's is busy (`CARGO_TARGET_DIR=...`).

mod ck;
mod rd;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

pub const INPUT: &str = "in";
pub const OUTPUT: &str = "out";
const PARTITIONS: i32 = 4;

#[derive(Debug, Parser)]
#[command(about = "Transactional commit latency of rdkafka (librdkafka) and confluent-kafka in one exactly-once loop")]
struct Args {
    /// Measured transactions per run.
    #[arg(long, default_value_t = 300)]
    transactions: usize,
    /// Warm-up transactions per run, not counted.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Records consumed and produced per transaction.
    #[arg(long, default_value_t = 500)]
    records: usize,
    /// Size of each record's value, bytes.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Gaps between a commit and the next begin, ms; one run per gap and client.
    #[arg(long, value_delimiter = ',', default_value = "0,100")]
    gaps_ms: Vec<u64>,
    /// Rounds: every client and gap run again on the same broker, every other round in the
    /// reverse order of clients. With 2 or more, the last rows pool rounds 2 and later (round 1
    /// warms the broker's JVM up).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Clients to measure, in this order (reversed every other round): rdkafka, confluent.
    #[arg(long, value_delimiter = ',', default_value = "rdkafka,confluent")]
    clients: Vec<String>,
    /// Use this broker instead of starting one (it must have topics `in` and `out` or allow
    /// creating them).
    #[arg(long)]
    bootstrap: Option<String>,
    /// `group.protocol` of the rdkafka consumer: classic (as the project) or consumer (KIP-848,
    /// as confluent-kafka, which has only that one).
    #[arg(long, default_value = "classic")]
    rdkafka_group_protocol: String,
    /// Extra librdkafka setting for the rdkafka producer, `key=value` (repeat the flag), e.g.
    /// `retry.backoff.ms=10`.
    #[arg(long = "rdkafka-option", value_parser = parse_kv)]
    rdkafka_options: Vec<(String, String)>,
    /// How the rdkafka side waits for its records before the commit: `drained` (the project's:
    /// a condition signalled by the last delivery report), `native` (librdkafka's
    /// `rd_kafka_flush`, which also stops lingering) or `wrapper` (rdkafka's flush inside
    /// `commit_transaction`, in 100 ms poll slices). See rd.rs.
    #[arg(long, default_value = "drained", value_parser = ["drained", "native", "wrapper"])]
    rdkafka_flush: String,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// One transaction's timings.
#[derive(Debug, Clone, Copy)]
pub struct Txn {
    pub produce: Duration,
    pub flush: Duration,
    pub send_offsets: Duration,
    pub commit: Duration,
}

/// One run's result.
pub struct Run {
    pub txns: Vec<Txn>,
    pub wall: Duration,
}

/// What one run is asked to do.
pub struct RunSpec {
    pub group: String,
    pub transactional_id: String,
    pub transactions: usize,
    pub warmup: usize,
    pub records: usize,
    pub gap: Duration,
    pub rdkafka_group_protocol: String,
    pub rdkafka_options: Vec<(String, String)>,
    pub rdkafka_flush: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ck::install_logger();
    let cluster;
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => {
            eprintln!("starting a Kafka {} broker (kafka-harness)...", kafka_harness::KAFKA_VERSION);
            cluster = kafka_harness::Cluster::start(kafka_harness::ClusterConfig {
                heap: "1g".into(),
                ..Default::default()
            })?;
            let b = cluster.bootstrap_servers();
            eprintln!("broker at {b}, data in {}", cluster.root().display());
            match cluster.tool("org.apache.kafka.tools.FeatureCommand", &["--bootstrap-server", &b, "describe"]) {
                Ok(out) => {
                    for line in out.lines().filter(|l| l.contains("transaction.version") || l.contains("group.version"))
                    {
                        eprintln!("  {}", line.split_whitespace().collect::<Vec<_>>().join(" "));
                    }
                }
                Err(e) => eprintln!("  (could not describe the features: {e})"),
            }
            b
        }
    };
    let runs_per_client = args.gaps_ms.len();
    let needed = (args.transactions + args.warmup) * args.records;
    setup::topics(&bootstrap)?;
    setup::fill(&bootstrap, needed, args.record_bytes)?;
    eprintln!(
        "{INPUT}: {needed} records of {} bytes in {PARTITIONS} partitions; {runs_per_client} run(s) per client",
        args.record_bytes
    );

    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let mut rows = Vec::new();
    let mut pooled: Vec<(String, u64, Run)> = Vec::new();
    let mut produced_total = 0i64;
    let out_before = setup::count_committed(&bootstrap, OUTPUT)?;
    for round in 1..=args.rounds {
        // Every other round in the reverse order: the broker's JVM warms up during the first runs.
        let mut clients = args.clients.clone();
        if round % 2 == 0 {
            clients.reverse();
        }
        for client in &clients {
            for gap in &args.gaps_ms {
                let spec = RunSpec {
                    group: format!("probe-{client}-gap{gap}-r{round}-{stamp}"),
                    transactional_id: format!("probe-{client}-gap{gap}-r{round}-{stamp}"),
                    transactions: args.transactions,
                    warmup: args.warmup,
                    records: args.records,
                    gap: Duration::from_millis(*gap),
                    rdkafka_group_protocol: args.rdkafka_group_protocol.clone(),
                    rdkafka_options: args.rdkafka_options.clone(),
                    rdkafka_flush: args.rdkafka_flush.clone(),
                };
                eprintln!(
                    "round {round}: {client}, gap {gap} ms, {} + {} warm-up transactions of {} records",
                    spec.transactions, spec.warmup, spec.records
                );
                let started = Instant::now();
                let run = match client.as_str() {
                    "rdkafka" => rd::run(&bootstrap, &spec),
                    "confluent" => ck::run(&bootstrap, &spec),
                    other => anyhow::bail!("unknown client {other:?} (rdkafka or confluent)"),
                };
                match run {
                    Ok(run) => {
                        eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
                        let expected = ((spec.warmup + spec.transactions) * spec.records) as i64;
                        let committed = setup::committed(&bootstrap, &spec.group)?;
                        eprintln!("  check: the group's committed offsets add up to {committed} records consumed (expected {expected})");
                        anyhow::ensure!(
                            committed == expected,
                            "group {} committed {committed} offsets, expected {expected}",
                            spec.group
                        );
                        produced_total += expected;
                        rows.push(Row::new(&round.to_string(), client, *gap, &run, args.records, &args));
                        if round >= 2 {
                            match pooled.iter_mut().find(|(c, g, _)| c == client && g == gap) {
                                Some((_, _, p)) => {
                                    p.txns.extend(run.txns);
                                    p.wall += run.wall;
                                }
                                None => pooled.push((client.clone(), *gap, run)),
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("  FAILED: {e:#}");
                        rows.push(Row::failed(&round.to_string(), client, *gap, format!("{e:#}")));
                    }
                }
            }
        }
    }
    let out_after = setup::count_committed(&bootstrap, OUTPUT)?;
    eprintln!(
        "check: {} committed records read from {OUTPUT} (read_committed), {produced_total} expected",
        out_after - out_before
    );
    anyhow::ensure!(
        out_after - out_before == produced_total,
        "{OUTPUT} holds {} new committed records, expected {produced_total}",
        out_after - out_before
    );
    if args.clients.iter().any(|c| c == "confluent") {
        let v2 = ck::SAW_TV2.load(std::sync::atomic::Ordering::Relaxed);
        let v1 = ck::SAW_TV1.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "confluent-kafka's transaction manager logged: transactions v2 {} / v1 {}",
            if v2 { "yes" } else { "no" },
            if v1 { "yes" } else { "no" }
        );
    }
    pooled.sort_by_key(|(c, g, _)| (args.clients.iter().position(|x| x == c), *g));
    for (client, gap, run) in &pooled {
        rows.push(Row::new(&format!("2-{}", args.rounds), client, *gap, run, args.records, &args));
    }
    println!();
    println!("| round | client | gap ms | txns | end of txn (flush + send_offsets + commit) p50 / p90 / p99 / max ms | send_offsets + commit p50 / p90 / p99 / max ms | flush p50 ms | send_offsets p50 / p99 ms | commit_transaction p50 / p99 ms | records/s |");
    println!("|---|---|---:|---:|---|---|---:|---|---|---:|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

struct Row {
    text: String,
}

impl Row {
    fn new(round: &str, client: &str, gap: u64, run: &Run, records: usize, args: &Args) -> Row {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let series = |f: &dyn Fn(&Txn) -> Duration| run.txns.iter().map(|t| ms(f(t))).collect::<Vec<f64>>();
        let end = series(&|t| t.flush + t.send_offsets + t.commit);
        let commit = series(&|t| t.send_offsets + t.commit);
        let flush = series(&|t| t.flush);
        let send = series(&|t| t.send_offsets);
        let commit_only = series(&|t| t.commit);
        let rate = (run.txns.len() * records) as f64 / run.wall.as_secs_f64().max(1e-9);
        let four = |v: &[f64]| {
            format!("{:.1} / {:.1} / {:.1} / {:.1}", pct(v, 50.0), pct(v, 90.0), pct(v, 99.0), pct(v, 100.0))
        };
        let name = match client {
            "rdkafka" => {
                let mut n = format!(
                    "rdkafka 0.39 (librdkafka 2.12.1), {} group, flush {}",
                    args.rdkafka_group_protocol, args.rdkafka_flush
                );
                for (k, v) in &args.rdkafka_options {
                    n.push_str(&format!(", {k}={v}"));
                }
                n
            }
            "confluent" => "confluent-kafka 1.0, consumer group".to_string(),
            c => c.to_string(),
        };
        Row {
            text: format!(
                "| {round} | {name} | {gap} | {} | {} | {} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} |",
                run.txns.len(),
                four(&end),
                four(&commit),
                pct(&flush, 50.0),
                pct(&send, 50.0),
                pct(&send, 99.0),
                pct(&commit_only, 50.0),
                pct(&commit_only, 99.0),
                rate
            ),
        }
    }

    fn failed(round: &str, client: &str, gap: u64, why: String) -> Row {
        Row { text: format!("| {round} | {client} | {gap} | failed: {} |", why.replace('|', "/").replace('\n', " ")) }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Nearest-rank percentile.
fn pct(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Topics and input, made with rdkafka before any run (not measured).
mod setup {
    use std::time::Duration;

    use anyhow::{bail, Context, Result};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::types::RDKafkaErrorCode;
    use rdkafka::ClientConfig;

    use super::{INPUT, OUTPUT, PARTITIONS};

    pub fn topics(bootstrap: &str) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", bootstrap).create().context("admin client")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let topics = [
            NewTopic::new(INPUT, PARTITIONS, TopicReplication::Fixed(1)),
            NewTopic::new(OUTPUT, PARTITIONS, TopicReplication::Fixed(1)),
        ];
        let results = rt.block_on(admin.create_topics(&topics, &AdminOptions::new()))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => bail!("creating {t}: {e}"),
            }
        }
        Ok(())
    }

    /// The records consumed by `group`: the sum of its committed offsets on `in` (whose records
    /// are not transactional, so offsets are contiguous from 0).
    pub fn committed(bootstrap: &str, group: &str) -> Result<i64> {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(INPUT, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
        Ok(committed.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0).max(0)).sum())
    }

    /// Counts the committed records of `topic`, reading it whole with `read_committed`.
    pub fn count_committed(bootstrap: &str, topic: &str) -> Result<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "txn-probe-counter")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let (mut count, mut eof) = (0i64, std::collections::HashSet::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while eof.len() < PARTITIONS as usize {
            if std::time::Instant::now() > deadline {
                bail!("counting {topic} took more than 300 s");
            }
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(_m)) => count += 1,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => bail!("counting {topic}: {e}"),
                None => {}
            }
        }
        Ok(count)
    }

    /// Fills `in` up to `needed` records (keys spread over the partitions), if it has fewer.
    pub fn fill(bootstrap: &str, needed: usize, bytes: usize) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
        let mut have = 0i64;
        for p in 0..PARTITIONS {
            // Just after the topic's creation its partitions may have no leader yet.
            let started = std::time::Instant::now();
            let (lo, hi) = loop {
                match consumer.fetch_watermarks(INPUT, p, Duration::from_secs(30)) {
                    Ok(w) => break w,
                    Err(e) if started.elapsed() < Duration::from_secs(30) => {
                        eprintln!("  (watermarks of {INPUT} [{p}]: {e}; trying again)");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            have += hi - lo;
        }
        let needed = needed as i64;
        if have >= needed {
            return Ok(());
        }
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "20")
            .set("acks", "all")
            .create()?;
        let value = vec![b'x'; bytes];
        for i in have..needed {
            let key = format!("order-{i:012}");
            let mut record = BaseRecord::to(INPUT).key(key.as_bytes()).payload(&value[..]);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(())
    }
}
