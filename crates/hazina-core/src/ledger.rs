//! The ledger: partitions, and the deterministic application of a batch across them.
//!
//! Applying a batch has four steps:
//! 1. **Expire** every hold whose expiry is at or before the batch timestamp (serial, in partition
//!    order; releases commute, so the order cannot change the result).
//! 2. **Plan**: group the commands into units (single commands and linked chains) and give each
//!    unit the set (mask) of partitions it may touch, including the partitions of any earlier
//!    command whose result it reads (a resubmitted id, the hold it posts).
//! 3. **Execute** the units. Serially in batch order, or in parallel: each worker owns some
//!    partitions and walks, in batch order, the units that touch them; a unit that touches
//!    several workers' partitions waits until all of them reach it, and the last to arrive
//!    runs it. Two units that share a partition therefore run in batch order, and two that share
//!    none touch disjoint state, so the outcome equals the serial one (see
//!    `docs/adr/0001-partitioned-deterministic-execution.md`).
//! 4. **Record**: each partition records the batch's new transfers whose ids it owns and the
//!    final state of the holds posted or voided.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};

use crate::ResultCode;
use crate::command::{Account, Command, Transfer};
use crate::exec::{BatchCtx, NONE, ShardAccess, Undo, Unit, execute_unit};
use crate::shard::{
    FastMap, Hold, Key, NEVER, Shard, TransferShard, digest_of, fast_map, partition_of,
};
use crate::types::{
    HoldState, LimitProfile, LimitProfileId, NANOS_PER_SECOND, Timestamp, nairobi_day,
};

/// The most partitions a ledger can have: a unit's partitions are a 64-bit mask.
pub const PARTITIONS_MAX: usize = 64;

/// Sizing and limits of a ledger. Only `partitions` shapes memory; `threads` and
/// `parallel_batch_min` change speed, never results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Partitions the accounts are spread over (1 to [`PARTITIONS_MAX`]).
    pub partitions: usize,
    /// Worker threads that apply a large batch (1 to `partitions`); 1 applies on the caller.
    /// Keep it at most the cores free for the ledger: a worker waiting for another at a unit
    /// that spans both spins before it yields.
    pub threads: usize,
    /// Batches with fewer commands than this are applied on the calling thread.
    pub parallel_batch_min: usize,
    /// A large batch's units run on several workers only if at most this percentage of them
    /// span more than one worker; otherwise they run on the calling thread and only resolving
    /// and recording use the workers. Each spanning unit costs the workers a rendezvous, and
    /// with many of them the workers mostly wait for each other (docs/adr/0001). 100 always
    /// runs units on the workers.
    pub spanning_units_max_percent: u8,
    /// The most commands in one batch.
    pub batch_commands_max: usize,
    /// The most accounts the ledger will hold; a batch that could pass it is refused whole.
    pub accounts_max: usize,
    /// The most pending holds one account may have as debit account.
    pub holds_per_account_max: u16,
    /// The most limit profiles, besides the built-in profile 0.
    pub limit_profiles_max: usize,
    /// Accounts to reserve memory for up front, over all partitions.
    pub accounts_capacity: usize,
    /// Transfer records kept in memory per generation, over all partitions; 0 keeps every
    /// record. With a size set, at most two generations are resident (plus the records of
    /// pending holds) and older records leave memory: a host that sets it must load back with
    /// [`Ledger::load_transfer`] every record a batch names before applying it.
    pub transfers_generation_max: usize,
    /// Transfer records to reserve memory for up front, over all partitions, when every record
    /// is kept (`transfers_generation_max` = 0). Past it the index grows by doubling, which
    /// rehashes every record it holds in one batch: about a quarter of a second at 8M records,
    /// long enough for a replicated site to miss its heartbeats.
    pub transfers_capacity: usize,
    /// Keep a list of the accounts and transfer records each batch writes, for a host that
    /// stores them ([`Ledger::take_changes`]). Off, the ledger does not pay for it.
    pub track_changes: bool,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            partitions: 1,
            threads: 1,
            parallel_batch_min: 512,
            spanning_units_max_percent: 10,
            batch_commands_max: 8_192,
            accounts_max: 100_000_000,
            holds_per_account_max: 32,
            limit_profiles_max: 1_024,
            accounts_capacity: 0,
            transfers_generation_max: 0,
            transfers_capacity: 0,
            track_changes: false,
        }
    }
}

/// A batch that cannot be applied. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    BatchTooLarge {
        commands: usize,
        max: usize,
    },
    /// Batch timestamps must increase: each command is stamped `timestamp + index`, after the
    /// last stamp of the previous batch.
    TimestampNotIncreasing {
        timestamp: Timestamp,
        last: Timestamp,
    },
    TimestampOverflow,
    /// The batch creates accounts that could take the ledger past `accounts_max`.
    AccountsFull {
        accounts: usize,
        creating: usize,
        max: usize,
    },
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::BatchTooLarge { commands, max } => {
                write!(f, "batch of {commands} commands exceeds the maximum of {max}")
            }
            ApplyError::TimestampNotIncreasing { timestamp, last } => {
                write!(f, "batch timestamp {timestamp} is not after the last one, {last}")
            }
            ApplyError::TimestampOverflow => write!(f, "batch timestamps would overflow"),
            ApplyError::AccountsFull { accounts, creating, max } => write!(
                f,
                "ledger holds {accounts} accounts; creating up to {creating} more could pass the \
                 maximum of {max}"
            ),
        }
    }
}

