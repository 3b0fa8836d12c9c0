//! The commands and updates as Avro values of the schemas in `schemas/` (this build's versions),
//! and back. Reading takes a value already resolved to this build's schema (Avro schema
//! resolution has filled a field the writer did not have with its default and dropped one the
//! reader does not have), so each field is looked up by name and a value of another shape is an
//! error naming the field, never a default made up here.

use apache_avro::types::Value;
use state::order::SCHEMA_VERSION;
use state::{Command, CommandEnvelope, OrderLine, OrderStatus, OrderUpdate, Outcome, PlaceOrder, Trigger};

/// A value that does not have the shape of this build's schema (cannot happen after a successful
/// resolution; kept typed rather than unwrapped).
#[derive(Debug, thiserror::Error)]
#[error("Avro value: field {field}: {reason}")]
pub struct ShapeError {
    pub field: &'static str,
    pub reason: String,
}

fn shape(field: &'static str, reason: impl Into<String>) -> ShapeError {
    ShapeError { field, reason: reason.into() }
}

/// The enums' symbols, in the schemas' order (a value is read by its symbol's name, so a
/// writer's schema may order them otherwise).
const STATUSES: [(&str, OrderStatus); 6] = [
    ("Accepted", OrderStatus::Accepted),
    ("Rejected", OrderStatus::Rejected),
    ("InPreparation", OrderStatus::InPreparation),
    ("Shipped", OrderStatus::Shipped),
    ("Delivered", OrderStatus::Delivered),
    ("Cancelled", OrderStatus::Cancelled),
];
const OUTCOMES: [(&str, Outcome); 2] = [("Applied", Outcome::Applied), ("Refused", Outcome::Refused)];
const TRIGGERS: [(&str, Trigger); 3] =
    [("Command", Trigger::Command), ("PrepareTimer", Trigger::PrepareTimer), ("ShipTimer", Trigger::ShipTimer)];

