//! A plain loop of `Ledger::apply` for profilers (perf, valgrind), without criterion around it:
//! `cargo build --release -p hazina-benches --example apply_loop` then
//! `perf record -e cpu-clock -g target/release/examples/apply_loop [batches] [partitions]
//! [accounts]`. A smaller population (say 100000) suits `valgrind --tool=callgrind`.
//! Prints the rate it reached.

#![allow(clippy::cast_possible_truncation, clippy::cast_lossless, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use hazina_testkit::traffic::{KES, Population, Skew, Traffic};

const GENERATION_MAX: usize = 1_000_000;

#[allow(clippy::print_stdout)] // The rate is this program's output.
fn main() {
    let mut args = std::env::args().skip(1);
    let batches: usize = args.next().map_or(500, |a| a.parse().expect("batches"));
    let partitions: usize = args.next().map_or(1, |a| a.parse().expect("partitions"));
    let accounts: u64 = args.next().map_or(1_000_000, |a| a.parse().expect("accounts"));
    let generation_max = GENERATION_MAX.min(accounts as usize);
    let population =
        Population { customers: accounts - 1_000, merchants: 1_000, customer_balance: 1_000 * KES };
    let (mut ledger, mut clock) = population.funded_ledger(partitions, generation_max);
    let mut traffic = Traffic::new(population, 1, Skew::Uniform, 50);
    let mut results = Vec::new();
    // Warm up past the first rotation of the record generations, so that what is timed is the
    // steady state (no first touch of fresh memory).
    for _ in 0..(2 * generation_max / 8_000 + 10) {
        let batch = traffic.batch(8_000);
        ledger.apply_into(clock.stamp(batch.len()), &batch, &mut results).expect("batch applies");
    }
    let mut timed = Duration::ZERO;
    for _ in 0..batches {
        let batch = traffic.batch(8_000);
        let stamp = clock.stamp(batch.len());
        let start = Instant::now();
        ledger.apply_into(stamp, &batch, &mut results).expect("batch applies");
        timed += start.elapsed();
    }
    let transfers = batches * 8_000;
    println!(
        "{transfers} transfers in {:.3} s: {:.0} transfers/s",
        timed.as_secs_f64(),
        transfers as f64 / timed.as_secs_f64()
    );
}
