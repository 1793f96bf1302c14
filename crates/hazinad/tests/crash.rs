//! Kill -9 at random moments under concurrent load, restart, and check that nothing
//! acknowledged was lost.
//!
//! Each cycle starts the real `hazinad`, drives transfers from concurrent callers (single sends,
//! linked chains of payment + fee + tax, holds and their posts and voids, with many refused for
//! insufficient funds), kills it with SIGKILL after a random time, and checks:
//! - offline, from the data folder: replaying the whole log from the start gives a ledger in
//!   which every acknowledged transfer has its acknowledged outcome, every request that got no
//!   answer is there whole or not at all (never part of a linked chain), and money is conserved;
//! - online, after the restart: the node's digest equals that replay's, and lookups return every
//!   acknowledged outcome.
//!
//! At least 20 kills; `HAZINA_CRASH_KILLS=<n>` for more. The seed is printed;
//! `HAZINA_SEED=<seed>` replays the same choices (the timing of the kills varies).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Server, transfer};
use hazina_client::{Client, RetryPolicy};
use hazina_core::{
    AccountFlags, AccountKind, CURRENCY_KES, Ledger, LedgerConfig, NewAccount, NewTransfer,
    ResultCode, TransactionType, TransferFlags,
};
use hazina_store::{Store, StoreOptions};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BANK: u128 = 1;
const FEES: u128 = 2;
const TAX: u128 = 3;
const WALLETS: u128 = 40;
const MERCHANTS: u128 = 4;
const CALLERS: usize = 12;

fn wallet(id: u128) -> u128 {
    1_000 + id
}
fn merchant(id: u128) -> u128 {
    2_000 + id
}

/// One request as sent, and its results if it was answered.
#[derive(Clone, Debug)]
struct Sent {
    transfers: Vec<NewTransfer>,
    results: Option<Vec<ResultCode>>,
}

async fn setup(client: &Client) {
    let mut accounts = vec![
        NewAccount { id: BANK, kind: AccountKind::TrustBank as u16, ..NewAccount::default() },
        NewAccount { id: FEES, kind: AccountKind::FeeRevenue as u16, ..NewAccount::default() },
        NewAccount { id: TAX, kind: AccountKind::TaxPayable as u16, ..NewAccount::default() },
    ];
    for k in 0..WALLETS {
        accounts.push(NewAccount {
            id: wallet(k),
            kind: AccountKind::CustomerWallet as u16,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            ..NewAccount::default()
        });
    }
    for k in 0..MERCHANTS {
        accounts.push(NewAccount {
            id: merchant(k),
            kind: AccountKind::MerchantTill as u16,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            ..NewAccount::default()
        });
    }
    for a in &mut accounts {
        a.currency = CURRENCY_KES;
    }
    let results = client.create_accounts(&accounts).await.expect("create accounts");
    assert!(results.iter().all(|r| r.is_applied()), "{results:?}");
    let funding: Vec<NewTransfer> = (0..WALLETS)
        .map(|k| transfer(10 + k, BANK, wallet(k), 3_000_00, TransactionType::CashIn))
        .collect();
    let results = client.create_transfers(&funding).await.expect("fund wallets");
    assert!(results.iter().all(|r| r.is_applied()), "{results:?}");
}

/// One caller: sends requests until told to stop, recording each before it is sent.
async fn caller(
    client: Client,
    seed: u64,
    ids: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut holds: Vec<NewTransfer> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let next_id = || u128::from(ids.fetch_add(1, Ordering::Relaxed));
        let from = wallet(rng.random_range(0..WALLETS));
        // Amounts up to KES 1,500 against balances near KES 3,000: many refusals.
        let amount = rng.random_range(1..150_000);
        let transfers = match rng.random_range(0..10) {
            0..=3 => {
                let to = wallet(rng.random_range(0..WALLETS));
                let to = if to == from { BANK } else { to };
                vec![transfer(next_id(), from, to, amount, TransactionType::SendMoney)]
            }
            4..=6 => {
                // A payment with its fee and the excise tax on the fee, all or nothing.
                let till = merchant(rng.random_range(0..MERCHANTS));
                let mut chain = vec![
                    transfer(next_id(), from, till, amount, TransactionType::BuyGoods),
                    transfer(next_id(), from, FEES, 33_00, TransactionType::Fee),
                    transfer(next_id(), FEES, TAX, 5_28, TransactionType::Tax),
                ];
                chain[0].flags = TransferFlags::LINKED;
                chain[1].flags = TransferFlags::LINKED;
                chain
            }
            7 | 8 if !holds.is_empty() => {
                let hold = holds.swap_remove(rng.random_range(0..holds.len()));
                let mut finish = transfer(
                    next_id(),
                    hold.debit_account_id,
                    hold.credit_account_id,
                    hold.amount,
                    TransactionType::CashOut,
                );
                finish.pending_id = hold.id;
                if rng.random_bool(0.7) {
                    finish.flags = TransferFlags::POST_PENDING;
                    finish.amount = rng.random_range(1..=hold.amount);
                } else {
                    finish.flags = TransferFlags::VOID_PENDING;
                }
                vec![finish]
            }
            _ => {
                let agent = merchant(rng.random_range(0..MERCHANTS));
                let mut hold = transfer(next_id(), from, agent, amount, TransactionType::CashOut);
                hold.flags = TransferFlags::PENDING;
                hold.timeout_s = if rng.random_bool(0.2) { 1 } else { 3_600 };
                vec![hold]
            }
        };
        let at = {
            let mut sent = sent.lock();
            sent.push(Sent { transfers: transfers.clone(), results: None });
            sent.len() - 1
        };
        match client.create_transfers(&transfers).await {
            Ok(results) => {
                if transfers[0].flags.contains(TransferFlags::PENDING)
                    && results[0] == ResultCode::Ok
                {
                    holds.push(transfers[0]);
                }
                sent.lock()[at].results = Some(results);
            }
            // The node was killed: this request is in doubt.
            Err(_) => return,
        }
    }
}

