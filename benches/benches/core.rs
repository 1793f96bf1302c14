//! Applying batches of transfers in memory: `cargo bench -p hazina-benches --bench core`.
//!
//! Over 1,000,000 accounts (999,000 funded customers and 1,000 merchant tills), about half of all
//! transfers fail for insufficient funds. Uniform traffic pays any customer or merchant; skewed
//! traffic sends half of all transfers to 8 hot merchants. Batches of 1, 100 and 8,000 transfers,
//! with 1 and 2 partitions (2 partitions run on 2 threads for batches of 512 or more). The
//! `outcome` group applies only transfers that succeed, then only transfers that fail, to show
//! the reject path costs no more than the accept path. Figures: docs/BENCHMARKS.md.

// Bench arithmetic on counts and sizes, on the 64-bit hosts Hazina runs on.
#![allow(clippy::cast_possible_truncation, clippy::cast_lossless, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hazina_core::{Ledger, ResultCode};
use hazina_testkit::traffic::{Clock, KES, Population, Skew, Traffic};

const ACCOUNTS: u64 = 1_000_000;
const MERCHANTS: u64 = 1_000;
/// Transfer records per generation in memory (at most two generations are resident), as a node
/// keeps only recent records resident and the rest in storage.
const TRANSFERS_GENERATION_MAX: usize = 1_000_000;

fn population() -> Population {
    Population {
        customers: ACCOUNTS - MERCHANTS,
        merchants: MERCHANTS,
        customer_balance: 1_000 * KES,
    }
}

struct Bench {
    ledger: Ledger,
    clock: Clock,
    traffic: Traffic,
    results: Vec<ResultCode>,
}

impl Bench {
    fn new(partitions: usize) -> Bench {
        let population = population();
        let (ledger, clock) = population.funded_ledger(partitions, TRANSFERS_GENERATION_MAX);
        let traffic = Traffic::new(population, 42, Skew::Uniform, 50);
        let mut bench = Bench { ledger, clock, traffic, results: Vec::new() };
        // Measure the steady state: run past the first rotation of the record generations, so
        // no timed batch is the first to touch a page of their memory.
        let warm_up_batches = 2 * TRANSFERS_GENERATION_MAX / 8_000 + 10;
        bench.run(warm_up_batches as u64, 8_000, &mut 0, &mut 0);
        bench
    }

    /// Applies `iters` fresh batches of `size`, timing only `apply`.
    fn run(&mut self, iters: u64, size: usize, accepted: &mut u64, applied: &mut u64) -> Duration {
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            let batch = self.traffic.batch(size);
            let stamp = self.clock.stamp(size);
            let start = Instant::now();
            self.ledger.apply_into(stamp, &batch, &mut self.results).expect("batch applies");
            timed += start.elapsed();
            *accepted += self.results.iter().filter(|r| **r == ResultCode::Ok).count() as u64;
            *applied += size as u64;
        }
        timed
    }
}

fn report(name: &str, accepted: u64, applied: u64) {
    if let Some(percent) = (accepted * 100).checked_div(applied) {
        eprintln!("{name}: {accepted} of {applied} transfers accepted ({percent}%)");
    }
}

fn apply(c: &mut Criterion) {
    for partitions in [1, 2] {
        let mut bench = Bench::new(partitions);
        for (name, skew) in [("uniform", Skew::Uniform), ("skewed", Skew::HotMerchants { hot: 8 })]
        {
            bench.traffic.set_skew(skew);
            let mut group = c.benchmark_group(format!("apply/{name}/P{partitions}"));
            for size in [1usize, 100, 8_000] {
                group.throughput(Throughput::Elements(size as u64));
                let (mut accepted, mut applied) = (0, 0);
                group.bench_function(BenchmarkId::from_parameter(size), |b| {
                    b.iter_custom(|iters| bench.run(iters, size, &mut accepted, &mut applied));
                });
                report(&format!("apply/{name}/P{partitions}/{size}"), accepted, applied);
            }
            group.finish();
        }
    }
}

fn outcome(c: &mut Criterion) {
    let mut bench = Bench::new(1);
    let mut group = c.benchmark_group("apply/outcome/P1");
    group.throughput(Throughput::Elements(8_000));
    for (name, reject_percent) in [("accepted", 0), ("rejected", 100)] {
        bench.traffic.set_reject_percent(reject_percent);
        let (mut accepted, mut applied) = (0, 0);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| bench.run(iters, 8_000, &mut accepted, &mut applied));
        });
        report(&format!("apply/outcome/P1/{name}"), accepted, applied);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    targets = apply, outcome
}
criterion_main!(benches);