impl std::error::Error for ApplyError {}

/// A checkpoint that does not make a consistent ledger. Nothing can be served from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreError(pub String);

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "checkpoint cannot be restored: {}", self.0)
    }
}

impl std::error::Error for RestoreError {}

/// A configuration that cannot make a ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid ledger configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Per-batch working memory, kept between batches to avoid allocating on the hot path.
#[derive(Debug, Default)]
struct Scratch {
    first: Vec<u32>,
    pending_ref: Vec<u32>,
    masks: Vec<u64>,
    units: Vec<Unit>,
    results: Vec<AtomicU16>,
    stored: Vec<bool>,
    fresh: Vec<bool>,
    slots: Vec<[u32; 2]>,
    ids: Option<FastMap<Key, u32>>,
    out: Vec<ResultCode>,
    undo: Vec<Undo>,
}

/// The ledger state machine. See the crate documentation.
#[derive(Debug)]
pub struct Ledger {
    config: LedgerConfig,
    shards: Vec<Mutex<Shard>>,
    transfers: Vec<TransferShard>,
    /// The stamp of the last command applied, or of the last (empty) batch.
    timestamp_last: Timestamp,
    scratch: Scratch,
}

impl Ledger {
    pub fn new(config: LedgerConfig) -> Result<Ledger, ConfigError> {
        if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
            return Err(ConfigError(format!(
                "partitions must be 1 to {PARTITIONS_MAX}, not {}",
                config.partitions
            )));
        }
        if config.threads == 0 || config.threads > config.partitions {
            return Err(ConfigError(format!(
                "threads must be 1 to partitions ({}), not {}",
                config.partitions, config.threads
            )));
        }
        if config.batch_commands_max == 0 || config.batch_commands_max >= NONE as usize {
            return Err(ConfigError("batch_commands_max must be 1 to 2^32 - 2".into()));
        }
        // Slots are u32 per partition; bounding the total keeps any partition below that
        // however the ids happen to hash.
        if config.accounts_max >= u32::MAX as usize {
            return Err(ConfigError(format!("accounts_max must be below {}", u32::MAX)));
        }
        let per_partition = config.accounts_capacity.div_ceil(config.partitions);
        let track = config.track_changes;
        let shards = (0..config.partitions)
            .map(|_| {
                let mut shard = Shard::new(per_partition);
                shard.changed = track.then(Vec::new);
                Mutex::new(shard)
            })
            .collect();
        let generation_max = config.transfers_generation_max.div_ceil(config.partitions);
        let capacity = if generation_max == 0 {
            config.transfers_capacity.div_ceil(config.partitions)
        } else {
            generation_max + config.batch_commands_max
        };
        let transfers = (0..config.partitions)
            .map(|_| {
                let mut records = TransferShard::new(generation_max, capacity);
                records.changed = track.then(Vec::new);
                records
            })
            .collect();
        Ok(Ledger { config, shards, transfers, timestamp_last: 0, scratch: Scratch::default() })
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Applies a batch at `timestamp`, returning one result per command, in order.
    pub fn apply(
        &mut self,
        timestamp: Timestamp,
        commands: &[Command],
    ) -> Result<Vec<ResultCode>, ApplyError> {
        let mut results = Vec::with_capacity(commands.len());
        self.apply_into(timestamp, commands, &mut results)?;
        Ok(results)
    }

    /// As [`Ledger::apply`], writing the results into `results` (cleared first).
    pub fn apply_into(
        &mut self,
        timestamp: Timestamp,
        commands: &[Command],
        results: &mut Vec<ResultCode>,
    ) -> Result<(), ApplyError> {
        results.clear();
        self.check_batch(timestamp, commands)?;
        self.expire_holds(timestamp);
        self.plan(commands);
        self.resolve_and_warm(commands);

        let Ledger { config, shards, transfers, scratch, .. } = self;
        let ctx = BatchCtx {
            commands,
            timestamp,
            partitions: config.partitions,
            holds_per_account_max: config.holds_per_account_max,
            limit_profiles_max: config.limit_profiles_max,
            first: &scratch.first,
            pending_ref: &scratch.pending_ref,
            results: &scratch.results,
            stored: &scratch.stored,
            slots: &scratch.slots,
            transfers,
        };
        let parallel = config.threads > 1 && commands.len() >= config.parallel_batch_min;
        let unit_workers: Vec<u64> = if parallel {
            scratch.units.iter().map(|u| workers_of(u.mask, config.threads)).collect()
        } else {
            Vec::new()
        };
        let spanning = unit_workers.iter().filter(|workers| workers.count_ones() > 1).count();
        let units_on_workers = parallel
            && spanning * 100
                <= scratch.units.len() * usize::from(config.spanning_units_max_percent);
        if units_on_workers {
            warm_accounts(shards, commands, &scratch.slots, 0..commands.len());
            execute_parallel(&ctx, &scratch.units, &unit_workers, shards, config.threads);
        } else {
            // Warm the accounts a window at a time, just ahead of the units that use them, so
            // that they are still in the core's own cache when those units run.
            let mut warmed = 0;
            for unit in &scratch.units {
                let start = unit.start as usize;
                if start >= warmed {
                    warmed = (start + WARM_WINDOW).min(commands.len());
                    warm_accounts(shards, commands, &scratch.slots, start..warmed);
                }
                let mut access = SerialAccess { shards };
                execute_unit(&ctx, unit, &mut access, &mut scratch.out, &mut scratch.undo);
                publish(&ctx, unit, &scratch.out);
            }
        }
        results.extend(scratch.results.iter().map(|code| {
            ResultCode::from_code(code.load(Ordering::Relaxed)).expect("every command has a result")
        }));

        let record_threads = if parallel { config.threads } else { 1 };
        record(commands, timestamp, results, &scratch.fresh, shards, transfers, record_threads);
        self.timestamp_last = match commands.len() {
            0 => timestamp,
            n => timestamp + (n as u64 - 1),
        };
        Ok(())
    }

