//! # hazina-store
//!
//! Hazina's storage on RocksDB, the only crate that links RocksDB. One database, four column
//! families:
//!
//! | family       | key                                   | value                              |
//! |--------------|---------------------------------------|------------------------------------|
//! | `log`        | entry index (u64, big-endian)         | the entry ([`hazina_core::codec`]) |
//! | `transfers`  | transfer id (u128 BE)                 | the record, failed transfers too   |
//! | `history`    | account id, timestamp (BE), format    | one posted movement and the balance|
//! | `checkpoint` | `a` + account id                      | the account as it stands           |
//! |              | `h` + transfer id of a pending hold   | the hold's record                  |
//! |              | `mapplied`, `mprofiles`               | where the checkpoint stands        |
//!
//! Two kinds of write, with different durability:
//! - [`Store::append`] writes log entries with a synced write-ahead log: once it returns, the
//!   entries survive a crash of the process or the machine. Results are returned to callers
//!   only after this.
//! - [`Store::write_state`] stages what an entry changed (accounts, records, statement lines)
//!   **in memory**, where reads find it. [`Store::checkpoint`] writes everything staged as one
//!   sorted file per family and ingests them: first the records and the statement lines, then
//!   the `checkpoint` family's file, in one step, so the stored checkpoint is always exactly the
//!   effect of the entries up to its `applied` index. A crash loses only what is staged, which
//!   is fine: the log still holds those entries and recovery replays them. Records and lines
//!   ingested just before a crash may be ahead of the checkpoint; replaying writes them again,
//!   unchanged, and a replayed batch treats a stored record stamped after the ledger's clock
//!   as absent (it is the record the replay is about to write).
//!
//! Writing the state once per checkpoint, sorted, instead of through RocksDB's memtables at
//! every entry, is what let the node's storage keep up (docs/adr/0009).
//!
//! A site of a replicated group keeps raft's log in a database of its own, [`RaftLog`], beside
//! the state: its synced writes then never wait for the state's memtables to be switched and
//! flushed (measured: seconds, docs/BENCHMARKS.md). Its state database holds only statement
//! lines, staged in memory like a single site's state ([`Store::stage_statements`]) and written
//! as sorted files ([`Store::write_staged_lines`]) at least before each of raft's snapshots is
//! kept: the site rebuilds its ledger from raft's snapshot and log, never from a stored
//! checkpoint, and its restart replays (and stages again) the lines of the entries after it.

mod known;
mod pending;
mod raft_log;

pub use known::KnownIdsState;
pub use raft_log::{RAFT_LOG_FILES_OPEN_MAX, RaftLog, RaftLogOptions, write_snapshot_file};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use hazina_core::codec::{self, CodecError, Entry};
use hazina_core::{
    Account, Command, HistoryEntry, HistoryPage, HoldState, Ledger, LimitProfile, LimitProfileId,
    ResultCode, Timestamp, Transfer,
};
use known::{KnownIds, Scanned};
use parking_lot::{Mutex, RwLock};
use pending::Pending;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, IngestExternalFileOptions,
    IteratorMode, Options, ReadOptions, SstFileWriter, WriteBatch, WriteOptions,
};

const CF_LOG: &str = "log";
const CF_TRANSFERS: &str = "transfers";
const CF_HISTORY: &str = "history";
const CF_CHECKPOINT: &str = "checkpoint";
const FAMILIES: [&str; 4] = [CF_LOG, CF_TRANSFERS, CF_HISTORY, CF_CHECKPOINT];
/// The families of stores written before session 13, which kept the checkpoint in three
/// families written at every entry: [`Store::open`] moves such a checkpoint into the
/// `checkpoint` family once and drops them.
const CF_LEGACY_ACCOUNTS: &str = "accounts";
const CF_LEGACY_HOLDS: &str = "holds";
const CF_LEGACY_META: &str = "meta";
const LEGACY_FAMILIES: [&str; 3] = [CF_LEGACY_ACCOUNTS, CF_LEGACY_HOLDS, CF_LEGACY_META];

/// Key prefixes of the `checkpoint` family, in the order they sort.
const KEY_ACCOUNT: u8 = b'a';
const KEY_HOLD: u8 = b'h';
const KEY_APPLIED: &[u8] = b"mapplied";
const KEY_PROFILES: &[u8] = b"mprofiles";
/// The most accounts [`Store::load_checkpoint`] makes room for before reading them.
const ACCOUNTS_PRESIZE_MAX: usize = 50_000_000;
const ESTIMATE_NUM_KEYS: &rocksdb::properties::PropName = rocksdb::properties::ESTIMATE_NUM_KEYS;
/// Where the legacy `meta` family kept them.
const LEGACY_META_APPLIED: &[u8] = b"applied";
const LEGACY_META_PROFILES: &[u8] = b"profiles";
/// The folder, inside the database's, where a checkpoint writes its files before RocksDB takes
/// them in.
const INGEST_DIR: &str = "ingest";

/// A storage failure. The node stops on any of them: a ledger that cannot write must not
/// answer.
#[derive(Debug)]
pub enum StoreError {
    Rocks(rocksdb::Error),
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Rocks(e) => write!(f, "rocksdb: {e}"),
            StoreError::Corrupt(what) => write!(f, "corrupt store: {what}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> StoreError {
        StoreError::Rocks(e)
    }
}

impl From<CodecError> for StoreError {
    fn from(e: CodecError) -> StoreError {
        StoreError::Corrupt(e.to_string())
    }
}

/// Where the stored state stands: the effect of every entry up to `index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    /// [`hazina_core::Ledger::transfers_digest`] after that entry.
    pub transfers_digest: u128,
    pub timestamp_last: Timestamp,
}

/// What one applied entry changed, as [`hazina_core::Ledger::take_changes`] gives it.
#[derive(Debug, Default)]
pub struct Changes {
    pub accounts: Vec<Account>,
    /// In the order written; a later copy of an id supersedes an earlier one.
    pub transfers: Vec<Transfer>,
    /// Set when the entry changed a limit profile: every profile, as they now stand.
    pub profiles: Option<BTreeMap<LimitProfileId, LimitProfile>>,
}

/// Everything needed to rebuild the ledger as of [`Applied::index`].
#[derive(Debug)]
pub struct Checkpoint {
    pub applied: Applied,
    pub accounts: Vec<Account>,
    pub profiles: BTreeMap<LimitProfileId, LimitProfile>,
    pub holds: Vec<Transfer>,
}

/// What a checkpoint wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpointed {
    /// The index of the last entry the stored checkpoint covers.
    pub index: u64,
    /// Transfer records, statement lines and accounts written (each once, at its latest).
    pub records: usize,
    pub lines: usize,
    pub accounts: usize,
}

/// Tuning of the database. The defaults suit a node with a few GiB for RocksDB.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of each column family's memtable.
    pub write_buffer_bytes: usize,
    /// Bytes of the shared block cache.
    pub block_cache_bytes: usize,
    /// Commands a staged layer's lists are sized for when it is made: twice the node's
    /// checkpoint interval (a layer holds one and a little more while checkpoints keep up, up
    /// to three when they fall behind). A layer that grew by doubling copied itself into fresh
    /// pages each time, 75% of the node's page faults under batched load (docs/BENCHMARKS.md,
    /// session 14). The room is address space only: the lists fill their pages in order. 0:
    /// no sizing.
    pub staged_commands: usize,
    /// Entries stage only statement lines ([`Store::stage_statements`], a replicated site):
    /// a staged layer is sized for those alone.
    pub stage_lines_only: bool,
    /// Memory the filters of known transfer ids may take (ADR 0011): the named ids' at most
    /// this, the stored ids' as much again; past it they are dropped and every id is searched
    /// for.
    pub known_ids_bytes_max: usize,
    /// Table files RocksDB keeps open at most; past this it closes the least used and opens
    /// files again as reads need them. `None` keeps every file open, RocksDB's default: a
    /// history of many files then needs as many descriptors, and a store that cannot open
    /// a new file stops taking writes.
    pub table_files_max: Option<u32>,
}

/// Where the filters of known transfer ids stand ([`Store::known_transfer_ids`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownTransferIds {
    pub state: KnownIdsState,
    /// Ids in the filters.
    pub ids: usize,
    /// Memory they take.
    pub bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            write_buffer_bytes: 64 << 20,
            block_cache_bytes: 512 << 20,
            staged_commands: 0,
            stage_lines_only: false,
            known_ids_bytes_max: known::KNOWN_IDS_BYTES_MAX,
            table_files_max: None,
        }
    }
}

/// Memtables per family: one written, the others full and waiting for their flush. RocksDB
/// slows every write of the database when three are waiting, and stops them at four.
const MEMTABLES_MAX: i32 = 4;
/// Full memtables of one family waiting for a flush at which [`WritePressure::level`] is 0,
/// and at which it is 1 (RocksDB stops writes there).
const MEMTABLES_WAITING_THROTTLE: i32 = MEMTABLES_MAX - 1;
const MEMTABLES_WAITING_REFUSE: i32 = MEMTABLES_MAX;
/// Level-0 files of one large family at which RocksDB starts to slow every write of the
/// database (its delayed write rate, which it lowers while the files grow), and at which it
/// stops them. RocksDB's own slowdown is gentle while its rate stays high: in session 8's
/// batched runs on 10M accounts its rate never fell below 164 MB/s, and a node throttling
/// from 12 or from 20 files carried 151,000 to 154,000 transfers/s with a p99 of 1.25 s
/// (callers backing off) where RocksDB alone carried 169,000 to 179,000 with 313 to 338 ms. So
/// the flow control is a guard against RocksDB's stops and its rate's collapse, not a second
/// throttle: [`WritePressure::level`] is 0 at [`LEVEL0_THROTTLE_FILES`] and 1 at
/// [`LEVEL0_REFUSE_FILES`], two before the stop.
const LEVEL0_SLOWDOWN_FILES: i32 = 20;
const LEVEL0_THROTTLE_FILES: i32 = 28;
const LEVEL0_REFUSE_FILES: i32 = 34;
const LEVEL0_STOP_FILES: i32 = 36;
/// RocksDB's delayed write rate at which [`WritePressure::level`] is 0, and at which it is 1.
/// RocksDB starts at the rate limit (256 MB/s) and lowers it by a fifth each time the debt
/// grows, down to 16 KB/s: an entry of 8,000 transfers (about a megabyte of state) then waits a
/// minute. At 16 MB/s it waits about 60 ms, at 2 MB/s half a second.
const DELAYED_RATE_THROTTLE: u64 = 16 << 20;
const DELAYED_RATE_REFUSE: u64 = 2 << 20;
/// The families whose compactions can fall behind (the log is trimmed behind every checkpoint
/// and stays small).
const LARGE_FAMILIES: [&str; 3] = [CF_CHECKPOINT, CF_TRANSFERS, CF_HISTORY];

