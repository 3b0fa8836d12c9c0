//! Kafka Connect with real components: a PostgreSQL server (one per test binary, a database per
//! test), a Connect worker in distributed mode with Debezium's PostgreSQL source and JDBC sink and
//! Apicurio's Avro converter, the schema registry and a broker. The connectors are the files of
//! `deploy/connect/`, applied through the worker's REST API as `dev-materiels connect apply` does.
//!
//! - the catalogue: a SKU deactivated, then reactivated, in PostgreSQL decides the next orders
//!   with dev-materiels never restarted (the time from the SQL commit to the first decision that
//!   sees it is printed), and a poison row goes to the catalogue's dead-letter topic while the
//!   pipeline goes on;
//! - the orders: 5,000 orders through the whole stack (wagon-lits' API, dev-materiels, both in
//!   Avro), the Connect worker SIGKILLed and PostgreSQL restarted in the middle; the PostgreSQL
//!   `orders` table ends equal to wagon-lits' view, and no row ever went back to an older version
//!   (triggers of the test's own audit count the older versions the sink offered again and the
//!   ones written).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dev_materiels::connectors::{ConnectClient, Connector, Restart, RestartPolicy, Supervisor};
use kafka_harness::connect::{ConnectConfig, ConnectWorker};
use kafka_harness::postgres::Postgres;
use serde_json::{json, Value};
use wire::dlq::headers;

use crate::support::http::{Http, TOKEN};
use crate::support::{now_ms, schema_registry, TestEnv};

/// The test binary's PostgreSQL, started by the first test that asks for it.
fn postgres() -> &'static Mutex<Postgres> {
    static POSTGRES: std::sync::OnceLock<Mutex<Postgres>> = std::sync::OnceLock::new();
    POSTGRES.get_or_init(|| {
        // Started from a thread that lives as long as the test binary (the server dies with the
        // thread that started it).
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                let _ = sender.send(Postgres::start());
                loop {
                    std::thread::park();
                }
            })
            .expect("starting PostgreSQL's thread");
        let pg = receiver.recv().expect("PostgreSQL's thread").expect("starting PostgreSQL");
        eprintln!("PostgreSQL on port {} (log {})", pg.port(), pg.log().display());
        Mutex::new(pg)
    })
}

fn sql(database: &str, statement: &str) -> String {
    let pg = postgres().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    pg.psql_in(database, statement).unwrap_or_else(|e| panic!("{statement}: {e}"))
}

