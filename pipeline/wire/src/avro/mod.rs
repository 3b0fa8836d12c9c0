//! Avro on the wire, with a schema registry and the Confluent framing.
//!
//! A record value is `0x00`, the writer schema's registry id (4 bytes, big-endian), then the
//! Avro binary of the value ([`frame`], [`unframe`]). The schemas live in the repository,
//! `schemas/<record>/v<N>.avsc`, oldest first ([`Record::history`]): this build writes with the
//! last one and reads any writer's schema resolved against it (Avro schema resolution: a field
//! the writer did not have takes its default, one the reader does not know is skipped).
//!
//! Subjects follow the topic name (Confluent's `TopicNameStrategy`, `<topic>-value`), and each
//! subject's compatibility level is `FULL_TRANSITIVE`: any version reads any other, so the two
//! services upgrade in any order. docs/architecture.md ("The contracts") has the rules for
//! changing a schema.

pub mod registry;
pub mod subjects;
mod values;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

pub use registry::{CompatibilityAnswer, Registry, RegistryError, RegistryHealth};
pub use values::{command_from, command_value, update_from, update_value, ShapeError};

/// The first byte of a framed Avro value.
pub const MAGIC: u8 = 0;
/// The compatibility level the project sets on its subjects.
pub const COMPATIBILITY: &str = "FULL_TRANSITIVE";

/// The records the services exchange, each with its schema history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Record {
    /// A command envelope, on `orders`.
    Command,
    /// An update, on `order-updates`.
    Update,
}

/// One version of a record's schema, as kept in `schemas/`.
#[derive(Debug)]
pub struct RepoSchema {
    pub record: Record,
    pub version: u32,
    /// Where it is in the repository.
    pub path: &'static str,
    pub text: &'static str,
}

static COMMAND_HISTORY: [RepoSchema; 1] = [RepoSchema {
    record: Record::Command,
    version: 1,
    path: "schemas/order-command/v1.avsc",
    text: include_str!("../../../../schemas/order-command/v1.avsc"),
}];

static UPDATE_HISTORY: [RepoSchema; 2] = [
    RepoSchema {
        record: Record::Update,
        version: 1,
        path: "schemas/order-update/v1.avsc",
        text: include_str!("../../../../schemas/order-update/v1.avsc"),
    },
    // Adds `expected_ship_ms` (null by default).
    RepoSchema {
        record: Record::Update,
        version: 2,
        path: "schemas/order-update/v2.avsc",
        text: include_str!("../../../../schemas/order-update/v2.avsc"),
    },
];

impl Record {
    pub const ALL: [Record; 2] = [Record::Command, Record::Update];

    /// Every version of the schema in the repository, oldest first.
    pub fn history(self) -> &'static [RepoSchema] {
        match self {
            Record::Command => &COMMAND_HISTORY,
            Record::Update => &UPDATE_HISTORY,
        }
    }

    /// The version this build writes and reads with.
    pub fn current(self) -> &'static RepoSchema {
        let history = self.history();
        &history[history.len() - 1]
    }

    /// The current schema, parsed.
    pub fn schema(self) -> &'static Schema {
        static COMMAND: OnceLock<Schema> = OnceLock::new();
        static UPDATE: OnceLock<Schema> = OnceLock::new();
        let cell = match self {
            Record::Command => &COMMAND,
            Record::Update => &UPDATE,
        };
        // The schemas are the repository's and parsed by the tests: a failure is a build defect.
        cell.get_or_init(|| match Schema::parse_str(self.current().text) {
            Ok(schema) => schema,
            Err(e) => panic!("{} does not parse: {e}", self.current().path),
        })
    }

    /// Its folder in `schemas/`.
    pub fn dir(self) -> &'static str {
        match self {
            Record::Command => "order-command",
            Record::Update => "order-update",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Record::Command => "command",
            Record::Update => "update",
        }
    }

    /// The registry subject of this record on `topic` (`TopicNameStrategy`).
    pub fn subject(topic: &str) -> String {
        format!("{topic}-value")
    }
}

