//! Assembles the process: settings, logs, metrics, the node and the gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hazina_core::LedgerConfig;
use hazina_proto::v1::ledger_server::LedgerServer;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;

use crate::cluster::{ClusterConfig, ClusterNode, PEER_MESSAGE_BYTES_MAX, Site};
use crate::limits::{
    CALL_TIME_MAX, CALLS_MAX, CONNECTIONS_MAX, CallsLimitLayer, PEER_CONNECTIONS_MAX, REFUSING_MAX,
    STREAMS_PER_CONNECTION_MAX, bounded,
};
use crate::node::{Node, NodeConfig};
use crate::service::{AdminService, Backend, LedgerService, MESSAGE_BYTES_MAX, PeerService};
use hazina_proto::peer::peer_server::PeerServer;
use hazina_proto::v1::admin_server::AdminServer;

/// Runs a Hazina ledger node: one site with RocksDB in a local folder, or, with --site-id and
/// --site, one site of a replicated group of three (or five).
#[derive(Debug, Clone, Parser)]
#[command(name = "hazinad", version, about)]
pub struct Args {
    /// Folder of the RocksDB database (created if missing).
    #[arg(long, env = "HAZINA_DATA_DIR", default_value = "hazina-data")]
    pub data_dir: PathBuf,
    /// Address of the gRPC API. Port 0 picks a free port (see --ready-file). Default
    /// 127.0.0.1:7400, or this site's API address in a group.
    #[arg(long, env = "HAZINA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// This site's id in a replicated group (one of the --site ids). Without it the node runs
    /// a single site.
    #[arg(long, env = "HAZINA_SITE_ID")]
    pub site_id: Option<u64>,
    /// A site of the group, as ID=API_ADDR,PEER_ADDR (for example
    /// 1=127.0.0.1:7401,127.0.0.1:7411); once per site, this one included, the same list on
    /// every site.
    #[arg(long = "site", value_name = "ID=API,PEER")]
    pub sites: Vec<Site>,
    /// Address the peer service listens on (default: this site's PEER_ADDR).
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// The site preferred as primary: it wins elections when healthy (default: the lowest id).
    #[arg(long)]
    pub preferred_site: Option<u64>,
    /// Seconds the preferred site must be up to date before a primary elected elsewhere hands
    /// the primary back to it (after a cold start it lost, or a failover). A primary that an
    /// operator switched to stays. 0: never.
    #[arg(long, default_value_t = 30)]
    pub hand_back_after_s: u64,
    /// Milliseconds per raft tick.
    #[arg(long, default_value_t = 20)]
    pub tick_ms: u64,
    /// Ticks between a primary's heartbeats.
    #[arg(long, default_value_t = 2)]
    pub heartbeat_ticks: usize,
    /// Ticks without a primary before a standby campaigns (a few more on less preferred
    /// sites); a primary that hears from no quorum for this long steps down.
    #[arg(long, default_value_t = 10)]
    pub election_ticks: usize,
    /// Entries applied between snapshots of a replicated site's ledger (the log in memory and
    /// on disk is compacted behind each). A snapshot copies the accounts (the records are
    /// shared): 0.25 to 1.3 s of pause per million accounts on a busy 2-core machine
    /// (docs/BENCHMARKS.md), so keep them rare.
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_every: u64,
    /// Megabytes of entries applied between snapshots, whichever comes first: bounds the log.
    /// It grows to twice the last snapshot's size, up to four times this, so that a large
    /// ledger is not copied after every few hundred megabytes of log.
    #[arg(long, default_value_t = 512)]
    pub snapshot_every_mb: u64,
    /// Entries kept behind a snapshot, for standbys a little behind.
    #[arg(long, default_value_t = 2_000)]
    pub log_keep: u64,
    /// Address of the Prometheus endpoint (/metrics), or "off".
    #[arg(long, env = "HAZINA_METRICS_LISTEN", default_value = "127.0.0.1:9400")]
    pub metrics_listen: String,
    /// Once serving, write the gRPC address to this file (for scripts and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Account partitions (1 to 64). Any value gives the same results and state; it changes
    /// speed only, so it may differ between restarts.
    #[arg(long, default_value_t = 1)]
    pub partitions: usize,
    /// Threads applying a large batch (1 to partitions).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Most commands in one log entry.
    #[arg(long, default_value_t = 8_192)]
    pub batch_max: usize,
    /// Microseconds the sequencer waits for more requests once it has one (0: none).
    #[arg(long, default_value_t = 0)]
    pub batch_wait_us: u64,
    /// Commands queued beyond which requests get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 262_144)]
    pub queue_max: usize,
    /// Most accounts the ledger holds.
    #[arg(long, default_value_t = 100_000_000)]
    pub accounts_max: usize,
    /// Accounts the ledger makes room for at start (address space: pages become resident as
    /// accounts fill them; a restart makes room for at least the accounts it loads). Past it a
    /// partition's account table and index double inside one entry's apply, copying every
    /// account into fresh pages: 0.1 to 0.6 s at a million accounts on the 2-core VM of
    /// docs/BENCHMARKS.md, long enough for a replicated group to elect another primary. Set it
    /// to the population you expect.
    #[arg(long, default_value_t = 2_000_000)]
    pub accounts_capacity: usize,
    /// Transfer records kept in memory per generation (others are read from RocksDB); default
    /// 1,000,000. A replicated site keeps every record (0, the only value it takes).
    #[arg(long)]
    pub generation_max: Option<usize>,
    /// Transfer records a replicated site reserves memory for (it keeps every record): past
    /// this its index doubles, rehashing every record at once (a quarter of a second at 8M, an
    /// election under load). The index's table is allocated at start: 24 bytes a slot, 2^25
    /// slots (0.8 GB) for the default, resident once a few million records are in.
    #[arg(long, default_value_t = 16_000_000)]
    pub records_capacity: usize,
    /// Commands applied between checkpoints: bounds the log a restart after a crash replays.
    /// On a replicated site: commands whose statement lines are staged in memory before they
    /// are written to RocksDB (they are also written before each snapshot is kept).
    #[arg(long, default_value_t = 2_000_000)]
    pub checkpoint_every: u64,
    /// Log entries kept behind a checkpoint.
    #[arg(long, default_value_t = 1_000)]
    pub log_retain: u64,
    /// Slow the admission of writes when RocksDB's compactions fall behind: callers get
    /// RESOURCE_EXHAUSTED at once instead of waiting in a write that RocksDB delays
    /// (docs/adr/0006-flow-control.md). "false" leaves it to RocksDB.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flow_control: bool,
    /// Table files of the state's RocksDB kept open at most. Default: half the limit of open
    /// files, which hazinad raises to its hard limit at start; the other half is for the
    /// connections, RocksDB's log files and a site's raft log. Past it RocksDB closes the
    /// least used files and opens them again as reads need them, where with every file kept
    /// open a long history would run the process out of descriptors and stop its writes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(20..))]
    pub table_files_max: Option<u32>,
    /// Client connections open at most. A connection past it is served for a second, every
    /// call answered RESOURCE_EXHAUSTED naming this limit, then closed
    /// (docs/adr/0013-bounded-callers.md).
    #[arg(long, default_value_t = CONNECTIONS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections_max: u32,
    /// Calls in progress on one client connection at most (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS): the client queues the calls past it on its side.
    #[arg(long, default_value_t = STREAMS_PER_CONNECTION_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_connection_max: u32,
    /// Ledger calls in progress at most, over all connections. Each holds its request (up to
    /// 4 MiB) from its headers to its answer; past it a call gets RESOURCE_EXHAUSTED at once.
    /// GetStatus, health, reflection and admin calls are not counted.
    #[arg(long, default_value_t = CALLS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub calls_max: u32,
    /// Threads serving gRPC. With 1 (the default) a current-thread runtime: the callers a
    /// group of entries answers all run before their connection's task, which then writes
    /// their responses in one system call (in run A, 760 `writev` a second instead of 30,000,
    /// and a quarter less CPU a transfer; docs/BENCHMARKS.md, session 16). More threads: a
    /// multi-threaded runtime, where each response is a write of its own.
    #[arg(long, default_value_t = 1)]
    pub io_threads: usize,
    /// Log format: "text" or "json". Levels follow RUST_LOG (default info).
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

impl Args {
    pub fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(self.data_dir.clone());
        config.ledger = LedgerConfig {
            partitions: self.partitions,
            threads: self.threads,
            batch_commands_max: self.batch_max,
            accounts_max: self.accounts_max,
            accounts_capacity: self.accounts_capacity,
            transfers_generation_max: self.generation_max.unwrap_or(1_000_000),
            track_changes: true,
            ..LedgerConfig::default()
        };
        config.batch_wait = Duration::from_micros(self.batch_wait_us);
        config.queue_commands_max = self.queue_max;
        config.checkpoint_every = self.checkpoint_every;
        config.log_retain = self.log_retain;
        config.flow_control = self.flow_control;
        config.store.table_files_max = self.table_files_max;
        config
    }

