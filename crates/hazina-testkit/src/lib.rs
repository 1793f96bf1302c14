//! Test support for Hazina: a plain reference model of the ledger's rules ([`model`]), a seeded
//! generator of random batches ([`world`]), invariant checks ([`check`]), a realistic population
//! and traffic for benchmarks ([`traffic`]) and seed handling.
//!
//! Random tests take their seed from `HAZINA_SEED` (one case) or derive one per case from a fixed
//! base, print it before running, and can be replayed with `HAZINA_SEED=<seed>`.

pub mod check;
pub mod model;
pub mod traffic;
pub mod world;

/// The seeds a random test runs: `HAZINA_SEED` alone if set, else `cases` seeds derived from
/// `base` (the count can be raised with `HAZINA_CASES`).
pub fn seeds(base: u64, cases: usize) -> Vec<u64> {
    if let Ok(seed) = std::env::var("HAZINA_SEED") {
        let seed = seed.trim().parse().expect("HAZINA_SEED must be an unsigned integer");
        return vec![seed];
    }
    let cases = std::env::var("HAZINA_CASES")
        .ok()
        .map(|c| c.trim().parse().expect("HAZINA_CASES must be an unsigned integer"))
        .unwrap_or(cases);
    (0..cases as u64).map(|k| base.wrapping_mul(0x9e37_79b9).wrapping_add(k)).collect()
}
