//! The ledger against the reference model, on seeded random histories.
//!
//! Every test prints the seed of each case it runs. To replay a failure:
//! `HAZINA_SEED=<seed> cargo nextest run -p hazina-testkit <test name>`; to run more cases:
//! `HAZINA_CASES=<n>`.

use std::collections::BTreeSet;

use hazina_core::{Command, Ledger, LedgerConfig, ResultCode, Timestamp};
use hazina_testkit::model::{Model, replay};
use hazina_testkit::world::{STABLE_PROFILES, World, WorldConfig};
use hazina_testkit::{check, seeds};

const HOLDS_PER_ACCOUNT_MAX: u16 = 4;
const LIMIT_PROFILES_MAX: usize = 8;
const BATCHES: usize = 150;

/// (partitions, threads, spanning units allowed on workers in percent) of the ledgers compared
/// on every history. Threads > 1 with `parallel_batch_min = 0` sends every batch through the
/// parallel path: with 100%, its units run on the workers (the rendezvous executor); with 0%,
/// they run on the calling thread and only recording uses the workers.
const SHAPES: [(usize, usize, u8); 5] =
    [(1, 1, 100), (2, 2, 100), (4, 2, 100), (8, 2, 0), (8, 3, 100)];

fn ledger(partitions: usize, threads: usize) -> Ledger {
    ledger_shaped(partitions, threads, 100)
}

fn ledger_shaped(partitions: usize, threads: usize, spanning_units_max_percent: u8) -> Ledger {
    Ledger::new(LedgerConfig {
        partitions,
        threads,
        parallel_batch_min: 0,
        spanning_units_max_percent,
        holds_per_account_max: HOLDS_PER_ACCOUNT_MAX,
        limit_profiles_max: LIMIT_PROFILES_MAX,
        ..LedgerConfig::default()
    })
    .expect("valid test configuration")
}

fn model() -> Model {
    Model::new(HOLDS_PER_ACCOUNT_MAX, LIMIT_PROFILES_MAX)
}

fn history(seed: u64, batches: usize) -> Vec<(Timestamp, Vec<Command>)> {
    let mut world = World::new(seed, WorldConfig::default());
    (0..batches).map(|_| world.next_batch()).collect()
}

/// The model's state must equal the ledger's, field for field.
fn same_state(ledger: &Ledger, model: &Model) -> Result<(), String> {
    let accounts = ledger.accounts();
    let expected: Vec<_> = model.accounts.values().copied().collect();
    if accounts != expected {
        let diff = accounts
            .iter()
            .zip(&expected)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("ledger {a:?}\n model {b:?}"))
            .unwrap_or_else(|| format!("{} accounts vs {}", accounts.len(), expected.len()));
        return Err(format!("accounts differ:\n{diff}"));
    }
    let transfers = ledger.transfers();
    let expected: Vec<_> = model.transfers.values().copied().collect();
    if transfers != expected {
        let diff = transfers
            .iter()
            .zip(&expected)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("ledger {a:?}\n model {b:?}"))
            .unwrap_or_else(|| format!("{} transfers vs {}", transfers.len(), expected.len()));
        return Err(format!("transfer records differ:\n{diff}"));
    }
    if ledger.limit_profiles() != model.profiles {
        return Err("limit profiles differ".into());
    }
    Ok(())
}

fn invariants(model: &Model) -> Result<(), String> {
    let accounts: Vec<_> = model.accounts.values().copied().collect();
    check::conservation(&accounts)?;
    check::limits(&accounts, &model.profiles, &STABLE_PROFILES, HOLDS_PER_ACCOUNT_MAX)
}

/// Result codes the core never returns: none today. A code added to `ResultCode` that the random
/// world cannot reach fails `ledger_matches_model_for_1_2_4_8_partitions` until the world
/// learns to reach it or the code is listed here with the reason.
const UNREACHABLE: &[ResultCode] = &[];

