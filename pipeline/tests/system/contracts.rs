//! The AsyncAPI document of the topics (`docs/asyncapi.json`) against the code and against real
//! records: commands, updates and dead letters produced by the services on a real broker, each
//! checked against its message's payload and header schemas: the JSON schemas for JSON records,
//! the Avro schema files it points at for Avro ones (those records come from `avro.rs`, which
//! calls [`check_records`]). (The HTTP answers are checked against `docs/openapi.json` by
//! `http_api.rs`.)

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::{now_ms, poison_corpus, send_all, Record, TestEnv};
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema as AvroSchema;
use pipeline::workload::{Mix, Workload};
use serde_json::Value;
use wire::avro::{Record as AvroRecord, Registry};
use wire::TopicArgs;

pub struct AsyncApi {
    doc: Value,
}

impl AsyncApi {
    pub fn load() -> AsyncApi {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.json");
        let text = std::fs::read_to_string(path).expect("docs/asyncapi.json");
        AsyncApi { doc: serde_json::from_str(&text).expect("asyncapi.json is JSON") }
    }

    /// What a local `$ref` (`#/a/b`) points at.
    fn resolve(&self, reference: &str) -> &Value {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("{reference} is not local"));
        self.doc.pointer(pointer).unwrap_or_else(|| panic!("{reference} points at nothing"))
    }

    /// The text of a file a `$ref` points at, relative to `docs/`.
    fn file(reference: &str) -> String {
        let path = format!("{}/../docs/{reference}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{reference}: {e}"))
    }

    /// The messages of `channel`, by name: the JSON one (payload schema ref, headers schema ref)
    /// and, if there is one, the Avro one's schema file.
    fn messages(&self, channel: &str) -> ((String, String), Option<String>) {
        let messages = self.doc["channels"][channel]["messages"].as_object().expect("messages");
        let mut json = None;
        let mut avro = None;
        for message in messages.values() {
            let message = self.resolve(message["$ref"].as_str().expect("a $ref"));
            let reference = |field: &str| message[field]["$ref"].as_str().map(str::to_string);
            match message["payload"]["schemaFormat"].as_str() {
                None => {
                    json = Some((reference("payload").expect("payload $ref"), reference("headers").expect("headers")))
                }
                Some(format) => {
                    assert!(format.starts_with("application/vnd.apache.avro"), "{format}");
                    avro = message["payload"]["schema"]["$ref"].as_str().map(str::to_string);
                }
            }
        }
        (json.unwrap_or_else(|| panic!("{channel} has no JSON message")), avro)
    }

    /// The JSON message of `channel`: (payload schema ref, headers schema ref).
    fn message(&self, channel: &str) -> (String, String) {
        self.messages(channel).0
    }

    /// A validator for `#/components/schemas/<name>`.
    fn validator(&self, reference: &str) -> jsonschema::Validator {
        let defs = serde_json::to_string(&self.doc["components"]["schemas"])
            .expect("schemas")
            .replace("#/components/schemas/", "#/$defs/");
        let schema = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": serde_json::from_str::<Value>(&defs).expect("defs"),
            "$ref": reference.replace("#/components/schemas/", "#/$defs/"),
        });
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{reference} is not a valid schema: {e}"))
    }
}

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_document_describes_the_topics_the_code_uses() {
    let api = AsyncApi::load();
    assert_eq!(api.doc["asyncapi"], "3.0.0");
    let topics = TopicArgs::default();
    let catalogue = ["catalogue".to_string(), dev_materiels::catalogue::DEFAULT_DLQ_TOPIC.to_string()];
    for topic in [&topics.orders_topic, &topics.updates_topic, &topics.dlq_topic].into_iter().chain(&catalogue) {
        assert_eq!(api.doc["channels"][topic.as_str()]["address"], topic.as_str(), "channel {topic}");
        let (payload, headers) = api.message(topic);
        api.validator(&payload);
        api.validator(&headers);
    }
    // The Avro messages point at the schemas this build writes with.
    for (topic, record) in [(&topics.orders_topic, AvroRecord::Command), (&topics.updates_topic, AvroRecord::Update)] {
        let file = api.messages(topic).1.unwrap_or_else(|| panic!("{topic} has no Avro message"));
        assert_eq!(file, format!("../{}", record.current().path), "{topic}'s Avro message");
        AvroSchema::parse_str(&AsyncApi::file(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let mut all = Vec::new();
    refs(&api.doc, &mut all);
    assert!(all.len() > 20);
    for reference in &all {
        if reference.starts_with('#') {
            api.resolve(reference);
        } else {
            AsyncApi::file(reference);
        }
    }
    for (name, operation) in api.doc["operations"].as_object().expect("operations") {
        assert!(["send", "receive"].contains(&operation["action"].as_str().unwrap_or_default()), "{name}");
    }
}

fn headers_json(record: &Record) -> Value {
    Value::Object(record.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

pub fn check(api: &AsyncApi, channel: &str, records: &[Record], json_payload: bool) -> usize {
    let (payload, headers) = api.message(channel);
    let (payload, headers) = (api.validator(&payload), api.validator(&headers));
    for r in records {
        let h = headers_json(r);
        let errors: Vec<String> = headers.iter_errors(&h).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{channel} {}/{}: headers {h} do not match: {errors:?}", r.partition, r.offset);
        if json_payload {
            let value: Value = serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("JSON");
            let errors: Vec<String> =
                payload.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{channel} {}/{}: {value} does not match: {errors:?}", r.partition, r.offset);
        }
    }
    records.len()
}

/// Checks records of `channel` in either format against the document: a JSON one against its
/// JSON message, an Avro one by reading its body with the Avro schema the document points at,
/// whose registry id must be the one the record carries. Returns (JSON, Avro) records checked.
pub fn check_records(api: &AsyncApi, channel: &str, records: &[Record], registry: &Registry) -> (usize, usize) {
    let ((payload, headers), avro) = api.messages(channel);
    let (payload, headers) = (api.validator(&payload), api.validator(&headers));
    let avro = avro.map(|file| AvroSchema::parse_str(&AsyncApi::file(&file)).expect("the document's Avro schema"));
    let mut ids = std::collections::HashMap::new();
    let (mut json_count, mut avro_count) = (0, 0);
    for r in records {
        let h = headers_json(r);
        let errors: Vec<String> = headers.iter_errors(&h).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{channel} {}/{}: headers {h} do not match: {errors:?}", r.partition, r.offset);
        let bytes = r.value.as_deref().unwrap_or_default();
        if bytes.first() == Some(&wire::avro::MAGIC) {
            let schema =
                avro.as_ref().unwrap_or_else(|| panic!("an Avro record on {channel}, which has no Avro message"));
            let (id, mut body) = wire::avro::unframe(bytes).expect("framed");
            let same = *ids.entry(id).or_insert_with(|| {
                let text = registry.schema_by_id(id).expect("the record's schema id is in the registry");
                AvroSchema::parse_str(&text).expect("parses").canonical_form() == schema.canonical_form()
            });
            assert!(
                same,
                "{channel} {}/{}: written with schema id {id}, not the document's schema",
                r.partition, r.offset
            );
            GenericDatumReader::builder(schema)
                .build()
                .and_then(|reader| reader.read_value(&mut body))
                .unwrap_or_else(|e| panic!("{channel} {}/{}: {e}", r.partition, r.offset));
            assert!(body.is_empty(), "{channel} {}/{}: bytes after the value", r.partition, r.offset);
            avro_count += 1;
        } else {
            let value: Value = serde_json::from_slice(bytes).expect("JSON");
            let errors: Vec<String> =
                payload.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{channel} {}/{}: {value} does not match: {errors:?}", r.partition, r.offset);
            json_count += 1;
        }
    }
    (json_count, avro_count)
}

#[test]
fn real_records_of_every_topic_match_the_document() {
    let api = AsyncApi::load();
    let env = TestEnv::start("contracts", 2);
    let mut dev = env.spawn_dev_materiels(0);
    dev.wait_restored(env.topics.partitions, Duration::from_secs(60));
    let producer = env.producer();
    let mut workload = Workload::new(5, "CONTRACT", now_ms());
    let commands = workload.place_phase(200, Mix::REALISTIC);
    send_all(&producer, &commands);
    let corpus = poison_corpus();
    for (_, _, value) in &corpus {
        let sent = producer.send_raw(Some(b"POISON"), Some(value)).expect("queue");
        futures::executor::block_on(sent).expect("future").expect("Kafka took it");
    }
    // A dead letter replayed to `orders` (with its dlq.replayed.from header) once it is there.
    let start = Instant::now();
    let letters = loop {
        let letters = env.read_all(&env.topics.dlq_topic);
        if letters.len() == corpus.len() {
            break letters;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{} dead letters of {}", letters.len(), corpus.len());
        std::thread::sleep(Duration::from_millis(300));
    };
    let mismatch =
        letters.iter().find(|l| l.headers["dlq.error.kind"] == "key-mismatch").expect("a key-mismatch letter");
    let letter =
        wagon_lits::dead_letters::fetch(&env.kafka, &env.topics.dlq_topic, mismatch.partition, mismatch.offset)
            .expect("fetching the dead letter");
    wagon_lits::dead_letters::replay(&env.kafka, &env.topics.dlq_topic, &env.topics.orders_topic, &letter, None)
        .expect("replaying it");
    // Everything decided: the updates stop growing.
    let mut last = 0;
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let n = env.read_all(&env.topics.updates_topic).len();
        if n > 0 && n == last {
            break;
        }
        last = n;
        assert!(start.elapsed() < Duration::from_secs(120), "updates kept coming");
    }
    dev.terminate();

    // orders: every record the decoder accepts matches the Command message; the others are the
    // poison records, each in the dead-letter topic.
    let orders = env.read_all(&env.topics.orders_topic);
    let dead: HashSet<String> = letters
        .iter()
        .map(|l| l.headers["dlq.source.offset"].clone() + "/" + &l.headers["dlq.source.partition"])
        .collect();
    let (valid, refused): (Vec<Record>, Vec<Record>) =
        orders.into_iter().partition(|r| state::decode_command(r.key.as_deref(), r.value.as_deref()).is_ok());
    for r in &refused {
        assert!(
            dead.contains(&format!("{}/{}", r.offset, r.partition)),
            "{}/{} refused but not dead-lettered",
            r.partition,
            r.offset
        );
    }
    assert!(valid.iter().any(|r| r.headers.contains_key("dlq.replayed.from")), "the replayed command is on orders");
    let commands = check(&api, "orders", &valid, true);
    let updates = check(&api, "order-updates", &env.read_all(&env.topics.updates_topic), true);
    let dead_letters = check(&api, "orders.dlq", &letters, false);
    eprintln!(
        "contracts: {commands} commands, {updates} updates, {dead_letters} dead letters matched docs/asyncapi.json"
    );
    assert!(commands > 200 && updates > 200 && dead_letters == corpus.len());
}
