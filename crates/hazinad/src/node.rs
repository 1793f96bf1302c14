//! The node: a pure ledger between two threads.
//!
//! ```text
//!  gRPC handlers ──requests──▶ sequencer ──entries──▶ writer ──replies──▶ gRPC handlers
//!  (tokio tasks)              (one thread)           (one thread)
//!                             gathers requests       appends the entries to the log and
//!                             into one batch,        syncs once for all of them (group
//!                             prefetches records,    commit), answers their callers, then
//!                             applies it in memory   stages what they changed in the store
//!                                                    (a checkpoint thread writes it to
//!                                                    RocksDB, sorted, every
//!                                                    --checkpoint-every commands)
//! ```
//!
//! A caller gets its results only after the entry holding its commands is synced; statements
//! wait until its state is staged too ([`Node::statements_written`]). While the
//! writer syncs one group, the sequencer gathers and applies the next: the longer a sync takes,
//! the more requests the next entry carries. Reads go through the same queue and are answered
//! by the writer after everything applied before them is durable, so a read never shows a
//! state that a crash could take back.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::flow::{self, Admission};
use crate::relay::Relay;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use hazina_core::codec::{self, Entry};
use hazina_core::{
    Account, Command, HistoryPage, Ledger, LedgerConfig, ResultCode, Timestamp, Transfer,
};
use hazina_store::{Applied, Changes, Store, StoreError, StoreOptions};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

/// How a node runs. `hazinad --help` documents each as a flag.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub ledger: LedgerConfig,
    /// How long the sequencer waits for more requests once it has one; zero takes only what is
    /// already queued (the writer's sync time batches requests by itself).
    pub batch_wait: Duration,
    /// Commands queued and not yet in an entry beyond which requests are refused
    /// (`RESOURCE_EXHAUSTED`).
    pub queue_commands_max: usize,
    /// Commands applied between checkpoints: bounds what a restart after a crash replays, and
    /// the changes the store holds in memory until a checkpoint writes them (at most about
    /// six times this many commands' worth, while checkpoints fall behind).
    pub checkpoint_every: u64,
    /// Entries kept in the log behind a checkpoint.
    pub log_retain: u64,
    /// The leader epoch written into entries; 1 on a single site.
    pub term: u64,
    /// Slow the admission of writes when RocksDB's compactions fall behind ([`crate::flow`]);
    /// off, RocksDB delays the writes itself and callers wait.
    pub flow_control: bool,
    pub store: StoreOptions,
}

