//! The population and the traffic mix.
//!
//! Customers are split in two: *funded* customers hold KES 20,000 to 100,000 and send small
//! amounts; *empty* customers hold nothing, so every debit from one fails for insufficient funds
//! after every other check, as most real refusals do. `--reject-percent` picks the share of
//! attempts made from empty customers. Money only ever arrives at funded customers, so the
//! share stays what was asked however long the run lasts.

use hazina_core::{
    AccountFlags, AccountKind, Amount, CURRENCY_KES, LimitProfile, NewAccount, NewTransfer,
    TransactionType, TransferFlags,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// KES 1.00 in minor units.
pub const KES: Amount = 100;

/// The operator's own accounts.
pub const TRUST: u128 = 1_000;
pub const FEES: u128 = 1_001;
pub const TAX: u128 = 1_002;
pub const SUSPENSE: u128 = 1_003;
const TILL_BASE: u128 = 5_000_000;
const PAYBILL_BASE: u128 = 6_000_000;
const AGENT_BASE: u128 = 7_000_000;
const EMPLOYER_BASE: u128 = 8_000_000;
/// Customers are numbered like Kenyan MSISDNs.
const CUSTOMER_BASE: u128 = 254_700_000_000;

/// Wallet limits as published for M-PESA since August 2023.
pub const WALLET_PROFILE: u32 = 1;
pub const WALLET_LIMITS: LimitProfile = LimitProfile {
    per_transfer_max: 250_000 * KES,
    daily_debit_max: 500_000 * KES,
    balance_max: 500_000 * KES,
    amount_min: KES,
};

/// Send-money fee and the 15% excise duty on it, as a flat approximation of the tariff.
const SEND_FEE: Amount = 13 * KES;
const SEND_FEE_TAX: Amount = 195;

#[derive(Clone, Debug)]
pub struct Population {
    pub customers: u64,
    pub tills: u64,
    pub paybills: u64,
    pub agents: u64,
    pub employers: u64,
}

impl Population {
    pub fn customer(&self, k: u64) -> u128 {
        CUSTOMER_BASE + u128::from(k)
    }

    /// Customers `0..funded()` hold money; the rest are empty.
    pub fn funded(&self) -> u64 {
        self.customers.div_ceil(2)
    }

    /// Every account, operator accounts first.
    pub fn accounts(&self) -> Vec<NewAccount> {
        let account = |id, kind: AccountKind, flags, limit_profile| NewAccount {
            id,
            currency: CURRENCY_KES,
            kind: kind as u16,
            flags,
            limit_profile,
            ..NewAccount::default()
        };
        let checked = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        let mut all = vec![
            // The mirror of the money held in trust at banks: it runs negative by what the
            // wallets hold.
            account(TRUST, AccountKind::TrustBank, AccountFlags(0), 0),
            account(FEES, AccountKind::FeeRevenue, checked, 0),
            account(TAX, AccountKind::TaxPayable, checked, 0),
            account(SUSPENSE, AccountKind::Suspense, checked, 0),
        ];
        let groups = [
            (TILL_BASE, self.tills, AccountKind::MerchantTill),
            (PAYBILL_BASE, self.paybills, AccountKind::PaybillUtility),
            (AGENT_BASE, self.agents, AccountKind::AgentFloat),
            (EMPLOYER_BASE, self.employers, AccountKind::B2cDisbursement),
        ];
        for (base, count, kind) in groups {
            all.extend((0..count).map(|k| account(base + u128::from(k), kind, checked, 0)));
        }
        all.extend((0..self.customers).map(|k| {
            account(self.customer(k), AccountKind::CustomerWallet, checked, WALLET_PROFILE)
        }));
        all
    }

    /// Transfers from the trust account that fund agents' floats, employers, and the funded
    /// customers. Ids `1..` are reserved for them.
    pub fn funding(&self, rng: &mut ChaCha8Rng) -> Vec<NewTransfer> {
        let mut next = 0u128;
        let mut fund = |to: u128, amount: Amount| {
            next += 1;
            transfer(next, TRUST, to, amount, TransactionType::Settlement)
        };
        let mut all = Vec::new();
        for k in 0..self.agents {
            all.push(fund(AGENT_BASE + u128::from(k), 50_000_000 * KES));
        }
        for k in 0..self.employers {
            all.push(fund(EMPLOYER_BASE + u128::from(k), 500_000_000 * KES));
        }
        for k in 0..self.funded() {
            all.push(fund(self.customer(k), rng.random_range(20_000..=100_000) * KES));
        }
        all
    }

    pub fn funding_count(&self) -> u128 {
        u128::from(self.agents + self.employers + self.funded())
    }
}

fn transfer(id: u128, from: u128, to: u128, amount: Amount, tx: TransactionType) -> NewTransfer {
    NewTransfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        currency: CURRENCY_KES,
        tx_type: tx as u16,
        ..NewTransfer::default()
    }
}

