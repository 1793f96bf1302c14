//! A mobile-money population and a stream of customer transfers over it, for benchmarks (and,
//! later, the load generator).
//!
//! Customers hold about KES 1,000 each, under the M-PESA wallet limits (KES 250,000 per transfer,
//! 500,000 a day, 500,000 balance). Accepted transfers are small payments that keep balances
//! roughly level however long a run lasts; rejected ones ask for KES 200,000, more than any
//! customer holds, so they fail for insufficient funds after every other check has run, as most
//! real rejections do. The share of each is fixed, so a run measures a steady mix.

use hazina_core::{
    AccountFlags, AccountKind, Amount, CURRENCY_KES, Command, Ledger, LedgerConfig, LimitProfile,
    NewAccount, NewTransfer, ResultCode, Timestamp, TransactionType,
};

use crate::world::EPOCH;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// KES 1.00 in minor units.
pub const KES: Amount = 100;

/// The operator account that funds the population (a mirror of money held in trust at banks; it
/// runs negative by what customers hold).
pub const TRUST_ACCOUNT: u128 = 1;
const MERCHANT_BASE: u128 = 1_000;
const CUSTOMER_BASE: u128 = 1_000_000_000;

/// Wallet limits as published for M-PESA since August 2023.
pub const WALLET_PROFILE: u32 = 1;
/// Merchants receive without a balance cap.
pub const MERCHANT_PROFILE: u32 = 2;

/// What the population looks like.
#[derive(Clone, Debug)]
pub struct Population {
    pub customers: u64,
    pub merchants: u64,
    /// What each customer starts with.
    pub customer_balance: Amount,
}

impl Population {
    pub fn customer(&self, k: u64) -> u128 {
        CUSTOMER_BASE + u128::from(k)
    }

    pub fn merchant(&self, k: u64) -> u128 {
        MERCHANT_BASE + u128::from(k)
    }

    /// A ledger of `partitions` partitions (and as many threads) holding this population,
    /// funded, with `transfers_generation_max` records per generation, and the clock that
    /// stamps its next batch.
    pub fn funded_ledger(
        &self,
        partitions: usize,
        transfers_generation_max: usize,
    ) -> (Ledger, Clock) {
        let accounts =
            usize::try_from(self.customers + self.merchants + 1).expect("a population fits memory");
        let mut ledger = Ledger::new(LedgerConfig {
            partitions,
            threads: partitions,
            accounts_capacity: accounts,
            transfers_generation_max,
            ..LedgerConfig::default()
        })
        .expect("a valid configuration");
        let mut clock = Clock::new(EPOCH);
        for batch in self.genesis(8_000) {
            let results = ledger.apply(clock.stamp(batch.len()), &batch).expect("genesis applies");
            assert!(results.iter().all(|r| *r == ResultCode::Ok), "genesis must succeed");
        }
        (ledger, clock)
    }

    /// Batches (each at most `batch_max` commands) that create the population and fund it.
    pub fn genesis(&self, batch_max: usize) -> Vec<Vec<Command>> {
        let mut batches = self.accounts(batch_max);
        batches.extend(self.funding(batch_max));
        batches
    }

    /// Batches that set the limit profiles and create every account, unfunded.
    pub fn accounts(&self, batch_max: usize) -> Vec<Vec<Command>> {
        let mut commands = vec![
            Command::SetLimitProfile {
                profile_id: WALLET_PROFILE,
                limits: LimitProfile {
                    per_transfer_max: 250_000 * KES,
                    daily_debit_max: 500_000 * KES,
                    balance_max: 500_000 * KES,
                    amount_min: KES,
                },
            },
            Command::SetLimitProfile {
                profile_id: MERCHANT_PROFILE,
                limits: LimitProfile {
                    per_transfer_max: 1_000_000 * KES,
                    daily_debit_max: 10_000_000 * KES,
                    balance_max: Amount::MAX,
                    amount_min: KES,
                },
            },
            Command::CreateAccount(NewAccount {
                id: TRUST_ACCOUNT,
                currency: CURRENCY_KES,
                kind: AccountKind::TrustBank as u16,
                ..NewAccount::default()
            }),
        ];
        let balance_checked = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        for k in 0..self.merchants {
            commands.push(Command::CreateAccount(NewAccount {
                id: self.merchant(k),
                currency: CURRENCY_KES,
                kind: AccountKind::MerchantTill as u16,
                flags: balance_checked,
                limit_profile: MERCHANT_PROFILE,
                ..NewAccount::default()
            }));
        }
        for k in 0..self.customers {
            commands.push(Command::CreateAccount(NewAccount {
                id: self.customer(k),
                currency: CURRENCY_KES,
                kind: AccountKind::CustomerWallet as u16,
                flags: balance_checked,
                limit_profile: WALLET_PROFILE,
                ..NewAccount::default()
            }));
        }
        commands.chunks(batch_max).map(<[Command]>::to_vec).collect()
    }

