//! The machine's floor for one gRPC call at a time: a bare tonic server answering the standard
//! health check (`grpc.health.v1.Health/Check`, a few bytes each way) and a closed-loop driver of
//! many concurrent callers, the shape of the load generator's run A without the ledger.
//!
//! ```sh
//! cargo run --release -p hazina-benches --example grpc_echo -- serve 127.0.0.1:7500 &
//! cargo run --release -p hazina-benches --example grpc_echo -- drive 127.0.0.1:7500
//! # the same driver against a running hazinad: its gRPC stack without the ledger
//! cargo run --release -p hazina-benches --example grpc_echo -- drive 127.0.0.1:7400
//! ```
//!
//! `drive ADDR [CALLERS] [CONNECTIONS] [SECONDS]` (default 256 callers over 4 connections for
//! 20 s) prints the calls answered a second and the CPU the driver itself used per call, read
//! from `/proc/self/stat`. Figures: docs/BENCHMARKS.md.

#![allow(clippy::cast_precision_loss)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(serve(args.get(1).map_or("127.0.0.1:7500", |a| a))),
        Some("drive") => {
            let number = |i: usize, default: u64| -> Result<u64, Box<dyn std::error::Error>> {
                Ok(args.get(i).map(|a| a.parse()).transpose()?.unwrap_or(default))
            };
            let addr = args.get(1).ok_or("drive needs the server's address")?.clone();
            let (callers, connections, seconds) = (number(2, 256)?, number(3, 4)?, number(4, 20)?);
            runtime.block_on(drive(addr, callers, connections.max(1), seconds))
        }
        _ => {
            Err("usage: grpc_echo serve [ADDR] | drive ADDR [CALLERS] [CONNECTIONS] [SECONDS]"
                .into())
        }
    }
}

async fn serve(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .serve(addr.parse()?)
        .await?;
    Ok(())
}

#[allow(clippy::print_stdout)] // The figures are this program's output.
async fn drive(
    addr: String,
    callers: u64,
    connections: u64,
    seconds: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?;
        channels.push(endpoint.tcp_nodelay(true).connect().await?);
    }
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu_before, started) = (cpu_seconds()?, Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let index = usize::try_from(caller % connections)?;
        let mut client = HealthClient::new(channels[index].clone());
        let (answered, failed, stop) = (answered.clone(), failed.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = HealthCheckRequest { service: String::new() };
                match client.check(request).await {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (answered_at_stop, elapsed) = (answered.load(Ordering::Relaxed), started.elapsed());
    let cpu = cpu_seconds()? - cpu_before;
    while tasks.join_next().await.is_some() {}
    let per_second = answered_at_stop as f64 / elapsed.as_secs_f64();
    println!(
        "{addr}: {callers} callers over {connections} connections, {seconds} s: \
         {per_second:.0} calls/s, {} failed, driver CPU {:.1} µs a call",
        failed.load(Ordering::Relaxed),
        cpu * 1e6 / answered_at_stop.max(1) as f64,
    );
    Ok(())
}

/// User and system CPU time of this process, from `/proc/self/stat` (in clock ticks of 1/100 s,
/// the value of `getconf CLK_TCK` on Linux).
fn cpu_seconds() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').ok_or("unexpected /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (user, system): (f64, f64) = (fields[11].parse()?, fields[12].parse()?);
    Ok((user + system) / 100.0)
}
