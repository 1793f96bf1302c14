//! In-memory storage of one partition: its accounts, the holds they carry, and the transfer
//! records whose ids hash to it.
//!
//! Both keep their share of the state digest as a wrapping sum of per-record hashes. A sum is
//! commutative, so the ledger's digest does not depend on how records are spread over
//! partitions, nor on the order in which partitions are updated.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::ResultCode;
use crate::command::{Account, NewTransfer, Transfer, transfer_digest_bytes};
use crate::types::{Amount, HoldState, LimitProfile, LimitProfileId, Timestamp};

/// A map with a fixed hash seed: no randomness in the core, and the same layout on every replica.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Seed of every map in the core. It changes nothing but the layout of memory.
const MAP_SEED: u64 = 0x6861_7a69_6e61_0001;

pub(crate) fn fast_map<K, V>(capacity: usize) -> FastMap<K, V> {
    HashMap::with_capacity_and_hasher(capacity, foldhash::fast::FixedState::with_seed(MAP_SEED))
}

/// A `u128` id stored as two `u64`s: 8-byte alignment keeps a map entry at 24 bytes instead of 32,
/// which matters with ten million accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key([u64; 2]);

impl From<u128> for Key {
    fn from(id: u128) -> Key {
        // Truncation is the point: the two halves of the id.
        #[allow(clippy::cast_possible_truncation)]
        Key([id as u64, (id >> 64) as u64])
    }
}

pub(crate) fn digest_of(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// The partition that owns an id (account or transfer). A fixed function of the id alone, so
/// every replica and every restart agrees on it.
pub(crate) fn partition_of(id: u128, partitions: usize) -> usize {
    if partitions == 1 {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation)]
    let folded = (id as u64) ^ ((id >> 64) as u64);
    let mixed = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mixed = mixed ^ (mixed >> 29);
    // Multiply-shift maps the hash onto 0..partitions without a division.
    #[allow(clippy::cast_possible_truncation)]
    let p = ((u128::from(mixed) * partitions as u128) >> 64) as usize;
    p
}

/// Expiry time of a hold that never expires.
pub(crate) const NEVER: Timestamp = Timestamp::MAX;

/// Money held by a pending transfer, kept with its debit account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hold {
    pub amount: Amount,
    pub credit_account_id: u128,
    pub expires_at: Timestamp,
    pub debit_slot: u32,
    /// The Nairobi day the hold was counted against the daily limit.
    pub day: u32,
    /// `Pending` until a post or void of this batch finalises it; finalised holds leave the map
    /// at the end of the batch, when their transfer record takes the final state.
    pub state: HoldState,
}

/// An account and the digest of its changing fields as they stand, so that a write hashes only
/// the new state. Exactly three cache lines, aligned to them: applying a transfer reads and
/// writes three lines per account. Kept apart, the 176-byte accounts straddled four lines every
/// other slot and the digest took a fifth, all of them misses on a large ledger.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct AccountSlot {
    account: Account,
    digest: u128,
}

const _: () = assert!(std::mem::size_of::<AccountSlot>() == 192);

#[derive(Debug)]
pub(crate) struct Shard {
    accounts: Vec<AccountSlot>,
    index: FastMap<Key, u32>,
    pub holds: FastMap<Key, Hold>,
    /// Pending holds that can expire, ordered by (expiry, id).
    pub expiries: BTreeSet<(Timestamp, u128)>,
    /// Every partition carries a copy of the limit profiles so that applying a transfer reads
    /// only the partitions of its accounts.
    pub profiles: FastMap<LimitProfileId, LimitProfile>,
    /// Wrapping sum of the digests of this partition's accounts.
    pub digest: u128,
    /// Slots written since the host last took the changes, with repeats; `None` when the
    /// ledger does not track changes.
    pub changed: Option<Vec<u32>>,
}

impl Shard {
    pub fn new(accounts_capacity: usize) -> Shard {
        let mut profiles = fast_map(8);
        profiles.insert(0, LimitProfile::UNLIMITED);
        Shard {
            accounts: Vec::with_capacity(accounts_capacity),
            index: fast_map(accounts_capacity),
            holds: fast_map(0),
            expiries: BTreeSet::new(),
            profiles,
            digest: 0,
            changed: None,
        }
    }

