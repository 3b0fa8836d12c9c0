//! wagon-lits' view of its orders, materialised from `order-updates` into RocksDB.
//!
//! The view stores, in the same [`WriteBatch`] as the rows, the next offset to read from each
//! partition of `order-updates`. After a crash it resumes from exactly where its last batch ended,
//! so every update is applied once, without Kafka transactions on this side.
//!
//! An update is applied only if its version is greater than the row's: the view never goes
//! backwards and never applies the same update twice.
//!
//! Rows come from `order-updates` only. What dev-materiels answered over HTTP (the fallback path)
//! is kept beside them as a *pending* decision: shown by [`ViewStore::read`], marked provisional,
//! until `order-updates` carries an update of that command. Usually that update is the same one;
//! if the deciding instance lost its partition before it could publish it, the partition's next
//! owner decides the command again, and its decision is the one the row takes.
//!
//! Column families:
//! - `orders`: order id -> latest [`OrderUpdate`] (see [`crate::encoding`]);
//! - `by_status`: status code ++ order id -> empty, for listing orders by status in pages;
//! - `meta`: `offset/<partition>` -> next offset (big-endian i64), `count/<code>` -> number of
//!   orders in that status (big-endian u64), `pending/<order id>` -> a [`Pending`] decision,
//!   `journal/<sequence>` (big-endian u64) -> a [`JournalEntry`], `answered/<sequence>` -> its
//!   [`Answer`] (partition i32, offset i64, milliseconds u64, all big-endian).
//!
//! **The journal** (with `--replicated`, for a failover to a standby cluster): every command
//! wagon-lits sends to `orders` is written here, synced, before it is sent. The batch that applies
//! an update of its command id marks it *answered* at that update's position on `order-updates`;
//! a command decided over HTTP joins the journal, answered, in the batch that confirms it. An
//! answered entry stays until its answer is on the standby too ([`ViewStore::forget_copied`],
//! which MirrorMaker 2's lag watch calls with the copy's position) or, with no watch, for a
//! while ([`ViewStore::forget_answered_before`]). So after a failover the view knows every
//! command whose answer the standby may lack: those are sent again to the standby (same command
//! ids, decided once there; docs/multi-cluster.md).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::order::{CommandEnvelope, OrderStatus, OrderUpdate};
use crate::store::{cf, open_db, Access, StoreError, StoreOptions};

mod journal;

use journal::{answered_key, journal_key, Journal};
pub use journal::{Answer, JournalEntry};

const CF_ORDERS: &str = "orders";
const CF_BY_STATUS: &str = "by_status";
const CF_META: &str = "meta";

/// (partition, offset) on `order-updates`.
type Position = (i32, i64);

/// One update to apply, as read from `order-updates`.
pub struct ViewRecord {
    /// (partition, offset) on `order-updates`; `None` for an update that moves no offset (tests
    /// and benches).
    pub position: Option<Position>,
    /// `None` for a record that could not be decoded: its offset still advances.
    pub update: Option<OrderUpdate>,
}

/// What one [`ViewStore::apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    /// Updates that moved a row forward.
    pub applied: u64,
    /// Updates at or below the row's version (already applied, or overtaken).
    pub stale: u64,
    /// Updates that skipped versions (the view took a later one first).
    pub gaps: u64,
    /// Records that were not updates.
    pub undecodable: u64,
}

impl std::ops::AddAssign for ApplyStats {
    fn add_assign(&mut self, o: ApplyStats) {
        self.applied += o.applied;
        self.stale += o.stale;
        self.gaps += o.gaps;
        self.undecodable += o.undecodable;
    }
}

/// The wagon-lits view. Reads may come from any thread; writes go through [`ViewStore::apply`],
/// which serialises them.
pub struct ViewStore {
    db: DB,
    path: PathBuf,
    /// Orders per status, as committed. Held while a batch is written, so writers are serialised.
    counts: Mutex<BTreeMap<OrderStatus, u64>>,
    /// Orders whose last command was decided over HTTP and is not on `order-updates` yet, with
    /// that command (kept in the store too, under `pending/`).
    pending: Mutex<HashMap<String, Pending>>,
    /// The journal's entries by command id, the answered ones, and the next sequence number.
    journal: Mutex<Journal>,
    /// Commands are journaled ([`ViewStore::set_journaling`]): a command decided over HTTP joins
    /// the journal when `order-updates` confirms it.
    journaling: std::sync::atomic::AtomicBool,
}