/// One customer action: the transfers of one request. A hold carries the transfer that will
/// finish it later.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub kind: &'static str,
    pub transfers: Vec<NewTransfer>,
}

/// Makes attempts. Each worker has its own, with its own id range and random stream.
#[derive(Debug)]
pub struct Mix {
    population: Population,
    rng: ChaCha8Rng,
    next_id: u128,
    reject_percent: u32,
    salary_batch: usize,
    /// Only attempts of one transfer: no fee chains, no salary payouts.
    single: bool,
    /// Holds placed and not yet finished: (hold, post rather than void).
    open_holds: Vec<(NewTransfer, bool)>,
}

impl Mix {
    pub fn new(
        population: Population,
        rng: ChaCha8Rng,
        first_id: u128,
        reject_percent: u32,
        salary_batch: usize,
        single: bool,
    ) -> Mix {
        Mix {
            population,
            rng,
            next_id: first_id,
            reject_percent,
            salary_batch,
            single,
            open_holds: Vec::new(),
        }
    }

    fn id(&mut self) -> u128 {
        self.next_id += 1;
        self.next_id
    }

    /// A payer: a funded customer, or an empty one for a refused attempt.
    fn payer(&mut self) -> u128 {
        let p = &self.population;
        let k = if self.rng.random_range(0..100) < self.reject_percent && p.customers > p.funded() {
            self.rng.random_range(p.funded()..p.customers)
        } else {
            self.rng.random_range(0..p.funded())
        };
        p.customer(k)
    }

    fn payee(&mut self) -> u128 {
        let k = self.rng.random_range(0..self.population.funded());
        self.population.customer(k)
    }

    /// A payee other than `payer`: a send to oneself is refused (`AccountsMustBeDifferent`),
    /// which no caller of the mix means to measure.
    fn payee_for(&mut self, payer: u128) -> u128 {
        let k = self.rng.random_range(0..self.population.funded());
        let to = self.population.customer(k);
        if to != payer {
            return to;
        }
        // The next customer instead (there are at least two; it may hold nothing yet).
        self.population.customer((k + 1) % self.population.customers)
    }

    /// A few merchants take most payments: the k-th is chosen with a weight falling as a cube.
    fn skewed(&mut self, base: u128, count: u64) -> u128 {
        let u: f64 = self.rng.random();
        // Truncation picks the index; the product stays below `count`.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let k = ((u * u * u) * count as f64) as u64;
        base + u128::from(k.min(count - 1))
    }

    fn amount(&mut self, low: u64, high: u64) -> Amount {
        Amount::from(self.rng.random_range(low..=high)) * KES
    }

