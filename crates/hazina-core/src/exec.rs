//! The money rules: how one unit of a batch (a command, or a linked chain of transfers) is
//! decided and applied.
//!
//! Everything here reads and writes partitions only through [`ShardAccess`], and only the
//! partitions in the unit's mask. That is what lets the parallel executor run units with
//! disjoint masks at the same time and still produce exactly the serial result.
//!
//! The order of the checks is part of the contract (it decides which code a command with several
//! faults gets) and is listed in `docs/RESULT_CODES.md`; the reference model in `hazina-testkit`
//! follows the same order.

use std::sync::atomic::{AtomicU16, Ordering};

use crate::ResultCode;
use crate::command::{Account, Command, NewAccount, NewTransfer};
use crate::shard::{Hold, NEVER, Shard, TransferShard, partition_of};
use crate::types::{
    AccountFlags, AccountKind, AccountStatus, Amount, HoldState, LimitProfile, LimitProfileId,
    NANOS_PER_SECOND, Timestamp, TransactionType, nairobi_day,
};

/// Marks "no such index" in the per-command plan arrays.
pub(crate) const NONE: u32 = u32::MAX;

/// A run of commands that is decided as one: a single command, or a linked chain of transfers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unit {
    pub start: u32,
    pub end: u32,
    /// Bit `p` is set when the unit may read or write partition `p`.
    pub mask: u64,
    /// A chain whose last transfer still carries `LINKED`.
    pub open: bool,
}

/// What every unit of one batch may read.
pub(crate) struct BatchCtx<'a> {
    pub commands: &'a [Command],
    pub timestamp: Timestamp,
    pub partitions: usize,
    pub holds_per_account_max: u16,
    pub limit_profiles_max: usize,
    /// Per command: the index of the first command of the batch with the same transfer id.
    pub first: &'a [u32],
    /// Per command: the index of an earlier command whose id is this command's `pending_id`.
    pub pending_ref: &'a [u32],
    /// Final results of finished units. A unit reads only results of units that share a
    /// partition with it and come before it, which the executors order before it.
    pub results: &'a [AtomicU16],
    /// Per command: whether a record of an earlier batch has its transfer id (looked up once,
    /// before execution; records do not change while units run).
    pub stored: &'a [bool],
    /// Per command: the slots of a transfer's debit and credit accounts, resolved before
    /// execution (`NONE` when the account did not exist then; it may have been created since).
    pub slots: &'a [[u32; 2]],
    /// Transfer records of earlier batches; not written until the batch's units are all done.
    pub transfers: &'a [TransferShard],
}

impl BatchCtx<'_> {
    fn result(&self, index: u32) -> ResultCode {
        let code = self.results[index as usize].load(Ordering::Relaxed);
        ResultCode::from_code(code).expect("only result codes are stored")
    }

    fn transfer_at(&self, index: usize) -> &NewTransfer {
        match &self.commands[index] {
            Command::CreateTransfer(t) => t,
            other => panic!("command {index} is not a transfer: {other:?}"),
        }
    }

    fn partition(&self, id: u128) -> usize {
        partition_of(id, self.partitions)
    }

    fn timestamp_of(&self, index: usize) -> Timestamp {
        // The batch was checked to fit before it was applied.
        self.timestamp + index as u64
    }
}

/// Mutable access to the partitions a unit may touch.
pub(crate) trait ShardAccess {
    fn shard(&mut self, partition: usize) -> &mut Shard;
}

/// What a linked chain changed, so that a failure can put it back.
#[derive(Debug)]
pub(crate) enum Undo {
    Account { partition: usize, slot: u32, old: Account },
    HoldInserted { partition: usize, id: u128 },
    HoldState { partition: usize, id: u128, old: HoldState },
}

