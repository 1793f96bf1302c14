//! A plain reference model of the ledger's rules.
//!
//! It applies commands one at a time on ordered maps, with no partitions, no threads, no
//! planning and no undo log: a linked chain is rolled back by restoring a copy of the whole
//! model, and a transfer is recorded the moment it is decided. It shares only the rule order
//! (written down in `docs/RESULT_CODES.md`) with `hazina-core`, so agreement between the two
//! checks the core's machinery: partitions, the parallel executor, in-batch references, the
//! undo log, the deferred recording, expiry and the digest.

use std::collections::{BTreeMap, BTreeSet};

use hazina_core::{
    Account, AccountFlags, AccountKind, AccountStatus, Amount, Command, HoldState, LimitProfile,
    LimitProfileId, NewAccount, NewTransfer, ResultCode, Timestamp, TransactionType, Transfer,
    nairobi_day,
};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
struct LiveHold {
    amount: Amount,
    debit: u128,
    credit: u128,
    expires_at: Option<Timestamp>,
    day: u32,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub accounts: BTreeMap<u128, Account>,
    pub transfers: BTreeMap<u128, Transfer>,
    holds: BTreeMap<u128, LiveHold>,
    pub profiles: BTreeMap<LimitProfileId, LimitProfile>,
    holds_per_account_max: u16,
    limit_profiles_max: usize,
}

impl Model {
    pub fn new(holds_per_account_max: u16, limit_profiles_max: usize) -> Model {
        Model {
            accounts: BTreeMap::new(),
            transfers: BTreeMap::new(),
            holds: BTreeMap::new(),
            profiles: BTreeMap::from([(0, LimitProfile::UNLIMITED)]),
            holds_per_account_max,
            limit_profiles_max,
        }
    }

