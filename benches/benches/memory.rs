//! Resident memory per account: `cargo bench -p hazina-benches --bench memory`.
//!
//! Creates `HAZINA_ACCOUNTS` (default 10,000,000) funded wallets and reports the growth of the
//! process's resident set per account, then funds them and applies 1,000,000 more transfers and
//! reports the growth per resident transfer record. Linux only (reads /proc/self/statm).

// Bench arithmetic on counts and sizes, on the 64-bit hosts Hazina runs on.
#![allow(clippy::cast_possible_truncation, clippy::cast_lossless, clippy::cast_precision_loss)]

use hazina_core::{Ledger, LedgerConfig, ResultCode};
use hazina_testkit::traffic::{Clock, KES, Population, Skew, Traffic};
use hazina_testkit::world::EPOCH;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 =
        statm.split_whitespace().nth(1).expect("resident field").parse().expect("a number");
    pages * 4096
}

#[allow(clippy::print_stdout)] // This bench's output is its report.
fn main() {
    // `cargo bench` passes harness flags such as --bench; this program takes none.
    let accounts: u64 = std::env::var("HAZINA_ACCOUNTS")
        .ok()
        .map(|n| n.parse().expect("HAZINA_ACCOUNTS must be a number"))
        .unwrap_or(10_000_000);
    let partitions: usize = std::env::var("HAZINA_PARTITIONS")
        .ok()
        .map(|n| n.parse().expect("HAZINA_PARTITIONS must be a number"))
        .unwrap_or(1);
    let population =
        Population { customers: accounts - 1_000, merchants: 1_000, customer_balance: 1_000 * KES };

    let before = resident_bytes();
    let mut ledger = Ledger::new(LedgerConfig {
        partitions,
        threads: partitions,
        accounts_capacity: accounts as usize + 1,
        ..LedgerConfig::default()
    })
    .expect("valid configuration");
    let mut clock = Clock::new(EPOCH);
    for batch in population.accounts(8_000) {
        let results = ledger.apply(clock.stamp(batch.len()), &batch).expect("accounts apply");
        assert!(results.iter().all(|r| *r == ResultCode::Ok));
    }
    let with_accounts = resident_bytes();
    let per_account = (with_accounts - before) as f64 / ledger.accounts_count() as f64;
    println!(
        "accounts: {}  partitions: {partitions}  resident growth: {:.0} MiB  per account: {per_account:.0} bytes",
        ledger.accounts_count(),
        (with_accounts - before) as f64 / (1 << 20) as f64
    );

    for batch in population.funding(8_000) {
        ledger.apply(clock.stamp(batch.len()), &batch).expect("funding applies");
    }
    let mut traffic = Traffic::new(population, 7, Skew::Uniform, 50);
    for _ in 0..125 {
        let batch = traffic.batch(8_000);
        ledger.apply(clock.stamp(batch.len()), &batch).expect("batch applies");
    }
    let with_transfers = resident_bytes();
    let records = ledger.transfers_resident();
    println!(
        "transfer records resident: {records}  per record: {:.0} bytes",
        (with_transfers - with_accounts) as f64 / records as f64
    );
}
