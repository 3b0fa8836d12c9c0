//! How a [`Command`] is read from JSON (`{"type":"PlaceOrder","wagon_id":…}`), in one pass.
//!
//! serde's derive for an internally tagged enum (`#[serde(tag = "type")]`) cannot know the
//! variant before it has seen `type`, which may come last, so it first copies the whole object
//! into a tree of owned values, then reads the variant from that tree: about half the time
//! `decode_command` took (`cargo bench --workspace --bench processing` under `perf`,
//! docs/benchmarks.md). Here the object is read once into a struct of every field any
//! variant has, then checked against its `type`: the same commands are accepted, and the same ones
//! refused (a field of another variant is an unknown field, a missing one a missing field, a
//! `null` where a string is expected a type error). Serialising is still the derive's.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Command, OrderLine, PlaceOrder};

/// The variants' names, as `type` says them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Kind {
    PlaceOrder,
    CancelOrder,
    ConfirmDelivery,
}

/// A field of the object: absent, or present with a value of its type (`null` where the type
/// is not an option is an error, as it was with the derive).
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Absent,
    Present(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Field::Present)
    }
}

impl<T> Field<T> {
    fn is_present(&self) -> bool {
        matches!(self, Field::Present(_))
    }
}

/// A command as the JSON object has it: every field any variant has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapCommand {
    #[serde(rename = "type")]
    kind: Kind,
    #[serde(default)]
    wagon_id: Field<String>,
    #[serde(default)]
    requested_by: Field<String>,
    #[serde(default)]
    lines: Field<Vec<OrderLine>>,
    #[serde(default)]
    reason: Field<String>,
}

/// A command read from JSON: an object (the usual form), or an array whose first element is the
/// type and the rest the variant's fields in order (a form serde's derive also accepts, and the
/// contract test of the Kafka Streams peer pins: `["CancelOrder","why"]`).
pub(crate) struct WireCommand(Result<Command, String>);