    /// Applies a batch the ledger would accept (the caller checks the batch-level limits).
    pub fn apply(&mut self, timestamp: Timestamp, commands: &[Command]) -> Vec<ResultCode> {
        self.expire(timestamp);
        let mut results = Vec::with_capacity(commands.len());
        let mut i = 0;
        while i < commands.len() {
            let stamp = timestamp + i as u64;
            match &commands[i] {
                Command::CreateAccount(new) => results.push(self.create_account(new, stamp)),
                Command::SetAccountStatus { account_id, status } => {
                    results.push(self.set_status(*account_id, *status));
                }
                Command::SetLimitProfile { profile_id, limits } => {
                    results.push(self.set_profile(*profile_id, limits));
                }
                Command::CreateTransfer(_) => {
                    // The chain: consecutive transfers while each one carries LINKED.
                    let mut end = i;
                    let mut open = false;
                    loop {
                        let Some(Command::CreateTransfer(t)) = commands.get(end) else {
                            open = true;
                            break;
                        };
                        end += 1;
                        if !t.flags.linked() {
                            break;
                        }
                    }
                    let chain: Vec<NewTransfer> = commands[i..end]
                        .iter()
                        .map(|c| match c {
                            Command::CreateTransfer(t) => *t,
                            _ => unreachable!("the chain holds only transfers"),
                        })
                        .collect();
                    results.extend(self.chain(&chain, timestamp, i, open));
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        results
    }

    fn chain(
        &mut self,
        chain: &[NewTransfer],
        timestamp: Timestamp,
        first_index: usize,
        open: bool,
    ) -> Vec<ResultCode> {
        let stamp = |k: usize| timestamp + (first_index + k) as u64;
        if !open {
            let before = self.clone();
            let mut ids = BTreeSet::new();
            let mut codes = Vec::new();
            for (k, t) in chain.iter().enumerate() {
                let new_id = !self.transfers.contains_key(&t.id);
                let code = self.transfer(t, stamp(k), &ids);
                if new_id && self.transfers.contains_key(&t.id) {
                    ids.insert(t.id);
                }
                codes.push(code);
                if !code.is_applied() && chain.len() > 1 {
                    // Roll the whole chain back, then answer every link.
                    *self = before;
                    return self.unapplied_chain(chain, timestamp, first_index, Some((k, code)));
                }
            }
            return codes;
        }
        self.unapplied_chain(chain, timestamp, first_index, None)
    }

    /// Answers and records a chain that changes no balance: failed at `failed`, or left open.
    fn unapplied_chain(
        &mut self,
        chain: &[NewTransfer],
        timestamp: Timestamp,
        first_index: usize,
        failed: Option<(usize, ResultCode)>,
    ) -> Vec<ResultCode> {
        let mut ids = BTreeSet::new();
        let mut codes = Vec::new();
        for (k, t) in chain.iter().enumerate() {
            let code = if t.id == 0 {
                ResultCode::IdMustNotBeZero
            } else if t.id == u128::MAX {
                ResultCode::IdMustNotBeIntMax
            } else if let Some(first) = self.transfers.get(&t.id) {
                if ids.contains(&t.id) { ResultCode::DuplicateIdInChain } else { replay(first, t) }
            } else {
                let code = match failed {
                    Some((at, code)) if at == k => code,
                    Some(_) => ResultCode::LinkedEventFailed,
                    None if k + 1 == chain.len() => ResultCode::LinkedEventChainOpen,
                    None => ResultCode::LinkedEventFailed,
                };
                self.record(t, timestamp + (first_index + k) as u64, code);
                ids.insert(t.id);
                code
            };
            codes.push(code);
        }
        codes
    }

    fn record(&mut self, t: &NewTransfer, stamp: Timestamp, result: ResultCode) {
        let hold = if result == ResultCode::Ok && t.flags.pending() {
            HoldState::Pending
        } else {
            HoldState::None
        };
        let previous =
            self.transfers.insert(t.id, Transfer { new: *t, timestamp: stamp, result, hold });
        assert!(previous.is_none());
    }

    /// One transfer, recorded if its id is new. `chain_ids` are the ids its chain recorded.
    fn transfer(
        &mut self,
        t: &NewTransfer,
        stamp: Timestamp,
        chain_ids: &BTreeSet<u128>,
    ) -> ResultCode {
        if t.id == 0 {
            return ResultCode::IdMustNotBeZero;
        }
        if t.id == u128::MAX {
            return ResultCode::IdMustNotBeIntMax;
        }
        if let Some(first) = self.transfers.get(&t.id) {
            if chain_ids.contains(&t.id) {
                return ResultCode::DuplicateIdInChain;
            }
            return replay(first, t);
        }
        let code = match self.decide(t, stamp) {
            Ok(()) => ResultCode::Ok,
            Err(code) => code,
        };
        self.record(t, stamp, code);
        code
    }

    fn decide(&mut self, t: &NewTransfer, stamp: Timestamp) -> Result<(), ResultCode> {
        use ResultCode as R;
        let f = t.flags;
        if f.has_reserved_bits() {
            return Err(R::ReservedFlag);
        }
        if [f.pending(), f.post_pending(), f.void_pending()].iter().filter(|x| **x).count() > 1 {
            return Err(R::FlagsAreMutuallyExclusive);
        }
        if t.debit_account_id == 0 {
            return Err(R::DebitAccountIdMustNotBeZero);
        }
        if t.credit_account_id == 0 {
            return Err(R::CreditAccountIdMustNotBeZero);
        }
        if t.debit_account_id == t.credit_account_id {
            return Err(R::AccountsMustBeDifferent);
        }
        let finishing = f.post_pending() || f.void_pending();
        if finishing {
            if t.pending_id == 0 {
                return Err(R::PendingIdMustNotBeZero);
            }
            if t.pending_id == u128::MAX {
                return Err(R::PendingIdMustNotBeIntMax);
            }
            if t.pending_id == t.id {
                return Err(R::PendingIdMustBeDifferent);
            }
        } else if t.pending_id != 0 {
            return Err(R::PendingIdMustBeZero);
        }
        if t.timeout_s != 0 && !f.pending() {
            return Err(R::TimeoutReservedForPendingTransfer);
        }
        if t.currency == 0 {
            return Err(R::CurrencyMustNotBeZero);
        }
        if TransactionType::from_code(t.tx_type).is_none() {
            return Err(R::TransactionTypeInvalid);
        }
        if t.amount == 0 && !f.void_pending() {
            return Err(R::AmountMustNotBeZero);
        }
        if finishing { self.finish_hold(t) } else { self.move_money(t, stamp) }
    }

    fn move_money(&mut self, t: &NewTransfer, stamp: Timestamp) -> Result<(), ResultCode> {
        use ResultCode as R;
        let mut debit = *self.accounts.get(&t.debit_account_id).ok_or(R::DebitAccountNotFound)?;
        let mut credit =
            *self.accounts.get(&t.credit_account_id).ok_or(R::CreditAccountNotFound)?;
        if debit.currency != t.currency || credit.currency != t.currency {
            return Err(R::CurrencyMismatch);
        }
        match debit.status {
            AccountStatus::Closed => return Err(R::DebitAccountClosed),
            AccountStatus::Frozen | AccountStatus::DebitsFrozen => {
                return Err(R::DebitAccountFrozen);
            }
            AccountStatus::Active => {}
        }
        if debit.flags.contains(AccountFlags::NO_DEBITS) {
            return Err(R::DebitNotAllowed);
        }
        match credit.status {
            AccountStatus::Closed => return Err(R::CreditAccountClosed),
            AccountStatus::Frozen => return Err(R::CreditAccountFrozen),
            AccountStatus::Active | AccountStatus::DebitsFrozen => {}
        }
        let debit_limits = self.profiles[&debit.limit_profile];
        let credit_limits = self.profiles[&credit.limit_profile];
        let amount = t.amount;
        if amount < debit_limits.amount_min {
            return Err(R::BelowMinimumAmount);
        }
        if amount > debit_limits.per_transfer_max {
            return Err(R::ExceedsPerTransferLimit);
        }
        let overflow = R::ArithmeticOverflow;
        let pending = t.flags.pending();
        let debit_side = if pending { debit.debits_pending } else { debit.debits_posted };
        let credit_side = if pending { credit.credits_pending } else { credit.credits_posted };
        let debit_total = debit_side.checked_add(amount).ok_or(overflow)?;
        let credit_total = credit_side.checked_add(amount).ok_or(overflow)?;
        let expires_at = if pending && t.timeout_s > 0 {
            let at =
                stamp.checked_add(u64::from(t.timeout_s) * NANOS_PER_SECOND).ok_or(overflow)?;
            if at == u64::MAX {
                return Err(overflow);
            }
            Some(at)
        } else {
            None
        };
        if debit.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
            let overdraft = if t.tx_type == TransactionType::CashOut as u16 {
                0
            } else {
                debit.overdraft_limit
            };
            let exposure = debit
                .debits_posted
                .checked_add(debit.debits_pending)
                .and_then(|x| x.checked_add(amount))
                .ok_or(overflow)?;
            if exposure > debit.credits_posted.saturating_add(overdraft) {
                return Err(R::InsufficientFunds);
            }
        }
        let today = nairobi_day(stamp);
        let used = if debit.daily_day == today { debit.daily_debited } else { 0 };
        let daily = used.checked_add(amount).ok_or(overflow)?;
        if daily > debit_limits.daily_debit_max {
            return Err(R::ExceedsDailyLimit);
        }
        if credit_limits.balance_max != Amount::MAX {
            let incoming = credit
                .credits_posted
                .checked_add(credit.credits_pending)
                .and_then(|x| x.checked_add(amount))
                .ok_or(overflow)?;
            if incoming > credit.debits_posted
                && incoming - credit.debits_posted > credit_limits.balance_max
            {
                return Err(R::ExceedsBalanceLimit);
            }
        }
        if pending && debit.holds_pending >= self.holds_per_account_max {
            return Err(R::TooManyHolds);
        }
        debit.daily_day = today;
        debit.daily_debited = daily;
        if pending {
            debit.debits_pending = debit_total;
            credit.credits_pending = credit_total;
            debit.holds_pending += 1;
            self.holds.insert(
                t.id,
                LiveHold {
                    amount,
                    debit: t.debit_account_id,
                    credit: t.credit_account_id,
                    expires_at,
                    day: today,
                },
            );
        } else {
            debit.debits_posted = debit_total;
            credit.credits_posted = credit_total;
        }
        self.accounts.insert(debit.id, debit);
        self.accounts.insert(credit.id, credit);
        Ok(())
    }

    fn finish_hold(&mut self, t: &NewTransfer) -> Result<(), ResultCode> {
        use ResultCode as R;
        let pending = *self.transfers.get(&t.pending_id).ok_or(R::HoldNotFound)?;
        if pending.result != R::Ok {
            return Err(R::HoldNotFound);
        }
        if !pending.new.flags.pending() {
            return Err(R::NotAHold);
        }
        if pending.new.debit_account_id != t.debit_account_id {
            return Err(R::HoldDebitAccountMismatch);
        }
        if pending.new.credit_account_id != t.credit_account_id {
            return Err(R::HoldCreditAccountMismatch);
        }
        if pending.new.currency != t.currency {
            return Err(R::HoldCurrencyMismatch);
        }
        match pending.hold {
            HoldState::Pending => {}
            HoldState::Posted => return Err(R::HoldAlreadyPosted),
            HoldState::Voided => return Err(R::HoldAlreadyVoided),
            HoldState::Expired => return Err(R::HoldExpired),
            HoldState::None => panic!("a successful pending transfer has a hold state"),
        }
        let hold = self.holds[&t.pending_id].clone();
        let post = t.flags.post_pending();
        if post && t.amount > hold.amount {
            return Err(R::PostExceedsHold);
        }
        if !post && t.amount != 0 && t.amount != hold.amount {
            return Err(R::VoidAmountMismatch);
        }
        let mut debit = self.accounts[&hold.debit];
        let mut credit = self.accounts[&hold.credit];
        if post {
            match debit.status {
                AccountStatus::Closed => return Err(R::DebitAccountClosed),
                AccountStatus::Frozen | AccountStatus::DebitsFrozen => {
                    return Err(R::DebitAccountFrozen);
                }
                AccountStatus::Active => {}
            }
            match credit.status {
                AccountStatus::Closed => return Err(R::CreditAccountClosed),
                AccountStatus::Frozen => return Err(R::CreditAccountFrozen),
                _ => {}
            }
        }
        let posted = if post { t.amount } else { 0 };
        let debits_posted = debit.debits_posted.checked_add(posted).ok_or(R::ArithmeticOverflow)?;
        let credits_posted =
            credit.credits_posted.checked_add(posted).ok_or(R::ArithmeticOverflow)?;
        debit.debits_pending -= hold.amount;
        credit.credits_pending -= hold.amount;
        debit.holds_pending -= 1;
        debit.debits_posted = debits_posted;
        credit.credits_posted = credits_posted;
        if debit.daily_day == hold.day {
            debit.daily_debited -= hold.amount - posted;
        }
        self.accounts.insert(debit.id, debit);
        self.accounts.insert(credit.id, credit);
        self.holds.remove(&t.pending_id);
        self.transfers.get_mut(&t.pending_id).unwrap().hold =
            if post { HoldState::Posted } else { HoldState::Voided };
        Ok(())
    }

    fn expire(&mut self, timestamp: Timestamp) {
        let due: Vec<u128> = self
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at.is_some_and(|at| at <= timestamp))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let hold = self.holds.remove(&id).unwrap();
            let debit = self.accounts.get_mut(&hold.debit).unwrap();
            debit.debits_pending -= hold.amount;
            debit.holds_pending -= 1;
            if debit.daily_day == hold.day {
                debit.daily_debited -= hold.amount;
            }
            self.accounts.get_mut(&hold.credit).unwrap().credits_pending -= hold.amount;
            self.transfers.get_mut(&id).unwrap().hold = HoldState::Expired;
        }
    }

