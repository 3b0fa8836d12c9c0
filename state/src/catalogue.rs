//! The SKUs dev-materiels accepts in an order: a fixed list (built in, or read from a file at
//! start), or the live catalogue table that the materials team keeps in its database and that
//! reaches dev-materiels as a topic ([`CatalogueTable`], filled by the global table reader).
//!
//! A `PlaceOrder` is checked against the catalogue as it is when the order is decided. A later
//! change of the catalogue never revisits a decision.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

/// The SKUs of the materials dev-materiels can supply.
#[derive(Debug, Clone)]
pub struct Catalogue {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Every SKU of the list is available, in any quantity.
    Fixed(Arc<BTreeSet<String>>),
    /// SKUs come and go, and each is active or not, with a stock.
    Table(CatalogueTable),
}

/// One row of the catalogue table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueItem {
    pub sku: String,
    pub description: String,
    /// An inactive SKU cannot be ordered.
    pub active: bool,
    /// Units available: an order line for more is rejected. dev-materiels reads it and never
    /// changes it (the materials team's system owns the stock).
    pub stock: u64,
}

impl CatalogueItem {
    /// Checks a row as the catalogue topic carries it: a SKU that is present and not blank, a
    /// stock that is not negative.
    pub fn new(
        sku: Option<String>,
        description: Option<String>,
        active: bool,
        stock: i64,
    ) -> Result<CatalogueItem, String> {
        let sku = match sku {
            None => return Err("the row has no SKU (NULL)".to_string()),
            Some(sku) if sku.trim().is_empty() => return Err("the row's SKU is blank".to_string()),
            Some(sku) if sku.trim() != sku => return Err(format!("the row's SKU {sku:?} has surrounding spaces")),
            Some(sku) => sku,
        };
        let stock = u64::try_from(stock).map_err(|_| format!("SKU {sku:?} has a negative stock ({stock})"))?;
        Ok(CatalogueItem { sku, description: description.unwrap_or_default(), active, stock })
    }
}

/// The catalogue table in memory, shared by the global table reader (which writes it, after its
/// RocksDB store) and every stream thread (which read it). Rows are keyed by the topic's record
/// key (the table's primary key), and found by SKU.
#[derive(Debug, Clone, Default)]
pub struct CatalogueTable {
    inner: Arc<RwLock<Rows>>,
}

#[derive(Debug, Default)]
struct Rows {
    by_key: HashMap<Vec<u8>, CatalogueItem>,
    key_of_sku: HashMap<String, Vec<u8>>,
}

impl CatalogueTable {
    /// Puts a row (a new one, or a new version of one: its SKU may have changed).
    pub fn upsert(&self, key: &[u8], item: CatalogueItem) {
        let mut rows = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = rows.by_key.get(key).map(|p| p.sku.clone()) {
            if rows.key_of_sku.get(&previous).map(Vec::as_slice) == Some(key) {
                rows.key_of_sku.remove(&previous);
            }
        }
        rows.key_of_sku.insert(item.sku.clone(), key.to_vec());
        rows.by_key.insert(key.to_vec(), item);
    }

    /// Removes a row (a deleted one: the topic's tombstone).
    pub fn remove(&self, key: &[u8]) {
        let mut rows = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = rows.by_key.remove(key) {
            if rows.key_of_sku.get(&previous.sku).map(Vec::as_slice) == Some(key) {
                rows.key_of_sku.remove(&previous.sku);
            }
        }
    }

    /// Removes every row.
    pub fn clear(&self) {
        let mut rows = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        rows.by_key.clear();
        rows.key_of_sku.clear();
    }

    /// The row of `sku`, if the table has one.
    pub fn get(&self, sku: &str) -> Option<CatalogueItem> {
        let rows = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        rows.key_of_sku.get(sku).and_then(|key| rows.by_key.get(key)).cloned()
    }

