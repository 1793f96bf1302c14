//! One site's replica: a raft node (raft-rs `RawNode`) whose state machine is the ledger core.
//!
//! The host owns every effect: it calls [`Replica::tick`] on its clock, hands in messages from
//! peers ([`Replica::step`]), proposes batches on the leader ([`Replica::propose`]) and, after
//! each of those, runs [`Replica::handle_ready`], which writes the log, applies committed
//! entries to the ledger and returns the messages to send and what was applied (or
//! [`Replica::handle_ready_applying`], which applies a bounded share and leaves the rest
//! queued). Nothing here reads a clock, draws a random number or touches a socket, so a
//! simulation can drive three replicas deterministically.

use std::collections::VecDeque;

use hazina_core::codec::{self, CodecError};
use hazina_core::{
    Account, ApplyError, Command, Ledger, LedgerConfig, ResultCode, Timestamp, Transfer,
};
use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};

use crate::log::{LogStore, WriteError};
use crate::snapshot;

/// How one replica takes part in the group.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This replica's raft id, non-zero and unique in the group.
    pub id: u64,
    /// Every voter's id, this one's included.
    pub voters: Vec<u64>,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// A follower that hears no leader for this many ticks campaigns. raft-rs would draw it at
    /// random between `election_ticks` and twice that from a thread-local generator; here the
    /// host chooses it (different on each replica, so elections rarely split), which keeps a
    /// replica's behaviour a function of its inputs. At least `election_ticks`.
    pub election_timeout_ticks: usize,
    /// The lease: a leader that heard from no quorum for this many ticks steps down, and a
    /// follower that heard from a leader this recently refuses to vote for another.
    pub election_ticks: usize,
    /// Whether a replica asks the others whether it could win before it campaigns (pre-vote),
    /// so that a replica cut off and rejoining does not depose a working leader.
    pub pre_vote: bool,
    /// The most bytes of entries in one append message.
    pub append_bytes_max: u64,
    /// Append messages in flight to one follower.
    pub inflight_appends_max: usize,
    /// Entries applied between snapshots of the ledger; 0 never takes one (the log grows).
    pub snapshot_every: u64,
    /// Bytes of entries applied between snapshots, whichever comes first (0: no such bound).
    /// Bounds the log in memory when entries are large. The bound grows with the ledger: it is
    /// at least twice the size of the last snapshot (up to [`SNAPSHOT_BYTES_GROWTH_MAX`] times
    /// this), so that copying and encoding a large ledger, whose cost grows with its size, is
    /// not repeated after every few hundred megabytes of log.
    pub snapshot_every_bytes: u64,
    /// Whether the host takes the snapshots ([`Replica::begin_snapshot`], encoding them on a
    /// thread of its own, then [`Replica::finish_snapshot`]) instead of `handle_ready` taking
    /// them in line. In line, a replica stops for the encoding: a second for a million
    /// accounts, long enough for the others to think a primary lost.
    pub snapshot_by_host: bool,
    /// How much later than `snapshot_every` (and `snapshot_every_bytes`) this replica takes its
    /// first snapshot since it started, in percent of the interval. Give each replica of a group
    /// its own share (0, 33, 66 for three) and they never stop to copy their ledgers at the same
    /// log position: a follower copying costs the group nothing, and only the primary's own copy
    /// can hold writes up.
    pub snapshot_stagger_percent: u64,
    /// Entries kept in the log behind a snapshot, for followers a little behind; those further
    /// behind get the snapshot.
    pub log_keep: u64,
    pub ledger: LedgerConfig,
}

impl ReplicaConfig {
    /// Defaults for a group of `voters`, with this replica's own election timeout.
    pub fn new(id: u64, voters: Vec<u64>, election_timeout_ticks: usize) -> ReplicaConfig {
        ReplicaConfig {
            id,
            voters,
            heartbeat_ticks: 2,
            election_timeout_ticks,
            election_ticks: 10,
            pre_vote: true,
            append_bytes_max: 1 << 20,
            inflight_appends_max: 256,
            snapshot_every: 0,
            snapshot_every_bytes: 0,
            snapshot_by_host: false,
            snapshot_stagger_percent: 0,
            log_keep: 1_000,
            ledger: LedgerConfig::default(),
        }
    }
}