/// Why bytes are not a framed Avro value.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("not an Avro record: first byte 0x{0:02x}, expected 0x00")]
    Magic(u8),
    #[error("Avro record of {0} bytes: too short for its 5-byte header")]
    Short(usize),
}

/// Frames an Avro body with the writer schema's id.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The writer schema's id and the Avro body of a framed value.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match bytes {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [MAGIC, ..] => Err(FrameError::Short(bytes.len())),
        [first, ..] => Err(FrameError::Magic(*first)),
        [] => Err(FrameError::Short(0)),
    }
}

/// Why an Avro value could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The registry knows no schema with this id (or the id is of another record).
    #[error("unknown schema id {id}: {reason}")]
    UnknownSchema { id: u32, reason: String },
    /// The registry could not be asked: worth trying again.
    #[error(transparent)]
    Registry(RegistryError),
    #[error("schema id {id}: the writer's schema cannot be read as this build's {record} schema: {reason}")]
    Unresolvable { id: u32, record: &'static str, reason: String },
    #[error("schema id {id}: {reason}")]
    Body { id: u32, reason: String },
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("cannot write an Avro {record}: {reason}")]
    Write { record: &'static str, reason: String },
}

impl AvroError {
    /// A short, stable name for the kind of error (a dead-letter header, a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            AvroError::Frame(_) => "avro-frame",
            AvroError::UnknownSchema { .. } => "unknown-schema-id",
            AvroError::Registry(_) => "schema-registry",
            AvroError::Unresolvable { .. } => "unresolvable-schema",
            AvroError::Body { .. } | AvroError::Shape(_) => "avro-body",
            AvroError::Write { .. } => "avro-write",
        }
    }

    /// Whether the record may read once the registry answers again.
    pub fn is_transient(&self) -> bool {
        matches!(self, AvroError::Registry(e) if e.is_transient())
    }
}

/// The writer of `record`'s current schema, made once.
fn writer(record: Record) -> Result<&'static GenericDatumWriter<'static>, AvroError> {
    static COMMAND: OnceLock<Result<GenericDatumWriter<'static>, String>> = OnceLock::new();
    static UPDATE: OnceLock<Result<GenericDatumWriter<'static>, String>> = OnceLock::new();
    let cell = match record {
        Record::Command => &COMMAND,
        Record::Update => &UPDATE,
    };
    // Not validated against the schema on each write: the values are built by `values.rs` for
    // this schema, and its tests write and read back every variant. Validation cost more than
    // the encoding itself (`cargo bench --workspace --bench wire_formats`).
    cell.get_or_init(|| GenericDatumWriter::builder(record.schema()).validate(false).build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|reason| AvroError::Write { record: record.name(), reason: reason.clone() })
}

/// A reader of values written with one writer schema, resolved to this build's.
struct ResolvingReader {
    reader: GenericDatumReader<'static>,
}

impl ResolvingReader {
    /// A reader of `writer`'s values as `record`'s current schema. A writer schema equal to it
    /// (this build's own records, the usual case) needs no resolution, which is skipped: it
    /// costs as much as the decoding (`cargo bench --workspace --bench wire_formats`).
    fn new(id: u32, writer: &'static Schema, record: Record) -> Result<ResolvingReader, AvroError> {
        let builder = GenericDatumReader::builder(writer);
        let reader = if writer.canonical_form() == record.schema().canonical_form() {
            builder.build()
        } else {
            builder.reader_schema(record.schema()).build()
        };
        let reader =
            reader.map_err(|e| AvroError::Unresolvable { id, record: record.name(), reason: e.to_string() })?;
        Ok(ResolvingReader { reader })
    }
}

