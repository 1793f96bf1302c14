//! Which transfer ids the store may hold: Bloom filters of every id stored or named by a batch
//! this process applied, so that most of a batch's new ids skip the search in the ledger's
//! memory, the staged layers and RocksDB's files ([`crate::Store::load_named_records`]).
//! docs/adr/0011-known-transfer-ids.md.
//!
//! A filter answers "certainly not held" or "maybe": a maybe takes the full search, so a false
//! positive costs only the search the filter saves. Ids go into segments of growing size
//! (4M ids, then 8M, 16M, ...), so a check probes a few cache lines however many ids there
//! are. The ids stored before this process opened the database are read by a thread of their
//! own ([`scan`], from [`crate::Store::start_reading_known_ids`]): until its segments join,
//! every id is a maybe, as it was without filters.

use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{DB, ReadOptions};
use sbbf_rs_safe::Filter;

use crate::StoreError;

/// Ids the first segment takes; each next one takes twice the one before.
const FIRST_SEGMENT_IDS: usize = 4 << 20;
/// Filter bits an id: about 1% false positives (Parquet's split-block filter).
const BITS_PER_ID: usize = 10;
/// Memory the filters of the named ids may take, and as much again those of the stored ids
/// ([`crate::StoreOptions::known_ids_bytes_max`]). Segments double, so a side holds at most
/// 315 MB, about 250M ids. Past that, the store drops the filters and searches for every id
/// again: bounded memory before speed.
pub(crate) const KNOWN_IDS_BYTES_MAX: usize = 512 << 20;
/// Keys the scan reads between two looks at whether the store is closing.
const SCAN_STOP_EVERY: usize = 1 << 16;

fn hash(id: u128) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes())
}

/// One filter and how many of its ids it holds.
pub(crate) struct Segment {
    filter: Filter,
    capacity: usize,
    ids: usize,
}

impl Segment {
    fn new(capacity: usize) -> Segment {
        Segment { filter: Filter::new(BITS_PER_ID, capacity), capacity, ids: 0 }
    }

    fn bytes(&self) -> usize {
        self.filter.as_bytes().len()
    }
}

/// Segments filled in order, the last one until it holds its capacity.
#[derive(Default)]
pub(crate) struct Segments(Vec<Segment>);

impl Segments {
    /// Adds the id of `hash`; false if that would take the segments past `bytes_max` (then it
    /// is not added).
    fn insert(&mut self, hash: u64, bytes_max: usize) -> bool {
        let full = self.0.last().is_none_or(|last| last.ids >= last.capacity);
        if full {
            let capacity = self.0.last().map_or(FIRST_SEGMENT_IDS, |last| last.capacity * 2);
            let segment = Segment::new(capacity);
            if self.bytes() + segment.bytes() > bytes_max {
                return false;
            }
            self.0.push(segment);
        }
        let last = self.0.last_mut().expect("a segment with room");
        last.filter.insert_hash(hash);
        last.ids += 1;
        true
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.0.iter().any(|segment| segment.filter.contains_hash(hash))
    }

    fn bytes(&self) -> usize {
        self.0.iter().map(Segment::bytes).sum()
    }

    fn ids(&self) -> usize {
        self.0.iter().map(|segment| segment.ids).sum()
    }
}

/// Where the filters stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownIdsState {
    /// The ids stored before the start are not in the filters yet: every id is searched for.
    Reading,
    /// Every stored or named id is in the filters: the others are not searched for.
    Complete,
    /// The filters outgrew their bound, or the scan failed, and were dropped: every id is
    /// searched for, until the next start.
    Dropped,
}

impl KnownIdsState {
    pub fn as_str(self) -> &'static str {
        match self {
            KnownIdsState::Reading => "reading",
            KnownIdsState::Complete => "complete",
            KnownIdsState::Dropped => "dropped",
        }
    }
}

/// What [`scan`] read.
pub(crate) enum Scanned {
    /// Every stored id, in segments.
    Ids(Segments),
    /// More stored ids than the bound allows.
    TooMany,
    /// The store is closing.
    Stopped,
}

/// The filters of the ids this process named, and, once the scan joined them, of the ids
/// stored before it opened the database.
pub(crate) struct KnownIds {
    named: Segments,
    stored: Segments,
    state: KnownIdsState,
    bytes_max: usize,
}

impl KnownIds {
    /// Filters whose named ids take at most `bytes_max`.
    pub fn new(bytes_max: usize) -> KnownIds {
        KnownIds {
            named: Segments::default(),
            stored: Segments::default(),
            state: KnownIdsState::Reading,
            bytes_max,
        }
    }

    /// False only for an id certainly never stored or named: no record of it exists.
    pub fn may_hold(&self, id: u128) -> bool {
        self.may_hold_hash(hash(id))
    }

    fn may_hold_hash(&self, hash: u64) -> bool {
        self.state != KnownIdsState::Complete
            || self.named.may_hold(hash)
            || self.stored.may_hold(hash)
    }

    /// Notes the id of a transfer a batch creates, before the batch is applied (it may record
    /// it), and returns whether the id may have been held before: [`KnownIds::may_hold`] and an
    /// insert, the id hashed once.
    pub fn note(&mut self, id: u128) -> bool {
        let hash = hash(id);
        let may_hold = self.may_hold_hash(hash);
        if self.state != KnownIdsState::Dropped && !self.named.insert(hash, self.bytes_max) {
            self.drop_filters();
        }
        may_hold
    }