/// How far the byte bound between snapshots grows with the snapshot's size, at most, in times
/// [`ReplicaConfig::snapshot_every_bytes`]: it bounds the log a replica holds in memory.
pub const SNAPSHOT_BYTES_GROWTH_MAX: u64 = 4;

/// Why a proposal was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader takes writes. `leader` is the replica this one believes leads, if any.
    NotLeader { leader: Option<u64> },
    /// The leader cannot take writes now (a switchover is moving leadership away).
    Busy(String),
    /// A batch no replica could apply: empty, or over the ledger's batch size.
    Invalid(String),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(id) } => write!(f, "not the leader; {id} is"),
            ProposeError::NotLeader { leader: None } => write!(f, "not the leader; none known"),
            ProposeError::Busy(why) => write!(f, "leader busy: {why}"),
            ProposeError::Invalid(why) => write!(f, "invalid batch: {why}"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// A batch the leader put in its log. It is acknowledged when an [`Applied`] with the same
/// index and term and `acknowledged` set comes back; an entry of another term at that index
/// means the proposal was lost, and the caller resends (transfer ids make that safe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub index: u64,
    pub term: u64,
    pub timestamp: Timestamp,
}

/// A committed entry this replica applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    /// The entry's payload (empty for a new leader's no-op).
    pub data: bytes::Bytes,
    /// Set on the leader that proposed the entry, in the term it proposed it: the entry is
    /// durable on a quorum (this replica and at least one other) and applied, so its results
    /// may be returned to the caller. Never set anywhere else.
    pub acknowledged: bool,
    /// One result per command (empty for the no-op entry a new leader commits, and for a
    /// refused batch).
    pub results: Vec<ResultCode>,
    /// Set when the ledger refused the whole batch (for example: it would pass `accounts_max`,
    /// which the leader cannot know when it proposes). Every replica refuses it alike and
    /// changes nothing, so the log goes on; the callers get this error instead of results.
    pub refused: Option<ApplyError>,
    /// The ledger's state digest after this entry.
    pub digest: u128,
    /// What the entry held, for a host's metrics and storage without decoding it again.
    pub summary: EntrySummary,
}

/// The shape of an applied entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntrySummary {
    pub commands: usize,
    /// Transfers among them that the ledger accepted (`Ok`).
    pub transfers_ok: u64,
    /// Whether it set a limit profile (the host stores the profiles again).
    pub sets_limit_profiles: bool,
}

/// What one [`Replica::handle_ready`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to deliver to other replicas (`to` names the receiver).
    pub messages: Vec<Message>,
    pub applied: Vec<Applied>,
    /// A snapshot from the leader replaced this replica's state: its index and the digest of
    /// the ledger it held.
    pub installed_snapshot: Option<(u64, u128)>,
}

/// A replica that must stop: its log or its state machine cannot go on.
#[derive(Debug)]
pub enum ReplicaError {
    Raft(raft::Error),
    Write(WriteError),
    Codec {
        index: u64,
        error: CodecError,
    },
    /// An entry whose payload names another position than the one it holds in the log.
    Misplaced {
        index: u64,
        term: u64,
        payload_index: u64,
        payload_term: u64,
    },
    Unsupported(String),
}

impl std::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaError::Raft(e) => write!(f, "raft: {e}"),
            ReplicaError::Write(e) => write!(f, "{e}"),
            ReplicaError::Codec { index, error } => write!(f, "entry {index}: {error}"),
            ReplicaError::Misplaced { index, term, payload_index, payload_term } => write!(
                f,
                "entry {index} (term {term}) carries a payload for entry {payload_index} \
                 (term {payload_term})"
            ),
            ReplicaError::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

impl std::error::Error for ReplicaError {}

impl From<WriteError> for ReplicaError {
    fn from(e: WriteError) -> ReplicaError {
        ReplicaError::Write(e)
    }
}

impl From<raft::Error> for ReplicaError {
    fn from(e: raft::Error) -> ReplicaError {
        ReplicaError::Raft(e)
    }
}

/// Where a replica stands, for operators (`hazina admin status`) and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: u64,
    pub role: StateRole,
    pub term: u64,
    /// The leader this replica knows of, if any.
    pub leader: Option<u64>,
    /// Last entry in the log (written, not necessarily committed).
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The index of the snapshot the log keeps (0 if none): the log holds what follows it.
    pub snapshot_index: u64,
}

