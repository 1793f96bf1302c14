//! A site of a replicated group: the ledger behind raft (`hazina-replica`), its log in RocksDB
//! ([`RaftLog`]), and raft's messages to the other sites over gRPC (`hazina.peer.v1`).
//!
//! ```text
//!  gRPC handlers ─┐                     ┌─▶ peer senders (one tokio task per site) ─▶ sites
//!  peer service ──┼─inputs─▶ driver ────┤
//!  sender reports ┘        (one thread) └─▶ statement writer ─▶ replies to the gRPC handlers
//!                                           (one thread)  └─▶ lines writer (one thread)
//! ```
//!
//! The driver owns the [`Replica`]. Each round it takes what is queued (requests, peer
//! messages, reports), ticks raft on its clock, proposes the round's commands as one entry if
//! it leads, and runs `handle_ready`: one synced RocksDB write for the new entries and the term
//! and vote, the messages to send, the committed entries applied to the ledger (for about a
//! tick; what is left waits for the next rounds, so that heartbeats go out on time). What the
//! applied entries changed goes to the statement writer, which stages their statement lines in
//! memory (where statements read them) and then answers their callers; the driver goes on at
//! once, so its heartbeats never wait on the state. The lines writer writes what is staged to
//! RocksDB as one sorted file every `statements_every` commands, and the snapshot thread has it
//! written up to a snapshot's entry before the snapshot is kept: a restart replays only the
//! log after the kept snapshot, staging those entries' lines again (docs/adr/0009). A caller
//! gets its results only when its entry was applied by the leader that proposed it, in the
//! same term: by then it is durable on this site and at least one other
//! (docs/adr/0003). While the driver writes, requests queue, so the next round's entry is
//! larger: group commit.
//!
//! Writes and reads go to the primary; a standby answers them with [`NodeError::NotLeader`],
//! naming the primary, which clients follow. A new primary answers reads only once it applied an
//! entry of its own term, so that it has applied everything committed before it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use hazina_core::{Account, Command, HistoryPage, LedgerConfig, ResultCode, Timestamp, Transfer};
use hazina_proto::peer::peer_client::PeerClient;
use hazina_proto::peer::{StepReply, StepRequest};
use hazina_replica::raft::eraftpb::MessageType;
use hazina_replica::{
    Message, Output, ProposeError, Replica, ReplicaConfig, ReplicaStatus, SnapshotJob, StateRole,
    wire,
};
use hazina_store::{Changes, RaftLog, RaftLogOptions, Store, StoreOptions};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use crate::flow::{self, Admission};
use crate::node::{NodeError, STAGED_COMMANDS_SIZED, StartError, admit_and_send, count_outcomes};
use crate::relay::Relay;

/// Raft messages queued for one peer beyond which new ones are dropped (raft resends what is
/// lost, and a dropped snapshot is reported as failed).
pub const PEER_QUEUE_MESSAGES_MAX: usize = 8_192;
/// Messages in one `Step` call, at most.
const PEER_BATCH_MESSAGES_MAX: usize = 256;
/// Messages from peers waiting for the driver beyond which `Step` calls are refused.
pub const PEER_INBOX_MESSAGES_MAX: usize = 65_536;
/// Bytes of one peer message, at most: a snapshot of the whole ledger travels in one.
pub const PEER_MESSAGE_BYTES_MAX: usize = 1 << 30;
/// Inputs the driver takes in one round besides commands.
const ROUND_INPUTS_MAX: usize = 4_096;
/// Bytes of committed entries that may wait to be applied (about six full batches of
/// transfers); past it a primary holds new commands back and a standby applies until the
/// backlog is back under it.
const APPLY_BACKLOG_BYTES_MAX: u64 = 2 << 20;
/// How long a switchover may take before the operator is told it did not happen.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries the preferred site may be behind and still count as up to date for a hand-back
/// (raft's transfer then waits for it to hold the whole log).
const HAND_BACK_LAG_MAX: u64 = 1_000;

/// One site of the group: its raft id and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub id: u64,
    /// The client API (`hazina.v1`), named in "not primary" answers.
    pub api: String,
    /// The peer service (`hazina.peer.v1`).
    pub peer: String,
}

impl std::str::FromStr for Site {
    type Err = String;

    /// `ID=API_ADDR,PEER_ADDR`, for example `1=127.0.0.1:7401,127.0.0.1:7411`.
    fn from_str(s: &str) -> Result<Site, String> {
        let (id, addrs) =
            s.split_once('=').ok_or_else(|| format!("{s:?}: expected ID=API,PEER"))?;
        let id: u64 = id.trim().parse().map_err(|e| format!("{s:?}: site id: {e}"))?;
        if id == 0 {
            return Err(format!("{s:?}: site ids start at 1"));
        }
        let (api, peer) =
            addrs.split_once(',').ok_or_else(|| format!("{s:?}: expected ID=API,PEER"))?;
        Ok(Site { id, api: api.trim().to_owned(), peer: peer.trim().to_owned() })
    }
}

/// How a site of a group runs. `hazinad --help` documents each as a flag.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub data_dir: std::path::PathBuf,
    pub site_id: u64,
    /// Every site of the group, this one included.
    pub sites: Vec<Site>,
    /// The site preferred as primary: it has the shortest election timeout, so it wins
    /// elections when it is healthy.
    pub preferred_site: u64,
    /// A primary that is not the preferred site and got there by an election (not by an
    /// operator's switchover) hands the primary back to the preferred site once that site has
    /// been up to date for this long; `None`: never.
    pub hand_back_after: Option<Duration>,
    pub ledger: LedgerConfig,
    pub queue_commands_max: usize,
    /// Raft's clock: one tick every this long.
    pub tick: Duration,
    /// A primary sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// A standby that hears no primary for this many ticks (more on the less preferred sites)
    /// campaigns; a primary that hears from no quorum for this long steps down.
    pub election_ticks: usize,
    /// Entries applied between snapshots (the log is compacted behind each).
    pub snapshot_every: u64,
    /// Bytes of entries applied between snapshots, whichever comes first.
    pub snapshot_every_bytes: u64,
    /// Entries kept behind a snapshot for standbys a little behind.
    pub log_keep: u64,
    /// Slow the admission of writes when the statement lines' compactions fall behind
    /// ([`crate::flow`]).
    pub flow_control: bool,
    /// Commands whose statement lines are staged in memory before they are written to RocksDB
    /// as one sorted file (they are also written before each snapshot is kept).
    pub statements_every: u64,
    pub store: StoreOptions,
}