/// How close RocksDB is to slowing or stopping writes, from its own counters: the node's flow
/// control slows its admission by it, so that callers are told to retry at once instead of
/// waiting, seconds at a time, in a write that RocksDB delays (docs/adr/0006-flow-control.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WritePressure {
    /// The large family with the most level-0 files, and how many it has.
    pub level0_family: &'static str,
    pub level0_files: u64,
    /// The family with the most full memtables waiting for a flush, and how many.
    pub memtable_family: &'static str,
    pub memtables_waiting: u64,
    /// Bytes a second RocksDB lets writes through while it delays them; 0 when it does not.
    pub delayed_write_rate: u64,
    /// RocksDB stopped writes (until a flush or a compaction catches up).
    pub write_stopped: bool,
}

impl WritePressure {
    /// 0 or less while RocksDB keeps up or slows writes only a little; 1 where it is about to
    /// stop them or has slowed them so much that an entry would wait half a second; in
    /// between, how far from the one to the other.
    pub fn level(&self) -> f64 {
        let between = |value: u64, low: i32, high: i32| {
            (value as f64 - f64::from(low)) / f64::from(high - low)
        };
        let level0 = between(self.level0_files, LEVEL0_THROTTLE_FILES, LEVEL0_REFUSE_FILES);
        let memtables =
            between(self.memtables_waiting, MEMTABLES_WAITING_THROTTLE, MEMTABLES_WAITING_REFUSE);
        let delayed = if self.write_stopped {
            1.0
        } else if self.delayed_write_rate == 0 {
            -1.0
        } else {
            // Each halving of the rate counts the same.
            let (rate, low, high) = (
                self.delayed_write_rate as f64,
                DELAYED_RATE_REFUSE as f64,
                DELAYED_RATE_THROTTLE as f64,
            );
            (high / rate).log2() / (high / low).log2()
        };
        level0.max(memtables).max(delayed)
    }
}

impl std::fmt::Display for WritePressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} level-0 files in {} (RocksDB slows writes from {LEVEL0_SLOWDOWN_FILES} and stops \
             them at {LEVEL0_STOP_FILES}), {} full memtables of {} waiting for a flush (it \
             stops them at {MEMTABLES_WAITING_REFUSE})",
            self.level0_files, self.level0_family, self.memtables_waiting, self.memtable_family
        )?;
        if self.write_stopped {
            write!(f, "; RocksDB has stopped writes")?;
        } else if self.delayed_write_rate > 0 {
            write!(f, "; RocksDB delays writes to {} KB/s", self.delayed_write_rate >> 10)?;
        }
        Ok(())
    }
}

/// The database. Safe to share between threads: one writes, any number read.
pub struct Store {
    db: Arc<DB>,
    /// What entries changed since the checkpoints began, in memory.
    layers: RwLock<Layers>,
    /// Held by the one checkpoint running.
    checkpointing: Mutex<()>,
    /// Each family's options, for the files a checkpoint writes too: the same table format,
    /// compression and filters as the family's own files.
    file_options: Vec<(&'static str, Options)>,
    ingest_dir: PathBuf,
    /// See [`StoreOptions::staged_commands`] and [`StoreOptions::stage_lines_only`].
    staged_commands: usize,
    stage_lines_only: bool,
    /// Which transfer ids may have a record (`known.rs`), for [`Store::load_named_records`].
    known: Mutex<KnownIds>,
    /// The thread reading the ids stored before the store opened, until they join `known`.
    scan: Mutex<ScanThread>,
    /// Tells the scan to stop: the store is closing.
    scan_stop: Arc<AtomicBool>,
}

/// The thread reading the stored transfer ids into filters (`known::scan`).
enum ScanThread {
    NotStarted,
    Running(JoinHandle<Result<Scanned, StoreError>>),
    Joined,
}

impl Drop for Store {
    /// Stops and waits for the scan of stored ids, which holds the database open.
    fn drop(&mut self) {
        self.scan_stop.store(true, Ordering::Relaxed);
        if let ScanThread::Running(scan) =
            std::mem::replace(self.scan.get_mut(), ScanThread::Joined)
        {
            let _ = scan.join();
        }
    }
}

/// The staged state: what the entries since the running checkpoint began changed (`active`),
/// and what the running checkpoint is writing (`frozen`). Changes move from `active` to
/// `frozen` to RocksDB, and a read looks in that order, so it never misses one on its way.
#[derive(Debug)]
struct Layers {
    active: Pending,
    frozen: Option<Arc<Pending>>,
    /// The last checkpoint's layer, emptied: its allocations serve the next one.
    spare: Option<Pending>,
}

impl Layers {
    fn newest_first(&self) -> impl Iterator<Item = &Pending> {
        std::iter::once(&self.active).chain(self.frozen.as_deref())
    }

    fn transfer(&self, id: u128) -> Option<Transfer> {
        self.newest_first().find_map(|layer| layer.transfer(id)).copied()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it if missing. A store written before the
    /// `checkpoint` family existed has its checkpoint moved there first.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let db_options = db_options(options.table_files_max)?;
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let file_options: Vec<(&'static str, Options)> =
            FAMILIES.iter().map(|&name| (name, family_options(name, options, &cache))).collect();
        let existing = DB::list_cf(&db_options, path).unwrap_or_default();
        let legacy: Vec<&str> =
            LEGACY_FAMILIES.into_iter().filter(|name| existing.iter().any(|e| e == name)).collect();
        let families = file_options
            .iter()
            .map(|(name, options)| ColumnFamilyDescriptor::new(*name, options.clone()))
            .chain(
                legacy.iter().map(|name| ColumnFamilyDescriptor::new(*name, Options::default())),
            );
        let db = DB::open_cf_descriptors(&db_options, path, families)?;
        // Files of a checkpoint that a crash interrupted before RocksDB took them in.
        let ingest_dir = path.join(INGEST_DIR);
        if ingest_dir.exists() {
            std::fs::remove_dir_all(&ingest_dir).map_err(|e| io_error(&ingest_dir, &e))?;
        }
        std::fs::create_dir_all(&ingest_dir).map_err(|e| io_error(&ingest_dir, &e))?;
        let mut store = Store {
            db: Arc::new(db),
            layers: RwLock::new(Layers {
                active: Pending::with_capacity(options.staged_commands, options.stage_lines_only),
                frozen: None,
                spare: None,
            }),
            checkpointing: Mutex::new(()),
            file_options,
            ingest_dir,
            staged_commands: options.staged_commands,
            stage_lines_only: options.stage_lines_only,
            known: Mutex::new(KnownIds::new(options.known_ids_bytes_max)),
            scan: Mutex::new(ScanThread::NotStarted),
            scan_stop: Arc::new(AtomicBool::new(false)),
        };
        if !legacy.is_empty() {
            store.move_legacy_checkpoint(&legacy)?;
        }
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every family is created at open")
    }

    /// Appends entries to the log and syncs it. Once this returns they survive any crash.
    pub fn append(&self, entries: &[&[u8]], indexes: &[u64]) -> Result<(), StoreError> {
        let log = self.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        for (bytes, index) in entries.iter().zip(indexes) {
            batch.put_cf(log, index.to_be_bytes(), bytes);
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// The index of the last entry in the log, or 0.
    pub fn last_index(&self) -> Result<u64, StoreError> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(0),
            Some(item) => {
                let (key, _) = item?;
                Ok(u64::from_be_bytes(key_array(&key, "log key")?))
            }
        }
    }

    /// The index of the first entry in the log (entries before it were trimmed), or 0.
    pub fn first_index(&self) -> Result<u64, StoreError> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::Start);
        match iter.next() {
            None => Ok(0),
            Some(item) => {
                let (key, _) = item?;
                Ok(u64::from_be_bytes(key_array(&key, "log key")?))
            }
        }
    }