fn run_against_model(seed: u64, seen: &mut BTreeSet<ResultCode>) -> Result<(), String> {
    let mut model = model();
    let mut ledgers: Vec<Ledger> = SHAPES.iter().map(|&(p, t, s)| ledger_shaped(p, t, s)).collect();
    for (k, (timestamp, batch)) in history(seed, BATCHES).into_iter().enumerate() {
        let expected = model.apply(timestamp, &batch);
        seen.extend(expected.iter().copied());
        let mut digest = None;
        for (ledger, (p, t, _)) in ledgers.iter_mut().zip(SHAPES) {
            let results = ledger
                .apply(timestamp, &batch)
                .map_err(|e| format!("batch {k}: P={p} T={t}: refused: {e}"))?;
            if results != expected {
                let at = results.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "batch {k}: P={p} T={t}: command {at} {:?}\n ledger {:?}, model {:?}",
                    batch[at], results[at], expected[at]
                ));
            }
            let d = ledger.digest();
            if *digest.get_or_insert(d) != d {
                return Err(format!("batch {k}: P={p} T={t}: digest differs from P=1"));
            }
        }
        same_state(&ledgers[0], &model).map_err(|e| format!("batch {k}: {e}"))?;
        invariants(&model).map_err(|e| format!("batch {k}: {e}"))?;
    }
    for (ledger, (p, t, _)) in ledgers.iter().zip(SHAPES) {
        same_state(ledger, &model).map_err(|e| format!("end: P={p} T={t}: {e}"))?;
    }
    Ok(())
}

fn run_seeds(base: u64, cases: usize, case: impl Fn(u64) -> Result<(), String>) {
    for seed in seeds(base, cases) {
        eprintln!("seed {seed}");
        if let Err(failure) = case(seed) {
            panic!("seed {seed} failed (replay with HAZINA_SEED={seed}):\n{failure}");
        }
    }
}

#[test]
fn ledger_matches_model_for_1_2_4_8_partitions() {
    let seen = std::cell::RefCell::new(BTreeSet::new());
    run_seeds(0x4841_5a49_4e41, 40, |seed| run_against_model(seed, &mut seen.borrow_mut()));
    // The histories must reach every rule, or agreement with the model proves little.
    if std::env::var("HAZINA_SEED").is_err() {
        let missed: Vec<_> = ResultCode::ALL
            .iter()
            .filter(|code| !seen.borrow().contains(code) && !UNREACHABLE.contains(code))
            .collect();
        assert!(missed.is_empty(), "the random world never produced {missed:?}");
    }
}

/// Replaying any prefix of a history on a fresh ledger, twice and with any partition count,
/// gives the same results and the same digest as the first run.
#[test]
fn replaying_a_prefix_gives_identical_results_and_digest() {
    run_seeds(0x5245_504c_4159, 12, |seed| {
        let history = history(seed, BATCHES);
        let mut first = ledger(2, 2);
        let mut results = Vec::new();
        let mut digests = Vec::new();
        for (timestamp, batch) in &history {
            results.push(first.apply(*timestamp, batch).map_err(|e| e.to_string())?);
            digests.push(first.digest());
        }
        for (prefix, (p, t)) in
            [(1, (1, 1)), (BATCHES / 3, (4, 2)), (BATCHES / 2, (1, 1)), (BATCHES, (8, 2))]
        {
            for round in 0..2 {
                let mut again = ledger(p, t);
                for (k, (timestamp, batch)) in history[..prefix].iter().enumerate() {
                    let r = again.apply(*timestamp, batch).map_err(|e| e.to_string())?;
                    if r != results[k] {
                        return Err(format!(
                            "prefix {prefix} round {round}: batch {k} results differ"
                        ));
                    }
                }
                if again.digest() != digests[prefix - 1] {
                    return Err(format!("prefix {prefix} round {round}: digest differs"));
                }
            }
        }
        Ok(())
    });
}