impl ClusterConfig {
    pub fn check(&self) -> Result<(), String> {
        let mut ids: Vec<u64> = self.sites.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.sites.len() {
            return Err("two sites share an id".into());
        }
        if ids.len() < 3 || ids.len().is_multiple_of(2) {
            return Err(format!(
                "{} sites: a group needs an odd number, at least 3, so that one can be lost",
                ids.len()
            ));
        }
        if !ids.contains(&self.site_id) {
            return Err(format!("site {} is not among the sites {ids:?}", self.site_id));
        }
        if !ids.contains(&self.preferred_site) {
            return Err(format!("preferred site {} is not among {ids:?}", self.preferred_site));
        }
        if self.tick.is_zero() || self.heartbeat_ticks == 0 {
            return Err("the tick and the heartbeat must not be zero".into());
        }
        if self.election_ticks <= 2 * self.heartbeat_ticks {
            return Err("the election timeout must span more than two heartbeats".into());
        }
        if self.ledger.transfers_generation_max != 0 {
            // The replica applies committed entries itself and ships whole-ledger snapshots:
            // every record must be resident (docs/OPERATIONS.md, "limits").
            return Err("a replicated site keeps every transfer record in memory".into());
        }
        if self.queue_commands_max < self.ledger.batch_commands_max {
            return Err("the queue must hold at least one full batch".into());
        }
        if self.statements_every == 0 {
            return Err("statements_every must be at least 1".into());
        }
        Ok(())
    }

    /// This site's election timeout in ticks: the preferred site's is the lease itself, every
    /// other site's a few ticks longer, by its rank, so that elections rarely split and the
    /// preferred site wins those it takes part in.
    fn election_timeout_ticks(&self) -> usize {
        let step = (self.election_ticks / 4).max(1);
        (self.election_ticks + self.rank() * step).min(2 * self.election_ticks - 1)
    }

    /// 0 for the preferred site, then 1, 2, ... for the others in id order.
    fn rank(&self) -> usize {
        let mut others: Vec<u64> =
            self.sites.iter().map(|s| s.id).filter(|&id| id != self.preferred_site).collect();
        others.sort_unstable();
        if self.site_id == self.preferred_site {
            0
        } else {
            1 + others.iter().position(|&id| id == self.site_id).unwrap_or(0)
        }
    }

    /// Each site takes its snapshots a share of the interval after the site ranked before it,
    /// so that no two copy their ledgers at once (see `ReplicaConfig::snapshot_stagger_percent`).
    fn snapshot_stagger_percent(&self) -> u64 {
        (self.rank() * 100 / self.sites.len().max(1)) as u64
    }
}

/// A site's state as `GetStatus` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub site_id: u64,
    pub replica: ReplicaStatus,
    pub leader_address: Option<String>,
    pub digest: u128,
    pub accounts: u64,
    pub timestamp_last: Timestamp,
    pub queued_commands: u64,
    /// On the primary: (site, match index) for every site.
    pub progress: Vec<(u64, u64)>,
    pub last_change: String,
    pub last_change_unix_ms: u64,
    pub snapshots_installed: u64,
}

/// What a finished switchover reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchoverDone {
    pub leader: u64,
    pub term: u64,
    pub pause: Duration,
}

type ResultsTx = oneshot::Sender<Result<Vec<ResultCode>, NodeError>>;

enum Input {
    Commands {
        commands: Vec<Command>,
        reply: ResultsTx,
    },
    LookupAccounts {
        ids: Vec<u128>,
        reply: oneshot::Sender<Result<Vec<Account>, NodeError>>,
    },
    LookupTransfers {
        ids: Vec<u128>,
        reply: oneshot::Sender<Result<Vec<Transfer>, NodeError>>,
    },
    Status {
        reply: oneshot::Sender<ClusterStatus>,
    },
    Switchover {
        to: u64,
        reply: oneshot::Sender<Result<SwitchoverDone, NodeError>>,
    },
    /// Messages from a peer, counted in `Shared::inbox`.
    Peer(Vec<Message>),
    /// A peer could not be reached; `snapshot` if the lost messages held one.
    Unreachable {
        to: u64,
        snapshot: bool,
    },
    SnapshotDelivered {
        to: u64,
    },
    /// A snapshot encoded and written by its thread, or why it could not be.
    SnapshotEncoded(Result<Box<(SnapshotJob, Vec<u8>)>, String>),
    Shutdown,
}

#[derive(Debug, Default)]
struct Shared {
    /// This site's id while it leads and has applied an entry of its term (so everything
    /// committed before it), else 0; the statement reads check it.
    leader: AtomicU64,
    /// The applied index when `leader` was last set: statements are served once the statement
    /// writer has written up to it.
    reads_index: AtomicU64,
    /// The last entry whose statement lines are staged (statements read them from then on).
    applied_index: AtomicU64,
    /// Set when the statement writer stops: nothing will be staged any more.
    statements_stopped: AtomicBool,
    inbox: AtomicUsize,
    known_leader: Mutex<Option<u64>>,
    /// Commands of this site's callers answered since start, for the flow control's rate.
    answered_commands: AtomicU64,
}

