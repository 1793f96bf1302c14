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

/// Ports on 127.0.0.1 that were free a moment ago, for tests that must name their servers'
/// ports before starting them (the sites of a group name each other's). Each is held while the
/// rest are found, then let go for the server to bind. They are picked at random below the
/// range Linux gives the local ends of outgoing connections (32768 and up by default): a port
/// found by binding port 0 comes from that range, and in about one run in six of the cluster
/// tests some connection's local end took it before the server bound it ("Address already in
/// use", session 14). Picking ports is not test data: no seed.
pub fn free_ports(n: usize) -> Vec<u16> {
    use rand::Rng;
    const PORTS: std::ops::Range<u16> = 20_000..32_000;
    let mut rng = rand::rng();
    let mut held: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut tries = 0;
    while held.len() < n {
        tries += 1;
        assert!(tries <= 10_000, "no {n} free ports on 127.0.0.1 in {PORTS:?}");
        // A port already held fails to bind again, like one in use elsewhere.
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", rng.random_range(PORTS))) {
            held.push(listener);
        }
    }
    held.iter().map(|l| l.local_addr().expect("a bound listener").port()).collect()
}

/// The value of option `name` that RocksDB runs the database in `dir` with, as its latest
/// options file (`OPTIONS-NNNNNN`, written at every open) records it; `None` if no such file
/// or option.
pub fn rocksdb_option(dir: &std::path::Path, name: &str) -> Option<String> {
    let mut written: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|file| file.starts_with("OPTIONS-"))
        .collect();
    // The numbers are zero-padded: the last by name is the latest.
    written.sort();
    let text = std::fs::read_to_string(dir.join(written.last()?)).ok()?;
    let prefix = format!("{name}=");
    text.lines().find_map(|line| line.trim().strip_prefix(&prefix).map(str::to_owned))
}

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