    /// The next attempt of the mix: send money with its fee (40%), buy goods (20%), pay bill
    /// (12%), cash-in (8%), cash-out as a hold later posted or voided (8%, and the post or void
    /// when one is open), a salary payout of `salary_batch` transfers (2%), and the rest sends
    /// between wallets without a fee. With `single`, the fee chains and payouts are left out
    /// and every attempt is one transfer.
    pub fn attempt(&mut self) -> Attempt {
        let roll = if self.single {
            match self.rng.random_range(0..58) {
                r if r < 48 => 40 + r,
                r => 42 + r,
            }
        } else {
            self.rng.random_range(0..100)
        };
        match roll {
            0..40 => {
                let from = self.payer();
                let to = self.payee_for(from);
                let amount = self.amount(10, 5_000);
                let mut send = transfer(self.id(), from, to, amount, TransactionType::SendMoney);
                let mut fee = transfer(self.id(), from, FEES, SEND_FEE, TransactionType::Fee);
                let tax = transfer(self.id(), FEES, TAX, SEND_FEE_TAX, TransactionType::Tax);
                send.flags = TransferFlags::LINKED;
                fee.flags = TransferFlags::LINKED;
                Attempt { kind: "send_money", transfers: vec![send, fee, tax] }
            }
            40..60 => {
                let from = self.payer();
                let till = self.skewed(TILL_BASE, self.population.tills);
                let amount = self.amount(5, 3_000);
                let t = transfer(self.id(), from, till, amount, TransactionType::BuyGoods);
                Attempt { kind: "buy_goods", transfers: vec![t] }
            }
            60..72 => {
                let from = self.payer();
                let bill = self.skewed(PAYBILL_BASE, self.population.paybills);
                let amount = self.amount(100, 10_000);
                let t = transfer(self.id(), from, bill, amount, TransactionType::PayBill);
                Attempt { kind: "pay_bill", transfers: vec![t] }
            }
            72..80 => {
                let agent = self.skewed(AGENT_BASE, self.population.agents);
                let to = self.payee();
                let amount = self.amount(100, 5_000);
                let t = transfer(self.id(), agent, to, amount, TransactionType::CashIn);
                Attempt { kind: "cash_in", transfers: vec![t] }
            }
            80..88 => {
                if let Some((hold, post)) = self.open_holds.pop() {
                    let mut finish = transfer(
                        self.id(),
                        hold.debit_account_id,
                        hold.credit_account_id,
                        hold.amount,
                        TransactionType::CashOut,
                    );
                    finish.pending_id = hold.id;
                    finish.flags = if post {
                        TransferFlags::POST_PENDING
                    } else {
                        TransferFlags::VOID_PENDING
                    };
                    let kind = if post { "cash_out_post" } else { "cash_out_void" };
                    return Attempt { kind, transfers: vec![finish] };
                }
                let from = self.payer();
                let agent = self.skewed(AGENT_BASE, self.population.agents);
                let amount = self.amount(100, 5_000);
                let mut hold = transfer(self.id(), from, agent, amount, TransactionType::CashOut);
                hold.flags = TransferFlags::PENDING;
                hold.timeout_s = 300;
                Attempt { kind: "cash_out_hold", transfers: vec![hold] }
            }
            88..90 => {
                let employer =
                    EMPLOYER_BASE + u128::from(self.rng.random_range(0..self.population.employers));
                let transfers = (0..self.salary_batch)
                    .map(|_| {
                        let to = self.payee();
                        let amount = self.amount(5_000, 60_000);
                        transfer(self.id(), employer, to, amount, TransactionType::B2c)
                    })
                    .collect();
                Attempt { kind: "salary", transfers }
            }
            _ => {
                let from = self.payer();
                let to = self.payee_for(from);
                let amount = self.amount(10, 2_000);
                let t = transfer(self.id(), from, to, amount, TransactionType::SendMoney);
                Attempt { kind: "send_money_free", transfers: vec![t] }
            }
        }
    }

    /// Tells the mix a hold was placed, so that it posts (90%) or voids it later.
    pub fn hold_placed(&mut self, hold: NewTransfer) {
        let post = self.rng.random_range(0..10) < 9;
        self.open_holds.push((hold, post));
    }

    pub fn resend(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100) < percent
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn no_attempt_pays_its_own_payer() {
        // Two funded customers: a payee drawn at random is the payer half of the time.
        let population =
            Population { customers: 3, tills: 1, paybills: 1, agents: 1, employers: 1 };
        for single in [false, true] {
            let seed = 7;
            let mut mix = Mix::new(
                population.clone(),
                ChaCha8Rng::seed_from_u64(seed),
                1 << 40,
                0,
                5,
                single,
            );
            let mut sends = 0;
            for _ in 0..5_000 {
                for t in mix.attempt().transfers {
                    assert_ne!(t.debit_account_id, t.credit_account_id, "seed {seed}: {t:?}");
                    sends += usize::from(t.tx_type == TransactionType::SendMoney as u16);
                }
            }
            assert!(sends > 100, "the mix sends money between customers ({sends})");
        }
    }
}