/// A running site of a group. Handlers call it from any task.
#[derive(Debug)]
pub struct ClusterNode {
    inputs: Sender<Input>,
    queued: Arc<AtomicUsize>,
    queue_max: usize,
    batch_max: usize,
    admission: Arc<Admission>,
    store: Arc<Store>,
    shared: Arc<Shared>,
    sites: Vec<Site>,
    site_id: u64,
    /// The driver, the statement writer, the lines writer, then the flow control's sampler.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Answers waiting for an applied round's statement lines to be written.
struct Statements {
    /// The last entry applied in the round.
    index: u64,
    changes: Changes,
    answers: Vec<(ResultsTx, Vec<ResultCode>)>,
}

/// Rounds whose statements may wait for the statement writer; beyond this the driver waits
/// (the writer is behind the disk or the cores, and the group is overloaded).
const STATEMENT_ROUNDS_MAX: usize = 16;

impl ClusterNode {
    /// Opens the store and the raft log, rebuilds the ledger from the kept snapshot and the
    /// committed log, and starts the driver and one sender per peer on `runtime`.
    pub fn start(
        config: ClusterConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<ClusterNode, StartError> {
        config.check().map_err(StartError::Config)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::Config(format!("{}: {e}", config.data_dir.display())))?;
        let started = Instant::now();
        // The state in `<data dir>/state`, raft's log in `<data dir>/raft` (RaftLog's docs).
        // A staged layer holds the lines of one interval and a little more while the lines
        // writer keeps up, up to three when it falls behind (the statement writer then waits).
        let staged = config.statements_every.saturating_mul(2).min(STAGED_COMMANDS_SIZED);
        let options = StoreOptions {
            staged_commands: usize::try_from(staged).unwrap_or(usize::MAX),
            stage_lines_only: true,
            ..config.store.clone()
        };
        let store = Arc::new(Store::open(&config.data_dir.join("state"), &options)?);
        store.start_compactions()?;
        let voters: Vec<u64> = config.sites.iter().map(|s| s.id).collect();
        let log =
            RaftLog::open(&config.data_dir.join("raft"), &RaftLogOptions::default(), &voters)?;
        let mut replica_config =
            ReplicaConfig::new(config.site_id, voters, config.election_timeout_ticks());
        replica_config.heartbeat_ticks = config.heartbeat_ticks;
        replica_config.election_ticks = config.election_ticks;
        replica_config.snapshot_every = config.snapshot_every;
        replica_config.snapshot_every_bytes = config.snapshot_every_bytes;
        replica_config.snapshot_by_host = true;
        replica_config.snapshot_stagger_percent = config.snapshot_stagger_percent();
        replica_config.log_keep = config.log_keep;
        replica_config.ledger = LedgerConfig { track_changes: true, ..config.ledger.clone() };
        let mut replica = Replica::new(&replica_config, log)
            .map_err(|e| StartError::Restore(format!("replica: {e}")))?;
        // The committed entries after the snapshot are applied in the first ready.
        let mut out = Output::default();
        replica.handle_ready(&mut out).map_err(|e| StartError::Restore(format!("replay: {e}")))?;
        let status = replica.status();
        tracing::info!(
            site = config.site_id,
            term = status.term,
            last_index = status.last_index,
            applied_index = status.applied_index,
            election_timeout_ms = config.election_timeout_ticks() as u128 * config.tick.as_millis(),
            digest = format!("{:032x}", replica.ledger().digest()),
            seconds = started.elapsed().as_secs_f64(),
            "recovered"
        );

        let shared = Arc::new(Shared::default());
        // Statements are written up to the first entry recovery applied (the first round
        // writes that entry's and the later ones').
        let written = out.applied.first().map_or(status.applied_index, |a| a.index - 1);
        shared.applied_index.store(written, Ordering::Relaxed);
        let (inputs_tx, inputs_rx) = crossbeam_channel::unbounded();
        let mut peers = HashMap::new();
        for site in config.sites.iter().filter(|s| s.id != config.site_id) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
            let endpoint = Endpoint::from_shared(format!("http://{}", site.peer))
                .map_err(|e| StartError::Config(format!("site {} peer address: {e}", site.id)))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true);
            let client = PeerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
            runtime.spawn(send_to_peer(config.site_id, site.id, client, rx, inputs_tx.clone()));
            peers.insert(site.id, tx);
        }
        let queued = Arc::new(AtomicUsize::new(0));
        let (statements_tx, statements_rx) = crossbeam_channel::bounded(STATEMENT_ROUNDS_MAX);
        let driver = Driver {
            replica,
            store: Arc::clone(&store),
            statements: statements_tx,
            inputs: inputs_rx,
            peers,
            queued: Arc::clone(&queued),
            shared: Arc::clone(&shared),
            sites: config.sites.clone(),
            site_id: config.site_id,
            tick: config.tick,
            batch_max: config.ledger.batch_commands_max,
            pending: BTreeMap::new(),
            deferred_reads: Vec::new(),
            reads_term: 0,
            switchover: None,
            preferred_site: config.preferred_site,
            hand_back_after: config.hand_back_after,
            preferred_up_to_date_since: None,
            handing_back: None,
            last_role: (status.role, status.leader, status.term),
            last_change: format!("started as {:?} in term {}", status.role, status.term),
            last_change_unix_ms: unix_ms(),
            held: VecDeque::new(),
            early: out,
            reports: inputs_tx.clone(),
            snapshots_installed: 0,
        };
        let (store_w, shared_w) = (Arc::clone(&store), Arc::clone(&shared));
        // The statement writer holds the senders: the lines writer and the sampler stop when
        // the writer does.
        let (writer_alive, writer_gone) = crossbeam_channel::bounded::<()>(0);
        let (lines_tx, lines_rx) = crossbeam_channel::bounded::<()>(1);
        let every = config.statements_every;
        let answers: Relay<(ResultsTx, Vec<ResultCode>)> =
            Relay::start(Some(&runtime), |(reply, results)| {
                let _ = reply.send(Ok(results));
            });
        let writer = std::thread::Builder::new()
            .name("hazina-statements".into())
            .spawn(move || {
                let _alive = writer_alive;
                write_statements(&store_w, &statements_rx, &shared_w, &answers, &lines_tx, every);
            })
            .map_err(|e| StartError::Config(format!("statement writer thread: {e}")))?;
        let store_l = Arc::clone(&store);
        let lines = std::thread::Builder::new()
            .name("hazina-lines".into())
            .spawn(move || write_lines(&store_l, &lines_rx))
            .map_err(|e| StartError::Config(format!("lines writer thread: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("hazina-driver".into())
            .spawn(move || driver.run())
            .map_err(|e| StartError::Config(format!("driver thread: {e}")))?;
        let admission = Arc::new(Admission::new());
        let mut threads = vec![thread, writer, lines];
        if config.flow_control {
            let shared_f = Arc::clone(&shared);
            let committed = move || shared_f.answered_commands.load(Ordering::Relaxed);
            let sampler =
                flow::start(Arc::clone(&store), committed, Arc::clone(&admission), writer_gone)
                    .map_err(|e| StartError::Config(format!("flow control thread: {e}")))?;
            threads.push(sampler);
        }
        Ok(ClusterNode {
            inputs: inputs_tx,
            queued,
            queue_max: config.queue_commands_max,
            batch_max: config.ledger.batch_commands_max,
            admission,
            store,
            shared,
            sites: config.sites,
            site_id: config.site_id,
            threads: Mutex::new(threads),
        })
    }

    fn send(&self, input: Input, n: usize) -> Result<(), NodeError> {
        admit_and_send(&self.queued, self.queue_max, &self.inputs, input, n)
    }

    /// Replicates `commands` as part of the next entry and returns their results once the entry
    /// is committed (durable on two sites) and applied here.
    pub async fn execute(&self, commands: Vec<Command>) -> Result<Vec<ResultCode>, NodeError> {
        let n = commands.len();
        if n > self.batch_max {
            return Err(NodeError::TooLarge { commands: n, max: self.batch_max });
        }
        if self.shared.leader.load(Ordering::Acquire) == self.site_id {
            // A standby's own storage does not refuse a write: it answers "not primary".
            self.admission.admit(n)?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(Input::Commands { commands, reply }, n.max(1))?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    pub async fn lookup_accounts(&self, ids: Vec<u128>) -> Result<Vec<Account>, NodeError> {
        let (reply, rx) = oneshot::channel();
        let n = ids.len().max(1);
        self.send(Input::LookupAccounts { ids, reply }, n)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    pub async fn lookup_transfers(&self, ids: Vec<u128>) -> Result<Vec<Transfer>, NodeError> {
        let (reply, rx) = oneshot::channel();
        let n = ids.len().max(1);
        self.send(Input::LookupTransfers { ids, reply }, n)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    pub async fn status(&self) -> Result<ClusterStatus, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Status { reply }, 1)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    pub async fn switchover(&self, to: u64) -> Result<SwitchoverDone, NodeError> {
        if !self.sites.iter().any(|s| s.id == to) {
            return Err(NodeError::Invalid(format!("to_site: there is no site {to}")));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Input::Switchover { to, reply }, 1)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// A page of an account's statement, from this site's storage. Only the primary answers:
    /// a standby's statement may lag.
    pub fn history(
        &self,
        account: u128,
        from: Timestamp,
        limit: usize,
    ) -> Result<HistoryPage, NodeError> {
        if self.shared.leader.load(Ordering::Acquire) != self.site_id {
            return Err(self.not_leader());
        }
        let written = self.shared.applied_index.load(Ordering::Relaxed);
        if written < self.shared.reads_index.load(Ordering::Relaxed) {
            // A new primary whose statement writer is still writing what was committed before
            // it took over.
            return Err(NodeError::Busy("this new primary is still writing statements".into()));
        }
        self.store.history(account, from, limit).map_err(|e| NodeError::Storage(e.to_string()))
    }

    fn not_leader(&self) -> NodeError {
        let leader = *self.shared.known_leader.lock();
        not_leader(&self.sites, leader)
    }

    /// Hands raft messages from a peer to the driver, unless too many are waiting.
    pub fn step(&self, from: u64, messages: Vec<Message>) -> Result<(), NodeError> {
        if !self.sites.iter().any(|s| s.id == from && s.id != self.site_id) {
            return Err(NodeError::Invalid(format!(
                "from_site: {from} is not a peer of this site"
            )));
        }
        if let Some(m) = messages.iter().find(|m| m.from != from || m.to != self.site_id) {
            return Err(NodeError::Invalid(format!(
                "a message from {} to {} in a request from site {from} to site {}",
                m.from, m.to, self.site_id
            )));
        }
        let n = messages.len();
        let waiting = self.shared.inbox.fetch_add(n, Ordering::Relaxed) + n;
        if waiting > PEER_INBOX_MESSAGES_MAX {
            self.shared.inbox.fetch_sub(n, Ordering::Relaxed);
            return Err(NodeError::Overloaded {
                queued: waiting - n,
                max: PEER_INBOX_MESSAGES_MAX,
            });
        }
        self.inputs.send(Input::Peer(messages)).map_err(|_| {
            self.shared.inbox.fetch_sub(n, Ordering::Relaxed);
            NodeError::Stopped
        })
    }

    pub fn applied_index(&self) -> u64 {
        self.shared.applied_index.load(Ordering::Relaxed)
    }

    /// Stops the driver (answering what is queued with `Stopped` or `NotLeader`), the
    /// statement writer (which answers what was applied first) and the lines writer (which
    /// writes what is staged), and joins them.
    pub fn shutdown(&self) {
        let _ = self.inputs.send(Input::Shutdown);
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a site thread panicked");
            }
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn not_leader(sites: &[Site], leader: Option<u64>) -> NodeError {
    let address = leader.and_then(|id| sites.iter().find(|s| s.id == id)).map(|s| s.api.clone());
    NodeError::NotLeader { leader, address }
}

fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn now_nanos() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// Stages the statement lines of applied rounds in order and then answers their callers; stops
/// when the driver does, after the rounds already handed over. Every `every` commands' worth of
/// lines it signals the lines writer, and it waits for it when twice that is staged and a write
/// is still running: what is staged is bounded.
fn write_statements(
    store: &Store,
    rounds: &Receiver<Statements>,
    shared: &Shared,
    answers_relay: &Relay<(ResultsTx, Vec<ResultCode>)>,
    lines: &Sender<()>,
    every: u64,
) {
    let lines_every = usize::try_from(every.saturating_mul(2)).unwrap_or(usize::MAX);
    while let Ok(mut round) = rounds.recv() {
        // Rounds waiting meanwhile are staged together, as one larger round (the driver hands
        // over a round for every slice it applies). An account's later copy supersedes its
        // earlier one, as within a round, so the running balances come out the same.
        let mut answers = std::mem::take(&mut round.answers);
        for _ in 1..STATEMENT_ROUNDS_MAX {
            let Ok(next) = rounds.try_recv() else { break };
            round.index = next.index;
            round.changes.accounts.extend(next.changes.accounts);
            round.changes.transfers.extend(next.changes.transfers);
            if next.changes.profiles.is_some() {
                round.changes.profiles = next.changes.profiles;
            }
            answers.extend(next.answers);
        }
        let started = Instant::now();
        if let Err(e) = store.stage_statements(round.index, &round.changes) {
            tracing::error!(error = %e, "staging statements failed; stopping");
            eprintln!("hazinad: staging statements failed: {e}; stopping");
            std::process::abort();
        }
        metrics::histogram!("hazina_state_write_seconds").record(started.elapsed().as_secs_f64());
        shared.applied_index.store(round.index, Ordering::Release);
        metrics::gauge!("hazina_applied_index").set(round.index as f64);
        let answered: usize = answers.iter().map(|(_, results)| results.len()).sum();
        shared.answered_commands.fetch_add(answered as u64, Ordering::Relaxed);
        answers_relay.send(answers);
        let staged = store.staged_lines();
        if staged >= lines_every {
            match lines.try_send(()) {
                Ok(()) | Err(TrySendError::Disconnected(())) => {}
                Err(TrySendError::Full(())) if staged >= 2 * lines_every => {
                    // The lines writer falls behind, and what waits for it is held in memory:
                    // wait until it takes the next signal.
                    let started = Instant::now();
                    let _ = lines.send(());
                    tracing::warn!(
                        seconds = started.elapsed().as_secs_f64(),
                        "statements waited for the lines writer"
                    );
                }
                Err(TrySendError::Full(())) => {}
            }
        }
    }
    shared.statements_stopped.store(true, Ordering::Release);
}

/// Writes the staged statement lines to RocksDB at each signal, and once more when the
/// statement writer stops.
fn write_lines(store: &Store, signals: &Receiver<()>) {
    let write = |why: &str| {
        if let Err(e) = write_staged_lines(store, why) {
            tracing::error!(error = %e, "writing statement lines failed; stopping");
            eprintln!("hazinad: writing statement lines failed: {e}; stopping");
            std::process::abort();
        }
    };
    while signals.recv().is_ok() {
        write("staged");
    }
    write("shutdown");
}

/// Waits until the statement writer has staged the lines of every entry up to `index`, then
/// has them written: a snapshot at `index` may be kept (and the log behind it compacted) only
/// then, since a restart replays only the entries after the kept snapshot.
fn write_lines_through(store: &Store, shared: &Shared, index: u64) -> Result<(), String> {
    while shared.applied_index.load(Ordering::Acquire) < index {
        if shared.statements_stopped.load(Ordering::Acquire) {
            return Err(format!("the statement writer stopped before entry {index}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    write_staged_lines(store, "snapshot").map_err(|e| format!("statement lines: {e}"))
}

/// [`Store::write_staged_lines`], logged.
fn write_staged_lines(store: &Store, why: &str) -> Result<(), hazina_store::StoreError> {
    let started = Instant::now();
    let written = store.write_staged_lines()?;
    if written.lines > 0 {
        metrics::gauge!("hazina_statements_written_index").set(written.index as f64);
        tracing::info!(
            index = written.index,
            why,
            lines = written.lines,
            seconds = started.elapsed().as_secs_f64(),
            "statement lines written"
        );
    }
    Ok(())
}

/// Sends one peer its messages, in order, batching what queued meanwhile. A failed call is
/// reported so that raft backs off from the peer (and resends a snapshot it lost).
async fn send_to_peer(
    from: u64,
    to: u64,
    mut client: PeerClient<Channel>,
    mut queue: mpsc::Receiver<Message>,
    reports: Sender<Input>,
) {
    let mut batch = Vec::with_capacity(PEER_BATCH_MESSAGES_MAX);
    while queue.recv_many(&mut batch, PEER_BATCH_MESSAGES_MAX).await > 0 {
        let snapshot = batch.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let request = StepRequest {
            from_site: from,
            messages: batch.iter().map(|m| wire::encode(m).into()).collect(),
        };
        batch.clear();
        let mut request = tonic::Request::new(request);
        request.set_timeout(if snapshot {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(1)
        });
        let outcome: Result<tonic::Response<StepReply>, tonic::Status> = client.step(request).await;
        let report = match outcome {
            Ok(_) if snapshot => Some(Input::SnapshotDelivered { to }),
            Ok(_) => None,
            Err(status) => {
                tracing::debug!(to, code = ?status.code(), "peer unreachable");
                metrics::counter!("hazina_peer_send_failures_total", "to" => to.to_string())
                    .increment(1);
                Some(Input::Unreachable { to, snapshot })
            }
        };
        if let Some(report) = report
            && reports.send(report).is_err()
        {
            return;
        }
    }
}

/// Queues `message` for its peer; a full queue (or an unknown peer) gives back the peer and
/// whether the message was a snapshot, for raft to hear of.
fn send_to(peers: &HashMap<u64, mpsc::Sender<Message>>, message: Message) -> Option<(u64, bool)> {
    let to = message.to;
    let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
    let sent = peers.get(&to).is_some_and(|tx| tx.try_send(message).is_ok());
    (!sent).then_some((to, snapshot))
}

/// An entry this leader proposed and the callers waiting for it.
struct PendingEntry {
    term: u64,
    calls: Vec<(ResultsTx, std::ops::Range<usize>)>,
    creating: usize,
}

#[derive(Default)]
struct Round {
    commands: Vec<Command>,
    calls: Vec<(ResultsTx, std::ops::Range<usize>)>,
    creating: usize,
    taken: usize,
    /// A request did not fit in the round's entry: it waits at the front of `held`.
    full: bool,
    stop: bool,
}

struct SwitchoverWait {
    to: u64,
    started: Instant,
    reply: oneshot::Sender<Result<SwitchoverDone, NodeError>>,
}

enum Read {
    Accounts(Vec<u128>, oneshot::Sender<Result<Vec<Account>, NodeError>>),
    Transfers(Vec<u128>, oneshot::Sender<Result<Vec<Transfer>, NodeError>>),
}

struct Driver {
    replica: Replica<RaftLog>,
    /// For the snapshot thread, which has the statement lines written up to its entry.
    store: Arc<Store>,
    /// To the statement writer, which answers the callers of applied entries.
    statements: Sender<Statements>,
    inputs: Receiver<Input>,
    peers: HashMap<u64, mpsc::Sender<Message>>,
    queued: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    sites: Vec<Site>,
    site_id: u64,
    tick: Duration,
    batch_max: usize,
    /// By log index.
    pending: BTreeMap<u64, PendingEntry>,
    /// Reads that arrived before this new primary applied an entry of its term.
    deferred_reads: Vec<Read>,
    /// The term in which this site, as primary, applied an entry of its own: reads are served
    /// when it equals the current term.
    reads_term: u64,
    switchover: Option<SwitchoverWait>,
    preferred_site: u64,
    hand_back_after: Option<Duration>,
    /// Since when the preferred site has been up to date, while this site is a primary that
    /// would hand back to it.
    preferred_up_to_date_since: Option<Instant>,
    /// A hand-back under way, since when.
    handing_back: Option<Instant>,
    last_role: (StateRole, Option<u64>, u64),
    last_change: String,
    last_change_unix_ms: u64,
    /// Commands held for a later round, oldest first: one that did not fit in the last
    /// round's entry, and those that came while the apply was behind
    /// ([`Driver::applying_behind`]).
    held: VecDeque<Input>,
    /// What recovery's first ready produced: sent and stored in the first round.
    early: Output,
    /// For the snapshot thread's report.
    reports: Sender<Input>,
    /// Snapshots from the primary installed since start.
    snapshots_installed: u64,
}

impl Driver {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        let early = std::mem::take(&mut self.early);
        self.finish_ready(early);
        loop {
            let mut round = Round::default();
            let first = match self.unheld() {
                Some(input) => Some(input),
                None => match self.inputs.recv_timeout(if self.replica.apply_backlog().0 > 0 {
                    // Committed entries wait: take what came meanwhile and apply on.
                    Duration::ZERO
                } else {
                    next_tick.saturating_duration_since(Instant::now())
                }) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if let Some(input) = first {
                self.take(&mut round, input);
            }
            let mut taken = 1;
            while !round.full && !round.stop && taken < ROUND_INPUTS_MAX {
                if let Some(input) = self.unheld() {
                    self.take(&mut round, input);
                } else {
                    match self.inputs.try_recv() {
                        Ok(input) => self.take(&mut round, input),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                taken += 1;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.replica.tick();
                self.consider_hand_back();
                next_tick += self.tick;
                if next_tick < now {
                    // Far behind (a long write): tick once, not a burst that would read as a
                    // long silence from the leader.
                    next_tick = now + self.tick;
                }
            }
            self.queued.fetch_sub(round.taken, Ordering::Relaxed);
            metrics::gauge!("hazina_queue_commands")
                .set(self.queued.load(Ordering::Relaxed) as f64);
            let stop = round.stop;
            self.propose(round);
            self.ready();
            if stop {
                break;
            }
        }
        let leader = self.replica.status().leader;
        for (_, entry) in std::mem::take(&mut self.pending) {
            for (reply, _) in entry.calls {
                let _ = reply.send(Err(NodeError::Stopped));
            }
        }
        for input in std::mem::take(&mut self.held) {
            if let Input::Commands { reply, .. } = input {
                let _ = reply.send(Err(NodeError::Stopped));
            }
        }
        for read in std::mem::take(&mut self.deferred_reads) {
            self.refuse_read(read, &not_leader(&self.sites, leader));
        }
        tracing::info!(site = self.site_id, "driver stopped");
    }

    /// Whether more committed entries wait to be applied than APPLY_BACKLOG_BYTES_MAX: new
    /// commands are then held back, not proposed (they stay counted in the queue, which
    /// refuses callers once it is full), so that the entries waiting stay bounded and a round
    /// stays short.
    fn applying_behind(&self) -> bool {
        self.replica.apply_backlog().1 > APPLY_BACKLOG_BYTES_MAX
    }

    /// The oldest command held, unless the apply is behind.
    fn unheld(&mut self) -> Option<Input> {
        if self.held.is_empty() || self.applying_behind() {
            return None;
        }
        self.held.pop_front()
    }

    fn take(&mut self, round: &mut Round, input: Input) {
        match input {
            Input::Commands { commands, reply } if self.applying_behind() => {
                // Inputs come from `held` before the channel once the apply caught up
                // (`unheld`), so commands keep their order.
                self.held.push_back(Input::Commands { commands, reply });
            }
            Input::Commands { commands, reply } => {
                if !round.commands.is_empty()
                    && round.commands.len() + commands.len() > self.batch_max
                {
                    self.held.push_front(Input::Commands { commands, reply });
                    round.full = true;
                    return;
                }
                round.taken += commands.len().max(1);
                if commands.is_empty() {
                    let _ = reply.send(Ok(Vec::new()));
                    return;
                }
                let creating =
                    commands.iter().filter(|c| matches!(c, Command::CreateAccount(_))).count();
                let ledger = self.replica.ledger();
                let accounts = ledger.accounts_count();
                let in_flight: usize = self.pending.values().map(|p| p.creating).sum();
                let max = ledger.config().accounts_max;
                if creating > 0 && accounts + in_flight + round.creating + creating > max {
                    let _ = reply.send(Err(NodeError::AccountsFull { accounts, max }));
                    return;
                }
                round.creating += creating;
                let start = round.commands.len();
                round.commands.extend(commands);
                round.calls.push((reply, start..round.commands.len()));
            }
            Input::LookupAccounts { ids, reply } => {
                round.taken += ids.len().max(1);
                self.read(Read::Accounts(ids, reply));
            }
            Input::LookupTransfers { ids, reply } => {
                round.taken += ids.len().max(1);
                self.read(Read::Transfers(ids, reply));
            }
            Input::Status { reply } => {
                round.taken += 1;
                let _ = reply.send(self.status());
            }
            Input::Switchover { to, reply } => {
                round.taken += 1;
                self.start_switchover(to, reply);
            }
            Input::Peer(messages) => {
                self.shared.inbox.fetch_sub(messages.len(), Ordering::Relaxed);
                for message in messages {
                    // Stale and unknown messages are raft's to drop.
                    if let Err(e) = self.replica.step(message) {
                        tracing::debug!(error = %e, "peer message dropped");
                    }
                }
            }
            Input::Unreachable { to, snapshot } => {
                self.replica.report_unreachable(to);
                if snapshot {
                    self.replica.report_snapshot(to, false);
                }
            }
            Input::SnapshotDelivered { to } => self.replica.report_snapshot(to, true),
            Input::SnapshotEncoded(Ok(done)) => {
                let (job, data) = *done;
                let index = job.index;
                if let Err(e) = self.replica.finish_snapshot(job, data) {
                    tracing::error!(error = %e, "keeping a snapshot failed; stopping");
                    eprintln!("hazinad: keeping a snapshot failed: {e}; stopping");
                    std::process::abort();
                }
                tracing::info!(index, "snapshot kept; log compacted behind it");
            }
            Input::SnapshotEncoded(Err(e)) => {
                tracing::error!(error = %e, "a snapshot could not be written; the next is tried when due");
                self.replica.abandon_snapshot();
            }
            Input::Shutdown => round.stop = true,
        }
    }

    fn read(&mut self, read: Read) {
        let status = self.replica.status();
        if status.role != StateRole::Leader {
            self.refuse_read(read, &not_leader(&self.sites, status.leader));
        } else if self.reads_term != status.term {
            self.deferred_reads.push(read);
        } else {
            self.answer_read(read);
        }
    }

    fn refuse_read(&self, read: Read, error: &NodeError) {
        let _ = match read {
            Read::Accounts(_, reply) => reply.send(Err(error.clone())).map_err(drop),
            Read::Transfers(_, reply) => reply.send(Err(error.clone())).map_err(drop),
        };
    }

    fn answer_read(&self, read: Read) {
        let ledger = self.replica.ledger();
        let _ = match read {
            Read::Accounts(ids, reply) => {
                let found = ids.iter().filter_map(|&id| ledger.account(id)).collect();
                reply.send(Ok(found)).map_err(drop)
            }
            Read::Transfers(ids, reply) => {
                // Every record is resident on a replicated site (ClusterConfig::check).
                let found = ids.iter().filter_map(|&id| ledger.transfer(id)).collect();
                reply.send(Ok(found)).map_err(drop)
            }
        };
    }

    fn status(&self) -> ClusterStatus {
        let replica = self.replica.status();
        let ledger = self.replica.ledger();
        let leader_address = replica
            .leader
            .and_then(|id| self.sites.iter().find(|s| s.id == id))
            .map(|s| s.api.clone());
        ClusterStatus {
            site_id: self.site_id,
            replica,
            leader_address,
            digest: ledger.digest(),
            accounts: ledger.accounts_count() as u64,
            timestamp_last: ledger.timestamp_last(),
            queued_commands: self.queued.load(Ordering::Relaxed) as u64,
            progress: self.replica.progress(),
            last_change: self.last_change.clone(),
            last_change_unix_ms: self.last_change_unix_ms,
            snapshots_installed: self.snapshots_installed,
        }
    }

    /// On a primary that is not the preferred site and got there by an election: once the
    /// preferred site has been up to date for `hand_back_after`, hands the primary back to it,
    /// as a switchover would (ADR 0014). A primary an operator switched to stays.
    fn consider_hand_back(&mut self) {
        let Some(after) = self.hand_back_after else { return };
        if let Some(started) = self.handing_back {
            if started.elapsed() > SWITCHOVER_TIMEOUT {
                tracing::warn!(to = self.preferred_site, "the hand-back did not happen");
                self.handing_back = None;
            }
            return;
        }
        let would_hand_back = self.site_id != self.preferred_site
            && self.switchover.is_none()
            && self.replica.transferring_to().is_none()
            && !self.replica.leads_by_handover()
            && self.replica.is_up_to_date(self.preferred_site, HAND_BACK_LAG_MAX);
        if !would_hand_back {
            self.preferred_up_to_date_since = None;
            return;
        }
        let since = *self.preferred_up_to_date_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= after {
            tracing::info!(
                to = self.preferred_site,
                "handing the primary back to the preferred site"
            );
            self.preferred_up_to_date_since = None;
            self.handing_back = Some(Instant::now());
            self.replica.transfer_leader(self.preferred_site);
        }
    }

    fn start_switchover(
        &mut self,
        to: u64,
        reply: oneshot::Sender<Result<SwitchoverDone, NodeError>>,
    ) {
        let status = self.replica.status();
        if status.role != StateRole::Leader {
            let _ = reply.send(Err(not_leader(&self.sites, status.leader)));
            return;
        }
        if to == self.site_id {
            let done = SwitchoverDone { leader: to, term: status.term, pause: Duration::ZERO };
            let _ = reply.send(Ok(done));
            return;
        }
        if self.switchover.is_some() {
            let _ = reply.send(Err(NodeError::Busy("a switchover is already under way".into())));
            return;
        }
        tracing::info!(to, "switchover requested");
        self.replica.transfer_leader(to);
        self.switchover = Some(SwitchoverWait { to, started: Instant::now(), reply });
    }

    fn propose(&mut self, round: Round) {
        if round.commands.is_empty() {
            return;
        }
        match self.replica.propose(now_nanos(), round.commands) {
            Ok(proposal) => {
                self.pending.insert(
                    proposal.index,
                    PendingEntry {
                        term: proposal.term,
                        calls: round.calls,
                        creating: round.creating,
                    },
                );
            }
            Err(e) => {
                let error = match e {
                    ProposeError::NotLeader { leader } => not_leader(&self.sites, leader),
                    ProposeError::Busy(why) => NodeError::Busy(why),
                    ProposeError::Invalid(why) => NodeError::Invalid(why),
                };
                for (reply, _) in round.calls {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    fn ready(&mut self) {
        let mut out = Output::default();
        let started = Instant::now();
        let written_before = self.replica.log().write_time();
        // The log or the ledger cannot go on: stop, and let a restart recover from the log.
        let fail = |e: hazina_replica::ReplicaError| -> ! {
            tracing::error!(error = %e, "replica failed; stopping");
            eprintln!("hazinad: replica failed: {e}; stopping");
            std::process::abort();
        };
        // A primary's appends go out before its own log write, which they then overlap with
        // the standbys' writes.
        let mut unsent = Vec::new();
        let peers = &self.peers;
        let mut send = |messages: &mut Vec<Message>| {
            unsent.extend(messages.drain(..).filter_map(|m| send_to(peers, m)));
        };
        if let Err(e) = self.replica.handle_ready_sending(&mut out, 0, &mut send) {
            fail(e);
        }
        self.report_unsent(unsent);
        let raft = started.elapsed();
        let log_write = self.replica.log().write_time().saturating_sub(written_before);
        metrics::histogram!("hazina_raft_ready_seconds").record(raft.as_secs_f64());
        // Appends, and a standby's acknowledgements of what it just wrote, go out before the
        // apply: the entries commit without waiting for it.
        self.send_messages(std::mem::take(&mut out.messages));
        // Apply for about a tick (at least one entry), then go round again: the next round
        // ticks and sends heartbeats. A burst of committed entries (a standby behind, or
        // set-up's large batches on a busy machine) applied in one go held a primary's
        // heartbeats back for over a second, and the standbys elected another. The backlog
        // stays bounded: a primary past APPLY_BACKLOG_BYTES_MAX holds new commands back
        // (`applying_behind`); a standby, which cannot, applies down to it.
        let leads = self.replica.status().role == StateRole::Leader;
        let applying = Instant::now();
        loop {
            let (entries, bytes) = self.replica.apply_backlog();
            let sliced = applying.elapsed() >= self.tick && !out.applied.is_empty();
            if entries == 0 || (sliced && (leads || bytes <= APPLY_BACKLOG_BYTES_MAX)) {
                break;
            }
            if let Err(e) = self.replica.apply_queued(&mut out, 1) {
                fail(e);
            }
        }
        let apply = applying.elapsed();
        metrics::gauge!("hazina_apply_backlog_entries").set(self.replica.apply_backlog().0 as f64);
        self.finish_ready(out);
        if self.replica.snapshot_due() {
            // A primary's copy holds up every write (seconds for a large ledger on a busy
            // machine, long enough for an election); a standby's holds up only itself. So the
            // primary puts its snapshot off, up to twice the interval, while the standbys take
            // theirs.
            let leads = self.replica.status().role == StateRole::Leader;
            if !leads || self.replica.snapshot_overdue() {
                self.start_snapshot();
            }
        }
        let round = started.elapsed();
        if round > self.tick * 5 {
            // Longer than a few ticks keeps heartbeats from the standbys: say where it went.
            tracing::warn!(
                raft_ms = raft.as_millis(),
                log_write_ms = log_write.as_millis(),
                apply_ms = apply.as_millis(),
                round_ms = round.as_millis(),
                "slow round: raft's ready (raft_ms, of which the log write, log_write_ms), the \
                 apply (apply_ms), then handing over the statements"
            );
        }
    }

    /// Hands raft's messages to the peers' senders; a full queue counts as unreachable.
    fn send_messages(&mut self, messages: Vec<Message>) {
        let unsent = messages.into_iter().filter_map(|m| send_to(&self.peers, m)).collect();
        self.report_unsent(unsent);
    }

    /// Tells raft of the peers whose queue was full: `(peer, whether a snapshot was lost)`.
    fn report_unsent(&mut self, unsent: Vec<(u64, bool)>) {
        for (to, snapshot) in unsent {
            self.replica.report_unreachable(to);
            if snapshot {
                self.replica.report_snapshot(to, false);
            }
        }
    }

    fn finish_ready(&mut self, mut out: Output) {
        self.send_messages(std::mem::take(&mut out.messages));
        if let Some((index, digest)) = out.installed_snapshot {
            self.snapshots_installed += 1;
            metrics::counter!("hazina_snapshots_installed_total").increment(1);
            tracing::info!(index, digest = format!("{digest:032x}"), "installed a snapshot");
        }
        let mut statements = (!out.applied.is_empty()).then(|| self.take_statements(&out));
        if let Some((index, _)) = out.installed_snapshot {
            // Through the statement writer, in order: it has then staged everything up to the
            // snapshot's entry that this site will ever stage (the lines of the entries the
            // snapshot covers and this site never applied are not on this site).
            let round = statements.get_or_insert_with(|| Statements {
                index,
                changes: Changes::default(),
                answers: Vec::new(),
            });
            round.index = round.index.max(index);
        }
        let status = self.replica.status();
        for applied in out.applied {
            if status.role == StateRole::Leader && applied.term == status.term {
                self.reads_term = status.term;
            }
            let Some(entry) = self.pending.remove(&applied.index) else { continue };
            if entry.term != applied.term || !applied.acknowledged {
                // Another leader's entry took this index: the proposal was lost.
                let error = not_leader(&self.sites, status.leader);
                for (reply, _) in entry.calls {
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            }
            if let Some(refused) = applied.refused {
                let error = NodeError::Refused(refused.to_string());
                for (reply, _) in entry.calls {
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            }
            // Counted where callers are answered, once for the group: the sum over the sites
            // of the outcomes they answered is what every caller was told.
            count_outcomes(&applied.results, applied.summary.transfers_ok);
            let answers = &mut statements.as_mut().expect("taken for applied entries").answers;
            for (reply, range) in entry.calls {
                answers.push((reply, applied.results[range].to_vec()));
            }
        }
        if let Some(statements) = statements
            && self.statements.send(statements).is_err()
        {
            tracing::error!("the statement writer stopped");
        }
        self.after_changes(status);
    }

    /// Copies the ledger for a snapshot and encodes and writes it on a thread of its own: the
    /// encoding takes about a second for a million accounts, which the driver must not spend
    /// (heartbeats would stop). The copy itself is taken here, between two rounds.
    fn start_snapshot(&mut self) {
        let started = Instant::now();
        let job = match self.replica.begin_snapshot() {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, "a snapshot could not begin");
                return;
            }
        };
        tracing::info!(
            index = job.index,
            copy_ms = started.elapsed().as_millis(),
            "snapshot begun; encoding it in the background"
        );
        let dir = self.replica.log().dir().to_owned();
        let report = self.reports.clone();
        let (store, shared) = (Arc::clone(&self.store), Arc::clone(&self.shared));
        let spawned = std::thread::Builder::new().name("hazina-snapshot".into()).spawn(move || {
            let mut job = job;
            let data = job.encode();
            let outcome = hazina_store::write_snapshot_file(&dir, job.index, &data)
                .map_err(|e| format!("{}: {e}", dir.display()))
                .and_then(|()| write_lines_through(&store, &shared, job.index))
                .map(|()| Box::new((job, data)));
            let _ = report.send(Input::SnapshotEncoded(outcome));
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no snapshot thread");
            self.replica.abandon_snapshot();
        }
    }

    /// What the applied entries changed, for the statement writer, which writes their
    /// statement lines and then answers their callers (so that `GetAccountHistory` finds a
    /// transfer once its caller heard of it). The driver does not wait for the write: a round
    /// that wrote the statements of 8,000 transfers took long enough, under load on two cores,
    /// to miss heartbeats and call elections (docs/BENCHMARKS.md).
    fn take_statements(&mut self, out: &Output) -> Statements {
        let mut changes = Changes::default();
        self.replica.take_changes(&mut changes.accounts, &mut changes.transfers);
        let index = out.applied.last().expect("called with applied entries").index;
        for applied in out.applied.iter().filter(|a| a.refused.is_none()) {
            if applied.summary.commands > 0 {
                metrics::histogram!("hazina_batch_commands")
                    .record(applied.summary.commands as f64);
            }
        }
        Statements { index, changes, answers: Vec::new() }
    }

    /// Notices changes of role and primary, fails what a lost leadership cannot answer, and
    /// finishes a switchover.
    fn after_changes(&mut self, status: ReplicaStatus) {
        let now = (status.role, status.leader, status.term);
        if now != self.last_role {
            let (was_role, was_leader, _) = self.last_role;
            self.last_role = now;
            *self.shared.known_leader.lock() = status.leader;
            metrics::gauge!("hazina_term").set(status.term as f64);
            metrics::gauge!("hazina_is_primary").set(if status.role == StateRole::Leader {
                1.0
            } else {
                0.0
            });
            if status.leader != was_leader && status.leader.is_some() {
                let leader = status.leader.unwrap_or(0);
                let by_operator = self.switchover.as_ref().is_some_and(|s| s.to == leader)
                    || (was_role == StateRole::Leader && self.switchover.is_some());
                let handed_back =
                    self.handing_back.take().is_some() && leader == self.preferred_site;
                self.last_change = if by_operator {
                    format!(
                        "switchover to site {leader} in term {} requested by an operator",
                        status.term
                    )
                } else if handed_back {
                    format!(
                        "handed back to the preferred site {leader} in term {}, up to date for \
                         {} s",
                        status.term,
                        self.hand_back_after.unwrap_or_default().as_secs()
                    )
                } else if leader == self.site_id && self.replica.leads_by_handover() {
                    format!(
                        "site {leader} took over in term {}, handed over by the primary",
                        status.term
                    )
                } else {
                    format!("site {leader} elected in term {}", status.term)
                };
                self.last_change_unix_ms = unix_ms();
                tracing::info!(leader, term = status.term, change = %self.last_change, "primary changed");
            }
            if status.role != StateRole::Leader {
                // Entries proposed here may still commit under the new leader, or may not:
                // the callers resend with the same ids, which is safe either way.
                let error = not_leader(&self.sites, status.leader);
                for (_, entry) in std::mem::take(&mut self.pending) {
                    for (reply, _) in entry.calls {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                for read in std::mem::take(&mut self.deferred_reads) {
                    self.refuse_read(read, &error);
                }
            }
        }
        let reads = status.role == StateRole::Leader && self.reads_term == status.term;
        let reader = if reads { self.site_id } else { 0 };
        if self.shared.leader.load(Ordering::Relaxed) != reader {
            if reads {
                self.shared.reads_index.store(status.applied_index, Ordering::Relaxed);
            }
            self.shared.leader.store(reader, Ordering::Release);
        }
        if reads {
            for read in std::mem::take(&mut self.deferred_reads) {
                self.answer_read(read);
            }
        }
        if let Some(wait) = self.switchover.take() {
            if status.leader == Some(wait.to) {
                let done = SwitchoverDone {
                    leader: wait.to,
                    term: status.term,
                    pause: wait.started.elapsed(),
                };
                tracing::info!(to = wait.to, pause_ms = done.pause.as_millis(), "switchover done");
                let _ = wait.reply.send(Ok(done));
            } else if wait.started.elapsed() > SWITCHOVER_TIMEOUT
                || (status.role != StateRole::Leader && status.leader.is_some())
            {
                let _ = wait.reply.send(Err(NodeError::Busy(format!(
                    "the switchover to site {} did not happen (primary now {:?})",
                    wait.to, status.leader
                ))));
            } else {
                self.switchover = Some(wait);
            }
        }
    }
}