    fn create_account(&mut self, new: &NewAccount, stamp: Timestamp) -> ResultCode {
        use ResultCode as R;
        if new.id == 0 {
            return R::IdMustNotBeZero;
        }
        if new.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        if let Some(existing) = self.accounts.get(&new.id) {
            return if existing.as_new() == *new {
                R::Exists
            } else {
                R::ExistsWithDifferentFields
            };
        }
        if new.flags.has_reserved_bits() {
            return R::ReservedFlag;
        }
        if new.currency == 0 {
            return R::CurrencyMustNotBeZero;
        }
        if AccountKind::from_code(new.kind).is_none() {
            return R::AccountKindInvalid;
        }
        if new.overdraft_limit > 0
            && !new.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
        {
            return R::OverdraftRequiresBalanceCheck;
        }
        if !self.profiles.contains_key(&new.limit_profile) {
            return R::LimitProfileNotFound;
        }
        self.accounts.insert(
            new.id,
            Account {
                id: new.id,
                debits_pending: 0,
                debits_posted: 0,
                credits_pending: 0,
                credits_posted: 0,
                overdraft_limit: new.overdraft_limit,
                daily_debited: 0,
                user_data_128: new.user_data_128,
                user_data_64: new.user_data_64,
                timestamp: stamp,
                user_data_32: new.user_data_32,
                daily_day: 0,
                limit_profile: new.limit_profile,
                currency: new.currency,
                kind: new.kind,
                flags: new.flags,
                holds_pending: 0,
                status: AccountStatus::Active,
            },
        );
        R::Ok
    }

