//! The live catalogue: the materials team's `catalogue` table, captured from its database by
//! Kafka Connect (Debezium) into a compacted topic, read by the global stream thread into a
//! RocksDB store on every instance, and checked by the state machine when it decides a
//! `PlaceOrder` (docs/integration.md).
//!
//! A record of the topic is one row, keyed by the table's primary key, valued by the row as
//! JSON (Debezium's `ExtractNewRecordState` and Connect's `JsonConverter` without schemas):
//! `{"id": 7, "sku": "BRAKE-PAD-UIC", "description": "...", "active": true, "stock": 40, ...}`.
//! Columns other than these are ignored, so the table can grow columns. A tombstone is a deleted
//! row. A row without a SKU, with a negative stock or that is not such an object goes to the
//! catalogue's dead-letter topic, and what its key held before is removed (that SKU can no
//! longer be ordered until a good row comes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use engine::runtime::global::{Decoded, GlobalRecord, GlobalStateStore};
use serde_json::Value;
use state::store::catalogue::{CatalogueChange, CatalogueStore};
use state::{CatalogueItem, StoreError, StoreOptions};

/// Where the live catalogue comes from.
#[derive(Debug, Clone, Args)]
pub struct CatalogueArgs {
    /// Read the catalogue from this compacted topic (rows of the materials team's `catalogue`
    /// table, captured by Kafka Connect) instead of a fixed list: an inactive SKU, or one with
    /// less stock than a line asks for, is then rejected. Processing starts once the whole topic
    /// is read. Without it (or empty), the fixed list (`--catalogue` or the built-in one) is used.
    #[arg(long, env = "CATALOGUE_TOPIC")]
    pub catalogue_topic: Option<String>,
    /// Where catalogue rows that cannot be read go, with their reason in headers.
    #[arg(long, env = "CATALOGUE_DLQ_TOPIC", default_value = DEFAULT_DLQ_TOPIC)]
    pub catalogue_dlq_topic: String,
}

/// The catalogue's dead-letter topic unless configured.
pub const DEFAULT_DLQ_TOPIC: &str = "catalogue.dlq";

impl CatalogueArgs {
    /// The catalogue topic, if one is configured (an empty value is none, as compose passes an
    /// unset variable).
    pub fn topic(&self) -> Option<&str> {
        self.catalogue_topic.as_deref().filter(|t| !t.is_empty())
    }
}

impl Default for CatalogueArgs {
    fn default() -> Self {
        CatalogueArgs { catalogue_topic: None, catalogue_dlq_topic: DEFAULT_DLQ_TOPIC.into() }
    }
}

/// The topics of the live catalogue, when one is configured: the catalogue topic (compacted,
/// one partition, as the connector creates it) and its dead-letter topic.
pub fn topic_specs(args: &CatalogueArgs, topics: &wire::TopicArgs) -> Vec<wire::TopicSpec> {
    let Some(topic) = args.topic() else { return Vec::new() };
    vec![
        wire::TopicSpec::new(topic, 1, topics.replication_factor).compacted(),
        wire::TopicSpec::new(args.catalogue_dlq_topic.clone(), 1, topics.replication_factor)
            .retention_ms(topics.dlq_retention_ms),
    ]
}

/// The catalogue store, as the global stream thread keeps it.
pub struct CatalogueGlobalStore(pub CatalogueStore);

impl CatalogueGlobalStore {
    /// Opens the store under the state directory (`<state dir>/global/catalogue`).
    pub fn open(state_dir: &Path, options: &StoreOptions) -> Result<CatalogueGlobalStore, StoreError> {
        CatalogueStore::open(&store_path(state_dir), options).map(CatalogueGlobalStore)
    }
}

/// Where the catalogue store lives.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join("global").join("catalogue")
}

impl GlobalStateStore for CatalogueGlobalStore {
    type Change = CatalogueChange;

    fn positions(&self) -> Result<HashMap<i32, i64>, StoreError> {
        self.0.positions()
    }

