//! The replicated log on RocksDB: [`RaftLog`], the [`LogStore`] a replica writes in `hazinad`.
//!
//! It is a RocksDB database of its own (`<data dir>/raft` in `hazinad`), apart from the state
//! ([`crate::Store`]): with both in one database, a synced log write that came when the state's
//! memtables were switched waited for it, seconds on a busy machine (docs/BENCHMARKS.md), and
//! a primary that waits that long loses its place. Its keys:
//!
//! | key             | value                                              |
//! |-----------------|----------------------------------------------------|
//! | `e` + index BE  | one raft entry (its payload is a `codec` entry)    |
//! | `hard_state`    | term, vote and commit                              |
//! | `conf_state`    | the voters                                         |
//! | `snapshot`      | the kept snapshot's metadata; its bytes are the file `snapshot-<index>` beside the database |
//! | `offset`        | index and term just before the first entry held    |
//!
//! Every write of entries or of the term and vote is one synced RocksDB write: raft's messages
//! that promise it (votes, append acknowledgements) are sent only after it returns. The log is
//! also kept in memory ([`MemLog`]), which serves raft's reads; it is bounded because the
//! replica compacts it behind a snapshot every `snapshot_every` entries.

use std::path::Path;

use hazina_replica::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use hazina_replica::raft::{self, GetEntriesContext, RaftState, Storage};
use hazina_replica::{LogStore, MemLog, WriteError, wire};
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

use crate::{StoreError, db_options, key_array};

/// Tuning of the raft log's database.
#[derive(Clone, Debug)]
pub struct RaftLogOptions {
    /// Bytes of the memtable: the log between two flushes.
    pub write_buffer_bytes: usize,
    /// Table files RocksDB keeps open at most ([`crate::StoreOptions::table_files_max`]). The
    /// log is compacted behind every snapshot and holds a few files: by default at most
    /// [`RAFT_LOG_FILES_OPEN_MAX`], so that a log that grew while a standby was away cannot
    /// take the descriptors the state and the connections need.
    pub table_files_max: Option<u32>,
}

/// The raft log's default bound on open table files.
pub const RAFT_LOG_FILES_OPEN_MAX: u32 = 64;

impl Default for RaftLogOptions {
    fn default() -> RaftLogOptions {
        RaftLogOptions {
            write_buffer_bytes: 32 << 20,
            table_files_max: Some(RAFT_LOG_FILES_OPEN_MAX),
        }
    }
}

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
    db: DB,
    dir: std::path::PathBuf,
    mem: MemLog,
    /// Time spent in writes to the database since open, for the host's slow-round reports.
    write_time: std::cell::Cell<std::time::Duration>,
}

fn snapshot_path(dir: &Path, index: u64) -> std::path::PathBuf {
    dir.join(format!("snapshot-{index:020}"))
}

/// Writes a snapshot's bytes where [`RaftLog`] keeps them for `index`, synced, so that a
/// host encoding a snapshot on another thread can write it there too, before handing it to
/// the replica: keeping it then writes only its metadata.
pub fn write_snapshot_file(dir: &Path, index: u64, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = snapshot_path(dir, index);
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    // A few megabytes at a time, each synced: a large snapshot written at once and synced at
    // the end would hold up the log's synced writes behind its dirty pages.
    for chunk in data.chunks(8 << 20) {
        file.write_all(chunk)?;
        file.sync_data()?;
    }
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()
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
    pub fn open(
        path: &Path,
        options: &RaftLogOptions,
        voters: &[u64],
    ) -> Result<RaftLog, StoreError> {
        let mut db_options = db_options(options.table_files_max)?;
        db_options.set_write_buffer_size(options.write_buffer_bytes);
        // A full memtable waits for its flush while the next fills; only with this many full
        // ones waiting do writes stop.
        db_options.set_max_write_buffer_number(4);
        let db = DB::open(&db_options, path)?;
        let read = |key: &[u8]| db.get(key);
        let corrupt = |what: &str, e: wire::WireError| StoreError::Corrupt(format!("{what}: {e}"));
        let hard_state: HardState = match read(HARD_STATE)? {
            Some(bytes) => wire::decode(&bytes).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let conf_state: ConfState = match read(CONF_STATE)? {
            Some(bytes) => wire::decode(&bytes).map_err(|e| corrupt("conf state", e))?,
            None => {
                let conf = ConfState { voters: voters.to_vec(), ..ConfState::default() };
                db.put(CONF_STATE, wire::encode(&conf))?;
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
            Some(bytes) => {
                let mut snapshot: Snapshot =
                    wire::decode(&bytes).map_err(|e| corrupt("snapshot", e))?;
                let file = snapshot_path(path, snapshot.get_metadata().index);
                let data = std::fs::read(&file).map_err(|e| {
                    StoreError::Corrupt(format!("snapshot file {}: {e}", file.display()))
                })?;
                snapshot.data = data.into();
                Some(snapshot)
            }
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
        let iter = db.iterator(IteratorMode::From(&start, rocksdb::Direction::Forward));
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
        Ok(RaftLog { db, dir: path.to_owned(), mem, write_time: Default::default() })
    }

    /// The log as held in memory (for status and tests).
    pub fn mem(&self) -> &MemLog {
        &self.mem
    }

    fn commit(&self, batch: WriteBatch, sync: bool) -> Result<(), WriteError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        let started = std::time::Instant::now();
        let written = self.db.write_opt(batch, &options).map_err(write_error);
        self.write_time.set(self.write_time.get() + started.elapsed());
        written
    }

    /// Time spent writing to the database (entries, term and vote, commit index) since open.
    pub fn write_time(&self) -> std::time::Duration {
        self.write_time.get()
    }

    /// Removes the file of the snapshot kept before, now replaced by the one at `index`.
    fn remove_snapshot_file(&self, before: Option<u64>, index: u64) {
        if let Some(old) = before.filter(|&old| old != index) {
            // A file left behind costs disk space only; the next open reads the new one.
            let _ = std::fs::remove_file(snapshot_path(&self.dir, old));
        }
    }

    /// The folder of the log's database and its snapshot files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn put_offset(&self, batch: &mut WriteBatch) {
        let (index, term) = self.mem.offset();
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&index.to_be_bytes());
        value[8..].copy_from_slice(&term.to_be_bytes());
        batch.put(OFFSET, value);
    }
}