    fn set_status(&mut self, id: u128, status: AccountStatus) -> ResultCode {
        use ResultCode as R;
        if id == 0 {
            return R::IdMustNotBeZero;
        }
        if id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        let Some(account) = self.accounts.get_mut(&id) else {
            return R::AccountNotFound;
        };
        if account.status == status {
            return R::Ok;
        }
        if account.status == AccountStatus::Closed {
            return R::AccountClosed;
        }
        if status == AccountStatus::Closed {
            if account.holds_pending > 0
                || account.debits_pending > 0
                || account.credits_pending > 0
            {
                return R::AccountHasHolds;
            }
            if account.credits_posted != account.debits_posted {
                return R::AccountBalanceNotZero;
            }
        }
        account.status = status;
        R::Ok
    }

    fn set_profile(&mut self, id: LimitProfileId, limits: &LimitProfile) -> ResultCode {
        if id == 0 {
            return ResultCode::LimitProfileIdReserved;
        }
        if !limits.is_valid() {
            return ResultCode::LimitProfileInvalid;
        }
        if !self.profiles.contains_key(&id) && self.profiles.len() > self.limit_profiles_max {
            return ResultCode::LimitProfilesFull;
        }
        self.profiles.insert(id, *limits);
        ResultCode::Ok
    }
}

/// The answer to a resubmitted transfer id.
pub fn replay(first: &Transfer, again: &NewTransfer) -> ResultCode {
    if first.new != *again {
        ResultCode::ExistsWithDifferentFields
    } else if first.result == ResultCode::Ok {
        ResultCode::Exists
    } else {
        first.result
    }
}
