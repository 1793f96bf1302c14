//! The replicated log on RocksDB: [`RaftLog`], the [`LogStore`] a replica writes in `hazinad`.
//!
//! It lives in the `raft` column family of the node's one database:
//!
//! | key             | value                                              |
//! |-----------------|----------------------------------------------------|
//! | `e` + index BE  | one raft entry (its payload is a `codec` entry)    |
//! | `hard_state`    | term, vote and commit                              |
//! | `conf_state`    | the voters                                         |
//! | `snapshot`      | the snapshot kept behind the log, if any           |
//! | `offset`        | index and term just before the first entry held    |
//!
//! Every write of entries or of the term and vote is one synced RocksDB write: raft's messages
//! that promise it (votes, append acknowledgements) are sent only after it returns. The log is
//! also kept in memory ([`MemLog`]), which serves raft's reads; it is bounded because the
//! replica compacts it behind a snapshot every `snapshot_every` entries.

use std::sync::Arc;

use hazina_replica::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use hazina_replica::raft::{self, GetEntriesContext, RaftState, Storage};
use hazina_replica::{LogStore, MemLog, WriteError, wire};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use crate::{CF_RAFT, Store, StoreError, key_array};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAPSHOT: &[u8] = b"snapshot";
const OFFSET: &[u8] = b"offset";

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'e';
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The raft log of one site, durable in RocksDB and served from memory.
pub struct RaftLog {
    store: Arc<Store>,
    mem: MemLog,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").field("log", &self.mem).finish()
    }
}

fn write_error(e: impl std::fmt::Display) -> WriteError {
    WriteError(e.to_string())
}

impl RaftLog {
    /// Reads the log back from `store`. A store that never held one starts an empty log of a
    /// group of `voters`; one that did must name the same voters.
    pub fn open(store: Arc<Store>, voters: &[u64]) -> Result<RaftLog, StoreError> {
        let cf = store.cf(CF_RAFT);
        let db = &store.db;
        let read = |key: &[u8]| db.get_cf(cf, key);
        let corrupt = |what: &str, e: wire::WireError| StoreError::Corrupt(format!("{what}: {e}"));
        let hard_state: HardState = match read(HARD_STATE)? {
            Some(bytes) => wire::decode(&bytes).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let conf_state: ConfState = match read(CONF_STATE)? {
            Some(bytes) => wire::decode(&bytes).map_err(|e| corrupt("conf state", e))?,
            None => {
                let conf = ConfState { voters: voters.to_vec(), ..ConfState::default() };
                db.put_cf(cf, CONF_STATE, wire::encode(&conf))?;
                conf
            }
        };
        let mut stored: Vec<u64> = conf_state.voters.clone();
        let mut wanted = voters.to_vec();
        stored.sort_unstable();
        wanted.sort_unstable();
        if stored != wanted {
            return Err(StoreError::Corrupt(format!(
                "the stored log belongs to a group of sites {stored:?}, not {wanted:?}"
            )));
        }
        let snapshot: Option<Snapshot> = match read(SNAPSHOT)? {
            Some(bytes) => Some(wire::decode(&bytes).map_err(|e| corrupt("snapshot", e))?),
            None => None,
        };
        let offset = match read(OFFSET)? {
            Some(bytes) => {
                let b: [u8; 16] = key_array(&bytes, "raft offset")?;
                let (index, term) = b.split_at(8);
                (
                    u64::from_be_bytes(index.try_into().expect("8 bytes")),
                    u64::from_be_bytes(term.try_into().expect("8 bytes")),
                )
            }
            None => (0, 0),
        };
        let mut entries = Vec::new();
        let start = entry_key(offset.0 + 1);
        let iter = db.iterator_cf(cf, IteratorMode::From(&start, rocksdb::Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if key.first() != Some(&b'e') {
                break;
            }
            let entry: Entry = wire::decode(&value).map_err(|e| corrupt("raft entry", e))?;
            entries.push(entry);
        }
        let mem = MemLog::restore(hard_state, conf_state, snapshot, offset, entries)
            .map_err(|e| StoreError::Corrupt(e.0))?;
        Ok(RaftLog { store, mem })
    }

    /// The log as held in memory (for status and tests).
    pub fn mem(&self) -> &MemLog {
        &self.mem
    }

    fn commit(&self, batch: WriteBatch, sync: bool) -> Result<(), WriteError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.store.db.write_opt(batch, &options).map_err(write_error)
    }

    fn put_offset(&self, batch: &mut WriteBatch) {
        let (index, term) = self.mem.offset();
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&index.to_be_bytes());
        value[8..].copy_from_slice(&term.to_be_bytes());
        batch.put_cf(self.store.cf(CF_RAFT), OFFSET, value);
    }
}

impl LogStore for RaftLog {
    fn write(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), WriteError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        // The memory copy checks that the entries follow the log; then the disk gets the same.
        self.mem.write(entries, hard_state)?;
        let cf = self.store.cf(CF_RAFT);
        let mut batch = WriteBatch::default();
        if let Some(first) = entries.first() {
            // A new leader's entries replace a conflicting tail.
            batch.delete_range_cf(cf, entry_key(first.index), entry_key(u64::MAX));
            for entry in entries {
                batch.put_cf(cf, entry_key(entry.index), wire::encode(entry));
            }
        }
        if let Some(hs) = hard_state {
            batch.put_cf(cf, HARD_STATE, wire::encode(hs));
        }
        self.commit(batch, true)
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), WriteError> {
        self.mem.set_commit(commit)?;
        // Not synced: a commit index lost in a crash is learnt again from the leader.
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(CF_RAFT), HARD_STATE, wire::encode(&self.mem.hard_state()));
        self.commit(batch, false)
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), WriteError> {
        self.mem.install_snapshot(snapshot)?;
        let cf = self.store.cf(CF_RAFT);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, entry_key(0), entry_key(u64::MAX));
        batch.put_cf(cf, SNAPSHOT, wire::encode(snapshot));
        batch.put_cf(cf, HARD_STATE, wire::encode(&self.mem.hard_state()));
        batch.put_cf(cf, CONF_STATE, wire::encode(&self.mem.conf_state()));
        self.put_offset(&mut batch);
        self.commit(batch, true)
    }

    fn compact(&mut self, snapshot: Snapshot, compact_to: u64) -> Result<(), WriteError> {
        let mut batch = WriteBatch::default();
        let cf = self.store.cf(CF_RAFT);
        batch.put_cf(cf, SNAPSHOT, wire::encode(&snapshot));
        self.mem.compact(snapshot, compact_to)?;
        let (offset, _) = self.mem.offset();
        batch.delete_range_cf(cf, entry_key(0), entry_key(offset + 1));
        self.put_offset(&mut batch);
        // One atomic write: the snapshot is there before the entries it replaces go. Not
        // synced: if it is lost, the entries are still there.
        self.commit(batch, false)
    }

    fn kept_snapshot(&self) -> Option<Snapshot> {
        self.mem.kept_snapshot()
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Storage::first_index(&self.mem)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Storage::last_index(&self.mem)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}