    fn check_batch(&self, timestamp: Timestamp, commands: &[Command]) -> Result<(), ApplyError> {
        if commands.len() > self.config.batch_commands_max {
            return Err(ApplyError::BatchTooLarge {
                commands: commands.len(),
                max: self.config.batch_commands_max,
            });
        }
        if timestamp <= self.timestamp_last {
            return Err(ApplyError::TimestampNotIncreasing {
                timestamp,
                last: self.timestamp_last,
            });
        }
        if timestamp.checked_add(commands.len() as u64).is_none_or(|end| end == Timestamp::MAX) {
            return Err(ApplyError::TimestampOverflow);
        }
        let creating = commands.iter().filter(|c| matches!(c, Command::CreateAccount(_))).count();
        let accounts = self.accounts_count();
        if accounts + creating > self.config.accounts_max {
            return Err(ApplyError::AccountsFull {
                accounts,
                creating,
                max: self.config.accounts_max,
            });
        }
        Ok(())
    }

    /// Releases every hold that expires at or before `timestamp`.
    fn expire_holds(&mut self, timestamp: Timestamp) {
        let partitions = self.config.partitions;
        for p in 0..partitions {
            let shard = self.shards[p].get_mut();
            // Cheap test first: most batches expire nothing.
            if shard.expiries.first().is_none_or(|&(at, _)| at > timestamp) {
                continue;
            }
            let due: Vec<(Timestamp, u128)> =
                shard.expiries.range(..=(timestamp, u128::MAX)).copied().collect();
            for (_, id) in due {
                let shard = self.shards[p].get_mut();
                let hold = shard.hold_remove(id);
                debug_assert_eq!(hold.state, HoldState::Pending);
                let mut debit = *shard.get(hold.debit_slot);
                debit.debits_pending -= hold.amount;
                debit.holds_pending -= 1;
                if debit.daily_day == hold.day {
                    debit.daily_debited -= hold.amount;
                }
                shard.put(hold.debit_slot, debit);

                let credit_shard =
                    self.shards[partition_of(hold.credit_account_id, partitions)].get_mut();
                let (slot, mut credit) = credit_shard
                    .find(hold.credit_account_id)
                    .expect("a hold's credit account exists");
                credit.credits_pending -= hold.amount;
                credit_shard.put(slot, credit);

                self.transfers[partition_of(id, partitions)].set_hold_state(id, HoldState::Expired);
            }
        }
    }

