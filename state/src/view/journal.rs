//! The journal of [`ViewStore`] (`--replicated`; its rules are in the parent module's text):
//! `journal/<sequence>` -> a [`JournalEntry`] and `answered/<sequence>` -> its [`Answer`], both
//! in the `meta` column family, indexed in memory.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use super::{be_u64, ViewStore, CF_META};
use crate::order::CommandEnvelope;
use crate::store::{cf, StoreError};

/// The journal's index: its entries by command id, the answered ones, and the next sequence.
#[derive(Default)]
pub(super) struct Journal {
    pub(super) by_command: HashMap<String, u64>,
    /// The answered entries, by sequence, with their command ids.
    pub(super) answered: BTreeMap<u64, (Answer, String)>,
    pub(super) next: u64,
}

/// A command sent to `orders` whose answer the standby may not have yet ([`ViewStore::journal`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalEntry {
    pub command: CommandEnvelope,
    /// When it was first sent, in milliseconds since the Unix epoch.
    pub sent_ms: u64,
    /// Where the active cluster's `order-updates` answered it; `None` while unanswered. Stored
    /// under a key of its own (`answered/<sequence>`), not in the entry's JSON.
    #[serde(skip)]
    pub answered: Option<Answer>,
}

/// Where and when `order-updates` answered a journaled command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The update's partition and offset on the active cluster's `order-updates`.
    pub partition: i32,
    pub offset: i64,
    /// When the view applied it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Answer {
    pub(super) fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..4].copy_from_slice(&self.partition.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..].copy_from_slice(&self.at_ms.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Answer> {
        let bytes = <&[u8; 20]>::try_from(bytes).ok()?;
        Some(Answer {
            partition: i32::from_be_bytes(bytes[..4].try_into().ok()?),
            offset: i64::from_be_bytes(bytes[4..12].try_into().ok()?),
            at_ms: u64::from_be_bytes(bytes[12..].try_into().ok()?),
        })
    }
}

const JOURNAL_PREFIX: &[u8] = b"journal/";
const ANSWERED_PREFIX: &[u8] = b"answered/";

pub(super) fn journal_key(sequence: u64) -> Vec<u8> {
    [JOURNAL_PREFIX, &sequence.to_be_bytes()].concat()
}

pub(super) fn answered_key(sequence: u64) -> Vec<u8> {
    [ANSWERED_PREFIX, &sequence.to_be_bytes()].concat()
}