    /// The group's configuration, if this node is a site of one.
    pub fn cluster_config(&self) -> Result<Option<ClusterConfig>, String> {
        let Some(site_id) = self.site_id else {
            if !self.sites.is_empty() {
                return Err("--site given without --site-id".into());
            }
            return Ok(None);
        };
        let single = self.node_config();
        let preferred_site = self
            .preferred_site
            .or_else(|| self.sites.iter().map(|s| s.id).min())
            .unwrap_or(site_id);
        Ok(Some(ClusterConfig {
            data_dir: self.data_dir.clone(),
            site_id,
            sites: self.sites.clone(),
            preferred_site,
            hand_back_after: (self.hand_back_after_s > 0)
                .then(|| Duration::from_secs(self.hand_back_after_s)),
            ledger: LedgerConfig {
                transfers_generation_max: self.generation_max.unwrap_or(0),
                transfers_capacity: self.records_capacity,
                ..single.ledger
            },
            queue_commands_max: self.queue_max,
            tick: Duration::from_millis(self.tick_ms),
            heartbeat_ticks: self.heartbeat_ticks,
            election_ticks: self.election_ticks,
            snapshot_every: self.snapshot_every,
            snapshot_every_bytes: self.snapshot_every_mb << 20,
            log_keep: self.log_keep,
            flow_control: self.flow_control,
            statements_every: self.checkpoint_every,
            store: single.store,
        }))
    }

