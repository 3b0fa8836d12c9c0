//! dev-materiels' order store: one RocksDB per task (per `orders` partition).
//!
//! It holds only committed state. The processor buffers a transaction's writes in memory and hands
//! them here after Kafka confirmed the commit, in one [`WriteBatch`] together with the changelog
//! position they reach. The store and its changelog position therefore always agree, and a task
//! that restarts replays the changelog from [`OrderStore::changelog_position`] only.
//!
//! Column families:
//! - `orders`: order id -> [`OrderState`] (the same bytes as the changelog record value, see
//!   [`crate::encoding`]);
//! - `timers`: no longer written. Builds before 2026-12-07 kept an index of the states' timers
//!   there; the timers now live in memory only ([`OrderStore::timers`] reads them from the states
//!   when a task opens), which spares two memtable writes per changed order. The family stays so
//!   that stores written by earlier builds open; what it holds is ignored. (A store written by
//!   this build and opened by an earlier one would miss its timers: no downgrade.)
//! - `meta`: `changelog-position` -> next changelog offset to read (big-endian i64);
//! - `outbox`: sequence number (big-endian u64) -> [`OutboxEntry`]: decisions taken over HTTP
//!   while Kafka was unreachable. Their states are already in `orders`; the entries wait to be
//!   published to `order-updates` and the changelog, in sequence order, by the next transaction.
//!
//! With the outbox, the store may be ahead of its changelog (never behind what it acknowledged):
//! a restore therefore never replaces a state with an older version, and drops the outbox
//! entries that the changelog shows were published (their command is in a state it holds).
//!
//! One case breaks "ahead": another instance owned the partition meanwhile, and the changelog
//! holds a history of the order that never saw an outbox entry's command. Then that history wins:
//! the restore takes it, and marks the order's outbox entries *superseded*; their commands are
//! decided again, on the changelog's state, by the next transaction.

pub mod catalogue;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};

use serde::{Deserialize, Serialize};

pub use crate::encoding::{decode_state, encode_state};
use crate::order::{CommandEnvelope, OrderState, OrderUpdate};

/// A decision taken over HTTP, waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub update: OrderUpdate,
    pub state: OrderState,
    /// The command that was decided, to decide again if the entry is superseded, or to hand to
    /// the partition's new owner.
    #[serde(default)]
    pub command: Option<CommandEnvelope>,
    /// The changelog holds another history of this order: publish nothing, decide the command
    /// again.
    #[serde(default)]
    pub superseded: bool,
}

const CF_ORDERS: &str = "orders";
const CF_TIMERS: &str = "timers";
const CF_META: &str = "meta";
const CF_OUTBOX: &str = "outbox";
const KEY_POSITION: &[u8] = b"changelog-position";