    /// The entries after `index`, in order. Checks that they follow each other without gaps.
    pub fn entries_after(&self, index: u64) -> Result<Vec<Entry>, StoreError> {
        let start = (index + 1).to_be_bytes();
        let iter =
            self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::From(&start, Direction::Forward));
        let mut entries = Vec::new();
        for (expected, item) in (index + 1..).zip(iter) {
            let (key, value) = item?;
            let at = u64::from_be_bytes(key_array(&key, "log key")?);
            let entry = codec::decode_entry(&value)?;
            if at != expected || entry.index != at {
                return Err(StoreError::Corrupt(format!(
                    "log entry {at} (claims {}) where {expected} was expected",
                    entry.index
                )));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Stages what entry `applied.index` changed, in memory (see the crate documentation): from
    /// now on reads see it, and the next [`Store::checkpoint`] writes it.
    pub fn write_state(&self, applied: &Applied, changes: &Changes) -> Result<(), StoreError> {
        // Encoded before taking the lock, which readers wait for.
        let lines = history_lines(changes);
        let mut layers = self.layers.write();
        let pending = &mut layers.active;
        for account in &changes.accounts {
            pending.stage_account(account);
        }
        for record in &changes.transfers {
            pending.stage_transfer(record);
        }
        stage_lines(pending, lines);
        if let Some(profiles) = &changes.profiles {
            pending.profiles = Some(profiles.clone());
        }
        pending.applied = Some(*applied);
        Ok(())
    }

    /// Stages only the statement lines of what entries up to `index` changed, in memory, where
    /// [`Store::history`] finds them; [`Store::write_staged_lines`] writes them. For a site of a
    /// replicated group, which rebuilds its ledger from raft's snapshot and log and never reads
    /// a stored checkpoint: its accounts and records stay in the ledger's memory.
    pub fn stage_statements(&self, index: u64, changes: &Changes) -> Result<(), StoreError> {
        // Encoded before taking the lock, which readers wait for.
        let lines = history_lines(changes);
        let mut layers = self.layers.write();
        let pending = &mut layers.active;
        stage_lines(pending, lines);
        pending.applied = Some(Applied { index, ..Applied::default() });
        Ok(())
    }

    /// Writes the statement lines staged by [`Store::stage_statements`] as one sorted file of
    /// the `history` family and ingests it; lines staged meanwhile wait for the next call. Once
    /// it returns, the lines of every entry up to the returned index survive a crash. One runs
    /// at a time, like [`Store::checkpoint`].
    pub fn write_staged_lines(&self) -> Result<Checkpointed, StoreError> {
        let _one = self.checkpointing.lock();
        let mut written = Checkpointed::default();
        if let Some(frozen) = self.freeze() {
            written.index = frozen.applied.expect("a staged layer names its last entry").index;
            written.lines = frozen.lines.len();
            self.write_lines(&frozen)?;
            self.release(frozen);
        }
        Ok(written)
    }

    /// Statement lines staged and not yet being written.
    pub fn staged_lines(&self) -> usize {
        self.layers.read().active.lines.len()
    }

    /// Moves what is staged to the frozen layer, which a checkpoint writes while new entries
    /// are staged in a fresh one (the last checkpoint's, emptied, when there is one). `None`
    /// when nothing is staged. Called with `checkpointing` held.
    fn freeze(&self) -> Option<Arc<Pending>> {
        let mut layers = self.layers.write();
        if layers.active.is_empty() {
            return None;
        }
        let spare = layers
            .spare
            .take()
            .unwrap_or_else(|| Pending::with_capacity(self.staged_commands, self.stage_lines_only));
        let frozen = Arc::new(std::mem::replace(&mut layers.active, spare));
        layers.frozen = Some(Arc::clone(&frozen));
        Some(frozen)
    }

    /// Drops the frozen layer, written: reads find its changes in RocksDB from now on. Its
    /// allocations serve the next checkpoint.
    fn release(&self, frozen: Arc<Pending>) {
        let mut layers = self.layers.write();
        layers.frozen = None;
        // Nobody else holds it: readers look at it under the lock only.
        if let Ok(mut emptied) = Arc::try_unwrap(frozen) {
            emptied.clear();
            layers.spare = Some(emptied);
        }
    }

    /// Where the state stands: the last entry staged, else the stored checkpoint.
    pub fn applied(&self) -> Result<Applied, StoreError> {
        let staged = {
            let layers = self.layers.read();
            layers.newest_first().find_map(|layer| layer.applied)
        };
        match staged {
            Some(applied) => Ok(applied),
            None => self.stored_applied(),
        }
    }

    fn stored_applied(&self) -> Result<Applied, StoreError> {
        match self.db.get_cf(self.cf(CF_CHECKPOINT), KEY_APPLIED)? {
            None => Ok(Applied::default()),
            Some(bytes) => decode_applied(&bytes),
        }
    }

    /// Writes everything staged as sorted files, takes them into RocksDB (the checkpoint last,
    /// in one step) and trims the log up to `applied.index - retain`. Returns the index the
    /// stored checkpoint stands at and what it wrote. Entries keep being staged meanwhile; one
    /// checkpoint runs at a time.
    pub fn checkpoint(&self, retain: u64) -> Result<Checkpointed, StoreError> {
        let _one = self.checkpointing.lock();
        let frozen = self.freeze();
        let mut written = Checkpointed::default();
        let applied = match frozen {
            None => self.stored_applied()?,
            Some(frozen) => {
                let applied = frozen.applied.expect("a staged layer names its last entry");
                written.records = frozen.transfers.len();
                written.lines = frozen.lines.len();
                written.accounts = frozen.accounts.len();
                let records = pending::order_by(&frozen.transfers, |t| t.new.id);
                let holds = self.write_records(&frozen, &records)?;
                self.write_lines(&frozen)?;
                let accounts = pending::order_by(&frozen.accounts, |a| a.id);
                self.write_checkpoint(
                    &frozen.accounts,
                    &accounts,
                    &holds,
                    frozen.profiles.as_ref(),
                    &applied,
                )?;
                self.release(frozen);
                applied
            }
        };
        let trim_below = applied.index.saturating_sub(retain);
        if trim_below > 1 {
            let log = self.cf(CF_LOG);
            self.db.delete_range_cf(log, 0u64.to_be_bytes(), trim_below.to_be_bytes())?;
        }
        written.index = applied.index;
        Ok(written)
    }

    /// The staged records, as one sorted file of the `transfers` family; `order` is their
    /// positions sorted by id. Returns the holds among them, in the same order, for the
    /// checkpoint: `None` for one no longer pending.
    fn write_records(
        &self,
        frozen: &Pending,
        order: &[u32],
    ) -> Result<Vec<(u128, Option<Transfer>)>, StoreError> {
        let mut holds = Vec::new();
        let mut bytes = Vec::with_capacity(codec::TRANSFER_BYTES_MAX);
        self.ingest(CF_TRANSFERS, |file| {
            pending::gathered(&frozen.transfers, order, |records| {
                for record in records {
                    bytes.clear();
                    codec::encode_transfer(record, &mut bytes);
                    file.put(record.new.id.to_be_bytes(), &bytes)?;
                    if record.hold != HoldState::None {
                        holds.push((
                            record.new.id,
                            (record.hold == HoldState::Pending).then_some(*record),
                        ));
                    }
                }
                Ok(())
            })?;
            Ok(order.len())
        })?;
        Ok(holds)
    }

    /// The staged statement lines, as one sorted file of the `history` family.
    fn write_lines(&self, frozen: &Pending) -> Result<(), StoreError> {
        // Keys are account and stamp, big-endian, then the format, the same for every staged
        // line: they sort as the two numbers do.
        let mut keyed =
            pending::sorted_keys(&frozen.lines, |line| (line.account(), line.timestamp()));
        // One line per account and stamp; a file takes each key once.
        keyed.dedup_by_key(|(key, _)| *key);
        let order: Vec<u32> = keyed.into_iter().map(|(_, at)| at).collect();
        // A chunk's values are copied out before any is written, for the same reason as the
        // lines themselves (`gathered`).
        let mut values = Vec::with_capacity(pending::GATHER_CHUNK * 64);
        let mut ends = Vec::with_capacity(pending::GATHER_CHUNK);
        self.ingest(CF_HISTORY, |file| {
            pending::gathered(&frozen.lines, &order, |lines| {
                values.clear();
                ends.clear();
                for line in lines {
                    values.extend_from_slice(frozen.line_value(line));
                    ends.push(values.len());
                }
                let mut start = 0;
                for (line, &end) in lines.iter().zip(&ends) {
                    file.put(line.key, &values[start..end])?;
                    start = end;
                }
                Ok(())
            })?;
            Ok(order.len())
        })
    }

    /// One file of the `checkpoint` family: the `accounts` at the positions `order` (sorted by
    /// id), the `holds` (`None`: no longer pending) sorted by id, the profiles if they changed,
    /// and `applied`. RocksDB takes a file in whole or not at all, so a stored checkpoint is
    /// always one entry's cut.
    fn write_checkpoint(
        &self,
        accounts: &[Account],
        order: &[u32],
        holds: &[(u128, Option<Transfer>)],
        profiles: Option<&BTreeMap<LimitProfileId, LimitProfile>>,
        applied: &Applied,
    ) -> Result<(), StoreError> {
        let key = |prefix: u8, id: u128| {
            let mut key = [prefix; 17];
            key[1..].copy_from_slice(&id.to_be_bytes());
            key
        };
        let mut bytes = Vec::with_capacity(codec::ACCOUNT_BYTES_MAX.max(codec::TRANSFER_BYTES_MAX));
        self.ingest(CF_CHECKPOINT, |file| {
            pending::gathered(accounts, order, |accounts| {
                for account in accounts {
                    bytes.clear();
                    codec::encode_account(account, &mut bytes);
                    file.put(key(KEY_ACCOUNT, account.id), &bytes)?;
                }
                Ok(())
            })?;
            for (id, record) in holds {
                match record {
                    Some(record) => {
                        bytes.clear();
                        codec::encode_transfer(record, &mut bytes);
                        file.put(key(KEY_HOLD, *id), &bytes)?;
                    }
                    None => file.delete(key(KEY_HOLD, *id))?,
                }
            }
            file.put(KEY_APPLIED, encode_applied(applied))?;
            if let Some(profiles) = profiles {
                file.put(KEY_PROFILES, encode_profiles(profiles))?;
            }
            Ok(1)
        })
    }

    /// Writes one file for `family` (`write` adds its keys in order and returns how many) and
    /// has RocksDB take it in: linked into the database, then named in its manifest, synced.
    fn ingest(
        &self,
        family: &'static str,
        write: impl FnOnce(&mut SstFileWriter<'_>) -> Result<usize, rocksdb::Error>,
    ) -> Result<(), StoreError> {
        let options = &self
            .file_options
            .iter()
            .find(|(name, _)| *name == family)
            .expect("every family has its options")
            .1;
        let path = self.ingest_dir.join(format!("{family}.sst"));
        let mut file = SstFileWriter::create(options);
        file.open(&path)?;
        if write(&mut file)? == 0 {
            // RocksDB refuses an empty file; there is nothing to take in.
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        file.finish()?;
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db.ingest_external_file_cf_opts(self.cf(family), &ingest, vec![&path])?;
        Ok(())
    }

    /// Moves the checkpoint of a store written before the `checkpoint` family existed (its
    /// accounts, pending holds, profiles and `applied` in three families of their own) into
    /// that family, then drops the old families. A crash in between leaves either the old
    /// checkpoint or the new one whole: the move is one file.
    fn move_legacy_checkpoint(&mut self, legacy: &[&str]) -> Result<(), StoreError> {
        let moved = self.db.get_cf(self.cf(CF_CHECKPOINT), KEY_APPLIED)?.is_some();
        if !moved && legacy.contains(&CF_LEGACY_META) {
            let meta = self.cf(CF_LEGACY_META);
            if let Some(applied) = self.db.get_cf(meta, LEGACY_META_APPLIED)? {
                let applied = decode_applied(&applied)?;
                let profiles = match self.db.get_cf(meta, LEGACY_META_PROFILES)? {
                    None => None,
                    Some(bytes) => Some(decode_profiles(&bytes)?),
                };
                let accounts = self.read_legacy_accounts()?;
                let holds = self.read_legacy_holds()?;
                let order = pending::order_by(&accounts, |a| a.id);
                let holds: Vec<(u128, Option<Transfer>)> =
                    holds.into_iter().map(|t| (t.new.id, Some(t))).collect();
                self.write_checkpoint(&accounts, &order, &holds, profiles.as_ref(), &applied)?;
            }
        }
        for name in legacy {
            Arc::get_mut(&mut self.db).expect("moved before the scan starts").drop_cf(name)?;
        }
        Ok(())
    }

    fn read_legacy_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let Some(cf) = self.db.cf_handle(CF_LEGACY_ACCOUNTS) else { return Ok(Vec::new()) };
        let mut accounts = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (_, value) = item?;
            accounts.push(codec::decode_account(&value)?);
        }
        Ok(accounts)
    }

    /// The records of the pending holds a legacy `holds` family names (by key only).
    fn read_legacy_holds(&self) -> Result<Vec<Transfer>, StoreError> {
        let Some(cf) = self.db.cf_handle(CF_LEGACY_HOLDS) else { return Ok(Vec::new()) };
        let ids: Vec<Vec<u8>> = self
            .db
            .iterator_cf(cf, IteratorMode::Start)
            .map(|item| item.map(|(key, _)| key.to_vec()))
            .collect::<Result<_, _>>()?;
        let transfers = self.cf(CF_TRANSFERS);
        let mut holds = Vec::with_capacity(ids.len());
        for (id, value) in
            ids.iter().zip(self.db.multi_get_cf(ids.iter().map(|id| (transfers, id))))
        {
            let value = value?.ok_or_else(|| {
                StoreError::Corrupt(format!("hold {id:?} has no transfer record"))
            })?;
            holds.push(codec::decode_transfer(&value)?);
        }
        Ok(holds)
    }

    /// Starts the thread that reads the ids of the stored transfer records into the filters
    /// of known ids (ADR 0011); until they join, [`Store::load_named_records`] searches for
    /// every id. Like [`Store::start_compactions`], once recovery is done, so that it does not
    /// share the cores with it. A second call does nothing.
    pub fn start_reading_known_ids(&self) -> Result<(), StoreError> {
        // Not while holding `scan`: `load_named_records` takes `known` first.
        let bytes_max = self.known.lock().bytes_max();
        let mut scan = self.scan.lock();
        if !matches!(*scan, ScanThread::NotStarted) {
            return Ok(());
        }
        let db = Arc::clone(&self.db);
        let stop = Arc::clone(&self.scan_stop);
        let thread = std::thread::Builder::new()
            .name("hazina-known-ids".into())
            .spawn(move || known::scan(&db, CF_TRANSFERS, &stop, bytes_max))
            .map_err(|e| io_error(self.db.path(), &e))?;
        *scan = ScanThread::Running(thread);
        Ok(())
    }

    /// Starts background compactions, which [`Store::open`] leaves off so that reading the
    /// checkpoint and replaying the log do not share the cores with the compactions a crash
    /// under load leaves owing (a restart with 10M accounts measured 30.7 s with them running;
    /// docs/BENCHMARKS.md). Call it once recovery is done; without it, level-0 files pile up
    /// and RocksDB slows, then stops, writes.
    pub fn start_compactions(&self) -> Result<(), StoreError> {
        for name in FAMILIES {
            self.db.set_options_cf(self.cf(name), &[("disable_auto_compactions", "false")])?;
        }
        Ok(())
    }

    /// RocksDB's counters of how far its flushes and compactions are behind the writes; a few
    /// microseconds, safe from any thread.
    pub fn write_pressure(&self) -> Result<WritePressure, StoreError> {
        let int = |cf: &rocksdb::ColumnFamily, name: &rocksdb::properties::PropName| {
            self.db.property_int_value_cf(cf, name).map(Option::unwrap_or_default)
        };
        let mut pressure = WritePressure {
            level0_family: CF_HISTORY,
            memtable_family: CF_HISTORY,
            ..WritePressure::default()
        };
        let level0 = rocksdb::properties::num_files_at_level(0);
        for name in LARGE_FAMILIES {
            let files = int(self.cf(name), &level0)?;
            if files > pressure.level0_files {
                (pressure.level0_family, pressure.level0_files) = (name, files);
            }
        }
        for name in FAMILIES {
            let waiting = int(self.cf(name), rocksdb::properties::NUM_IMMUTABLE_MEM_TABLE)?;
            if waiting > pressure.memtables_waiting {
                (pressure.memtable_family, pressure.memtables_waiting) = (name, waiting);
            }
        }
        let default = |name: &rocksdb::properties::PropName| {
            self.db.property_int_value(name).map(Option::unwrap_or_default)
        };
        pressure.delayed_write_rate = default(rocksdb::properties::ACTUAL_DELAYED_WRITE_RATE)?;
        pressure.write_stopped = default(rocksdb::properties::IS_WRITE_STOPPED)? != 0;
        Ok(pressure)
    }

    /// Reads the stored checkpoint, to rebuild the ledger. `progress` is called every million
    /// accounts with the count so far, for start-up logs.
    pub fn load_checkpoint(
        &self,
        mut progress: impl FnMut(usize),
    ) -> Result<Checkpoint, StoreError> {
        let mut read = ReadOptions::default();
        read.set_readahead_size(4 << 20);
        read.fill_cache(false);
        let cf = self.cf(CF_CHECKPOINT);
        // Sized up front: grown by doubling, a vector of ten million accounts was copied once
        // more at 8.4 million and held at twice its size, a 5 s pause of the read
        // (docs/BENCHMARKS.md, session 13). RocksDB's estimate counts every stored copy of an
        // account, so it is high rather than low; pages never written are never faulted in.
        let estimate = self.db.property_int_value_cf(cf, ESTIMATE_NUM_KEYS)?.unwrap_or(0);
        let capacity = usize::try_from(estimate).unwrap_or(usize::MAX).min(ACCOUNTS_PRESIZE_MAX);
        let (mut accounts, mut holds) = (Vec::with_capacity(capacity), Vec::new());
        let (mut applied, mut profiles) = (Applied::default(), BTreeMap::new());
        for item in self.db.iterator_cf_opt(cf, read, IteratorMode::Start) {
            let (key, value) = item?;
            match (key.first(), key.len()) {
                (Some(&KEY_ACCOUNT), 17) => {
                    accounts.push(codec::decode_account(&value)?);
                    if accounts.len() % 1_000_000 == 0 {
                        progress(accounts.len());
                    }
                }
                (Some(&KEY_HOLD), 17) => holds.push(codec::decode_transfer(&value)?),
                _ if *key == *KEY_APPLIED => applied = decode_applied(&value)?,
                _ if *key == *KEY_PROFILES => profiles = decode_profiles(&value)?,
                _ => return Err(StoreError::Corrupt(format!("checkpoint key {key:?}"))),
            }
        }
        Ok(Checkpoint { applied, accounts, profiles, holds })
    }

    /// Transfer records by id; `None` where there is none. Staged records first, then stored
    /// ones.
    pub fn transfers(&self, ids: &[u128]) -> Result<Vec<Option<Transfer>>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        let (mut missing, mut missing_at) = (Vec::new(), Vec::new());
        {
            let layers = self.layers.read();
            for (at, &id) in ids.iter().enumerate() {
                let record = layers.transfer(id);
                if record.is_none() {
                    missing.push(id.to_be_bytes());
                    missing_at.push(at);
                }
                found.push(record);
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        // Big-endian keys sort as the ids do: sorted input takes RocksDB's batched path.
        let sorted = ids.is_sorted();
        let stored = self.db.batched_multi_get_cf(self.cf(CF_TRANSFERS), &missing, sorted);
        for (at, value) in missing_at.into_iter().zip(stored) {
            if let Some(bytes) = value? {
                found[at] = Some(codec::decode_transfer(&bytes)?);
            }
        }
        Ok(found)
    }

    /// Makes resident again every record that `commands` name (by id or `pending_id`) and that
    /// left `ledger`'s memory, so that applying them decides as if every record were resident
    /// ([`Ledger::load_transfer`]). A host calls it before each batch, and recovery before each
    /// replayed one, so that a replay loads exactly what the first run did.
    ///
    /// A stored record stamped after the ledger's clock is skipped: a checkpoint stored it just
    /// before a crash, ahead of its checkpoint, and the replay is about to write it again.
    /// Until then it does not exist.
    pub fn load_named_records(
        &self,
        ledger: &mut Ledger,
        commands: &[Command],
    ) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        {
            let mut known = self.known.lock();
            if known.state() == KnownIdsState::Reading {
                self.join_scan(&mut known)?;
            }
            for command in commands {
                if let Command::CreateTransfer(t) = command {
                    // Most ids are new: the filters say so without a search. The batch may
                    // record `t.id`, so noting it also adds it to them.
                    if t.id != 0 && known.note(t.id) && ledger.transfer(t.id).is_none() {
                        missing.push(t.id);
                    }
                    let pending = t.pending_id;
                    if pending != 0 && known.may_hold(pending) && ledger.transfer(pending).is_none()
                    {
                        missing.push(pending);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let clock = ledger.timestamp_last();
        for record in self.transfers(&missing)?.into_iter().flatten() {
            if record.timestamp <= clock {
                ledger.load_transfer(record);
            }
        }
        Ok(())
    }

    /// Joins what the scan read to `known`, once it is done. A scan that failed drops the
    /// filters and returns its error: a storage failure, which stops a node.
    fn join_scan(&self, known: &mut KnownIds) -> Result<(), StoreError> {
        let mut scan = self.scan.lock();
        if !matches!(&*scan, ScanThread::Running(thread) if thread.is_finished()) {
            return Ok(());
        }
        let ScanThread::Running(thread) = std::mem::replace(&mut *scan, ScanThread::Joined) else {
            unreachable!("matched above");
        };
        let error = match thread.join() {
            Ok(Ok(scanned)) => {
                known.join(scanned);
                return Ok(());
            }
            Ok(Err(error)) => error,
            Err(_) => StoreError::Corrupt("the scan of stored transfer ids panicked".into()),
        };
        known.drop_filters();
        Err(error)
    }

    /// Where the filters of transfer ids stand: whether the stored ids are in, and how many
    /// ids and bytes they hold. Joins a finished scan, and returns its error if it failed.
    pub fn known_transfer_ids(&self) -> Result<KnownTransferIds, StoreError> {
        let mut known = self.known.lock();
        if known.state() == KnownIdsState::Reading {
            self.join_scan(&mut known)?;
        }
        let (ids, bytes) = known.size();
        Ok(KnownTransferIds { state: known.state(), ids, bytes })
    }

    /// A page of `account`'s statement: at most `limit` movements from `from` on, oldest first.
    /// Merges the staged lines with the stored ones.
    pub fn history(
        &self,
        account: u128,
        from: Timestamp,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        // The staged lines from `from` on, oldest first, and the last one before `from`.
        let mut staged = Vec::new();
        let mut staged_before: Option<HistoryEntry> = None;
        {
            let layers = self.layers.read();
            for layer in layers.newest_first() {
                for line in layer.lines_of(account) {
                    let entry =
                        codec::decode_statement_line(layer.line_value(line), line.timestamp())?;
                    if entry.timestamp >= from {
                        staged.push(entry);
                    } else {
                        // The layer's older lines are older still.
                        if staged_before.is_none_or(|b| b.timestamp < entry.timestamp) {
                            staged_before = Some(entry);
                        }
                        break;
                    }
                }
            }
        }
        staged.sort_by_key(|e| e.timestamp);

        let cf = self.cf(CF_HISTORY);
        let prefix = account.to_be_bytes();
        // The opening balance: the line just before `from`, if it is this account's.
        let mut before = self.db.raw_iterator_cf(cf);
        // The last key at `from - 1` of either format: 24 bytes, or 25 ending in a format.
        let mut last = history_seek_key(account, from.saturating_sub(1)).to_vec();
        last.push(u8::MAX);
        before.seek_for_prev(&last);
        let mut stored_before = None;
        if from > 0
            && let (Some(key), Some(value)) = (before.key(), before.value())
            && key.starts_with(&prefix)
        {
            stored_before = Some(decode_history(key, value)?);
        }
        before.status()?;
        let opening_balance = match (staged_before, stored_before) {
            (Some(s), Some(r)) if r.timestamp > s.timestamp => r.balance_after,
            (Some(s), _) => s.balance_after,
            (None, Some(r)) => r.balance_after,
            (None, None) => 0,
        };

        let mut entries: Vec<HistoryEntry> = Vec::new();
        let mut next_from = None;
        if limit > 0 {
            let start = history_seek_key(account, from);
            let mut stored =
                self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward));
            let mut next_stored = || -> Result<Option<HistoryEntry>, StoreError> {
                match stored.next() {
                    Some(item) => {
                        let (key, value) = item?;
                        if key.starts_with(&prefix) {
                            Ok(Some(decode_history(&key, &value)?))
                        } else {
                            Ok(None)
                        }
                    }
                    None => Ok(None),
                }
            };
            let mut staged = staged.into_iter().peekable();
            let mut from_store = next_stored()?;
            loop {
                // The older of the next stored line and the next staged one.
                let entry = match (from_store, staged.peek()) {
                    (None, None) => break,
                    (Some(r), Some(s)) if s.timestamp < r.timestamp => {
                        staged.next().expect("peeked")
                    }
                    (Some(r), _) => {
                        from_store = next_stored()?;
                        r
                    }
                    (None, Some(_)) => staged.next().expect("peeked"),
                };
                // One line per account and timestamp: a line both staged and stored (ingested
                // just before a crash, staged again by the replay), or a version-2 line beside
                // the version-1 line of the same movement (a site re-applying entries after an
                // upgrade), counts once.
                if entries.last().is_some_and(|last| last.timestamp == entry.timestamp) {
                    continue;
                }
                if entries.len() == limit {
                    next_from = Some(entry.timestamp);
                    break;
                }
                entries.push(entry);
            }
        }
        Ok(HistoryPage { opening_balance, entries, next_from })
    }
}

/// A family's options: the same for the family at open and for the files a checkpoint writes
/// for it.
fn family_options(name: &str, options: &StoreOptions, cache: &rocksdb::Cache) -> Options {
    let mut cf = Options::default();
    cf.set_write_buffer_size(options.write_buffer_bytes);
    // Up to four memtables (one written, the others waiting for their flush): at RocksDB's
    // default of two, a flush that fell behind stopped writes.
    cf.set_max_write_buffer_number(MEMTABLES_MAX);
    if name == CF_LOG {
        // The log is trimmed behind every checkpoint: its few files never need to slow writes.
        cf.set_level_zero_slowdown_writes_trigger(400);
        cf.set_level_zero_stop_writes_trigger(800);
    } else {
        // RocksDB's defaults, set here because the node's flow control
        // ([`Store::write_pressure`]) slows admission ahead of them.
        cf.set_level_zero_slowdown_writes_trigger(LEVEL0_SLOWDOWN_FILES);
        cf.set_level_zero_stop_writes_trigger(LEVEL0_STOP_FILES);
    }
    cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Off until `start_compactions`: see there.
    cf.set_disable_auto_compactions(true);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    if name == CF_TRANSFERS {
        // Most lookups of a new transfer id find nothing: a filter answers them without
        // reading a block, of the files and of a replicated site's memtable alike.
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        cf.set_memtable_whole_key_filtering(true);
        cf.set_memtable_prefix_bloom_ratio(0.1);
    }
    cf.set_block_based_table_factory(&table);
    cf
}

fn io_error(path: &Path, error: &std::io::Error) -> StoreError {
    StoreError::Corrupt(format!("{}: {error}", path.display()))
}

/// What every database of a node shares: created if missing, background work kept from getting
/// in the way of the threads that answer callers, at most `table_files_max` table files open
/// (all of them with `None`).
fn db_options(table_files_max: Option<u32>) -> Result<Options, StoreError> {
    let mut db_options = Options::default();
    // RocksDB takes -1 for "no bound" and raises bounds under 20 to 20.
    db_options.set_max_open_files(
        table_files_max.map_or(-1, |files| i32::try_from(files).unwrap_or(i32::MAX)),
    );
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    // Compactions run at a lower CPU and I/O priority than the threads that answer callers:
    // on a busy machine they wait, not the log writes and the heartbeats (a replicated primary
    // that misses heartbeats for 200 ms loses its place). Flushes keep their priority, in two
    // threads of their own (state and raft log): writes stop when full memtables wait.
    let mut env = rocksdb::Env::new()?;
    env.lower_thread_pool_cpu_priority();
    env.lower_thread_pool_io_priority();
    env.set_high_priority_background_threads(2);
    db_options.set_env(&env);
    db_options.increase_parallelism(2);
    // Three jobs: RocksDB gives one to flushes, two to compactions.
    db_options.set_max_background_jobs(3);
    db_options.set_keep_log_file_num(4);
    // Write flushed and compacted files out a megabyte at a time, so that their dirty pages
    // do not pile up and make a later synced log write wait behind them.
    db_options.set_bytes_per_sync(1 << 20);
    db_options.set_wal_bytes_per_sync(1 << 20);
    // Flushes and compactions write at most this fast, so that a burst of them does not
    // queue the log's synced writes behind it on the disk (which writes 1.9 GB/s here). At
    // 64 MB/s, a fill of 50M transfers at full speed stopped writes for 37 s: the flushes
    // shared the budget with compactions and fell behind the memtables (docs/BENCHMARKS.md,
    // session 7).
    db_options.set_ratelimiter(256 << 20, 100_000, 10);
    Ok(db_options)
}

fn key_array<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("{what} of {} bytes", bytes.len())))
}

fn encode_applied(a: &Applied) -> Vec<u8> {
    let mut out = Vec::with_capacity(41);
    out.push(1);
    out.extend_from_slice(&a.index.to_le_bytes());
    out.extend_from_slice(&a.term.to_le_bytes());
    out.extend_from_slice(&a.transfers_digest.to_le_bytes());
    out.extend_from_slice(&a.timestamp_last.to_le_bytes());
    out
}

fn decode_applied(bytes: &[u8]) -> Result<Applied, StoreError> {
    let array: [u8; 41] = key_array(bytes, "applied")?;
    if array[0] != 1 {
        return Err(StoreError::Corrupt(format!("applied version {}", array[0])));
    }
    let u64_at = |at: usize| u64::from_le_bytes(array[at..at + 8].try_into().expect("8 bytes"));
    Ok(Applied {
        index: u64_at(1),
        term: u64_at(9),
        transfers_digest: u128::from_le_bytes(array[17..33].try_into().expect("16 bytes")),
        timestamp_last: u64_at(33),
    })
}

const PROFILE_BYTES: usize = 4 + 4 * 16;

fn encode_profiles(profiles: &BTreeMap<LimitProfileId, LimitProfile>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + profiles.len() * PROFILE_BYTES);
    out.push(1);
    for (id, p) in profiles {
        out.extend_from_slice(&id.to_le_bytes());
        for limit in [p.per_transfer_max, p.daily_debit_max, p.balance_max, p.amount_min] {
            out.extend_from_slice(&limit.to_le_bytes());
        }
    }
    out
}