    fn own_site(&self) -> Option<&Site> {
        self.site_id.and_then(|id| self.sites.iter().find(|s| s.id == id))
    }

    /// The API address: --listen, else this site's API address, else 127.0.0.1:7400.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        if let Some(addr) = self.listen {
            return Ok(addr);
        }
        match self.own_site() {
            Some(site) => site
                .api
                .parse()
                .map_err(|e| format!("site {} API address {}: {e}", site.id, site.api)),
            None => Ok(SocketAddr::from(([127, 0, 0, 1], 7400))),
        }
    }

    fn peer_listen_addr(&self) -> Result<SocketAddr, String> {
        if let Some(addr) = self.peer_listen {
            return Ok(addr);
        }
        let site = self.own_site().ok_or("--site-id names none of the --site entries")?;
        site.peer.parse().map_err(|e| format!("site {} peer address {}: {e}", site.id, site.peer))
    }
}

pub fn init_tracing(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The connections a listener accepts, with Nagle's algorithm off. tonic applies its own
/// `tcp_nodelay` only to listeners it binds itself and ignores it for `serve_with_incoming`;
/// with Nagle on, a reply written in more than one segment waited for the caller's delayed
/// acknowledgement (40 ms on Linux), a p99.9 of about 45 ms at any load (docs/BENCHMARKS.md).
/// An accept that failed for want of descriptors is followed by a pause ([`paced_on_errors`]).
fn accepted_without_delay(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    paced_on_errors(TcpIncoming::from(listener).with_nodelay(Some(true)), ACCEPT_RETRY)
}

/// The pause after a failed `accept`.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// `incoming`, each error logged and counted, and one for want of a resource (file
/// descriptors, memory) followed by a pause of `pause`. tonic's server asks for the next
/// connection at once after an error; with the process out of file descriptors every `accept`
/// fails at once (the caller stays queued), and the thread that serves the connections would
/// spend itself on them. An error of one connection (aborted before it was accepted) does not
/// hold up the next.
fn paced_on_errors<T>(
    incoming: impl Stream<Item = std::io::Result<T>>,
    pause: Duration,
) -> impl Stream<Item = std::io::Result<T>> {
    incoming.then(move |accepted| async move {
        if let Err(e) = &accepted {
            tracing::warn!(error = %e, "accepting a connection failed");
            metrics::counter!("hazina_accept_errors_total").increment(1);
            if out_of_resources(e) {
                tokio::time::sleep(pause).await;
            }
        }
        accepted
    })
}

/// Whether `accept` failed for want of something the whole process lacks, which a retry at
/// once would meet again: file descriptors (the process's, EMFILE, or the system's, ENFILE),
/// buffers or memory.
fn out_of_resources(error: &std::io::Error) -> bool {
    use libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(error.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
        || error.kind() == std::io::ErrorKind::OutOfMemory
}

/// Open files asked for at start: the soft limit is raised to the hard one, this at most.
const OPEN_FILES_WANTED: u64 = 1 << 20;

/// Raises this process's soft limit of open files to its hard limit (at most
/// [`OPEN_FILES_WANTED`]) and gives the limit in force, if it can be read. RocksDB keeps its
/// table files open and every connection is a file: the usual soft limit of 1,024 is one to
/// two weeks of history at a national operator's volume (ADR 0012).
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(OPEN_FILES_WANTED) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the limit of open files");
            rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
        }
    }
}