    pub fn slot(&self, id: u128) -> Option<u32> {
        self.index.get(&Key::from(id)).copied()
    }

    pub fn find(&self, id: u128) -> Option<(u32, Account)> {
        self.slot(id).map(|slot| (slot, self.accounts[slot as usize].account))
    }

    /// Every account, in slot order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.iter().map(|slot| &slot.account)
    }

    pub fn accounts_len(&self) -> usize {
        self.accounts.len()
    }

    /// Reads every cache line that applying a transfer to the account at `slot` will touch, so
    /// that it is in cache by then. Returns a value only so that the reads are not optimised
    /// away.
    pub fn warm(&self, slot: u32) -> u128 {
        let AccountSlot { account, digest } = &self.accounts[slot as usize];
        // A slot is three cache lines: read a field in each.
        account.id ^ account.credits_posted ^ u128::from(account.user_data_64) ^ digest
    }

    pub fn get(&self, slot: u32) -> &Account {
        &self.accounts[slot as usize].account
    }

    /// Replaces an account, keeping the digest current.
    pub fn put(&mut self, slot: u32, account: Account) {
        let old = &mut self.accounts[slot as usize];
        debug_assert!(old.account.same_static_fields(&account), "only changing fields are written");
        debug_assert_eq!(old.digest, digest_of(&old.account.digest_dynamic_bytes()));
        let new = digest_of(&account.digest_dynamic_bytes());
        self.digest = self.digest.wrapping_sub(old.digest).wrapping_add(new);
        *old = AccountSlot { account, digest: new };
        if let Some(changed) = &mut self.changed {
            changed.push(slot);
        }
    }

    pub fn insert(&mut self, account: Account) -> u32 {
        let slot = u32::try_from(self.accounts.len())
            .expect("accounts_max keeps every partition below 2^32 accounts");
        let previous = self.index.insert(Key::from(account.id), slot);
        assert!(previous.is_none(), "account {} inserted twice", account.id);
        // The static part is counted once, here: no write changes it.
        let dynamic = digest_of(&account.digest_dynamic_bytes());
        self.digest = self
            .digest
            .wrapping_add(digest_of(&account.digest_static_bytes()))
            .wrapping_add(dynamic);
        self.accounts.push(AccountSlot { account, digest: dynamic });
        if let Some(changed) = &mut self.changed {
            changed.push(slot);
        }
        slot
    }

    pub fn hold_insert(&mut self, id: u128, hold: Hold) {
        let previous = self.holds.insert(Key::from(id), hold);
        assert!(previous.is_none(), "hold {id} inserted twice");
        if hold.expires_at != NEVER {
            self.expiries.insert((hold.expires_at, id));
        }
    }

    pub fn hold_remove(&mut self, id: u128) -> Hold {
        let hold = self
            .holds
            .remove(&Key::from(id))
            .unwrap_or_else(|| panic!("hold {id} is not in its debit account's partition"));
        if hold.expires_at != NEVER {
            self.expiries.remove(&(hold.expires_at, id));
        }
        hold
    }

    pub fn hold_mut(&mut self, id: u128) -> Option<&mut Hold> {
        self.holds.get_mut(&Key::from(id))
    }
}

/// Records in a chunk: 640 KB.
const CHUNK: usize = 4096;

/// Transfer records in the order they were written, in chunks of [`CHUNK`]. Full chunks are
/// shared (`Arc`), so that a copy of every record (a replicated site's snapshot,
/// [`RecordsCopy`]) clones pointers instead of records: copying the 1.6 GB of ten million
/// records paused a site for seconds. A full chunk is copied only if a record in it changes (a
/// hold posted or voided) while a copy holds it. The chunk being filled is never shared.
#[derive(Debug, Default)]
struct Records {
    full: Vec<Arc<Vec<Transfer>>>,
    open: Vec<Transfer>,
    /// Emptied chunks kept for reuse, so that a generation refilled after a rotation touches no
    /// fresh pages.
    spare: Vec<Vec<Transfer>>,
}

