//! Seeded random batches for property tests: a small world of accounts where every rule is hit
//! often: insufficient funds, limits, holds and their expiry, linked chains (closed, failing and
//! open), resubmissions, frozen and closed accounts, invalid fields, Nairobi midnights.
//!
//! The generator decides from its own memory of what it sent, never from results, so a batch
//! sequence is a pure function of the seed.

use hazina_core::{
    AccountFlags, AccountKind, AccountStatus, Amount, CURRENCY_KES, Command, LimitProfile,
    NewAccount, NewTransfer, Timestamp, TransactionType, TransferFlags,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// US dollar, the second currency of the random world.
pub const CURRENCY_USD: u16 = 840;

/// The currency an account id is meant to have: a few are USD, the rest KES. Creations and
/// transfers mostly follow it, so that currency mismatches are a rule that is hit, not the
/// outcome of most transfers.
pub fn currency_of(id: u128) -> u16 {
    if id % 7 == 2 { CURRENCY_USD } else { CURRENCY_KES }
}

/// 2025-06-01T00:00:00Z, where every random history starts.
pub const EPOCH: Timestamp = 1_748_736_000 * 1_000_000_000;

const SECOND: u64 = 1_000_000_000;

/// Profiles 1 to 3 are set once, in the first batch, and never changed, so tests can check that
/// accounts on them never pass their limits. Later profile commands touch only 0 and 4 to 12.
pub const STABLE_PROFILES: [u32; 3] = [1, 2, 3];

/// Sizes of the random world.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    /// Account ids are drawn from 1..=accounts; 1 and 2 are settlement accounts (KES, USD) that
    /// may go negative and fund everyone else.
    pub accounts: u128,
    pub batch_commands_max: usize,
}

impl Default for WorldConfig {
    fn default() -> WorldConfig {
        WorldConfig { accounts: 16, batch_commands_max: 40 }
    }
}

/// A seeded source of batches.
#[derive(Debug)]
pub struct World {
    rng: ChaCha8Rng,
    config: WorldConfig,
    next_transfer_id: u128,
    /// The next batch may not start before this stamp.
    timestamp_next: Timestamp,
    sent: Vec<NewTransfer>,
    holds: Vec<NewTransfer>,
    batches: usize,
}

const RECENT_MAX: usize = 256;

impl World {
    pub fn new(seed: u64, config: WorldConfig) -> World {
        World {
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            next_transfer_id: 1,
            timestamp_next: EPOCH,
            sent: Vec::new(),
            holds: Vec::new(),
            batches: 0,
        }
    }

    /// The next batch and its timestamp.
    pub fn next_batch(&mut self) -> (Timestamp, Vec<Command>) {
        let timestamp = self.advance_time();
        let commands = if self.batches == 0 { self.genesis() } else { self.random_batch() };
        self.batches += 1;
        self.timestamp_next = timestamp + commands.len() as u64;
        (timestamp, commands)
    }

    fn advance_time(&mut self) -> Timestamp {
        let r = &mut self.rng;
        let gap = match r.random_range(0..100) {
            0..70 => r.random_range(0..1_000),
            70..90 => r.random_range(1..30) * SECOND,
            90..98 => r.random_range(30..300) * SECOND,
            // Hours: crosses Nairobi midnights, resetting daily limits.
            _ => r.random_range(1..13) * 3_600 * SECOND,
        };
        self.timestamp_next + gap
    }

    /// Settlement accounts and the stable profiles, so money can start to flow.
    fn genesis(&mut self) -> Vec<Command> {
        let mut commands = vec![
            Command::SetLimitProfile {
                profile_id: 1,
                // A wallet, scaled down: KES 2,500 per transfer, 5,000 a day, 5,000 balance.
                limits: LimitProfile {
                    per_transfer_max: 250_000,
                    daily_debit_max: 500_000,
                    balance_max: 500_000,
                    amount_min: 100,
                },
            },
            Command::SetLimitProfile {
                profile_id: 2,
                limits: LimitProfile {
                    per_transfer_max: 1_000_000,
                    daily_debit_max: 3_000_000,
                    balance_max: Amount::MAX,
                    amount_min: 1,
                },
            },
            Command::SetLimitProfile {
                profile_id: 3,
                limits: LimitProfile {
                    per_transfer_max: 50_000,
                    daily_debit_max: 50_000,
                    balance_max: 200_000,
                    amount_min: 1_000,
                },
            },
        ];
        for id in [1, 2] {
            commands.push(Command::CreateAccount(NewAccount {
                id,
                currency: currency_of(id),
                kind: AccountKind::Settlement as u16,
                ..NewAccount::default()
            }));
        }
        // Half the world exists from the start; the rest is created (or fails to be) later.
        for _ in 0..self.config.accounts / 2 {
            commands.push(Command::CreateAccount(self.new_account()));
        }
        commands
    }

