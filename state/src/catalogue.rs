//! The SKUs dev-materiels accepts in an order.

use std::collections::BTreeSet;
use std::path::Path;

/// The SKUs of the materials dev-materiels can supply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    skus: BTreeSet<String>,
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
        Catalogue { skus: skus.into_iter().map(Into::into).collect() }
    }

    /// Reads one SKU per line; blank lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Catalogue, CatalogueError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CatalogueError::Read { path: path.display().to_string(), source })?;
        let catalogue = Catalogue::new(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string),
        );
        if catalogue.skus.is_empty() {
            return Err(CatalogueError::Empty);
        }
        Ok(catalogue)
    }

    pub fn contains(&self, sku: &str) -> bool {
        self.skus.contains(sku)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.skus.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.skus.len()
    }

    pub fn is_empty(&self) -> bool {
        self.skus.is_empty()
    }
}
