//! The command decoder against hostile input: never a panic, always a reason; the poison corpus
//! in `testdata/poison/` gives the expected kind of error.

use proptest::prelude::*;
use state::{decode_command, Command, CommandEnvelope, InvalidCommand, OrderLine, PlaceOrder};

const KINDS: [&str; 6] =
    ["unsupported-schema-version", "field-too-long", "key-mismatch", "empty-field", "malformed", "empty"];

/// The corpus: (file name, expected kind, bytes).
pub fn poison_corpus() -> Vec<(String, &'static str, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/poison");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("testdata/poison") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some(rest) = name.strip_suffix(".bin").and_then(|n| n.split_once('-')).map(|(_, rest)| rest) else {
            continue;
        };
        let kind = KINDS.iter().find(|k| rest.starts_with(*k)).unwrap_or_else(|| panic!("{name}: no known kind"));
        out.push((name.clone(), *kind, std::fs::read(&path).expect("read")));
    }
    out.sort();
    out
}

#[test]
fn every_poison_message_is_refused_with_its_kind() {
    let corpus = poison_corpus();
    assert!(corpus.len() >= 10, "the corpus is there");
    for (name, kind, bytes) in corpus {
        match decode_command(Some(b"POISON"), Some(&bytes)) {
            Ok(envelope) => panic!("{name} decoded as a command: {envelope:?}"),
            Err(err) => {
                assert_eq!(err.kind(), kind, "{name}: {err}");
                assert!(!err.to_string().is_empty());
            }
        }
    }
}

fn arb_envelope() -> impl Strategy<Value = CommandEnvelope> {
    let id = "[A-Za-z0-9_-]{1,40}";
    let line = ("[A-Z-]{1,20}", 0u32..2000).prop_map(|(sku, quantity)| OrderLine { sku, quantity });
    let command = prop_oneof![
        (id, id, proptest::collection::vec(line, 0..5)).prop_map(
            |(wagon_id, requested_by, lines)| Command::PlaceOrder(PlaceOrder { wagon_id, requested_by, lines })
        ),
        ".{0,50}".prop_map(|reason| Command::CancelOrder { reason }),
        Just(Command::ConfirmDelivery {}),
    ];
    (id, id, any::<u64>(), command).prop_map(|(command_id, order_id, issued_at_ms, command)| {
        CommandEnvelope::new(command_id, order_id, issued_at_ms, command)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_always_say_why(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(err) = decode_command(None, Some(&bytes)) {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn valid_commands_round_trip(envelope in arb_envelope()) {
        let bytes = serde_json::to_vec(&envelope).expect("json");
        let decoded = decode_command(Some(envelope.order_id.as_bytes()), Some(&bytes));
        prop_assert_eq!(decoded, Ok(envelope));
    }

    #[test]
    fn damaged_commands_decode_or_say_why(envelope in arb_envelope(), cut in 0usize..400, flip in 0usize..400, byte in any::<u8>()) {
        let mut bytes = serde_json::to_vec(&envelope).expect("json");
        let at = flip % bytes.len();
        bytes[at] = byte;
        bytes.truncate(cut.max(1).min(bytes.len()));
        match decode_command(Some(envelope.order_id.as_bytes()), Some(&bytes)) {
            Ok(decoded) => prop_assert!(state::validate_envelope(&decoded).is_ok()),
            Err(err) => prop_assert!(!matches!(err, InvalidCommand::Malformed(ref m) if m.is_empty())),
        }
    }
}