impl Records {
    fn with_capacity(capacity: usize) -> Records {
        Records { full: Vec::with_capacity(capacity / CHUNK + 1), ..Records::default() }
    }

    fn len(&self) -> usize {
        self.full.len() * CHUNK + self.open.len()
    }

    fn get(&self, at: usize) -> Option<&Transfer> {
        let (chunk, i) = (at / CHUNK, at % CHUNK);
        match self.full.get(chunk) {
            Some(full) => full.get(i),
            None if chunk == self.full.len() => self.open.get(i),
            None => None,
        }
    }

    fn get_mut(&mut self, at: usize) -> Option<&mut Transfer> {
        let (chunk, i) = (at / CHUNK, at % CHUNK);
        let filled = self.full.len();
        match self.full.get_mut(chunk) {
            Some(full) => Arc::make_mut(full).get_mut(i),
            None if chunk == filled => self.open.get_mut(i),
            None => None,
        }
    }

    fn push(&mut self, transfer: Transfer) {
        if self.open.len() == CHUNK {
            let next = self.spare.pop().unwrap_or_default();
            self.full.push(Arc::new(std::mem::replace(&mut self.open, next)));
        }
        if self.open.capacity() == 0 {
            self.open.reserve_exact(CHUNK);
        }
        self.open.push(transfer);
    }

    fn iter(&self) -> impl Iterator<Item = &Transfer> {
        self.full.iter().flat_map(|chunk| chunk.iter()).chain(&self.open)
    }

    fn clear(&mut self) {
        for chunk in self.full.drain(..) {
            // A chunk a copy still holds is left to it.
            if let Ok(mut chunk) = Arc::try_unwrap(chunk) {
                chunk.clear();
                self.spare.push(chunk);
            }
        }
        self.open.clear();
    }

    fn share(&self, into: &mut Vec<Arc<Vec<Transfer>>>) {
        into.extend(self.full.iter().cloned());
        if !self.open.is_empty() {
            into.push(Arc::new(self.open.clone()));
        }
    }
}

/// A copy of transfer records that shares the full chunks with the ledger
/// ([`crate::Ledger::transfers_shared`]): taking it costs a pointer per 4,096 records and a
/// copy of the chunks being filled.
#[derive(Clone, Default)]
pub struct RecordsCopy {
    chunks: Vec<Arc<Vec<Transfer>>>,
}

impl RecordsCopy {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(|c| c.is_empty())
    }

    /// Every record, in storage order.
    pub fn iter(&self) -> impl Iterator<Item = &Transfer> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl std::fmt::Debug for RecordsCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsCopy").field("records", &self.len()).finish()
    }
}

/// One generation of transfer records: the records in the order they were written, and an
/// index from id to position.
///
/// Keeping records apart from the index makes recording one small random write (a 24-byte index
/// entry) plus an append at the end of an array, instead of a 160-byte write at a random place
/// in a map, and leaves no empty record-sized slots in the map.
#[derive(Debug)]
struct Generation {
    index: FastMap<Key, u32>,
    records: Records,
}

impl Generation {
    fn with_capacity(capacity: usize) -> Generation {
        Generation { index: fast_map(capacity), records: Records::with_capacity(capacity) }
    }

    fn position(&self, id: u128) -> Option<usize> {
        self.index.get(&Key::from(id)).map(|&at| at as usize)
    }

    fn insert(&mut self, transfer: Transfer) {
        let at = u32::try_from(self.records.len())
            .expect("a generation holds fewer than 2^32 records; set transfers_generation_max");
        self.index.insert(Key::from(transfer.new.id), at);
        self.records.push(transfer);
    }

    fn clear(&mut self) {
        self.index.clear();
        self.records.clear();
    }
}

