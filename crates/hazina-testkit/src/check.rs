//! Invariants that hold after every batch, whatever the commands were.

use std::collections::BTreeMap;

use hazina_core::{Account, AccountFlags, Amount, Currency, LimitProfile, LimitProfileId};

/// Money is neither created nor destroyed: per currency, posted debits equal posted credits and
/// held debits equal held credits.
pub fn conservation(accounts: &[Account]) -> Result<(), String> {
    // Each account's totals fit u128, but their sum over accounts need not (the random world
    // moves amounts near u128::MAX to reach the overflow codes): sum with a carry word.
    let mut totals: BTreeMap<Currency, [(u64, Amount); 4]> = BTreeMap::new();
    for a in accounts {
        let t = totals.entry(a.currency).or_default();
        for (sum, value) in t.iter_mut().zip([
            a.debits_posted,
            a.credits_posted,
            a.debits_pending,
            a.credits_pending,
        ]) {
            let (low, carried) = sum.1.overflowing_add(value);
            *sum = (sum.0 + u64::from(carried), low);
        }
    }
    for (currency, [dp, cp, dh, ch]) in totals {
        if dp != cp {
            return Err(format!(
                "currency {currency}: posted debits {dp:?} != posted credits {cp:?}"
            ));
        }
        if dh != ch {
            return Err(format!("currency {currency}: held debits {dh:?} != held credits {ch:?}"));
        }
    }
    Ok(())
}

/// No account is past a limit it was not allowed to pass. Limits are checked for accounts on
/// `stable` profiles (profiles never changed after their accounts were created).
pub fn limits(
    accounts: &[Account],
    profiles: &BTreeMap<LimitProfileId, LimitProfile>,
    stable: &[LimitProfileId],
    holds_per_account_max: u16,
) -> Result<(), String> {
    for a in accounts {
        if a.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
            let exposure = a.debits_posted.checked_add(a.debits_pending);
            if exposure.is_none_or(|e| e > a.credits_posted.saturating_add(a.overdraft_limit)) {
                return Err(format!("account {} is overdrawn past its limit: {a:?}", a.id));
            }
        }
        if a.flags.contains(AccountFlags::NO_DEBITS) && (a.debits_posted | a.debits_pending) != 0 {
            return Err(format!("account {} may never be debited: {a:?}", a.id));
        }
        if a.holds_pending > holds_per_account_max {
            return Err(format!("account {} has too many holds: {a:?}", a.id));
        }
        if stable.contains(&a.limit_profile) {
            let p = &profiles[&a.limit_profile];
            if a.daily_debited > p.daily_debit_max {
                return Err(format!("account {} passed its daily limit: {a:?}", a.id));
            }
            let incoming = a.credits_posted.saturating_add(a.credits_pending);
            if incoming > a.debits_posted && incoming - a.debits_posted > p.balance_max {
                return Err(format!("account {} passed its balance limit: {a:?}", a.id));
            }
        }
    }
    Ok(())
}