impl NodeConfig {
    pub fn new(data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            data_dir,
            ledger: LedgerConfig {
                track_changes: true,
                transfers_generation_max: 1_000_000,
                ..LedgerConfig::default()
            },
            batch_wait: Duration::ZERO,
            queue_commands_max: 262_144,
            checkpoint_every: 2_000_000,
            log_retain: 1_000,
            term: 1,
            flow_control: true,
            store: StoreOptions::default(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let batch_max = self.ledger.batch_commands_max;
        if self.ledger.transfers_generation_max != 0
            && self.ledger.transfers_generation_max < 16 * batch_max
        {
            // Records of entries still on their way to storage must stay resident.
            return Err(format!(
                "transfers generation ({}) must be 0 or at least 16 batches ({})",
                self.ledger.transfers_generation_max,
                16 * batch_max
            ));
        }
        if self.queue_commands_max < batch_max {
            return Err("the queue must hold at least one full batch".into());
        }
        if self.checkpoint_every == 0 {
            return Err("checkpoint_every must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a request got no results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeError {
    /// Too many commands queued: retry later (`RESOURCE_EXHAUSTED`).
    Overloaded { queued: usize, max: usize },
    /// Storage is behind the writes (RocksDB's compactions or flushes): writes are admitted at
    /// about `rate` commands a second, or none while `rate` is 0 (`RESOURCE_EXHAUSTED`, with
    /// `retry_after` as its `google.rpc.RetryInfo`).
    StorageBehind { rate: u64, why: String, retry_after: Duration },
    /// The ledger is full of accounts (`RESOURCE_EXHAUSTED`).
    AccountsFull { accounts: usize, max: usize },
    /// The request has more commands than one entry holds (`INVALID_ARGUMENT`).
    TooLarge { commands: usize, max: usize },
    /// The node is stopping or has stopped (`UNAVAILABLE`).
    Stopped,
    /// Storage failed while reading (`INTERNAL`).
    Storage(String),
    /// This site is a standby (`UNAVAILABLE`, naming the primary when known): send to the
    /// primary, with the same ids.
    NotLeader { leader: Option<u64>, address: Option<String> },
    /// The primary cannot take writes for a moment, for example during a switchover
    /// (`UNAVAILABLE`): retry.
    Busy(String),
    /// A request no site could carry out (`INVALID_ARGUMENT`).
    Invalid(String),
    /// The ledger refused the whole entry holding the request, on every site alike, and changed
    /// nothing (`FAILED_PRECONDITION`): for example it would pass the account limit.
    Refused(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Overloaded { queued, max } => {
                write!(f, "overloaded: {queued} commands queued, at most {max}; retry later")
            }
            NodeError::StorageBehind { rate: 0, why, .. } => {
                write!(
                    f,
                    "storage is behind ({why}): no writes admitted until it catches up; retry later"
                )
            }
            NodeError::StorageBehind { rate, why, .. } => write!(
                f,
                "storage is behind ({why}): writes admitted at about {rate} commands/s; retry later"
            ),
            NodeError::AccountsFull { accounts, max } => {
                write!(f, "the ledger holds {accounts} accounts, at most {max}")
            }
            NodeError::TooLarge { commands, max } => write!(
                f,
                "{commands} items exceed the node's batch size of {max} (--batch-max) per request"
            ),
            NodeError::Stopped => write!(f, "the node is stopping"),
            NodeError::Storage(e) => write!(f, "storage: {e}"),
            NodeError::NotLeader { leader: Some(id), address: Some(addr) } => {
                write!(f, "not the primary: site {id} is, at {addr}")
            }
            NodeError::NotLeader { leader: Some(id), address: None } => {
                write!(f, "not the primary: site {id} is")
            }
            NodeError::NotLeader { leader: None, .. } => {
                write!(f, "not the primary, and no primary is known yet: retry")
            }
            NodeError::Busy(why) => write!(f, "busy: {why}; retry"),
            NodeError::Invalid(why) => write!(f, "{why}"),
            NodeError::Refused(why) => write!(f, "refused by the ledger: {why}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// The node's state as `GetStatus` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub commit_index: u64,
    pub term: u64,
    pub digest: u128,
    pub accounts: u64,
    pub checkpoint_index: u64,
    pub timestamp_last: Timestamp,
    pub queued_commands: u64,
}

/// Where a request's results go.
type ResultsTx = oneshot::Sender<Result<Vec<ResultCode>, NodeError>>;

enum Request {
    Commands { commands: Vec<Command>, reply: ResultsTx },
    LookupAccounts { ids: Vec<u128>, reply: oneshot::Sender<Vec<Account>> },
    LookupTransfers { ids: Vec<u128>, reply: oneshot::Sender<Result<Vec<Transfer>, NodeError>> },
    Status { reply: oneshot::Sender<Status> },
    Shutdown,
}

enum Reply {
    Commands(ResultsTx, Vec<ResultCode>),
    Accounts(oneshot::Sender<Vec<Account>>, Vec<Account>),
    Transfers(oneshot::Sender<Result<Vec<Transfer>, NodeError>>, Result<Vec<Transfer>, NodeError>),
    Status(oneshot::Sender<Status>, Status),
}

impl Reply {
    fn send(self) {
        // A caller that gave up (deadline, disconnect) no longer listens: nothing to do.
        let _ = match self {
            Reply::Commands(tx, results) => tx.send(Ok(results)).map_err(drop),
            Reply::Accounts(tx, accounts) => tx.send(accounts).map_err(drop),
            Reply::Transfers(tx, transfers) => tx.send(transfers).map_err(drop),
            Reply::Status(tx, status) => tx.send(status).map_err(drop),
        };
    }
}

/// One applied entry on its way to disk, with the replies that wait for it.
struct Durable {
    entry: Option<StagedEntry>,
    replies: Vec<Reply>,
}

struct StagedEntry {
    index: u64,
    commands: u64,
    bytes: Vec<u8>,
    applied: Applied,
    changes: Changes,
}

#[derive(Debug, Default)]
struct Shared {
    commit_index: AtomicU64,
    checkpoint_index: AtomicU64,
    /// Commands in durable entries since start, for the flow control's rate.
    committed_commands: AtomicU64,
}

/// A running node. Handlers call it from any task; see the module documentation.
#[derive(Debug)]
pub struct Node {
    requests: Sender<Request>,
    queued: Arc<AtomicUsize>,
    queue_max: usize,
    admission: Arc<Admission>,
    store: Arc<Store>,
    shared: Arc<Shared>,
    /// The index whose state (statement lines among it) the writer has written.
    state_written: Arc<watch::Sender<u64>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    batch_max: usize,
}

/// A node that could not start.
#[derive(Debug)]
pub enum StartError {
    Config(String),
    Store(StoreError),
    Restore(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "configuration: {e}"),
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Restore(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> StartError {
        StartError::Store(e)
    }
}

impl Node {
    /// Opens the store, rebuilds the ledger from the last checkpoint and the log's tail, and
    /// starts the sequencer and writer threads. Logs its progress: with millions of accounts
    /// this takes seconds.
    pub fn start(config: NodeConfig) -> Result<Node, StartError> {
        config.check().map_err(StartError::Config)?;
        let started = Instant::now();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::Config(format!("{}: {e}", config.data_dir.display())))?;
        // A staged layer holds one checkpoint interval of commands and a little more while the
        // checkpoints keep up, and up to three when they fall behind (the writer then waits).
        // Past `STAGED_COMMANDS_SIZED` its lists grow as they fill: a very long interval must
        // not ask for more address space than the machine will map.
        let staged = config.checkpoint_every.saturating_mul(2).min(STAGED_COMMANDS_SIZED);
        let options = StoreOptions {
            staged_commands: usize::try_from(staged).unwrap_or(usize::MAX),
            ..config.store.clone()
        };
        let store = Arc::new(Store::open(&config.data_dir, &options)?);
        tracing::info!(path = %config.data_dir.display(), "loading checkpoint");
        let checkpoint = store.load_checkpoint(|accounts| {
            tracing::info!(accounts, "loading checkpoint: accounts read");
        })?;
        let applied = checkpoint.applied;
        let accounts = checkpoint.accounts.len();
        let mut ledger_config = config.ledger.clone();
        ledger_config.track_changes = true;
        ledger_config.accounts_capacity = ledger_config.accounts_capacity.max(accounts);
        let mut ledger = Ledger::restore(
            ledger_config,
            checkpoint.accounts,
            &checkpoint.profiles,
            checkpoint.holds,
            applied.transfers_digest,
            applied.timestamp_last,
        )
        .map_err(|e| StartError::Restore(e.to_string()))?;
        tracing::info!(
            index = applied.index,
            accounts,
            seconds = started.elapsed().as_secs_f64(),
            "checkpoint loaded; replaying the log's tail"
        );
        let tail = store.entries_after(applied.index)?;
        let replayed = tail.len();
        let mut last = applied;
        for entry in tail {
            let (_, changes) =
                apply_entry(&mut ledger, &store, entry.timestamp, &entry.commands)
                    .map_err(|e| StartError::Restore(format!("entry {}: {e}", entry.index)))?;
            last = Applied {
                index: entry.index,
                term: entry.term,
                transfers_digest: ledger.transfers_digest(),
                timestamp_last: ledger.timestamp_last(),
            };
            store.write_state(&last, &changes)?;
            if entry.index % 10_000 == 0 {
                tracing::info!(index = entry.index, "replaying");
            }
        }
        let commit_index = last.index.max(store.last_index()?);
        store.start_compactions()?;
        store.start_reading_known_ids()?;
        tracing::info!(
            replayed,
            commit_index,
            digest = format!("{:032x}", ledger.digest()),
            seconds = started.elapsed().as_secs_f64(),
            "recovered"
        );

        let shared = Arc::new(Shared::default());
        shared.commit_index.store(commit_index, Ordering::Relaxed);
        shared.checkpoint_index.store(applied.index, Ordering::Relaxed);
        let state_written = Arc::new(watch::Sender::new(commit_index));
        let queued = Arc::new(AtomicUsize::new(0));
        let (requests_tx, requests_rx) = crossbeam_channel::unbounded();
        // Two entries in flight: one syncing, one ready. More would only add latency.
        let (durable_tx, durable_rx) = crossbeam_channel::bounded(2);
        let (checkpoint_tx, checkpoint_rx) = crossbeam_channel::bounded(1);
        // The writer holds the sender: the sampler stops when the writer does.
        let (writer_alive, writer_gone) = crossbeam_channel::bounded::<()>(0);
        let admission = Arc::new(Admission::new());
        let mut threads = Vec::new();
        let sequencer = Sequencer {
            ledger,
            store: Arc::clone(&store),
            requests: requests_rx,
            durable: durable_tx,
            queued: Arc::clone(&queued),
            shared: Arc::clone(&shared),
            next_index: commit_index + 1,
            term: config.term,
            batch_wait: config.batch_wait,
        };
        threads.push(spawn("hazina-sequencer", move || sequencer.run()));
        let writer = Writer {
            store: Arc::clone(&store),
            durable: durable_rx,
            checkpoint: checkpoint_tx,
            shared: Arc::clone(&shared),
            state_written: Arc::clone(&state_written),
            checkpoint_every: config.checkpoint_every,
            answers: Relay::start(tokio::runtime::Handle::try_current().ok().as_ref(), Reply::send),
            _alive: writer_alive,
        };
        threads.push(spawn("hazina-writer", move || writer.run()));
        if config.flow_control {
            let shared_f = Arc::clone(&shared);
            let committed = move || shared_f.committed_commands.load(Ordering::Relaxed);
            let sampler =
                flow::start(Arc::clone(&store), committed, Arc::clone(&admission), writer_gone);
            threads.push(sampler.expect("spawn a node thread"));
        }
        let (store_c, shared_c, retain) =
            (Arc::clone(&store), Arc::clone(&shared), config.log_retain);
        threads.push(spawn("hazina-checkpoint", move || {
            checkpointer(&store_c, &checkpoint_rx, &shared_c, retain);
        }));
        Ok(Node {
            requests: requests_tx,
            queued,
            queue_max: config.queue_commands_max,
            admission,
            store,
            shared,
            state_written,
            threads: Mutex::new(threads),
            batch_max: config.ledger.batch_commands_max,
        })
    }

    fn send(&self, request: Request, n: usize) -> Result<(), NodeError> {
        admit_and_send(&self.queued, self.queue_max, &self.requests, request, n)
    }

    /// Applies `commands` as part of the next entry and returns their results once that entry
    /// is synced. The commands of one call stay together and in order in one entry.
    pub async fn execute(&self, commands: Vec<Command>) -> Result<Vec<ResultCode>, NodeError> {
        let n = commands.len();
        if n > self.batch_max {
            // A request is never split across entries, so it must fit in one.
            return Err(NodeError::TooLarge { commands: n, max: self.batch_max });
        }
        self.admission.admit(n)?;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Commands { commands, reply }, n.max(1))?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    pub async fn lookup_accounts(&self, ids: Vec<u128>) -> Result<Vec<Account>, NodeError> {
        let (reply, rx) = oneshot::channel();
        let n = ids.len().max(1);
        self.send(Request::LookupAccounts { ids, reply }, n)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    pub async fn lookup_transfers(&self, ids: Vec<u128>) -> Result<Vec<Transfer>, NodeError> {
        let (reply, rx) = oneshot::channel();
        let n = ids.len().max(1);
        self.send(Request::LookupTransfers { ids, reply }, n)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    pub async fn status(&self) -> Result<Status, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Status { reply }, 1)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Waits until the statement lines of every acknowledged entry are in the store (staged in
    /// memory or written by a checkpoint, [`Store::history`] reads both): the writer
    /// answers callers as soon as their entry is synced and stages its state after, so a
    /// statement asked for right after a reply waits the few microseconds that takes.
    pub async fn statements_written(&self) -> Result<(), NodeError> {
        let acknowledged = self.commit_index();
        let mut written = self.state_written.subscribe();
        written.wait_for(|&index| index >= acknowledged).await.map_err(|_| NodeError::Stopped)?;
        Ok(())
    }

    /// A page of an account's statement, from storage (durable entries only; see
    /// [`Node::statements_written`]).
    pub fn history(
        &self,
        account: u128,
        from: Timestamp,
        limit: usize,
    ) -> Result<HistoryPage, NodeError> {
        self.store.history(account, from, limit).map_err(|e| NodeError::Storage(e.to_string()))
    }

    pub fn commit_index(&self) -> u64 {
        self.shared.commit_index.load(Ordering::Relaxed)
    }

    /// Stops taking requests, answers everything already queued, writes a checkpoint and
    /// joins the threads.
    pub fn shutdown(&self) {
        let _ = self.requests.send(Request::Shutdown);
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a node thread panicked");
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counts `n` commands into `queued` and sends `item`, unless that would pass `max` (the caller
/// is told `Overloaded`, never kept waiting) or the receiver stopped. Both kinds of node admit
/// requests this way.
pub(crate) fn admit_and_send<T>(
    queued: &AtomicUsize,
    max: usize,
    channel: &Sender<T>,
    item: T,
    n: usize,
) -> Result<(), NodeError> {
    let now = queued.fetch_add(n, Ordering::Relaxed) + n;
    if now > max {
        queued.fetch_sub(n, Ordering::Relaxed);
        metrics::counter!("hazina_requests_rejected_total", "reason" => "overloaded").increment(1);
        return Err(NodeError::Overloaded { queued: now - n, max });
    }
    channel.send(item).map_err(|_| {
        queued.fetch_sub(n, Ordering::Relaxed);
        NodeError::Stopped
    })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(name.into()).spawn(f).expect("spawn a node thread")
}

/// A storage write failed: the ledger in memory is ahead of what is on disk and nothing
/// further can be made durable. Stop the process; a restart recovers from the log.
fn fail_stop(what: &str, error: &StoreError) -> ! {
    tracing::error!(%error, "{what} failed; stopping");
    eprintln!("hazinad: {what} failed: {error}; stopping");
    std::process::abort();
}

fn now_nanos() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// Loads back every record a batch names that left memory, then applies the batch and takes
/// what it changed. Shared by the sequencer and by recovery, so a replay prefetches exactly as
/// the first run did.
fn apply_entry(
    ledger: &mut Ledger,
    store: &Store,
    timestamp: Timestamp,
    commands: &[Command],
) -> Result<(Vec<ResultCode>, Changes), String> {
    store.load_named_records(ledger, commands).map_err(|e| e.to_string())?;
    let results = ledger.apply(timestamp, commands).map_err(|e| e.to_string())?;
    let mut changes = Changes::default();
    ledger.take_changes(&mut changes.accounts, &mut changes.transfers);
    if commands.iter().any(|c| matches!(c, Command::SetLimitProfile { .. })) {
        changes.profiles = Some(ledger.limit_profiles());
    }
    Ok((results, changes))
}

struct Sequencer {
    ledger: Ledger,
    store: Arc<Store>,
    requests: Receiver<Request>,
    durable: Sender<Durable>,
    queued: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    next_index: u64,
    term: u64,
    batch_wait: Duration,
}

/// The requests gathered for one entry.
#[derive(Default)]
struct Round {
    commands: Vec<Command>,
    /// Where each request's commands sit in `commands`.
    calls: Vec<(ResultsTx, std::ops::Range<usize>)>,
    reads: Vec<Request>,
    creating: usize,
    taken: usize,
    stop: bool,
}

impl Sequencer {
    fn run(mut self) {
        let batch_max = self.ledger.config().batch_commands_max;
        let mut carry: Option<Request> = None;
        loop {
            let first = match carry.take() {
                Some(request) => request,
                None => match self.requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            let mut round = Round::default();
            carry = self.add(&mut round, first, batch_max);
            let deadline = Instant::now() + self.batch_wait;
            while carry.is_none() && !round.stop && round.commands.len() < batch_max {
                let next = match self.requests.try_recv() {
                    Ok(request) => request,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) if self.batch_wait.is_zero() => break,
                    Err(TryRecvError::Empty) => match self.requests.recv_deadline(deadline) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    },
                };
                carry = self.add(&mut round, next, batch_max);
            }
            self.queued.fetch_sub(round.taken, Ordering::Relaxed);
            metrics::gauge!("hazina_queue_commands")
                .set(self.queued.load(Ordering::Relaxed) as f64);
            let stop = round.stop;
            self.finish(round);
            if stop {
                break;
            }
        }
        // Dropping the sender lets the writer drain and stop.
    }

    /// Adds a request to the round, or hands it back if it does not fit.
    fn add(&mut self, round: &mut Round, request: Request, batch_max: usize) -> Option<Request> {
        match request {
            Request::Commands { commands, reply } => {
                if !round.commands.is_empty() && round.commands.len() + commands.len() > batch_max {
                    return Some(Request::Commands { commands, reply });
                }
                round.taken += commands.len().max(1);
                let creating =
                    commands.iter().filter(|c| matches!(c, Command::CreateAccount(_))).count();
                let config = self.ledger.config();
                let accounts = self.ledger.accounts_count();
                if creating > 0 && accounts + round.creating + creating > config.accounts_max {
                    // The core would refuse the whole batch; refuse only this request.
                    let max = config.accounts_max;
                    let _ = reply.send(Err(NodeError::AccountsFull { accounts, max }));
                    return None;
                }
                round.creating += creating;
                let start = round.commands.len();
                round.commands.extend(commands);
                round.calls.push((reply, start..round.commands.len()));
            }
            Request::LookupAccounts { ref ids, .. } | Request::LookupTransfers { ref ids, .. } => {
                round.taken += ids.len().max(1);
                round.reads.push(request);
            }
            Request::Status { .. } => {
                round.taken += 1;
                round.reads.push(request);
            }
            Request::Shutdown => round.stop = true,
        }
        None
    }

    fn finish(&mut self, mut round: Round) {
        let mut replies = Vec::with_capacity(round.calls.len() + round.reads.len());
        let mut entry = None;
        if !round.commands.is_empty() {
            let timestamp = now_nanos().max(self.ledger.timestamp_last() + 1);
            let started = Instant::now();
            let (results, changes) =
                match apply_entry(&mut self.ledger, &self.store, timestamp, &round.commands) {
                    Ok(applied) => applied,
                    Err(e) => {
                        // The batch was checked to fit; a refusal here is a bug or a storage
                        // failure. Nothing was applied: refuse the callers, keep serving.
                        tracing::error!(error = %e, "batch refused");
                        for (reply, _) in round.calls {
                            let _ = reply.send(Err(NodeError::Storage(e.clone())));
                        }
                        return;
                    }
                };
            metrics::histogram!("hazina_apply_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("hazina_batch_commands").record(round.commands.len() as f64);
            count_results(&round.commands, &results);
            let index = self.next_index;
            self.next_index += 1;
            let entry_value = Entry { index, term: self.term, timestamp, commands: round.commands };
            let mut bytes = Vec::with_capacity(64 + entry_value.commands.len() * 120);
            codec::encode_entry(&entry_value, &mut bytes);
            let applied = Applied {
                index,
                term: self.term,
                transfers_digest: self.ledger.transfers_digest(),
                timestamp_last: self.ledger.timestamp_last(),
            };
            let commands = entry_value.commands.len() as u64;
            entry = Some(StagedEntry { index, commands, bytes, applied, changes });
            for (reply, range) in std::mem::take(&mut round.calls) {
                replies.push(Reply::Commands(reply, results[range].to_vec()));
            }
        }
        if entry.is_none() {
            // Only empty requests: nothing to apply, nothing to log.
            for (reply, _) in round.calls {
                replies.push(Reply::Commands(reply, Vec::new()));
            }
        }
        for read in round.reads {
            replies.push(self.read(read));
        }
        if self.durable.send(Durable { entry, replies }).is_err() {
            tracing::error!("the writer stopped");
        }
    }

    fn read(&self, request: Request) -> Reply {
        match request {
            Request::LookupAccounts { ids, reply } => {
                let found = ids.iter().filter_map(|&id| self.ledger.account(id)).collect();
                Reply::Accounts(reply, found)
            }
            Request::LookupTransfers { ids, reply } => {
                let mut found = Vec::with_capacity(ids.len());
                let mut missing = Vec::new();
                for &id in &ids {
                    match self.ledger.transfer(id) {
                        Some(record) => found.push(Some(record)),
                        None => {
                            found.push(None);
                            missing.push(id);
                        }
                    }
                }
                let result = if missing.is_empty() {
                    Ok(found.into_iter().flatten().collect())
                } else {
                    match self.store.transfers(&missing) {
                        Ok(stored) => {
                            let mut stored = stored.into_iter();
                            Ok(found
                                .into_iter()
                                .filter_map(|f| f.or_else(|| stored.next().flatten()))
                                .collect())
                        }
                        Err(e) => Err(NodeError::Storage(e.to_string())),
                    }
                };
                Reply::Transfers(reply, result)
            }
            Request::Status { reply } => {
                let status = Status {
                    // Answered once everything before it is durable: this is then the commit
                    // index.
                    commit_index: self.next_index - 1,
                    term: self.term,
                    digest: self.ledger.digest(),
                    accounts: self.ledger.accounts_count() as u64,
                    checkpoint_index: self.shared.checkpoint_index.load(Ordering::Relaxed),
                    timestamp_last: self.ledger.timestamp_last(),
                    queued_commands: self.queued.load(Ordering::Relaxed) as u64,
                };
                Reply::Status(reply, status)
            }
            Request::Commands { .. } | Request::Shutdown => {
                unreachable!("only reads are deferred")
            }
        }
    }
}

fn count_results(commands: &[Command], results: &[ResultCode]) {
    let transfers_ok = commands
        .iter()
        .zip(results)
        .filter(|(c, r)| **r == ResultCode::Ok && matches!(c, Command::CreateTransfer(_)))
        .count() as u64;
    count_outcomes(results, transfers_ok);
}

/// Adds one entry's outcomes to the metrics: results by code, commands, accepted transfers.
pub(crate) fn count_outcomes(results: &[ResultCode], transfers_ok: u64) {
    let mut counts = [0u64; 100];
    for &result in results {
        counts[usize::from(result as u16).min(99)] += 1;
    }
    for &code in ResultCode::ALL {
        let n = counts[usize::from(code as u16)];
        if n > 0 {
            metrics::counter!("hazina_results_total", "result" => code.name()).increment(n);
        }
    }
    metrics::counter!("hazina_commands_total").increment(results.len() as u64);
    metrics::counter!("hazina_transfers_total").increment(transfers_ok);
}

/// The most commands a staged layer's lists are sized for up front (twice the default
/// checkpoint interval; about 2.6 GB of address space a layer, of which only what fills is
/// resident).
pub(crate) const STAGED_COMMANDS_SIZED: u64 = 4_000_000;

struct Writer {
    store: Arc<Store>,
    durable: Receiver<Durable>,
    checkpoint: Sender<()>,
    shared: Arc<Shared>,
    state_written: Arc<watch::Sender<u64>>,
    checkpoint_every: u64,
    /// The answers of each group, to the gRPC runtime in one wake.
    answers: Relay<Reply>,
    /// Dropped when the writer stops, which stops the flow control's sampler.
    _alive: Sender<()>,
}

impl Writer {
    fn run(self) {
        let mut since_checkpoint = 0u64;
        while let Ok(first) = self.durable.recv() {
            let mut group = vec![first];
            while let Ok(more) = self.durable.try_recv() {
                group.push(more);
            }
            let replies: Vec<Reply> =
                group.iter_mut().flat_map(|d| std::mem::take(&mut d.replies)).collect();
            let entries: Vec<&StagedEntry> =
                group.iter().filter_map(|d| d.entry.as_ref()).collect();
            if entries.is_empty() {
                self.answers.send(replies);
            } else {
                let bytes: Vec<&[u8]> = entries.iter().map(|e| e.bytes.as_slice()).collect();
                let indexes: Vec<u64> = entries.iter().map(|e| e.index).collect();
                let started = Instant::now();
                if let Err(e) = self.store.append(&bytes, &indexes) {
                    fail_stop("appending to the log", &e);
                }
                metrics::histogram!("hazina_log_sync_seconds")
                    .record(started.elapsed().as_secs_f64());
                let last = indexes[indexes.len() - 1];
                self.shared.commit_index.store(last, Ordering::Relaxed);
                metrics::gauge!("hazina_commit_index").set(last as f64);
                // The entries are durable: answer now, and stage their state after. A crash in
                // between loses only state, which recovery rebuilds from the log; statements
                // wait for it (`Node::statements_written`).
                self.answers.send(replies);
                for entry in &entries {
                    if let Err(e) = self.store.write_state(&entry.applied, &entry.changes) {
                        fail_stop("writing the state", &e);
                    }
                }
                self.state_written.send_replace(last);
                let commands = entries.iter().map(|e| e.commands).sum::<u64>();
                self.shared.committed_commands.fetch_add(commands, Ordering::Relaxed);
                since_checkpoint += commands;
            }
            if since_checkpoint >= self.checkpoint_every {
                match self.checkpoint.try_send(()) {
                    Ok(()) => since_checkpoint = 0,
                    Err(TrySendError::Full(()))
                        if since_checkpoint >= 2 * self.checkpoint_every =>
                    {
                        // Checkpoints fall behind, and what waits for one is held in memory:
                        // wait for the running one to end and the next to take it.
                        let started = Instant::now();
                        if self.checkpoint.send(()).is_ok() {
                            since_checkpoint = 0;
                        }
                        tracing::warn!(
                            seconds = started.elapsed().as_secs_f64(),
                            "writes waited for a checkpoint"
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        // The sequencer stopped: a last checkpoint makes the next start replay nothing.
        drop(self.checkpoint);
    }
}

fn checkpointer(store: &Store, signals: &Receiver<()>, shared: &Shared, retain: u64) {
    let checkpoint = |why: &str| {
        let started = Instant::now();
        match store.checkpoint(retain) {
            Ok(written) => {
                let index = written.index;
                shared.checkpoint_index.store(index, Ordering::Relaxed);
                metrics::gauge!("hazina_checkpoint_index").set(index as f64);
                let known = match store.known_transfer_ids() {
                    Ok(known) => known,
                    Err(e) => fail_stop("reading the stored transfer ids", &e),
                };
                metrics::gauge!("hazina_known_transfer_ids_bytes").set(known.bytes as f64);
                tracing::info!(
                    index,
                    why,
                    records = written.records,
                    lines = written.lines,
                    accounts = written.accounts,
                    seconds = started.elapsed().as_secs_f64(),
                    known_ids = known.ids,
                    known = known.state.as_str(),
                    "checkpoint"
                );
            }
            Err(e) => fail_stop("a checkpoint", &e),
        }
    };
    while signals.recv().is_ok() {
        checkpoint("periodic");
    }
    checkpoint("shutdown");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Control;
    use hazina_core::{AccountKind, CURRENCY_KES, NewAccount};

    fn account(id: u128, kind: AccountKind) -> Command {
        Command::CreateAccount(NewAccount {
            id,
            currency: CURRENCY_KES,
            kind: kind as u16,
            ..NewAccount::default()
        })
    }

    /// Checkpoints that fall behind hold the writer back (ADR 0009, what is staged stays
    /// bounded): once twice the interval is staged since it last asked for a checkpoint, and
    /// that request is still waiting, the writer stages nothing more until the checkpoint
    /// thread takes the request. The test plays the checkpoint thread.
    #[test]
    fn the_writer_waits_for_a_checkpoint_once_twice_the_interval_is_staged() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
        let (durable, durable_rx) = crossbeam_channel::unbounded();
        let (checkpoint_tx, checkpoint_rx) = crossbeam_channel::bounded(1);
        let (alive, _alive_rx) = crossbeam_channel::bounded(1);
        let state_written = Arc::new(watch::channel(0).0);
        let writer = Writer {
            store: Arc::new(store),
            durable: durable_rx,
            checkpoint: checkpoint_tx,
            shared: Arc::default(),
            state_written: Arc::clone(&state_written),
            checkpoint_every: 10,
            answers: Relay::start(None, Reply::send),
            _alive: alive,
        };
        let thread = std::thread::spawn(move || writer.run());
        // Entries of one interval each (10 commands).
        let entry = |index: u64| Durable {
            entry: Some(StagedEntry {
                index,
                commands: 10,
                bytes: vec![1, 2, 3],
                applied: Applied { index, term: 1, ..Applied::default() },
                changes: Changes::default(),
            }),
            replies: Vec::new(),
        };
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let mut written = state_written.subscribe();
        let mut staged_within = |index: u64, wait: Duration| {
            let staged = async {
                tokio::time::timeout(wait, written.wait_for(|&w| w >= index))
                    .await
                    .map(|r| r.is_ok())
            };
            runtime.block_on(staged) == Ok(true)
        };
        // 1: one interval staged, a checkpoint asked for (the request waits in the channel).
        // 2: a second interval; the request is still waiting. 3: a third, twice the interval
        // since the request: the writer waits for room for its next one.
        for index in 1..=3 {
            durable.send(entry(index)).expect("the writer runs");
            assert!(staged_within(index, Duration::from_secs(10)), "entry {index} staged");
        }
        durable.send(entry(4)).expect("the writer runs");
        assert!(
            !staged_within(4, Duration::from_millis(500)),
            "entry 4 staged while the checkpoints were behind"
        );
        // The checkpoint thread takes the waiting request: the writer asks for the next one
        // and goes on.
        checkpoint_rx.recv().expect("a checkpoint was asked for");
        assert!(staged_within(4, Duration::from_secs(10)), "entry 4 staged after the wait");
        assert_eq!(checkpoint_rx.try_recv(), Ok(()), "the next checkpoint is asked for");
        drop(durable);
        thread.join().expect("the writer stops");
    }

    /// While the flow control says storage is behind, writes are refused at once with the
    /// reason and change nothing; reads are served; once it opens, writes go through.
    #[test]
    fn a_throttled_node_refuses_writes_and_serves_reads() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut config = NodeConfig::new(dir.path().to_path_buf());
        // No sampler: the test sets the admission itself.
        config.flow_control = false;
        let node = Node::start(config).expect("start");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let account = |id| account(id, AccountKind::CustomerWallet);
        runtime.block_on(async {
            let created = node.execute(vec![account(254_700_000_001)]).await.expect("open");
            assert_eq!(created, [ResultCode::Ok]);
            node.admission.set(Control::Closed, || "20 level-0 files in history".into());
            let refused = node.execute(vec![account(254_700_000_002)]).await;
            match refused {
                Err(NodeError::StorageBehind { rate: 0, ref why, retry_after }) => {
                    assert_eq!(why, "20 level-0 files in history");
                    assert_eq!(retry_after, crate::flow::CLOSED_RETRY_AFTER);
                }
                other => panic!("{other:?}"),
            }
            let found = node.lookup_accounts(vec![254_700_000_001, 254_700_000_002]).await;
            let ids: Vec<u128> = found.expect("reads are served").iter().map(|a| a.id).collect();
            assert_eq!(ids, [254_700_000_001], "the refused account was not created");
            node.admission.set(Control::Open, String::new);
            let created = node.execute(vec![account(254_700_000_002)]).await.expect("open");
            assert_eq!(created, [ResultCode::Ok]);
        });
        node.shutdown();
    }

    /// Callers are answered before their entry's state is written: a statement asked for right
    /// after each answer still shows that answer's transfer, with the balance after it.
    #[test]
    fn a_statement_after_an_answer_shows_its_transfer() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let node = Node::start(NodeConfig::new(dir.path().to_path_buf())).expect("start");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (trust, wallet) = (1_000u128, 254_700_000_001u128);
        runtime.block_on(async {
            let created = node
                .execute(vec![
                    account(trust, AccountKind::TrustBank),
                    account(wallet, AccountKind::CustomerWallet),
                ])
                .await
                .expect("open");
            assert_eq!(created, [ResultCode::Ok, ResultCode::Ok]);
            for k in 1..=200u128 {
                let deposit = hazina_core::NewTransfer {
                    id: k,
                    debit_account_id: trust,
                    credit_account_id: wallet,
                    amount: 50_00,
                    currency: CURRENCY_KES,
                    tx_type: hazina_core::TransactionType::CashIn as u16,
                    ..hazina_core::NewTransfer::default()
                };
                let results = node.execute(vec![Command::CreateTransfer(deposit)]).await;
                assert_eq!(results.expect("deposit"), [ResultCode::Ok]);
                node.statements_written().await.expect("running");
                let page = node.history(wallet, 0, 1_000).expect("statement");
                let last = page.entries.last().expect("a line");
                assert_eq!(page.entries.len() as u128, k, "after deposit {k}");
                assert_eq!((last.transfer_id, last.balance_after), (k, 50_00 * k as i128));
            }
        });
        node.shutdown();
    }
}
