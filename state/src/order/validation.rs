//! The checks a command passes before it reaches the state machine, and why one that fails them
//! goes to the dead-letter topic instead ([`InvalidCommand`]).

use serde::Deserialize;

use super::{CommandEnvelope, MAX_ID_LEN, SCHEMA_VERSION};

/// Why a command did not even reach the state machine. Such a command goes to the dead-letter
/// topic with this reason; it never becomes an [`OrderUpdate`](super::OrderUpdate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    #[error("empty message")]
    Empty,
    #[error("not a command: {0}")]
    Malformed(String),
    #[error("unsupported schema version {found} (this build reads version {SCHEMA_VERSION})")]
    UnsupportedSchemaVersion { found: u64 },
    #[error("{field} is empty")]
    EmptyField { field: &'static str },
    #[error("{field} is longer than {MAX_ID_LEN} bytes")]
    FieldTooLong { field: &'static str },
    #[error("message key {key:?} does not match order id {order_id:?}")]
    KeyMismatch { key: String, order_id: String },
    /// A record in a wire format this build could not read (an Avro record whose writer's schema
    /// the registry does not know, a truncated body); `kind` names the failure.
    #[error("{reason}")]
    Undecodable { kind: &'static str, reason: String },
}

impl InvalidCommand {
    /// A short, stable name for the kind of error (a dead-letter header, a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            InvalidCommand::Empty => "empty",
            InvalidCommand::Malformed(_) => "malformed",
            InvalidCommand::UnsupportedSchemaVersion { .. } => "unsupported-schema-version",
            InvalidCommand::EmptyField { .. } => "empty-field",
            InvalidCommand::FieldTooLong { .. } => "field-too-long",
            InvalidCommand::KeyMismatch { .. } => "key-mismatch",
            InvalidCommand::Undecodable { kind, .. } => kind,
        }
    }
}

/// Decodes and checks a command as read from `orders`. `key` is the record key, if any: when
/// present it must equal the order id, so that every command of an order lands on one partition.
pub fn decode_command(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<CommandEnvelope, InvalidCommand> {
    let value = match value {
        None => return Err(InvalidCommand::Empty),
        Some(v) if v.iter().all(u8::is_ascii_whitespace) => return Err(InvalidCommand::Empty),
        Some(v) => v,
    };
    let envelope: CommandEnvelope = match serde_json::from_slice(value) {
        Ok(envelope) => envelope,
        Err(err) => {
            // Say "wrong version" rather than "missing field" when the version is the problem.
            #[derive(Deserialize)]
            struct VersionProbe {
                schema_version: u64,
            }
            if let Ok(probe) = serde_json::from_slice::<VersionProbe>(value) {
                if probe.schema_version != u64::from(SCHEMA_VERSION) {
                    return Err(InvalidCommand::UnsupportedSchemaVersion { found: probe.schema_version });
                }
            }
            return Err(InvalidCommand::Malformed(err.to_string()));
        }
    };
    check_envelope(key, envelope)
}

/// The checks of [`validate_envelope`], and the record key (when present) equal to the order id,
/// so that every command of an order lands on one partition: a decoded command, whatever its
/// format on the wire, passes these before it reaches the state machine.
pub fn check_envelope(key: Option<&[u8]>, envelope: CommandEnvelope) -> Result<CommandEnvelope, InvalidCommand> {
    validate_envelope(&envelope)?;
    if let Some(key) = key {
        if key != envelope.order_id.as_bytes() {
            return Err(InvalidCommand::KeyMismatch {
                key: String::from_utf8_lossy(key).into_owned(),
                order_id: envelope.order_id,
            });
        }
    }
    Ok(envelope)
}

/// The checks a decoded command must pass before it reaches the state machine, whatever path it
/// came by (Kafka or HTTP).
pub fn validate_envelope(envelope: &CommandEnvelope) -> Result<(), InvalidCommand> {
    if envelope.schema_version != SCHEMA_VERSION {
        return Err(InvalidCommand::UnsupportedSchemaVersion { found: u64::from(envelope.schema_version) });
    }
    for (field, text) in [("command_id", &envelope.command_id), ("order_id", &envelope.order_id)] {
        if text.trim().is_empty() {
            return Err(InvalidCommand::EmptyField { field });
        }
        if text.len() > MAX_ID_LEN {
            return Err(InvalidCommand::FieldTooLong { field });
        }
    }
    Ok(())
}
