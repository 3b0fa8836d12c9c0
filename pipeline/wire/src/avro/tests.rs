use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use state::order::SCHEMA_VERSION;
use state::{Command, CommandEnvelope, OrderLine, OrderStatus, OrderUpdate, Outcome, PlaceOrder, Trigger};

use super::*;

fn body(record: Record, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(record.schema()).build().expect("writer").write_value_to_vec(value).expect("write")
}

fn read_back(record: Record, bytes: &[u8]) -> Value {
    let mut slice = bytes;
    GenericDatumReader::builder(record.schema())
        .reader_schema(record.schema())
        .build()
        .expect("reader")
        .read_value(&mut slice)
        .expect("read")
}

fn commands() -> Vec<CommandEnvelope> {
    vec![
        CommandEnvelope::new(
            "c1",
            "ORD-1",
            1_764_190_000_000,
            Command::PlaceOrder(PlaceOrder {
                wagon_id: "WL-42".into(),
                requested_by: "agent-7".into(),
                lines: vec![
                    OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 4 },
                    OrderLine { sku: "AXLE-BOX".into(), quantity: 999 },
                ],
            }),
        ),
        CommandEnvelope::new("c2", "ORD-1", 1, Command::CancelOrder { reason: "no longer needed: é".into() }),
        CommandEnvelope::new("c3", "ORD-1", 0, Command::ConfirmDelivery {}),
    ]
}

fn updates() -> Vec<OrderUpdate> {
    let mut out = Vec::new();
    for (i, status) in OrderStatus::ALL.into_iter().enumerate() {
        for (outcome, trigger) in [
            (Outcome::Applied, Trigger::Command),
            (Outcome::Refused, Trigger::PrepareTimer),
            (Outcome::Applied, Trigger::ShipTimer),
        ] {
            out.push(OrderUpdate {
                schema_version: SCHEMA_VERSION,
                order_id: format!("ORD-{i}"),
                version: i as u64 + 1,
                status: Some(status),
                previous_status: if i == 0 { None } else { Some(OrderStatus::ALL[i - 1]) },
                outcome,
                reason: (outcome == Outcome::Refused).then(|| "not now".to_owned()),
                trigger,
                command_id: (trigger == Trigger::Command).then(|| format!("c{i}")),
                timestamp_ms: 1_764_190_000_123,
                expected_ship_ms: (i % 2 == 0).then_some(1_764_190_007_000),
            });
        }
    }
    out.push(OrderUpdate { status: None, previous_status: None, ..out[0].clone() });
    out
}

#[test]
fn every_schema_in_the_repository_reads_every_earlier_one_both_ways() {
    let problems = subjects::SchemaSet::builtin().history_problems();
    assert!(problems.is_empty(), "{problems:#?}");
    for record in Record::ALL {
        assert_eq!(record.current().record, record);
        for (i, schema) in record.history().iter().enumerate() {
            assert_eq!(schema.version as usize, i + 1, "{} is not version {}", schema.path, i + 1);
        }
    }
}

#[test]
fn a_schema_that_renames_a_field_without_default_is_caught_both_ways() {
    let current = Record::Update.schema();
    let renamed = Schema::parse_str(
        &Record::Update
            .current()
            .text
            .replace(r#"{"name": "timestamp_ms", "type": "long""#, r#"{"name": "decided_ms", "type": "long""#),
    )
    .expect("parses");
    // A reader of the current schema misses `timestamp_ms` in the renamed one's values; a reader
    // of the renamed one misses `decided_ms` in the current one's.
    let reason = mutual_read(current, &renamed).expect_err("a renamed required field breaks readers");
    assert!(reason.contains("'timestamp_ms'") && reason.contains("older one cannot read"), "{reason}");
    let reason = mutual_read(&renamed, current).expect_err("both ways");
    assert!(reason.contains("'decided_ms'"), "the reason names the field: {reason}");
}

#[test]
fn commands_and_updates_go_through_avro_unchanged() {
    for envelope in commands() {
        let bytes = body(Record::Command, command_value(&envelope));
        assert_eq!(command_from(&read_back(Record::Command, &bytes)).expect("decodes"), envelope);
    }
    for update in updates() {
        let bytes = body(Record::Update, update_value(&update));
        assert_eq!(update_from(&read_back(Record::Update, &bytes)).expect("decodes"), update);
    }
}

#[test]
fn the_framing_is_confluent_s() {
    let framed = frame(258, b"xyz");
    assert_eq!(framed, [0, 0, 0, 1, 2, b'x', b'y', b'z']);
    assert_eq!(unframe(&framed).expect("unframes"), (258, &b"xyz"[..]));
    assert!(matches!(unframe(b"{\"a\":1}"), Err(FrameError::Magic(b'{'))));
    assert!(matches!(unframe(&[0, 0, 1]), Err(FrameError::Short(3))));
    assert!(matches!(unframe(&[]), Err(FrameError::Short(0))));
}

/// The update schema's first version, as a reader or writer of the previous build.
fn update_v1() -> Schema {
    Schema::parse_str(Record::Update.history()[0].text).expect("v1 parses")
}

#[test]
fn a_version_1_reader_reads_a_version_2_update_and_a_version_2_reader_a_version_1_one() {
    let v1 = update_v1();
    let v2 = Record::Update.schema();
    assert_eq!(Record::Update.current().version, 2);
    for update in updates() {
        // Written by this build (v2), read by the previous one (v1): every v1 field, the new
        // one skipped.
        let bytes = body(Record::Update, update_value(&update));
        let mut slice = &bytes[..];
        let read = GenericDatumReader::builder(v2).reader_schema(&v1).build().expect("reader").read_value(&mut slice);
        let Value::Record(fields) = read.expect("v1 reads v2") else { panic!("not a record") };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"expected_ship_ms"), "{names:?}");
        let v1_fields = match &v1 {
            Schema::Record(record) => record.fields.len(),
            _ => panic!("v1 is a record"),
        };
        assert_eq!(names.len(), v1_fields);
        let as_v1 = update_from(&Value::Record(
            fields.into_iter().chain([("expected_ship_ms".to_owned(), Value::Null)]).collect(),
        ))
        .expect("the v1 fields are this update's");
        assert_eq!(as_v1, OrderUpdate { expected_ship_ms: None, ..update.clone() });

        // Written by the previous build (v1, no such field), read by this one: the default.
        let v1_value = match update_value(&update) {
            Value::Record(fields) => {
                Value::Record(fields.into_iter().filter(|(n, _)| n != "expected_ship_ms").collect())
            }
            _ => panic!("a record"),
        };
        let old =
            GenericDatumWriter::builder(&v1).build().expect("writer").write_value_to_vec(v1_value).expect("write");
        let mut slice = &old[..];
        let read = GenericDatumReader::builder(&v1).reader_schema(v2).build().expect("reader").read_value(&mut slice);
        let decoded = update_from(&read.expect("v2 reads v1")).expect("an update");
        assert_eq!(decoded, OrderUpdate { expected_ship_ms: None, ..update });
    }
}
