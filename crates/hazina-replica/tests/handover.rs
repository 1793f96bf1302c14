//! What a host needs to hand the primary back to the preferred site (ADR 0014): whether a
//! leader got there by a handover or by an election of its own
//! (`Replica::leads_by_handover`), and whether a follower is in touch and up to date
//! (`Replica::is_up_to_date`).

use hazina_core::{AccountKind, Command, NewAccount};
use hazina_replica::{MemLog, Message, Output, Replica, ReplicaConfig, StateRole};

const SITES: [u64; 3] = [1, 2, 3];
/// Site 1's election timeout, in ticks (raft's lease is 10).
const TIMEOUT: usize = 12;

fn group() -> Vec<Replica<MemLog>> {
    SITES
        .iter()
        .map(|&id| {
            // Site 1 times out first and wins the first election; then site 2.
            let timeout = match id {
                1 => TIMEOUT,
                2 => 40,
                _ => 60,
            };
            let config = ReplicaConfig::new(id, SITES.to_vec(), timeout);
            Replica::new(&config, MemLog::new(&SITES)).expect("starts")
        })
        .collect()
}

fn at(id: u64) -> usize {
    SITES.iter().position(|&s| s == id).expect("a site of the group")
}

/// Delivers every message but those to or from `cut`, and what answering them produces,
/// until none is left.
fn deliver(replicas: &mut [Replica<MemLog>], mut messages: Vec<Message>, cut: Option<u64>) {
    loop {
        messages.retain(|m| cut.is_none_or(|c| m.to != c && m.from != c));
        if messages.is_empty() {
            return;
        }
        for message in std::mem::take(&mut messages) {
            replicas[at(message.to)].step(message).expect("a message of this group");
        }
        for replica in replicas.iter_mut() {
            let mut out = Output::default();
            replica.handle_ready(&mut out).expect("ready");
            messages.extend(out.messages);
        }
    }
}

/// One tick of `site`, and everything it leads to.
fn tick(replicas: &mut [Replica<MemLog>], site: u64, cut: Option<u64>) {
    replicas[at(site)].tick();
    let mut out = Output::default();
    replicas[at(site)].handle_ready(&mut out).expect("ready");
    deliver(replicas, out.messages, cut);
}

fn leader(replicas: &[Replica<MemLog>]) -> Option<u64> {
    replicas.iter().find(|r| r.status().role == StateRole::Leader).map(|r| r.status().id)
}

fn propose(replicas: &mut [Replica<MemLog>], site: u64, id: u128, cut: Option<u64>) {
    let account = Command::CreateAccount(NewAccount {
        id,
        currency: hazina_core::CURRENCY_KES,
        kind: AccountKind::CustomerWallet as u16,
        ..NewAccount::default()
    });
    let now = 1_000 + u64::try_from(id).expect("a small id");
    replicas[at(site)].propose(now, vec![account]).expect("leads");
    let mut out = Output::default();
    replicas[at(site)].handle_ready(&mut out).expect("ready");
    deliver(replicas, out.messages, cut);
}

#[test]
fn a_leader_knows_how_it_got_there_and_which_followers_are_up_to_date() {
    let mut replicas = group();
    for _ in 0..10 * TIMEOUT {
        tick(&mut replicas, 1, None);
    }
    assert_eq!(leader(&replicas), Some(1));
    assert!(!replicas[at(1)].leads_by_handover(), "site 1 was elected");
    propose(&mut replicas, 1, 1, None);
    assert!(replicas[at(1)].is_up_to_date(2, 0) && replicas[at(1)].is_up_to_date(3, 0));
    assert!(!replicas[at(2)].is_up_to_date(1, 0), "only the leader knows");
    // In touch means heard from within the lease (10 ticks), whatever raft's own flags say
    // between its checks of the quorum, one of which falls in these ticks.
    for _ in 0..10 {
        replicas[at(1)].tick();
        assert!(replicas[at(1)].is_up_to_date(2, 0), "a follower heard from within the lease");
    }
    let mut out = Output::default();
    replicas[at(1)].handle_ready(&mut out).expect("ready");
    deliver(&mut replicas, out.messages, None);

    // Site 3 is cut off: five entries behind, then silent for longer than the lease.
    for id in 2..7 {
        propose(&mut replicas, 1, id, Some(3));
    }
    assert!(!replicas[at(1)].is_up_to_date(3, 4), "five entries behind");
    assert!(replicas[at(1)].is_up_to_date(3, 5), "in touch until the lease ends");
    for _ in 0..2 * TIMEOUT {
        tick(&mut replicas, 1, Some(3));
    }
    assert!(!replicas[at(1)].is_up_to_date(3, 1_000), "not heard from within the lease");
    assert!(replicas[at(1)].is_up_to_date(2, 0));
    // Healed, it catches up and is in touch again.
    for _ in 0..2 * TIMEOUT {
        tick(&mut replicas, 1, None);
    }
    assert!(replicas[at(1)].is_up_to_date(3, 0));

    // A handover to site 2: it leads by handover, and the next handover, to site 1, makes
    // site 1 the one that does.
    replicas[at(1)].transfer_leader(2);
    tick(&mut replicas, 1, None);
    assert_eq!(leader(&replicas), Some(2));
    assert!(replicas[at(2)].leads_by_handover());
    assert!(!replicas[at(1)].leads_by_handover(), "no longer leads");
    replicas[at(2)].transfer_leader(1);
    tick(&mut replicas, 2, None);
    assert_eq!(leader(&replicas), Some(1));
    assert!(replicas[at(1)].leads_by_handover());
    assert!(!replicas[at(2)].leads_by_handover());

    // Site 1 goes silent: site 2 wins an election of its own, which is not a handover, though
    // it led by one before.
    for _ in 0..200 {
        tick(&mut replicas, 2, Some(1));
        tick(&mut replicas, 3, Some(1));
        if replicas[at(2)].status().role == StateRole::Leader {
            break;
        }
    }
    assert_eq!(replicas[at(2)].status().role, StateRole::Leader, "site 2 elected");
    assert!(!replicas[at(2)].leads_by_handover(), "elected, not handed over");
}