    /// Resolves, before execution, each transfer's account slots and whether its id was
    /// recorded by an earlier batch (so which commands record a new transfer), and claims the
    /// index entries of the new ids.
    ///
    /// A lookup is a chain of dependent cache misses (index control bytes, then index entry),
    /// and execution would take each chain in turn. Done here in one pass over the batch, the
    /// lookups of different commands do not depend on each other, so the processor keeps many
    /// misses in flight; on a parallel batch the workers share the pass. Execution then reads
    /// accounts by slot. Changes no state but the claims, which read as absent until recorded.
    fn resolve_and_warm(&mut self, commands: &[Command]) {
        let n = commands.len();
        let config = &self.config;
        let threads =
            if config.threads > 1 && n >= config.parallel_batch_min { config.threads } else { 1 };
        let s = &mut self.scratch;
        s.slots.clear();
        s.slots.resize(n, [NONE; 2]);
        s.stored.clear();
        s.stored.resize(n, false);
        s.fresh.clear();
        s.fresh.resize(n, false);
        let partitions = self.shards.len();
        let first = &s.first;
        // Whether an earlier batch recorded the id, and so whether this command records a new
        // transfer: the first of the batch with a usable id that no earlier batch recorded.
        // Known before execution, and never asked of residency later: a record that left memory
        // is still part of the state. Each partition's ids in batch order, so that a later
        // command with an earlier one's id takes its answer, and claims go in recording order.
        // `records[p]` is partition `p`'s records when the caller resolves its ids, else None:
        // one pass over the batch for all of them.
        let resolve_ids = |records: &mut [Option<&mut TransferShard>],
                           stored: &mut [bool],
                           fresh: &mut [bool]| {
            for (i, command) in commands.iter().enumerate() {
                let Command::CreateTransfer(t) = command else { continue };
                if t.id == 0 || t.id == u128::MAX {
                    continue;
                }
                let Some(records) = &mut records[partition_of(t.id, partitions)] else {
                    continue;
                };
                let first = first[i] as usize;
                if first == i {
                    stored[i] = records.resolve(t.id);
                    fresh[i] = !stored[i];
                } else {
                    stored[i] = stored[first];
                }
            }
        };
        // Only reads: every partition is shared by all the threads resolving.
        let guards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(Mutex::lock).collect();
        let shards: Vec<&Shard> = guards.iter().map(|guard| &**guard).collect();
        let resolve_slots = |start: usize, slots: &mut [[u32; 2]]| {
            for (command, pair) in commands[start..start + slots.len()].iter().zip(slots) {
                let Command::CreateTransfer(t) = command else { continue };
                // The index entries of both accounts.
                for (slot, id) in pair.iter_mut().zip([t.debit_account_id, t.credit_account_id]) {
                    *slot = shards[partition_of(id, partitions)].slot(id).unwrap_or(NONE);
                }
            }
        };
        if threads == 1 || n == 0 {
            resolve_slots(0, &mut s.slots);
            let mut all: Vec<Option<&mut TransferShard>> =
                self.transfers.iter_mut().map(Some).collect();
            resolve_ids(&mut all, &mut s.stored, &mut s.fresh);
            return;
        }
        // Each worker resolves a share of the account slots, then the ids of its partitions
        // into flags of its own, merged after.
        let chunk = n.div_ceil(threads);
        let mut per_worker: Vec<IdsOfWorker<'_>> = (0..threads)
            .map(|_| IdsOfWorker {
                records: (0..partitions).map(|_| None).collect(),
                stored: vec![false; n],
                fresh: vec![false; n],
            })
            .collect();
        for (p, records) in self.transfers.iter_mut().enumerate() {
            per_worker[worker_of(p, threads)].records[p] = Some(records);
        }
        let work = |start: usize, slots: &mut [[u32; 2]], mine: &mut IdsOfWorker<'_>| {
            resolve_slots(start, slots);
            resolve_ids(&mut mine.records, &mut mine.stored, &mut mine.fresh);
        };
        std::thread::scope(|scope| {
            let work = &work;
            // A short batch can have fewer chunks of slots than workers; every worker still
            // resolves the ids of its partitions.
            let mut chunks = s.slots.chunks_mut(chunk);
            let mut parts = per_worker.iter_mut().enumerate().map(|(k, mine)| {
                let slots = chunks.next().unwrap_or_default();
                ((k * chunk).min(n), slots, mine)
            });
            let own = parts.next();
            for (start, slots, mine) in parts {
                scope.spawn(move || work(start, slots, mine));
            }
            if let Some((start, slots, mine)) = own {
                work(start, slots, mine);
            }
        });
        for mine in &per_worker {
            for (all, mine) in s.stored.iter_mut().zip(&mine.stored) {
                *all |= *mine;
            }
            for (all, mine) in s.fresh.iter_mut().zip(&mine.fresh) {
                *all |= *mine;
            }
        }
    }

    /// Splits the batch into units and works out which partitions each may touch.
    fn plan(&mut self, commands: &[Command]) {
        let partitions = self.config.partitions;
        let all_partitions = if partitions == 64 { u64::MAX } else { (1u64 << partitions) - 1 };
        let bit = |id: u128| 1u64 << partition_of(id, partitions);
        let s = &mut self.scratch;
        let n = commands.len();
        s.first.clear();
        s.pending_ref.clear();
        s.masks.clear();
        s.units.clear();
        s.results.clear();
        s.results.resize_with(n, || AtomicU16::new(u16::MAX));
        let ids = s.ids.get_or_insert_with(|| fast_map(0));
        ids.clear();
        ids.reserve(n);

        for (i, command) in commands.iter().enumerate() {
            let index = u32::try_from(i).expect("batch_commands_max < 2^32");
            let (mut mask, first, pending_ref) = match command {
                Command::CreateTransfer(t) => {
                    // Look up the hold before this command's own id is entered: a transfer that
                    // names itself as its hold must not refer to itself.
                    let pending_ref = if t.pending_id != 0 {
                        ids.get(&Key::from(t.pending_id)).copied().unwrap_or(NONE)
                    } else {
                        NONE
                    };
                    let first = *ids.entry(Key::from(t.id)).or_insert(index);
                    (bit(t.debit_account_id) | bit(t.credit_account_id), first, pending_ref)
                }
                Command::CreateAccount(a) => (bit(a.id), index, NONE),
                Command::SetAccountStatus { account_id, .. } => (bit(*account_id), index, NONE),
                Command::SetLimitProfile { .. } => (all_partitions, index, NONE),
            };
            // A command that reads an earlier command's result must run after it: sharing a
            // partition with it guarantees that.
            if first != index {
                mask |= s.masks[first as usize];
            }
            if pending_ref != NONE {
                mask |= s.masks[pending_ref as usize];
            }
            s.first.push(first);
            s.pending_ref.push(pending_ref);
            s.masks.push(mask);
        }

        let mut i = 0;
        while i < n {
            let start = i;
            let mut mask = s.masks[i];
            let mut open = false;
            if let Command::CreateTransfer(t) = &commands[i] {
                let mut linked = t.flags.linked();
                while linked {
                    match commands.get(i + 1) {
                        Some(Command::CreateTransfer(next)) => {
                            i += 1;
                            mask |= s.masks[i];
                            linked = next.flags.linked();
                        }
                        // The chain meets another kind of command or the end of the batch.
                        _ => {
                            open = true;
                            break;
                        }
                    }
                }
            }
            i += 1;
            s.units.push(Unit {
                start: u32::try_from(start).expect("batch fits u32"),
                end: u32::try_from(i).expect("batch fits u32"),
                mask,
                open,
            });
        }
    }

    /// The state digest: equal on two ledgers exactly when (but for a 2^-128 chance) their
    /// accounts, transfer records, limit profiles and clocks are equal. Independent of the
    /// number of partitions. O(partitions + profiles).
    pub fn digest(&self) -> u128 {
        let accounts = self.shards.iter().fold(0u128, |sum, s| sum.wrapping_add(s.lock().digest));
        let transfers = self.transfers.iter().fold(0u128, |sum, t| sum.wrapping_add(t.digest));
        let profiles = self.limit_profiles();
        let mut bytes = Vec::with_capacity(48 + profiles.len() * 68);
        bytes.extend_from_slice(&accounts.to_le_bytes());
        bytes.extend_from_slice(&transfers.to_le_bytes());
        bytes.extend_from_slice(&self.timestamp_last.to_le_bytes());
        for (id, p) in &profiles {
            bytes.extend_from_slice(&id.to_le_bytes());
            for limit in [p.per_transfer_max, p.daily_debit_max, p.balance_max, p.amount_min] {
                bytes.extend_from_slice(&limit.to_le_bytes());
            }
        }
        digest_of(&bytes)
    }

    pub fn account(&self, id: u128) -> Option<Account> {
        let shard = self.shards[partition_of(id, self.config.partitions)].lock();
        shard.find(id).map(|(_, account)| account)
    }

    /// A resident transfer record: every transfer, unless
    /// [`LedgerConfig::transfers_generation_max`] moved it out of memory.
    pub fn transfer(&self, id: u128) -> Option<Transfer> {
        self.transfers[partition_of(id, self.config.partitions)].get(id).copied()
    }

    /// Every account, ordered by id.
    pub fn accounts(&self) -> Vec<Account> {
        let mut all = self.accounts_unordered();
        all.sort_unstable_by_key(|a| a.id);
        all
    }

    /// Every account, in partition and slot order: [`Ledger::accounts`] without the sort, for
    /// a copy that must be quick (a snapshot's, sorted later on another thread).
    pub fn accounts_unordered(&self) -> Vec<Account> {
        let mut all = Vec::with_capacity(self.accounts_count());
        for shard in &self.shards {
            all.extend(shard.lock().accounts());
        }
        all
    }

    /// Every resident transfer record, ordered by id.
    pub fn transfers(&self) -> Vec<Transfer> {
        let mut all = self.transfers_unordered();
        all.sort_unstable_by_key(|t| t.new.id);
        all
    }

    /// Every resident transfer record, in storage order: [`Ledger::transfers`] without the sort.
    pub fn transfers_unordered(&self) -> Vec<Transfer> {
        let mut all = Vec::with_capacity(self.transfers_resident());
        for shard in &self.transfers {
            all.extend(shard.records().copied());
        }
        all
    }

    /// Every resident transfer record, in storage order, sharing the ledger's full chunks of
    /// records: a copy for a snapshot that costs a pointer per 4,096 records instead of the
    /// records themselves ([`crate::RecordsCopy`]).
    pub fn transfers_shared(&self) -> crate::RecordsCopy {
        let mut copy = crate::RecordsCopy::default();
        for shard in &self.transfers {
            shard.share(&mut copy);
        }
        copy
    }

    /// Every limit profile, ordered by id (every partition holds the same copy).
    pub fn limit_profiles(&self) -> BTreeMap<LimitProfileId, LimitProfile> {
        self.shards[0].lock().profiles.iter().map(|(id, limits)| (*id, *limits)).collect()
    }

    pub fn accounts_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().accounts_len()).sum()
    }

    pub fn transfers_resident(&self) -> usize {
        self.transfers.iter().map(TransferShard::len).sum()
    }

    pub fn timestamp_last(&self) -> Timestamp {
        self.timestamp_last
    }

    /// The accounts and transfer records written since the last call, appended to `accounts`
    /// (each account once, as it stands now, ordered by partition and slot) and `transfers` (in
    /// the order they were written: a later copy of an id supersedes an earlier one). Empty
    /// unless [`LedgerConfig::track_changes`] is set.
    pub fn take_changes(&mut self, accounts: &mut Vec<Account>, transfers: &mut Vec<Transfer>) {
        for shard in &mut self.shards {
            let shard = shard.get_mut();
            let Some(mut changed) = shard.changed.take() else { continue };
            changed.sort_unstable();
            changed.dedup();
            accounts.extend(changed.iter().map(|&slot| *shard.get(slot)));
            changed.clear();
            shard.changed = Some(changed);
        }
        for records in &mut self.transfers {
            if let Some(changed) = &mut records.changed {
                transfers.append(changed);
            }
        }
    }

    /// The part of the digest that covers transfer records. A host keeps it with a
    /// checkpoint: records that left memory are no longer there to be summed.
    pub fn transfers_digest(&self) -> u128 {
        self.transfers.iter().fold(0u128, |sum, t| sum.wrapping_add(t.digest))
    }

    /// Rebuilds a ledger from a checkpoint: every account, the limit profiles, the record of
    /// every pending hold, the transfers part of the digest ([`Ledger::transfers_digest`]) and
    /// the last timestamp. The result has the digest and behaviour of the ledger the checkpoint
    /// was taken from; records of finished transfers stay in storage, loaded back on demand
    /// with [`Ledger::load_transfer`].
    pub fn restore(
        config: LedgerConfig,
        accounts: impl IntoIterator<Item = Account>,
        profiles: &BTreeMap<LimitProfileId, LimitProfile>,
        holds: impl IntoIterator<Item = Transfer>,
        transfers_digest: u128,
        timestamp_last: Timestamp,
    ) -> Result<Ledger, RestoreError> {
        let mut ledger = Ledger::new(config).map_err(|e| RestoreError(e.0))?;
        let partitions = ledger.config.partitions;
        let mut count = 0usize;
        for account in accounts {
            let shard = ledger.shards[partition_of(account.id, partitions)].get_mut();
            if account.id == 0 || shard.slot(account.id).is_some() {
                return Err(RestoreError(format!("account {} is zero or twice", account.id)));
            }
            shard.insert(account);
            count += 1;
        }
        if count > ledger.config.accounts_max {
            return Err(RestoreError(format!(
                "{count} accounts exceed accounts_max {}",
                ledger.config.accounts_max
            )));
        }
        for shard in &mut ledger.shards {
            let shard = shard.get_mut();
            for (id, limits) in profiles {
                if !limits.is_valid() {
                    return Err(RestoreError(format!("limit profile {id} is not valid")));
                }
                shard.profiles.insert(*id, *limits);
            }
        }
        let mut holds_counted: FastMap<Key, u16> = fast_map(0);
        for record in holds {
            let t = &record.new;
            if record.hold != HoldState::Pending || record.result != ResultCode::Ok {
                return Err(RestoreError(format!("transfer {} is not a pending hold", t.id)));
            }
            let shard = ledger.shards[partition_of(t.debit_account_id, partitions)].get_mut();
            let Some(debit_slot) = shard.slot(t.debit_account_id) else {
                return Err(RestoreError(format!("hold {} has no debit account", t.id)));
            };
            if shard.holds.contains_key(&Key::from(t.id)) {
                return Err(RestoreError(format!("hold {} given twice", t.id)));
            }
            let expires_at = if t.timeout_s == 0 {
                NEVER
            } else {
                record
                    .timestamp
                    .checked_add(u64::from(t.timeout_s) * NANOS_PER_SECOND)
                    .ok_or_else(|| RestoreError(format!("hold {} expiry overflows", t.id)))?
            };
            shard.hold_insert(
                t.id,
                Hold {
                    amount: t.amount,
                    credit_account_id: t.credit_account_id,
                    expires_at,
                    debit_slot,
                    day: nairobi_day(record.timestamp),
                    state: HoldState::Pending,
                },
            );
            *holds_counted.entry(Key::from(t.debit_account_id)).or_default() += 1;
            ledger.transfers[partition_of(t.id, partitions)].load(record);
        }
        for shard in &mut ledger.shards {
            let shard = shard.get_mut();
            for account in shard.accounts() {
                let counted = holds_counted.get(&Key::from(account.id)).copied().unwrap_or(0);
                if counted != account.holds_pending {
                    return Err(RestoreError(format!(
                        "account {} has {} pending holds but the checkpoint has {counted}",
                        account.id, account.holds_pending
                    )));
                }
            }
            // Restoring is not a change a host needs to store again.
            if let Some(changed) = &mut shard.changed {
                changed.clear();
            }
        }
        ledger.transfers[0].digest = transfers_digest;
        ledger.timestamp_last = timestamp_last;
        Ok(ledger)
    }

    /// Makes resident again a record that left memory (see
    /// [`LedgerConfig::transfers_generation_max`]), as read back from storage. Changes neither
    /// the state nor the digest; a record already resident is kept as it is.
    pub fn load_transfer(&mut self, record: Transfer) {
        self.transfers[partition_of(record.new.id, self.config.partitions)].load(record);
    }
}