/// Decides and applies one unit, leaving one result per command in `out`.
pub(crate) fn execute_unit<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    unit: &Unit,
    access: &mut A,
    out: &mut Vec<ResultCode>,
    undo: &mut Vec<Undo>,
) {
    out.clear();
    let start = unit.start as usize;
    match &ctx.commands[start] {
        Command::CreateAccount(new) => out.push(create_account(ctx, start, new, access)),
        Command::SetAccountStatus { account_id, status } => {
            out.push(set_account_status(ctx, *account_id, *status, access));
        }
        Command::SetLimitProfile { profile_id, limits } => {
            out.push(set_limit_profile(ctx, *profile_id, limits, access));
        }
        Command::CreateTransfer(_) => execute_transfers(ctx, unit, access, out, undo),
    }
}

fn execute_transfers<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    unit: &Unit,
    access: &mut A,
    out: &mut Vec<ResultCode>,
    undo: &mut Vec<Undo>,
) {
    let (start, end) = (unit.start as usize, unit.end as usize);
    if unit.open {
        for i in start..end {
            let code = if i + 1 == end {
                ResultCode::LinkedEventChainOpen
            } else {
                ResultCode::LinkedEventFailed
            };
            out.push(outcome_without_effect(ctx, i, unit, code));
        }
        return;
    }
    if end - start == 1 {
        out.push(transfer(ctx, start, unit, access, out, None));
        return;
    }
    // A chain: all or nothing.
    undo.clear();
    let mut failed = None;
    for i in start..end {
        let code = transfer(ctx, i, unit, access, out, Some(undo));
        out.push(code);
        if !code.is_applied() {
            failed = Some(i);
            break;
        }
    }
    if let Some(failed) = failed {
        // The failing transfer keeps the code it was decided with, against the chain's state
        // at that point; every other member of the chain reports the chain's failure.
        let failing_code = out[failed - start];
        for change in undo.drain(..).rev() {
            revert(access, change);
        }
        out.clear();
        for i in start..end {
            out.push(if i == failed {
                failing_code
            } else {
                outcome_without_effect(ctx, i, unit, ResultCode::LinkedEventFailed)
            });
        }
    }
}

fn revert<A: ShardAccess>(access: &mut A, change: Undo) {
    match change {
        Undo::Account { partition, slot, old } => access.shard(partition).put(slot, old),
        Undo::HoldInserted { partition, id } => {
            access.shard(partition).hold_remove(id);
        }
        Undo::HoldState { partition, id, old } => {
            access.shard(partition).hold_mut(id).expect("an undone hold is still resident").state =
                old;
        }
    }
}

/// The result of a transfer that is not evaluated because its chain failed or stayed open: a
/// resubmitted id still answers with its first outcome.
fn outcome_without_effect(
    ctx: &BatchCtx<'_>,
    index: usize,
    unit: &Unit,
    chain_code: ResultCode,
) -> ResultCode {
    let t = ctx.transfer_at(index);
    if let Some(code) = id_code(t.id) {
        return code;
    }
    match existing(ctx, index, unit, t.id) {
        Existing::SameUnit => ResultCode::DuplicateIdInChain,
        Existing::Found { new, result } => replay(&new, result, t),
        Existing::None => chain_code,
    }
}

fn id_code(id: u128) -> Option<ResultCode> {
    match id {
        0 => Some(ResultCode::IdMustNotBeZero),
        u128::MAX => Some(ResultCode::IdMustNotBeIntMax),
        _ => None,
    }
}

enum Existing {
    None,
    /// The id first appears earlier in the same chain.
    SameUnit,
    Found {
        new: NewTransfer,
        result: ResultCode,
    },
}

/// Whether the transfer id at `index` was used before: in an earlier batch, or earlier in this one.
fn existing(ctx: &BatchCtx<'_>, index: usize, unit: &Unit, id: u128) -> Existing {
    if ctx.stored[index] {
        let record = ctx.transfers[ctx.partition(id)].get(id).expect("found before execution");
        return Existing::Found { new: record.new, result: record.result };
    }
    let first = ctx.first[index];
    if first as usize == index {
        return Existing::None;
    }
    if first >= unit.start {
        return Existing::SameUnit;
    }
    Existing::Found { new: *ctx.transfer_at(first as usize), result: ctx.result(first) }
}