/// A snapshot without its bytes, for the database (the bytes are in their file).
fn metadata_only(snapshot: &Snapshot) -> Snapshot {
    let mut meta = Snapshot::default();
    meta.set_metadata(snapshot.get_metadata().clone());
    meta
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
        let last = self.mem.last_index();
        self.mem.write(entries, hard_state)?;
        let mut batch = WriteBatch::default();
        if let Some(first) = entries.first() {
            if first.index <= last {
                // A new leader's entries replace a conflicting tail. Only then: a range
                // deletion on every append left thousands of tombstones in the memtable, and
                // switching memtables then held up the next synced write for seconds.
                batch.delete_range(entry_key(first.index), entry_key(last + 1));
            }
            for entry in entries {
                batch.put(entry_key(entry.index), wire::encode(entry));
            }
        }
        if let Some(hs) = hard_state {
            batch.put(HARD_STATE, wire::encode(hs));
        }
        self.commit(batch, true)
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), WriteError> {
        self.mem.set_commit(commit)?;
        // Not synced: a commit index lost in a crash is learnt again from the leader.
        let mut batch = WriteBatch::default();
        batch.put(HARD_STATE, wire::encode(&self.mem.hard_state()));
        self.commit(batch, false)
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), WriteError> {
        let kept = self.mem.kept_snapshot().map(|s| s.get_metadata().index);
        self.mem.install_snapshot(snapshot)?;
        let index = snapshot.get_metadata().index;
        write_snapshot_file(&self.dir, index, &snapshot.data).map_err(write_error)?;
        let mut batch = WriteBatch::default();
        batch.delete_range(entry_key(0), entry_key(u64::MAX));
        batch.put(SNAPSHOT, wire::encode(&metadata_only(snapshot)));
        batch.put(HARD_STATE, wire::encode(&self.mem.hard_state()));
        batch.put(CONF_STATE, wire::encode(&self.mem.conf_state()));
        self.put_offset(&mut batch);
        self.commit(batch, true)?;
        self.remove_snapshot_file(kept, index);
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot, compact_to: u64) -> Result<(), WriteError> {
        let kept = self.mem.kept_snapshot().map(|s| s.get_metadata().index);
        let index = snapshot.get_metadata().index;
        let file = snapshot_path(&self.dir, index);
        let written = std::fs::metadata(&file).is_ok_and(|m| m.len() == snapshot.data.len() as u64);
        if !written {
            write_snapshot_file(&self.dir, index, &snapshot.data).map_err(write_error)?;
        }
        let mut batch = WriteBatch::default();
        batch.put(SNAPSHOT, wire::encode(&metadata_only(&snapshot)));
        self.mem.compact(snapshot, compact_to)?;
        let (offset, _) = self.mem.offset();
        batch.delete_range(entry_key(0), entry_key(offset + 1));
        self.put_offset(&mut batch);
        // One atomic write, after the file is synced: the snapshot is there before the entries
        // it replaces go, and the old file goes only once this is durable.
        self.commit(batch, true)?;
        self.remove_snapshot_file(kept, index);
        Ok(())
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