/// The partitions whose ids one worker resolves (by partition, None for the others' ones), and
/// what it found, by command.
struct IdsOfWorker<'a> {
    records: Vec<Option<&'a mut TransferShard>>,
    stored: Vec<bool>,
    fresh: Vec<bool>,
}

/// Commands whose accounts are read ahead at a time: about 100 KiB of accounts, well inside a
/// core's own (L2) cache, yet enough independent reads to keep many misses in flight.
const WARM_WINDOW: usize = 256;

/// Reads each account of the transfers in `range` by its resolved slot, every read independent
/// of the others, so that execution finds them in cache. Changes nothing.
fn warm_accounts(
    shards: &mut [Mutex<Shard>],
    commands: &[Command],
    slots: &[[u32; 2]],
    range: std::ops::Range<usize>,
) {
    let partitions = shards.len();
    let mut touched = 0u128;
    for (command, pair) in commands[range.clone()].iter().zip(&slots[range]) {
        let Command::CreateTransfer(t) = command else { continue };
        for (id, slot) in [t.debit_account_id, t.credit_account_id].into_iter().zip(pair) {
            if *slot != NONE {
                touched ^= shards[partition_of(id, partitions)].get_mut().warm(*slot);
            }
        }
    }
    std::hint::black_box(touched);
}