/// The answer to a resubmission: the first outcome when every field matches.
fn replay(first: &NewTransfer, first_result: ResultCode, again: &NewTransfer) -> ResultCode {
    if first != again {
        ResultCode::ExistsWithDifferentFields
    } else if first_result == ResultCode::Ok {
        ResultCode::Exists
    } else {
        first_result
    }
}

/// Field checks that need no state.
fn validate_transfer(t: &NewTransfer) -> Result<(), ResultCode> {
    let f = t.flags;
    if f.has_reserved_bits() {
        return Err(ResultCode::ReservedFlag);
    }
    let hold_flags =
        u8::from(f.pending()) + u8::from(f.post_pending()) + u8::from(f.void_pending());
    if hold_flags > 1 {
        return Err(ResultCode::FlagsAreMutuallyExclusive);
    }
    if t.debit_account_id == 0 {
        return Err(ResultCode::DebitAccountIdMustNotBeZero);
    }
    if t.credit_account_id == 0 {
        return Err(ResultCode::CreditAccountIdMustNotBeZero);
    }
    if t.debit_account_id == t.credit_account_id {
        return Err(ResultCode::AccountsMustBeDifferent);
    }
    let finishes_hold = f.post_pending() || f.void_pending();
    if finishes_hold {
        match t.pending_id {
            0 => return Err(ResultCode::PendingIdMustNotBeZero),
            u128::MAX => return Err(ResultCode::PendingIdMustNotBeIntMax),
            id if id == t.id => return Err(ResultCode::PendingIdMustBeDifferent),
            _ => {}
        }
    } else if t.pending_id != 0 {
        return Err(ResultCode::PendingIdMustBeZero);
    }
    if t.timeout_s != 0 && !f.pending() {
        return Err(ResultCode::TimeoutReservedForPendingTransfer);
    }
    if t.currency == 0 {
        return Err(ResultCode::CurrencyMustNotBeZero);
    }
    if TransactionType::from_code(t.tx_type).is_none() {
        return Err(ResultCode::TransactionTypeInvalid);
    }
    if t.amount == 0 && !f.void_pending() {
        return Err(ResultCode::AmountMustNotBeZero);
    }
    Ok(())
}

/// Decides one transfer and, if it succeeds, applies it (recording undo entries for a chain).
fn transfer<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    index: usize,
    unit: &Unit,
    access: &mut A,
    chain_results: &[ResultCode],
    undo: Option<&mut Vec<Undo>>,
) -> ResultCode {
    let t = ctx.transfer_at(index);
    if let Some(code) = id_code(t.id) {
        return code;
    }
    match existing(ctx, index, unit, t.id) {
        Existing::SameUnit => return ResultCode::DuplicateIdInChain,
        Existing::Found { new, result } => return replay(&new, result, t),
        Existing::None => {}
    }
    if let Err(code) = validate_transfer(t) {
        return code;
    }
    let result = if t.flags.post_pending() || t.flags.void_pending() {
        finish_hold(ctx, index, t, unit, access, chain_results, undo)
    } else {
        move_money(ctx, index, t, access, undo)
    };
    match result {
        Ok(()) => ResultCode::Ok,
        Err(code) => code,
    }
}

/// The debit-side limits and the credit account's profile, read from the accounts' partitions.
fn profile<A: ShardAccess>(access: &mut A, partition: usize, id: LimitProfileId) -> LimitProfile {
    *access
        .shard(partition)
        .profiles
        .get(&id)
        .expect("accounts name only profiles that exist, and profiles are never removed")
}

/// The slot of a transfer's account: the resolved one when it has one. Only the slot travels
/// back; the caller copies the account once (an account is 176 bytes, and copies through a
/// `Result` were a measurable share of the work).
fn find<A: ShardAccess>(
    access: &mut A,
    partition: usize,
    id: u128,
    resolved: u32,
    missing: ResultCode,
) -> Result<u32, ResultCode> {
    let shard = access.shard(partition);
    if resolved != NONE {
        // Accounts are never removed, so a slot resolved before the batch still holds the id.
        assert_eq!(shard.get(resolved).id, id, "resolved slot {resolved} holds another account");
        return Ok(resolved);
    }
    shard.slot(id).ok_or(missing)
}