    /// Batches that give every customer its starting balance from the trust account.
    pub fn funding(&self, batch_max: usize) -> Vec<Vec<Command>> {
        let mut commands = Vec::new();
        for k in 0..self.customers {
            commands.push(Command::CreateTransfer(NewTransfer {
                id: u128::from(k) + 1,
                debit_account_id: TRUST_ACCOUNT,
                credit_account_id: self.customer(k),
                amount: self.customer_balance,
                currency: CURRENCY_KES,
                tx_type: TransactionType::CashIn as u16,
                ..NewTransfer::default()
            }));
        }
        commands.chunks(batch_max).map(<[Command]>::to_vec).collect()
    }
}

/// Who receives payments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    /// Any customer or merchant, uniformly.
    Uniform,
    /// Half of all transfers pay one of a few hot merchants (a supermarket chain, a utility).
    HotMerchants { hot: u64 },
}

/// A seeded stream of send-money and buy-goods transfers.
#[derive(Debug)]
pub struct Traffic {
    population: Population,
    rng: ChaCha8Rng,
    next_id: u128,
    skew: Skew,
    /// Out of 100, how many transfers ask for more than the sender holds.
    reject_percent: u32,
}

impl Traffic {
    /// `first_id` must be above every transfer id used so far (genesis uses 1..=customers).
    pub fn new(population: Population, seed: u64, skew: Skew, reject_percent: u32) -> Traffic {
        let first_id = u128::from(population.customers) + 1;
        Traffic {
            population,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_id: first_id,
            skew,
            reject_percent,
        }
    }

    /// Changes who receives payments from the next transfer on (ids keep counting).
    pub fn set_skew(&mut self, skew: Skew) {
        self.skew = skew;
    }

    /// Changes the share of transfers that fail for insufficient funds (0 to 100).
    pub fn set_reject_percent(&mut self, reject_percent: u32) {
        self.reject_percent = reject_percent;
    }

    pub fn transfer(&mut self) -> NewTransfer {
        let p = &self.population;
        let r = &mut self.rng;
        let sender = r.random_range(0..p.customers);
        let (credit, tx_type) = match self.skew {
            Skew::HotMerchants { hot } if r.random_bool(0.5) => {
                (p.merchant(r.random_range(0..hot)), TransactionType::BuyGoods)
            }
            _ if r.random_bool(0.2) => {
                (p.merchant(r.random_range(0..p.merchants)), TransactionType::BuyGoods)
            }
            _ => {
                let mut receiver = r.random_range(0..p.customers);
                if receiver == sender {
                    receiver = (sender + 1) % p.customers;
                }
                (p.customer(receiver), TransactionType::SendMoney)
            }
        };
        let amount = if r.random_range(0..100) < self.reject_percent {
            200_000 * KES
        } else {
            r.random_range(KES..=10 * KES)
        };
        self.next_id += 1;
        NewTransfer {
            id: self.next_id,
            debit_account_id: p.customer(sender),
            credit_account_id: credit,
            amount,
            currency: CURRENCY_KES,
            tx_type: tx_type as u16,
            ..NewTransfer::default()
        }
    }

    /// A batch of `n` transfers.
    pub fn batch(&mut self, n: usize) -> Vec<Command> {
        (0..n).map(|_| Command::CreateTransfer(self.transfer())).collect()
    }
}

/// Stamps for a run of batches: strictly increasing, one nanosecond per command.
#[derive(Debug)]
pub struct Clock {
    next: Timestamp,
}

impl Clock {
    pub fn new(start: Timestamp) -> Clock {
        Clock { next: start }
    }

    /// The stamp the next batch will get.
    pub fn peek(&self) -> Timestamp {
        self.next
    }

    pub fn stamp(&mut self, commands: usize) -> Timestamp {
        let at = self.next;
        self.next += commands.max(1) as u64;
        at
    }
}
