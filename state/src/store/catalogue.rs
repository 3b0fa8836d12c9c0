//! dev-materiels' copy of the catalogue table (a global store: every instance holds all of it).
//!
//! The global table reader writes each batch of catalogue records here, in one [`WriteBatch`]
//! with the topic positions it reaches, then into the [`CatalogueTable`] the state machine reads.
//! A restart loads the table from RocksDB and reads the topic from the stored positions on, not
//! from the beginning (Kafka Streams' global store and its checkpoint, in one place).
//!
//! Column families:
//! - `rows`: record key (the table's primary key) -> [`CatalogueItem`] (a version byte, then
//!   postcard);
//! - `positions`: partition (big-endian i32) -> next offset to read (big-endian i64).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, WriteBatch, DB};

use super::{cf, open_db, Access, StoreError, StoreOptions};
use crate::catalogue::{CatalogueItem, CatalogueTable};

const CF_ROWS: &str = "rows";
const CF_POSITIONS: &str = "positions";
/// The first byte of every stored row: the encoding's version.
const ROW_V1: u8 = 1;

/// A change of the catalogue table, at a position of its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueChange {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    /// The row's new content, or `None` for a deleted row.
    pub item: Option<CatalogueItem>,
}

/// The catalogue table in RocksDB, and the topic positions it reflects.
pub struct CatalogueStore {
    db: DB,
    path: PathBuf,
    table: CatalogueTable,
}

impl CatalogueStore {
    /// Opens (or creates) the store and loads its rows into a new [`CatalogueTable`].
    pub fn open(path: &Path, options: &StoreOptions) -> Result<CatalogueStore, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        let db = open_db(path, options, &[(CF_ROWS, Access::Scans), (CF_POSITIONS, Access::Small)])?;
        let table = CatalogueTable::default();
        let store = CatalogueStore { db, path: path.to_path_buf(), table };
        let rows = cf(&store.db, &store.path, CF_ROWS)?;
        for entry in store.db.iterator_cf(rows, IteratorMode::Start) {
            let (key, value) = entry.map_err(|source| store.err(source))?;
            store.table.upsert(&key, store.decode(&key, &value)?);
        }
        Ok(store)
    }

    /// The table the state machine reads; it follows every [`CatalogueStore::apply`].
    pub fn table(&self) -> CatalogueTable {
        self.table.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Next offset to read, per partition of the topic.
    pub fn positions(&self) -> Result<HashMap<i32, i64>, StoreError> {
        let positions = cf(&self.db, &self.path, CF_POSITIONS)?;
        let mut out = HashMap::new();
        for entry in self.db.iterator_cf(positions, IteratorMode::Start) {
            let (key, value) = entry.map_err(|source| self.err(source))?;
            let (Ok(partition), Ok(offset)) = (<[u8; 4]>::try_from(&key[..]), <[u8; 8]>::try_from(&value[..])) else {
                return Err(self.corrupt(&key, "a position is not a 4-byte partition and an 8-byte offset"));
            };
            out.insert(i32::from_be_bytes(partition), i64::from_be_bytes(offset));
        }
        Ok(out)
    }

    /// Writes `changes` and the positions they reach (`positions`: partition -> next offset, which
    /// may cover records that changed nothing, such as rows sent to the dead-letter topic), at
    /// once, then shows them in the table.
    pub fn apply(&mut self, changes: &[CatalogueChange], positions: &HashMap<i32, i64>) -> Result<(), StoreError> {
        let rows = cf(&self.db, &self.path, CF_ROWS)?;
        let position_cf = cf(&self.db, &self.path, CF_POSITIONS)?;
        let mut batch = WriteBatch::default();
        for change in changes {
            match &change.item {
                Some(item) => {
                    let mut value = vec![ROW_V1];
                    value.extend(
                        postcard::to_stdvec(item)
                            .map_err(|e| StoreError::Encode { what: "a catalogue row", reason: e.to_string() })?,
                    );
                    batch.put_cf(rows, &change.key, value);
                }
                None => batch.delete_cf(rows, &change.key),
            }
        }
        for (partition, offset) in positions {
            batch.put_cf(position_cf, partition.to_be_bytes(), offset.to_be_bytes());
        }
        self.db.write(batch).map_err(|source| self.err(source))?;
        for change in changes {
            match &change.item {
                Some(item) => self.table.upsert(&change.key, item.clone()),
                None => self.table.remove(&change.key),
            }
        }
        Ok(())
    }

    /// Deletes every row and position, and empties the table.
    pub fn clear(&mut self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for name in [CF_ROWS, CF_POSITIONS] {
            let family = cf(&self.db, &self.path, name)?;
            for entry in self.db.iterator_cf(family, IteratorMode::Start) {
                let (key, _) = entry.map_err(|source| self.err(source))?;
                batch.delete_cf(family, key);
            }
        }
        self.db.write(batch).map_err(|source| self.err(source))?;
        self.table.clear();
        Ok(())
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<CatalogueItem, StoreError> {
        match value.split_first() {
            Some((&ROW_V1, rest)) => postcard::from_bytes(rest).map_err(|e| self.corrupt(key, &e.to_string())),
            Some((version, _)) => Err(self.corrupt(key, &format!("unknown row encoding version {version}"))),
            None => Err(self.corrupt(key, "empty row")),
        }
    }

    fn err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
    }

    fn corrupt(&self, key: &[u8], reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(offset: i64, key: &str, item: Option<(&str, bool, i64)>) -> CatalogueChange {
        CatalogueChange {
            partition: 0,
            offset,
            key: key.as_bytes().to_vec(),
            item: item.map(|(sku, active, stock)| {
                CatalogueItem::new(Some(sku.into()), Some("d".into()), active, stock).expect("valid")
            }),
        }
    }

    #[test]
    fn rows_and_positions_survive_a_reopen_together() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions::with_cache_bytes(1 << 20);
        {
            let mut store = CatalogueStore::open(dir.path(), &options).expect("open");
            assert!(store.positions().expect("positions").is_empty());
            let changes = [change(0, "1", Some(("A", true, 3))), change(1, "2", Some(("B", true, 1)))];
            store.apply(&changes, &HashMap::from([(0, 2)])).expect("apply");
            store.apply(&[change(2, "2", None)], &HashMap::from([(0, 4)])).expect("apply");
            assert_eq!(store.table().len(), 1);
        }
        let mut store = CatalogueStore::open(dir.path(), &options).expect("reopen");
        assert_eq!(store.positions().expect("positions"), HashMap::from([(0, 4)]));
        let table = store.table();
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("A").map(|i| i.stock), Some(3));
        assert!(table.get("B").is_none());
        store.clear().expect("clear");
        assert!(table.is_empty(), "the table the state machine reads is emptied too");
        drop(store);
        let store = CatalogueStore::open(dir.path(), &options).expect("reopen");
        assert!(store.positions().expect("positions").is_empty());
        assert!(store.table().is_empty());
    }
}
