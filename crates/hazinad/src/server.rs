//! Assembles the process: settings, logs, metrics, the node and the gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hazina_core::LedgerConfig;
use hazina_proto::v1::ledger_server::LedgerServer;
use tokio_stream::wrappers::TcpListenerStream;

use crate::node::{Node, NodeConfig};
use crate::service::{LedgerService, MESSAGE_BYTES_MAX};

/// Runs a Hazina ledger node: one site, RocksDB in a local folder.
#[derive(Debug, Clone, Parser)]
#[command(name = "hazinad", version, about)]
pub struct Args {
    /// Folder of the RocksDB database (created if missing).
    #[arg(long, env = "HAZINA_DATA_DIR", default_value = "hazina-data")]
    pub data_dir: PathBuf,
    /// Address of the gRPC API. Port 0 picks a free port (see --ready-file).
    #[arg(long, env = "HAZINA_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
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
    /// Transfer records kept in memory per generation (others are read from RocksDB).
    #[arg(long, default_value_t = 1_000_000)]
    pub generation_max: usize,
    /// Commands applied between checkpoints: bounds the log a restart after a crash replays.
    #[arg(long, default_value_t = 2_000_000)]
    pub checkpoint_every: u64,
    /// Log entries kept behind a checkpoint.
    #[arg(long, default_value_t = 1_000)]
    pub log_retain: u64,
    /// Threads serving gRPC.
    #[arg(long, default_value_t = 2)]
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
            transfers_generation_max: self.generation_max,
            track_changes: true,
            ..LedgerConfig::default()
        };
        config.batch_wait = Duration::from_micros(self.batch_wait_us);
        config.queue_commands_max = self.queue_max;
        config.checkpoint_every = self.checkpoint_every;
        config.log_retain = self.log_retain;
        config
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
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if args.metrics_listen != "off" {
        let addr: SocketAddr = args
            .metrics_listen
            .parse()
            .map_err(|e| format!("--metrics-listen {}: {e}", args.metrics_listen))?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        tracing::info!(%addr, "metrics at /metrics");
    }
    let config = args.node_config();
    let node = tokio::task::spawn_blocking(move || Node::start(config)).await??;
    let node = Arc::new(node);

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
    let ledger = LedgerServer::new(LedgerService::new(Arc::clone(&node)))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, commit_index = node.commit_index(), "serving hazina.v1");
    if let Some(path) = &args.ready_file {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, addr.to_string())?;
        std::fs::rename(&temporary, path)?;
    }
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ledger)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    tracing::info!("stopping: draining the queue and writing a checkpoint");
    health.set_not_serving::<LedgerServer<LedgerService>>().await;
    let stopping = Arc::clone(&node);
    tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
    tracing::info!(commit_index = node.commit_index(), "stopped");
    Ok(())
}