    /// A row that cannot be read removes what its key held: the row changed, and what it was
    /// before is no longer true (an instance that starts after compaction would not have it
    /// either).
    fn decode(&self, record: &GlobalRecord<'_>) -> Decoded<CatalogueChange> {
        let Some(key) = record.key else {
            return Decoded::Refused { reason: "the record has no key (the row's primary key)".into(), instead: None };
        };
        let change =
            |item| CatalogueChange { partition: record.partition, offset: record.offset, key: key.to_vec(), item };
        match record.value.map(parse_row).transpose() {
            Ok(item) => Decoded::Change(change(item)),
            Err(reason) => Decoded::Refused { reason, instead: Some(change(None)) },
        }
    }

    fn apply(&mut self, changes: Vec<CatalogueChange>, positions: &HashMap<i32, i64>) -> Result<(), StoreError> {
        self.0.apply(&changes, positions)
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.0.clear()
    }

    fn len(&self) -> usize {
        self.0.table().len()
    }
}

/// Reads one row of the catalogue topic.
pub fn parse_row(bytes: &[u8]) -> Result<CatalogueItem, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON catalogue row: {e}"))?;
    let row = value.as_object().ok_or("a catalogue row is a JSON object")?;
    let text = |name: &str| match row.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{name} is not a string: {other}")),
    };
    let sku = text("sku")?;
    let description = text("description")?;
    let active = row.get("active").and_then(Value::as_bool).ok_or("active is missing or not a boolean")?;
    let stock = row.get("stock").and_then(Value::as_i64).ok_or("stock is missing or not an integer")?;
    CatalogueItem::new(sku, description, active, stock)
}

#[cfg(test)]
mod tests {
    use super::{parse_row, CatalogueGlobalStore};
    use engine::runtime::global::{Decoded, GlobalRecord, GlobalStateStore};
    use state::StoreOptions;

    #[test]
    fn a_bad_version_of_a_known_row_removes_it_and_is_dead_lettered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = CatalogueGlobalStore::open(dir.path(), &StoreOptions::with_cache_bytes(1 << 20)).expect("open");
        let record =
            |offset, value: &'static [u8]| GlobalRecord { partition: 0, offset, key: Some(b"7"), value: Some(value) };
        let Decoded::Change(good) = store.decode(&record(0, br#"{"id":7,"sku":"A","active":true,"stock":5}"#)) else {
            panic!("a good row is a change");
        };
        store.apply(vec![good], &[(0, 1)].into()).expect("apply");
        assert!(store.0.table().get("A").is_some());
        let Decoded::Refused { reason, instead } =
            store.decode(&record(1, br#"{"id":7,"sku":"A","active":true,"stock":-1}"#))
        else {
            panic!("a negative stock is refused");
        };
        assert!(reason.contains("negative"), "{reason}");
        store.apply(instead.into_iter().collect(), &[(0, 2)].into()).expect("apply");
        assert!(store.0.table().get("A").is_none(), "the row's earlier version no longer counts");
        let no_key = GlobalRecord { partition: 0, offset: 2, key: None, value: Some(b"{}") };
        assert!(matches!(store.decode(&no_key), Decoded::Refused { instead: None, .. }));
    }

    #[test]
    fn a_row_reads_by_its_columns_and_a_bad_one_says_why() {
        let item = parse_row(br#"{"id":1,"sku":"A","description":"d","active":false,"stock":3,"extra":1}"#)
            .expect("a good row");
        assert_eq!((item.sku.as_str(), item.active, item.stock), ("A", false, 3));
        for (row, why) in [
            (&br#"{"id":3,"sku":null,"active":true,"stock":1}"#[..], "NULL"),
            (br#"{"id":3,"sku":"A","active":true,"stock":-2}"#, "negative"),
            (br#"{"id":3,"sku":"A","stock":1}"#, "active"),
            (br#"{"id":3,"sku":7,"active":true,"stock":1}"#, "sku is not a string"),
            (b"[1]", "JSON object"),
            (b"{", "not a JSON"),
        ] {
            let err = parse_row(row).expect_err("a bad row");
            assert!(err.contains(why), "{err} should say {why}");
        }
    }
}