/// Avro with a registry: the ids this build writes with, and the readers of the writers'
/// schemas met so far (each fetched once).
pub struct AvroCodec {
    /// None for a codec made with [`AvroCodec::preloaded`].
    registry: Option<Registry>,
    /// The registry ids of this build's schemas, per record, for the records this process writes.
    writer_ids: HashMap<Record, u32>,
    readers: RwLock<HashMap<(u32, Record), Arc<ResolvingReader>>>,
    /// How long a read waits for an unreachable registry, retrying, before it gives up.
    patience: Duration,
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec").field("registry", &self.registry).field("writer_ids", &self.writer_ids).finish()
    }
}

/// Registers `record`'s current schema under `subject`, and returns its id. A schema the
/// registry refuses is reported with the local check, which names the field at fault.
pub fn register_current(registry: &Registry, subject: &str, record: Record) -> Result<u32, RegistryError> {
    match registry.register(subject, record.current().text) {
        Err(RegistryError::Incompatible { subject, level, message }) => {
            let local = incompatibilities_with_registered(registry, &subject, record.schema());
            let message = if local.is_empty() { message } else { format!("{message}; {}", local.join("; ")) };
            Err(RegistryError::Incompatible { subject, level, message })
        }
        other => other,
    }
}

/// Why `candidate` and the versions registered under `subject` do not read each other, per
/// version (checked here, with the Avro library's resolution rules, which name the field).
pub fn incompatibilities_with_registered(registry: &Registry, subject: &str, candidate: &Schema) -> Vec<String> {
    let Ok(versions) = registry.versions(subject) else { return Vec::new() };
    let mut out = Vec::new();
    for version in versions {
        let Ok((_, text)) = registry.version(subject, version) else { continue };
        match Schema::parse_str(&text) {
            Ok(registered) => {
                if let Err(reason) = mutual_read(&registered, candidate) {
                    out.push(format!("registered version {version}: {reason}"));
                }
            }
            Err(e) => out.push(format!("registered version {version} does not parse: {e}")),
        }
    }
    out
}

/// Whether an older and a newer schema read each other's values (`FULL` compatibility), and if
/// not, why (the Avro library's reason names the field).
pub fn mutual_read(older: &Schema, newer: &Schema) -> Result<(), String> {
    let one_way = |writer: &Schema, reader: &Schema, what: &str| {
        SchemaCompatibility::can_read(writer, reader).map(|_| ()).map_err(|e| format!("{what}: {e}"))
    };
    one_way(newer, older, "a reader of the older one cannot read the newer one's values")?;
    one_way(older, newer, "a reader of the newer one cannot read the older one's values")
}

impl AvroCodec {
    /// Connects to the registry and registers the current schema of each record in `writes`
    /// under its subject (`subjects` maps a record to its subject), retrying an unreachable
    /// registry with backoff for up to `patience`.
    pub fn connect(
        registry: Registry,
        writes: &[(Record, String)],
        patience: Duration,
    ) -> Result<AvroCodec, RegistryError> {
        let mut writer_ids = HashMap::new();
        for (record, subject) in writes {
            let id = retrying(patience, || register_current(&registry, subject, *record))?;
            tracing::info!(record = record.name(), %subject, id, version = record.current().version, "schema registered");
            writer_ids.insert(*record, id);
        }
        Ok(AvroCodec { registry: Some(registry), writer_ids, readers: RwLock::new(HashMap::new()), patience })
    }

    /// A codec that knows its schema ids without a registry (benches, tests): each record's
    /// current schema has the id given, for writing and reading; any other id is unknown.
    pub fn preloaded(ids: &[(Record, u32)]) -> Result<AvroCodec, AvroError> {
        let codec = AvroCodec {
            registry: None,
            writer_ids: ids.iter().copied().collect(),
            readers: RwLock::new(HashMap::new()),
            patience: Duration::ZERO,
        };
        for (record, id) in ids {
            let reader = ResolvingReader::new(*id, record.schema(), *record)?;
            codec.readers.write().unwrap_or_else(|e| e.into_inner()).insert((*id, *record), Arc::new(reader));
        }
        Ok(codec)
    }