impl<'de> Deserialize<'de> for WireCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = WireCommand;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a command: an object with its `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WireCommand, A::Error> {
        let command = MapCommand::deserialize(MapAccessDeserializer::new(map))?;
        Ok(WireCommand(Command::try_from(command)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireCommand, A::Error> {
        let kind: Kind = element(&mut seq, 0)?;
        let command = match kind {
            Kind::PlaceOrder => Command::PlaceOrder(PlaceOrder {
                wagon_id: element(&mut seq, 1)?,
                requested_by: element(&mut seq, 2)?,
                lines: element(&mut seq, 3)?,
            }),
            Kind::CancelOrder => Command::CancelOrder { reason: element(&mut seq, 1)? },
            Kind::ConfirmDelivery => Command::ConfirmDelivery {},
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!("too many elements for {kind:?}")));
        }
        Ok(WireCommand(Ok(command)))
    }
}

/// Element `index` of the array form.
fn element<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(seq: &mut A, index: usize) -> Result<T, A::Error> {
    seq.next_element()?.ok_or_else(|| de::Error::invalid_length(index, &"the type, then the fields of the command"))
}

impl TryFrom<WireCommand> for Command {
    type Error = String;

    fn try_from(wire: WireCommand) -> Result<Command, String> {
        wire.0
    }
}

fn required<T>(field: Field<T>, name: &str) -> Result<T, String> {
    match field {
        Field::Present(value) => Ok(value),
        Field::Absent => Err(format!("missing field `{name}`")),
    }
}

impl MapCommand {
    /// The first field present that `kind` does not have.
    fn foreign_field(&self) -> Option<&'static str> {
        let fields = [
            ("wagon_id", self.wagon_id.is_present(), Kind::PlaceOrder),
            ("requested_by", self.requested_by.is_present(), Kind::PlaceOrder),
            ("lines", self.lines.is_present(), Kind::PlaceOrder),
            ("reason", self.reason.is_present(), Kind::CancelOrder),
        ];
        fields.into_iter().find(|(_, present, owner)| *present && *owner != self.kind).map(|(name, _, _)| name)
    }
}

impl TryFrom<MapCommand> for Command {
    type Error = String;

    fn try_from(wire: MapCommand) -> Result<Command, String> {
        if let Some(field) = wire.foreign_field() {
            let expected = match wire.kind {
                Kind::PlaceOrder => "`type`, `wagon_id`, `requested_by`, `lines`",
                Kind::CancelOrder => "`type`, `reason`",
                Kind::ConfirmDelivery => "`type`",
            };
            return Err(format!("unknown field `{field}` for {:?}, expected {expected}", wire.kind));
        }
        Ok(match wire.kind {
            Kind::PlaceOrder => Command::PlaceOrder(PlaceOrder {
                wagon_id: required(wire.wagon_id, "wagon_id")?,
                requested_by: required(wire.requested_by, "requested_by")?,
                lines: required(wire.lines, "lines")?,
            }),
            Kind::CancelOrder => Command::CancelOrder { reason: required(wire.reason, "reason")? },
            Kind::ConfirmDelivery => Command::ConfirmDelivery {},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Command, OrderLine, PlaceOrder};

    fn read(json: &str) -> Result<Command, String> {
        serde_json::from_str::<Command>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn every_variant_reads_back_what_the_derive_writes() {
        let commands = [
            Command::PlaceOrder(PlaceOrder {
                wagon_id: "WL-1".into(),
                requested_by: "agent".into(),
                lines: vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 2 }],
            }),
            Command::CancelOrder { reason: "no longer needed".into() },
            Command::ConfirmDelivery {},
        ];
        for command in commands {
            let json = serde_json::to_string(&command).expect("serialise");
            assert_eq!(read(&json), Ok(command), "{json}");
        }
    }

    #[test]
    fn the_array_form_reads_as_the_derive_read_it() {
        assert_eq!(read(r#"["CancelOrder","why"]"#), Ok(Command::CancelOrder { reason: "why".into() }));
        assert_eq!(read(r#"["ConfirmDelivery"]"#), Ok(Command::ConfirmDelivery {}));
        let place = read(r#"["PlaceOrder","W","r",[["BRAKE-PAD-UIC",2]]]"#);
        assert!(matches!(place, Ok(Command::PlaceOrder(ref p)) if p.lines.len() == 1), "{place:?}");
        assert!(read(r#"["CancelOrder"]"#).is_err());
        assert!(read(r#"["ConfirmDelivery","extra"]"#).is_err());
        assert!(read(r#"[]"#).is_err());
    }

    #[test]
    fn the_type_may_come_anywhere() {
        let json = r#"{"reason":"late","type":"CancelOrder"}"#;
        assert_eq!(read(json), Ok(Command::CancelOrder { reason: "late".into() }));
    }

    #[test]
    fn what_the_derive_refused_is_still_refused_with_a_reason() {
        let cases = [
            (r#"{"type":"CancelOrder"}"#, "missing field `reason`"),
            (r#"{"type":"PlaceOrder","wagon_id":"W","requested_by":"a"}"#, "missing field `lines`"),
            (r#"{"type":"ConfirmDelivery","reason":"x"}"#, "unknown field `reason` for ConfirmDelivery"),
            (r#"{"type":"CancelOrder","reason":"x","lines":[]}"#, "unknown field `lines` for CancelOrder"),
            (r#"{"type":"CancelOrder","reason":"x","colour":"red"}"#, "unknown field `colour`"),
            (r#"{"type":"CancelOrder","reason":null}"#, "invalid type: null, expected a string"),
            (r#"{"type":"ShipIt"}"#, "unknown variant `ShipIt`"),
            (r#"{"reason":"x"}"#, "missing field `type`"),
            (r#"{"type":"CancelOrder","reason":"x","reason":"y"}"#, "duplicate field `reason`"),
        ];
        for (json, expected) in cases {
            match read(json) {
                Ok(command) => panic!("{json} was accepted as {command:?}"),
                Err(err) => assert!(err.contains(expected), "{json}: {err:?} does not say {expected:?}"),
            }
        }
    }
}