/// Every partition, for the serial executor.
struct SerialAccess<'a> {
    shards: &'a mut [Mutex<Shard>],
}

impl ShardAccess for SerialAccess<'_> {
    fn shard(&mut self, partition: usize) -> &mut Shard {
        self.shards[partition].get_mut()
    }
}

/// The locked partitions of one unit, for a parallel worker.
struct LockedAccess<'a> {
    partitions: Vec<usize>,
    guards: Vec<MutexGuard<'a, Shard>>,
}

impl ShardAccess for LockedAccess<'_> {
    fn shard(&mut self, partition: usize) -> &mut Shard {
        let at = self
            .partitions
            .iter()
            .position(|&p| p == partition)
            .unwrap_or_else(|| panic!("unit touched partition {partition} outside its mask"));
        &mut self.guards[at]
    }
}

fn publish(ctx: &BatchCtx<'_>, unit: &Unit, out: &[ResultCode]) {
    debug_assert_eq!(out.len(), (unit.end - unit.start) as usize);
    for (k, code) in out.iter().enumerate() {
        ctx.results[unit.start as usize + k].store(*code as u16, Ordering::Relaxed);
    }
}

/// Where the workers of a unit that spans several of them meet.
#[derive(Debug, Default)]
struct Rendezvous {
    arrivals: AtomicU8,
    done: AtomicBool,
}