fn check_debit_status(account: &Account) -> Result<(), ResultCode> {
    match account.status {
        AccountStatus::Closed => Err(ResultCode::DebitAccountClosed),
        status if !status.allows_debits() => Err(ResultCode::DebitAccountFrozen),
        _ => Ok(()),
    }
}

fn check_credit_status(account: &Account) -> Result<(), ResultCode> {
    match account.status {
        AccountStatus::Closed => Err(ResultCode::CreditAccountClosed),
        status if !status.allows_credits() => Err(ResultCode::CreditAccountFrozen),
        _ => Ok(()),
    }
}

fn add(a: Amount, b: Amount) -> Result<Amount, ResultCode> {
    a.checked_add(b).ok_or(ResultCode::ArithmeticOverflow)
}

/// A plain transfer or a new hold.
fn move_money<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    index: usize,
    t: &NewTransfer,
    access: &mut A,
    undo: Option<&mut Vec<Undo>>,
) -> Result<(), ResultCode> {
    let timestamp = ctx.timestamp_of(index);
    let (dp, cp) = (ctx.partition(t.debit_account_id), ctx.partition(t.credit_account_id));
    let [debit_slot, credit_slot] = ctx.slots[index];
    let ds = find(access, dp, t.debit_account_id, debit_slot, ResultCode::DebitAccountNotFound)?;
    let cs = find(access, cp, t.credit_account_id, credit_slot, ResultCode::CreditAccountNotFound)?;
    let mut debit = *access.shard(dp).get(ds);
    let mut credit = *access.shard(cp).get(cs);
    if debit.currency != t.currency || credit.currency != t.currency {
        return Err(ResultCode::CurrencyMismatch);
    }
    check_debit_status(&debit)?;
    if debit.flags.contains(AccountFlags::NO_DEBITS) {
        return Err(ResultCode::DebitNotAllowed);
    }
    check_credit_status(&credit)?;
    let debit_limits = profile(access, dp, debit.limit_profile);
    let credit_limits = profile(access, cp, credit.limit_profile);
    let amount = t.amount;
    if amount < debit_limits.amount_min {
        return Err(ResultCode::BelowMinimumAmount);
    }
    if amount > debit_limits.per_transfer_max {
        return Err(ResultCode::ExceedsPerTransferLimit);
    }
    let pending = t.flags.pending();
    let debit_total =
        add(if pending { debit.debits_pending } else { debit.debits_posted }, amount)?;
    let credit_total =
        add(if pending { credit.credits_pending } else { credit.credits_posted }, amount)?;
    let expires_at = if pending && t.timeout_s != 0 {
        timestamp
            .checked_add(u64::from(t.timeout_s) * NANOS_PER_SECOND)
            .filter(|&at| at != NEVER)
            .ok_or(ResultCode::ArithmeticOverflow)?
    } else {
        NEVER
    };
    if debit.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
        // An overdraft line covers sends and payments, never cash.
        let overdraft =
            if t.tx_type == TransactionType::CashOut as u16 { 0 } else { debit.overdraft_limit };
        let exposure = add(add(debit.debits_posted, debit.debits_pending)?, amount)?;
        if exposure > debit.credits_posted.saturating_add(overdraft) {
            return Err(ResultCode::InsufficientFunds);
        }
    }
    let today = nairobi_day(timestamp);
    let used_today = if debit.daily_day == today { debit.daily_debited } else { 0 };
    let daily = add(used_today, amount)?;
    if daily > debit_limits.daily_debit_max {
        return Err(ResultCode::ExceedsDailyLimit);
    }
    if credit_limits.balance_max != Amount::MAX {
        let incoming = add(add(credit.credits_posted, credit.credits_pending)?, amount)?;
        if incoming > credit.debits_posted
            && incoming - credit.debits_posted > credit_limits.balance_max
        {
            return Err(ResultCode::ExceedsBalanceLimit);
        }
    }
    if pending && debit.holds_pending >= ctx.holds_per_account_max {
        return Err(ResultCode::TooManyHolds);
    }

    // Decided: apply.
    if let Some(undo) = undo {
        undo.push(Undo::Account { partition: dp, slot: ds, old: debit });
        undo.push(Undo::Account { partition: cp, slot: cs, old: credit });
        if pending {
            undo.push(Undo::HoldInserted { partition: dp, id: t.id });
        }
    }
    debit.daily_day = today;
    debit.daily_debited = daily;
    if pending {
        debit.debits_pending = debit_total;
        credit.credits_pending = credit_total;
        debit.holds_pending += 1;
        access.shard(dp).hold_insert(
            t.id,
            Hold {
                amount,
                credit_account_id: t.credit_account_id,
                expires_at,
                debit_slot: ds,
                day: today,
                state: HoldState::Pending,
            },
        );
    } else {
        debit.debits_posted = debit_total;
        credit.credits_posted = credit_total;
    }
    access.shard(dp).put(ds, debit);
    access.shard(cp).put(cs, credit);
    Ok(())
}

