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

    /// Installs a snapshot received from the leader: the log before and at its index is
    /// replaced by it (the entries after it go too: the leader sends them again).
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), WriteError>;

    /// Keeps `snapshot` (of this replica's own state at an applied index) and drops the entries
    /// before `compact_to`, which must not pass the snapshot's index.
    fn compact(&mut self, snapshot: Snapshot, compact_to: u64) -> Result<(), WriteError>;

    /// The snapshot kept by the last `compact` or `install_snapshot`, if any.
    fn kept_snapshot(&self) -> Option<Snapshot>;
}

/// An in-memory raft log. Clones share the same log, so a simulation keeps it across the crash
/// of the replica that wrote it, as a disk would. Compacted behind a kept snapshot, which it
/// serves to followers too far behind.
#[derive(Clone, Default)]
pub struct MemLog {
    inner: Arc<Mutex<MemLogInner>>,
}

#[derive(Default)]
struct MemLogInner {
    hard_state: HardState,
    conf_state: ConfState,
    /// The index and term of the entry just before `entries[0]` (0, 0 when nothing was
    /// compacted): entry `i` sits at position `i - offset - 1`.
    offset: u64,
    offset_term: u64,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
    /// Keep only this many entries of the next write, drop its hard state, and fail it.
    tear_next_write: Option<usize>,
}

impl std::fmt::Debug for MemLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("MemLog")
            .field("term", &inner.hard_state.term)
            .field("commit", &inner.hard_state.commit)
            .field("first_index", &(inner.offset + 1))
            .field("last_index", &inner.last_index())
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

    /// A log as a host stored it: the hard and configuration state, the snapshot it keeps (if
    /// any), the index and term just before `entries`, and the entries, in order.
    pub fn restore(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: Option<Snapshot>,
        offset: (u64, u64),
        entries: Vec<Entry>,
    ) -> Result<MemLog, WriteError> {
        for (expected, entry) in (offset.0 + 1..).zip(&entries) {
            if entry.index != expected {
                return Err(WriteError(format!(
                    "stored entry {} where {expected} was expected",
                    entry.index
                )));
            }
        }
        let inner = MemLogInner {
            hard_state,
            conf_state,
            offset: offset.0,
            offset_term: offset.1,
            entries,
            snapshot,
            tear_next_write: None,
        };
        Ok(MemLog { inner: Arc::new(Mutex::new(inner)) })
    }

    /// The index and term just before the first entry held (0, 0 if nothing was compacted).
    pub fn offset(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.offset, inner.offset_term)
    }

    pub fn conf_state(&self) -> ConfState {
        self.inner.lock().conf_state.clone()
    }

    /// Makes the next write of entries fail after keeping at most `keep` of them and none of its
    /// hard state: what a crash part-way through a write leaves on disk. The replica's messages
    /// that depend on that write are never sent, so nothing was acknowledged from it.
    pub fn tear_next_write(&self, keep: usize) {
        self.inner.lock().tear_next_write = Some(keep);
    }

    /// A copy of the entries still held from `from` to the end.
    pub fn entries_from(&self, from: u64) -> Vec<Entry> {
        let inner = self.inner.lock();
        let start = inner.position(from.max(inner.offset + 1));
        inner.entries.get(start..).map(<[Entry]>::to_vec).unwrap_or_default()
    }

    pub fn hard_state(&self) -> HardState {
        self.inner.lock().hard_state.clone()
    }

    /// The first index still held (entries before it were compacted).
    pub fn first_index(&self) -> u64 {
        self.inner.lock().offset + 1
    }

    pub fn last_index(&self) -> u64 {
        self.inner.lock().last_index()
    }
}

impl MemLogInner {
    fn last_index(&self) -> u64 {
        self.offset + self.entries.len() as u64
    }

    /// Where entry `index` (past the offset) sits in `entries`.
    fn position(&self, index: u64) -> usize {
        usize::try_from(index - self.offset - 1).unwrap_or(usize::MAX)
    }

    fn truncate_to(&mut self, first_index: u64) {
        let keep = self.position(first_index);
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
            let last = inner.last_index();
            if first.index <= inner.offset || first.index > last + 1 {
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

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), WriteError> {
        let mut inner = self.inner.lock();
        let meta = snapshot.get_metadata();
        if meta.index <= inner.offset {
            return Err(WriteError(format!(
                "snapshot at {} is older than the log's start {}",
                meta.index, inner.offset
            )));
        }
        inner.entries.clear();
        inner.offset = meta.index;
        inner.offset_term = meta.term;
        inner.hard_state.commit = inner.hard_state.commit.max(meta.index);
        inner.hard_state.term = inner.hard_state.term.max(meta.term);
        inner.conf_state = meta.get_conf_state().clone();
        inner.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot, compact_to: u64) -> Result<(), WriteError> {
        let mut inner = self.inner.lock();
        let index = snapshot.get_metadata().index;
        if compact_to > index || index > inner.last_index() || index < inner.offset {
            return Err(WriteError(format!(
                "compacting to {compact_to} with a snapshot at {index}, log ends at {}",
                inner.last_index()
            )));
        }
        if compact_to > inner.offset + 1 {
            let drop_through = compact_to - 1;
            let at = inner.position(drop_through);
            inner.offset_term = inner.entries[at].term;
            inner.entries.drain(..=at);
            inner.offset = drop_through;
        }
        inner.snapshot = Some(snapshot);
        Ok(())
    }

    fn kept_snapshot(&self) -> Option<Snapshot> {
        self.inner.lock().snapshot.clone()
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
        if low <= inner.offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > inner.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = inner.entries[inner.position(low)..inner.position(high)].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let inner = self.inner.lock();
        if idx == inner.offset {
            return Ok(inner.offset_term);
        }
        if idx < inner.offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        inner
            .entries
            .get(inner.position(idx))
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.inner.lock().offset + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.inner.lock().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The kept one, as long as it is recent enough; otherwise raft asks again later, after
        // the next compaction.
        match &self.inner.lock().snapshot {
            Some(s) if s.get_metadata().index >= request_index => Ok(s.clone()),
            _ => Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}
