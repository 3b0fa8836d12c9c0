//! Avro through a real schema registry (Apicurio, one per test binary) and a real broker: the
//! migration from JSON with both formats on the same topics at once, exactly once; schema
//! registration as an operation (`dev-materiels schemas check|apply`), with the registry's
//! refusal of an incompatible version reported with the field at fault; and bad Avro input in
//! the dead-letter topic, the pipeline going on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{converge, now_ms, schema_registry, send_all, settled, TestEnv};
use pipeline::workload::{Mix, Workload};
use wire::avro::{frame, Record};
use wire::dlq::headers;
use wire::{Codec, CodecArgs, WireFormat};

fn avro_args(url: &str) -> CodecArgs {
    CodecArgs { wire_format: WireFormat::Avro, schema_registry_url: Some(url.to_owned()), ..CodecArgs::default() }
}

/// Bytes of each format among the values of `topic`: (JSON, Avro).
fn formats(env: &TestEnv, topic: &str) -> (usize, usize) {
    let records = env.read_all(topic);
    let avro = records.iter().filter(|r| r.value.as_deref().and_then(<[u8]>::first) == Some(&0)).count();
    let json = records.iter().filter(|r| r.value.as_deref().and_then(<[u8]>::first) == Some(&b'{')).count();
    (json, avro)
}

#[test]
fn json_and_avro_on_the_same_topics_at_once_exactly_once() {
    const ORDERS: usize = 2_000;
    let url = schema_registry().url();
    let mut env = TestEnv::start("avro-mix", 2);
    env.codec = Codec::connect(&avro_args(&url), &[(Record::Command, &env.topics.orders_topic)]).expect("registry");
    let view = env.start_view("main");
    // dev-materiels writes Avro updates first, then, restarted, JSON ones: the view reads both.
    env.dev_args = vec!["--wire-format".into(), "avro".into(), "--schema-registry-url".into(), url.clone()];
    let mut dev = env.spawn_dev_materiels(0);
    let json = env.producer();
    let avro = env.producer().with_codec(env.codec.clone());

    let mut workload = Workload::new(23, "AVRO", now_ms());
    let ids: Vec<String> = (0..ORDERS).map(|i| workload.order_id(i)).collect();
    let mut sent = workload.place_phase(ORDERS, Mix::REALISTIC);
    // Each order's commands go through one producer (a producer keeps its order), the orders
    // alternating between the old format and the new on the same partitions.
    let index: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let (even, odd): (Vec<_>, Vec<_>) =
        sent.iter().cloned().partition(|c| index.get(c.order_id.as_str()).is_some_and(|i| i % 2 == 0));
    let (half_even, half_odd) = (even.len() / 2, odd.len() / 2);
    send_all(&json, &even[..half_even]);
    send_all(&avro, &odd[..half_odd]);
    // The first half decided with Avro updates: switch dev-materiels to JSON for the rest.
    // (Commands for orders never placed leave them unsettled: they are not waited for.)
    let first_half: Vec<String> = even[..half_even]
        .iter()
        .chain(&odd[..half_odd])
        .filter(|c| index.contains_key(c.order_id.as_str()))
        .map(|c| c.order_id.clone())
        .collect();
    let unsettled = view.wait_until(&first_half, Duration::from_secs(240), settled);
    assert!(unsettled.is_empty(), "{} orders never settled; log:\n{}", unsettled.len(), dev.log_tail(40));
    dev.terminate();
    env.dev_args.clear();
    env.dev_args.extend(["--schema-registry-url".to_owned(), url.clone()]);
    let mut dev = env.spawn_dev_materiels(1);
    send_all(&json, &even[half_even..]);
    send_all(&avro, &odd[half_odd..]);
    let unsettled = view.wait_until(&ids, Duration::from_secs(240), settled);
    assert!(unsettled.is_empty(), "{} orders never settled; log:\n{}", unsettled.len(), dev.log_tail(40));

    let shipped = crate::support::shipped(&view.view, &ids);
    let deliveries = workload.delivery_phase(&shipped, 0.8, 0.5, 0.05);
    send_all(&avro, &deliveries);
    sent.extend(deliveries);

    let report = converge(&env, &view, &sent);
    dev.assert_running();
    eprintln!("avro migration: {}", report.summary());
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    let (json_commands, avro_commands) = formats(&env, &env.topics.orders_topic);
    let (json_updates, avro_updates) = formats(&env, &env.topics.updates_topic);
    eprintln!(
        "orders: {json_commands} JSON, {avro_commands} Avro; order-updates: {json_updates} JSON, {avro_updates} Avro"
    );
    assert!(json_commands > 0 && avro_commands > 0, "both formats on orders");
    assert!(json_updates > 0 && avro_updates > 0, "both formats on order-updates");
    // Every record of both formats matches docs/asyncapi.json (and its Avro schema files).
    let api = crate::contracts::AsyncApi::load();
    let registry = env.codec.registry().expect("a registry");
    for topic in [&env.topics.orders_topic, &env.topics.updates_topic] {
        let (json, avro) = crate::contracts::check_records(&api, topic, &env.read_all(topic), registry);
        eprintln!("{topic}: {json} JSON and {avro} Avro records match docs/asyncapi.json");
    }
    dev.terminate();
}

