//! # hazina-store
//!
//! Hazina's storage on RocksDB, the only crate that links it. One database, six column
//! families:
//!
//! | family      | key                                   | value                               |
//! |-------------|---------------------------------------|-------------------------------------|
//! | `log`       | entry index (u64, big-endian)         | the entry ([`hazina_core::codec`])  |
//! | `accounts`  | account id (u128 BE)                  | the account as it stands            |
//! | `transfers` | transfer id (u128 BE)                 | the record, failed transfers too    |
//! | `holds`     | transfer id of a pending hold         | empty                               |
//! | `history`   | account id, timestamp (BE), format    | one posted movement and the balance |
//! | `meta`      | `applied`, `profiles`                 | where the state stands              |
//!
//! Two kinds of write, with different durability:
//! - [`Store::append`] writes log entries with a synced write-ahead log: once it returns, the
//!   entries survive a crash of the process or the machine. Results are returned to callers
//!   only after this.
//! - [`Store::write_state`] writes what an entry changed (accounts, records, statement lines,
//!   and `applied`, the index of that entry) **without** the write-ahead log. It is lost in a
//!   crash, which is fine: the log still holds the entry, and recovery replays it. RocksDB's
//!   atomic flush makes every flush of the state a consistent cut: the state on disk is always
//!   exactly the effect of the entries up to its `applied` index.
//!
//! [`Store::checkpoint`] flushes the state and trims the log behind it, so a restart replays
//! only the log's tail.
//!
//! A site of a replicated group keeps raft's log in a database of its own, [`RaftLog`], beside
//! the state: its synced writes then never wait for the state's memtables to be switched and
//! flushed (measured: seconds, docs/BENCHMARKS.md). Its state database holds only statement
//! lines ([`Store::write_statements`], without the WAL): the site rebuilds its ledger from
//! raft's snapshot and log, never from stored accounts, records or `applied`.

mod raft_log;

pub use raft_log::{RaftLog, RaftLogOptions, write_snapshot_file};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use hazina_core::codec::{self, CodecError, Entry};
use hazina_core::{
    Account, HistoryEntry, HistoryPage, LimitProfile, LimitProfileId, ResultCode, Timestamp,
    Transfer,
};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, FlushOptions, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};

const CF_LOG: &str = "log";
const CF_ACCOUNTS: &str = "accounts";
const CF_TRANSFERS: &str = "transfers";
const CF_HOLDS: &str = "holds";
const CF_HISTORY: &str = "history";
const CF_META: &str = "meta";
const FAMILIES: [&str; 6] = [CF_LOG, CF_ACCOUNTS, CF_TRANSFERS, CF_HOLDS, CF_HISTORY, CF_META];

const META_APPLIED: &[u8] = b"applied";
const META_PROFILES: &[u8] = b"profiles";

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

