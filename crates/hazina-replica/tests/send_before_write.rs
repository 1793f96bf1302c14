//! A leader hands its appends to the host before its own log write
//! (`Replica::handle_ready_sending`), so that the host sends them while the leader writes; the
//! acknowledgements a replica owes for what it wrote come only after that write.

use hazina_core::{AccountKind, Command, NewAccount};
use hazina_replica::raft::eraftpb::MessageType;
use hazina_replica::{MemLog, Message, Output, Replica, ReplicaConfig, StateRole};

const SITES: [u64; 3] = [1, 2, 3];

/// The position of site `id` among the replicas and logs.
fn site(id: u64) -> usize {
    SITES.iter().position(|&s| s == id).expect("a site of the group")
}

fn group() -> (Vec<Replica<MemLog>>, Vec<MemLog>) {
    let logs: Vec<MemLog> = SITES.iter().map(|_| MemLog::new(&SITES)).collect();
    let replicas = SITES
        .iter()
        .zip(&logs)
        .map(|(&id, log)| {
            // Site 1 times out first and wins the election.
            let timeout = if id == 1 { 12 } else { 40 };
            let config = ReplicaConfig {
                snapshot_by_host: true,
                ..ReplicaConfig::new(id, SITES.to_vec(), timeout)
            };
            // Clones share the log: the test watches what each replica has written.
            Replica::new(&config, log.clone()).expect("starts")
        })
        .collect();
    (replicas, logs)
}

/// Delivers every message, and what answering them produces, until none is left.
fn deliver(replicas: &mut [Replica<MemLog>], mut messages: Vec<Message>) {
    while !messages.is_empty() {
        for message in std::mem::take(&mut messages) {
            let to = &mut replicas[site(message.to)];
            to.step(message).expect("a message of this group");
        }
        for replica in replicas.iter_mut() {
            let mut out = Output::default();
            replica.handle_ready(&mut out).expect("ready");
            messages.extend(out.messages);
        }
    }
}

fn elect_site_1(replicas: &mut [Replica<MemLog>]) {
    for _ in 0..200 {
        replicas[0].tick();
        let mut out = Output::default();
        replicas[0].handle_ready(&mut out).expect("ready");
        deliver(replicas, out.messages);
        if replicas[0].status().role == StateRole::Leader {
            return;
        }
    }
    panic!("site 1 was not elected");
}

fn account(id: u128) -> Command {
    Command::CreateAccount(NewAccount {
        id,
        currency: hazina_core::CURRENCY_KES,
        kind: AccountKind::CustomerWallet as u16,
        ..NewAccount::default()
    })
}

#[test]
fn a_leader_sends_its_appends_before_its_own_write_and_acknowledges_after() {
    let (mut replicas, logs) = group();
    elect_site_1(&mut replicas);
    let index = replicas[0].propose(1_000, vec![account(7)]).expect("leads").index;

    // The leader: the appends carrying the entry reach `send` while its log lacks the entry.
    let mut early = Vec::new();
    let mut out = Output::default();
    let leader_log = logs[0].clone();
    replicas[0]
        .handle_ready_sending(&mut out, usize::MAX, &mut |messages| {
            for m in messages.drain(..) {
                early.push((m.clone(), leader_log.last_index()));
            }
        })
        .expect("ready");
    let appends: Vec<&(Message, u64)> = early
        .iter()
        .filter(|(m, _)| {
            m.get_msg_type() == MessageType::MsgAppend && m.entries.iter().any(|e| e.index == index)
        })
        .collect();
    let mut to: Vec<u64> = appends.iter().map(|(m, _)| m.to).collect();
    to.sort_unstable();
    assert_eq!(to, vec![2, 3], "one append to each standby: {early:?}");
    for (m, written) in &appends {
        assert!(*written < index, "the append to {} was sent after the write ({written})", m.to);
    }
    assert_eq!(leader_log.last_index(), index, "written once ready returns");
    assert!(out.messages.is_empty(), "send took them all: {:?}", out.messages);

    // A standby: nothing goes before its write; its acknowledgement follows it, in `out`.
    let append = appends[0].0.clone();
    let standby = site(append.to);
    replicas[standby].step(append).expect("an append of this group");
    let mut out = Output::default();
    let mut before_write = Vec::new();
    replicas[standby]
        .handle_ready_sending(&mut out, usize::MAX, &mut |messages| before_write.append(messages))
        .expect("ready");
    assert!(before_write.is_empty(), "a standby acknowledged before writing: {before_write:?}");
    assert_eq!(logs[standby].last_index(), index);
    let ack = out
        .messages
        .iter()
        .find(|m| m.get_msg_type() == MessageType::MsgAppendResponse)
        .expect("the standby acknowledges the append");
    assert_eq!((ack.to, ack.index, ack.reject), (1, index, false));
}
