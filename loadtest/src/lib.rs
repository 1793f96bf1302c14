//! `hazina-loadtest` (the library behind the binary): drives a Hazina node with a mobile-money population and traffic mix,
//! measures throughput and latency, and verifies the outcome.
//!
//! ```text
//! hazina-loadtest --target http://127.0.0.1:7400 --rate 16000 --duration 60 --json run.json
//! ```
//!
//! Open loop (default): requests are scheduled at `--rate` attempts per second, and latency is
//! measured from each request's intended send time, so a slow server cannot hide its queueing
//! (no coordinated omission). Closed loop (`--rate 0`): `--concurrency` callers send back to
//! back, to find the maximum. `--batch N` puts N attempts in each request.

// A command-line tool prints its report.
#![allow(clippy::print_stdout)]

pub mod plot;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hazina_client::{Client, ClientError, RetryPolicy};
use hazina_core::{NewTransfer, ResultCode, TransferFlags};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use workload::{Mix, Population, WALLET_LIMITS, WALLET_PROFILE};

#[derive(Debug, Clone, Parser)]
#[command(name = "hazina-loadtest", version, about = "Load-test and verify a Hazina node")]
// A flag given twice takes its last value, so that scripts can add to a command line.
#[command(args_override_self = true)]
pub struct Args {
    /// gRPC address of the node; for a replicated group, every site's, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    pub target: String,
    /// Attempts per request: 1 counts every refusal as an error; more resends with the same ids
    /// (as callers do) and follows a group's primary through a failover or a switchover.
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
    /// Prometheus endpoint of the node, to check its counts against ours; for a replicated
    /// group, every site's, comma-separated (each site counts the outcomes it answered, so the
    /// sum is what callers were told); "off" to skip.
    #[arg(long, default_value = "http://127.0.0.1:9400/metrics")]
    pub metrics: String,
    /// Transfers per second (open loop; a fee chain counts 3, a payout --salary-batch); 0 runs
    /// a closed loop at --concurrency.
    #[arg(long, default_value_t = 16_000)]
    pub rate: u64,
    /// Seconds of load (after set-up).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Stop after this many attempts, if sooner.
    #[arg(long)]
    pub count: Option<u64>,
    /// Attempts per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Requests in flight at most (open loop), or callers (closed loop).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// gRPC connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Threads of the load generator's runtime; default: 1 for a closed loop (`--rate 0`), one
    /// a core for an open loop. On one thread a connection's task, woken by the first caller of
    /// a burst, runs after the others and sends what they queued in one write; on several,
    /// tokio runs it right after the caller that woke it, so each request is a system call of
    /// its own. In run A one thread cost 9 to 15 µs of CPU a request against 14 to 20 µs;
    /// in the open loop of run C its p99 was higher (10 to 36 ms against 4 to 21 ms), since
    /// sends wait behind the thread's other work (docs/BENCHMARKS.md, session 16).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 1_000_000)]
    pub customers: u64,
    #[arg(long, default_value_t = 20_000)]
    pub tills: u64,
    #[arg(long, default_value_t = 2_000)]
    pub paybills: u64,
    #[arg(long, default_value_t = 10_000)]
    pub agents: u64,
    #[arg(long, default_value_t = 100)]
    pub employers: u64,
    /// Share of attempts made from empty wallets, refused for insufficient funds.
    #[arg(long, default_value_t = 50)]
    pub reject_percent: u32,
    /// Share of answered requests sent again with the same ids, as a client that timed out
    /// would; each must get its first outcome back (`Exists` for a success).
    #[arg(long, default_value_t = 1)]
    pub resend_percent: u32,
    /// Transfers in one salary payout.
    #[arg(long, default_value_t = 100)]
    pub salary_batch: usize,
    /// Only attempts of one transfer (no fee chains, no salary payouts): for measuring one
    /// transfer per request.
    #[arg(long)]
    pub single: bool,
    /// Skip creating the population (it exists from an earlier run with the same sizes).
    #[arg(long)]
    pub skip_setup: bool,
    /// Seeds the random choices (who pays whom, how much); the same seed makes the same traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The range this run's transfer ids come from. By default the start time in milliseconds,
    /// so that runs against one node never reuse an id (a reused id is answered
    /// `ExistsWithDifferentFields` and fails verification); give the same value to replay a
    /// run's ids exactly.
    #[arg(long)]
    pub run_id: Option<u64>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a chart of latency (p50, p99, p99.9) and transfers/s, second by second, here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Items in chunks of [`CHUNK`]: growing never copies what is already held. A single list
/// doubles, and at run B's rate each doubling copied hundreds of megabytes into fresh pages
/// while every caller waited for the lock: the run's rate fell to a tenth for a second at 8M,
/// 16M and 32M acknowledged transfers (docs/BENCHMARKS.md, session 15).
#[derive(Debug)]
struct Chunks<T> {
    full: Vec<Vec<T>>,
    open: Vec<T>,
}

impl<T> Default for Chunks<T> {
    fn default() -> Chunks<T> {
        Chunks { full: Vec::new(), open: Vec::with_capacity(CHUNK) }
    }
}

/// Items a chunk holds: also the most ids the verification looks up in one request.
const CHUNK: usize = 8_000;

impl<T> Chunks<T> {
    fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        for item in items {
            if self.open.len() == CHUNK {
                let full = std::mem::replace(&mut self.open, Vec::with_capacity(CHUNK));
                self.full.push(full);
            }
            self.open.push(item);
        }
    }