fn decode_profiles(bytes: &[u8]) -> Result<BTreeMap<LimitProfileId, LimitProfile>, StoreError> {
    let Some((&1, body)) = bytes.split_first() else {
        return Err(StoreError::Corrupt("profiles version".into()));
    };
    if body.len() % PROFILE_BYTES != 0 {
        return Err(StoreError::Corrupt(format!("profiles of {} bytes", body.len())));
    }
    let amount = |b: &[u8], at: usize| u128::from_le_bytes(b[at..at + 16].try_into().expect("16"));
    Ok(body
        .chunks_exact(PROFILE_BYTES)
        .map(|b| {
            let id = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
            let limits = LimitProfile {
                per_transfer_max: amount(b, 4),
                daily_debit_max: amount(b, 20),
                balance_max: amount(b, 36),
                amount_min: amount(b, 52),
            };
            (id, limits)
        })
        .collect())
}

/// Where a statement line is stored: the account and the timestamp (big-endian, so an account's
/// lines are together in time order), then the line's format, 2 ([`codec::encode_statement_line`]).
/// Lines written before session 7 have keys of 24 bytes, without the format, and 67-byte values
/// of fixed-width fields; they are still read ([`decode_history`]).
fn history_key(account: u128, timestamp: Timestamp) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..16].copy_from_slice(&account.to_be_bytes());
    key[16..24].copy_from_slice(&timestamp.to_be_bytes());
    key[24] = codec::CODEC_VERSION;
    key
}

