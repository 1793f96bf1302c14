//! # hazina-proto
//!
//! The `hazina.v1` gRPC API generated from `proto/hazina/v1/ledger.proto`, and the conversions
//! between its messages and the core's types. Conversions from the wire check every field and
//! name the first bad one (`transfers[3].amount: ...`), for an `INVALID_ARGUMENT` that tells the
//! caller what to fix.

#[allow(clippy::all, clippy::pedantic, missing_debug_implementations, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("hazina.v1");

    /// The file descriptor set of `hazina.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("hazina_v1_descriptor");
}

/// Site-to-site replication (`proto/hazina/peer/v1/peer.proto`): raft messages between the
/// sites of one group. Not part of the client API, and not in reflection.
#[allow(clippy::all, clippy::pedantic, missing_debug_implementations, rust_2018_idioms)]
pub mod peer {
    tonic::include_proto!("hazina.peer.v1");
}

pub mod codec;

use hazina_core as core;
use v1::{Balance, Uint128};

/// The largest value a `Uint128` can carry.
pub fn u128_to_wire(v: u128) -> Uint128 {
    // The two halves: truncation is the point.
    #[allow(clippy::cast_possible_truncation)]
    Uint128 { high: (v >> 64) as u64, low: v as u64 }
}

pub fn u128_from_wire(v: Option<&Uint128>) -> u128 {
    v.map_or(0, |v| (u128::from(v.high) << 64) | u128::from(v.low))
}

fn opt(v: u128) -> Option<Uint128> {
    Some(u128_to_wire(v))
}

pub fn balance_to_wire(balance: i128) -> Balance {
    Balance { magnitude: opt(balance.unsigned_abs()), negative: balance < 0 }
}

pub fn balance_from_wire(balance: Option<&Balance>) -> i128 {
    let Some(b) = balance else { return 0 };
    let magnitude = i128::try_from(u128_from_wire(b.magnitude.as_ref())).unwrap_or(i128::MAX);
    if b.negative { -magnitude } else { magnitude }
}

/// A request field that cannot become a command, named as in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

fn narrow<T: TryFrom<u32>>(value: u32, field: impl FnOnce() -> String) -> Result<T, FieldError> {
    T::try_from(value)
        .map_err(|_| FieldError { field: field(), reason: format!("{value} is out of range") })
}

/// Item `index` of a request's list `list`, as errors name it (`transfers[4]`). Formatted only
/// when a field is bad, so a valid request of 8,000 items allocates no names.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub list: &'a str,
    pub index: usize,
}

impl std::fmt::Display for Item<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)
    }
}

/// Converts one item of `CreateAccounts`. `at` names it in errors (`accounts[4]`).
pub fn new_account_from_wire(
    a: &v1::NewAccount,
    at: &dyn std::fmt::Display,
) -> Result<core::NewAccount, FieldError> {
    Ok(core::NewAccount {
        id: u128_from_wire(a.id.as_ref()),
        currency: narrow(a.currency, || format!("{at}.currency"))?,
        kind: narrow(a.kind, || format!("{at}.kind"))?,
        flags: core::AccountFlags(narrow(a.flags, || format!("{at}.flags"))?),
        overdraft_limit: u128_from_wire(a.overdraft_limit.as_ref()),
        limit_profile: a.limit_profile,
        user_data_128: u128_from_wire(a.user_data_128.as_ref()),
        user_data_64: a.user_data_64,
        user_data_32: a.user_data_32,
    })
}

pub fn new_account_to_wire(a: &core::NewAccount) -> v1::NewAccount {
    v1::NewAccount {
        id: opt(a.id),
        currency: a.currency.into(),
        kind: a.kind.into(),
        flags: a.flags.0.into(),
        overdraft_limit: opt(a.overdraft_limit),
        limit_profile: a.limit_profile,
        user_data_128: opt(a.user_data_128),
        user_data_64: a.user_data_64,
        user_data_32: a.user_data_32,
    }
}

