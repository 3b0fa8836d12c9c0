//! Bad messages on `orders` land in `orders.dlq` with their reason and origin; the good messages
//! around them are processed, and the processor keeps running.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::{converge, now_ms, send_all, settled, TestEnv};
use pipeline::workload::{Mix, Workload};
use rand::RngCore;
use wire::dlq::headers;

#[test]
fn poison_messages_go_to_the_dead_letter_topic_with_their_reason() {
    let env = TestEnv::start("dlq", 2);
    let view = env.start_view("main");
    let producer = env.producer();
    let mut dev = env.spawn_dev_materiels(0);

    let mut workload = Workload::new(3, "DLQ", now_ms());
    let ids: Vec<String> = (0..400).map(|i| workload.order_id(i)).collect();
    let good = workload.place_phase(400, Mix::CLEAN);
    let (before, after) = good.split_at(good.len() / 2);

    let mut garbage = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut garbage);
    let valid = serde_json::to_string(&before[0]).expect("json");
    // (expected error kind, key, value)
    type Bad = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>);
    let bad: Vec<Bad> = vec![
        ("malformed", Some(b"BAD-1".to_vec()), Some(b"this is not json {".to_vec())),
        ("unsupported-schema-version", Some(b"BAD-2".to_vec()), Some(valid.replace("\"schema_version\":1", "\"schema_version\":99").replace(&before[0].order_id, "BAD-2").into_bytes())),
        ("malformed", Some(b"BAD-3".to_vec()), Some(br#"{"schema_version":1,"command_id":"x","order_id":"BAD-3"}"#.to_vec())),
        ("malformed", Some(b"BAD-4".to_vec()), Some(br#"{"schema_version":1,"command_id":"x","issued_at_ms":1,"order_id":"BAD-4","command":{"type":"Teleport"}}"#.to_vec())),
        ("empty", Some(b"BAD-5".to_vec()), Some(Vec::new())),
        ("empty", Some(b"BAD-6".to_vec()), None),
        ("malformed", Some(b"BAD-7".to_vec()), Some(garbage.clone())),
        ("key-mismatch", Some(b"SOMEONE-ELSE".to_vec()), Some(valid.clone().into_bytes())),
    ];

    send_all(&producer, before);
    // (partition, offset) on orders -> (expected error kind, value)
    type Origin = (i32, i64);
    let mut expected: HashMap<Origin, (&str, Option<Vec<u8>>)> = HashMap::new();
    for (kind, key, value) in &bad {
        let future = producer.send_raw(key.as_deref(), value.as_deref()).expect("queue a bad message");
        let delivery = futures::executor::block_on(future).expect("future").expect("Kafka took the bad message");
        expected.insert((delivery.partition, delivery.offset), (*kind, value.clone()));
    }
    // And the poison corpus of the repository.
    let corpus = crate::support::poison_corpus();
    for (name, kind, value) in &corpus {
        let future = producer.send_raw(Some(b"POISON"), Some(value)).expect("queue a poison message");
        let delivery = futures::executor::block_on(future).expect("future").unwrap_or_else(|e| panic!("{name}: {e:?}"));
        expected.insert((delivery.partition, delivery.offset), (*kind, Some(value.clone())));
    }
    send_all(&producer, after);
    let bad_count = bad.len() + corpus.len();

    assert!(
        view.wait_until(&ids, Duration::from_secs(120), settled).is_empty(),
        "good orders around the bad ones were not processed"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let letters = env.read_all(&env.topics.dlq_topic);
        if letters.len() >= bad_count || Instant::now() > deadline {
            break letters;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(letters.len(), bad_count, "one dead letter per bad message");
    for letter in &letters {
        let partition: i32 = letter.headers[headers::SOURCE_PARTITION].parse().expect("partition header");
        let offset: i64 = letter.headers[headers::SOURCE_OFFSET].parse().expect("offset header");
        let (kind, value) = expected
            .get(&(partition, offset))
            .unwrap_or_else(|| panic!("dead letter for unknown origin {partition}/{offset}"));
        assert_eq!(
            letter.headers[headers::ERROR_KIND],
            *kind,
            "kind of {partition}/{offset}: {}",
            letter.headers[headers::ERROR]
        );
        assert!(!letter.headers[headers::ERROR].is_empty());
        assert_eq!(letter.headers[headers::SOURCE_TOPIC], env.topics.orders_topic);
        assert_eq!(
            letter.value.clone().unwrap_or_default(),
            value.clone().unwrap_or_default(),
            "the dead letter keeps the original bytes"
        );
        eprintln!(
            "dead letter {partition}/{offset}: {} ({} bytes)",
            letter.headers[headers::ERROR],
            letter.value.as_ref().map_or(0, Vec::len)
        );
    }
    let reasons: Vec<&str> = letters.iter().map(|l| l.headers[headers::ERROR].as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("schema version 99")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("Teleport")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("missing field")), "{reasons:?}");

    // An operator lists the dead letters, fails to replay one as it is, and replays it fixed.
    let wagon_lits = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wagon-lits"))
            .args(args)
            .args(["--brokers", &env.kafka.brokers])
            .output()
            .expect("running wagon-lits dlq")
    };
    let listed = wagon_lits(&["dlq", "list", "--limit", "100"]);
    assert!(listed.status.success(), "dlq list: {}", String::from_utf8_lossy(&listed.stderr));
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(listed.len(), bad_count, "dlq list shows every dead letter");
    let mut listed_kinds: Vec<&str> = listed.iter().map(|l| l["kind"].as_str().unwrap_or_default()).collect();
    let mut sent_kinds: Vec<&str> = expected.values().map(|(kind, _)| *kind).collect();
    listed_kinds.sort_unstable();
    sent_kinds.sort_unstable();
    assert_eq!(listed_kinds, sent_kinds);
    let bad_2 = letters.iter().find(|l| l.key.as_deref() == Some(b"BAD-2".as_slice())).expect("BAD-2's dead letter");
    let offset = bad_2.offset.to_string();
    let partition = bad_2.partition.to_string();
    let as_is = wagon_lits(&["dlq", "replay", "--partition", &partition, "--offset", &offset]);
    let as_is_err = String::from_utf8_lossy(&as_is.stderr);
    assert!(!as_is.status.success(), "a dead letter still invalid is not replayed");
    assert!(as_is_err.contains("still not a valid command") && as_is_err.contains("99"), "{as_is_err}");
    let fixed = state::CommandEnvelope {
        order_id: "DLQ-FIXED-2".into(),
        command_id: "DLQ-FIXED-2:c".into(),
        schema_version: 1,
        ..before[0].clone()
    };
    let fixed_file = env.dir.path().join("fixed.json");
    std::fs::write(&fixed_file, serde_json::to_vec(&fixed).expect("json")).expect("write the fix");
    let fixed_file = fixed_file.to_string_lossy().into_owned();
    let replayed =
        wagon_lits(&["dlq", "replay", "--partition", &partition, "--offset", &offset, "--value-file", &fixed_file]);
    let replayed_out = String::from_utf8_lossy(&replayed.stdout);
    assert!(replayed.status.success(), "dlq replay: {}", String::from_utf8_lossy(&replayed.stderr));
    assert!(replayed_out.contains("DLQ-FIXED-2"), "{replayed_out}");
    assert!(view.wait_until(&["DLQ-FIXED-2".to_string()], Duration::from_secs(60), settled).is_empty());
    let on_orders = env.read_all(&env.topics.orders_topic);
    let copy =
        on_orders.iter().find(|r| r.key.as_deref() == Some(b"DLQ-FIXED-2".as_slice())).expect("the replayed record");
    assert_eq!(
        copy.headers[wagon_lits::dead_letters::REPLAYED_FROM],
        format!("{}/{partition}/{offset}", env.topics.dlq_topic)
    );
    let mut good = good.clone();
    good.push(fixed);

    dev.assert_running();
    let report = converge(&env, &view, &good);
    dev.terminate();
    assert!(report.is_exactly_once(), "{}\n{:#?}", report.summary(), report.examples);
    assert!(report.expected.keys().all(|id| id.starts_with("DLQ")), "a bad message became an order");
}