impl ViewStore {
    /// Whether commands are journaled (`--replicated`): then a command decided over HTTP joins
    /// the journal, answered, in the batch that confirms it, so that its answer is kept until
    /// the standby has it too. [`ViewStore::journal`] works either way.
    pub fn set_journaling(&self, on: bool) {
        self.journaling.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn journal_entries_in(db: &DB, path: &Path) -> Result<Vec<(u64, JournalEntry)>, StoreError> {
        let meta = cf(db, path, CF_META)?;
        let mut entries = Vec::new();
        for item in db.iterator_cf(meta, IteratorMode::From(JOURNAL_PREFIX, Direction::Forward)) {
            let (key, value) = item.map_err(|source| StoreError::Rocks { path: path.to_path_buf(), source })?;
            let Some(sequence) = key.strip_prefix(JOURNAL_PREFIX) else { break };
            let sequence = be_u64(sequence).ok_or_else(|| StoreError::Corrupt {
                path: path.to_path_buf(),
                key: format!("journal key {key:?}"),
                reason: "not a sequence number".into(),
            })?;
            let entry = serde_json::from_slice::<JournalEntry>(&value).map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                key: format!("journal entry {sequence}"),
                reason: e.to_string(),
            })?;
            entries.push((sequence, entry));
        }
        let mut answers = BTreeMap::new();
        for item in db.iterator_cf(meta, IteratorMode::From(ANSWERED_PREFIX, Direction::Forward)) {
            let (key, value) = item.map_err(|source| StoreError::Rocks { path: path.to_path_buf(), source })?;
            let Some(sequence) = key.strip_prefix(ANSWERED_PREFIX) else { break };
            let (Some(sequence), Some(answer)) = (be_u64(sequence), Answer::decode(&value)) else {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    key: format!("answered key {key:?}"),
                    reason: "not a sequence number and an answer".into(),
                });
            };
            answers.insert(sequence, answer);
        }
        for (sequence, entry) in &mut entries {
            entry.answered = answers.get(sequence).copied();
        }
        Ok(entries)
    }

    pub(super) fn load_journal(db: &DB, path: &Path) -> Result<Journal, StoreError> {
        let entries = Self::journal_entries_in(db, path)?;
        let mut journal =
            Journal { next: entries.last().map_or(0, |(sequence, _)| sequence + 1), ..Journal::default() };
        for (sequence, entry) in entries {
            if let Some(answer) = entry.answered {
                journal.answered.insert(sequence, (answer, entry.command.command_id.clone()));
            }
            journal.by_command.insert(entry.command.command_id, sequence);
        }
        Ok(journal)
    }

    /// Writes `command` to the journal, synced, unless it is there already: call it before the
    /// command is sent, so that its update cannot be applied before it is journaled.
    pub fn journal(&self, command: &CommandEnvelope, now_ms: u64) -> Result<(), StoreError> {
        self.journal_at(None, &JournalEntry { command: command.clone(), sent_ms: now_ms, answered: None })
    }

    /// Writes an entry, unanswered, at `sequence` (carried over from another view), or at the
    /// next one.
    fn journal_at(&self, sequence: Option<u64>, entry: &JournalEntry) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(entry)
            .map_err(|e| StoreError::Encode { what: "a journal entry", reason: e.to_string() })?;
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if journal.by_command.contains_key(&entry.command.command_id) {
            return Ok(());
        }
        let sequence = sequence.unwrap_or(journal.next);
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_META)?, journal_key(sequence), encoded, &options).map_err(|e| self.err(e))?;
        journal.by_command.insert(entry.command.command_id.clone(), sequence);
        journal.next = journal.next.max(sequence + 1);
        Ok(())
    }

    /// Takes a command out of the journal: it was never handed to Kafka. An answered command
    /// stays (it was sent after all: its answer is the proof).
    pub fn forget(&self, command_id: &str) -> Result<(), StoreError> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sequence) = journal.by_command.get(command_id).copied() {
            if journal.answered.contains_key(&sequence) {
                return Ok(());
            }
            self.db.delete_cf(self.cf(CF_META)?, journal_key(sequence)).map_err(|e| self.err(e))?;
            journal.by_command.remove(command_id);
        }
        Ok(())
    }

    /// Takes out of the journal every answered command whose answer the standby has:
    /// `copied_until` gives, per partition of the active cluster's `order-updates`, the offset
    /// below which the standby's copy holds every committed record. Returns how many went.
    pub fn forget_copied(&self, copied_until: &BTreeMap<i32, i64>) -> Result<usize, StoreError> {
        self.forget_answered(|answer| copied_until.get(&answer.partition).is_some_and(|until| answer.offset < *until))
    }

    /// Takes out of the journal every command answered before `at_ms` (milliseconds since the
    /// Unix epoch): with no watch of the copy, an answer is taken to have crossed by then.
    /// Returns how many went.
    pub fn forget_answered_before(&self, at_ms: u64) -> Result<usize, StoreError> {
        self.forget_answered(|answer| answer.at_ms < at_ms)
    }

    fn forget_answered(&self, crossed: impl Fn(&Answer) -> bool) -> Result<usize, StoreError> {
        let meta = self.cf(CF_META)?;
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<(u64, String)> = journal
            .answered
            .iter()
            .filter(|(_, (answer, _))| crossed(answer))
            .map(|(sequence, (_, command_id))| (*sequence, command_id.clone()))
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        for (sequence, _) in &gone {
            batch.delete_cf(meta, answered_key(*sequence));
        }
        for (sequence, _) in &gone {
            batch.delete_cf(meta, journal_key(*sequence));
        }
        self.db.write(batch).map_err(|e| self.err(e))?;
        for (sequence, command_id) in &gone {
            journal.answered.remove(sequence);
            if journal.by_command.get(command_id) == Some(sequence) {
                journal.by_command.remove(command_id);
            }
        }
        Ok(gone.len())
    }

    /// The journal: the commands sent whose answer the standby may not have, answered or not, in
    /// the order they were sent.
    pub fn journal_entries(&self) -> Result<Vec<(u64, JournalEntry)>, StoreError> {
        Self::journal_entries_in(&self.db, &self.path)
    }

    /// How many commands the journal holds, answered or not.
    pub fn journal_len(&self) -> usize {
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).by_command.len()
    }

    /// How many of them the active cluster has answered (kept until the standby has the answer).
    pub fn journal_answered_len(&self) -> usize {
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).answered.len()
    }

    /// Writes `entries` (from another view) into this one's journal, keeping their order, as
    /// unanswered: an answer's position is the other cluster's.
    pub fn carry_journal(&self, entries: &[(u64, JournalEntry)]) -> Result<(), StoreError> {
        for (sequence, entry) in entries {
            self.journal_at(Some(*sequence), entry)?;
        }
        Ok(())
    }
}