/// A post or a void of a hold.
fn finish_hold<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    index: usize,
    t: &NewTransfer,
    unit: &Unit,
    access: &mut A,
    chain_results: &[ResultCode],
    undo: Option<&mut Vec<Undo>>,
) -> Result<(), ResultCode> {
    // The pending transfer: from an earlier batch, or earlier in this one.
    let (pending, pending_result, stored_hold) = if let Some(record) =
        ctx.transfers[ctx.partition(t.pending_id)].get(t.pending_id)
    {
        (record.new, record.result, record.hold)
    } else {
        let k = ctx.pending_ref[index];
        if k == NONE {
            return Err(ResultCode::HoldNotFound);
        }
        let result =
            if k >= unit.start { chain_results[(k - unit.start) as usize] } else { ctx.result(k) };
        (*ctx.transfer_at(k as usize), result, HoldState::None)
    };
    if pending_result != ResultCode::Ok {
        return Err(ResultCode::HoldNotFound);
    }
    if !pending.flags.pending() {
        return Err(ResultCode::NotAHold);
    }
    if pending.debit_account_id != t.debit_account_id {
        return Err(ResultCode::HoldDebitAccountMismatch);
    }
    if pending.credit_account_id != t.credit_account_id {
        return Err(ResultCode::HoldCreditAccountMismatch);
    }
    if pending.currency != t.currency {
        return Err(ResultCode::HoldCurrencyMismatch);
    }
    let (dp, cp) = (ctx.partition(t.debit_account_id), ctx.partition(t.credit_account_id));
    let Some(hold) = access.shard(dp).hold_mut(t.pending_id).copied() else {
        // Finalised in an earlier batch: its record says how.
        return Err(match stored_hold {
            HoldState::Posted => ResultCode::HoldAlreadyPosted,
            HoldState::Voided => ResultCode::HoldAlreadyVoided,
            HoldState::Expired => ResultCode::HoldExpired,
            state => panic!("hold {} is {state:?} but not resident", t.pending_id),
        });
    };
    match hold.state {
        HoldState::Pending => {}
        HoldState::Posted => return Err(ResultCode::HoldAlreadyPosted),
        HoldState::Voided => return Err(ResultCode::HoldAlreadyVoided),
        state => panic!("a resident hold is never {state:?}"),
    }
    assert!(hold.expires_at > ctx.timestamp, "expired holds are released before the batch");
    let post = t.flags.post_pending();
    if post && t.amount > hold.amount {
        return Err(ResultCode::PostExceedsHold);
    }
    if !post && t.amount != 0 && t.amount != hold.amount {
        return Err(ResultCode::VoidAmountMismatch);
    }
    let [debit_slot, credit_slot] = ctx.slots[index];
    let ds = find(access, dp, t.debit_account_id, debit_slot, ResultCode::DebitAccountNotFound)
        .expect("a hold's debit account exists");
    let cs = find(access, cp, t.credit_account_id, credit_slot, ResultCode::CreditAccountNotFound)
        .expect("a hold's credit account exists");
    let mut debit = *access.shard(dp).get(ds);
    let mut credit = *access.shard(cp).get(cs);
    if post {
        check_debit_status(&debit)?;
        check_credit_status(&credit)?;
    }
    let posted = if post { t.amount } else { 0 };
    let debits_posted = add(debit.debits_posted, posted)?;
    let credits_posted = add(credit.credits_posted, posted)?;

    // Decided: apply.
    if let Some(undo) = undo {
        undo.push(Undo::Account { partition: dp, slot: ds, old: debit });
        undo.push(Undo::Account { partition: cp, slot: cs, old: credit });
        undo.push(Undo::HoldState { partition: dp, id: t.pending_id, old: hold.state });
    }
    debit.debits_pending -= hold.amount;
    credit.credits_pending -= hold.amount;
    debit.holds_pending -= 1;
    debit.debits_posted = debits_posted;
    credit.credits_posted = credits_posted;
    if debit.daily_day == hold.day {
        // What was held but not posted no longer counts against today's limit.
        debit.daily_debited -= hold.amount - posted;
    }
    access.shard(dp).hold_mut(t.pending_id).expect("checked above").state =
        if post { HoldState::Posted } else { HoldState::Voided };
    access.shard(dp).put(ds, debit);
    access.shard(cp).put(cs, credit);
    Ok(())
}