pub fn account_to_wire(a: &core::Account) -> v1::Account {
    v1::Account {
        account: Some(new_account_to_wire(&a.as_new())),
        debits_pending: opt(a.debits_pending),
        debits_posted: opt(a.debits_posted),
        credits_pending: opt(a.credits_pending),
        credits_posted: opt(a.credits_posted),
        balance: Some(balance_to_wire(a.balance())),
        status: status_to_wire(a.status) as i32,
        holds_pending: a.holds_pending.into(),
        daily_debited: opt(a.daily_debited),
        daily_day: a.daily_day,
        timestamp: a.timestamp,
    }
}

pub fn status_to_wire(s: core::AccountStatus) -> v1::AccountStatus {
    match s {
        core::AccountStatus::Active => v1::AccountStatus::Active,
        core::AccountStatus::DebitsFrozen => v1::AccountStatus::DebitsFrozen,
        core::AccountStatus::Frozen => v1::AccountStatus::Frozen,
        core::AccountStatus::Closed => v1::AccountStatus::Closed,
    }
}

pub fn status_from_wire(value: i32, field: &str) -> Result<core::AccountStatus, FieldError> {
    let status = match v1::AccountStatus::try_from(value) {
        Ok(v1::AccountStatus::Active) => core::AccountStatus::Active,
        Ok(v1::AccountStatus::DebitsFrozen) => core::AccountStatus::DebitsFrozen,
        Ok(v1::AccountStatus::Frozen) => core::AccountStatus::Frozen,
        Ok(v1::AccountStatus::Closed) => core::AccountStatus::Closed,
        Ok(v1::AccountStatus::Unspecified) | Err(_) => {
            return Err(FieldError {
                field: field.to_owned(),
                reason: format!("{value} is not an account status (1 to 4)"),
            });
        }
    };
    Ok(status)
}

/// Converts one item of `CreateTransfers`. `at` names it in errors (`transfers[4]`).
pub fn new_transfer_from_wire(
    t: &v1::NewTransfer,
    at: &dyn std::fmt::Display,
) -> Result<core::NewTransfer, FieldError> {
    Ok(core::NewTransfer {
        id: u128_from_wire(t.id.as_ref()),
        debit_account_id: u128_from_wire(t.debit_account_id.as_ref()),
        credit_account_id: u128_from_wire(t.credit_account_id.as_ref()),
        amount: u128_from_wire(t.amount.as_ref()),
        pending_id: u128_from_wire(t.pending_id.as_ref()),
        user_data_128: u128_from_wire(t.user_data_128.as_ref()),
        user_data_64: t.user_data_64,
        user_data_32: t.user_data_32,
        timeout_s: t.timeout_s,
        currency: narrow(t.currency, || format!("{at}.currency"))?,
        tx_type: narrow(t.tx_type, || format!("{at}.tx_type"))?,
        flags: core::TransferFlags(narrow(t.flags, || format!("{at}.flags"))?),
    })
}

pub fn new_transfer_to_wire(t: &core::NewTransfer) -> v1::NewTransfer {
    v1::NewTransfer {
        id: opt(t.id),
        debit_account_id: opt(t.debit_account_id),
        credit_account_id: opt(t.credit_account_id),
        amount: opt(t.amount),
        pending_id: opt(t.pending_id),
        user_data_128: opt(t.user_data_128),
        user_data_64: t.user_data_64,
        user_data_32: t.user_data_32,
        timeout_s: t.timeout_s,
        currency: t.currency.into(),
        tx_type: t.tx_type.into(),
        flags: t.flags.0.into(),
    }
}

pub fn transfer_to_wire(t: &core::Transfer) -> v1::Transfer {
    v1::Transfer {
        transfer: Some(new_transfer_to_wire(&t.new)),
        timestamp: t.timestamp,
        result: result_to_wire(t.result),
        hold: match t.hold {
            core::HoldState::None => v1::HoldState::None,
            core::HoldState::Pending => v1::HoldState::Pending,
            core::HoldState::Posted => v1::HoldState::Posted,
            core::HoldState::Voided => v1::HoldState::Voided,
            core::HoldState::Expired => v1::HoldState::Expired,
        } as i32,
    }
}