    /// Joins what the scan of the stored ids read: with every one of them, the filters are
    /// complete; with too many for the bound, they are dropped.
    pub fn join(&mut self, scanned: Scanned) {
        match (self.state, scanned) {
            (KnownIdsState::Reading, Scanned::Ids(stored)) => {
                self.stored = stored;
                self.state = KnownIdsState::Complete;
            }
            (_, Scanned::TooMany) => self.drop_filters(),
            _ => {}
        }
    }

    pub fn state(&self) -> KnownIdsState {
        self.state
    }

    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// The ids in the filters and the bytes they take, for the node's log and metrics.
    pub fn size(&self) -> (usize, usize) {
        (self.named.ids() + self.stored.ids(), self.named.bytes() + self.stored.bytes())
    }

    /// Every id is searched for from now on, and the filters' memory goes.
    pub fn drop_filters(&mut self) {
        self.named = Segments::default();
        self.stored = Segments::default();
        self.state = KnownIdsState::Dropped;
    }
}

/// Reads the id of every record in `family` into segments of at most `bytes_max`.
pub(crate) fn scan(
    db: &DB,
    family: &str,
    stop: &AtomicBool,
    bytes_max: usize,
) -> Result<Scanned, StoreError> {
    let cf = db.cf_handle(family).expect("every family is created at open");
    let mut options = ReadOptions::default();
    // A scan of every record once: it would only push the records lookups need out of the cache.
    options.fill_cache(false);
    options.set_readahead_size(4 << 20);
    let mut iter = db.raw_iterator_cf_opt(cf, options);
    iter.seek_to_first();
    let mut segments = Segments::default();
    let mut read = 0usize;
    while let Some(key) = iter.key() {
        let id = u128::from_be_bytes(crate::key_array(key, "transfer key")?);
        if !segments.insert(hash(id), bytes_max) {
            return Ok(Scanned::TooMany);
        }
        read += 1;
        if read.is_multiple_of(SCAN_STOP_EVERY) && stop.load(Ordering::Relaxed) {
            return Ok(Scanned::Stopped);
        }
        iter.next();
    }
    iter.status()?;
    Ok(Scanned::Ids(segments))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No id that went in is ever "certainly not held", across segments; most others are.
    #[test]
    fn an_inserted_id_is_always_a_maybe_and_most_others_are_not() {
        let mut segments = Segments::default();
        let ids = FIRST_SEGMENT_IDS + FIRST_SEGMENT_IDS / 2;
        for i in 0..ids {
            assert!(segments.insert(hash(u128::from(i as u64) * 7_919), usize::MAX));
        }
        assert_eq!(segments.0.len(), 2, "a second segment, twice the first");
        assert_eq!(segments.0[1].capacity, 2 * FIRST_SEGMENT_IDS);
        assert_eq!(segments.ids(), ids);
        for i in (0..ids).step_by(97) {
            assert!(segments.may_hold(hash(u128::from(i as u64) * 7_919)), "id {i} went in");
        }
        let others = 100_000u64;
        let false_positives =
            (0..others).filter(|&i| segments.may_hold(hash((u128::from(i) << 64) | 1))).count();
        // About 1% a segment at capacity; two segments, the second half full.
        assert!(false_positives < 3_000, "{false_positives} false positives in {others}");
    }

    /// Before the scan joins, every id is a maybe; after, only the named and the stored ones.
    #[test]
    fn until_the_stored_ids_join_every_id_may_be_held() {
        let mut known = KnownIds::new(KNOWN_IDS_BYTES_MAX);
        assert!(known.note(11), "reading: a maybe, even for an id never seen");
        assert!(known.may_hold(12), "reading: a maybe");
        known.join(Scanned::Stopped);
        assert_eq!(known.state(), KnownIdsState::Reading);
        let mut stored = Segments::default();
        assert!(stored.insert(hash(21), usize::MAX));
        known.join(Scanned::Ids(stored));
        assert_eq!(known.state(), KnownIdsState::Complete);
        assert!(known.may_hold(11) && known.may_hold(21));
        assert!(known.note(11), "noted before: a maybe");
        let unknown = (1_000..1_100).filter(|&id| !known.note(id)).count();
        assert!(unknown > 90, "{unknown} of 100 unknown ids certainly not held");
        assert!((1_000..1_100).all(|id| known.may_hold(id)), "each noted, so each a maybe now");
    }

    /// Too many named ids, or too many stored ones for the scan, and the filters go: every id
    /// is a maybe again, for good.
    #[test]
    fn past_the_memory_bound_every_id_is_a_maybe() {
        let one_segment = Segment::new(FIRST_SEGMENT_IDS).bytes();
        assert!(
            !Segments::default().insert(hash(1), one_segment - 1),
            "no room for a first segment"
        );

        let mut known = KnownIds::new(one_segment);
        known.join(Scanned::Ids(Segments::default()));
        for id in 0..FIRST_SEGMENT_IDS as u128 {
            known.note(id);
        }
        assert_eq!(known.state(), KnownIdsState::Complete, "one segment fits");
        known.note(u128::MAX);
        assert_eq!(known.state(), KnownIdsState::Dropped, "a second does not");
        assert!(known.may_hold(u128::MAX - 1));
        assert_eq!(known.size(), (0, 0));
        known.join(Scanned::Ids(Segments::default()));
        assert_eq!(known.state(), KnownIdsState::Dropped, "dropped for good");

        let mut known = KnownIds::new(KNOWN_IDS_BYTES_MAX);
        known.note(7);
        known.join(Scanned::TooMany);
        assert_eq!(known.state(), KnownIdsState::Dropped);
        assert!(known.may_hold(8), "a scan with too many ids leaves every id a maybe");
    }
}