/// The first key of `account`'s lines at `timestamp`, of either format.
fn history_seek_key(account: u128, timestamp: Timestamp) -> [u8; 24] {
    history_key(account, timestamp)[..24].try_into().expect("24 bytes")
}

const HISTORY_V1_VALUE_BYTES: usize = 16 + 16 + 1 + 16 + 2 + 16;

fn decode_history(key: &[u8], value: &[u8]) -> Result<HistoryEntry, StoreError> {
    let timestamp = |key: &[u8]| u64::from_be_bytes(key[16..24].try_into().expect("8 bytes"));
    match key.len() {
        25 if key[24] == codec::CODEC_VERSION => {
            Ok(codec::decode_statement_line(value, timestamp(key))?)
        }
        24 => decode_history_v1(timestamp(key), value),
        _ => Err(StoreError::Corrupt(format!("history key {key:?}"))),
    }
}

fn decode_history_v1(timestamp: Timestamp, value: &[u8]) -> Result<HistoryEntry, StoreError> {
    let v: [u8; HISTORY_V1_VALUE_BYTES] = key_array(value, "history line")?;
    let u128_at = |at: usize| u128::from_le_bytes(v[at..at + 16].try_into().expect("16 bytes"));
    Ok(HistoryEntry {
        transfer_id: u128_at(0),
        timestamp,
        amount: u128_at(16),
        credit: v[32] == 1,
        balance_after: i128::from_le_bytes(v[33..49].try_into().expect("16 bytes")),
        tx_type: u16::from_le_bytes(v[49..51].try_into().expect("2 bytes")),
        counterparty_id: u128_at(51),
    })
}

