//! What entries changed since a checkpoint began, held in memory until the next checkpoint
//! writes it to RocksDB as sorted files (docs/adr/0009-state-written-at-checkpoints.md).
//!
//! Staging an entry is a hash-map insert per changed account and record and an append per
//! statement line; the memtable inserts it replaces were most of the node's storage work
//! (docs/BENCHMARKS.md, session 13). Reads look here before RocksDB.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use hazina_core::{Account, LimitProfile, LimitProfileId, Timestamp, Transfer};

use crate::Applied;

type Map<V> = HashMap<u128, V, foldhash::fast::FixedState>;

/// No line before this one of the same account.
const NONE: u32 = u32::MAX;

/// One statement line: its key in the `history` family, where its value is in
/// [`Pending::line_bytes`], and the account's line staged before it.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    pub key: [u8; 25],
    pub value: std::ops::Range<usize>,
    previous: u32,
}

impl Line {
    pub fn account(&self) -> u128 {
        u128::from_be_bytes(self.key[..16].try_into().expect("16 bytes"))
    }

    pub fn timestamp(&self) -> Timestamp {
        u64::from_be_bytes(self.key[16..24].try_into().expect("8 bytes"))
    }
}

/// The changes of consecutive entries, the last one being `applied`. A later copy of an account
/// or a record replaces the earlier one, as it would in RocksDB.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub applied: Option<Applied>,
    pub accounts: Vec<Account>,
    account_at: Map<u32>,
    pub transfers: Vec<Transfer>,
    transfer_at: Map<u32>,
    pub lines: Vec<Line>,
    pub line_bytes: Vec<u8>,
    /// Each account's last staged line: its lines form a chain backwards in time.
    last_line: Map<u32>,
    /// Every profile as it stands, if an entry changed one.
    pub profiles: Option<BTreeMap<LimitProfileId, LimitProfile>>,
}

/// Statement lines a command stages at most: a transfer's debit and credit.
const LINES_PER_COMMAND: usize = 2;
/// Bytes of a statement line's value, about.
const LINE_BYTES: usize = 32;

impl Pending {
    /// An empty layer whose lists have room for the changes of `commands` commands, each a
    /// transfer between two accounts. Only address space: the lists fill their pages in order,
    /// as entries come. The hash maps grow as they fill instead: a map made large at once
    /// scatters its first inserts over all of its pages, which then stay resident however
    /// little is staged. A layer reused after a checkpoint keeps what both grew to. With
    /// `lines_only`, room for the statement lines alone.
    pub fn with_capacity(commands: usize, lines_only: bool) -> Pending {
        let lines = commands * LINES_PER_COMMAND;
        let items = if lines_only { 0 } else { commands };
        Pending {
            accounts: Vec::with_capacity(items),
            transfers: Vec::with_capacity(items),
            lines: Vec::with_capacity(lines),
            line_bytes: Vec::with_capacity(lines * LINE_BYTES),
            ..Pending::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.applied.is_none()
    }

    /// Empties it, keeping its allocations.
    pub fn clear(&mut self) {
        self.applied = None;
        self.accounts.clear();
        self.account_at.clear();
        self.transfers.clear();
        self.transfer_at.clear();
        self.lines.clear();
        self.line_bytes.clear();
        self.last_line.clear();
        self.profiles = None;
    }

    pub fn stage_account(&mut self, account: &Account) {
        put(&mut self.accounts, &mut self.account_at, account.id, *account);
    }

    pub fn stage_transfer(&mut self, record: &Transfer) {
        put(&mut self.transfers, &mut self.transfer_at, record.new.id, *record);
    }

    /// Adds a statement line. Lines of one account are staged in time order.
    pub fn stage_line(&mut self, key: [u8; 25], value: &[u8]) {
        let account = u128::from_be_bytes(key[..16].try_into().expect("16 bytes"));
        let at =
            u32::try_from(self.lines.len()).expect("a checkpoint comes long before 2^32 lines");
        let previous = self.last_line.insert(account, at).unwrap_or(NONE);
        let start = self.line_bytes.len();
        self.line_bytes.extend_from_slice(value);
        self.lines.push(Line { key, value: start..self.line_bytes.len(), previous });
    }

    pub fn transfer(&self, id: u128) -> Option<&Transfer> {
        self.transfer_at.get(&id).map(|&at| &self.transfers[at as usize])
    }

    /// `account`'s staged lines, newest first.
    pub fn lines_of(&self, account: u128) -> impl Iterator<Item = &Line> {
        let mut at = self.last_line.get(&account).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            let line = self.lines.get(at as usize)?;
            at = line.previous;
            Some(line)
        })
    }

    pub fn line_value(&self, line: &Line) -> &[u8] {
        &self.line_bytes[line.value.clone()]
    }
}