    fn random_batch(&mut self) -> Vec<Command> {
        let len = self.rng.random_range(1..=self.config.batch_commands_max);
        let mut commands = Vec::with_capacity(len);
        while commands.len() < len {
            let roll = self.rng.random_range(0..100);
            match roll {
                0..8 => commands.push(Command::CreateAccount(self.new_account())),
                8..9 => commands.push(self.status_command()),
                9..10 => commands.push(self.profile_command()),
                10..18 => {
                    // A linked chain; sometimes left open (it then links into whatever follows).
                    let links = self.rng.random_range(2..=4);
                    let open = self.rng.random_bool(0.1);
                    let mut previous_id = 0;
                    for k in 0..links {
                        let mut t = self.transfer();
                        if k > 0 && self.rng.random_bool(0.05) {
                            t.id = previous_id;
                        }
                        previous_id = t.id;
                        if k + 1 < links || open {
                            t.flags = t.flags | TransferFlags::LINKED;
                        }
                        commands.push(Command::CreateTransfer(t));
                    }
                }
                _ => {
                    let t = self.transfer();
                    commands.push(Command::CreateTransfer(t));
                }
            }
        }
        commands.truncate(self.config.batch_commands_max);
        commands
    }

    fn account_id(&mut self) -> u128 {
        match self.rng.random_range(0..100) {
            0 => 0,
            1 => self.config.accounts + 1, // never created
            _ => self.rng.random_range(1..=self.config.accounts),
        }
    }

    /// A credit account, mostly of the debit account's currency.
    fn counterparty(&mut self, debit: u128) -> u128 {
        for _ in 0..8 {
            let id = self.account_id();
            if id != debit && (currency_of(id) == currency_of(debit) || self.rng.random_bool(0.1)) {
                return id;
            }
        }
        self.account_id()
    }

    fn currency(&mut self, debit: u128) -> u16 {
        match self.rng.random_range(0..100) {
            0 => 0,
            1..4 => CURRENCY_USD,
            _ => currency_of(debit),
        }
    }