    /// Rows in the table.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a line of `quantity` units of `sku` can be ordered; why not, otherwise.
    fn check(&self, sku: &str, quantity: u32) -> Result<(), String> {
        let rows = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        match rows.key_of_sku.get(sku).and_then(|key| rows.by_key.get(key)) {
            None => Err(format!("unknown SKU {sku:?}")),
            Some(item) if !item.active => Err(format!("SKU {sku:?} is not active in the catalogue")),
            Some(item) if item.stock < u64::from(quantity) => {
                Err(format!("SKU {sku:?} is out of stock ({} in stock, {quantity} ordered)", item.stock))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The catalogue used when none is configured: rolling-stock materials a sleeping-car operator
/// orders.
pub const DEFAULT_SKUS: &[&str] = &[
    "BRAKE-PAD-UIC",
    "BRAKE-DISC-640",
    "WHEELSET-BA004",
    "AXLE-BOX-BEARING",
    "BOGIE-SPRING-Y32",
    "COUPLER-UIC-520",
    "BUFFER-105MM",
    "PANTOGRAPH-STRIP",
    "DOOR-SEAL-1800",
    "WINDOW-PANE-LAM",
    "BERTH-MATTRESS-80",
    "BERTH-LADDER",
    "LINEN-SET-SINGLE",
    "LINEN-SET-DOUBLE",
    "WASHBASIN-TAP",
    "WC-VACUUM-VALVE",
    "HVAC-FILTER-G4",
    "LED-READING-LAMP",
    "BATTERY-110V-NICD",
    "FIRE-EXTINGUISHER-6L",
];

/// Why a catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read catalogue file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("catalogue is empty")]
    Empty,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::new(DEFAULT_SKUS.iter().copied())
    }
}

impl Catalogue {
    pub fn new<I, S>(skus: I) -> Catalogue
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Catalogue { source: Source::Fixed(Arc::new(skus.into_iter().map(Into::into).collect())) }
    }

    /// The live catalogue table: what it holds when an order is decided is what counts.
    pub fn table(table: CatalogueTable) -> Catalogue {
        Catalogue { source: Source::Table(table) }
    }

    /// Reads one SKU per line; blank lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Catalogue, CatalogueError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CatalogueError::Read { path: path.display().to_string(), source })?;
        let skus: BTreeSet<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
        if skus.is_empty() {
            return Err(CatalogueError::Empty);
        }
        Ok(Catalogue::new(skus))
    }

    /// Whether a line of `quantity` units of `sku` can be ordered now; why not, otherwise (the
    /// reason names the SKU).
    pub fn check(&self, sku: &str, quantity: u32) -> Result<(), String> {
        match &self.source {
            Source::Fixed(skus) if skus.contains(sku) => Ok(()),
            Source::Fixed(_) => Err(format!("unknown SKU {sku:?}")),
            Source::Table(table) => table.check(sku, quantity),
        }
    }

    /// Whether the catalogue has `sku`, whatever its state.
    pub fn contains(&self, sku: &str) -> bool {
        match &self.source {
            Source::Fixed(skus) => skus.contains(sku),
            Source::Table(table) => table.get(sku).is_some(),
        }
    }

    /// The SKUs of a fixed list (none for a table, which changes).
    pub fn fixed_skus(&self) -> Vec<&str> {
        match &self.source {
            Source::Fixed(skus) => skus.iter().map(String::as_str).collect(),
            Source::Table(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, active: bool, stock: i64) -> CatalogueItem {
        CatalogueItem::new(Some(sku.into()), None, active, stock).expect("a valid row")
    }

    #[test]
    fn a_table_row_decides_by_its_state_and_follows_its_changes() {
        let table = CatalogueTable::default();
        let catalogue = Catalogue::table(table.clone());
        assert_eq!(catalogue.check("BRAKE-PAD-UIC", 1), Err("unknown SKU \"BRAKE-PAD-UIC\"".into()));
        table.upsert(b"1", item("BRAKE-PAD-UIC", true, 5));
        assert_eq!(catalogue.check("BRAKE-PAD-UIC", 5), Ok(()));
        let short = catalogue.check("BRAKE-PAD-UIC", 6).expect_err("6 > 5");
        assert!(short.contains("out of stock") && short.contains("BRAKE-PAD-UIC"), "{short}");
        table.upsert(b"1", item("BRAKE-PAD-UIC", false, 5));
        let inactive = catalogue.check("BRAKE-PAD-UIC", 1).expect_err("inactive");
        assert!(inactive.contains("not active") && inactive.contains("BRAKE-PAD-UIC"), "{inactive}");
        // The row is renamed: the old SKU is gone, the new one is there.
        table.upsert(b"1", item("BRAKE-PAD-UIC-2", true, 5));
        assert!(!catalogue.contains("BRAKE-PAD-UIC"));
        assert_eq!(catalogue.check("BRAKE-PAD-UIC-2", 1), Ok(()));
        table.remove(b"1");
        assert!(table.is_empty());
        assert!(!catalogue.contains("BRAKE-PAD-UIC-2"));
    }

    #[test]
    fn a_row_without_a_usable_sku_or_with_a_negative_stock_is_refused_with_its_reason() {
        assert!(CatalogueItem::new(None, None, true, 1).expect_err("null").contains("NULL"));
        assert!(CatalogueItem::new(Some(" ".into()), None, true, 1).expect_err("blank").contains("blank"));
        assert!(CatalogueItem::new(Some("X".into()), None, true, -1).expect_err("negative").contains("negative"));
    }

    #[test]
    fn a_fixed_list_has_every_sku_in_any_quantity() {
        let catalogue = Catalogue::default();
        assert_eq!(catalogue.check(DEFAULT_SKUS[0], u32::MAX), Ok(()));
        assert!(catalogue.check("NOPE", 1).is_err());
        assert_eq!(catalogue.fixed_skus().len(), DEFAULT_SKUS.len());
    }
}