/// `dev-materiels schemas <action>` against the registry, for topics named after `prefix`.
fn schemas(url: &str, prefix: &str, action: &str, dir: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dev-materiels"));
    command
        .args(["--schema-registry-url", url, "--orders-topic"])
        .arg(format!("{prefix}-orders"))
        .arg("--updates-topic")
        .arg(format!("{prefix}-order-updates"))
        .args(["schemas", action]);
    if let Some(dir) = dir {
        command.arg("--schemas-dir").arg(dir);
    }
    let output = command.output().expect("running dev-materiels schemas");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!(
        "schemas {action}{}:\n{text}",
        dir.map(|d| format!(" --schemas-dir {}", d.display())).unwrap_or_default()
    );
    (output.status.success(), text)
}

/// A copy of the repository's schemas with one more version of the update schema.
fn candidate(dir: &Path, update_v2: &serde_json::Value) {
    for record in Record::ALL {
        std::fs::create_dir_all(dir.join(record.dir())).expect("dir");
        for schema in record.history() {
            std::fs::write(dir.join(record.dir()).join(format!("v{}.avsc", schema.version)), schema.text)
                .expect("write");
        }
    }
    let next = Record::Update.history().len() + 1;
    std::fs::write(dir.join(Record::Update.dir()).join(format!("v{next}.avsc")), update_v2.to_string()).expect("write");
}

fn update_schema_with(field: serde_json::Value) -> serde_json::Value {
    let mut schema: serde_json::Value = serde_json::from_str(Record::Update.current().text).expect("schema");
    schema["fields"].as_array_mut().expect("fields").push(field);
    schema
}