    fn new_account(&mut self) -> NewAccount {
        let r = &mut self.rng;
        let id = match r.random_range(0..100) {
            0 => 0,
            1 => u128::MAX,
            // Accounts no transfer names, for the creation rules alone.
            2..12 => r.random_range(1_000..1_000_000),
            _ => r.random_range(3..=self.config.accounts),
        };
        let mut flags = AccountFlags::default();
        if r.random_bool(0.8) {
            flags = flags | AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        }
        if r.random_bool(0.05) {
            flags = flags | AccountFlags::NO_DEBITS;
        }
        if r.random_bool(0.02) {
            flags = flags | AccountFlags(1 << 9);
        }
        let overdraft_limit = match r.random_range(0..100) {
            0..20 if flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) => {
                r.random_range(1..50_000)
            }
            20..26 => r.random_range(1..1_000),
            _ => 0,
        };
        let kind = if r.random_bool(0.03) {
            99
        } else {
            AccountKind::ALL[r.random_range(0..AccountKind::ALL.len())] as u16
        };
        let limit_profile = match r.random_range(0..100) {
            0..40 => 0,
            40..60 => 1,
            60..75 => 2,
            75..88 => 3,
            88..95 => r.random_range(4..=12),
            _ => 50,
        };
        let currency = match r.random_range(0..100) {
            0 => 0,
            1..4 => CURRENCY_USD,
            _ => currency_of(id),
        };
        NewAccount {
            id,
            currency,
            kind,
            flags,
            overdraft_limit,
            limit_profile,
            user_data_128: r.random_range(0..4),
            user_data_64: 0,
            user_data_32: 0,
        }
    }

    fn status_command(&mut self) -> Command {
        let account_id = self.account_id();
        let status = match self.rng.random_range(0..100) {
            0..60 => AccountStatus::Active,
            60..75 => AccountStatus::DebitsFrozen,
            75..90 => AccountStatus::Frozen,
            _ => AccountStatus::Closed,
        };
        Command::SetAccountStatus { account_id, status }
    }

    fn profile_command(&mut self) -> Command {
        let r = &mut self.rng;
        let profile_id = match r.random_range(0..10) {
            0 => 0,
            _ => r.random_range(4..=12),
        };
        let per_transfer_max = r.random_range(1_000..1_000_000);
        let limits = LimitProfile {
            per_transfer_max,
            daily_debit_max: per_transfer_max * r.random_range(1..5),
            balance_max: if r.random_bool(0.3) {
                Amount::MAX
            } else {
                r.random_range(50_000..10_000_000)
            },
            amount_min: if r.random_bool(0.05) {
                per_transfer_max + 1
            } else {
                r.random_range(1..100)
            },
        };
        Command::SetLimitProfile { profile_id, limits }
    }

    fn amount(&mut self) -> Amount {
        let r = &mut self.rng;
        match r.random_range(0..100) {
            0..50 => r.random_range(1..=1_000),
            50..80 => r.random_range(1_000..=100_000),
            80..95 => r.random_range(100_000..=1_000_000),
            95..99 => 0,
            _ => r.random_range(u128::MAX / 2..u128::MAX),
        }
    }

    fn tx_type(&mut self) -> u16 {
        let r = &mut self.rng;
        match r.random_range(0..100) {
            0 => 0,
            1 => 99,
            2..20 => TransactionType::CashOut as u16,
            _ => TransactionType::ALL[r.random_range(0..TransactionType::ALL.len())] as u16,
        }
    }

    fn transfer_id(&mut self) -> u128 {
        match self.rng.random_range(0..200) {
            0 => 0,
            1 => u128::MAX,
            _ => {
                self.next_transfer_id += 1;
                self.next_transfer_id
            }
        }
    }

    /// A transfer of any shape: plain, hold, post, void or resubmission, sometimes malformed.
    fn transfer(&mut self) -> NewTransfer {
        let roll = self.rng.random_range(0..100);
        let t = match roll {
            0..15 if !self.sent.is_empty() => {
                let mut t = self.sent[self.rng.random_range(0..self.sent.len())];
                if self.rng.random_bool(0.2) {
                    t.amount = t.amount.wrapping_add(1);
                }
                // Resubmit it outside any chain it was in, or in a new one: both are valid.
                t.flags = TransferFlags(t.flags.0 & !TransferFlags::LINKED.0);
                return t;
            }
            15..27 if !self.holds.is_empty() => self.finish_hold(),
            _ => self.plain_or_hold(roll < 45),
        };
        self.remember(t);
        t
    }

    fn plain_or_hold(&mut self, pending: bool) -> NewTransfer {
        let id = self.transfer_id();
        let debit_account_id = if self.rng.random_bool(0.25) {
            if self.rng.random_bool(0.8) { 1 } else { 2 }
        } else {
            self.account_id()
        };
        let credit_account_id = if self.rng.random_bool(0.02) {
            debit_account_id
        } else {
            self.counterparty(debit_account_id)
        };
        let mut flags = if pending { TransferFlags::PENDING } else { TransferFlags::default() };
        let r = &mut self.rng;
        if r.random_bool(0.01) {
            flags = flags | TransferFlags(1 << 7);
        }
        if r.random_bool(0.02) {
            flags = flags | TransferFlags::VOID_PENDING;
        }
        let timeout_s = if pending && r.random_bool(0.8) {
            r.random_range(1..=120)
        } else if r.random_bool(0.01) {
            5
        } else {
            0
        };
        let pending_id = if r.random_bool(0.01) { 7 } else { 0 };
        NewTransfer {
            id,
            debit_account_id,
            credit_account_id,
            amount: self.amount(),
            pending_id,
            user_data_128: 0,
            user_data_64: self.rng.random_range(0..3),
            user_data_32: 0,
            timeout_s,
            currency: self.currency(debit_account_id),
            tx_type: self.tx_type(),
            flags,
        }
    }

    fn finish_hold(&mut self) -> NewTransfer {
        let hold = self.holds[self.rng.random_range(0..self.holds.len())];
        let id = self.transfer_id();
        let r = &mut self.rng;
        let post = r.random_bool(0.6);
        let amount = if post {
            match r.random_range(0..100) {
                0..50 => hold.amount,
                50..95 => r.random_range(1..=hold.amount.clamp(1, 1 << 100)),
                _ => hold.amount.saturating_add(1),
            }
        } else {
            match r.random_range(0..100) {
                0..50 => 0,
                50..95 => hold.amount,
                _ => hold.amount.saturating_add(1),
            }
        };
        let (mut debit_account_id, mut credit_account_id) =
            (hold.debit_account_id, hold.credit_account_id);
        if r.random_bool(0.05) {
            std::mem::swap(&mut debit_account_id, &mut credit_account_id);
        }
        if r.random_bool(0.03) {
            credit_account_id = r.random_range(1..=self.config.accounts);
        }
        NewTransfer {
            id,
            debit_account_id,
            credit_account_id,
            amount,
            pending_id: match r.random_range(0..100) {
                0..2 => hold.id.wrapping_add(1),
                2 => id,
                _ => hold.id,
            },
            user_data_128: 0,
            user_data_64: 0,
            user_data_32: 0,
            timeout_s: 0,
            currency: if r.random_bool(0.02) { CURRENCY_USD } else { hold.currency },
            tx_type: TransactionType::BuyGoods as u16,
            flags: if post { TransferFlags::POST_PENDING } else { TransferFlags::VOID_PENDING },
        }
    }

    fn remember(&mut self, t: NewTransfer) {
        if self.sent.len() == RECENT_MAX {
            let at = self.rng.random_range(0..RECENT_MAX);
            self.sent.swap_remove(at);
        }
        self.sent.push(t);
        if t.flags.pending() {
            if self.holds.len() == RECENT_MAX {
                let at = self.rng.random_range(0..RECENT_MAX);
                self.holds.swap_remove(at);
            }
            self.holds.push(t);
        }
    }
}