    /// Every chunk, in the order the items came, none empty.
    fn into_chunks(self) -> impl Iterator<Item = Vec<T>> {
        self.full.into_iter().chain(Some(self.open).filter(|open| !open.is_empty()))
    }
}

/// What the run saw, shared by the workers.
#[derive(Debug)]
struct Tally {
    /// Latency of the whole run, as of the last sample of the timeline.
    latency: Mutex<Histogram<u64>>,
    /// Latency since the last sample of the timeline.
    interval: Mutex<Histogram<u64>>,
    /// One sample a second, and where the last one left off.
    timeline: Mutex<Vec<Second>>,
    sampled: Mutex<Sampled>,
    results: Mutex<BTreeMap<u16, u64>>,
    /// Every acknowledged transfer and its outcome, for verification.
    acknowledged: Mutex<Chunks<(u128, ResultCode)>>,
    transfers: AtomicU64,
    requests: AtomicU64,
    transport_errors: AtomicU64,
    /// Items of requests that got an error: they may or may not have been applied.
    in_doubt: AtomicU64,
    resend_mismatches: AtomicU64,
    /// Microseconds from `began` to the latest answer, and the longest stretch with none.
    began: Instant,
    last_answer_us: AtomicU64,
    longest_gap_us: AtomicU64,
    /// When the longest gap ended (approximately, when answers race).
    longest_gap_end_us: AtomicU64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            began: Instant::now(),
            last_answer_us: AtomicU64::new(0),
            longest_gap_us: AtomicU64::new(0),
            longest_gap_end_us: AtomicU64::new(0),
            latency: Mutex::new(latency_histogram()),
            interval: Mutex::new(latency_histogram()),
            timeline: Mutex::new(Vec::new()),
            sampled: Mutex::new(Sampled::new(Instant::now())),
            results: Mutex::new(BTreeMap::new()),
            acknowledged: Mutex::new(Chunks::default()),
            transfers: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            transport_errors: AtomicU64::new(0),
            in_doubt: AtomicU64::new(0),
            resend_mismatches: AtomicU64::new(0),
        }
    }
}

impl Tally {
    /// Notes an answered request: the longest gap between answers is how long a failover or a
    /// switchover kept writes from being answered.
    fn answered(&self) {
        let now = u64::try_from(self.began.elapsed().as_micros()).unwrap_or(u64::MAX);
        let before = self.last_answer_us.fetch_max(now, Ordering::Relaxed);
        if now > before {
            let gap = now - before;
            if gap > self.longest_gap_us.fetch_max(gap, Ordering::Relaxed) {
                self.longest_gap_end_us.store(now, Ordering::Relaxed);
            }
        }
    }
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")
}

