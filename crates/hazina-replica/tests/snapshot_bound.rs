//! The byte bound between snapshots grows with the ledger: after a large snapshot the next
//! comes only after twice its size of log (up to `SNAPSHOT_BYTES_GROWTH_MAX` times the
//! configured bound), after a small one at the configured bound.

use hazina_core::{AccountKind, Command, NewAccount};
use hazina_replica::{MemLog, Output, Replica, ReplicaConfig, SNAPSHOT_BYTES_GROWTH_MAX};

const EVERY: u64 = 1_000;

/// A group of one that has elected itself and applied one entry.
fn leading_replica() -> Replica<MemLog> {
    replica_of(ReplicaConfig {
        snapshot_every_bytes: EVERY,
        snapshot_by_host: true,
        ..ReplicaConfig::new(1, vec![1], 12)
    })
}

fn replica_of(config: ReplicaConfig) -> Replica<MemLog> {
    let mut replica = Replica::new(&config, MemLog::new(&[1])).expect("starts");
    let mut out = Output::default();
    for _ in 0..100 {
        replica.tick();
        replica.handle_ready(&mut out).expect("ready");
        if replica.status().role == hazina_replica::StateRole::Leader {
            break;
        }
    }
    assert_eq!(replica.status().role, hazina_replica::StateRole::Leader, "a group of one leads");
    let account = Command::CreateAccount(NewAccount {
        id: 1,
        currency: hazina_core::CURRENCY_KES,
        kind: AccountKind::CustomerWallet as u16,
        ..NewAccount::default()
    });
    replica.propose(1_000, vec![account]).expect("leads");
    replica.handle_ready(&mut out).expect("ready");
    assert!(out.applied.iter().any(|a| a.summary.commands == 1), "the entry was applied");
    replica
}

/// Proposes and applies one more entry, creating account `id`.
fn more(replica: &mut Replica<MemLog>, out: &mut Output, id: u64) {
    let account = Command::CreateAccount(NewAccount {
        id: u128::from(id),
        currency: hazina_core::CURRENCY_KES,
        kind: AccountKind::CustomerWallet as u16,
        ..NewAccount::default()
    });
    replica.propose(2_000 + id, vec![account]).expect("leads");
    replica.handle_ready(out).expect("ready");
}

/// Takes a snapshot whose encoding is `bytes` long.
fn snapshot_of(replica: &mut Replica<MemLog>, bytes: usize) {
    let job = replica.begin_snapshot().expect("begins");
    assert!(job.index > 0);
    replica.finish_snapshot(job, vec![0; bytes]).expect("kept");
}

#[test]
fn the_bytes_between_snapshots_grow_with_the_last_snapshot_up_to_a_cap() {
    let mut replica = leading_replica();
    assert_eq!(replica.snapshot_bytes_bound(), EVERY, "no snapshot yet: the configured bound");
    snapshot_of(&mut replica, 300);
    assert_eq!(replica.snapshot_bytes_bound(), EVERY, "a small snapshot: the configured bound");
    // Later snapshots need later entries.
    let mut out = Output::default();
    more(&mut replica, &mut out, 2);
    snapshot_of(&mut replica, 1_500);
    assert_eq!(replica.snapshot_bytes_bound(), 3_000, "twice the last snapshot");
    more(&mut replica, &mut out, 3);
    snapshot_of(&mut replica, 100_000);
    assert_eq!(
        replica.snapshot_bytes_bound(),
        EVERY * SNAPSHOT_BYTES_GROWTH_MAX,
        "a huge snapshot: the cap, which bounds the log in memory"
    );
}

#[test]
fn a_snapshot_is_overdue_after_twice_the_interval() {
    // Every 3 entries; the group's first entry (the leader's empty one) and one account made 2.
    let mut replica = replica_of(ReplicaConfig {
        snapshot_every: 3,
        snapshot_by_host: true,
        ..ReplicaConfig::new(1, vec![1], 12)
    });
    let mut out = Output::default();
    assert!(!replica.snapshot_due());
    more(&mut replica, &mut out, 2);
    assert!(replica.snapshot_due(), "3 entries applied");
    assert!(!replica.snapshot_overdue(), "a primary may put it off");
    for id in 3..6 {
        more(&mut replica, &mut out, id);
    }
    assert!(replica.snapshot_overdue(), "6 entries applied: no longer put off");
    snapshot_of(&mut replica, 10);
    assert!(!replica.snapshot_due() && !replica.snapshot_overdue(), "taken");
}
