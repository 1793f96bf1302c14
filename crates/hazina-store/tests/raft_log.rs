//! The raft log on RocksDB keeps what it was told across a reopen, as the in-memory log the
//! simulation uses does: entries, a replaced tail, the term and vote, compaction behind a kept
//! snapshot, and a snapshot installed from the leader. A log written for one set of sites is
//! refused for another.

use hazina_replica::LogStore;
use hazina_replica::raft::Storage;
use hazina_replica::raft::eraftpb::{Entry, HardState, Snapshot};
use hazina_store::{RaftLog, RaftLogOptions};

const VOTERS: [u64; 3] = [1, 2, 3];

fn open(path: &std::path::Path) -> RaftLog {
    RaftLog::open(
        path,
        &RaftLogOptions { write_buffer_bytes: 1 << 20, ..RaftLogOptions::default() },
        &VOTERS,
    )
    .expect("open raft log")
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes().into(),
        ..Entry::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit, ..HardState::default() }
}

fn all(log: &RaftLog) -> Vec<Entry> {
    let first = log.first_index().expect("first");
    let last = log.last_index().expect("last");
    log.entries(first, last + 1, None, hazina_replica::raft::GetEntriesContext::empty(false))
        .expect("entries")
}

#[test]
fn entries_tail_and_hard_state_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temporary folder");
    {
        let mut log = open(dir.path());
        let state = log.initial_state().expect("state");
        assert_eq!(state.conf_state.voters, VOTERS);
        assert_eq!(log.last_index().expect("last"), 0);
        let first: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        log.write(&first, Some(&hard_state(1, 1, 0))).expect("write");
        log.set_commit(6).expect("commit");
        // A new leader of term 2 replaces entries 8 to 10 with its own 8 and 9.
        log.write(&[entry(8, 2), entry(9, 2)], Some(&hard_state(2, 3, 6))).expect("replace tail");
        log.set_commit(8).expect("commit");
    }
    let log = open(dir.path());
    let entries = all(&log);
    let expected: Vec<Entry> =
        (1..=7).map(|i| entry(i, 1)).chain([entry(8, 2), entry(9, 2)]).collect();
    assert_eq!(entries, expected);
    let state = log.initial_state().expect("state");
    assert_eq!((state.hard_state.term, state.hard_state.vote), (2, 3));
    assert_eq!(state.hard_state.commit, 8);
    assert_eq!(log.term(9).expect("term"), 2);
}

#[test]
fn compaction_and_installed_snapshots_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let snapshot_at = |index: u64, term: u64| {
        let mut s = Snapshot {
            data: format!("ledger at {index}").into_bytes().into(),
            ..Snapshot::default()
        };
        let meta = s.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.mut_conf_state().voters = VOTERS.to_vec();
        s
    };
    {
        let mut log = open(dir.path());
        let entries: Vec<Entry> = (1..=20).map(|i| entry(i, 1)).collect();
        log.write(&entries, Some(&hard_state(1, 1, 20))).expect("write");
        // Keep a snapshot at 15 and the five entries before it.
        log.compact(snapshot_at(15, 1), 11).expect("compact");
        assert_eq!(log.first_index().expect("first"), 11);
    }
    {
        let mut log = open(dir.path());
        assert_eq!(log.first_index().expect("first"), 11);
        assert_eq!(all(&log), (11..=20).map(|i| entry(i, 1)).collect::<Vec<_>>());
        assert_eq!(log.term(10).expect("the term before the first entry"), 1);
        assert!(log.term(9).is_err(), "entry 9 was compacted");
        let kept = log.kept_snapshot().expect("kept snapshot");
        assert_eq!(kept.get_metadata().index, 15);
        // The leader sends a snapshot far ahead: it replaces the whole log.
        log.install_snapshot(&snapshot_at(40, 3)).expect("install");
        log.write(&[entry(41, 3)], Some(&hard_state(3, 2, 41))).expect("write after");
    }
    let log = open(dir.path());
    assert_eq!(log.first_index().expect("first"), 41);
    assert_eq!(all(&log), vec![entry(41, 3)]);
    assert_eq!(log.term(40).expect("the snapshot's term"), 3);
    assert_eq!(log.kept_snapshot().expect("kept").get_metadata().index, 40);
    assert_eq!(log.initial_state().expect("state").hard_state.commit, 41);
}

#[test]
fn a_log_of_another_group_is_refused() {
    let dir = tempfile::tempdir().expect("temporary folder");
    drop(open(dir.path()));
    let error = RaftLog::open(dir.path(), &RaftLogOptions::default(), &[1, 2, 4])
        .expect_err("other voters");
    assert!(error.to_string().contains("[1, 2, 3]"), "{error}");
}

/// The log's database holds at most `RAFT_LOG_FILES_OPEN_MAX` table files open (its options
/// file says what RocksDB runs it with): a log that grew while a standby was away cannot take
/// the descriptors the state and the connections need.
#[test]
fn the_log_bounds_its_open_table_files() {
    let dir = tempfile::tempdir().expect("temporary folder");
    drop(open(dir.path()));
    let bound = hazina_testkit::rocksdb_option(dir.path(), "max_open_files");
    assert_eq!(bound, Some(hazina_store::RAFT_LOG_FILES_OPEN_MAX.to_string()));
}