/// Replays the whole log in the data folder into a fresh ledger.
fn replay_log(data_dir: &std::path::Path) -> Ledger {
    let store = Store::open(
        data_dir,
        &StoreOptions {
            write_buffer_bytes: 4 << 20,
            block_cache_bytes: 8 << 20,
            ..Default::default()
        },
    )
    .expect("open the killed node's store");
    let entries = store.entries_after(0).expect("read the log");
    let mut ledger = Ledger::new(LedgerConfig::default()).expect("ledger");
    for (expected, entry) in (1..).zip(entries) {
        assert_eq!(entry.index, expected, "the log has a gap");
        ledger.apply(entry.timestamp, &entry.commands).expect("a logged batch applies");
    }
    ledger
}

fn check_replay(ledger: &Ledger, sent: &[Sent]) -> (usize, usize) {
    let (mut acknowledged, mut in_doubt) = (0, 0);
    for request in sent {
        let found: Vec<Option<ResultCode>> =
            request.transfers.iter().map(|t| ledger.transfer(t.id).map(|r| r.result)).collect();
        match &request.results {
            Some(results) => {
                acknowledged += 1;
                let expected: Vec<Option<ResultCode>> = results.iter().map(|&r| Some(r)).collect();
                assert_eq!(
                    found, expected,
                    "an acknowledged request was lost or changed: {request:?}"
                );
            }
            None => {
                in_doubt += 1;
                let present = found.iter().filter(|f| f.is_some()).count();
                assert!(
                    present == 0 || present == found.len(),
                    "a request that got no answer is there in part: {request:?} {found:?}"
                );
            }
        }
    }
    let accounts = ledger.accounts();
    let sum = |f: fn(&hazina_core::Account) -> u128| accounts.iter().map(f).sum::<u128>();
    assert_eq!(sum(|a| a.debits_posted), sum(|a| a.credits_posted), "posted money not conserved");
    assert_eq!(sum(|a| a.debits_pending), sum(|a| a.credits_pending), "held money not conserved");
    (acknowledged, in_doubt)
}

async fn check_online(server: &Server, replayed: &Ledger, sent: &[Sent]) {
    let client = server.client().await;
    let status = client.status().await.expect("status");
    let digest = hazina_client::proto::u128_from_wire(status.digest.as_ref());
    assert_eq!(digest, replayed.digest(), "recovered digest differs from a replay of the log");
    let expected: BTreeMap<u128, ResultCode> = sent
        .iter()
        .filter_map(|s| s.results.as_ref().map(|r| (s, r)))
        .flat_map(|(s, r)| s.transfers.iter().map(|t| t.id).zip(r.iter().copied()))
        .collect();
    let ids: Vec<u128> = expected.keys().copied().collect();
    for chunk in ids.chunks(8_000) {
        let found = client.lookup_transfers(chunk).await.expect("lookup");
        assert_eq!(found.len(), chunk.len(), "acknowledged transfers missing after restart");
        for record in found {
            assert_eq!(Some(&record.result), expected.get(&record.new.id));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transfers_survive_kill_9() {
    let kills: usize =
        std::env::var("HAZINA_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20).max(20);
    let seed = common::seed();
    eprintln!("{kills} kills");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Checkpoints every few hundred commands exercise restart from a checkpoint plus the log's
    // tail; the log is kept whole so that the test can replay it from the start.
    let args =
        ["--checkpoint-every", "500", "--log-retain", "1000000000", "--generation-max", "131072"];
    let retry_never =
        RetryPolicy { attempts: 1, timeout: Duration::from_secs(5), ..RetryPolicy::default() };
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::new(AtomicU64::new(1_000_000));
    let mut server = Server::start(&data, &args);
    setup(&server.client().await).await;
    let mut totals = (0, 0);
    for cycle in 0..kills {
        let stop = Arc::new(AtomicBool::new(false));
        let mut callers = Vec::new();
        for k in 0..CALLERS {
            let client = Client::connect_with(&server.addr, retry_never).await.expect("connect");
            let caller_seed = seed ^ ((cycle as u64) << 32) ^ k as u64;
            callers.push(tokio::spawn(caller(
                client,
                caller_seed,
                Arc::clone(&ids),
                Arc::clone(&stop),
                Arc::clone(&sent),
            )));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for c in callers {
            c.await.expect("caller task");
        }
        let snapshot = sent.lock().clone();
        let data_dir = data.clone();
        let replayed =
            tokio::task::spawn_blocking(move || replay_log(&data_dir)).await.expect("replay");
        let (acknowledged, in_doubt) = check_replay(&replayed, &snapshot);
        totals = (acknowledged, totals.1 + in_doubt);
        server = Server::start(&data, &args);
        check_online(&server, &replayed, &snapshot).await;
        // Requests in doubt are settled now: they are in the log or they are not.
        for request in sent.lock().iter_mut().filter(|s| s.results.is_none()) {
            let found: Vec<_> =
                request.transfers.iter().filter_map(|t| replayed.transfer(t.id)).collect();
            if found.len() == request.transfers.len() {
                request.results = Some(found.iter().map(|r| r.result).collect());
            } else {
                request.transfers.clear();
            }
        }
        eprintln!(
            "cycle {cycle}: {acknowledged} requests acknowledged so far, {in_doubt} in doubt at the kill"
        );
    }
    assert!(totals.0 > 100, "too little traffic to prove anything: {totals:?}");
    let status = server.stop();
    assert!(status.success(), "hazinad did not stop cleanly: {status}");
}