fn create_account<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    index: usize,
    new: &NewAccount,
    access: &mut A,
) -> ResultCode {
    if let Some(code) = id_code(new.id) {
        return code;
    }
    let shard = access.shard(ctx.partition(new.id));
    if let Some((_, account)) = shard.find(new.id) {
        return if account.as_new() == *new {
            ResultCode::Exists
        } else {
            ResultCode::ExistsWithDifferentFields
        };
    }
    if new.flags.has_reserved_bits() {
        return ResultCode::ReservedFlag;
    }
    if new.currency == 0 {
        return ResultCode::CurrencyMustNotBeZero;
    }
    if AccountKind::from_code(new.kind).is_none() {
        return ResultCode::AccountKindInvalid;
    }
    if new.overdraft_limit != 0 && !new.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
    {
        return ResultCode::OverdraftRequiresBalanceCheck;
    }
    if !shard.profiles.contains_key(&new.limit_profile) {
        return ResultCode::LimitProfileNotFound;
    }
    shard.insert(Account::new(new, ctx.timestamp_of(index)));
    ResultCode::Ok
}

fn set_account_status<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    id: u128,
    status: AccountStatus,
    access: &mut A,
) -> ResultCode {
    if let Some(code) = id_code(id) {
        return code;
    }
    let shard = access.shard(ctx.partition(id));
    let Some((slot, mut account)) = shard.find(id) else {
        return ResultCode::AccountNotFound;
    };
    if account.status == status {
        return ResultCode::Ok;
    }
    if account.status == AccountStatus::Closed {
        return ResultCode::AccountClosed;
    }
    if status == AccountStatus::Closed {
        if account.holds_pending != 0 || account.debits_pending != 0 || account.credits_pending != 0
        {
            return ResultCode::AccountHasHolds;
        }
        if account.credits_posted != account.debits_posted {
            return ResultCode::AccountBalanceNotZero;
        }
    }
    account.status = status;
    shard.put(slot, account);
    ResultCode::Ok
}

fn set_limit_profile<A: ShardAccess>(
    ctx: &BatchCtx<'_>,
    profile_id: LimitProfileId,
    limits: &LimitProfile,
    access: &mut A,
) -> ResultCode {
    if profile_id == 0 {
        return ResultCode::LimitProfileIdReserved;
    }
    if !limits.is_valid() {
        return ResultCode::LimitProfileInvalid;
    }
    let profiles = &access.shard(0).profiles;
    // Profile 0 is built in and does not count against the maximum.
    if !profiles.contains_key(&profile_id) && profiles.len() > ctx.limit_profiles_max {
        return ResultCode::LimitProfilesFull;
    }
    for partition in 0..ctx.partitions {
        access.shard(partition).profiles.insert(profile_id, *limits);
    }
    ResultCode::Ok
}