/// A command decided over HTTP that `order-updates` has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    pub command_id: String,
    /// When the view took the decision, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// The command, to send again to `orders` (same id) until `order-updates` shows it. `None`
    /// only in a mark written by a version that did not keep it.
    #[serde(default)]
    pub command: Option<CommandEnvelope>,
    /// What the deciding instance answered: provisional until `order-updates` confirms it.
    #[serde(default)]
    pub answered: Option<OrderUpdate>,
}

/// An order as the view shows it: its last update from `order-updates`, or a later one decided
/// over HTTP and not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRow {
    pub update: OrderUpdate,
    /// The update was answered over HTTP and `order-updates` has not carried it yet: the
    /// partition's next owner may still decide its command differently.
    pub provisional: bool,
}

const PENDING_PREFIX: &[u8] = b"pending/";

fn pending_key(order_id: &str) -> Vec<u8> {
    [PENDING_PREFIX, order_id.as_bytes()].concat()
}

fn offset_key(partition: i32) -> Vec<u8> {
    format!("offset/{partition}").into_bytes()
}

fn count_key(status: OrderStatus) -> Vec<u8> {
    let mut key = b"count/".to_vec();
    key.push(status.code());
    key
}

fn status_key(status: OrderStatus, order_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + order_id.len());
    key.push(status.code());
    key.extend_from_slice(order_id.as_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

impl ViewStore {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<ViewStore, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        let db = open_db(
            path,
            options,
            &[(CF_ORDERS, Access::Lookups), (CF_BY_STATUS, Access::Scans), (CF_META, Access::Small)],
        )?;
        Self::with_db(db, path)
    }

    /// Opens the view for reading only, alongside a process that writes it.
    pub fn open_read_only(path: &Path, options: &StoreOptions) -> Result<ViewStore, StoreError> {
        let db = DB::open_cf_for_read_only(&options.rocks_options(), path, [CF_ORDERS, CF_BY_STATUS, CF_META], false)
            .map_err(|source| StoreError::Rocks { path: path.to_path_buf(), source })?;
        Self::with_db(db, path)
    }

    /// The view over an opened database: its counts, pending marks and journal loaded.
    fn with_db(db: DB, path: &Path) -> Result<ViewStore, StoreError> {
        let counts = Self::load_counts(&db, path)?;
        let pending = Self::load_pending(&db, path)?;
        let journal = Self::load_journal(&db, path)?;
        Ok(ViewStore {
            db,
            path: path.to_path_buf(),
            counts: Mutex::new(counts),
            pending: Mutex::new(pending),
            journal: Mutex::new(journal),
            journaling: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn load_pending(db: &DB, path: &Path) -> Result<HashMap<String, Pending>, StoreError> {
        let meta = cf(db, path, CF_META)?;
        let mut pending = HashMap::new();
        for item in db.iterator_cf(meta, IteratorMode::From(PENDING_PREFIX, Direction::Forward)) {
            let (key, value) = item.map_err(|source| StoreError::Rocks { path: path.to_path_buf(), source })?;
            let Some(order_id) = key.strip_prefix(PENDING_PREFIX) else { break };
            if let Ok(entry) = serde_json::from_slice::<Pending>(&value) {
                pending.insert(String::from_utf8_lossy(order_id).into_owned(), entry);
            }
        }
        Ok(pending)
    }

    /// The command of `order_id` decided over HTTP and not confirmed by `order-updates` yet, if
    /// any. A later command must wait for it: sent through Kafka meanwhile, it could reach the
    /// partition's next owner before the decision does (if the instance that took it dies before
    /// it can publish it) and be decided first.
    pub fn pending(&self, order_id: &str) -> Option<Pending> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.get(order_id).cloned()
    }

    /// How many decisions taken over HTTP wait for `order-updates`.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every decision taken over HTTP that `order-updates` has not shown yet, by order id.
    pub fn pending_all(&self) -> Vec<(String, Pending)> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.iter().map(|(order, p)| (order.clone(), p.clone())).collect()
    }

    /// Records a command decided over HTTP and what dev-materiels answered (`updates`), durably,
    /// until `order-updates` shows an update of that command. The rows do not change: they come
    /// from `order-updates` only. An answer with no update (the command changed nothing there)
    /// leaves nothing to wait for.
    pub fn record_direct(
        &self,
        command: &CommandEnvelope,
        updates: &[OrderUpdate],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(answered) = updates.iter().filter(|u| u.order_id == command.order_id).max_by_key(|u| u.version) else {
            return Ok(());
        };
        let mark = Pending {
            command_id: command.command_id.clone(),
            since_ms: now_ms,
            command: Some(command.clone()),
            answered: Some(answered.clone()),
        };
        let encoded = serde_json::to_vec(&mark)
            .map_err(|e| StoreError::Encode { what: "a pending decision", reason: e.to_string() })?;
        // Held while written, like a batch of the materialiser: a topic update that confirms the
        // mark cannot slip between the write and the map.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.db.put_cf(self.cf(CF_META)?, pending_key(&command.order_id), encoded).map_err(|e| self.err(e))?;
        pending.insert(command.order_id.clone(), mark);
        Ok(())
    }

    /// The order as the API shows it: its row from `order-updates`, or the decision answered
    /// over HTTP if it is later and not confirmed yet (marked provisional).
    pub fn read(&self, order_id: &str) -> Result<Option<ViewRow>, StoreError> {
        let confirmed = self.get(order_id)?;
        let answered = self.pending(order_id).and_then(|p| p.answered);
        Ok(match (confirmed, answered) {
            (Some(row), Some(answer)) if answer.version <= row.version => {
                Some(ViewRow { update: row, provisional: false })
            }
            (_, Some(answer)) => Some(ViewRow { update: answer, provisional: true }),
            (Some(row), None) => Some(ViewRow { update: row, provisional: false }),
            (None, None) => None,
        })
    }

    fn load_counts(db: &DB, path: &Path) -> Result<BTreeMap<OrderStatus, u64>, StoreError> {
        let meta = cf(db, path, CF_META)?;
        let mut counts = BTreeMap::new();
        for status in OrderStatus::ALL {
            let value = db
                .get_cf(meta, count_key(status))
                .map_err(|source| StoreError::Rocks { path: path.to_path_buf(), source })?;
            counts.insert(status, value.as_deref().and_then(be_u64).unwrap_or(0));
        }
        Ok(counts)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Orders held and bytes used (RocksDB's estimates, cheap).
    pub fn size(&self) -> crate::store::StoreSize {
        crate::store::store_size(&self.db, &[CF_ORDERS, CF_BY_STATUS, CF_META], CF_ORDERS)
    }

    fn err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        cf(&self.db, &self.path, name)
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<OrderUpdate, StoreError> {
        crate::encoding::decode_row(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }

    /// The next offset to read from each partition of `order-updates` that the view has seen.
    pub fn offsets(&self) -> Result<HashMap<i32, i64>, StoreError> {
        let meta = self.cf(CF_META)?;
        let mut out = HashMap::new();
        for item in self.db.prefix_iterator_cf(meta, b"offset/") {
            let (key, value) = item.map_err(|e| self.err(e))?;
            let Some(partition) = key.strip_prefix(b"offset/") else { break };
            let partition = std::str::from_utf8(partition).ok().and_then(|p| p.parse::<i32>().ok());
            if let (Some(partition), Some(offset)) = (partition, be_u64(&value)) {
                out.insert(partition, offset as i64);
            }
        }
        Ok(out)
    }

    /// The latest update of one order.
    pub fn get(&self, order_id: &str) -> Result<Option<OrderUpdate>, StoreError> {
        match self.db.get_pinned_cf(self.cf(CF_ORDERS)?, order_id.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => self.decode(order_id.as_bytes(), &bytes).map(Some),
        }
    }

    /// Up to `limit` orders in `status`, by order id, starting after `after`.
    pub fn list_by_status(
        &self,
        status: OrderStatus,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderUpdate>, StoreError> {
        let index = self.cf(CF_BY_STATUS)?;
        let start = status_key(status, after.unwrap_or(""));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(index, IteratorMode::From(&start, Direction::Forward)) {
            let (key, _) = item.map_err(|e| self.err(e))?;
            if key.first() != Some(&status.code()) || out.len() >= limit {
                break;
            }
            let order_id = std::str::from_utf8(&key[1..]).unwrap_or_default();
            if Some(order_id) == after {
                continue;
            }
            if let Some(row) = self.get(order_id)? {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Orders per status.
    pub fn counts(&self) -> BTreeMap<OrderStatus, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Every row (for checks and tools; not on the hot path).
    pub fn all(&self) -> Result<Vec<OrderUpdate>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_ORDERS)?, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(&key, &value)?);
        }
        Ok(out)
    }

    /// Applies `records` in one atomic batch, with the next offset of every partition they came
    /// from. Records must be in offset order per partition. An update of a command decided over
    /// HTTP confirms it: its pending mark goes in the same batch.
    pub fn apply(&self, records: &[ViewRecord]) -> Result<ApplyStats, StoreError> {
        let mut stats = ApplyStats::default();
        if records.is_empty() {
            return Ok(stats);
        }
        let orders = self.cf(CF_ORDERS)?;
        let index = self.cf(CF_BY_STATUS)?;
        let meta = self.cf(CF_META)?;
        // Held for the whole batch: one writer at a time.
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut new_counts = counts.clone();
        // Rows this batch touches: the status committed before it, and the row as it leaves it.
        let mut rows: crate::FastHashMap<&str, (Option<OrderStatus>, Option<OrderUpdate>, bool)> =
            crate::FastHashMap::default();
        // The committed rows of the batch, read in one sorted multi-get rather than one by one.
        let mut ids: Vec<&str> =
            records.iter().filter_map(|r| r.update.as_ref()).map(|u| u.order_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        for (id, found) in
            ids.iter().zip(self.db.batched_multi_get_cf(orders, ids.iter().map(|id| id.as_bytes()), true))
        {
            let committed = match found.map_err(|e| self.err(e))? {
                Some(bytes) => Some(self.decode(id.as_bytes(), &bytes)?),
                None => None,
            };
            rows.insert(id, (committed.as_ref().and_then(|r| r.status), committed, false));
        }
        let mut next_offsets: HashMap<i32, i64> = HashMap::new();
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut confirmed: Vec<String> = Vec::new();
        let mut journal = self.journal.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Journaled commands answered here: (command id, sequence, where); `None` for an update
        // that moves no offset, whose entry goes at once.
        let mut answered: Vec<(String, u64, Option<Position>)> = Vec::new();
        // Commands decided over HTTP confirmed here, to join the journal answered (journaling).
        let journaling = self.journaling.load(std::sync::atomic::Ordering::Relaxed);
        let mut joined: Vec<(u64, JournalEntry)> = Vec::new();
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for record in records {
            if let Some((partition, offset)) = record.position {
                next_offsets.insert(partition, offset + 1);
            }
            let Some(update) = &record.update else {
                stats.undecodable += 1;
                continue;
            };
            // A pending command of this order is confirmed (whatever the update says: the topic's
            // decision is the one that stands).
            if let Some(command_id) = &update.command_id {
                if let Some(sequence) = journal.by_command.get(command_id) {
                    if !journal.answered.contains_key(sequence) {
                        answered.push((command_id.clone(), *sequence, record.position));
                    }
                }
                if let Some(mark) = pending.get(&update.order_id).filter(|p| p.command_id == *command_id) {
                    confirmed.push(update.order_id.clone());
                    if let (true, Some(command), Some((partition, offset))) =
                        (journaling, &mark.command, record.position)
                    {
                        if !journal.by_command.contains_key(command_id)
                            && !joined.iter().any(|(_, e)| e.command.command_id == *command_id)
                        {
                            let sequence = journal.next + joined.len() as u64;
                            let answer = Answer { partition, offset, at_ms };
                            joined.push((
                                sequence,
                                JournalEntry {
                                    command: command.clone(),
                                    sent_ms: mark.since_ms,
                                    answered: Some(answer),
                                },
                            ));
                        }
                    }
                }
            }
            let Some(entry) = rows.get_mut(update.order_id.as_str()) else { continue };
            let current = &entry.1;
            let current_version = current.as_ref().map_or(0, |r| r.version);
            if update.version <= current_version {
                stats.stale += 1;
                continue;
            }
            if update.version > current_version + 1 {
                stats.gaps += 1;
            }
            let old_status = current.as_ref().and_then(|r| r.status);
            if old_status != update.status {
                if let Some(n) = old_status.and_then(|old| new_counts.get_mut(&old)) {
                    *n = n.saturating_sub(1);
                }
                if let Some(new) = update.status {
                    *new_counts.entry(new).or_insert(0) += 1;
                }
            }
            stats.applied += 1;
            entry.1 = Some(update.clone());
            entry.2 = true;
        }
        // Keys in order within each column family: RocksDB's memtable (a skip list) inserts a key
        // next to the previous one from where that one landed; a random order climbs the list
        // from its top each time.
        let mut batch = WriteBatch::default();
        let mut index_changes: Vec<(Vec<u8>, bool)> = Vec::new();
        for order_id in &ids {
            let Some((committed_status, Some(row), true)) = rows.get(order_id) else { continue };
            if let Some(old) = committed_status.filter(|old| Some(*old) != row.status) {
                index_changes.push((status_key(old, order_id), false));
            }
            if let Some(new) = row.status {
                index_changes.push((status_key(new, order_id), true));
            }
            let encoded = crate::encoding::encode_row(row)
                .map_err(|e| StoreError::Encode { what: "a view row", reason: e.to_string() })?;
            batch.put_cf(orders, order_id.as_bytes(), encoded);
        }
        // Each key at most once (an order leaves one status for another), so the order is free.
        index_changes.sort_unstable();
        for (key, put) in index_changes {
            if put {
                batch.put_cf(index, key, []);
            } else {
                batch.delete_cf(index, key);
            }
        }
        for (partition, offset) in &next_offsets {
            batch.put_cf(meta, offset_key(*partition), (*offset as u64).to_be_bytes());
        }
        for order_id in &confirmed {
            batch.delete_cf(meta, pending_key(order_id));
        }
        answered.sort_unstable_by_key(|(_, sequence, _)| *sequence);
        answered.dedup_by_key(|(_, sequence, _)| *sequence);
        for (sequence, entry) in &joined {
            let encoded = serde_json::to_vec(entry)
                .map_err(|e| StoreError::Encode { what: "a journal entry", reason: e.to_string() })?;
            batch.put_cf(meta, journal_key(*sequence), encoded);
            if let Some(answer) = entry.answered {
                batch.put_cf(meta, answered_key(*sequence), answer.encode());
            }
        }
        for (_, sequence, position) in &answered {
            match position {
                Some((partition, offset)) => batch.put_cf(
                    meta,
                    answered_key(*sequence),
                    Answer { partition: *partition, offset: *offset, at_ms }.encode(),
                ),
                None => batch.delete_cf(meta, journal_key(*sequence)),
            }
        }
        for (status, n) in &new_counts {
            if counts.get(status) != Some(n) {
                batch.put_cf(meta, count_key(*status), n.to_be_bytes());
            }
        }
        // Through the write-ahead log (not synced): without it a crash would set the view back to
        // older offsets, and the API would show older versions until it caught up.
        self.db.write(batch).map_err(|e| self.err(e))?;
        *counts = new_counts;
        for order_id in confirmed {
            pending.remove(&order_id);
        }
        for (command_id, sequence, position) in answered {
            match position {
                Some((partition, offset)) => {
                    journal.answered.insert(sequence, (Answer { partition, offset, at_ms }, command_id));
                }
                None => {
                    journal.by_command.remove(&command_id);
                }
            }
        }
        for (sequence, entry) in joined {
            if let Some(answer) = entry.answered {
                journal.answered.insert(sequence, (answer, entry.command.command_id.clone()));
            }
            journal.by_command.insert(entry.command.command_id, sequence);
            journal.next = journal.next.max(sequence + 1);
        }
        Ok(stats)
    }
}
