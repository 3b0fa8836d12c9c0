//! How the stores write their values: an order's state (the value of dev-materiels' state store
//! and of its changelog records) and a row of wagon-lits' view (the order's last update).
//!
//! A value starts with a format byte:
//!
//! | first byte   | format                                                                      |
//! |--------------|-----------------------------------------------------------------------------|
//! | `0x01`       | [postcard] of the value, fields in declaration order (written today)        |
//! | `{` (`0x7B`) | JSON of the value (written by builds before the binary format)              |
//!
//! A store or a changelog written by the previous version therefore still reads, record by
//! record, and a changelog may hold both. The binary format is less than half the size of the
//! JSON and cheaper to write and read. Its layout is fixed by [`FORMAT_POSTCARD_V1`]: a change to
//! [`OrderState`]'s or [`OrderUpdate`]'s fields, or to the order of an enum's variants, needs a
//! new format byte, and the tests `the_binary_layout_is_pinned` and
//! `the_binary_layout_of_a_view_row_is_pinned` fail until it has one.
//!
//! [postcard]: https://docs.rs/postcard

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::order::{OrderState, OrderUpdate};

/// The format byte of the binary encoding (postcard, version 1 of the layout).
pub const FORMAT_POSTCARD_V1: u8 = 0x01;
/// The first byte of a JSON-encoded state.
const FORMAT_JSON: u8 = b'{';

/// A state value that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty state value")]
    Empty,
    #[error("unknown state format byte 0x{0:02x}")]
    UnknownFormat(u8),
    #[error("binary state: {0}")]
    Binary(#[from] postcard::Error),
    #[error("JSON state: {0}")]
    Json(#[from] serde_json::Error),
}

/// A value that cannot be written (it cannot happen for the values the services build; kept
/// typed rather than unwrapped).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a stored value: {0}")]
pub struct EncodeError(#[from] postcard::Error);

fn encode<T: Serialize>(value: &T, capacity: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(capacity);
    out.push(FORMAT_POSTCARD_V1);
    Ok(postcard::to_extend(value, out)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&FORMAT_POSTCARD_V1) => {
            let (value, rest) = postcard::take_from_bytes::<T>(&bytes[1..])?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(DecodeError::Binary(postcard::Error::DeserializeUnexpectedEnd))
            }
        }
        // JSON may start with white space, though nothing this project wrote did.
        Some(&FORMAT_JSON) | Some(b' ' | b'\n' | b'\r' | b'\t') => Ok(serde_json::from_slice(bytes)?),
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
    }
}

/// Encodes a state as stored in RocksDB and on the changelog, in the binary format.
pub fn encode_state(state: &OrderState) -> Result<Vec<u8>, EncodeError> {
    encode(state, 96 + state.order_id.len())
}

/// Decodes a state in any format this build reads.
pub fn decode_state(bytes: &[u8]) -> Result<OrderState, DecodeError> {
    decode(bytes)
}

/// Encodes a row of wagon-lits' view (the order's last update), in the binary format.
pub fn encode_row(row: &OrderUpdate) -> Result<Vec<u8>, EncodeError> {
    encode(row, 48 + row.order_id.len())
}