/// The transfer records whose ids hash to one partition, in two generations.
///
/// New records go into `current`. When a generation size is set and `current` is full at the end
/// of a batch, the records of `previous` leave memory (all but those of pending holds, which move
/// into the new current generation) and the two swap. Clearing keeps the allocations, so after
/// the first two generations recording never rehashes nor touches fresh pages: the cost of a
/// rotation is one pass over a generation, spread over the generation's inserts.
///
/// A batch indexes its new ids while it resolves them ([`TransferShard::resolve`]): the probe
/// that finds an id absent has just read the memory its index entry goes to. The entry names the
/// position its record will take when the batch records it ([`TransferShard::record_new`]);
/// until then the id reads as absent.
#[derive(Debug)]
pub(crate) struct TransferShard {
    current: Generation,
    previous: Generation,
    /// Records per generation; 0 keeps every record resident.
    generation_max: usize,
    /// Ids of this batch indexed by `resolve` whose records are not yet written.
    claimed: u32,
    /// Wrapping sum of the digests of every transfer ever recorded here (a record leaving memory
    /// does not change the ledger's state, so it does not change the digest).
    pub digest: u128,
    /// Records written since the host last took the changes, in order (a later copy of an id
    /// supersedes an earlier one); `None` when the ledger does not track changes.
    pub changed: Option<Vec<Transfer>>,
}

impl TransferShard {
    /// A partition's records, `generation_max` per generation (0: one generation that keeps
    /// every record), with room for `capacity` in a generation before it grows. The ledger
    /// gives a generation a batch more than its size: it fills up during a batch and rotates
    /// only after it.
    pub fn new(generation_max: usize, capacity: usize) -> TransferShard {
        // Without rotation the previous generation stays empty.
        let previous = if generation_max == 0 { 0 } else { capacity };
        TransferShard {
            current: Generation::with_capacity(capacity),
            previous: Generation::with_capacity(previous),
            generation_max,
            claimed: 0,
            digest: 0,
            changed: None,
        }
    }

    pub fn get(&self, id: u128) -> Option<&Transfer> {
        if let Some(at) = self.current.position(id) {
            // An id claimed by the batch being applied has no record yet.
            return self.current.records.get(at);
        }
        self.previous.position(id).and_then(|at| self.previous.records.get(at))
    }

    fn get_mut(&mut self, id: u128) -> Option<&mut Transfer> {
        if let Some(at) = self.current.position(id) {
            return self.current.records.get_mut(at);
        }
        self.previous.position(id).and_then(|at| self.previous.records.get_mut(at))
    }