/// A failure of a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store at {path}: {source}")]
    Rocks { path: PathBuf, source: rocksdb::Error },
    #[error("state store at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state store at {path}: column family {name} is missing")]
    MissingColumnFamily { path: PathBuf, name: &'static str },
    #[error("state store at {path}: corrupt value for key {key:?}: {reason}")]
    Corrupt { path: PathBuf, key: String, reason: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// Another handle has the store open (another stream thread's task or standby copy): try
    /// again once it has closed it.
    #[error("state store at {path} is open elsewhere: {reason}")]
    Locked { path: PathBuf, reason: String },
}

impl From<crate::encoding::EncodeError> for StoreError {
    fn from(err: crate::encoding::EncodeError) -> Self {
        StoreError::Encode { what: "an order state", reason: err.to_string() }
    }
}

/// Settings shared by the stores of one process.
#[derive(Clone)]
pub struct StoreOptions {
    /// One block cache for every store of the process, so memory stays bounded however many
    /// partitions the process owns.
    pub block_cache: Cache,
    pub write_buffer_bytes: usize,
    /// One limit on the memtables of every store of the process, charged to the block cache:
    /// RocksDB's memory stays under the cache size however many partitions and column families.
    pub write_buffers: WriteBufferManager,
}

impl StoreOptions {
    pub fn with_cache_bytes(cache_bytes: usize) -> StoreOptions {
        let block_cache = Cache::new_lru_cache(cache_bytes);
        // Half of it for memtables: beyond that, the memtable written to is flushed. Writers are
        // not stalled (`allow_stall` false): with several stores, a stalled writer can wait for
        // a flush no store triggers; the end-to-end bench hung that way with 1M orders.
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager_with_cache(cache_bytes / 2, false, block_cache.clone());
        StoreOptions { block_cache, write_buffer_bytes: 16 << 20, write_buffers }
    }

    pub(crate) fn rocks_options(&self) -> Options {
        self.family_options(Access::Lookups)
    }

    /// The options of a column family used as `access` says. The database's own options are
    /// those of [`Access::Lookups`].
    pub(crate) fn family_options(&self, access: Access) -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_write_buffer_size(match access {
            Access::Small => SMALL_WRITE_BUFFER_BYTES,
            Access::Lookups | Access::Scans => self.write_buffer_bytes,
        });
        options.set_max_write_buffer_number(3);
        options.set_max_background_jobs(2);
        // Keep the column families' flushes consistent with each other, so that state, index
        // and position survive a crash together.
        options.set_atomic_flush(true);
        options.set_write_buffer_manager(&self.write_buffers);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.block_cache);
        if access == Access::Lookups {
            // Most lookups are for orders not seen yet: a bloom filter on the memtables too, so a
            // miss does not walk their skip lists (the SST files have theirs, below). Only here:
            // each new memtable allocates and zeroes its filter, and with atomic flushes every
            // column family switches memtables together (a tenth of the stream thread's time in
            // the end-to-end bench when all four had one, docs/benchmarks.md, 2026-12-07).
            options.set_memtable_prefix_bloom_ratio(0.1);
            options.set_memtable_whole_key_filtering(true);
            table.set_bloom_filter(10.0, false);
        }
        table.set_cache_index_and_filter_blocks(true);
        // Filters and indexes in 4 KiB partitions, top levels pinned: a whole-file filter of a
        // large SST does not stay in a 1 MiB cache shard, and was read again by most multi-gets
        // (docs/benchmarks.md, 2026-12-02).
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        options.set_block_based_table_factory(&table);
        options
    }
}

/// How a column family is read, which sets its filters and memtable size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Point lookups by key, most of them misses (an order's state, a view's row): bloom filters
    /// in the memtables and in the files.
    Lookups,
    /// Iterated in key order, never looked up (the view's status index, the catalogue's rows):
    /// no filters.
    Scans,
    /// A few keys (a position, the outbox, the timer index earlier builds wrote): no filters,
    /// and a small memtable, since a new one is allocated at every flush of the store.
    Small,
}

/// Memtable size of an [`Access::Small`] column family.
const SMALL_WRITE_BUFFER_BYTES: usize = 1 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions::with_cache_bytes(64 << 20)
    }
}

/// Opens a RocksDB with the given column families.
/// How big a store is: the entries of its main column family (RocksDB's estimate) and the bytes
/// it holds in SST files and memtables, over all its column families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreSize {
    pub keys: u64,
    pub bytes: u64,
}

pub(crate) fn store_size(db: &DB, families: &[&str], main: &str) -> StoreSize {
    let property = |cf, name: &str| db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0);
    let mut size = StoreSize::default();
    for name in families {
        if let Some(cf) = db.cf_handle(name) {
            size.bytes +=
                property(cf, "rocksdb.total-sst-files-size") + property(cf, "rocksdb.cur-size-all-mem-tables");
            if *name == main {
                size.keys = property(cf, "rocksdb.estimate-num-keys");
            }
        }
    }
    size
}

