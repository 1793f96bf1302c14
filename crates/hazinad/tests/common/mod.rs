//! Starts the real `hazinad` as a child process on 127.0.0.1 and stops it, whatever happens.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hazina_client::Client;
use hazina_core::{CURRENCY_KES, NewTransfer, TransactionType};

/// A transfer in shillings' cents, in KES, of the given type.
pub fn transfer(
    id: u128,
    from: u128,
    to: u128,
    amount: u128,
    tx_type: TransactionType,
) -> NewTransfer {
    NewTransfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        currency: CURRENCY_KES,
        tx_type: tx_type as u16,
        ..NewTransfer::default()
    }
}

/// The seed of a random test: `HAZINA_SEED` if set, else one from the clock; printed, so that
/// a failure can be replayed.
pub fn seed() -> u64 {
    let seed =
        std::env::var("HAZINA_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is after 1970");
            now.as_secs() ^ u64::from(now.subsec_nanos())
        });
    eprintln!("seed {seed} (replay with HAZINA_SEED={seed})");
    seed
}

/// A `hazinad` child process. Dropping it kills the process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `hazinad` on a free port with its data in `data_dir`, and waits until it serves.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts `hazinad` listening on `listen`, and waits until it serves.
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let ready = data_dir.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("open the server log");
        // No metrics endpoint unless the test asks for one.
        let metrics_off: &[&str] =
            if extra.contains(&"--metrics-listen") { &[] } else { &["--metrics-listen", "off"] };
        let child = Command::new(env!("CARGO_BIN_EXE_hazinad"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen, "--ready-file"])
            .arg(&ready)
            .args(metrics_off)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start hazinad");
        let mut server =
            Server { child: Some(child), addr: String::new(), data_dir: data_dir.into() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&ready) {
                server.addr = format!("http://{addr}");
                return server;
            }
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // The folder goes with the test: the log's end is in the message.
                let log =
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "hazinad exited with {status} before serving; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "hazinad did not serve within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr).await.expect("connect to hazinad")
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hazinad did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub use hazina_testkit::free_ports;

/// The text of the Prometheus endpoint at `addr` (`/metrics`).
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics endpoint");
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("ask for metrics");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read metrics");
    body
}

/// A counter's or gauge's value in the Prometheus text `body`: the line that starts with
/// `name` (its labels included, as the exporter writes them) and a space.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A TCP forwarder on 127.0.0.1 standing for one direction of a link between two sites: cut,
/// it drops its connections and every new one, as a network partition would.
#[derive(Debug)]
pub struct Link {
    pub addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Forwards connections on a free port to `target`. Needs a tokio runtime.
    pub async fn start(target: String) -> Link {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a link");
        let addr = listener.local_addr().expect("bound").to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (cut_a, connections_a) =
            (std::sync::Arc::clone(&cut), std::sync::Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut_a.load(Ordering::SeqCst) {
                    continue; // dropped: the peer sees a reset
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut open = connections_a.lock();
                open.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                open.push(task);
            }
        });
        Link { addr, cut, connections, accept }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            for task in self.connections.lock().drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_cut(true);
    }
}

