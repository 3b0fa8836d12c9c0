//! Schema registration as an operation (`dev-materiels schemas check|apply`): the repository's
//! schemas against the registry's subjects, as `topics check|apply` does for the topics.
//!
//! A set of schemas is the built-in one (this build's `schemas/`) or a directory laid out the
//! same way (`<dir>/order-command/v1.avsc`, ...), so that a candidate version can be checked
//! before it is committed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use apache_avro::Schema;

use super::{incompatibilities_with_registered, mutual_read, Record, Registry, RegistryError, COMPATIBILITY};

/// One version of a record's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    pub version: u32,
    pub path: String,
    pub text: String,
}

/// Every version of each record's schema, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSet {
    pub histories: BTreeMap<Record, Vec<SchemaFile>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaSetError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: expected files named v<N>.avsc, numbered from 1 without a gap")]
    Layout { path: String },
}

impl SchemaSet {
    /// The schemas this build was made with.
    pub fn builtin() -> SchemaSet {
        let histories = Record::ALL
            .into_iter()
            .map(|record| {
                let files = record
                    .history()
                    .iter()
                    .map(|s| SchemaFile { version: s.version, path: s.path.to_owned(), text: s.text.to_owned() })
                    .collect();
                (record, files)
            })
            .collect();
        SchemaSet { histories }
    }

    /// The schemas in `dir` (`order-command/v<N>.avsc`, `order-update/v<N>.avsc`).
    pub fn from_dir(dir: &Path) -> Result<SchemaSet, SchemaSetError> {
        let mut histories = BTreeMap::new();
        for record in Record::ALL {
            let sub = dir.join(record.dir());
            let io = |source| SchemaSetError::Io { path: sub.display().to_string(), source };
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&sub).map_err(io)? {
                let path = entry.map_err(io)?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let Some(version) = name.strip_prefix('v').and_then(|n| n.strip_suffix(".avsc")) else { continue };
                let version: u32 =
                    version.parse().map_err(|_| SchemaSetError::Layout { path: path.display().to_string() })?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| SchemaSetError::Io { path: path.display().to_string(), source })?;
                files.push(SchemaFile { version, path: path.display().to_string(), text });
            }
            files.sort_by_key(|f| f.version);
            if files.is_empty() || files.iter().enumerate().any(|(i, f)| f.version as usize != i + 1) {
                return Err(SchemaSetError::Layout { path: sub.display().to_string() });
            }
            histories.insert(record, files);
        }
        Ok(SchemaSet { histories })
    }

    fn history(&self, record: Record) -> &[SchemaFile] {
        self.histories.get(&record).map_or(&[], Vec::as_slice)
    }

    /// Pairs of versions in this set that do not read each other (`FULL_TRANSITIVE` broken), with
    /// the reason, which names the field at fault.
    pub fn history_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for record in Record::ALL {
            let parsed: Vec<(&SchemaFile, Option<Schema>)> = self
                .history(record)
                .iter()
                .map(|f| match Schema::parse_str(&f.text) {
                    Ok(s) => (f, Some(s)),
                    Err(e) => {
                        problems.push(format!("{}: does not parse: {e}", f.path));
                        (f, None)
                    }
                })
                .collect();
            for (i, (file, schema)) in parsed.iter().enumerate() {
                let Some(schema) = schema else { continue };
                for (earlier, earlier_schema) in &parsed[..i] {
                    if let Some(earlier_schema) = earlier_schema {
                        if let Err(reason) = mutual_read(earlier_schema, schema) {
                            problems.push(format!("{} against {}: {reason}", file.path, earlier.path));
                        }
                    }
                }
            }
        }
        problems
    }
}

/// What `schemas check|apply` found for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The subject holds exactly the set's versions, at the project's level.
    Ok { subject: String, ids: Vec<u32> },
    /// A version of the set is not registered.
    Unregistered { subject: String, path: String },
    /// A version registered under the subject is none of the set's.
    Foreign { subject: String, version: u32, id: u32 },
    /// The subject's compatibility level is not the project's.
    Level { subject: String, found: Option<String> },
    /// The registry refuses (or would refuse) a version of the set.
    Incompatible { subject: String, path: String, message: String },
    /// Two versions of the set do not read each other.
    History { problem: String },
}