/// Decodes a row of wagon-lits' view in any format this build reads.
pub fn decode_row(bytes: &[u8]) -> Result<OrderUpdate, DecodeError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{OrderLine, OrderStatus, PlaceOrder, Timer, TimerKind};

    fn sample() -> OrderState {
        OrderState {
            order_id: "ORD-1".into(),
            version: 3,
            status: Some(OrderStatus::InPreparation),
            placed: Some(PlaceOrder {
                wagon_id: "WL-42".into(),
                requested_by: "agent-7".into(),
                lines: vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 4 }],
            }),
            applied_commands: vec!["c1".into()],
            refused_commands: vec!["c2".into()],
            timer: Some(Timer { kind: TimerKind::Ship, due_ms: 1_764_190_000_000 }),
        }
    }

    #[test]
    fn a_state_reads_back_as_it_was_written() {
        let state = sample();
        let bytes = encode_state(&state).expect("encode");
        assert_eq!(bytes[0], FORMAT_POSTCARD_V1);
        assert_eq!(decode_state(&bytes).expect("decode"), state);
        let json = serde_json::to_vec(&state).expect("json");
        assert!(bytes.len() * 2 < json.len(), "binary {} bytes, JSON {} bytes", bytes.len(), json.len());
    }

    #[test]
    fn a_state_written_as_json_by_the_previous_version_still_reads() {
        // As the previous build wrote it, including the older name of the refusals' list.
        let json = br#"{"order_id":"ORD-1","version":2,"status":"Accepted","placed":null,"seen_commands":["c1","c2"],"timer":{"kind":"Prepare","due_ms":10}}"#;
        let state = decode_state(json).expect("decode");
        assert_eq!(state.version, 2);
        assert_eq!(state.refused_commands, vec!["c1".to_string(), "c2".to_string()]);
        assert_eq!(state.timer, Some(Timer { kind: TimerKind::Prepare, due_ms: 10 }));
    }

    /// The bytes of [`sample`]: if this test fails, the layout changed, and a store or changelog
    /// written before would be misread. Give the new layout a new format byte instead (and keep
    /// reading this one).
    #[test]
    fn the_binary_layout_is_pinned() {
        let bytes = encode_state(&sample()).expect("encode");
        let expected: &[u8] = &[
            0x01, // format
            5, b'O', b'R', b'D', b'-', b'1', // order_id
            3,    // version
            1, 2, // status: Some(InPreparation)
            1, 5, b'W', b'L', b'-', b'4', b'2', // placed: Some, wagon_id
            7, b'a', b'g', b'e', b'n', b't', b'-', b'7', // requested_by
            1, 13, b'B', b'R', b'A', b'K', b'E', b'-', b'P', b'A', b'D', b'-', b'U', b'I', b'C', 4, // lines
            1, 2, b'c', b'1', // applied_commands
            1, 2, b'c', b'2', // refused_commands
            1, 1, 0x80, 0xA7, 0xAC, 0x8F, 0xAC, 0x33, // timer: Some, Ship, due_ms (varint)
        ];
        assert_eq!(bytes, expected);
    }

    fn row() -> OrderUpdate {
        OrderUpdate {
            schema_version: 1,
            order_id: "ORD-1".into(),
            version: 2,
            status: Some(OrderStatus::Cancelled),
            previous_status: Some(OrderStatus::Accepted),
            outcome: crate::order::Outcome::Applied,
            reason: Some("late".into()),
            trigger: crate::order::Trigger::Command,
            command_id: Some("c2".into()),
            timestamp_ms: 1_764_190_000_000,
            expected_ship_ms: None,
        }
    }

    #[test]
    fn a_view_row_reads_back_and_a_json_row_still_reads() {
        let bytes = encode_row(&row()).expect("encode");
        assert_eq!(decode_row(&bytes).expect("decode"), row());
        let json = serde_json::to_vec(&row()).expect("json");
        assert_eq!(decode_row(&json).expect("a row written by the previous version"), row());
    }

    /// As [`the_binary_layout_is_pinned`], for a view row.
    #[test]
    fn the_binary_layout_of_a_view_row_is_pinned() {
        let bytes = encode_row(&row()).expect("encode");
        let expected: &[u8] = &[
            0x01, // format
            1,    // schema_version
            5, b'O', b'R', b'D', b'-', b'1', // order_id
            2,    // version
            1, 5, // status: Some(Cancelled)
            1, 0, // previous_status: Some(Accepted)
            0, // outcome: Applied
            1, 4, b'l', b'a', b't', b'e', // reason
            0,    // trigger: Command
            1, 2, b'c', b'2', // command_id
            0x80, 0xA7, 0xAC, 0x8F, 0xAC, 0x33, // timestamp_ms (varint)
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn unreadable_values_are_errors_not_empty_states() {
        assert!(matches!(decode_state(b""), Err(DecodeError::Empty)));
        assert!(matches!(decode_state(&[0x02, 1, 2]), Err(DecodeError::UnknownFormat(0x02))));
        assert!(matches!(decode_state(&[FORMAT_POSTCARD_V1, 200]), Err(DecodeError::Binary(_))));
        let mut trailing = encode_state(&sample()).expect("encode");
        trailing.push(0);
        assert!(decode_state(&trailing).is_err(), "trailing bytes are refused");
        assert!(matches!(decode_state(b"{\"order_id\":"), Err(DecodeError::Json(_))));
    }
}