/// The state's share of a limit of `open_files`: half (`--table-files-max`).
pub fn table_files_for(open_files: u64) -> u32 {
    u32::try_from(open_files / 2).unwrap_or(u32::MAX).max(20)
}

/// How often the process's own figures (CPU, memory, open files) are read for `/metrics`.
const PROCESS_METRICS_EVERY: Duration = Duration::from_secs(1);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminate = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Starts the node, serves until `shutdown` resolves, then stops cleanly.
pub async fn run(
    mut args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let open_files = raise_open_files_limit();
    if args.table_files_max.is_none() {
        args.table_files_max = open_files.map(table_files_for);
    }
    tracing::info!(
        open_files_limit = open_files,
        table_files_max = args.table_files_max,
        "open files"
    );
    if args.metrics_listen != "off" {
        let addr: SocketAddr = args
            .metrics_listen
            .parse()
            .map_err(|e| format!("--metrics-listen {}: {e}", args.metrics_listen))?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        // process_cpu_seconds_total, process_open_fds, process_max_fds,
        // process_resident_memory_bytes and the others of Prometheus's own clients.
        // Read from /proc on a thread of their own: counting the open files reads a
        // directory of them.
        let process = metrics_process::Collector::default();
        process.describe();
        std::thread::Builder::new()
            .name("hazina-process".into())
            .spawn(move || {
                loop {
                    process.collect();
                    std::thread::sleep(PROCESS_METRICS_EVERY);
                }
            })
            .map_err(|e| format!("process metrics thread: {e}"))?;
        tracing::info!(%addr, "metrics at /metrics");
    }
    let listen = args.listen_addr()?;
    let (backend, peer_server) = match args.cluster_config()? {
        None => {
            let config = args.node_config();
            let node = tokio::task::spawn_blocking(move || Node::start(config)).await??;
            (Backend::Single(Arc::new(node)), None)
        }
        Some(config) => {
            let peer_addr = args.peer_listen_addr()?;
            let runtime = tokio::runtime::Handle::current();
            let node = Arc::new(
                tokio::task::spawn_blocking(move || ClusterNode::start(config, runtime)).await??,
            );
            let peers = PeerServer::new(PeerService::new(Arc::clone(&node)))
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
            let listener = tokio::net::TcpListener::bind(peer_addr)
                .await
                .map_err(|e| format!("cannot listen for peers on {peer_addr}: {e}"))?;
            tracing::info!(addr = %peer_addr, "serving hazina.peer.v1");
            let server =
                tonic::transport::Server::builder().add_service(peers).serve_with_incoming(
                    bounded(accepted_without_delay(listener), PEER_CONNECTIONS_MAX, 0, "peer"),
                );
            (Backend::Cluster(node), Some(tokio::spawn(server)))
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LedgerServer<LedgerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hazina_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hazina_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let ledger = LedgerServer::new(LedgerService::new(backend.clone()))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let admin = AdminServer::new(AdminService::new(backend.clone()));

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving hazina.v1");
    if let Some(path) = &args.ready_file {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, addr.to_string())?;
        std::fs::rename(&temporary, path)?;
    }
    let connections_max = usize::try_from(args.connections_max)?;
    let calls_max = usize::try_from(args.calls_max)?;
    tracing::info!(
        connections_max,
        streams_per_connection_max = args.streams_per_connection_max,
        calls_max,
        "callers bounded"
    );
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(args.streams_per_connection_max)
        .layer(CallsLimitLayer::new(calls_max, CALL_TIME_MAX))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ledger)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            bounded(accepted_without_delay(listener), connections_max, REFUSING_MAX, "api"),
            shutdown,
        )
        .await?;
    health.set_not_serving::<LedgerServer<LedgerService>>().await;
    if let Some(server) = peer_server {
        server.abort();
    }
    match backend {
        Backend::Single(node) => {
            tracing::info!("stopping: draining the queue and writing a checkpoint");
            let stopping = Arc::clone(&node);
            tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
            tracing::info!(commit_index = node.commit_index(), "stopped");
        }
        Backend::Cluster(node) => {
            tracing::info!("stopping: answering what is queued");
            let stopping = Arc::clone(&node);
            tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
            tracing::info!(applied_index = node.applied_index(), "stopped");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut incoming = std::pin::pin!(accepted_without_delay(listener));
        let _caller = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("a connection within 5 s")
            .expect("the stream goes on")
            .expect("accepted");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"), "Nagle's algorithm is still on");
    }

    /// An accept that failed for want of file descriptors is followed by the pause; one that
    /// failed for its own connection, and the connections that follow, are not.
    #[tokio::test(start_paused = true)]
    async fn an_accept_out_of_descriptors_is_followed_by_a_pause() {
        use libc::{ECONNABORTED, EMFILE, ENFILE};
        let error = |errno| Err(std::io::Error::from_raw_os_error(errno));
        let accepts = tokio_stream::iter([
            error(EMFILE),
            Ok(1),
            Ok(2),
            error(ECONNABORTED),
            Ok(3),
            error(ENFILE),
            Ok(4),
        ]);
        let mut incoming = std::pin::pin!(paced_on_errors(accepts, Duration::from_millis(100)));
        let started = tokio::time::Instant::now();
        let mut got = Vec::new();
        while let Some(accepted) = incoming.next().await {
            got.push((accepted.ok(), started.elapsed().as_millis()));
        }
        let expected = [
            (None, 100),
            (Some(1), 100),
            (Some(2), 100),
            (None, 100),
            (Some(3), 100),
            (None, 200),
            (Some(4), 200),
        ];
        assert_eq!(got, expected);
    }

    /// The state's share of the limit of open files, and the flag that overrides it.
    #[test]
    fn table_files_are_half_the_open_files() {
        assert_eq!(table_files_for(1_024), 512);
        assert_eq!(table_files_for(20), 20, "RocksDB's least");
        assert_eq!(table_files_for(u64::MAX), u32::MAX);
        let args = Args::parse_from(["hazinad", "--data-dir", "/tmp/unused"]);
        assert_eq!(args.node_config().store.table_files_max, None, "set by run() at start");
        let args =
            Args::parse_from(["hazinad", "--data-dir", "/tmp/unused", "--table-files-max", "300"]);
        assert_eq!(args.node_config().store.table_files_max, Some(300));
        assert!(
            Args::try_parse_from(["hazinad", "--data-dir", "/x", "--table-files-max", "5"])
                .is_err()
        );
    }

    /// The room made for accounts reaches the ledger of a single site and of a site of a
    /// group, and the replicated site's statement lines follow `--checkpoint-every`.
    #[test]
    fn flags_reach_the_ledger_and_the_site() {
        let args = Args::parse_from(["hazinad", "--data-dir", "/tmp/unused"]);
        assert_eq!(args.node_config().ledger.accounts_capacity, 2_000_000);
        let args = Args::parse_from([
            "hazinad",
            "--data-dir",
            "/tmp/unused",
            "--accounts-capacity",
            "12000000",
            "--checkpoint-every",
            "500000",
            "--site-id",
            "2",
            "--site",
            "1=127.0.0.1:7401,127.0.0.1:7411",
            "--site",
            "2=127.0.0.1:7402,127.0.0.1:7412",
            "--site",
            "3=127.0.0.1:7403,127.0.0.1:7413",
        ]);
        assert_eq!(args.node_config().ledger.accounts_capacity, 12_000_000);
        let site = args.cluster_config().expect("valid").expect("a site of a group");
        assert_eq!(site.ledger.accounts_capacity, 12_000_000);
        assert_eq!(site.statements_every, 500_000);
        assert_eq!(site.ledger.transfers_generation_max, 0, "a site keeps every record");
        assert_eq!(site.hand_back_after, Some(Duration::from_secs(30)), "the default");
        let never = Args::parse_from([
            "hazinad",
            "--site-id",
            "1",
            "--site",
            "1=127.0.0.1:7401,127.0.0.1:7411",
            "--hand-back-after-s",
            "0",
        ]);
        let site = never.cluster_config().expect("valid").expect("a site of a group");
        assert_eq!(site.hand_back_after, None, "0: never");
    }
}
