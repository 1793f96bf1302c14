//! The raft log a replica writes: the [`LogStore`] trait, and [`MemLog`], an in-memory log for
//! the deterministic simulation that can tear its next write the way a crash during a write
//! does.

use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// A write that did not complete: the process must stop (fail-stop), as after any storage error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteError(pub String);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "log write failed: {}", self.0)
    }
}

impl std::error::Error for WriteError {}

/// A raft log that a replica can read (raft's [`Storage`]) and write.
pub trait LogStore: Storage {
    /// Appends `entries`, first dropping any entries at or after the first one's index (a new
    /// leader's log replaces a conflicting tail), and sets the hard state if one is given: one
    /// durable write, done when it returns.
    fn write(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), WriteError>;

    /// Records the commit index raft reached (it never decreases).
    fn set_commit(&mut self, commit: u64) -> Result<(), WriteError>;
}

/// An in-memory raft log. Clones share the same log, so a simulation keeps it across the crash
/// of the replica that wrote it, as a disk would. Never compacted, so it never serves a
/// snapshot; catching up from a checkpoint comes with the RocksDB log.
#[derive(Clone, Default)]
pub struct MemLog {
    inner: Arc<Mutex<MemLogInner>>,
}

#[derive(Default)]
struct MemLogInner {
    hard_state: HardState,
    conf_state: ConfState,
    /// Entry `i` sits at position `i - 1`.
    entries: Vec<Entry>,
    /// Keep only this many entries of the next write, drop its hard state, and fail it.
    tear_next_write: Option<usize>,
}

impl std::fmt::Debug for MemLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("MemLog")
            .field("term", &inner.hard_state.term)
            .field("commit", &inner.hard_state.commit)
            .field("last_index", &inner.entries.len())
            .finish()
    }
}

impl MemLog {
    /// An empty log of a group with these voters.
    pub fn new(voters: &[u64]) -> MemLog {
        let log = MemLog::default();
        log.inner.lock().conf_state.voters = voters.to_vec();
        log
    }

    /// Makes the next write of entries fail after keeping at most `keep` of them and none of its
    /// hard state: what a crash part-way through a write leaves on disk. The replica's messages
    /// that depend on that write are never sent, so nothing was acknowledged from it.
    pub fn tear_next_write(&self, keep: usize) {
        self.inner.lock().tear_next_write = Some(keep);
    }

    /// A copy of the entries from `from` (1-based) to the end.
    pub fn entries_from(&self, from: u64) -> Vec<Entry> {
        let inner = self.inner.lock();
        let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
        inner.entries.get(start..).map(<[Entry]>::to_vec).unwrap_or_default()
    }

    pub fn hard_state(&self) -> HardState {
        self.inner.lock().hard_state.clone()
    }

    pub fn last_index(&self) -> u64 {
        self.inner.lock().entries.len() as u64
    }
}

impl MemLogInner {
    fn truncate_to(&mut self, first_index: u64) {
        let keep = usize::try_from(first_index.saturating_sub(1)).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
    }
}

impl LogStore for MemLog {
    fn write(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), WriteError> {
        let mut inner = self.inner.lock();
        if let Some(first) = entries.first() {
            let last = inner.entries.len() as u64;
            if first.index == 0 || first.index > last + 1 {
                return Err(WriteError(format!(
                    "entry {} does not follow the log's last entry {last}",
                    first.index
                )));
            }
            inner.truncate_to(first.index);
        }
        if let Some(keep) = inner.tear_next_write.take_if(|_| !entries.is_empty()) {
            let kept = keep.min(entries.len());
            inner.entries.extend_from_slice(&entries[..kept]);
            return Err(WriteError(format!("torn: {kept} of {} entries kept", entries.len())));
        }
        inner.entries.extend_from_slice(entries);
        if let Some(hs) = hard_state {
            inner.hard_state = hs.clone();
        }
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), WriteError> {
        let mut inner = self.inner.lock();
        inner.hard_state.commit = inner.hard_state.commit.max(commit);
        Ok(())
    }
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.inner.lock();
        Ok(RaftState { hard_state: inner.hard_state.clone(), conf_state: inner.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let inner = self.inner.lock();
        let last = inner.entries.len() as u64;
        if low == 0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let range = usize::try_from(low - 1).unwrap_or(usize::MAX)
            ..usize::try_from(high - 1).unwrap_or(usize::MAX);
        let mut out = inner.entries[range].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let inner = self.inner.lock();
        if idx == 0 {
            return Ok(0);
        }
        let at = usize::try_from(idx - 1).unwrap_or(usize::MAX);
        inner.entries.get(at).map(|e| e.term).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.inner.lock().entries.len() as u64)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Never compacted, so raft never needs one; asking again later is raft's answer to this.
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}