pub(crate) fn open_db(
    path: &Path,
    options: &StoreOptions,
    families: &[(&'static str, Access)],
) -> Result<DB, StoreError> {
    let db_options = options.rocks_options();
    let descriptors = families
        .iter()
        .map(|(name, access)| ColumnFamilyDescriptor::new(*name, options.family_options(*access)))
        .collect::<Vec<_>>();
    let db = DB::open_cf_descriptors(&db_options, path, descriptors).map_err(|source| {
        // RocksDB's own words for a store another handle holds (PosixEnv::LockFile): "lock hold
        // by current process" within this process, "Resource temporarily unavailable" from
        // another.
        let message = source.to_string();
        if message.contains("lock hold by current process") || message.contains("Resource temporarily unavailable") {
            StoreError::Locked { path: path.to_path_buf(), reason: message }
        } else {
            StoreError::Rocks { path: path.to_path_buf(), source }
        }
    })?;
    // The blocks of a file a flush writes go to the block cache as it is written: what was just
    // written is what is read next (a timer fires two seconds after its order was placed, a
    // confirmation follows its order), and without this each of those reads went to the file
    // (docs/benchmarks.md, 2026-12-07). Not in the C API's table options; set by name.
    for (name, _) in families {
        let handle = cf(&db, path, name)?;
        db.set_options_cf(handle, &[("block_based_table_factory", "{prepopulate_block_cache=kFlushOnly;}")])
            .map_err(|source| StoreError::Rocks { path: path.to_path_buf(), source })?;
    }
    Ok(db)
}

pub(crate) fn cf<'a>(db: &'a DB, path: &Path, name: &'static str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name).ok_or_else(|| StoreError::MissingColumnFamily { path: path.to_path_buf(), name })
}

/// The committed state of one task.
pub struct OrderStore {
    db: DB,
    path: PathBuf,
}

/// Writes to apply to an [`OrderStore`] at once.
#[derive(Default)]
pub struct StoreBatch {
    batch: WriteBatch,
    position: Option<i64>,
    puts: usize,
    /// The write-ahead log synced for this batch (see [`StoreBatch::make_durable`]).
    durable: bool,
}

impl StoreBatch {
    pub fn new() -> StoreBatch {
        StoreBatch::default()
    }

    /// A batch sized for `records` writes carrying `payload` bytes of keys and values, so that
    /// filling it copies each byte once (RocksDB's batch is one growing string).
    pub fn with_capacity(records: usize, payload: usize) -> StoreBatch {
        // The batch's header, then per record a type, a column family and two lengths.
        const HEADER: usize = 12;
        const PER_RECORD: usize = 1 + 1 + 2 * 5;
        StoreBatch {
            batch: WriteBatch::with_capacity_bytes(HEADER + records * PER_RECORD + payload),
            ..StoreBatch::default()
        }
    }

    /// Number of states put or deleted so far.
    pub fn len(&self) -> usize {
        self.puts
    }

    pub fn is_empty(&self) -> bool {
        self.puts == 0 && self.position.is_none()
    }

    /// Makes this batch survive a crash of the machine, not only of the process, once written:
    /// the write-ahead log is synced. For what exists nowhere else (decisions taken over HTTP, in
    /// the outbox). Other writes go through the log unsynced: the changelog has them, and a
    /// machine crash only sets the store back to a position it restores from. (Kafka Streams
    /// skips the log altogether; here the log costs one append per commit, and keeps a restart
    /// after a process crash from replaying a memtable's worth of changelog.)
    pub fn make_durable(&mut self) {
        self.durable = true;
    }

    /// The changelog offset from which a restore would continue after this batch.
    pub fn set_position(&mut self, next_offset: i64) {
        self.position = Some(next_offset);
    }
}

impl OrderStore {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<OrderStore, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        let families = [
            (CF_ORDERS, Access::Lookups),
            (CF_TIMERS, Access::Small),
            (CF_META, Access::Small),
            (CF_OUTBOX, Access::Small),
        ];
        let db = open_db(path, options, &families)?;
        Ok(OrderStore { db, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        cf(&self.db, &self.path, name)
    }

    pub fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        let cf = self.cf(CF_ORDERS)?;
        match self.db.get_pinned_cf(cf, order_id.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => self.decode(order_id, &bytes).map(Some),
        }
    }

    /// Decodes a state read from the store, a failure naming the store and the key.
    fn decode(&self, order_id: &str, bytes: &[u8]) -> Result<OrderState, StoreError> {
        decode_state(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            key: order_id.to_string(),
            reason: e.to_string(),
        })
    }

    /// The states of several orders at once (RocksDB's batched multi-get: one pass over the
    /// memtables' and files' filters for the whole batch), in the order of `order_ids`, which
    /// must be sorted and without repeats.
    pub fn get_many(&self, order_ids: &[&str]) -> Result<Vec<Option<OrderState>>, StoreError> {
        let cf = self.cf(CF_ORDERS)?;
        let found = self.db.batched_multi_get_cf(cf, order_ids.iter().map(|id| id.as_bytes()), true);
        order_ids
            .iter()
            .zip(found)
            .map(|(id, found)| match found.map_err(|e| self.err(e))? {
                None => Ok(None),
                Some(bytes) => self.decode(id, &bytes).map(Some),
            })
            .collect()
    }

    /// The next changelog offset to restore from; `None` for a store that never saw the
    /// changelog (new, or its directory was lost).
    pub fn changelog_position(&self) -> Result<Option<i64>, StoreError> {
        let cf = self.cf(CF_META)?;
        let value = self.db.get_cf(cf, KEY_POSITION).map_err(|e| self.err(e))?;
        Ok(value.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(i64::from_be_bytes))
    }

    /// Every pending timer, earliest first, read from the states (a scan of the store: when a
    /// task opens, and after a restore or an abort changed the store underneath).
    pub fn timers(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for state in self.states()? {
            let state = state?;
            if let Some(timer) = state.timer {
                out.push((timer.due_ms, state.order_id));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The outbox, in sequence order.
    pub fn outbox(&self) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let cf = self.cf(CF_OUTBOX)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.err(e))?;
            let seq = <[u8; 8]>::try_from(&key[..]).map(u64::from_be_bytes).unwrap_or(0);
            let entry: OutboxEntry = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                key: format!("outbox/{seq}"),
                reason: e.to_string(),
            })?;
            out.push((seq, entry));
        }
        Ok(out)
    }

    /// Adds an outbox entry to `batch`.
    pub fn put_outbox(&self, batch: &mut StoreBatch, seq: u64, entry: &OutboxEntry) -> Result<(), StoreError> {
        let value = serde_json::to_vec(entry)
            .map_err(|e| StoreError::Encode { what: "an outbox entry", reason: e.to_string() })?;
        batch.batch.put_cf(self.cf(CF_OUTBOX)?, seq.to_be_bytes(), value);
        Ok(())
    }

    /// Removes a published outbox entry in `batch`.
    pub fn delete_outbox(&self, batch: &mut StoreBatch, seq: u64) -> Result<(), StoreError> {
        batch.batch.delete_cf(self.cf(CF_OUTBOX)?, seq.to_be_bytes());
        Ok(())
    }

    /// Orders held and bytes used (RocksDB's estimates, cheap).
    pub fn size(&self) -> StoreSize {
        store_size(&self.db, &[CF_ORDERS, CF_TIMERS, CF_META, CF_OUTBOX], CF_ORDERS)
    }

    /// Number of orders held (RocksDB's estimate, cheap).
    pub fn estimated_len(&self) -> u64 {
        self.cf(CF_ORDERS)
            .ok()
            .and_then(|cf| self.db.property_int_value_cf(cf, "rocksdb.estimate-num-keys").ok().flatten())
            .unwrap_or(0)
    }

    /// Adds a new state to `batch`. `encoded` is [`encode_state`] of `state` (the changelog
    /// record value, encoded once).
    pub fn put(&self, batch: &mut StoreBatch, state: &OrderState, encoded: &[u8]) -> Result<(), StoreError> {
        batch.batch.put_cf(self.cf(CF_ORDERS)?, state.order_id.as_bytes(), encoded);
        batch.puts += 1;
        Ok(())
    }

    /// Adds the deletion of an order (a changelog tombstone) to `batch`.
    pub fn delete(&self, batch: &mut StoreBatch, order_id: &str) -> Result<(), StoreError> {
        batch.batch.delete_cf(self.cf(CF_ORDERS)?, order_id.as_bytes());
        batch.puts += 1;
        Ok(())
    }

    /// Applies `batch` atomically: states, timer index and changelog position together.
    pub fn write(&self, mut batch: StoreBatch) -> Result<(), StoreError> {
        if let Some(position) = batch.position {
            batch.batch.put_cf(self.cf(CF_META)?, KEY_POSITION, position.to_be_bytes());
        }
        let mut options = WriteOptions::default();
        options.set_sync(batch.durable);
        self.db.write_opt(batch.batch, &options).map_err(|e| self.err(e))
    }

    /// Applies changelog records read during a restore: `records` are (key, value) in changelog
    /// order, a `None` value being a tombstone; `next_position` is the offset after the last one.
    /// A record older than the stored state (the store got ahead through the outbox) is skipped;
    /// outbox entries the records show as published are dropped; a record of another history
    /// (see the module's documentation) replaces the state and supersedes the order's entries.
    /// Returns how many records were read.
    pub fn restore(&self, records: &[(Vec<u8>, Option<Vec<u8>>)], next_position: i64) -> Result<usize, StoreError> {
        let mut batch = StoreBatch::new();
        // The version this batch leaves, for keys it touched twice.
        let mut in_batch: HashMap<&[u8], Option<u64>> = HashMap::new();
        let mut outbox = if records.is_empty() { Vec::new() } else { self.outbox()? };
        let mut changed_entries = std::collections::BTreeSet::new();
        for (key, value) in records {
            let order_id = String::from_utf8_lossy(key);
            let current = match in_batch.get(key.as_slice()) {
                Some(current) => *current,
                None => self.get(&order_id)?.map(|s| s.version),
            };
            match value {
                Some(bytes) => {
                    let state = decode_state(bytes).map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        key: order_id.to_string(),
                        reason: format!("changelog record: {e}"),
                    })?;
                    let mut other_history = false;
                    for (seq, entry) in outbox.iter_mut() {
                        if entry.state.order_id != state.order_id || entry.superseded {
                            continue;
                        }
                        let applied = entry.update.command_id.as_deref().is_some_and(|c| state.has_seen(c));
                        if applied && entry.state.version <= state.version {
                            self.delete_outbox(&mut batch, *seq)?;
                            entry.superseded = true; // gone; not to be looked at again
                            changed_entries.remove(seq);
                        } else if !applied && entry.state.version <= state.version {
                            other_history = true;
                        }
                    }
                    if other_history {
                        for (seq, entry) in outbox.iter_mut() {
                            if entry.state.order_id == state.order_id && !entry.superseded {
                                entry.superseded = true;
                                changed_entries.insert(*seq);
                            }
                        }
                    }
                    if !other_history && current.is_some_and(|version| version > state.version) {
                        continue;
                    }
                    self.put(&mut batch, &state, bytes)?;
                    in_batch.insert(key.as_slice(), Some(state.version));
                }
                None => {
                    self.delete(&mut batch, &order_id)?;
                    in_batch.insert(key.as_slice(), None);
                }
            }
        }
        for (seq, entry) in &outbox {
            if changed_entries.contains(seq) {
                self.put_outbox(&mut batch, *seq, entry)?;
            }
        }
        batch.set_position(next_position);
        self.write(batch)?;
        Ok(records.len())
    }

    /// Every stored state (for checks and tools; not on the hot path).
    pub fn all(&self) -> Result<Vec<OrderState>, StoreError> {
        self.states()?.collect()
    }

    /// Every stored state, decoded one at a time, in key order.
    fn states(&self) -> Result<impl Iterator<Item = Result<OrderState, StoreError>> + '_, StoreError> {
        let cf = self.cf(CF_ORDERS)?;
        Ok(self.db.iterator_cf(cf, IteratorMode::Start).map(|item| {
            let (key, value) = item.map_err(|e| self.err(e))?;
            decode_state(&value).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: e.to_string(),
            })
        }))
    }
}

#[cfg(test)]
mod tests;