/// Where the timeline's last sample ended, and what it covered (to fold a short last interval
/// into it).
#[derive(Debug)]
struct Sampled {
    /// End of the last sample: time, transfers and transport errors so far.
    at: Instant,
    transfers: u64,
    errors: u64,
    /// The last sample's start (time, transfers, errors) and its latency.
    last: Option<(Instant, u64, u64, Histogram<u64>)>,
}

impl Sampled {
    fn new(started: Instant) -> Sampled {
        Sampled { at: started, transfers: 0, errors: 0, last: None }
    }
}

impl Tally {
    /// Closes the current interval of the timeline and returns its sample. An interval shorter
    /// than half a second (the end of the run) is folded into the sample before it, so the
    /// chart shows no rate computed over a few milliseconds.
    fn sample(&self, started: Instant) -> Second {
        let now = Instant::now();
        let transfers = self.transfers.load(Ordering::Relaxed);
        let errors = self.transport_errors.load(Ordering::Relaxed);
        let mut latency =
            std::mem::replace(&mut *self.interval.lock().expect("tally"), latency_histogram());
        // The run's histogram is the sum of its intervals: each answer is recorded once.
        self.latency.lock().expect("tally").add(&latency).expect("same bounds");
        let mut sampled = self.sampled.lock().expect("tally");
        let mut timeline = self.timeline.lock().expect("tally");
        let mut from = (sampled.at, sampled.transfers, sampled.errors);
        if now - sampled.at < Duration::from_millis(500)
            && let Some((at, t, e, before)) = sampled.last.take()
            && timeline.pop().is_some()
        {
            from = (at, t, e);
            latency.add(&before).expect("same bounds");
        }
        let seconds = (now - from.0).as_secs_f64().max(1e-6);
        let quantile = |q| if latency.is_empty() { 0 } else { latency.value_at_quantile(q) };
        let second = Second {
            at_seconds: (now - started).as_secs_f64(),
            transfers_per_second: (transfers - from.1) as f64 / seconds,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            max_us: latency.max(),
            transport_errors: errors - from.2,
        };
        *sampled =
            Sampled { at: now, transfers, errors, last: Some((from.0, from.1, from.2, latency)) };
        timeline.push(second);
        second
    }
}

/// What one interval (about a second) of the run saw: answered requests' latency and the rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Second {
    /// Seconds from the start of the load to the end of this interval.
    pub at_seconds: f64,
    pub transfers_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub transport_errors: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub target_rate: u64,
    pub batch: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub transfers: u64,
    pub transfers_per_second: f64,
    pub latency_us: BTreeMap<String, u64>,
    pub results: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub in_doubt_transfers: u64,
    /// The longest time in which no request was answered, in milliseconds: with several
    /// targets and `--attempts` above 1, the write pause of a failover or a switchover.
    pub longest_answer_gap_ms: f64,
    /// Seconds from the start of the load to the end of that gap: where the failover was.
    pub longest_answer_gap_end_s: f64,
    pub verification: Verification,
    /// Second by second.
    pub timeline: Vec<Second>,
}

#[derive(Debug, Default, Serialize)]
pub struct Verification {
    pub money_conserved: bool,
    pub debits_posted: String,
    pub credits_posted: String,
    pub acknowledged_checked: u64,
    pub acknowledged_mismatched: u64,
    pub resend_mismatches: u64,
    /// Server counts minus ours, by result, where they differ beyond what is in doubt.
    pub metrics_disagreements: BTreeMap<String, i64>,
    pub metrics_checked: bool,
    pub passed: bool,
}