fn symbol<T: Copy + PartialEq>(all: &[(&str, T)], value: T) -> Value {
    match all.iter().position(|(_, v)| *v == value) {
        Some(index) => Value::Enum(index as u32, all[index].0.to_owned()),
        // Every variant is in its table (the tests encode each one).
        None => Value::Null,
    }
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn long(n: u64) -> Value {
    Value::Long(i64::try_from(n).unwrap_or(i64::MAX))
}

fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

/// The Avro value of a command envelope.
pub fn command_value(envelope: &CommandEnvelope) -> Value {
    let command = match &envelope.command {
        Command::PlaceOrder(place) => Value::Union(
            0,
            Box::new(Value::Record(vec![
                ("wagon_id".into(), string(&place.wagon_id)),
                ("requested_by".into(), string(&place.requested_by)),
                (
                    "lines".into(),
                    Value::Array(
                        place
                            .lines
                            .iter()
                            .map(|line| {
                                Value::Record(vec![
                                    ("sku".into(), string(&line.sku)),
                                    ("quantity".into(), Value::Long(i64::from(line.quantity))),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ])),
        ),
        Command::CancelOrder { reason } => {
            Value::Union(1, Box::new(Value::Record(vec![("reason".into(), string(reason))])))
        }
        Command::ConfirmDelivery {} => Value::Union(2, Box::new(Value::Record(Vec::new()))),
    };
    Value::Record(vec![
        ("command_id".into(), string(&envelope.command_id)),
        ("issued_at_ms".into(), long(envelope.issued_at_ms)),
        ("order_id".into(), string(&envelope.order_id)),
        ("command".into(), command),
    ])
}

/// The Avro value of an update.
pub fn update_value(update: &OrderUpdate) -> Value {
    let status = |s: Option<OrderStatus>| optional(s.map(|s| symbol(&STATUSES, s)));
    Value::Record(vec![
        ("order_id".into(), string(&update.order_id)),
        ("version".into(), long(update.version)),
        ("status".into(), status(update.status)),
        ("previous_status".into(), status(update.previous_status)),
        ("outcome".into(), symbol(&OUTCOMES, update.outcome)),
        ("reason".into(), optional(update.reason.as_deref().map(string))),
        ("trigger".into(), symbol(&TRIGGERS, update.trigger)),
        ("command_id".into(), optional(update.command_id.as_deref().map(string))),
        ("timestamp_ms".into(), long(update.timestamp_ms)),
        ("expected_ship_ms".into(), optional(update.expected_ship_ms.map(long))),
    ])
}

/// The fields of a record value, looked up by name.
struct Fields<'a>(&'a [(String, Value)]);

impl<'a> Fields<'a> {
    fn of(value: &'a Value, what: &'static str) -> Result<Fields<'a>, ShapeError> {
        match value {
            Value::Record(fields) => Ok(Fields(fields)),
            other => Err(shape(what, format!("expected a record, found {other:?}"))),
        }
    }

    fn get(&self, name: &'static str) -> Result<&'a Value, ShapeError> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or_else(|| shape(name, "missing"))
    }

    fn string(&self, name: &'static str) -> Result<String, ShapeError> {
        as_string(self.get(name)?, name)
    }

    fn long(&self, name: &'static str) -> Result<u64, ShapeError> {
        as_long(self.get(name)?, name)
    }

    fn optional(&self, name: &'static str) -> Result<Option<&'a Value>, ShapeError> {
        match self.get(name)? {
            Value::Union(_, inner) if **inner == Value::Null => Ok(None),
            Value::Union(_, inner) => Ok(Some(inner)),
            Value::Null => Ok(None),
            other => Ok(Some(other)),
        }
    }

    fn symbol<T: Copy>(&self, name: &'static str, all: &[(&str, T)]) -> Result<T, ShapeError> {
        as_symbol(self.get(name)?, name, all)
    }
}

fn as_string(value: &Value, field: &'static str) -> Result<String, ShapeError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(shape(field, format!("expected a string, found {other:?}"))),
    }
}

fn as_long(value: &Value, field: &'static str) -> Result<u64, ShapeError> {
    let n = match value {
        Value::Long(n) | Value::TimestampMillis(n) => *n,
        Value::Int(n) => i64::from(*n),
        other => return Err(shape(field, format!("expected a long, found {other:?}"))),
    };
    u64::try_from(n).map_err(|_| shape(field, format!("negative: {n}")))
}

fn as_symbol<T: Copy>(value: &Value, field: &'static str, all: &[(&str, T)]) -> Result<T, ShapeError> {
    match value {
        Value::Enum(_, name) => all
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| shape(field, format!("unknown symbol {name:?}"))),
        other => Err(shape(field, format!("expected an enum, found {other:?}"))),
    }
}

/// A command envelope from its Avro value (resolved to this build's schema). Its
/// `schema_version` is this build's: with Avro the registry versions the schema.
pub fn command_from(value: &Value) -> Result<CommandEnvelope, ShapeError> {
    let fields = Fields::of(value, "OrderCommand")?;
    let command = match fields.get("command")? {
        Value::Union(index, inner) => {
            let inner_fields = Fields::of(inner, "command")?;
            match index {
                0 => {
                    let lines = match inner_fields.get("lines")? {
                        Value::Array(lines) => lines
                            .iter()
                            .map(|line| {
                                let line = Fields::of(line, "lines")?;
                                let quantity = line.long("quantity")?;
                                Ok(OrderLine {
                                    sku: line.string("sku")?,
                                    quantity: u32::try_from(quantity)
                                        .map_err(|_| shape("quantity", format!("out of range: {quantity}")))?,
                                })
                            })
                            .collect::<Result<Vec<_>, ShapeError>>()?,
                        other => return Err(shape("lines", format!("expected an array, found {other:?}"))),
                    };
                    Command::PlaceOrder(PlaceOrder {
                        wagon_id: inner_fields.string("wagon_id")?,
                        requested_by: inner_fields.string("requested_by")?,
                        lines,
                    })
                }
                1 => Command::CancelOrder { reason: inner_fields.string("reason")? },
                2 => Command::ConfirmDelivery {},
                other => return Err(shape("command", format!("unknown branch {other}"))),
            }
        }
        other => return Err(shape("command", format!("expected a union, found {other:?}"))),
    };
    Ok(CommandEnvelope {
        schema_version: SCHEMA_VERSION,
        command_id: fields.string("command_id")?,
        issued_at_ms: fields.long("issued_at_ms")?,
        order_id: fields.string("order_id")?,
        command,
    })
}

/// An update from its Avro value (resolved to this build's schema).
pub fn update_from(value: &Value) -> Result<OrderUpdate, ShapeError> {
    let fields = Fields::of(value, "OrderUpdate")?;
    let status = |name: &'static str| -> Result<Option<OrderStatus>, ShapeError> {
        fields.optional(name)?.map(|v| as_symbol(v, name, &STATUSES)).transpose()
    };
    let text = |name: &'static str| -> Result<Option<String>, ShapeError> {
        fields.optional(name)?.map(|v| as_string(v, name)).transpose()
    };
    Ok(OrderUpdate {
        schema_version: SCHEMA_VERSION,
        order_id: fields.string("order_id")?,
        version: fields.long("version")?,
        status: status("status")?,
        previous_status: status("previous_status")?,
        outcome: fields.symbol("outcome", &OUTCOMES)?,
        reason: text("reason")?,
        trigger: fields.symbol("trigger", &TRIGGERS)?,
        command_id: text("command_id")?,
        timestamp_ms: fields.long("timestamp_ms")?,
        // Version 2: a version-1 writer's record resolves it to its default, null.
        expected_ship_ms: fields.optional("expected_ship_ms")?.map(|v| as_long(v, "expected_ship_ms")).transpose()?,
    })
}