/// A new database with the tables of `deploy/postgres/`.
fn database(name: &str) {
    let pg = postgres().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    pg.psql(&format!("CREATE DATABASE {name}")).expect("create the database");
    for file in ["catalogue.sql", "orders.sql"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/postgres").join(file))
            .expect("deploy/postgres");
        pg.psql_in(name, &text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// A Connect worker on the test's cluster, with the environment the connector files name.
fn connect_worker(env: &TestEnv, database: &str, extra: &[(&str, &str)]) -> ConnectWorker {
    let port = postgres().lock().unwrap_or_else(std::sync::PoisonError::into_inner).port();
    let registry = schema_registry().url().replace("/apis/ccompat/v7", "/apis/registry/v2");
    let mut config = ConnectConfig::new(env.cluster.bootstrap_servers());
    config.env = [
        ("RAIL_PG_HOST", "127.0.0.1".to_string()),
        ("RAIL_PG_PORT", port.to_string()),
        ("RAIL_PG_USER", "postgres".into()),
        ("RAIL_PG_PASSWORD", "unused-with-trust".into()),
        ("RAIL_PG_DATABASE", database.to_string()),
        ("RAIL_APICURIO_URL", registry),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    config.extra_properties = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let started = Instant::now();
    let worker = ConnectWorker::start(config).expect("starting a Connect worker");
    eprintln!("Connect worker at {} in {:?} (log {})", worker.url(), started.elapsed(), worker.log().display());
    worker
}

/// The connectors of `deploy/connect/`, with this test's replication slot (slots are per server).
fn apply(worker: &ConnectWorker, names: &[&str], slot: &str) -> ConnectClient {
    let client = ConnectClient::new(&worker.url()).expect("a Connect client");
    for mut connector in
        Connector::builtin().expect("deploy/connect").into_iter().filter(|c| names.contains(&c.name.as_str()))
    {
        if connector.config.contains_key("slot.name") {
            connector.config.insert("slot.name".into(), Value::String(slot.into()));
        }
        client.apply(&connector).unwrap_or_else(|e| panic!("applying {}: {e}", connector.name));
    }
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for status in client.wait_running(&names, Duration::from_secs(120)).expect("connector status") {
        assert!(status.running(), "{status}\nworker log: {}", worker.log().display());
    }
    client
}

/// Waits until `topic` holds at least `n` records (Debezium's snapshot, a change captured).
fn wait_records(env: &TestEnv, topic: &str, n: usize) -> usize {
    let started = Instant::now();
    loop {
        let records = crate::support::end_offsets(&env.kafka, topic);
        if records >= i64::try_from(n).unwrap_or(i64::MAX) {
            return usize::try_from(records).unwrap_or(0);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{topic} has {records} records, not {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Places an order of one line and returns its update once decided: (status, reason, decided at).
fn decide(api: &Http, order_id: &str, sku: &str, quantity: u32) -> (String, Option<String>, u64) {
    let placed = api.post(
        "/orders",
        json!({"order_id": order_id, "wagon_id": "WL-1", "requested_by": "test", "lines": [{"sku": sku, "quantity": quantity}]})
            .to_string(),
    );
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    let started = Instant::now();
    loop {
        let answer = api.get(&format!("/orders/{order_id}"));
        if answer.status == 200 {
            if let Some(status) = answer.body["status"].as_str() {
                let reason = answer.body["reason"].as_str().map(str::to_string);
                let at = answer.body["timestamp_ms"].as_u64().unwrap_or(0);
                return (status.to_string(), reason, at);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{order_id} never decided: {:?}", answer.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Places orders until one is decided `wanted`; returns it and the time from `since_ms`.
fn first_decided(api: &Http, prefix: &str, sku: &str, wanted: &str, since_ms: u64) -> (String, Option<String>, u64) {
    for n in 0..600 {
        let (status, reason, at) = decide(api, &format!("{prefix}-{n}"), sku, 1);
        if status == wanted {
            return (format!("{prefix}-{n}"), reason, at.saturating_sub(since_ms));
        }
    }
    panic!("no order of {sku} was {wanted} after 600 tries");
}

#[test]
fn catalogue_rows_changed_in_postgresql_decide_the_next_orders_and_a_poison_row_is_dead_lettered() {
    let env = TestEnv::start("connect-catalogue", 1);
    database("catalogue_test");
    sql(
        "catalogue_test",
        "INSERT INTO catalogue (sku, description, active, stock) VALUES \
         ('BRAKE-PAD-UIC', 'Brake pad, UIC', true, 100), ('WHEELSET-BA004', 'Wheelset', true, 2)",
    );
    let worker = connect_worker(&env, "catalogue_test", &[]);
    let _connect = apply(&worker, &["catalogue-source"], "rail_catalogue_test");
    // dev-materiels waits for the topic's end, not for the table's: let the snapshot land first.
    wait_records(&env, "catalogue", 2);
    let mut dev = env.spawn_dev_materiels_with(0, &[("CATALOGUE_TOPIC", "catalogue")]);
    let mut wagon_lits = env.spawn_wagon_lits(0, 5_000);
    let api = Http::new(env.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(120));

    // The rows of the snapshot decide: an active SKU with stock, an unknown one, too few in stock.
    assert_eq!(decide(&api, "CAT-1", "BRAKE-PAD-UIC", 4).0, "Accepted");
    let (status, reason, _) = decide(&api, "CAT-2", "BATTERY-110V-NICD", 1);
    assert_eq!((status.as_str(), reason.as_deref()), ("Rejected", Some("line 1: unknown SKU \"BATTERY-110V-NICD\"")));
    let (status, reason, _) = decide(&api, "CAT-3", "WHEELSET-BA004", 3);
    assert_eq!(status, "Rejected");
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("out of stock") && r.contains("WHEELSET-BA004")),
        "{reason:?}"
    );

    // Deactivated in PostgreSQL: the next orders are rejected, naming the SKU.
    sql("catalogue_test", "UPDATE catalogue SET active = false WHERE sku = 'BRAKE-PAD-UIC'");
    let committed = now_ms();
    let (order, reason, took) = first_decided(&api, "OFF", "BRAKE-PAD-UIC", "Rejected", committed);
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("BRAKE-PAD-UIC") && reason.contains("not active"), "{reason}");
    eprintln!("deactivation: from the SQL commit to the first decision that saw it ({order}): {took} ms");

    // Reactivated: the next ones are accepted again. dev-materiels was never restarted.
    sql("catalogue_test", "UPDATE catalogue SET active = true WHERE sku = 'BRAKE-PAD-UIC'");
    let committed = now_ms();
    let (order, _, took) = first_decided(&api, "ON", "BRAKE-PAD-UIC", "Accepted", committed);
    eprintln!("reactivation: from the SQL commit to the first decision that saw it ({order}): {took} ms");
    dev.assert_running();

    // A poison row (no SKU) goes to the dead-letter topic with its reason; the pipeline goes on,
    // and the rows after it still count.
    sql(
        "catalogue_test",
        "INSERT INTO catalogue (sku, description, active, stock) VALUES (NULL, 'a row without its SKU', true, 5); \
         INSERT INTO catalogue (sku, description, active, stock) VALUES ('HVAC-FILTER-G4', 'Filter', true, 10)",
    );
    let (order, _, _) = first_decided(&api, "AFTER", "HVAC-FILTER-G4", "Accepted", now_ms());
    let started = Instant::now();
    let dead = loop {
        let dead = env.read_all("catalogue.dlq");
        if !dead.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(dead.len(), 1, "one dead letter for the poison row");
    let header = |name: &str| dead[0].headers.get(name).cloned();
    let why = header(headers::ERROR).unwrap_or_default();
    assert!(why.contains("NULL"), "the reason says what is wrong: {why}");
    assert_eq!(header(headers::SOURCE_TOPIC).as_deref(), Some("catalogue"));
    let row: Value = serde_json::from_slice(dead[0].value.as_deref().unwrap_or_default()).expect("the row, as it was");
    assert_eq!(row["description"], "a row without its SKU");
    eprintln!("poison row: dead-lettered ({why}); {order} decided after it");
    // Both topics as docs/asyncapi.json describes them.
    let document = crate::contracts::AsyncApi::load();
    let rows: Vec<_> = env.read_all("catalogue").into_iter().filter(|r| r.value.is_some()).collect();
    assert!(crate::contracts::check(&document, "catalogue", &rows, true) >= 4);
    crate::contracts::check(&document, "catalogue.dlq", &dead, false);
    let metrics = String::from_utf8_lossy(&Http::new(env.dev_port, Some(TOKEN)).get("/metrics").raw).into_owned();
    assert!(metrics.contains("rail_global_dead_letters_total{topic=\"catalogue\"} 1"), "{metrics}");

    // Stopped, a row changed meanwhile, started again: it reads on from its stored positions
    // (one record), and decides nothing before it has: the first order is rejected.
    dev.terminate();
    let before = crate::support::end_offsets(&env.kafka, "catalogue");
    sql("catalogue_test", "UPDATE catalogue SET active = false WHERE sku = 'HVAC-FILTER-G4'");
    wait_records(&env, "catalogue", usize::try_from(before).unwrap_or(0) + 1);
    let mut dev = env.spawn_dev_materiels_with(1, &[("CATALOGUE_TOPIC", "catalogue")]);
    let (status, reason, _) = decide(&api, "RESTARTED-1", "HVAC-FILTER-G4", 1);
    assert_eq!(status, "Rejected", "the first order after the restart: {reason:?}");
    let metrics = String::from_utf8_lossy(&Http::new(env.dev_port, Some(TOKEN)).get("/metrics").raw).into_owned();
    assert!(
        metrics.contains("rail_global_records_total{topic=\"catalogue\"} 1\n"),
        "read on from its positions:\n{metrics}"
    );
    dev.assert_running();
    wagon_lits.assert_running();
}

#[test]
fn five_thousand_orders_reach_postgresql_as_in_the_view_through_a_connect_crash_and_a_database_restart() {
    const ORDERS: usize = 5_000;
    let url = schema_registry().url();
    let mut env = TestEnv::start("connect-sink", 2);
    database("sink_test");
    // The compose stack's seed (the built-in SKUs, 500 each), and a probe.
    let seed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/postgres/seed.sql"))
        .expect("deploy/postgres/seed.sql");
    sql("sink_test", &seed);
    sql("sink_test", "INSERT INTO catalogue (sku, active, stock) VALUES ('CONNECT-PROBE', true, 10)");
    let avro = [("WIRE_FORMAT", "avro"), ("SCHEMA_REGISTRY_URL", url.as_str())];
    // The catalogue topic, when given, is the catalogue (the fixed list is not used).
    env.dev_args.extend(["--catalogue-topic".to_string(), "catalogue".to_string()]);
    // The sink commits its offsets once a minute: the SIGKILL below then makes it deliver again
    // everything since the last commit, older versions of orders the table has moved past among
    // them, the worst case the table must withstand.
    let mut worker = connect_worker(&env, "sink_test", &[("offset.flush.interval.ms", "60000")]);
    let connect = apply(&worker, &["catalogue-source", "orders-sink"], "rail_sink_test");
    // As in the compose stack, `connect supervise` restarts what fails (Connect restarts nothing).
    let stop_supervising = Arc::new(AtomicBool::new(false));
    let supervisor = {
        let client = ConnectClient::new(&worker.url()).expect("a Connect client");
        let stop = Arc::clone(&stop_supervising);
        std::thread::spawn(move || {
            let names = vec!["catalogue-source".to_string(), "orders-sink".to_string()];
            let mut restarts: Vec<Restart> = Vec::new();
            Supervisor::new(client, names, RestartPolicy::default()).run(Duration::from_secs(1), &stop, |event| {
                if let Ok(restart) = event {
                    eprintln!("supervisor: restarted (attempt {}) {}", restart.attempt + 1, restart.status);
                    restarts.push(restart.clone());
                }
            });
            restarts
        })
    };
    wait_records(&env, "catalogue", state::catalogue::DEFAULT_SKUS.len() + 1);
    let mut dev = env.spawn_dev_materiels_with(0, &avro);
    let mut wagon_lits = env.spawn_wagon_lits_with(0, 5_000, &avro);
    let api = Http::new(env.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(120));

    // The test's own audit of the table: every write of an older version than the row's that the
    // sink attempts (a BEFORE trigger that runs before `orders_keep_newest`, by name), and every
    // one that happened (an AFTER trigger: none may).
    sql(
        "sink_test",
        "CREATE TABLE stale_attempts (order_id text, had bigint, offered bigint); \
         CREATE TABLE went_back (order_id text, had bigint, got bigint); \
         CREATE FUNCTION audit_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.version < OLD.version THEN INSERT INTO stale_attempts VALUES (OLD.order_id, OLD.version, NEW.version); END IF; \
           RETURN NEW; END $$; \
         CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.version < OLD.version THEN INSERT INTO went_back VALUES (OLD.order_id, OLD.version, NEW.version); END IF; \
           RETURN NULL; END $$; \
         CREATE TRIGGER orders_audit_attempt BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION audit_attempt(); \
         CREATE TRIGGER orders_audit_write AFTER UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION audit_write();",
    );

    let mut ids = Vec::with_capacity(ORDERS);
    let sku_list = state::catalogue::DEFAULT_SKUS;
    let place = |i: usize, ids: &mut Vec<String>| {
        let id = format!("PG-{i:05}");
        // Every 50th order asks for a SKU the catalogue does not have: rejected.
        let sku = if i % 50 == 7 { "NOT-IN-THE-CATALOGUE" } else { sku_list[i % sku_list.len()] };
        let placed = api.post(
            "/orders",
            json!({"order_id": id, "wagon_id": "WL-2", "requested_by": "test", "lines": [{"sku": sku, "quantity": 1 + i % 9}]})
                .to_string(),
        );
        assert_eq!(placed.status, 202, "{id}: {:?}", placed.body);
        ids.push(id);
    };
    assert_eq!(decide(&api, "PROBE-ON", "CONNECT-PROBE", 1).0, "Accepted");
    for i in 0..ORDERS / 3 {
        place(i, &mut ids);
    }
    // The worker crashes with both connectors mid-stream; orders go on meanwhile, and the
    // catalogue changes while no worker captures it; the worker comes back.
    worker.kill();
    eprintln!("Connect worker SIGKILLed after {} orders", ids.len());
    sql("sink_test", "UPDATE catalogue SET active = false WHERE sku = 'CONNECT-PROBE'");
    for i in ORDERS / 3..2 * ORDERS / 3 {
        place(i, &mut ids);
    }
    let restarted = Instant::now();
    worker.restart().expect("restarting the Connect worker");
    eprintln!("Connect worker back in {:?}", restarted.elapsed());
    // The restarted worker gets its tasks back after the group's rebalance delay, and its status
    // topic shows the dead incarnation's RUNNING until then: what proves the sink is back is a new
    // row. The sink then meets the PostgreSQL restart below while it writes.
    let rows_at_kill = sql("sink_test", "SELECT count(*) FROM orders").trim().parse::<usize>().unwrap_or(0);
    let waiting = Instant::now();
    while sql("sink_test", "SELECT count(*) FROM orders").trim().parse::<usize>().unwrap_or(0) <= rows_at_kill {
        assert!(waiting.elapsed() < Duration::from_secs(120), "the sink wrote nothing after the worker's restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the sink wrote again {:?} after the worker was back", waiting.elapsed());
    // The change made while the worker was dead reaches dev-materiels.
    let (probe, reason, took) = first_decided(&api, "PROBE", "CONNECT-PROBE", "Rejected", now_ms());
    assert!(reason.unwrap_or_default().contains("not active"), "{probe}");
    let probes = 1 + probe.rsplit('-').next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0) + 1;
    eprintln!("the catalogue change made while the worker was dead decided {probe}, {took} ms after the restart");
    // PostgreSQL restarts under the sink.
    postgres().lock().unwrap_or_else(std::sync::PoisonError::into_inner).restart().expect("restarting PostgreSQL");
    eprintln!("PostgreSQL restarted after {} orders", ids.len());
    for i in 2 * ORDERS / 3..ORDERS {
        place(i, &mut ids);
    }

    // Everything settles in the view (timers ship what was accepted), then PostgreSQL has it.
    let started = Instant::now();
    let (mismatches, rows) = loop {
        let view = env.wagon_lits_view();
        let mut expected: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for row in view.all().expect("view scan") {
            let status = row.status.map(|s| format!("{s:?}")).unwrap_or_default();
            expected.insert(row.order_id.clone(), (i64::try_from(row.version).unwrap_or(-1), status));
        }
        drop(view);
        let text = sql("sink_test", "SELECT order_id, version, coalesce(status, '') FROM orders ORDER BY order_id");
        let table: BTreeMap<String, (i64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split('|');
                Some((f.next()?.to_string(), (f.next()?.parse().ok()?, f.next()?.to_string())))
            })
            .collect();
        let all_settled = expected.len() == ORDERS + probes
            && expected.values().all(|(_, s)| matches!(s.as_str(), "Shipped" | "Rejected" | "Cancelled"));
        let mismatches: Vec<String> = expected
            .iter()
            .filter(|(id, row)| table.get(*id) != Some(row))
            .map(|(id, row)| format!("{id}: view {row:?}, PostgreSQL {:?}", table.get(id)))
            .chain(table.keys().filter(|id| !expected.contains_key(*id)).map(|id| format!("{id}: only in PostgreSQL")))
            .collect();
        if (all_settled && mismatches.is_empty()) || started.elapsed() > Duration::from_secs(300) {
            break (mismatches, table.len());
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let count = |table: &str| {
        sql("sink_test", &format!("SELECT count(*) FROM {table}")).trim().parse::<u64>().unwrap_or(u64::MAX)
    };
    let (stale, backwards) = (count("stale_attempts"), count("went_back"));
    let statuses = connect
        .wait_running(&["catalogue-source".to_string(), "orders-sink".to_string()], Duration::ZERO)
        .expect("status");
    stop_supervising.store(true, Ordering::Relaxed);
    let restarts = supervisor.join().expect("the supervisor's thread");
    eprintln!(
        "orders sink: {rows} rows in PostgreSQL for {} orders placed, {} mismatches; {stale} writes of an older \
         version attempted by the sink (records delivered again), {backwards} done; {} restarts by the supervisor; \
         connectors: {}",
        ids.len(),
        mismatches.len(),
        restarts.len(),
        statuses.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    );
    assert!(
        mismatches.is_empty(),
        "PostgreSQL differs from the view:\n{}",
        mismatches[..mismatches.len().min(20)].join("\n")
    );
    assert_eq!(rows, ORDERS + probes);
    let examples = sql("sink_test", "SELECT order_id, had, got FROM went_back LIMIT 10");
    assert_eq!(backwards, 0, "rows went back to older versions (order|had|got):\n{examples}");
    assert!(stale > 0, "the sink delivered no older version again: the crash did not exercise the table's guard");
    assert!(env.read_all("order-updates.connect-dlq").is_empty(), "no update was dead-lettered by the sink");
    dev.assert_running();
    wagon_lits.assert_running();
}