/// Sets up (unless told not to), runs the load, verifies, prints the table and writes the JSON.
pub async fn run(mut args: Args) -> Result<Report, Box<dyn std::error::Error>> {
    let run_id = *args.run_id.get_or_insert_with(|| {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        u64::try_from(since.unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
    });
    eprintln!("run id {run_id} (seed {}): replay its ids with --run-id {run_id}", args.seed);
    if args.batch == 0 || args.batch > 8_000 || args.concurrency == 0 || args.connections == 0 {
        return Err("--batch must be 1 to 8,000; --concurrency and --connections at least 1".into());
    }
    if let Some(path) = &args.plot {
        plot::check_path(path)?;
    }
    let population = Population {
        customers: args.customers.max(2),
        tills: args.tills.max(1),
        paybills: args.paybills.max(1),
        agents: args.agents.max(1),
        employers: args.employers.max(1),
    };
    let retry = RetryPolicy {
        attempts: args.attempts.max(1),
        timeout: Duration::from_secs(30),
        ..RetryPolicy::default()
    };
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(Client::connect_with(&args.target, retry).await?);
    }
    if !args.skip_setup {
        setup(&clients, &population, args.seed).await?;
        settle(&args.target).await;
    }
    let metrics_before = scrape(&args.metrics).await;

    let tally = Arc::new(Tally::new());
    let started = Instant::now();
    *tally.sampled.lock().expect("tally") = Sampled::new(started);
    let deadline = started + Duration::from_secs(args.duration);
    let attempts_max = args.count.unwrap_or(u64::MAX);
    let progress = progress_line(Arc::clone(&tally), started);
    let mode = if args.rate == 0 { "closed" } else { "open" };
    if args.rate == 0 {
        closed_loop(&args, &clients, &population, &tally, deadline, attempts_max).await;
    } else {
        open_loop(&args, &clients, &population, &tally, deadline, attempts_max).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    let _ = progress.await;
    tally.sample(started);
    eprintln!();

    let metrics_after = scrape(&args.metrics).await;
    let verification =
        verify(&clients[0], &population, &tally, metrics_before, metrics_after).await?;
    let latency = tally.latency.lock().expect("tally").clone();
    let mut latency_us = BTreeMap::new();
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        latency_us.insert(name.to_owned(), latency.value_at_quantile(q));
    }
    latency_us.insert("max".to_owned(), latency.max());
    let transfers = tally.transfers.load(Ordering::Relaxed);
    let report = Report {
        mode: mode.into(),
        target_rate: args.rate,
        batch: args.batch,
        concurrency: args.concurrency,
        seconds,
        requests: tally.requests.load(Ordering::Relaxed),
        transfers,
        transfers_per_second: transfers as f64 / seconds,
        latency_us,
        results: tally
            .results
            .lock()
            .expect("tally")
            .iter()
            .map(|(&code, &n)| {
                let name = ResultCode::from_code(code).map_or("unknown", ResultCode::name);
                (name.to_owned(), n)
            })
            .collect(),
        transport_errors: tally.transport_errors.load(Ordering::Relaxed),
        in_doubt_transfers: tally.in_doubt.load(Ordering::Relaxed),
        longest_answer_gap_ms: tally.longest_gap_us.load(Ordering::Relaxed) as f64 / 1_000.0,
        // The tally's clock starts with the load, like the timeline's.
        longest_answer_gap_end_s: tally.longest_gap_end_us.load(Ordering::Relaxed) as f64
            / 1_000_000.0,
        verification,
        timeline: tally.timeline.lock().expect("tally").clone(),
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("JSON written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "hazina-loadtest: {} loop, target {} transfers/s, batch {}",
            report.mode, report.target_rate, report.batch
        );
        plot::write_svg(path, &title, &report.timeline)?;
        println!("chart written to {}", path.display());
    }
    Ok(report)
}