pub fn transfer_from_wire(t: &v1::Transfer) -> Result<core::Transfer, FieldError> {
    let new = new_transfer_from_wire(
        t.transfer.as_ref().unwrap_or(&v1::NewTransfer::default()),
        &"transfer",
    )?;
    let result = result_from_wire(t.result).ok_or_else(|| FieldError {
        field: "result".into(),
        reason: format!("{} is not a result code", t.result),
    })?;
    let hold = match v1::HoldState::try_from(t.hold) {
        Ok(v1::HoldState::None) => core::HoldState::None,
        Ok(v1::HoldState::Pending) => core::HoldState::Pending,
        Ok(v1::HoldState::Posted) => core::HoldState::Posted,
        Ok(v1::HoldState::Voided) => core::HoldState::Voided,
        Ok(v1::HoldState::Expired) => core::HoldState::Expired,
        Err(_) => {
            return Err(FieldError {
                field: "hold".into(),
                reason: format!("{} is not a hold state", t.hold),
            });
        }
    };
    Ok(core::Transfer { new, timestamp: t.timestamp, result, hold })
}

/// A limit of zero (or left out) is no limit for the three maxima.
pub fn limit_profile_from_wire(p: &v1::LimitProfile) -> (core::LimitProfileId, core::LimitProfile) {
    let max = |v: Option<&Uint128>| match u128_from_wire(v) {
        0 => core::Amount::MAX,
        v => v,
    };
    (
        p.profile_id,
        core::LimitProfile {
            per_transfer_max: max(p.per_transfer_max.as_ref()),
            daily_debit_max: max(p.daily_debit_max.as_ref()),
            balance_max: max(p.balance_max.as_ref()),
            amount_min: u128_from_wire(p.amount_min.as_ref()),
        },
    )
}

pub fn result_to_wire(code: core::ResultCode) -> i32 {
    i32::from(code as u16)
}

pub fn result_from_wire(code: i32) -> Option<core::ResultCode> {
    u16::try_from(code).ok().and_then(core::ResultCode::from_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proto enum and the core's codes must agree on every number and name: the proto is
    /// what callers see, the core is what decides.
    #[test]
    fn proto_result_codes_match_the_core() {
        for &code in core::ResultCode::ALL {
            let wire = v1::ResultCode::try_from(result_to_wire(code))
                .unwrap_or_else(|_| panic!("{code:?} is missing from ledger.proto"));
            let snake: String = format!("{code:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                    sep.into_iter().chain(std::iter::once(c.to_ascii_uppercase()))
                })
                .collect();
            assert_eq!(wire.as_str_name(), format!("RESULT_CODE_{snake}"));
        }
        let mut wire_codes = 0;
        for value in 0..=u16::MAX {
            if v1::ResultCode::try_from(i32::from(value)).is_ok() {
                wire_codes += 1;
                assert!(
                    core::ResultCode::from_code(value).is_some(),
                    "proto has {value}, core not"
                );
            }
        }
        assert_eq!(wire_codes, core::ResultCode::ALL.len());
    }

    #[test]
    fn numbers_and_transfers_round_trip() {
        for v in [0, 1, u128::from(u64::MAX), u128::from(u64::MAX) + 1, u128::MAX] {
            assert_eq!(u128_from_wire(Some(&u128_to_wire(v))), v);
        }
        for b in [0, -1, 5, i128::MAX, -i128::MAX] {
            assert_eq!(balance_from_wire(Some(&balance_to_wire(b))), b);
        }
        let record = core::Transfer {
            new: core::NewTransfer {
                id: u128::MAX,
                debit_account_id: 2,
                credit_account_id: 3,
                amount: 250_000_00,
                currency: core::CURRENCY_KES,
                tx_type: 1,
                flags: core::TransferFlags::PENDING,
                timeout_s: 60,
                ..core::NewTransfer::default()
            },
            timestamp: 9,
            result: core::ResultCode::ExceedsDailyLimit,
            hold: core::HoldState::None,
        };
        assert_eq!(transfer_from_wire(&transfer_to_wire(&record)).unwrap(), record);
        let wide = v1::NewTransfer { currency: 70_000, ..v1::NewTransfer::default() };
        let err = new_transfer_from_wire(&wide, &Item { list: "transfers", index: 2 }).unwrap_err();
        assert_eq!(err.field, "transfers[2].currency");
    }
}