/// Stages `item` under `id`, replacing an earlier copy: one probe of the map either way.
fn put<T>(items: &mut Vec<T>, at: &mut Map<u32>, id: u128, item: T) {
    match at.entry(id) {
        Entry::Occupied(earlier) => items[*earlier.get() as usize] = item,
        Entry::Vacant(slot) => {
            let i = u32::try_from(items.len()).expect("a checkpoint comes long before 2^32 items");
            slot.insert(i);
            items.push(item);
        }
    }
}

/// The positions of `items` in the order of `key`. The keys are copied beside the positions and
/// sorted there, so the sort reads memory in order instead of following a pointer to each item
/// at every comparison.
pub(crate) fn order_by<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<u32> {
    sorted_keys(items, key).into_iter().map(|(_, at)| at).collect()
}

/// `key` of every item beside its position, sorted by key.
pub(crate) fn sorted_keys<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<(K, u32)> {
    let mut keyed: Vec<(K, u32)> =
        items.iter().zip(0..).map(|(item, at)| (key(item), at)).collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    keyed
}

/// Items [`gathered`] copies at once: a chunk of records stays in the core's own cache.
pub(crate) const GATHER_CHUNK: usize = 512;

/// Hands `each` copies of the items at `order`'s positions, in that order, [`GATHER_CHUNK`] at
/// a time. Sorted positions read the items at random, a cache miss each: here a chunk's reads
/// follow one another in a short loop and do not depend on each other, so their misses
/// overlap, where a file writer's work between two reads would wait out every miss alone.
pub(crate) fn gathered<T: Clone, E>(
    items: &[T],
    order: &[u32],
    mut each: impl FnMut(&[T]) -> Result<(), E>,
) -> Result<(), E> {
    let mut chunk = Vec::with_capacity(GATHER_CHUNK.min(order.len()));
    for positions in order.chunks(GATHER_CHUNK) {
        chunk.clear();
        chunk.extend(positions.iter().map(|&at| items[at as usize].clone()));
        each(&chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position comes out once, in order, past the ends of chunks too.
    #[test]
    fn gathered_hands_out_the_items_in_order_across_chunks() {
        let items: Vec<u64> = (0..1_300).map(|i| i * 7).collect();
        let order = order_by(&items, |&item| std::cmp::Reverse(item % 1_009));
        let mut seen = Vec::new();
        let mut chunks = 0;
        gathered(&items, &order, |chunk| {
            assert!(!chunk.is_empty() && chunk.len() <= GATHER_CHUNK);
            chunks += 1;
            seen.extend_from_slice(chunk);
            Ok::<(), ()>(())
        })
        .expect("no error");
        assert_eq!(chunks, items.len().div_ceil(GATHER_CHUNK));
        let expected: Vec<u64> = order.iter().map(|&at| items[at as usize]).collect();
        assert_eq!(seen, expected);
        assert!(seen.windows(2).all(|w| w[0] % 1_009 >= w[1] % 1_009), "sorted by the key");
    }

    /// An error from `each` stops the walk and comes back.
    #[test]
    fn gathered_stops_at_the_first_error() {
        let items: Vec<u32> = (0..2_000).collect();
        let order: Vec<u32> = (0..2_000).collect();
        let mut calls = 0;
        let result = gathered(&items, &order, |_| {
            calls += 1;
            if calls == 2 { Err("full") } else { Ok(()) }
        });
        assert_eq!(result, Err("full"));
        assert_eq!(calls, 2);
    }
}