/// How long [`settle`] waits at most for a group's sites to apply the set-up.
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// Waits until every reachable site of a replicated group has applied everything the group had
/// committed when set-up ended (at most [`SETTLE_MAX`]), so that the measured load does not
/// start in set-up's tail: the primary acknowledges set-up's large entries once two sites hold
/// them, and the standbys apply them for a second or two after, in slices between their rounds
/// (docs/adr/0007), while the load's first requests wait for their acknowledgements. A single
/// site applied its set-up before answering it, and a site that does not answer is not waited
/// for (a failover run may have one down).
async fn settle(targets: &str) {
    let addrs: Vec<&str> = targets.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    if addrs.len() < 2 {
        return;
    }
    let started = Instant::now();
    let once =
        RetryPolicy { attempts: 1, timeout: Duration::from_secs(2), ..RetryPolicy::default() };
    let mut sites = Vec::new();
    for addr in addrs {
        if let Ok(client) = Client::connect_with(addr, once).await {
            sites.push(client);
        }
    }
    // The largest commit index a site knows at the first look (the primary's, or near it):
    // later writes, another load generator's, do not move it.
    let mut committed = None;
    loop {
        let mut applied = Vec::new();
        let mut known = None;
        for site in &sites {
            if let Ok(status) = site.status().await {
                applied.push(status.applied_index);
                known = known.max(Some(status.commit_index));
            }
        }
        let Some(target) = *committed.get_or_insert(known) else { return };
        if applied.iter().all(|&a| a >= target) {
            eprintln!(
                "set-up: every site applied it (index {target}) {:.1} s after it ended",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if started.elapsed() >= SETTLE_MAX {
            eprintln!(
                "set-up: sites still applying it after {} s (applied {applied:?} of {target}); \
                 starting the load",
                SETTLE_MAX.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the limit profile, the accounts and the funding, in batches, several in flight.
async fn setup(clients: &[Client], population: &Population, seed: u64) -> Result<(), ClientError> {
    let started = Instant::now();
    let results = clients[0].set_limit_profiles(&[(WALLET_PROFILE, WALLET_LIMITS)]).await?;
    check_setup(&results, "limit profile")?;
    let accounts = population.accounts();
    eprintln!("set-up: creating {} accounts", accounts.len());
    in_batches(clients, &accounts, "accounts", |client, chunk| async move {
        client.create_accounts(&chunk).await
    })
    .await?;
    let funding = population.funding(&mut ChaCha8Rng::seed_from_u64(seed));
    eprintln!("set-up: funding {} accounts", funding.len());
    in_batches(clients, &funding, "funding", |client, chunk| async move {
        client.create_transfers(&chunk).await
    })
    .await?;
    eprintln!("set-up: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Sends `items` in requests of 8,000 over the clients, two requests in flight per connection,
/// and checks every result is applied.
async fn in_batches<T, F, Fut>(
    clients: &[Client],
    items: &[T],
    what: &'static str,
    call: F,
) -> Result<(), ClientError>
where
    T: Clone + Send + 'static,
    F: Fn(Client, Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<ResultCode>, ClientError>> + Send + 'static,
{
    let mut calls = tokio::task::JoinSet::new();
    for (k, chunk) in items.chunks(8_000).enumerate() {
        calls.spawn(call(clients[k % clients.len()].clone(), chunk.to_vec()));
        if calls.len() >= 2 * clients.len() {
            check_setup(&calls.join_next().await.expect("a call").expect("joined")?, what)?;
        }
    }
    while let Some(done) = calls.join_next().await {
        check_setup(&done.expect("joined")?, what)?;
    }
    Ok(())
}

fn check_setup(results: &[ResultCode], what: &str) -> Result<(), ClientError> {
    match results.iter().find(|r| !r.is_applied()) {
        None => Ok(()),
        Some(r) => Err(ClientError::BadReply(format!("set-up of {what} refused: {}", r.name()))),
    }
}

/// Ids of a worker's transfers: disjoint ranges above the funding transfers, by run.
fn first_id(population: &Population, run_id: u64, worker: usize) -> u128 {
    let base = population.funding_count() + 1_000 + (u128::from(run_id) << 64);
    base + (worker as u128) * (1u128 << 40)
}

/// Sends one request of `attempts`, records its latency from `intended` and its results, and
/// resends it sometimes. Returns the holds it placed.
async fn send(
    client: &Client,
    tally: &Tally,
    transfers: Vec<NewTransfer>,
    intended: Instant,
    resend: bool,
) -> Vec<NewTransfer> {
    let outcome = client.create_transfers(&transfers).await;
    let micros = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let results = match outcome {
        Ok(results) => results,
        Err(_) => {
            tally.transport_errors.fetch_add(1, Ordering::Relaxed);
            tally.in_doubt.fetch_add(transfers.len() as u64, Ordering::Relaxed);
            return Vec::new();
        }
    };
    let _ = tally.interval.lock().expect("tally").record(micros);
    tally.answered();
    tally.transfers.fetch_add(transfers.len() as u64, Ordering::Relaxed);
    {
        let mut counts = tally.results.lock().expect("tally");
        for r in &results {
            *counts.entry(*r as u16).or_default() += 1;
        }
    }
    tally
        .acknowledged
        .lock()
        .expect("tally")
        .extend(transfers.iter().map(|t| t.id).zip(results.iter().copied()));
    let holds = transfers
        .iter()
        .zip(&results)
        .filter(|(t, r)| t.flags.contains(TransferFlags::PENDING) && **r == ResultCode::Ok)
        .map(|(t, _)| *t)
        .collect();
    if resend {
        match client.create_transfers(&transfers).await {
            Ok(again) => {
                tally.requests.fetch_add(1, Ordering::Relaxed);
                {
                    let mut counts = tally.results.lock().expect("tally");
                    for r in &again {
                        *counts.entry(*r as u16).or_default() += 1;
                    }
                }
                let expected: Vec<ResultCode> = results
                    .iter()
                    .map(|&r| if r == ResultCode::Ok { ResultCode::Exists } else { r })
                    .collect();
                if again != expected {
                    tally.resend_mismatches.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                tally.in_doubt.fetch_add(transfers.len() as u64, Ordering::Relaxed);
            }
        }
    }
    holds
}

/// The traffic of one worker (0 is the open loop's single dispatcher): its own random stream,
/// from the seed, and its own id range.
fn mix_for(args: &Args, population: &Population, worker: usize) -> Mix {
    Mix::new(
        population.clone(),
        ChaCha8Rng::seed_from_u64(args.seed ^ ((worker as u64) << 32)),
        first_id(population, args.run_id.expect("run() sets the run id"), worker),
        args.reject_percent,
        args.salary_batch,
        args.single,
    )
}

async fn open_loop(
    args: &Args,
    clients: &[Client],
    population: &Population,
    tally: &Arc<Tally>,
    deadline: Instant,
    attempts_max: u64,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mix = Arc::new(tokio::sync::Mutex::new(mix_for(args, population, 0)));
    // The rate counts transfers: a request of n transfers is due n / rate after the one before.
    let per_transfer = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut intended = Instant::now();
    let mut sent = 0u64;
    let mut k = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while sent < attempts_max && intended < deadline {
        tokio::time::sleep_until(intended.into()).await;
        k += 1;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        let (transfers, resend) = {
            let mut mix = mix.lock().await;
            let mut transfers = Vec::new();
            for _ in 0..args.batch {
                transfers.extend(mix.attempt().transfers);
            }
            (transfers, mix.resend(args.resend_percent))
        };
        let this_intended = intended;
        intended += per_transfer * u32::try_from(transfers.len()).unwrap_or(u32::MAX);
        sent += args.batch as u64;
        let (client, tally, mix) =
            (clients[k % clients.len()].clone(), Arc::clone(tally), Arc::clone(&mix));
        tasks.spawn(async move {
            let holds = send(&client, &tally, transfers, this_intended, resend).await;
            drop(permit);
            let mut mix = mix.lock().await;
            for hold in holds {
                mix.hold_placed(hold);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(
    args: &Args,
    clients: &[Client],
    population: &Population,
    tally: &Arc<Tally>,
    deadline: Instant,
    attempts_max: u64,
) {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let mut mix = mix_for(args, population, worker + 1);
        let (client, tally) = (clients[worker % clients.len()].clone(), Arc::clone(tally));
        let (sent, stop, batch, resend_percent) =
            (Arc::clone(&sent), Arc::clone(&stop), args.batch, args.resend_percent);
        callers.spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if sent.fetch_add(batch as u64, Ordering::Relaxed) >= attempts_max {
                    break;
                }
                let mut transfers = Vec::new();
                for _ in 0..batch {
                    transfers.extend(mix.attempt().transfers);
                }
                let resend = mix.resend(resend_percent);
                for hold in send(&client, &tally, transfers, Instant::now(), resend).await {
                    mix.hold_placed(hold);
                }
            }
        });
    }
    while callers.join_next().await.is_some() {}
    stop.store(true, Ordering::Relaxed);
}

fn progress_line(tally: Arc<Tally>, started: Instant) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("template"),
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The last second's figures, not the run's so far: a stall shows at once.
            let s = tally.sample(started);
            bar.set_message(format!(
                "{:>9.0} transfers/s  p50 {} µs  p99 {} µs  total {}  errors {}",
                s.transfers_per_second,
                s.p50_us,
                s.p99_us,
                tally.transfers.load(Ordering::Relaxed),
                tally.transport_errors.load(Ordering::Relaxed),
            ));
            bar.tick();
        }
    })
}

/// The node's result counters, by result name, summed over every endpoint of the
/// comma-separated list; `None` when metrics are off or any endpoint is unreachable.
async fn scrape(urls: &str) -> Option<BTreeMap<String, u64>> {
    if urls == "off" {
        return None;
    }
    let mut sum = BTreeMap::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        for (name, n) in scrape_one(url).await? {
            *sum.entry(name).or_default() += n;
        }
    }
    Some(sum)
}

async fn scrape_one(url: &str) -> Option<BTreeMap<String, u64>> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = format!("/{}", path.trim_start_matches('/'));
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    let mut counts = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("hazina_results_total{result=\"") else { continue };
        let Some((name, value)) = rest.split_once("\"} ") else { continue };
        counts.insert(name.to_owned(), value.trim().parse().ok()?);
    }
    Some(counts)
}

async fn verify(
    client: &Client,
    population: &Population,
    tally: &Tally,
    before: Option<BTreeMap<String, u64>>,
    after: Option<BTreeMap<String, u64>>,
) -> Result<Verification, ClientError> {
    let mut v = Verification::default();
    // Money: over every account, posted debits equal posted credits.
    let ids: Vec<u128> = population.accounts().iter().map(|a| a.id).collect();
    let (mut debits, mut credits) = (0u128, 0u128);
    let (mut held_out, mut held_in) = (0u128, 0u128);
    for chunk in ids.chunks(8_000) {
        for a in client.lookup_accounts(chunk).await? {
            debits += a.debits_posted;
            credits += a.credits_posted;
            held_out += a.debits_pending;
            held_in += a.credits_pending;
        }
    }
    v.money_conserved = debits == credits && held_out == held_in;
    v.debits_posted = debits.to_string();
    v.credits_posted = credits.to_string();
    // Every acknowledged transfer, looked up again.
    let acknowledged = std::mem::take(&mut *tally.acknowledged.lock().expect("tally"));
    for chunk in acknowledged.into_chunks() {
        let ids: Vec<u128> = chunk.iter().map(|(id, _)| *id).collect();
        let found: BTreeMap<u128, ResultCode> = client
            .lookup_transfers(&ids)
            .await?
            .into_iter()
            .map(|t| (t.new.id, t.result))
            .collect();
        for (id, result) in &chunk {
            v.acknowledged_checked += 1;
            // Every id is fresh, so `Exists` means an earlier attempt was applied but its answer
            // lost (the primary failed or stepped down first): the record says `Ok`.
            let told = if *result == ResultCode::Exists { ResultCode::Ok } else { *result };
            if found.get(id) != Some(&told) {
                v.acknowledged_mismatched += 1;
            }
        }
    }
    v.resend_mismatches = tally.resend_mismatches.load(Ordering::Relaxed);
    // The node's counts against ours: equal, but for requests in doubt.
    if let (Some(before), Some(after)) = (before, after) {
        v.metrics_checked = true;
        let ours = tally.results.lock().expect("tally").clone();
        let in_doubt = i64::try_from(tally.in_doubt.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let mut all: BTreeMap<String, i64> = BTreeMap::new();
        for (name, n) in &after {
            let server = i64::try_from(*n - before.get(name).copied().unwrap_or(0)).unwrap_or(0);
            all.insert(name.clone(), server);
        }
        for (code, n) in &ours {
            let name = ResultCode::from_code(*code).map_or("unknown", ResultCode::name);
            *all.entry(name.to_owned()).or_default() -= i64::try_from(*n).unwrap_or(0);
        }
        for (name, diff) in all {
            if diff < 0 || diff > in_doubt {
                v.metrics_disagreements.insert(name, diff);
            }
        }
    }
    v.passed = v.money_conserved
        && v.acknowledged_mismatched == 0
        && v.resend_mismatches == 0
        && v.metrics_disagreements.is_empty();
    Ok(v)
}

fn print_table(r: &Report) {
    println!();
    println!(
        "mode            {} (target {} transfers/s, batch {}, concurrency {})",
        r.mode, r.target_rate, r.batch, r.concurrency
    );
    println!("duration        {:.1} s", r.seconds);
    println!("requests        {}", r.requests);
    println!("transfers       {}  ({:.0}/s)", r.transfers, r.transfers_per_second);
    for (name, us) in &r.latency_us {
        println!("latency {name:<7} {:.3} ms", *us as f64 / 1_000.0);
    }
    println!(
        "transport errs  {}  (transfers in doubt: {})",
        r.transport_errors, r.in_doubt_transfers
    );
    println!(
        "longest gap     {:.1} ms without an answer, ending {:.1} s into the load",
        r.longest_answer_gap_ms, r.longest_answer_gap_end_s
    );
    println!("results:");
    for (name, n) in &r.results {
        println!("  {name:<28} {n}");
    }
    let v = &r.verification;
    println!("verification:");
    println!(
        "  money conserved             {} (debits {} = credits {})",
        v.money_conserved, v.debits_posted, v.credits_posted
    );
    println!(
        "  acknowledged looked up      {} ({} mismatched)",
        v.acknowledged_checked, v.acknowledged_mismatched
    );
    println!("  resends with first outcome  {} mismatched", v.resend_mismatches);
    if v.metrics_checked {
        println!("  node metrics agree          {}", v.metrics_disagreements.is_empty());
    } else {
        println!("  node metrics agree          not checked (metrics off or unreachable)");
    }
    println!("  PASSED                      {}", v.passed);
}

#[cfg(test)]
mod tests {
    use super::{Args, CHUNK, Chunks};
    use clap::Parser;

    #[test]
    fn a_flag_given_twice_takes_its_last_value() {
        // loadtest/bench.sh adds LOAD_ARGS after its own flags.
        let args = Args::try_parse_from([
            "hazina-loadtest",
            "--concurrency",
            "256",
            "--concurrency",
            "512",
        ])
        .expect("a repeated flag parses");
        assert_eq!(args.concurrency, 512);
    }

    #[test]
    fn chunks_keep_every_item_in_order_and_never_exceed_a_chunk() {
        let mut chunks = Chunks::default();
        // Requests of 1, then 8,000, then 3: chunk edges fall inside requests.
        chunks.extend(0..1u64);
        chunks.extend(1..8_001);
        chunks.extend(8_001..8_004);
        let full_capacity: Vec<usize> = chunks.full.iter().map(Vec::capacity).collect();
        assert_eq!(full_capacity, vec![CHUNK], "a full chunk is never grown");
        let all: Vec<Vec<u64>> = chunks.into_chunks().collect();
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), vec![CHUNK, 4]);
        assert_eq!(all.concat(), (0..8_004).collect::<Vec<u64>>());
        assert_eq!(Chunks::<u64>::default().into_chunks().count(), 0, "no empty chunk");
    }
}