/// Spins this long (about a microsecond) for a unit before yielding the core: the worker
/// running it is usually done sooner than a trip through the scheduler would take, while
/// spinning much longer starves that worker when there are more workers than free cores (the
/// property tests, with 3 workers on 2 cores, took three times as long at 2^14).
const RENDEZVOUS_SPINS: u32 = 1 << 10;

impl Rendezvous {
    fn wait(&self) {
        let mut spins = 0u32;
        while !self.done.load(Ordering::Acquire) {
            if spins < RENDEZVOUS_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // More workers than free cores: let the one we wait for run.
                std::thread::yield_now();
            }
        }
    }
}

fn worker_of(partition: usize, threads: usize) -> usize {
    partition % threads
}

fn workers_of(mask: u64, threads: usize) -> u64 {
    let mut workers = 0u64;
    let mut rest = mask;
    while rest != 0 {
        let p = rest.trailing_zeros() as usize;
        workers |= 1 << worker_of(p, threads);
        rest &= rest - 1;
    }
    workers
}

/// Runs the units on `threads` workers. See the module documentation for why the result equals
/// the serial one.
/// `unit_workers[u]` has bit `w` set when unit `u` touches a partition of worker `w`.
fn execute_parallel(
    ctx: &BatchCtx<'_>,
    units: &[Unit],
    unit_workers: &[u64],
    shards: &[Mutex<Shard>],
    threads: usize,
) {
    let mut lists: Vec<Vec<u32>> = vec![Vec::with_capacity(units.len()); threads];
    for (u, workers) in unit_workers.iter().enumerate() {
        let mut rest = *workers;
        while rest != 0 {
            lists[rest.trailing_zeros() as usize].push(u32::try_from(u).expect("units fit u32"));
            rest &= rest - 1;
        }
    }
    // One cache line per unit: a worker waiting on one unit must not be disturbed by the other
    // workers' updates of neighbouring units. Units a single worker runs alone need none.
    let rendezvous: Vec<CachePadded<Rendezvous>> = unit_workers
        .iter()
        .filter(|workers| workers.count_ones() > 1)
        .map(|_| CachePadded::new(Rendezvous::default()))
        .collect();
    let mut next_rendezvous = 0;
    let rendezvous_of: Vec<u32> = unit_workers
        .iter()
        .map(|workers| {
            if workers.count_ones() > 1 {
                next_rendezvous += 1;
                next_rendezvous - 1
            } else {
                NONE
            }
        })
        .collect();

    let work = |worker: usize| {
        let mut out = Vec::new();
        let mut undo = Vec::new();
        let run = |unit: &Unit, out: &mut Vec<ResultCode>, undo: &mut Vec<Undo>| {
            let mut access = LockedAccess { partitions: Vec::new(), guards: Vec::new() };
            let mut rest = unit.mask;
            // Ascending order; the locks are uncontended anyway (see the module docs).
            while rest != 0 {
                let p = rest.trailing_zeros() as usize;
                access.partitions.push(p);
                access.guards.push(shards[p].lock());
                rest &= rest - 1;
            }
            execute_unit(ctx, unit, &mut access, out, undo);
            publish(ctx, unit, out);
        };
        for &u in &lists[worker] {
            let u = u as usize;
            let unit = &units[u];
            let workers = unit_workers[u];
            if workers == 1 << worker {
                run(unit, &mut out, &mut undo);
                continue;
            }
            let meet = &rendezvous[rendezvous_of[u] as usize];
            let arrived = meet.arrivals.fetch_add(1, Ordering::AcqRel) + 1;
            if u32::from(arrived) == workers.count_ones() {
                run(unit, &mut out, &mut undo);
                meet.done.store(true, Ordering::Release);
            } else {
                meet.wait();
            }
        }
    };
    std::thread::scope(|scope| {
        for worker in 1..threads {
            let work = &work;
            scope.spawn(move || work(worker));
        }
        work(0);
    });
}