/// Three `hazinad` sites of one group on 127.0.0.1, each with its own data folder.
#[derive(Debug)]
pub struct Cluster {
    pub sites: Vec<Option<Server>>,
    /// `--site` values for each site (its own view of where the others' peer ports are).
    site_args: Vec<Vec<String>>,
    /// With links: `links[(from, to)]` carries raft traffic from site `from` to site `to`.
    pub links: std::collections::BTreeMap<(u64, u64), Link>,
    pub api: Vec<String>,
    /// Each site's Prometheus endpoint (`host:port`).
    pub metrics: Vec<String>,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Cluster {
    pub fn start(dir: &Path, extra: &[&str]) -> Cluster {
        let ports = free_ports(9);
        let api: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let list: Vec<String> =
            (0..3).map(|i| format!("{}={},127.0.0.1:{}", i + 1, api[i], ports[3 + i])).collect();
        let metrics = (0..3).map(|i| format!("127.0.0.1:{}", ports[6 + i])).collect();
        Cluster::launch(dir, extra, api, metrics, vec![list; 3], std::collections::BTreeMap::new())
    }

    /// Starts the three sites, each with its own `--site` list.
    fn launch(
        dir: &Path,
        extra: &[&str],
        api: Vec<String>,
        metrics: Vec<String>,
        site_args: Vec<Vec<String>>,
        links: std::collections::BTreeMap<(u64, u64), Link>,
    ) -> Cluster {
        let mut cluster = Cluster {
            sites: Vec::new(),
            site_args,
            links,
            api,
            metrics,
            dir: dir.to_owned(),
            extra: extra.iter().map(|&s| s.to_owned()).collect(),
        };
        for site in 1..=3 {
            let server = cluster.spawn(site);
            cluster.sites.push(Some(server));
        }
        cluster
    }

    /// Like [`Cluster::start`], but raft traffic between every two sites goes through a
    /// [`Link`] that the test can cut. Needs a tokio runtime.
    pub async fn start_with_links(dir: &Path, extra: &[&str]) -> Cluster {
        let ports = free_ports(9);
        let api: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let peer: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[3 + i])).collect();
        let metrics = (0..3).map(|i| format!("127.0.0.1:{}", ports[6 + i])).collect();
        let mut links = std::collections::BTreeMap::new();
        for from in 1..=3u64 {
            for to in (1..=3u64).filter(|&to| to != from) {
                let target = peer[usize::try_from(to - 1).expect("small")].clone();
                links.insert((from, to), Link::start(target).await);
            }
        }
        let mut site_args = Vec::new();
        for from in 1..=3u64 {
            let list = (1..=3u64)
                .map(|to| {
                    let i = usize::try_from(to - 1).expect("small");
                    // A site's own entry names its real peer port, which it listens on.
                    let peer_addr =
                        if to == from { peer[i].clone() } else { links[&(from, to)].addr.clone() };
                    format!("{to}={},{peer_addr}", api[i])
                })
                .collect();
            site_args.push(list);
        }
        Cluster::launch(dir, extra, api, metrics, site_args, links)
    }

    /// Cuts (or heals) every link to and from `site`: it can still be called by clients, but
    /// not reach the other sites.
    pub fn isolate(&self, site: u64, cut: bool) {
        for (&(from, to), link) in &self.links {
            if from == site || to == site {
                link.set_cut(cut);
            }
        }
    }

    fn spawn(&self, site: u64) -> Server {
        let mut args: Vec<String> = vec!["--site-id".into(), site.to_string()];
        let index = usize::try_from(site - 1).expect("a small site id");
        for s in &self.site_args[index] {
            args.push("--site".into());
            args.push(s.clone());
        }
        args.extend(["--metrics-listen".into(), self.metrics[index].clone()]);
        args.extend(self.extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_on(&self.dir.join(format!("site{site}")), &self.api[index], &args)
    }

    /// `hazina_results_total` of every site, by result name, summed: each site counts the
    /// outcomes it answered as primary.
    pub async fn results_total(&self) -> std::collections::BTreeMap<String, u64> {
        let mut sum = std::collections::BTreeMap::new();
        for addr in &self.metrics {
            for line in scrape(addr).await.lines() {
                let Some(rest) = line.strip_prefix("hazina_results_total{result=\"") else {
                    continue;
                };
                let (name, value) = rest.split_once("\"} ").expect("a counter line");
                *sum.entry(name.to_owned()).or_default() +=
                    value.trim().parse::<u64>().expect("a count");
            }
        }
        sum
    }

    /// Every site's API address, comma-separated, for a client that follows the primary.
    pub fn addrs(&self) -> String {
        self.api.join(",")
    }

    pub fn kill(&mut self, site: u64) {
        let index = usize::try_from(site - 1).expect("a small site id");
        if let Some(mut server) = self.sites[index].take() {
            server.kill();
        }
    }

    pub fn restart(&mut self, site: u64) {
        let index = usize::try_from(site - 1).expect("a small site id");
        assert!(self.sites[index].is_none(), "site {site} is running");
        self.sites[index] = Some(self.spawn(site));
    }

    /// The status of every running site (None for a site down or not answering).
    pub async fn statuses(&self) -> Vec<Option<hazina_client::proto::v1::GetStatusReply>> {
        let mut out = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            let status = match site {
                None => None,
                Some(_) => {
                    let retry = hazina_client::RetryPolicy {
                        attempts: 1,
                        timeout: Duration::from_secs(2),
                        ..Default::default()
                    };
                    match Client::connect_with(&self.api[i], retry).await {
                        Ok(client) => client.status().await.ok(),
                        Err(_) => None,
                    }
                }
            };
            out.push(status);
        }
        out
    }

    /// Waits until one running site is primary and every running site knows it; returns it.
    pub async fn primary(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses().await;
            let primaries: Vec<u64> = statuses
                .iter()
                .flatten()
                .filter(|s| s.role == hazina_client::proto::v1::Role::Primary as i32)
                .map(|s| s.site_id)
                .collect();
            let running = self.sites.iter().filter(|s| s.is_some()).count();
            if let [primary] = primaries[..]
                && statuses.iter().flatten().count() == running
                && statuses.iter().flatten().all(|s| s.leader_site == primary)
            {
                return primary;
            }
            assert!(Instant::now() < deadline, "no single primary within {within:?}: {statuses:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `site` is the one primary and every running site knows it.
    pub async fn primary_is(&self, site: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let primary = self.primary(deadline.saturating_duration_since(Instant::now())).await;
            if primary == site {
                return;
            }
            assert!(Instant::now() < deadline, "site {site} not primary within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `site` has taken a snapshot past `index`; returns the snapshot's index.
    pub async fn snapshot_past(&self, site: u64, index: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let at = usize::try_from(site - 1).expect("a small site id");
        loop {
            if let Some(status) = &self.statuses().await[at]
                && status.snapshot_index > index
            {
                return status.snapshot_index;
            }
            assert!(Instant::now() < deadline, "no snapshot past {index} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running site applied the same index with the same digest.
    pub async fn converged(&self, within: Duration) -> (u64, u128) {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses().await;
            let running = self.sites.iter().filter(|s| s.is_some()).count();
            let seen: Vec<(u64, u128)> = statuses
                .iter()
                .flatten()
                .map(|s| (s.applied_index, hazina_client::proto::u128_from_wire(s.digest.as_ref())))
                .collect();
            if seen.len() == running && seen.windows(2).all(|w| w[0] == w[1]) {
                return seen[0];
            }
            assert!(
                Instant::now() < deadline,
                "sites did not converge within {within:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A gRPC call with the given bytes as the message and the reply's bytes back: for malformed
/// protobuf, and for clients that know the API only from reflection.
pub async fn raw_call(addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    #[derive(Clone, Copy, Debug, Default)]
    struct Raw;
    #[derive(Debug)]
    struct RawEncoder;
    #[derive(Debug)]
    struct RawDecoder;
    impl tonic::codec::Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            src: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<Vec<u8>>, tonic::Status> {
            let n = bytes::Buf::remaining(src);
            Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("a gRPC path");
    grpc.unary(tonic::Request::new(body), path, Raw).await.map(tonic::Response::into_inner)
}