/// Tuning of the database. The defaults suit a node with a few GiB for RocksDB.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of each column family's memtable.
    pub write_buffer_bytes: usize,
    /// Bytes of the shared block cache.
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions { write_buffer_bytes: 64 << 20, block_cache_bytes: 512 << 20 }
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
/// The families whose compactions can fall behind (the small ones have triggers far above
/// theirs, see [`Store::open`]).
const LARGE_FAMILIES: [&str; 3] = [CF_ACCOUNTS, CF_TRANSFERS, CF_HISTORY];

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
    db: DB,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it if missing.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let mut db_options = db_options()?;
        // State is written without the WAL: every flush must cut all families at one point.
        db_options.set_atomic_flush(true);
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let families = FAMILIES.iter().map(|&name| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(options.write_buffer_bytes);
            // Up to four memtables (one written, the others waiting for their flush): at
            // RocksDB's default of two, a flush that fell behind stopped writes.
            cf.set_max_write_buffer_number(MEMTABLES_MAX);
            if matches!(name, CF_LOG | CF_META | CF_HOLDS) {
                // Atomic flushes give every family a level-0 file per flush, these small ones
                // too, and their compactions wait behind those of the large ones: at the
                // default triggers (20 files to slow down, 36 to stop) their few kilobytes
                // slowed every write of the database (docs/BENCHMARKS.md, session 7).
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
            table.set_block_cache(&cache);
            if name == CF_TRANSFERS {
                // The memtable too: a new id's lookup is answered by a filter, not a search of
                // the skip list.
                cf.set_memtable_whole_key_filtering(true);
                cf.set_memtable_prefix_bloom_ratio(0.1);
            }
            if name == CF_ACCOUNTS {
                // Accounts are served from memory and read back from here only at start, from
                // flushed files: nothing searches this memtable, so it is a vector (an append
                // per write, one sort per flush), not a skip list (a search per write).
                cf.set_memtable_factory(rocksdb::MemtableFactory::Vector);
            }
            if matches!(name, CF_TRANSFERS | CF_ACCOUNTS) {
                // Most lookups of a new transfer id find nothing: a filter answers them
                // without reading a block.
                table.set_bloom_filter(10.0, false);
                table.set_cache_index_and_filter_blocks(true);
                table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            }
            cf.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(name, cf)
        });
        let db = DB::open_cf_descriptors(&db_options, path, families)?;
        Ok(Store { db })
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

    /// Writes what entry `applied.index` changed, without the write-ahead log (see the crate
    /// documentation).
    ///
    /// Each family's keys go into the batch in ascending order. A memtable is a skip list that
    /// keeps the place of its last insert, so keys in order are each found a few steps from the
    /// one before, in memory just touched; in the order the ledger changed them (random ids) each
    /// insert searched the whole list, and that was most of the writer's time under batches of
    /// 8,000 transfers. A stable sort keeps later writes of one key after earlier ones.
    pub fn write_state(&self, applied: &Applied, changes: &Changes) -> Result<(), StoreError> {
        let (accounts_cf, transfers_cf) = (self.cf(CF_ACCOUNTS), self.cf(CF_TRANSFERS));
        let (holds_cf, history_cf) = (self.cf(CF_HOLDS), self.cf(CF_HISTORY));
        let mut batch = WriteBatch::default();
        let mut bytes = Vec::with_capacity(codec::ACCOUNT_BYTES_MAX);
        let mut accounts: Vec<&Account> = changes.accounts.iter().collect();
        accounts.sort_by_key(|a| a.id);
        for account in accounts {
            bytes.clear();
            codec::encode_account(account, &mut bytes);
            batch.put_cf(accounts_cf, account.id.to_be_bytes(), &bytes);
        }
        let mut transfers: Vec<&Transfer> = changes.transfers.iter().collect();
        transfers.sort_by_key(|t| t.new.id);
        for record in &transfers {
            bytes.clear();
            codec::encode_transfer(record, &mut bytes);
            batch.put_cf(transfers_cf, record.new.id.to_be_bytes(), &bytes);
        }
        for record in &transfers {
            let id = record.new.id.to_be_bytes();
            match record.hold {
                hazina_core::HoldState::Pending => batch.put_cf(holds_cf, id, []),
                hazina_core::HoldState::None => {}
                _ => batch.delete_cf(holds_cf, id),
            }
        }
        put_statements(&mut batch, history_cf, changes);
        let meta = self.cf(CF_META);
        batch.put_cf(meta, META_APPLIED, encode_applied(applied));
        if let Some(profiles) = &changes.profiles {
            batch.put_cf(meta, META_PROFILES, encode_profiles(profiles));
        }
        self.write_unlogged(batch)
    }

    /// Writes only the statement lines of what some entries changed, without the write-ahead
    /// log: for a site of a replicated group, which rebuilds its ledger from raft's snapshot and
    /// log and never reads stored accounts, records or `applied` back. Two thirds of
    /// [`Store::write_state`]'s keys per transfer (two accounts and the record) are then never
    /// written.
    pub fn write_statements(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        put_statements(&mut batch, self.cf(CF_HISTORY), changes);
        self.write_unlogged(batch)
    }

    fn write_unlogged(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Where the state in the database stands (in memory or flushed).
    pub fn applied(&self) -> Result<Applied, StoreError> {
        match self.db.get_cf(self.cf(CF_META), META_APPLIED)? {
            None => Ok(Applied::default()),
            Some(bytes) => decode_applied(&bytes),
        }
    }

    /// Flushes the state to disk and trims the log up to `applied.index - retain`. Returns the
    /// index the flushed state stands at.
    pub fn checkpoint(&self, retain: u64) -> Result<u64, StoreError> {
        // Read before the flush: the flush persists at least this much.
        let applied = self.applied()?.index;
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        let families: Vec<_> = FAMILIES.iter().map(|name| self.cf(name)).collect();
        self.db.flush_cfs_opt(&families, &flush)?;
        let trim_below = applied.saturating_sub(retain);
        if trim_below > 1 {
            let log = self.cf(CF_LOG);
            self.db.delete_range_cf(log, 0u64.to_be_bytes(), trim_below.to_be_bytes())?;
        }
        Ok(applied)
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

    /// Reads the stored state, to rebuild the ledger. `progress` is called every million
    /// accounts with the count so far, for start-up logs.
    pub fn load_checkpoint(
        &self,
        mut progress: impl FnMut(usize),
    ) -> Result<Checkpoint, StoreError> {
        let applied = self.applied()?;
        let profiles = match self.db.get_cf(self.cf(CF_META), META_PROFILES)? {
            None => BTreeMap::new(),
            Some(bytes) => decode_profiles(&bytes)?,
        };
        let mut read = ReadOptions::default();
        read.set_readahead_size(4 << 20);
        read.fill_cache(false);
        let mut accounts = Vec::new();
        for item in self.db.iterator_cf_opt(self.cf(CF_ACCOUNTS), read, IteratorMode::Start) {
            let (_, value) = item?;
            accounts.push(codec::decode_account(&value)?);
            if accounts.len() % 1_000_000 == 0 {
                progress(accounts.len());
            }
        }
        let mut holds = Vec::new();
        let ids: Vec<Vec<u8>> = self
            .db
            .iterator_cf(self.cf(CF_HOLDS), IteratorMode::Start)
            .map(|item| item.map(|(key, _)| key.to_vec()))
            .collect::<Result<_, _>>()?;
        let transfers = self.cf(CF_TRANSFERS);
        for (id, value) in
            ids.iter().zip(self.db.multi_get_cf(ids.iter().map(|id| (transfers, id))))
        {
            let value = value?.ok_or_else(|| {
                StoreError::Corrupt(format!("hold {id:?} has no transfer record"))
            })?;
            holds.push(codec::decode_transfer(&value)?);
        }
        Ok(Checkpoint { applied, accounts, profiles, holds })
    }

    /// Transfer records by id; `None` where there is none.
    pub fn transfers(&self, ids: &[u128]) -> Result<Vec<Option<Transfer>>, StoreError> {
        let cf = self.cf(CF_TRANSFERS);
        let keys: Vec<[u8; 16]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        // Big-endian keys sort as the ids do: sorted input takes RocksDB's batched path.
        let sorted = ids.is_sorted();
        self.db
            .batched_multi_get_cf(cf, &keys, sorted)
            .into_iter()
            .map(|value| match value? {
                None => Ok(None),
                Some(bytes) => Ok(Some(codec::decode_transfer(&bytes)?)),
            })
            .collect()
    }

    /// A page of `account`'s statement: at most `limit` movements from `from` on, oldest first.
    pub fn history(
        &self,
        account: u128,
        from: Timestamp,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let cf = self.cf(CF_HISTORY);
        let start = history_seek_key(account, from);
        let prefix = account.to_be_bytes();
        // The opening balance: the line just before `from`, if it is this account's.
        let mut before = self.db.raw_iterator_cf(cf);
        // The last key at `from - 1` of either format: 24 bytes, or 25 ending in a format.
        let mut last = history_seek_key(account, from.saturating_sub(1)).to_vec();
        last.push(u8::MAX);
        before.seek_for_prev(&last);
        let mut opening_balance = 0;
        if from > 0
            && let (Some(key), Some(value)) = (before.key(), before.value())
            && key.starts_with(&prefix)
        {
            opening_balance = decode_history(key, value)?.balance_after;
        }
        before.status()?;
        let mut entries = Vec::new();
        let mut next_from = None;
        if limit > 0 {
            let iter = self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward));
            for item in iter {
                let (key, value) = item?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let entry = decode_history(&key, &value)?;
                // One line per account and timestamp, but a site that re-applies entries after
                // an upgrade writes a version-2 line beside the version-1 line of the same
                // movement: the two are adjacent in key order, and the first one counts.
                if entries
                    .last()
                    .is_some_and(|last: &HistoryEntry| last.timestamp == entry.timestamp)
                {
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

/// What every database of a node shares: created if missing, background work kept from getting
/// in the way of the threads that answer callers.
fn db_options() -> Result<Options, StoreError> {
    let mut db_options = Options::default();
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

/// Adds an entry's statement lines to `batch`, in key order (see [`Store::write_state`]).
fn put_statements(batch: &mut WriteBatch, history: &rocksdb::ColumnFamily, changes: &Changes) {
    let (mut lines, values) = history_lines(changes);
    lines.sort_by_key(|line| line.0);
    for (key, value) in lines {
        batch.put_cf(history, key, &values[value]);
    }
}

/// The statement lines of one entry: every successful transfer that moved posted money (a plain
/// transfer or the post of a hold), once for each of its two accounts, with the balance after
/// it.
///
/// Balances are worked backwards from where each account stands after the entry (its copy in
/// `changes.accounts`): the last line of an account in the entry has that balance, and each
/// earlier line has the balance before the movement after it.
/// Each line's key and where its value is in the bytes beside them.
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
        let options = StoreOptions { write_buffer_bytes: 1 << 20, block_cache_bytes: 1 << 20 };
        let store = Store::open(dir.path(), &options).expect("open");
        let quiet = store.write_pressure().expect("pressure");
        assert_eq!((quiet.level0_files, quiet.memtables_waiting), (0, 0));
        assert!(quiet.level() < 0.0, "an empty store is not behind: {}", quiet.level());
        assert!(!quiet.write_stopped && quiet.delayed_write_rate == 0);
        let files = |n: i32| u64::try_from(n).expect("positive");
        let mut levels = Vec::new();
        for n in 1..=files(LEVEL0_REFUSE_FILES) {
            let applied = Applied { index: n, ..Applied::default() };
            store.write_state(&applied, &Changes::default()).expect("write");
            store.db.put_cf(store.cf(CF_HISTORY), n.to_be_bytes(), b"line").expect("put");
            store.checkpoint(0).expect("flush");
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
        let options = StoreOptions { write_buffer_bytes: 1 << 20, block_cache_bytes: 1 << 20 };
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
        // Version 2, through the writer: transfer 11 debits 200 at time 101, leaving 300.
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
        let standing = |id, credits_posted, debits_posted| Account {
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
        };
        let (mine, theirs) = (standing(account, 500, 200), standing(other, 200, 0));
        let changes =
            Changes { accounts: vec![mine, theirs], transfers: vec![transfer], profiles: None };
        store.write_statements(&changes).expect("write");

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
        store.write_statements(&changes).expect("write");
        let page = store.history(account, 0, 10).expect("history");
        let times: Vec<_> = page.entries.iter().map(|e| e.timestamp).collect();
        assert_eq!(times, [100, 101]);
        let first = store.history(account, 0, 1).expect("history");
        assert_eq!(first.next_from, Some(101), "the duplicate is not the next page");
    }
}