    /// The registry, unless the codec was [preloaded](AvroCodec::preloaded).
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// Writes `value` (of `record`'s current schema), framed with its id.
    fn write(&self, record: Record, value: Value) -> Result<Vec<u8>, AvroError> {
        let id = *self.writer_ids.get(&record).ok_or_else(|| AvroError::Write {
            record: record.name(),
            reason: "this process did not register the schema it writes with".into(),
        })?;
        let mut out = Vec::with_capacity(128);
        out.push(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        writer(record)?
            .write_value(&mut out, value)
            .map_err(|e| AvroError::Write { record: record.name(), reason: e.to_string() })?;
        Ok(out)
    }

    pub fn encode_command(&self, envelope: &state::CommandEnvelope) -> Result<Vec<u8>, AvroError> {
        self.write(Record::Command, command_value(envelope))
    }

    pub fn encode_update(&self, update: &state::OrderUpdate) -> Result<Vec<u8>, AvroError> {
        self.write(Record::Update, update_value(update))
    }

    /// Reads a framed value as `record`, resolved to this build's schema.
    pub fn read(&self, record: Record, bytes: &[u8]) -> Result<Value, AvroError> {
        let (id, mut body) = unframe(bytes)?;
        let reader = self.reader(id, record)?;
        let value = reader.reader.read_value(&mut body).map_err(|e| AvroError::Body { id, reason: e.to_string() })?;
        if !body.is_empty() {
            return Err(AvroError::Body { id, reason: format!("{} bytes left after the value", body.len()) });
        }
        Ok(value)
    }

    pub fn decode_command(&self, bytes: &[u8]) -> Result<state::CommandEnvelope, AvroError> {
        Ok(command_from(&self.read(Record::Command, bytes)?)?)
    }

    pub fn decode_update(&self, bytes: &[u8]) -> Result<state::OrderUpdate, AvroError> {
        Ok(update_from(&self.read(Record::Update, bytes)?)?)
    }

    fn reader(&self, id: u32, record: Record) -> Result<Arc<ResolvingReader>, AvroError> {
        if let Some(reader) = self.readers.read().unwrap_or_else(|e| e.into_inner()).get(&(id, record)) {
            return Ok(Arc::clone(reader));
        }
        let Some(registry) = &self.registry else {
            return Err(AvroError::UnknownSchema { id, reason: "not a schema id this codec was given".into() });
        };
        let text = match retrying(self.patience, || registry.schema_by_id(id)) {
            Ok(text) => text,
            Err(RegistryError::UnknownId { .. }) => {
                return Err(AvroError::UnknownSchema { id, reason: "the registry has no schema with this id".into() })
            }
            Err(e) => return Err(AvroError::Registry(e)),
        };
        let writer = Schema::parse_str(&text).map_err(|e| AvroError::UnknownSchema {
            id,
            reason: format!("the registry's schema does not parse: {e}"),
        })?;
        // A writer schema lives as long as the process: there are as many as the subject has
        // versions, and a reader borrows its schemas.
        let writer: &'static Schema = Box::leak(Box::new(writer));
        if let Err(e) = SchemaCompatibility::can_read(writer, record.schema()) {
            return Err(AvroError::Unresolvable { id, record: record.name(), reason: e.to_string() });
        }
        let reader = Arc::new(ResolvingReader::new(id, writer, record)?);
        self.readers.write().unwrap_or_else(|e| e.into_inner()).insert((id, record), Arc::clone(&reader));
        tracing::debug!(id, record = record.name(), "writer schema fetched from the registry");
        Ok(reader)
    }
}

/// Calls `call` until it succeeds, fails for good, or `patience` has passed, waiting 100 ms,
/// then twice as long each time (at most 5 s) between tries of a transient failure.
pub fn retrying<T>(patience: Duration, mut call: impl FnMut() -> Result<T, RegistryError>) -> Result<T, RegistryError> {
    let started = std::time::Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match call() {
            Err(e) if e.is_transient() && started.elapsed() + wait <= patience => {
                tracing::warn!(error = %e, retry_in = ?wait, "schema registry call failed; trying again");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