#[test]
fn schemas_are_registered_as_an_operation_and_an_incompatible_version_is_refused_by_name() {
    let url = schema_registry().url();
    let dir = tempfile::tempdir().expect("tempdir");

    // Nothing registered yet: check reports it and fails; apply registers; check passes.
    let (ok, out) = schemas(&url, "ops", "check", None);
    assert!(!ok && out.contains("is not registered") && out.contains("compatibility level"), "{out}");
    let (ok, out) = schemas(&url, "ops", "apply", None);
    assert!(ok, "{out}");
    let (ok, out) = schemas(&url, "ops", "check", None);
    assert!(ok && out.contains("ops-orders-value: ok") && out.contains("ops-order-updates-value: ok"), "{out}");

    // A next version with a required field and no default: refused, naming the field, both by
    // the local check of the history and by the registry (409).
    let breaking = dir.path().join("breaking");
    candidate(&breaking, &update_schema_with(serde_json::json!({"name": "carrier", "type": "string"})));
    let (ok, out) = schemas(&url, "ops", "check", Some(&breaking));
    assert!(!ok && out.contains("refused by the registry") && out.contains("carrier"), "{out}");
    let (ok, out) = schemas(&url, "ops", "apply", Some(&breaking));
    assert!(!ok && out.contains("carrier") && out.contains("409"), "{out}");

    // The same field with a default is compatible both ways: apply registers it.
    let fine = dir.path().join("fine");
    candidate(
        &fine,
        &update_schema_with(serde_json::json!({"name": "carrier", "type": ["null", "string"], "default": null})),
    );
    let (ok, out) = schemas(&url, "ops", "check", Some(&fine));
    assert!(!ok && out.contains("is not registered"), "{out}");
    let (ok, out) = schemas(&url, "ops", "apply", Some(&fine));
    assert!(ok, "{out}");
    // This build's schemas alone now miss the version registered after them.
    let (ok, out) = schemas(&url, "ops", "check", None);
    assert!(!ok && out.contains("is not in the repository's schemas"), "{out}");
}

#[test]
fn a_producer_whose_schema_the_registry_refuses_does_not_start() {
    let url = schema_registry().url();
    let registry = wire::avro::Registry::new(&url, Duration::from_secs(10)).expect("client");
    // Someone registered an update schema this build cannot read (a required field it lacks).
    let subject = "refused-order-updates-value";
    let foreign = update_schema_with(serde_json::json!({"name": "depot", "type": "string"}));
    registry.register(subject, &foreign.to_string()).expect("registering a foreign schema");
    registry.set_compatibility(subject, "FULL_TRANSITIVE").expect("level");

    let env = TestEnv::start("avro-refused", 1);
    let output = Command::new(env!("CARGO_BIN_EXE_dev-materiels"))
        .args(["--brokers", &env.kafka.brokers, "--wire-format", "avro", "--schema-registry-url", &url])
        .args(["--orders-topic", "refused-orders", "--updates-topic", "refused-order-updates"])
        .arg("--state-dir")
        .arg(env.dir.path().join("refused"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("running dev-materiels");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{text}");
    assert!(!output.status.success(), "dev-materiels started with a refused schema: {text}");
    assert!(text.contains("refused the schema for subject refused-order-updates-value"), "{text}");
    assert!(text.contains("depot"), "the error names the field at fault: {text}");
}

#[test]
fn bad_avro_records_go_to_the_dead_letter_topic_and_the_pipeline_goes_on() {
    let url = schema_registry().url();
    let mut env = TestEnv::start("avro-bad", 1);
    env.codec = Codec::connect(&avro_args(&url), &[(Record::Command, &env.topics.orders_topic)]).expect("registry");
    env.dev_args = vec!["--wire-format".into(), "avro".into(), "--schema-registry-url".into(), url];
    let view = env.start_view("main");
    let mut dev = env.spawn_dev_materiels(0);
    let producer = env.producer();
    let avro = env.producer().with_codec(env.codec.clone());

    let mut workload = Workload::new(5, "BADAVRO", now_ms());
    let good = workload.place_phase(3, Mix::CLEAN);
    let framed = env.codec.encode_command(&good[0]).expect("encode");
    let truncated = &framed[..framed.len() - 3];
    let unknown_id = frame(999_999, &framed[5..]);
    let key = good[0].order_id.as_bytes();
    for bad in [truncated, &unknown_id[..], &[0u8, 0, 0][..]] {
        futures::executor::block_on(producer.send_raw(Some(key), Some(bad)).expect("queue"))
            .expect("delivery")
            .expect("delivered");
    }
    send_all(&avro, &good);
    let ids: Vec<String> = good.iter().map(|c| c.order_id.clone()).collect();
    let unsettled = view.wait_until(&ids, Duration::from_secs(120), settled);
    assert!(unsettled.is_empty(), "the pipeline stopped after bad records; log:\n{}", dev.log_tail(40));

    let letters = env.read_all(&env.topics.dlq_topic);
    let kinds: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.headers.get(headers::ERROR_KIND).cloned().unwrap_or_default(),
                l.headers.get(headers::ERROR).cloned().unwrap_or_default(),
            )
        })
        .collect();
    eprintln!("dead letters: {kinds:#?}");
    assert_eq!(letters.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0].0, "avro-body", "{kinds:?}");
    assert_eq!(kinds[1].0, "unknown-schema-id", "{kinds:?}");
    assert!(kinds[1].1.contains("999999"), "the reason names the id: {kinds:?}");
    assert_eq!(kinds[2].0, "avro-frame", "{kinds:?}");
    assert_eq!(letters[0].value.as_deref(), Some(truncated), "the record is kept as it was");
    dev.assert_running();
    dev.terminate();
}