/// The statement lines of one entry: every successful transfer that moved posted money (a plain
/// transfer or the post of a hold), once for each of its two accounts, with the balance after
/// it.
///
/// Balances are worked backwards from where each account stands after the entry (its copy in
/// `changes.accounts`): the last line of an account in the entry has that balance, and each
/// earlier line has the balance before the movement after it.
/// Each line's key and where its value is in the bytes beside them.
/// Stages what [`history_lines`] worked out. Its lines come newest first; an account's lines
/// are staged oldest first.
fn stage_lines(pending: &mut Pending, (lines, values): StatementLines) {
    for (key, value) in lines.into_iter().rev() {
        pending.stage_line(key, &values[value]);
    }
}

type StatementLines = (Vec<([u8; 25], std::ops::Range<usize>)>, Vec<u8>);

fn history_lines(changes: &Changes) -> StatementLines {
    let moved: Vec<&Transfer> = changes
        .transfers
        .iter()
        .filter(|t| {
            t.result == ResultCode::Ok
                && !t.new.flags.pending()
                && !t.new.flags.void_pending()
                && t.new.amount > 0
        })
        .collect();
    if moved.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut balance: HashMap<u128, i128> =
        changes.accounts.iter().map(|a| (a.id, a.balance())).collect();
    let mut lines = Vec::with_capacity(moved.len() * 2);
    let mut values = Vec::with_capacity(moved.len() * 2 * 32);
    for t in moved.iter().rev() {
        let amount = i128::try_from(t.new.amount).unwrap_or(i128::MAX);
        for (account, credit, counterparty) in [
            (t.new.credit_account_id, true, t.new.debit_account_id),
            (t.new.debit_account_id, false, t.new.credit_account_id),
        ] {
            let running = balance
                .get_mut(&account)
                .expect("an account that moved money is among the changed accounts");
            let after = *running;
            *running =
                if credit { after.saturating_sub(amount) } else { after.saturating_add(amount) };
            let line = HistoryEntry {
                transfer_id: t.new.id,
                timestamp: t.timestamp,
                amount: t.new.amount,
                credit,
                balance_after: after,
                tx_type: t.new.tx_type,
                counterparty_id: counterparty,
            };
            let start = values.len();
            codec::encode_statement_line(&line, &mut values);
            lines.push((history_key(account, t.timestamp), start..values.len()));
        }
    }
    (lines, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hazina_core::NewTransfer;

    /// Compactions are off until `start_compactions` (and RocksDB then slows no writes for
    /// level-0 files), so each flush leaves one more level-0 file: the pressure follows them
    /// from nothing to where the node refuses writes.
    #[test]
    fn write_pressure_counts_level0_files_up_to_where_writes_are_refused() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let options = small_options();
        let store = Store::open(dir.path(), &options).expect("open");
        let quiet = store.write_pressure().expect("pressure");
        assert_eq!((quiet.level0_files, quiet.memtables_waiting), (0, 0));
        assert!(quiet.level() < 0.0, "an empty store is not behind: {}", quiet.level());
        assert!(!quiet.write_stopped && quiet.delayed_write_rate == 0);
        let files = |n: i32| u64::try_from(n).expect("positive");
        let mut levels = Vec::new();
        let history = store.cf(CF_HISTORY);
        for n in 1..=files(LEVEL0_REFUSE_FILES) {
            // Lines put through the memtable: each flush is a file.
            store.db.put_cf(history, n.to_be_bytes(), b"line").expect("put");
            store.db.flush_cf(history).expect("flush");
            let pressure = store.write_pressure().expect("pressure");
            assert_eq!(pressure.level0_files, n, "after {n} flushes: {pressure}");
            assert_eq!(pressure.level0_family, CF_HISTORY);
            levels.push(pressure.level());
        }
        // Nothing through RocksDB's gentle slowdown, then rising to 1 where the node refuses
        // writes.
        let at = |n: i32| levels[usize::try_from(n - 1).expect("small")];
        assert!(at(LEVEL0_SLOWDOWN_FILES) < 0.0, "{levels:?}");
        assert!(at(LEVEL0_THROTTLE_FILES) <= 0.0, "{levels:?}");
        assert!(at(LEVEL0_THROTTLE_FILES + 1) > 0.0, "{levels:?}");
        assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
        assert!((at(LEVEL0_REFUSE_FILES) - 1.0).abs() < 1e-9, "{levels:?}");
        let behind = store.write_pressure().expect("pressure");
        assert!(behind.to_string().starts_with("34 level-0 files in history"), "{behind}");
    }

    /// RocksDB's delayed write rate counts by halvings: nothing at 16 MB/s, half-way at 5.7,
    /// all the way at 2 and below; a stop is all the way.
    #[test]
    fn a_falling_delayed_write_rate_raises_the_pressure_to_one() {
        let at = |rate: u64| WritePressure { delayed_write_rate: rate, ..WritePressure::default() };
        assert!(at(0).level() < 0.0, "no delay");
        assert!(at(256 << 20).level() < 0.0, "RocksDB's first, gentle rate");
        assert!(at(164 << 20).level() < 0.0, "the lowest rate of session 8's batched runs");
        assert!(at(16 << 20).level().abs() < 1e-9);
        let half = 5_931_642; // 2 MB/s times the square root of 8
        assert!((at(half).level() - 0.5).abs() < 1e-3, "{}", at(half).level());
        assert!((at(2 << 20).level() - 1.0).abs() < 1e-9);
        assert!(at(16 << 10).level() > 1.0, "RocksDB's floor, 16 KB/s");
        let stopped = WritePressure { write_stopped: true, ..WritePressure::default() };
        assert!((stopped.level() - 1.0).abs() < 1e-9);
        assert!(stopped.to_string().ends_with("RocksDB has stopped writes"), "{stopped}");
    }

    /// A store written before session 7 holds statement lines of 24-byte keys and 67-byte
    /// values; lines written since have the format in the key. One statement reads both.
    #[test]
    fn a_statement_reads_lines_of_both_formats_in_time_order() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let options = small_options();
        let store = Store::open(dir.path(), &options).expect("open");
        let (account, other) = (254_700_000_001u128, 254_700_000_002u128);
        // Version 1: transfer 10 credited 500 at time 100, leaving 500.
        let mut v1 = [0u8; HISTORY_V1_VALUE_BYTES];
        v1[..16].copy_from_slice(&10u128.to_le_bytes());
        v1[16..32].copy_from_slice(&500u128.to_le_bytes());
        v1[32] = 1;
        v1[33..49].copy_from_slice(&500i128.to_le_bytes());
        v1[49..51].copy_from_slice(&2u16.to_le_bytes());
        v1[51..67].copy_from_slice(&other.to_le_bytes());
        store.db.put_cf(store.cf(CF_HISTORY), history_seek_key(account, 100), v1).expect("put");
        // Version 2, staged and written: transfer 11 debits 200 at time 101, leaving 300.
        let new = NewTransfer {
            id: 11,
            debit_account_id: account,
            credit_account_id: other,
            amount: 200,
            tx_type: 1,
            ..NewTransfer::default()
        };
        let hold = hazina_core::HoldState::None;
        let transfer = Transfer { new, timestamp: 101, result: ResultCode::Ok, hold };
        let (mine, theirs) = (standing(account, 500, 200), standing(other, 200, 0));
        let changes =
            Changes { accounts: vec![mine, theirs], transfers: vec![transfer], profiles: None };
        store.stage_statements(1, &changes).expect("stage");
        assert_eq!(store.write_staged_lines().expect("write").lines, 2);

        let page = store.history(account, 0, 10).expect("history");
        let seen: Vec<_> =
            page.entries.iter().map(|e| (e.transfer_id, e.timestamp, e.balance_after)).collect();
        assert_eq!(seen, [(10, 100, 500), (11, 101, 300)]);
        assert_eq!((page.entries[0].credit, page.entries[0].counterparty_id), (true, other));
        assert_eq!((page.entries[1].credit, page.entries[1].amount), (false, 200));
        // The balance before a time comes from the line before it, of whichever format.
        let later = store.history(account, 101, 10).expect("history");
        assert_eq!((later.opening_balance, later.entries.len()), (500, 1));
        let after = store.history(account, 102, 10).expect("history");
        assert_eq!((after.opening_balance, after.entries.len()), (300, 0));
        let first = store.history(account, 0, 1).expect("history");
        assert_eq!((first.entries.len(), first.next_from), (1, Some(101)));
        // The same movement written again in version 2 (a site re-applying entries after an
        // upgrade) is one line, not two.
        let again = Transfer { timestamp: 100, ..transfer };
        let changes =
            Changes { accounts: vec![mine, theirs], transfers: vec![again], profiles: None };
        store.stage_statements(2, &changes).expect("stage");
        store.write_staged_lines().expect("write");
        let page = store.history(account, 0, 10).expect("history");
        let times: Vec<_> = page.entries.iter().map(|e| e.timestamp).collect();
        assert_eq!(times, [100, 101]);
        let first = store.history(account, 0, 1).expect("history");
        assert_eq!(first.next_from, Some(101), "the duplicate is not the next page");
    }

    /// A replicated site's statement lines: staged lines are read at once, survive a crash
    /// only once written, and a line both stored and staged again (the replay after a restart
    /// re-applies entries whose lines were written) counts once, also after it is written again.
    #[test]
    fn staged_statement_lines_are_read_at_once_and_survive_a_crash_once_written() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let options = small_options();
        let (wallet, till) = (254_700_000_001u128, 5_001u128);
        // Entry 1: the wallet pays 200 at time 100; entry 2: 300 more at time 101.
        let entry = |id: u128, timestamp: Timestamp, paid: u128| {
            let new = NewTransfer {
                id,
                debit_account_id: wallet,
                credit_account_id: till,
                amount: paid - if id == 1 { 0 } else { 200 },
                tx_type: 1,
                ..NewTransfer::default()
            };
            let hold = hazina_core::HoldState::None;
            let transfer = Transfer { new, timestamp, result: ResultCode::Ok, hold };
            let accounts = vec![standing(wallet, 1_000, paid), standing(till, paid, 0)];
            Changes { accounts, transfers: vec![transfer], profiles: None }
        };
        let (first, second) = (entry(1, 100, 200), entry(2, 101, 500));
        let balances = |store: &Store| -> Vec<(Timestamp, i128)> {
            let page = store.history(till, 0, 10).expect("history");
            page.entries.iter().map(|e| (e.timestamp, e.balance_after)).collect()
        };
        {
            let store = Store::open(dir.path(), &options).expect("open");
            store.stage_statements(1, &first).expect("stage");
            assert_eq!(balances(&store), [(100, 200)], "a staged line is read at once");
            assert_eq!(store.staged_lines(), 2);
            let written = store.write_staged_lines().expect("write");
            assert_eq!((written.index, written.lines), (1, 2));
            assert_eq!(store.staged_lines(), 0);
            store.stage_statements(2, &second).expect("stage");
            assert_eq!(balances(&store), [(100, 200), (101, 500)]);
            // Dropped without writing entry 2's lines: a crash.
        }
        let store = Store::open(dir.path(), &options).expect("reopen");
        assert_eq!(balances(&store), [(100, 200)], "only written lines survive");
        // The replay after the restart stages both entries again.
        store.stage_statements(1, &first).expect("stage");
        store.stage_statements(2, &second).expect("stage");
        assert_eq!(balances(&store), [(100, 200), (101, 500)], "each line once");
        assert_eq!(store.write_staged_lines().expect("write").index, 2);
        assert_eq!(store.write_staged_lines().expect("nothing staged").lines, 0);
        drop(store);
        let store = Store::open(dir.path(), &options).expect("reopen");
        assert_eq!(balances(&store), [(100, 200), (101, 500)]);
        let wallet_lines = store.history(wallet, 0, 10).expect("history");
        let wallet_lines: Vec<_> = wallet_lines.entries.iter().map(|e| e.balance_after).collect();
        assert_eq!(wallet_lines, [800, 500]);
    }

    /// Table files under `dir` this process holds open.
    #[cfg(target_os = "linux")]
    fn table_files_open(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("this process's files")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|path| path.starts_with(dir) && path.extension().is_some_and(|e| e == "sst"))
            .count()
    }

    /// With a bound, RocksDB holds about that many table files open and opens the others
    /// again to read them; without one it holds every file open, whatever their number.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_table_files_held_open_are_bounded() {
        const FILES: u32 = 150;
        let value = [7u8; 100];
        // RocksDB's table cache holds the bound less 10 (its own other files), in 64 shards of
        // as many each, rounded up: 74 holds 64, and the 16 files it pins at open may come on
        // top.
        for (bound, most) in [(Some(74), 64 + 16), (None, FILES as usize)] {
            let dir = tempfile::tempdir().expect("temporary folder");
            let open = |bound: Option<u32>| {
                let mut options = db_options(bound).expect("options");
                options.set_disable_auto_compactions(true);
                DB::open(&options, dir.path()).expect("open")
            };
            {
                let db = open(None);
                for file in 0..FILES {
                    db.put(file.to_be_bytes(), value).expect("put");
                    db.flush().expect("a file each");
                }
            }
            let files = std::fs::read_dir(dir.path())
                .expect("the folder")
                .filter(|e| {
                    e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sst"))
                })
                .count();
            assert_eq!(files, FILES as usize);
            let db = open(bound);
            for file in 0..FILES {
                assert_eq!(db.get(file.to_be_bytes()).expect("get").as_deref(), Some(&value[..]));
            }
            let held = table_files_open(dir.path());
            if bound.is_some() {
                assert!(held <= most, "{held} of {FILES} files held open under a bound of {most}");
            } else {
                assert_eq!(held, most, "every file held open");
            }
        }
    }

    /// The store's bound on open table files is the one RocksDB runs with (its options file).
    #[test]
    fn the_store_passes_its_bound_on_open_files_to_rocksdb() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let options = StoreOptions { table_files_max: Some(64), ..StoreOptions::default() };
        drop(Store::open(dir.path(), &options).expect("open"));
        let bound = hazina_testkit::rocksdb_option(dir.path(), "max_open_files");
        assert_eq!(bound.as_deref(), Some("64"));
    }

    /// An active wallet with these posted totals.
    fn standing(id: u128, credits_posted: u128, debits_posted: u128) -> Account {
        Account {
            id,
            debits_pending: 0,
            debits_posted,
            credits_pending: 0,
            credits_posted,
            overdraft_limit: 0,
            daily_debited: 0,
            user_data_128: 0,
            user_data_64: 0,
            timestamp: 1,
            user_data_32: 0,
            daily_day: 0,
            limit_profile: 0,
            currency: hazina_core::CURRENCY_KES,
            kind: 0,
            flags: hazina_core::AccountFlags::default(),
            holds_pending: 0,
            status: hazina_core::AccountStatus::Active,
        }
    }

    /// Memtables and block cache of a megabyte: a test's few keys, every flush a file.
    fn small_options() -> StoreOptions {
        StoreOptions {
            write_buffer_bytes: 1 << 20,
            block_cache_bytes: 1 << 20,
            ..Default::default()
        }
    }

    fn small_store(path: &Path) -> Store {
        let options = small_options();
        Store::open(path, &options).expect("open")
    }

    /// Applies an entry as the node does: named records loaded back, applied, logged, staged.
    fn apply_and_stage(store: &Store, ledger: &mut hazina_core::Ledger, entry: &Entry) {
        store.load_named_records(ledger, &entry.commands).expect("records");
        ledger.apply(entry.timestamp, &entry.commands).expect("a valid batch");
        let mut bytes = Vec::new();
        codec::encode_entry(entry, &mut bytes);
        store.append(&[&bytes], &[entry.index]).expect("append");
        let mut changes = Changes::default();
        ledger.take_changes(&mut changes.accounts, &mut changes.transfers);
        if entry.commands.iter().any(|c| matches!(c, Command::SetLimitProfile { .. })) {
            changes.profiles = Some(ledger.limit_profiles());
        }
        let applied = Applied {
            index: entry.index,
            term: entry.term,
            transfers_digest: ledger.transfers_digest(),
            timestamp_last: ledger.timestamp_last(),
        };
        store.write_state(&applied, &changes).expect("stage");
    }

    /// A crash after a checkpoint stored its records and statement lines but before its
    /// checkpoint file: the store restarts from the checkpoint before, with records stored
    /// ahead of it, and replaying the log over them gives the same ledger (a replay that took
    /// them for earlier records would answer its own transfers `Exists`).
    #[test]
    fn a_checkpoint_cut_short_before_its_last_file_replays_from_the_one_before() {
        use hazina_testkit::world::{World, WorldConfig};
        let config = hazina_core::LedgerConfig {
            track_changes: true,
            transfers_generation_max: 64,
            holds_per_account_max: 4,
            limit_profiles_max: 8,
            ..hazina_core::LedgerConfig::default()
        };
        for seed in hazina_testkit::seeds(0x4355_5453_484f_5254, 2) {
            eprintln!("seed {seed} (replay with HAZINA_SEED={seed})");
            let dir = tempfile::tempdir().expect("temporary folder");
            let mut world = World::new(seed, WorldConfig::default());
            let mut ledger = hazina_core::Ledger::new(config.clone()).expect("config");
            let mut ahead = Vec::new();
            {
                let store = small_store(dir.path());
                for index in 1..=60 {
                    let (timestamp, commands) = world.next_batch();
                    let entry = Entry { index, term: 1, timestamp, commands };
                    apply_and_stage(&store, &mut ledger, &entry);
                    if index == 30 {
                        assert_eq!(store.checkpoint(1_000).expect("checkpoint").index, 30);
                    }
                }
                // The next checkpoint writes its records and lines, then the process dies.
                let frozen = Arc::new(std::mem::take(&mut store.layers.write().active));
                let order = pending::order_by(&frozen.transfers, |t| t.new.id);
                store.write_records(&frozen, &order).expect("records");
                store.write_lines(&frozen).expect("lines");
                ahead.extend(frozen.transfers.iter().map(|t| t.new.id));
            }
            let store = small_store(dir.path());
            let checkpoint = store.load_checkpoint(|_| {}).expect("checkpoint");
            assert_eq!(checkpoint.applied.index, 30, "seed {seed}");
            let stored = store.transfers(&ahead).expect("records");
            assert!(stored.iter().all(Option::is_some), "seed {seed}: records stored ahead");
            let mut restored = hazina_core::Ledger::restore(
                config.clone(),
                checkpoint.accounts,
                &checkpoint.profiles,
                checkpoint.holds,
                checkpoint.applied.transfers_digest,
                checkpoint.applied.timestamp_last,
            )
            .expect("a consistent checkpoint");
            for entry in store.entries_after(30).expect("log") {
                apply_and_stage(&store, &mut restored, &entry);
            }
            assert_eq!(restored.digest(), ledger.digest(), "seed {seed}");
            assert_eq!(restored.accounts(), ledger.accounts(), "seed {seed}");
        }
    }

    /// A store written before the `checkpoint` family (accounts, hold ids and `applied` in
    /// families of their own) opens with the same checkpoint, moved, and without the old
    /// families.
    #[test]
    fn a_store_of_the_old_layout_opens_with_its_checkpoint_moved() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let accounts = [standing(254_700_000_001, 900, 0), standing(254_700_000_002, 0, 0)];
        let hold = Transfer {
            new: hazina_core::NewTransfer {
                id: 77,
                debit_account_id: accounts[0].id,
                credit_account_id: accounts[1].id,
                amount: 100,
                flags: hazina_core::TransferFlags::PENDING,
                ..hazina_core::NewTransfer::default()
            },
            timestamp: 5,
            result: ResultCode::Ok,
            hold: HoldState::Pending,
        };
        let applied = Applied { index: 9, term: 1, transfers_digest: 42, timestamp_last: 5 };
        let profiles = BTreeMap::from([(1, LimitProfile::UNLIMITED)]);
        {
            let families = [CF_LOG, "accounts", CF_TRANSFERS, "holds", CF_HISTORY, "meta"];
            let db = DB::open_cf(&db_options(None).expect("options"), dir.path(), families)
                .expect("an old store");
            for a in &accounts {
                let mut bytes = Vec::new();
                codec::encode_account(a, &mut bytes);
                db.put_cf(db.cf_handle("accounts").unwrap(), a.id.to_be_bytes(), bytes).unwrap();
            }
            let mut bytes = Vec::new();
            codec::encode_transfer(&hold, &mut bytes);
            db.put_cf(db.cf_handle(CF_TRANSFERS).unwrap(), 77u128.to_be_bytes(), bytes).unwrap();
            db.put_cf(db.cf_handle("holds").unwrap(), 77u128.to_be_bytes(), []).unwrap();
            let meta = db.cf_handle("meta").unwrap();
            db.put_cf(meta, LEGACY_META_APPLIED, encode_applied(&applied)).unwrap();
            db.put_cf(meta, LEGACY_META_PROFILES, encode_profiles(&profiles)).unwrap();
        }
        for _ in 0..2 {
            let store = small_store(dir.path());
            let checkpoint = store.load_checkpoint(|_| {}).expect("checkpoint");
            assert_eq!(checkpoint.applied, applied);
            assert_eq!(checkpoint.accounts, accounts);
            assert_eq!(checkpoint.holds, [hold]);
            assert_eq!(checkpoint.profiles, profiles);
            assert_eq!(store.transfers(&[77]).expect("lookup"), [Some(hold)]);
            drop(store);
            let families = DB::list_cf(&Options::default(), dir.path()).expect("families");
            assert!(
                families.iter().all(|f| !LEGACY_FAMILIES.contains(&f.as_str())),
                "{families:?}"
            );
        }
    }

    /// A statement merges lines staged in memory with lines already stored, in time order,
    /// across the page it asks for, with the balance before it from either.
    #[test]
    fn a_statement_merges_staged_and_stored_lines() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = small_store(dir.path());
        let (wallet, bank) = (254_700_000_001u128, 1u128);
        let mut balance = 0u128;
        for k in 1..=6u128 {
            let new = hazina_core::NewTransfer {
                id: k,
                debit_account_id: bank,
                credit_account_id: wallet,
                amount: 10 * k,
                ..hazina_core::NewTransfer::default()
            };
            balance += 10 * k;
            let moved = Transfer {
                new,
                timestamp: 100 * u64::try_from(k).unwrap(),
                result: ResultCode::Ok,
                hold: HoldState::None,
            };
            let accounts = vec![standing(wallet, balance, 0), standing(bank, 0, balance)];
            let changes = Changes { accounts, transfers: vec![moved], profiles: None };
            let index = u64::try_from(k).unwrap();
            store.write_state(&Applied { index, ..Applied::default() }, &changes).expect("stage");
            // Lines 1 to 3 are stored, 4 to 6 staged.
            if k == 3 {
                store.checkpoint(0).expect("checkpoint");
            }
        }
        let all = store.history(wallet, 0, 100).expect("history");
        let times: Vec<u64> = all.entries.iter().map(|e| e.timestamp).collect();
        assert_eq!(times, [100, 200, 300, 400, 500, 600]);
        let balances: Vec<i128> = all.entries.iter().map(|e| e.balance_after).collect();
        assert_eq!(balances, [10, 30, 60, 100, 150, 210]);
        // A page across the two, then one of staged lines only: the balance before each comes
        // from a stored line, then from a staged one.
        let page = store.history(wallet, 250, 2).expect("history");
        assert_eq!(page.opening_balance, 30);
        assert_eq!(page.entries.iter().map(|e| e.timestamp).collect::<Vec<_>>(), [300, 400]);
        assert_eq!(page.next_from, Some(500));
        let page = store.history(wallet, 500, 2).expect("history");
        assert_eq!((page.opening_balance, page.entries.len(), page.next_from), (100, 2, None));
        // The bank's side, debits.
        let bank_page = store.history(bank, 0, 100).expect("history");
        assert_eq!(bank_page.entries.last().map(|e| e.balance_after), Some(-210));
    }
}