/// Records the batch's new transfers and the final state of the holds it posted or voided.
fn record(
    commands: &[Command],
    timestamp: Timestamp,
    results: &[ResultCode],
    fresh: &[bool],
    shards: &mut [Mutex<Shard>],
    transfers: &mut [TransferShard],
    threads: usize,
) {
    let partitions = shards.len();
    let record_partition = |p: usize, shard: &mut Shard, records: &mut TransferShard| {
        // Only the command that decided a new id is recorded; resubmissions (of an earlier
        // batch's id or an earlier command's) only replayed an outcome.
        let new_here = |i: usize| match &commands[i] {
            Command::CreateTransfer(t) if fresh[i] && partition_of(t.id, partitions) == p => {
                Some(t)
            }
            _ => None,
        };
        // In batch order: the order in which the partition claimed the ids.
        for (i, &result) in results.iter().enumerate() {
            let Some(t) = new_here(i) else { continue };
            let hold = if result == ResultCode::Ok && t.flags.pending() {
                HoldState::Pending
            } else {
                HoldState::None
            };
            records.record_new(t, timestamp + i as u64, result, hold);
        }
        for (i, command) in commands.iter().enumerate() {
            let Command::CreateTransfer(t) = command else {
                continue;
            };
            if results[i] != ResultCode::Ok || !(t.flags.post_pending() || t.flags.void_pending()) {
                continue;
            }
            let state = if t.flags.post_pending() { HoldState::Posted } else { HoldState::Voided };
            if partition_of(t.pending_id, partitions) == p {
                records.set_hold_state(t.pending_id, state);
            }
            if partition_of(t.debit_account_id, partitions) == p {
                let hold = shard.hold_remove(t.pending_id);
                debug_assert_eq!(hold.state, state);
            }
        }
        records.finish_batch();
    };
    if threads > 1 {
        let mut per_worker: Vec<Vec<(usize, &mut Shard, &mut TransferShard)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (p, (shard, records)) in shards.iter_mut().zip(transfers.iter_mut()).enumerate() {
            per_worker[worker_of(p, threads)].push((p, shard.get_mut(), records));
        }
        let record_all = |work: Vec<(usize, &mut Shard, &mut TransferShard)>| {
            for (p, shard, records) in work {
                record_partition(p, shard, records);
            }
        };
        let mut per_worker = per_worker.into_iter();
        let own = per_worker.next().expect("threads >= 1");
        std::thread::scope(|scope| {
            let record_all = &record_all;
            for work in per_worker {
                scope.spawn(move || record_all(work));
            }
            record_all(own);
        });
    } else {
        for (p, (shard, records)) in shards.iter_mut().zip(transfers.iter_mut()).enumerate() {
            record_partition(p, shard.get_mut(), records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AccountKind, AccountStatus, CURRENCY_KES, NewAccount, NewTransfer, TransactionType,
    };

    fn ledger_with(balances: [(u128, u128); 2]) -> Ledger {
        let mut ledger = Ledger::new(LedgerConfig::default()).unwrap();
        let mut commands = vec![Command::CreateAccount(NewAccount {
            id: 1,
            currency: CURRENCY_KES,
            kind: AccountKind::Settlement as u16,
            ..NewAccount::default()
        })];
        for (id, _) in balances {
            commands.push(Command::CreateAccount(NewAccount {
                id,
                currency: CURRENCY_KES,
                kind: AccountKind::CustomerWallet as u16,
                ..NewAccount::default()
            }));
        }
        for (k, (id, amount)) in balances.into_iter().enumerate() {
            commands.push(Command::CreateTransfer(NewTransfer {
                id: 100 + k as u128,
                debit_account_id: 1,
                credit_account_id: id,
                amount,
                currency: CURRENCY_KES,
                tx_type: TransactionType::CashIn as u16,
                ..NewTransfer::default()
            }));
        }
        let results = ledger.apply(1_000, &commands).unwrap();
        assert!(results.iter().all(|r| *r == ResultCode::Ok), "{results:?}");
        ledger
    }

    #[test]
    fn digest_tells_states_apart() {
        let base = ledger_with([(2, 500), (3, 700)]).digest();
        assert_eq!(ledger_with([(2, 500), (3, 700)]).digest(), base, "same state, same digest");
        // The same money, held by the other account: every total is equal, the state is not.
        assert_ne!(ledger_with([(2, 700), (3, 500)]).digest(), base);
        assert_ne!(ledger_with([(2, 501), (3, 700)]).digest(), base);
        // A status change alone changes the digest.
        let mut frozen = ledger_with([(2, 500), (3, 700)]);
        let status = Command::SetAccountStatus { account_id: 2, status: AccountStatus::Frozen };
        assert_eq!(frozen.apply(2_000, &[status]).unwrap(), [ResultCode::Ok]);
        let mut clock_only = ledger_with([(2, 500), (3, 700)]);
        clock_only.apply(2_000, &[]).unwrap();
        assert_ne!(frozen.digest(), clock_only.digest());
    }
}