/// Resubmitting every recorded transfer again, later, answers each with its first outcome.
#[test]
fn resubmitting_history_returns_first_outcomes() {
    run_seeds(0x4944_454d_504f, 12, |seed| {
        let mut ledger = ledger(4, 2);
        let mut model = model();
        for (timestamp, batch) in history(seed, BATCHES) {
            ledger.apply(timestamp, &batch).map_err(|e| e.to_string())?;
            model.apply(timestamp, &batch);
        }
        let mut recorded = ledger.transfers();
        recorded.sort_by_key(|t| t.timestamp);
        let mut timestamp = ledger.timestamp_last() + 1;
        for chunk in recorded.chunks(64) {
            let batch: Vec<Command> =
                chunk.iter().map(|t| Command::CreateTransfer(t.new)).collect();
            let results = ledger.apply(timestamp, &batch).map_err(|e| e.to_string())?;
            let expected = model.apply(timestamp, &batch);
            for ((first, got), want) in chunk.iter().zip(&results).zip(&expected) {
                if *got != replay(first, &first.new) || got != want {
                    return Err(format!(
                        "resubmitted {:?} (first {:?}): got {got:?}, model {want:?}",
                        first.new, first.result
                    ));
                }
            }
            timestamp += batch.len() as u64;
        }
        same_state(&ledger, &model)?;
        if ledger.transfers().len() != recorded.len() {
            return Err("a resubmission was recorded as new".into());
        }
        Ok(())
    });
}

/// Nothing about a refused batch reaches the state.
#[test]
fn refused_batches_change_nothing() {
    let mut ledger = ledger(2, 2);
    let (timestamp, batch) = World::new(7, WorldConfig::default()).next_batch();
    ledger.apply(timestamp, &batch).unwrap();
    let digest = ledger.digest();
    let refused = ledger.apply(timestamp, &batch).unwrap_err();
    assert!(matches!(refused, hazina_core::ApplyError::TimestampNotIncreasing { .. }));
    let too_many = vec![batch[0].clone(); ledger.config().batch_commands_max + 1];
    let refused = ledger.apply(timestamp + 1_000, &too_many).unwrap_err();
    assert!(matches!(refused, hazina_core::ApplyError::BatchTooLarge { .. }));
    assert_eq!(ledger.digest(), digest);
    assert_eq!(ledger.apply(timestamp + 1_000, &[]).unwrap(), Vec::<ResultCode>::new());
    assert_ne!(ledger.digest(), digest, "an empty batch still moves the clock");
}

/// A ledger that keeps only two small generations of transfer records in memory, with a host
/// that loads back from storage every record a batch names, answers exactly as one that keeps
/// every record: same results, same digest.
#[test]
fn records_out_of_memory_and_loaded_back_change_no_result() {
    run_seeds(0x4556_4943_5400, 12, run_records_loaded_back);
}

fn run_records_loaded_back(seed: u64) -> Result<(), String> {
    {
        let mut full = ledger(2, 2);
        let mut small =
            Ledger::new(LedgerConfig { transfers_generation_max: 16, ..full.config().clone() })
                .expect("valid configuration");
        // Storage: every record as it stands, here taken from the model.
        let mut storage = model();
        let mut loaded = 0;
        for (k, (timestamp, batch)) in history(seed, BATCHES).into_iter().enumerate() {
            for command in &batch {
                let Command::CreateTransfer(t) = command else { continue };
                for id in [t.id, t.pending_id] {
                    if small.transfer(id).is_none()
                        && let Some(record) = storage.transfers.get(&id)
                    {
                        small.load_transfer(*record);
                        loaded += 1;
                    }
                }
            }
            let expected = full.apply(timestamp, &batch).map_err(|e| e.to_string())?;
            let results = small.apply(timestamp, &batch).map_err(|e| e.to_string())?;
            storage.apply(timestamp, &batch);
            if results != expected {
                return Err(format!("batch {k}: results differ with records loaded back"));
            }
            if small.digest() != full.digest() {
                return Err(format!("batch {k}: digest differs with records loaded back"));
            }
            if small.transfers_resident() >= full.transfers_resident() && k > 20 {
                return Err(format!("batch {k}: records never left memory"));
            }
        }
        if loaded == 0 {
            return Err("no record was ever loaded back".into());
        }
        Ok(())
    }
}

/// A host that stores what each batch changed (`take_changes`, encoded as storage would) and
/// rebuilds the ledger from that store at random points (`restore`) continues exactly as a
/// ledger that never stopped: same results, same digest.
#[test]
fn restored_from_stored_changes_continues_identically() {
    run_seeds(0x5245_5354_4f52, 12, run_restored);
}