impl Finding {
    /// Whether `apply` can fix it.
    pub fn fixable(&self) -> bool {
        matches!(self, Finding::Unregistered { .. } | Finding::Level { .. })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Ok { subject, ids } => write!(f, "{subject}: ok (schema ids {ids:?}, {COMPATIBILITY})"),
            Finding::Unregistered { subject, path } => write!(f, "{subject}: {path} is not registered"),
            Finding::Foreign { subject, version, id } => {
                write!(f, "{subject}: registered version {version} (id {id}) is not in the repository's schemas")
            }
            Finding::Level { subject, found } => write!(
                f,
                "{subject}: compatibility level {}, expected {COMPATIBILITY}",
                found.as_deref().unwrap_or("not set (the registry's default)")
            ),
            Finding::Incompatible { subject, path, message } => {
                write!(f, "{subject}: {path} is refused by the registry: {message}")
            }
            Finding::History { problem } => write!(f, "schemas: {problem}"),
        }
    }
}

/// The subjects of `set`, on these topics: (record, subject).
fn subjects(orders_topic: &str, updates_topic: &str) -> [(Record, String); 2] {
    [(Record::Command, Record::subject(orders_topic)), (Record::Update, Record::subject(updates_topic))]
}

fn same_schema(a: &str, b: &str) -> bool {
    match (Schema::parse_str(a), Schema::parse_str(b)) {
        (Ok(a), Ok(b)) => a.canonical_form() == b.canonical_form(),
        _ => a == b,
    }
}

fn incompatible(registry: &Registry, subject: &str, file: &SchemaFile, message: String) -> Finding {
    let mut reasons = Vec::new();
    if !message.trim().is_empty() {
        reasons.push(message);
    }
    if let Ok(candidate) = Schema::parse_str(&file.text) {
        reasons.extend(incompatibilities_with_registered(registry, subject, &candidate));
    }
    if reasons.is_empty() {
        reasons.push("incompatible with the subject's versions (the registry's check gave no reason)".into());
    }
    let message = reasons.join("; ");
    Finding::Incompatible { subject: subject.to_owned(), path: file.path.clone(), message }
}

/// Compares `set` with the registry's subjects for these topics. Changes nothing.
pub fn check(
    registry: &Registry,
    set: &SchemaSet,
    orders_topic: &str,
    updates_topic: &str,
) -> Result<Vec<Finding>, RegistryError> {
    let mut findings: Vec<Finding> =
        set.history_problems().into_iter().map(|problem| Finding::History { problem }).collect();
    for (record, subject) in subjects(orders_topic, updates_topic) {
        let before = findings.len();
        let level = registry.compatibility(&subject)?;
        if level.as_deref() != Some(COMPATIBILITY) {
            findings.push(Finding::Level { subject: subject.clone(), found: level });
        }
        let history = set.history(record);
        let mut ids = Vec::new();
        for file in history {
            match registry.lookup(&subject, &file.text)? {
                Some(id) => ids.push(id),
                None => {
                    let answer = registry.check(&subject, &file.text)?;
                    if answer.compatible {
                        findings.push(Finding::Unregistered { subject: subject.clone(), path: file.path.clone() });
                    } else {
                        findings.push(incompatible(registry, &subject, file, answer.messages.join("; ")));
                    }
                }
            }
        }
        for version in registry.versions(&subject)? {
            let (id, text) = registry.version(&subject, version)?;
            if !history.iter().any(|f| same_schema(&f.text, &text)) {
                findings.push(Finding::Foreign { subject: subject.clone(), version, id });
            }
        }
        if findings.len() == before {
            findings.push(Finding::Ok { subject, ids });
        }
    }
    Ok(findings)
}

/// Sets the project's compatibility level on the subjects and registers the set's versions in
/// order, then checks again. A version the registry refuses is reported, never forced.
///
/// A set whose versions do not read each other is still offered to the registry, which refuses
/// what breaks its rule (409): the registry, not this command, is the judge.
pub fn apply(
    registry: &Registry,
    set: &SchemaSet,
    orders_topic: &str,
    updates_topic: &str,
) -> Result<Vec<Finding>, RegistryError> {
    let mut refused = Vec::new();
    for (record, subject) in subjects(orders_topic, updates_topic) {
        if registry.compatibility(&subject)?.as_deref() != Some(COMPATIBILITY) {
            registry.set_compatibility(&subject, COMPATIBILITY)?;
        }
        for file in set.history(record) {
            match registry.register(&subject, &file.text) {
                Ok(id) => tracing::info!(%subject, path = %file.path, id, "schema registered"),
                Err(RegistryError::Incompatible { message, .. }) => {
                    refused.push(incompatible(registry, &subject, file, message));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut findings = check(registry, set, orders_topic, updates_topic)?;
    // What was refused shows as unregistered in the check: say why instead.
    let refused_path =
        |path: &String| refused.iter().any(|r| matches!(r, Finding::Incompatible { path: p, .. } if p == path));
    findings.retain(|f| match f {
        Finding::Unregistered { path, .. } | Finding::Incompatible { path, .. } => !refused_path(path),
        _ => true,
    });
    findings.extend(refused);
    Ok(findings)
}