#[test]
fn updates_of_schema_version_1_and_2_read_each_other_through_the_registry() {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;

    let url = schema_registry().url();
    let registry = wire::avro::Registry::new(&url, Duration::from_secs(10)).expect("client");
    let subject = "evolution-order-updates-value";
    registry.set_compatibility(subject, "FULL_TRANSITIVE").expect("level");
    let v1_text = Record::Update.history()[0].text;
    let v1_id = registry.register(subject, v1_text).expect("v1 registered");
    let v1 = apache_avro::Schema::parse_str(v1_text).expect("v1");
    // This build writes version 2 (registered after version 1, as `schemas apply` does).
    let codec = Codec::connect(&avro_args(&url), &[(Record::Update, "evolution-order-updates")]).expect("codec");
    let rules = crate::support::rules();
    let mut workload = Workload::new(9, "EVO", now_ms());
    let place = workload.place_phase(1, Mix::CLEAN).remove(0);
    let state::Decision::Update { update, .. } = state::decide(None, &place, &rules, now_ms()) else {
        panic!("a decision")
    };
    assert!(update.expected_ship_ms.is_some(), "an accepted order has an expected shipping time");

    // Version 2 written, read by a version-1 reader: it gets the version-1 fields.
    let written = codec.encode_update(&update).expect("encode");
    let (v2_id, mut body) = wire::avro::unframe(&written).expect("framed");
    assert_ne!(v2_id, v1_id);
    let writer = apache_avro::Schema::parse_str(&registry.schema_by_id(v2_id).expect("v2 by id")).expect("v2");
    let read = GenericDatumReader::builder(&writer).reader_schema(&v1).build().expect("reader").read_value(&mut body);
    let Value::Record(fields) = read.expect("a v1 reader reads v2") else { panic!("a record") };
    assert!(fields.iter().all(|(name, _)| name != "expected_ship_ms"));
    assert!(fields.iter().any(|(name, value)| name == "order_id" && *value == Value::String(update.order_id.clone())));

    // Version 1 written (an old dev-materiels), read by this build: the new field is null.
    let old_value = match wire::avro::update_value(&update) {
        Value::Record(fields) => Value::Record(fields.into_iter().filter(|(n, _)| n != "expected_ship_ms").collect()),
        _ => panic!("a record"),
    };
    let old_body =
        GenericDatumWriter::builder(&v1).build().expect("writer").write_value_to_vec(old_value).expect("write");
    let decoded = codec.decode_update(&frame(v1_id, &old_body)).expect("this build reads v1");
    assert_eq!(decoded, state::OrderUpdate { expected_ship_ms: None, ..update });
}