/// One site's replica. See the module documentation for how a host drives it.
pub struct Replica<S: LogStore> {
    node: RawNode<S>,
    ledger: Ledger,
    results: Vec<ResultCode>,
    applied: u64,
    /// Entries raft committed and handed over that are not applied yet, oldest first, and
    /// their bytes: the host may apply a bounded share per ready ([`Replica::apply_queued`]).
    to_apply: VecDeque<Entry>,
    to_apply_bytes: u64,
    /// The earliest stamp the next proposal may take, with the (last index, last term) of the
    /// log it was computed from.
    stamp_floor: Option<(u64, u64, Timestamp)>,
    snapshot_every: u64,
    snapshot_every_bytes: u64,
    /// Bytes of entries applied since the last snapshot.
    applied_bytes: u64,
    /// Bytes of the last snapshot kept, installed or started from (0 if there is none).
    snapshot_bytes: u64,
    /// Entries and bytes by which the first snapshot since start comes later (the stagger).
    snapshot_delay: (u64, u64),
    snapshot_by_host: bool,
    log_keep: u64,
    /// The index of the snapshot the log keeps (0 if none).
    snapshot_index: u64,
    /// The index of a snapshot the host is encoding, if any.
    snapshot_taking: Option<u64>,
    /// The term of the last leader that handed leadership here (raft's `MsgTimeoutNow`), 0 if
    /// none did.
    handed_over_in: u64,
    /// Ticks since start, and the tick at which each other replica was last heard from.
    ticks: u64,
    heard_at: Vec<(u64, u64)>,
}

/// A copy of the ledger at an applied index, for the host to encode
/// ([`SnapshotJob::encode`]) away from the replica's thread and hand back to
/// [`Replica::finish_snapshot`].
#[derive(Debug)]
pub struct SnapshotJob {
    pub index: u64,
    term: u64,
    conf_state: raft::eraftpb::ConfState,
    copy: snapshot::LedgerCopy,
}

impl SnapshotJob {
    /// The snapshot's bytes (what [`snapshot::decode`] reads). The copy is encoded here, so
    /// that the replica's thread only copies.
    pub fn encode(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.copy, snapshot::LedgerCopy::empty()).encode()
    }
}