    /// Whether an earlier batch recorded `id`, for the first command of a batch with this usable
    /// id (a record that left memory counts: the host loaded every record the batch names). If
    /// not, claims the id: indexes it at the position its record will take, as the ids a
    /// partition claims are recorded in the order they were claimed.
    pub fn resolve(&mut self, id: u128) -> bool {
        use std::collections::hash_map::Entry;
        let Generation { index, records } = &mut self.current;
        match index.entry(Key::from(id)) {
            Entry::Occupied(entry) => {
                debug_assert!((*entry.get() as usize) < records.len(), "{id} claimed twice");
                true
            }
            Entry::Vacant(entry) => {
                if self.previous.position(id).is_some() {
                    return true;
                }
                let at = records.len() + self.claimed as usize;
                entry.insert(u32::try_from(at).expect(
                    "a generation holds fewer than 2^32 records; set transfers_generation_max",
                ));
                self.claimed += 1;
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.current.records.len() + self.previous.records.len()
    }

    pub fn records(&self) -> impl Iterator<Item = &Transfer> {
        self.current.records.iter().chain(self.previous.records.iter())
    }

    /// Adds every resident record to `into`, sharing the full chunks.
    pub fn share(&self, into: &mut RecordsCopy) {
        self.current.records.share(&mut into.chunks);
        self.previous.records.share(&mut into.chunks);
    }

    /// Records the transfer of the next id this partition claimed in [`TransferShard::resolve`].
    /// The record is given as its parts, hashed before it is built (see
    /// [`transfer_digest_bytes`]).
    pub fn record_new(
        &mut self,
        new: &NewTransfer,
        timestamp: Timestamp,
        result: ResultCode,
        hold: HoldState,
    ) {
        debug_assert_eq!(
            self.current.position(new.id),
            Some(self.current.records.len()),
            "{} was not claimed next",
            new.id
        );
        self.claimed = self.claimed.checked_sub(1).expect("every record was claimed");
        let digest = digest_of(&transfer_digest_bytes(new, timestamp, result, hold));
        self.digest = self.digest.wrapping_add(digest);
        let transfer = Transfer { new: *new, timestamp, result, hold };
        self.current.records.push(transfer);
        if let Some(changed) = &mut self.changed {
            changed.push(transfer);
        }
    }

    /// Ends a batch: every claimed id has its record; a full generation rotates.
    pub fn finish_batch(&mut self) {
        assert_eq!(self.claimed, 0, "a claimed id was left without its record");
        if self.generation_max != 0 && self.current.records.len() >= self.generation_max {
            self.rotate();
        }
    }

    /// Makes a record that left memory resident again. The digest already counts it. Never
    /// rotates: the records loaded for a batch must all be resident when it applies, so a
    /// generation may pass its size by what one batch loads.
    pub fn load(&mut self, transfer: Transfer) {
        debug_assert_eq!(self.claimed, 0, "records are loaded between batches");
        if self.get(transfer.new.id).is_none() {
            self.current.insert(transfer);
        }
    }

    fn rotate(&mut self) {
        // Holds can be posted or voided at any time: their records stay resident.
        let pending: Vec<Transfer> = self
            .previous
            .records
            .iter()
            .filter(|t| t.hold == HoldState::Pending)
            .copied()
            .collect();
        self.previous.clear();
        std::mem::swap(&mut self.current, &mut self.previous);
        for transfer in pending {
            self.current.insert(transfer);
        }
    }

    pub fn set_hold_state(&mut self, id: u128, state: HoldState) {
        let record =
            self.get_mut(id).unwrap_or_else(|| panic!("the record of hold {id} must be resident"));
        debug_assert_eq!(record.hold, HoldState::Pending);
        let before = digest_of(&record.digest_bytes());
        record.hold = state;
        let after = digest_of(&record.digest_bytes());
        let copy = *record;
        if let Some(changed) = &mut self.changed {
            changed.push(copy);
        }
        self.digest = self.digest.wrapping_sub(before).wrapping_add(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u128) -> Transfer {
        Transfer {
            new: NewTransfer { id, amount: 100, ..NewTransfer::default() },
            timestamp: 1,
            result: ResultCode::Ok,
            hold: HoldState::Pending,
        }
    }

    #[test]
    fn a_shared_copy_keeps_its_records_while_the_ledger_changes_them() {
        let mut records = Records::with_capacity(0);
        let n = CHUNK * 2 + 10;
        for id in 0..n {
            records.push(record(id as u128));
        }
        assert_eq!(records.len(), n);
        let mut copy = RecordsCopy::default();
        records.share(&mut copy.chunks);
        assert_eq!(copy.len(), n);
        // A record in a full chunk (shared) and one in the open chunk (copied) change.
        records.get_mut(5).expect("resident").hold = HoldState::Posted;
        records.get_mut(n - 1).expect("resident").hold = HoldState::Voided;
        records.push(record(n as u128));
        assert_eq!(records.get(5).map(|t| t.hold), Some(HoldState::Posted));
        assert_eq!(records.get(n - 1).map(|t| t.hold), Some(HoldState::Voided));
        assert_eq!(records.len(), n + 1);
        let copied: Vec<Transfer> = copy.iter().copied().collect();
        assert_eq!(copied.len(), n, "the copy holds what was there when it was taken");
        assert!(copied.iter().all(|t| t.hold == HoldState::Pending), "and as it was");
        assert!(copied.iter().enumerate().all(|(i, t)| t.new.id == i as u128), "in order");
        // The chunk that changed was copied for the ledger; the other full chunk is still shared.
        assert!(!Arc::ptr_eq(&records.full[0], &copy.chunks[0]));
        assert!(Arc::ptr_eq(&records.full[1], &copy.chunks[1]));
        // Clearing keeps for reuse only the chunks no copy holds.
        records.clear();
        assert_eq!(records.len(), 0);
        assert_eq!(records.spare.len(), 1, "chunk 0 was the ledger's own; chunk 1 is the copy's");
        assert_eq!(copy.len(), n);
        assert_eq!(records.get(0), None);
    }
}