/// Waits until the service on `port` listens and its `/readyz` answers 503 naming the schema
/// registry; checks that `/metrics` shows it unreachable. Returns the answer's detail.
fn unready_for_the_registry(port: u16) -> String {
    use crate::support::http::{Http, TOKEN};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let http = Http::new(port, Some(TOKEN));
    let detail = loop {
        let answer = http.get("/readyz");
        let detail = answer.body["detail"].as_str().unwrap_or_default().to_owned();
        if answer.status == 503 && detail.contains("schema registry is unreachable") {
            break detail;
        }
        assert!(std::time::Instant::now() < deadline, "readyz never named the registry: {answer:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let metrics = String::from_utf8_lossy(&http.get("/metrics").raw).to_string();
    assert!(metrics.contains("rail_schema_registry_reachable 0"), "{metrics}");
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rail_schema_registry_failures_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(failures.is_some_and(|f| f >= 1.0), "failures: {failures:?}");
    detail
}

#[test]
fn a_registry_unreachable_at_start_is_waited_for_and_shown_on_readyz_and_metrics() {
    use crate::support::http::{Http, TOKEN};

    // Both services are told of a registry that is not there yet.
    let port = kafka_harness::free_port().expect("port");
    let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    let mut env = TestEnv::start("avro-late", 1);
    env.dev_args = vec!["--wire-format".into(), "avro".into(), "--schema-registry-url".into(), url.clone()];
    let env = env;
    let patience = ("SCHEMA_REGISTRY_PATIENCE_MS", "240000");
    let mut dev = env.spawn_dev_materiels_with(0, &[patience]);
    let mut wagon = env.spawn_wagon_lits_with(
        0,
        2_000,
        &[("WIRE_FORMAT", "avro"), ("SCHEMA_REGISTRY_URL", url.as_str()), patience],
    );
    eprintln!("dev-materiels while the registry is away: {}", unready_for_the_registry(env.dev_port));
    eprintln!("wagon-lits while the registry is away: {}", unready_for_the_registry(env.api_port));

    // The registry comes up: both register their schemas and get ready; an order placed through
    // wagon-lits' API travels in Avro and is decided.
    let _registry = kafka_harness::registry::SchemaRegistry::start_on(port).expect("a registry on that port");
    let (dev_http, api) = (Http::new(env.dev_port, Some(TOKEN)), Http::new(env.api_port, Some(TOKEN)));
    dev_http.wait_ok("/readyz", Duration::from_secs(120));
    api.wait_ok("/readyz", Duration::from_secs(120));
    for http in [&dev_http, &api] {
        let metrics = String::from_utf8_lossy(&http.get("/metrics").raw).to_string();
        assert!(metrics.contains("rail_schema_registry_reachable 1"), "{metrics}");
    }
    let body = serde_json::json!({
        "order_id": "LATE-1", "wagon_id": "WL-7", "requested_by": "avro-test",
        "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 2}]
    });
    let answer = api.post("/orders", body.to_string());
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = api.get("/orders/LATE-1");
        let status = answer.body["status"].as_str().unwrap_or_default();
        if answer.status == 200 && ["Accepted", "InPreparation", "Shipped"].contains(&status) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "LATE-1 was not decided: {:?}; {}",
            answer.body,
            wagon.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let commands = env.read_all(&env.topics.orders_topic);
    assert!(commands.iter().all(|r| r.value.as_deref().and_then(<[u8]>::first) == Some(&0)), "commands in Avro");
    wagon.terminate();
    dev.terminate();
}

/// An update whose writer schema wagon-lits' view has not read before arrives while the registry
/// does not answer (frozen): the view waits for it, the process goes on serving, and once the
/// registry answers the update is in the view with the ones after it. (Before, the view's thread
/// ended on the first such update and the view stood still while the API served it.)
#[test]
fn the_view_waits_for_a_schema_the_frozen_registry_cannot_give_and_reads_it_after() {
    use crate::support::http::{Http, TOKEN};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let registry = kafka_harness::registry::SchemaRegistry::start().expect("a registry of this test's own");
    let url = registry.url();
    let mut env = TestEnv::start("avro-view-wait", 1);
    env.dev_args = vec!["--wire-format".into(), "avro".into(), "--schema-registry-url".into(), url.clone()];
    let env = env;
    let mut dev = env.spawn_dev_materiels(0);
    // wagon-lits gives a registry that does not answer 3 s (60 by default) before it calls it an
    // outage.
    let mut wagon = env.spawn_wagon_lits_with(
        0,
        2_000,
        &[("WIRE_FORMAT", "avro"), ("SCHEMA_REGISTRY_URL", url.as_str()), ("SCHEMA_REGISTRY_PATIENCE_MS", "3000")],
    );
    let api = Http::new(env.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(120));
    let status_of = |id: &str| {
        let answer = api.get(&format!("/orders/{id}"));
        (answer.status == 200).then(|| answer.body["status"].as_str().unwrap_or_default().to_owned())
    };
    let wait_for = |id: &str, patience: Duration| {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = status_of(id) {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let place = |id: &str| {
        let body = serde_json::json!({
            "order_id": id, "wagon_id": "WL-7", "requested_by": "avro-test",
            "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 1}]
        });
        assert_eq!(api.post("/orders", body.to_string()).status, 202);
    };
    place("WAIT-1");
    assert!(wait_for("WAIT-1", Duration::from_secs(60)).is_some(), "WAIT-1 is not in the view; {}", wagon.log_tail(30));

    // Version 1 of the update schema with a doc of its own (as an older dev-materiels might have
    // registered it), registered now: a schema id the view has never fetched.
    let mut v1_json: serde_json::Value = serde_json::from_str(Record::Update.history()[0].text).expect("v1 JSON");
    v1_json["doc"] = "version 1, as a test's older writer registered it".into();
    let v1_text = v1_json.to_string();
    let client = wire::avro::Registry::new(&url, Duration::from_secs(10)).expect("client");
    let v1_id = client.register(&Record::subject(&env.topics.updates_topic), &v1_text).expect("registered");
    let v1 = apache_avro::Schema::parse_str(&v1_text).expect("v1");
    // An order of an older dev-materiels' making, decided here, its update written with version 1.
    let place_old = Workload::new(11, "WAIT-OLD", now_ms()).place_phase(1, Mix::CLEAN).remove(0);
    let state::Decision::Update { update, .. } = state::decide(None, &place_old, &crate::support::rules(), now_ms())
    else {
        panic!("a decision")
    };
    let old_id = update.order_id.clone();
    let old_status = format!("{:?}", update.status.expect("a status"));
    let value = match wire::avro::update_value(&update) {
        apache_avro::types::Value::Record(fields) => {
            apache_avro::types::Value::Record(fields.into_iter().filter(|(n, _)| n != "expected_ship_ms").collect())
        }
        _ => panic!("a record"),
    };
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&v1)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("write");

    // The registry freezes; the version-1 update lands on order-updates, then an order is placed.
    registry.pause();
    let producer: BaseProducer = env.kafka.finish(env.kafka.base()).create().expect("producer");
    producer
        .send(BaseRecord::to(&env.topics.updates_topic).key(old_id.as_str()).payload(&frame(v1_id, &body)))
        .map_err(|(e, _)| e)
        .expect("queue the update");
    producer.flush(Duration::from_secs(10)).expect("flush");
    place("WAIT-2");
    std::thread::sleep(Duration::from_secs(15));
    wagon.assert_running();
    dev.assert_running();

    // The registry answers again: the view reads the version-1 update and what came after it.
    registry.resume();
    let seen = wait_for(&old_id, Duration::from_secs(60));
    assert_eq!(seen.as_deref(), Some(old_status.as_str()), "the version-1 update; {}", wagon.log_tail(30));
    assert!(wait_for("WAIT-2", Duration::from_secs(60)).is_some(), "WAIT-2 is not in the view; {}", wagon.log_tail(30));
    wagon.assert_running();
    let log = wagon.log_tail(400);
    assert!(log.contains("the view waits for the registry"), "the view met no registry outage:\n{log}");
    let metrics = String::from_utf8_lossy(&api.get("/metrics").raw).to_string();
    assert!(metrics.contains("rail_schema_registry_reachable 1"), "{metrics}");
    wagon.terminate();
    dev.terminate();
}
