//! The machine's floor for random memory reads over 256 MiB: one read that depends on the one
//! before (pointer chasing) against reads that do not (the processor overlaps their misses).
//! `cargo run --release -p hazina-benches --example memory_latency`. Explains why the ledger
//! resolves and warms a batch's memory in stages (docs/ARCHITECTURE.md).

#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::time::Instant;

#[allow(clippy::print_stdout)] // The two figures are this program's output.
fn main() {
    let n: usize = 32 << 20; // 32 Mi u64 = 256 MiB, far beyond any cache.
    // A random cyclic permutation (xorshift-driven Fisher-Yates), then a successor table.
    let mut order: Vec<u64> = (0..n as u64).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut next = vec![0u64; n];
    for i in 0..n {
        next[order[i] as usize] = order[(i + 1) % n];
    }
    let reads = 5_000_000;
    let start = Instant::now();
    let mut at = 0u64;
    for _ in 0..reads {
        at = next[at as usize];
    }
    let dependent = start.elapsed().as_nanos() as f64 / f64::from(reads);
    let start = Instant::now();
    let (mut sum, mut y) = (0u64, 1u64);
    for _ in 0..reads {
        y = y.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        sum = sum.wrapping_add(next[(y >> 35) as usize % n]);
    }
    let independent = start.elapsed().as_nanos() as f64 / f64::from(reads);
    println!(
        "dependent reads: {dependent:.0} ns each; independent reads: {independent:.0} ns each"
    );
    std::hint::black_box((at, sum));
}
