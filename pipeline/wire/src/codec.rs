//! How a service writes its records and reads the other's: JSON (the first contract) or Avro
//! through a schema registry ([`crate::avro`]). Readers take both, whatever they write: a JSON
//! value starts with `{` (or white space), an Avro one with byte 0. That is what lets a topic
//! move from JSON to Avro with no downtime: the readers first, then each producer by its flag.

use std::sync::Arc;
use std::time::Duration;

use state::{CommandEnvelope, InvalidCommand, OrderUpdate};

use crate::avro::{AvroCodec, AvroError, Record, Registry, RegistryError, MAGIC};

/// The format a service writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WireFormat {
    /// JSON, as documented in docs/asyncapi.json.
    #[default]
    Json,
    /// Avro, framed with the registry's schema id (the schemas in `schemas/`).
    Avro,
}

/// The wire format and the schema registry, from flags or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct CodecArgs {
    /// The format this service writes its records in. It reads both, whatever it writes.
    #[arg(long, env = "WIRE_FORMAT", value_enum, default_value_t = WireFormat::Json)]
    pub wire_format: WireFormat,
    /// The schema registry's Confluent-compatible API (Apicurio:
    /// http://host:8080/apis/ccompat/v7). Needed to write Avro, and to read it.
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,
    /// How long to wait for an unreachable registry, retrying with backoff: at start, before the
    /// service gives up, and for each writer schema a reader meets for the first time.
    #[arg(long, env = "SCHEMA_REGISTRY_PATIENCE_MS", default_value_t = 60_000)]
    pub schema_registry_patience_ms: u64,
}

impl CodecArgs {
    /// The registry's client, if a registry is configured.
    pub fn registry(&self) -> Result<Option<Registry>, RegistryError> {
        self.schema_registry_url.as_deref().map(|url| Registry::new(url, Duration::from_secs(10))).transpose()
    }
}

impl Default for CodecArgs {
    fn default() -> Self {
        CodecArgs { wire_format: WireFormat::Json, schema_registry_url: None, schema_registry_patience_ms: 60_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("--wire-format avro needs --schema-registry-url (or SCHEMA_REGISTRY_URL)")]
    NoRegistry,
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A command that could not be read: not a command (it goes to the dead-letter topic), or its
/// writer's schema could not be fetched (the registry is down: try again later).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Invalid(InvalidCommand),
    #[error("reading an Avro command: {0}")]
    Registry(AvroError),
}

/// An update that could not be read, in the same two kinds.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("not an update: {reason}")]
    Invalid { kind: &'static str, reason: String },
    #[error("reading an Avro update: {0}")]
    Registry(AvroError),
}

impl UpdateError {
    fn from_avro(e: AvroError) -> UpdateError {
        if e.is_transient() {
            UpdateError::Registry(e)
        } else {
            UpdateError::Invalid { kind: e.kind(), reason: e.to_string() }
        }
    }
}

/// Encoding failed (a value the schema cannot hold; cannot happen for the values the services
/// build, kept typed rather than unwrapped).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Avro(#[from] AvroError),
}

/// The format a service writes in, and the means to read both.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    writes: WireFormat,
    avro: Option<Arc<AvroCodec>>,
}

impl Codec {
    /// JSON only: reads JSON, and an Avro record is an error that names the missing registry.
    pub fn json() -> Codec {
        Codec::default()
    }

    /// The codec `args` describe. With a registry, registers the current schemas of the
    /// records this service writes (`writes`: each record and its topic), waiting for an
    /// unreachable registry up to the patience set.
    pub fn connect(args: &CodecArgs, writes: &[(Record, &str)]) -> Result<Codec, CodecError> {
        Codec::connect_to(args.registry()?, args, writes)
    }

    /// [`Codec::connect`] with the registry's client already made ([`CodecArgs::registry`]),
    /// so that its health can be shown while the codec connects.
    pub fn connect_to(
        registry: Option<Registry>,
        args: &CodecArgs,
        writes: &[(Record, &str)],
    ) -> Result<Codec, CodecError> {
        let Some(registry) = registry else {
            return match args.wire_format {
                WireFormat::Json => Ok(Codec::json()),
                WireFormat::Avro => Err(CodecError::NoRegistry),
            };
        };
        // A JSON writer registers nothing: it only reads Avro.
        let writes: Vec<(Record, String)> = match args.wire_format {
            WireFormat::Json => Vec::new(),
            WireFormat::Avro => writes.iter().map(|(record, topic)| (*record, Record::subject(topic))).collect(),
        };
        let patience = Duration::from_millis(args.schema_registry_patience_ms);
        if writes.is_empty() {
            crate::avro::retrying(patience, || registry.ping())?;
        }
        let avro = AvroCodec::connect(registry, &writes, patience)?;
        Ok(Codec { writes: args.wire_format, avro: Some(Arc::new(avro)) })
    }

    /// The format this codec writes.
    pub fn writes(&self) -> WireFormat {
        self.writes
    }

    /// The registry, when one is configured.
    pub fn registry(&self) -> Option<&Registry> {
        self.avro.as_deref().and_then(AvroCodec::registry)
    }

    /// A codec writing `writes` with an [`AvroCodec::preloaded`] (benches, tests).
    pub fn preloaded(writes: WireFormat, avro: AvroCodec) -> Codec {
        Codec { writes, avro: Some(Arc::new(avro)) }
    }

    fn avro(&self) -> Result<&AvroCodec, AvroError> {
        self.avro.as_deref().ok_or_else(|| AvroError::UnknownSchema {
            id: 0,
            reason: "an Avro record, and no schema registry is configured (--schema-registry-url)".into(),
        })
    }

    pub fn encode_command(&self, envelope: &CommandEnvelope) -> Result<Vec<u8>, EncodeError> {
        match self.writes {
            WireFormat::Json => Ok(serde_json::to_vec(envelope)?),
            WireFormat::Avro => Ok(self.avro()?.encode_command(envelope)?),
        }
    }

    pub fn encode_update(&self, update: &OrderUpdate) -> Result<Vec<u8>, EncodeError> {
        match self.writes {
            WireFormat::Json => Ok(serde_json::to_vec(update)?),
            WireFormat::Avro => Ok(self.avro()?.encode_update(update)?),
        }
    }

    /// Decodes and checks a command as read from `orders`, in either format (see
    /// [`state::decode_command`] for the checks).
    pub fn decode_command(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<CommandEnvelope, CommandError> {
        match value {
            Some(bytes) if bytes.first() == Some(&MAGIC) => {
                let envelope = self.avro().and_then(|avro| avro.decode_command(bytes)).map_err(|e| {
                    if e.is_transient() {
                        CommandError::Registry(e)
                    } else {
                        CommandError::Invalid(InvalidCommand::Undecodable { kind: e.kind(), reason: e.to_string() })
                    }
                })?;
                state::check_envelope(key, envelope).map_err(CommandError::Invalid)
            }
            _ => state::decode_command(key, value).map_err(CommandError::Invalid),
        }
    }

    /// Decodes an update as read from `order-updates`, in either format.
    pub fn decode_update(&self, value: &[u8]) -> Result<OrderUpdate, UpdateError> {
        if value.first() == Some(&MAGIC) {
            return self.avro().and_then(|avro| avro.decode_update(value)).map_err(UpdateError::from_avro);
        }
        serde_json::from_slice(value).map_err(|e| UpdateError::Invalid { kind: "malformed", reason: e.to_string() })
    }
}
