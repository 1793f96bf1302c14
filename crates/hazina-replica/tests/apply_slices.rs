//! A host may apply committed entries in slices (`handle_ready_applying`, `apply_queued`): the
//! entries it leaves wait in order, the applied index lags the commit index meanwhile, and the
//! ledger ends exactly where applying everything at once ends.

use hazina_core::{AccountKind, Command, NewAccount};
use hazina_replica::{MemLog, Output, Replica, ReplicaConfig, StateRole};

/// A group of one that has elected itself.
fn leader() -> Replica<MemLog> {
    let config = ReplicaConfig { snapshot_by_host: true, ..ReplicaConfig::new(1, vec![1], 12) };
    let mut replica = Replica::new(&config, MemLog::new(&[1])).expect("starts");
    let mut out = Output::default();
    for _ in 0..100 {
        replica.tick();
        replica.handle_ready(&mut out).expect("ready");
        if replica.status().role == StateRole::Leader {
            return replica;
        }
    }
    panic!("a group of one leads");
}

fn accounts(first: u128, n: u128) -> Vec<Command> {
    (first..first + n)
        .map(|id| {
            Command::CreateAccount(NewAccount {
                id,
                currency: hazina_core::CURRENCY_KES,
                kind: AccountKind::CustomerWallet as u16,
                ..NewAccount::default()
            })
        })
        .collect()
}

#[test]
fn entries_left_unapplied_wait_in_order_and_end_where_applying_at_once_ends() {
    let (mut sliced, mut whole) = (leader(), leader());
    let mut out = Output::default();
    let mut proposed = Vec::new();
    for (k, first) in [1_u128, 100, 200].into_iter().enumerate() {
        let at = 1_000 + k as u64 * 1_000;
        let index = sliced.propose(at, accounts(first, 1 + k as u128)).expect("leads").index;
        whole.propose(at, accounts(first, 1 + k as u128)).expect("leads");
        sliced.handle_ready_applying(&mut out, 0).expect("ready");
        whole.handle_ready(&mut Output::default()).expect("ready");
        proposed.push(index);
    }
    assert!(out.applied.is_empty(), "nothing applied with a budget of none");
    let status = sliced.status();
    assert_eq!(status.commit_index, *proposed.last().expect("three"), "all three committed");
    assert_eq!(status.applied_index, proposed[0] - 1, "applied lags: {status:?}");
    let (entries, bytes) = sliced.apply_backlog();
    assert_eq!(entries, 3);
    assert!(bytes > 0);
    assert_ne!(sliced.ledger().digest(), whole.ledger().digest(), "not applied yet");

    // A slice of one, then the rest: oldest first, each entry once.
    assert_eq!(sliced.apply_queued(&mut out, 1).expect("applies"), 1);
    assert_eq!(sliced.status().applied_index, proposed[0]);
    assert_eq!(sliced.apply_queued(&mut out, usize::MAX).expect("applies"), 2);
    assert_eq!(sliced.apply_backlog(), (0, 0));
    let indexes: Vec<u64> = out.applied.iter().map(|a| a.index).collect();
    assert_eq!(indexes, proposed, "in log order, each once");
    for index in &proposed {
        let applied = out.applied.iter().find(|a| a.index == *index).expect("applied");
        assert!(applied.acknowledged, "the leader that proposed it applied it in its term");
        assert!(applied.results.iter().all(|r| *r == hazina_core::ResultCode::Ok));
    }
    assert_eq!(sliced.status().applied_index, sliced.status().commit_index);
    assert_eq!(sliced.ledger().digest(), whole.ledger().digest());
    assert_eq!(sliced.ledger().accounts_count(), 6);

    // A snapshot begun now is of the applied index.
    let job = sliced.begin_snapshot().expect("begins");
    assert_eq!(job.index, sliced.status().applied_index);
}