fn run_restored(seed: u64) -> Result<(), String> {
    use hazina_core::codec;
    use hazina_core::{HoldState, Transfer};
    use std::collections::BTreeMap;

    let config = LedgerConfig {
        transfers_generation_max: 16,
        track_changes: true,
        ..ledger(2, 2).config().clone()
    };
    let mut full = ledger(2, 2);
    let mut host = Ledger::new(config.clone()).expect("valid configuration");
    // The store: encoded accounts and records by id, as hazina-store keeps them.
    let mut accounts: BTreeMap<u128, Vec<u8>> = BTreeMap::new();
    let mut records: BTreeMap<u128, Vec<u8>> = BTreeMap::new();
    let (mut changed_accounts, mut changed_records) = (Vec::new(), Vec::new());
    let mut restores = 0;
    let mut rng = seed;
    for (k, (timestamp, batch)) in history(seed, BATCHES).into_iter().enumerate() {
        // A splitmix step decides, from the seed, whether to restart before this batch.
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        if k > 0 && (z >> 59) == 0 {
            let decode_account = |b: &Vec<u8>| codec::decode_account(b).expect("stored account");
            let decode_record = |b: &Vec<u8>| codec::decode_transfer(b).expect("stored record");
            let holds: Vec<Transfer> = records
                .values()
                .map(decode_record)
                .filter(|t| t.hold == HoldState::Pending)
                .collect();
            host = Ledger::restore(
                config.clone(),
                accounts.values().map(decode_account),
                &full.limit_profiles(),
                holds,
                host.transfers_digest(),
                host.timestamp_last(),
            )
            .map_err(|e| format!("batch {k}: {e}"))?;
            if host.digest() != full.digest() {
                return Err(format!("batch {k}: restored digest differs"));
            }
            restores += 1;
        }
        for command in &batch {
            let Command::CreateTransfer(t) = command else { continue };
            for id in [t.id, t.pending_id] {
                if host.transfer(id).is_none()
                    && let Some(bytes) = records.get(&id)
                {
                    host.load_transfer(codec::decode_transfer(bytes).expect("stored record"));
                }
            }
        }
        let expected = full.apply(timestamp, &batch).map_err(|e| e.to_string())?;
        let results = host.apply(timestamp, &batch).map_err(|e| e.to_string())?;
        if results != expected {
            return Err(format!("batch {k}: results differ after restores"));
        }
        if host.digest() != full.digest() {
            return Err(format!("batch {k}: digest differs after restores"));
        }
        host.take_changes(&mut changed_accounts, &mut changed_records);
        for account in changed_accounts.drain(..) {
            let mut bytes = Vec::new();
            codec::encode_account(&account, &mut bytes);
            accounts.insert(account.id, bytes);
        }
        for record in changed_records.drain(..) {
            let mut bytes = Vec::new();
            codec::encode_transfer(&record, &mut bytes);
            records.insert(record.new.id, bytes);
        }
    }
    let stored: Vec<_> =
        accounts.values().map(|b| codec::decode_account(b).expect("stored account")).collect();
    if stored != full.accounts() {
        return Err("stored accounts differ from the ledger's".into());
    }
    if records.len() != full.transfers().len() {
        return Err("stored records differ in number from the ledger's".into());
    }
    eprintln!("{restores} restores");
    Ok(())
}

// Seeds that once failed, pinned with what they caught.

/// A transfer naming itself as its hold (`pending_id == id`) made the planner index its own,
/// not yet planned, mask.
#[test]
fn seed_236107222714507287_post_naming_itself() {
    let mut seen = BTreeSet::new();
    run_against_model(236_107_222_714_507_287, &mut seen).unwrap();
}

/// A resubmitted id whose record had left memory was recorded again as a new transfer,
/// overwriting its first outcome; loading records back could also rotate them out again.
#[test]
fn seed_5168214045754110976_resubmission_of_evicted_id() {
    run_records_loaded_back(5_168_214_045_754_110_976).unwrap();
}