impl<S: LogStore> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl<S: LogStore> Replica<S> {
    /// Starts a replica on `log`. The ledger starts empty and every committed entry of the log
    /// is applied again as raft hands it over (a checkpoint to start from comes with the RocksDB
    /// log).
    pub fn new(config: &ReplicaConfig, log: S) -> Result<Replica<S>, ReplicaError> {
        if config.election_timeout_ticks < config.election_ticks {
            return Err(ReplicaError::Unsupported(format!(
                "election timeout of {} ticks is below the lease of {} ticks",
                config.election_timeout_ticks, config.election_ticks
            )));
        }
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            // A range of one value: raft-rs draws from it with a thread-local generator.
            min_election_tick: config.election_timeout_ticks,
            max_election_tick: config.election_timeout_ticks + 1,
            pre_vote: config.pre_vote,
            check_quorum: true,
            max_size_per_msg: config.append_bytes_max,
            max_inflight_msgs: config.inflight_appends_max,
            ..raft::Config::default()
        };
        // Start from the snapshot the log keeps, if any; raft hands over the entries after it.
        let (ledger, snapshot_index, snapshot_bytes) = match log.kept_snapshot() {
            Some(s) => {
                let index = s.get_metadata().index;
                let ledger = snapshot::decode(&s.data, config.ledger.clone())
                    .map_err(|error| ReplicaError::Codec { index, error })?;
                (ledger, index, s.data.len() as u64)
            }
            None => (
                Ledger::new(config.ledger.clone()).map_err(|e| {
                    ReplicaError::Unsupported(format!("ledger configuration: {e:?}"))
                })?,
                0,
                0,
            ),
        };
        let raft_config = raft::Config { applied: snapshot_index, ..raft_config };
        raft_config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&raft_config, log, &logger)?;
        Ok(Replica {
            node,
            ledger,
            results: Vec::new(),
            applied: snapshot_index,
            to_apply: VecDeque::new(),
            to_apply_bytes: 0,
            stamp_floor: None,
            snapshot_every: config.snapshot_every,
            snapshot_every_bytes: config.snapshot_every_bytes,
            applied_bytes: 0,
            snapshot_bytes,
            snapshot_delay: (
                config.snapshot_every.saturating_mul(config.snapshot_stagger_percent) / 100,
                config.snapshot_every_bytes.saturating_mul(config.snapshot_stagger_percent) / 100,
            ),
            snapshot_by_host: config.snapshot_by_host,
            log_keep: config.log_keep.max(1),
            snapshot_index,
            snapshot_taking: None,
            handed_over_in: 0,
            ticks: 0,
            heard_at: Vec::new(),
        })
    }

    /// Advances raft's clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.node.tick();
    }

    /// Hands in a message from another replica. Messages from unknown peers and stale ones are
    /// dropped by raft; the error says why, and the host may ignore it.
    pub fn step(&mut self, message: Message) -> Result<(), raft::Error> {
        if message.get_msg_type() == MessageType::MsgTimeoutNow {
            self.handed_over_in = message.term;
        }
        match self.heard_at.iter_mut().find(|(from, _)| *from == message.from) {
            Some((_, at)) => *at = self.ticks,
            None => self.heard_at.push((message.from, self.ticks)),
        }
        self.node.step(message)
    }

    /// Puts a batch in the leader's log, stamped at `now` (the host's clock) or just after the
    /// last entry in the log, whichever is later, so that stamps increase across leaders whose
    /// clocks disagree.
    pub fn propose(
        &mut self,
        now: Timestamp,
        commands: Vec<Command>,
    ) -> Result<Proposal, ProposeError> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            let leader = Some(raft.leader_id).filter(|&id| id != raft::INVALID_ID);
            return Err(ProposeError::NotLeader { leader });
        }
        if raft.lead_transferee.is_some() {
            return Err(ProposeError::Busy("leadership is being transferred".into()));
        }
        let max = self.ledger.config().batch_commands_max;
        if commands.is_empty() || commands.len() > max {
            return Err(ProposeError::Invalid(format!(
                "{} commands; a batch holds 1 to {max}",
                commands.len()
            )));
        }
        let floor = self.stamp_floor().map_err(|e| ProposeError::Busy(e.to_string()))?;
        let timestamp = now.max(floor);
        if timestamp.checked_add(commands.len() as u64).is_none_or(|end| end == Timestamp::MAX) {
            return Err(ProposeError::Invalid(format!("stamp {timestamp} overflows")));
        }
        let index = self.node.raft.raft_log.last_index() + 1;
        let term = self.node.raft.term;
        let entry = codec::Entry { index, term, timestamp, commands };
        let mut data = Vec::new();
        codec::encode_entry(&entry, &mut data);
        self.node.propose(Vec::new(), data).map_err(|e| ProposeError::Busy(e.to_string()))?;
        // A payload naming another index would stop every replica that applies it; stop here,
        // before the entry leaves this one.
        assert_eq!(self.node.raft.raft_log.last_index(), index, "the proposal's index");
        let commands = u32::try_from(entry.commands.len()).expect("at most batch_commands_max");
        let next = codec::EntryHeader { index, term, timestamp, commands }.next_timestamp();
        self.stamp_floor = Some((index, term, next));
        Ok(Proposal { index, term, timestamp })
    }

    /// Asks the leader to hand leadership to `to` once `to` has the whole log (a switchover).
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Writes what raft asks to be written, applies what it committed, and returns the messages
    /// to send and the entries applied. Call it after every tick, step and proposal. On an error
    /// the replica must be dropped (fail-stop) and restarted from its log; what `out` holds by
    /// then is still true (messages may be sent, applied entries were committed).
    pub fn handle_ready(&mut self, out: &mut Output) -> Result<(), ReplicaError> {
        self.handle_ready_applying(out, usize::MAX)
    }

    /// [`Replica::handle_ready`], applying at most `entries_max` committed entries, the oldest;
    /// the others wait for [`Replica::apply_queued`] or the next ready. A host whose thread
    /// also sends raft's heartbeats applies in slices, so that a burst of committed entries
    /// (a standby that was behind, a leader acknowledged for many entries at once) does not
    /// keep its heartbeats back for longer than an election timeout.
    pub fn handle_ready_applying(
        &mut self,
        out: &mut Output,
        entries_max: usize,
    ) -> Result<(), ReplicaError> {
        self.handle_ready_sending(out, entries_max, &mut |_| {})
    }

    /// [`Replica::handle_ready_applying`], handing `send` the messages that may go out before
    /// the log write (a leader's appends and heartbeats) as soon as raft produces them, so
    /// that the host sends them while this replica writes: a leader's write and its
    /// followers' then overlap. `send` takes them out of the vector it is given; what it
    /// leaves stays in `out.messages`.
    pub fn handle_ready_sending(
        &mut self,
        out: &mut Output,
        entries_max: usize,
        send: &mut dyn FnMut(&mut Vec<Message>),
    ) -> Result<(), ReplicaError> {
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            // A leader may send before its own write (raft thesis 10.2.1): its entries commit
            // only once a quorum, counting itself only after the write below, has them.
            out.messages.extend(ready.take_messages());
            if !out.messages.is_empty() {
                send(&mut out.messages);
            }
            if !ready.snapshot().is_empty() {
                self.install(ready.snapshot(), out)?;
            }
            self.queue(ready.take_committed_entries());
            self.node.mut_store().write(ready.entries(), ready.hs())?;
            // Votes and append acknowledgements promise what was just written.
            out.messages.extend(ready.take_persisted_messages());
            let mut light = self.node.advance_append(ready);
            if let Some(commit) = light.commit_index() {
                self.node.mut_store().set_commit(commit)?;
            }
            out.messages.extend(light.take_messages());
            self.queue(light.take_committed_entries());
        }
        self.apply_queued(out, entries_max)?;
        Ok(())
    }

    /// Applies up to `entries_max` of the committed entries waiting, oldest first; returns how
    /// many it applied.
    pub fn apply_queued(
        &mut self,
        out: &mut Output,
        entries_max: usize,
    ) -> Result<usize, ReplicaError> {
        let mut applied = 0;
        while applied < entries_max
            && let Some(entry) = self.to_apply.pop_front()
        {
            self.to_apply_bytes -= entry.data.len() as u64;
            self.apply(entry, out)?;
            applied += 1;
        }
        // Also after a snapshot was installed: raft campaigns only from its applied index on.
        if self.node.raft.raft_log.applied < self.applied {
            self.node.advance_apply_to(self.applied);
        }
        self.maybe_compact()?;
        Ok(applied)
    }

    /// Committed entries waiting to be applied, and their bytes.
    pub fn apply_backlog(&self) -> (usize, u64) {
        (self.to_apply.len(), self.to_apply_bytes)
    }

    fn queue(&mut self, entries: Vec<Entry>) {
        self.to_apply_bytes += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
        self.to_apply.extend(entries);
    }

    /// Replaces the ledger with the leader's snapshot and the log with it.
    fn install(&mut self, snapshot: &Snapshot, out: &mut Output) -> Result<(), ReplicaError> {
        let index = snapshot.get_metadata().index;
        self.ledger = snapshot::decode(&snapshot.data, self.ledger.config().clone())
            .map_err(|error| ReplicaError::Codec { index, error })?;
        self.node.mut_store().install_snapshot(snapshot)?;
        self.snapshot_bytes = snapshot.data.len() as u64;
        // raft takes a snapshot only past its commit index, so past every entry waiting here.
        self.to_apply.clear();
        self.to_apply_bytes = 0;
        self.applied = index;
        self.snapshot_index = index;
        self.stamp_floor = None;
        out.installed_snapshot = Some((index, self.ledger.digest()));
        Ok(())
    }

    /// Bytes of entries applied after which a snapshot is due: `snapshot_every_bytes`, or twice
    /// the last snapshot if that is more, up to `SNAPSHOT_BYTES_GROWTH_MAX` times the former.
    pub fn snapshot_bytes_bound(&self) -> u64 {
        let every = self.snapshot_every_bytes;
        self.snapshot_bytes
            .saturating_mul(2)
            .clamp(every, every.saturating_mul(SNAPSHOT_BYTES_GROWTH_MAX))
    }

    /// Whether `snapshot_every` entries (or the byte bound) were applied since the last
    /// snapshot.
    pub fn snapshot_due(&self) -> bool {
        self.snapshot_past(1)
    }

    /// Whether twice the interval passed since the last snapshot. A host may put off a due
    /// snapshot on its primary until then: the primary's copy of its ledger holds up every
    /// write, a standby's only that standby. The log then grows to twice its bound at most.
    pub fn snapshot_overdue(&self) -> bool {
        self.snapshot_past(2)
    }

    fn snapshot_past(&self, intervals: u64) -> bool {
        let (delay_entries, delay_bytes) = self.snapshot_delay;
        let by_entries = self.snapshot_every > 0
            && self.applied
                >= self.snapshot_index + self.snapshot_every * intervals + delay_entries;
        let by_bytes = self.snapshot_every_bytes > 0
            && self.applied_bytes >= self.snapshot_bytes_bound() * intervals + delay_bytes;
        self.snapshot_taking.is_none() && (by_entries || by_bytes)
    }

    /// Every `snapshot_every` applied entries, unless the host takes the snapshots: keeps a
    /// snapshot of the ledger at the applied index and drops the log before `log_keep` entries
    /// behind it.
    fn maybe_compact(&mut self) -> Result<(), ReplicaError> {
        if self.snapshot_by_host || !self.snapshot_due() {
            return Ok(());
        }
        let mut job = self.begin_snapshot()?;
        let data = job.encode();
        self.finish_snapshot(job, data)
    }

    /// Copies the ledger at the applied index, for a snapshot the host encodes. Until
    /// [`Replica::finish_snapshot`], no other snapshot is taken.
    pub fn begin_snapshot(&mut self) -> Result<SnapshotJob, ReplicaError> {
        let index = self.applied;
        let term = self.node.raft.raft_log.term(index)?;
        let conf_state = self.node.store().initial_state()?.conf_state;
        self.snapshot_taking = Some(index);
        self.applied_bytes = 0;
        // Staggered once: from here on every interval is whole, so the offset between this
        // replica's snapshots and the others' stays.
        self.snapshot_delay = (0, 0);
        Ok(SnapshotJob { index, term, conf_state, copy: snapshot::LedgerCopy::of(&self.ledger) })
    }

    /// Gives up the snapshot begun last (its encoding or writing failed); the next is taken
    /// when due.
    pub fn abandon_snapshot(&mut self) {
        self.snapshot_taking = None;
    }

    /// Keeps the encoded snapshot of `job` and drops the log before `log_keep` entries behind
    /// it. A job overtaken meanwhile (the leader's snapshot was installed past it) is dropped.
    pub fn finish_snapshot(&mut self, job: SnapshotJob, data: Vec<u8>) -> Result<(), ReplicaError> {
        self.snapshot_taking = None;
        if job.index <= self.snapshot_index {
            return Ok(());
        }
        self.snapshot_bytes = data.len() as u64;
        let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
        let meta = snapshot.mut_metadata();
        meta.index = job.index;
        meta.term = job.term;
        meta.set_conf_state(job.conf_state);
        let compact_to = job.index.saturating_sub(self.log_keep) + 1;
        self.node.mut_store().compact(snapshot, compact_to)?;
        self.snapshot_index = job.index;
        Ok(())
    }

    /// Tells raft how a snapshot sent to `to` fared: a lost one must be reported, or raft
    /// waits for it forever.
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.node.report_snapshot(to, status);
    }

    /// Tells raft a message to `to` could not be sent.
    pub fn report_unreachable(&mut self, to: u64) {
        self.node.report_unreachable(to);
    }

    /// Applies one committed entry to the ledger.
    fn apply(&mut self, entry: Entry, out: &mut Output) -> Result<(), ReplicaError> {
        if entry.get_entry_type() != EntryType::EntryNormal {
            return Err(ReplicaError::Unsupported("membership changes".into()));
        }
        let (index, term) = (entry.index, entry.term);
        let acknowledged = self.node.raft.state == StateRole::Leader && self.node.raft.term == term;
        self.results.clear();
        let mut refused = None;
        let mut summary = EntrySummary::default();
        if !entry.data.is_empty() {
            let payload = codec::decode_entry(&entry.data)
                .map_err(|error| ReplicaError::Codec { index, error })?;
            if payload.index != index || payload.term != term {
                return Err(ReplicaError::Misplaced {
                    index,
                    term,
                    payload_index: payload.index,
                    payload_term: payload.term,
                });
            }
            // The ledger checks a whole batch before it changes anything, so a refusal is
            // the same on every replica and leaves the state as it was.
            if let Err(error) =
                self.ledger.apply_into(payload.timestamp, &payload.commands, &mut self.results)
            {
                self.results.clear();
                refused = Some(error);
            } else {
                summary.commands = payload.commands.len();
                for (command, &result) in payload.commands.iter().zip(&self.results) {
                    match command {
                        Command::CreateTransfer(_) if result == ResultCode::Ok => {
                            summary.transfers_ok += 1;
                        }
                        Command::SetLimitProfile { .. } => summary.sets_limit_profiles = true,
                        _ => {}
                    }
                }
            }
        }
        self.applied = index;
        self.applied_bytes += entry.data.len() as u64;
        out.applied.push(Applied {
            index,
            term,
            data: entry.data,
            acknowledged,
            results: self.results.clone(),
            refused,
            digest: self.ledger.digest(),
            summary,
        });
        Ok(())
    }

    /// The earliest stamp after every entry in the log: new leaders may hold entries of earlier
    /// terms that they have not applied yet, stamped by a clock ahead of theirs.
    fn stamp_floor(&mut self) -> Result<Timestamp, ReplicaError> {
        let log = &self.node.raft.raft_log;
        let (last, last_term) = (log.last_index(), log.last_term());
        if let Some((index, term, floor)) = self.stamp_floor
            && index == last
            && term == last_term
        {
            return Ok(floor);
        }
        let mut floor = self.ledger.timestamp_last().saturating_add(1);
        let mut index = last;
        while index > self.applied {
            let entries =
                log.slice(index, index + 1, None, raft::GetEntriesContext::empty(false))?;
            let Some(entry) = entries.first() else { break };
            if !entry.data.is_empty() {
                let header = codec::decode_entry_header(&entry.data)
                    .map_err(|error| ReplicaError::Codec { index, error })?;
                floor = floor.max(header.next_timestamp());
                break;
            }
            index -= 1;
        }
        self.stamp_floor = Some((last, last_term, floor));
        Ok(floor)
    }

    pub fn status(&self) -> ReplicaStatus {
        let raft = &self.node.raft;
        ReplicaStatus {
            id: raft.id,
            role: raft.state,
            term: raft.term,
            leader: Some(raft.leader_id).filter(|&id| id != raft::INVALID_ID),
            last_index: raft.raft_log.last_index(),
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            snapshot_index: self.snapshot_index,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What the entries applied since the last call changed, for a host that stores it
    /// (statements, lookups); needs `track_changes` in the ledger's configuration. After a
    /// snapshot was installed this names only what later entries changed.
    pub fn take_changes(&mut self, accounts: &mut Vec<Account>, transfers: &mut Vec<Transfer>) {
        self.ledger.take_changes(accounts, transfers);
    }

    /// On the leader, each voter's last log index known to match the leader's (its own
    /// included), in id order; empty elsewhere. The lag of a standby is the leader's last index
    /// minus its match.
    pub fn progress(&self) -> Vec<(u64, u64)> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            return Vec::new();
        }
        let mut out: Vec<(u64, u64)> = raft.prs().iter().map(|(&id, p)| (id, p.matched)).collect();
        out.sort_unstable();
        out
    }

    /// Whether this replica leads because the leader before it handed leadership over (a
    /// switchover: raft's `MsgTimeoutNow`, then a won election in the next term), rather than
    /// by an election of its own. False when it does not lead.
    pub fn leads_by_handover(&self) -> bool {
        let raft = &self.node.raft;
        raft.state == StateRole::Leader
            && self.handed_over_in > 0
            && self.handed_over_in + 1 == raft.term
    }

    /// On the leader, whether voter `id` is in touch (heard from within raft's lease, the
    /// election ticks), receiving entries as they come (not probed, not sent a snapshot) and at
    /// most `lag_max` entries behind the leader's last index. False elsewhere. (Raft's own
    /// `recent_active` is cleared at every check of the quorum, so it reads false for a moment
    /// once a lease even for a follower in touch.)
    pub fn is_up_to_date(&self, id: u64, lag_max: u64) -> bool {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            return false;
        }
        let lease = raft.election_timeout() as u64;
        let in_touch = self
            .heard_at
            .iter()
            .any(|&(from, at)| from == id && self.ticks.saturating_sub(at) <= lease);
        let last = raft.raft_log.last_index();
        in_touch
            && raft.prs().get(id).is_some_and(|p| {
                p.state == raft::ProgressState::Replicate
                    && p.matched.saturating_add(lag_max) >= last
            })
    }

    /// Whether a leadership transfer is under way (proposals are refused meanwhile).
    pub fn transferring_to(&self) -> Option<u64> {
        self.node.raft.lead_transferee
    }

    pub fn log(&self) -> &S {
        self.node.store()
    }
}
