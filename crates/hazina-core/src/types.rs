//! Plain value types shared by every command: money, codes, flags and statuses.
//!
//! Codes that travel on the wire (`AccountKind`, `TransactionType`, `AccountStatus`) are stable
//! numbers: a number is never reused for another meaning. They are listed in `docs/RESULT_CODES.md`
//! together with the result codes.

/// An amount of money in integer minor units of its currency (cents for KES).
///
/// Never a float. `u128` leaves room for the running totals of the busiest operator accounts
/// (settlement and trust accounts move trillions of shillings a year) without overflow for
/// centuries; every addition is still checked and an overflow is a result code.
pub type Amount = u128;

/// Nanoseconds since the Unix epoch, as assigned by the host to a batch.
pub type Timestamp = u64;

/// ISO 4217 numeric currency code (KES is 404). Zero is invalid.
pub type Currency = u16;

/// Kenya shilling, ISO 4217 numeric code.
pub const CURRENCY_KES: Currency = 404;

/// The role of an account in a mobile-money operator's books.
///
/// The kind does not change the money rules (flags and limit profiles do); it tells reports,
/// statements and operators what the account is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum AccountKind {
    CustomerWallet = 1,
    /// The overdraft (Fuliza) line of a customer, when it is booked as its own account.
    OverdraftLine = 2,
    MerchantTill = 3,
    /// Money held for a merchant awaiting settlement to its bank.
    MerchantWorking = 4,
    PaybillUtility = 5,
    PaybillWorking = 6,
    /// Carries an organisation's fees; may run negative until settled.
    ChargesPaid = 7,
    /// Pays salaries, refunds and promotions (B2C).
    B2cDisbursement = 8,
    AgentFloat = 9,
    FeeRevenue = 10,
    /// Excise duty and other taxes collected and owed to the revenue authority.
    TaxPayable = 11,
    Suspense = 12,
    Settlement = 13,
    /// The operator's mirror of customer money held in trust at banks.
    TrustBank = 14,
}

impl AccountKind {
    pub const ALL: [AccountKind; 14] = [
        AccountKind::CustomerWallet,
        AccountKind::OverdraftLine,
        AccountKind::MerchantTill,
        AccountKind::MerchantWorking,
        AccountKind::PaybillUtility,
        AccountKind::PaybillWorking,
        AccountKind::ChargesPaid,
        AccountKind::B2cDisbursement,
        AccountKind::AgentFloat,
        AccountKind::FeeRevenue,
        AccountKind::TaxPayable,
        AccountKind::Suspense,
        AccountKind::Settlement,
        AccountKind::TrustBank,
    ];

    pub fn from_code(code: u16) -> Option<AccountKind> {
        AccountKind::ALL.into_iter().find(|kind| *kind as u16 == code)
    }
}

/// What a transfer is for, as the operator's products name it.
///
/// Besides reporting, the type carries one money rule: an overdraft (Fuliza) may not be used for
/// `CashOut`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum TransactionType {
    SendMoney = 1,
    BuyGoods = 2,
    PayBill = 3,
    CashIn = 4,
    CashOut = 5,
    /// Salary, business and promotion payments from an organisation to customers.
    B2c = 6,
    B2b = 7,
    Airtime = 8,
    StandingOrder = 9,
    Reversal = 10,
    Fee = 11,
    Tax = 12,
    Settlement = 13,
    /// A correction booked by operations, always against a suspense or operator account.
    Adjustment = 14,
}

impl TransactionType {
    pub const ALL: [TransactionType; 14] = [
        TransactionType::SendMoney,
        TransactionType::BuyGoods,
        TransactionType::PayBill,
        TransactionType::CashIn,
        TransactionType::CashOut,
        TransactionType::B2c,
        TransactionType::B2b,
        TransactionType::Airtime,
        TransactionType::StandingOrder,
        TransactionType::Reversal,
        TransactionType::Fee,
        TransactionType::Tax,
        TransactionType::Settlement,
        TransactionType::Adjustment,
    ];

    pub fn from_code(code: u16) -> Option<TransactionType> {
        TransactionType::ALL.into_iter().find(|t| *t as u16 == code)
    }
}

/// Whether an account may move money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum AccountStatus {
    #[default]
    Active = 1,
    /// No new debits (no transfers out, no new holds, no posts out); credits still arrive.
    DebitsFrozen = 2,
    /// No debits and no credits. Voids and hold expiry still release held money.
    Frozen = 3,
    /// Final. Only an account with a zero balance and no holds can be closed.
    Closed = 4,
}

impl AccountStatus {
    pub fn from_code(code: u8) -> Option<AccountStatus> {
        match code {
            1 => Some(AccountStatus::Active),
            2 => Some(AccountStatus::DebitsFrozen),
            3 => Some(AccountStatus::Frozen),
            4 => Some(AccountStatus::Closed),
            _ => None,
        }
    }

    pub fn allows_debits(self) -> bool {
        self == AccountStatus::Active
    }

    pub fn allows_credits(self) -> bool {
        matches!(self, AccountStatus::Active | AccountStatus::DebitsFrozen)
    }
}

/// Account flags, fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AccountFlags(pub u16);

impl AccountFlags {
    /// Debits (posted and held) may not exceed credits by more than the account's overdraft
    /// limit. Set on every customer, merchant and agent account; left clear on operator accounts
    /// that may run negative until settled (charges paid, settlement, suspense).
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: AccountFlags = AccountFlags(1 << 0);
    /// The account may never be debited (a tax-payable account that only a settlement run,
    /// outside the ledger, clears; a sink for tests).
    pub const NO_DEBITS: AccountFlags = AccountFlags(1 << 1);
    const KNOWN: u16 = (1 << 2) - 1;

    pub fn contains(self, other: AccountFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn has_reserved_bits(self) -> bool {
        self.0 & !Self::KNOWN != 0
    }
}

impl std::ops::BitOr for AccountFlags {
    type Output = AccountFlags;
    fn bitor(self, rhs: AccountFlags) -> AccountFlags {
        AccountFlags(self.0 | rhs.0)
    }
}

/// Transfer flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TransferFlags(pub u16);

impl TransferFlags {
    /// This transfer succeeds or fails together with the next command of the batch.
    pub const LINKED: TransferFlags = TransferFlags(1 << 0);
    /// Hold the amount: it counts against the debit account's available balance until it is
    /// posted, voided or expires.
    pub const PENDING: TransferFlags = TransferFlags(1 << 1);
    /// Post (fully or partly) the hold named by `pending_id`.
    pub const POST_PENDING: TransferFlags = TransferFlags(1 << 2);
    /// Release the hold named by `pending_id`.
    pub const VOID_PENDING: TransferFlags = TransferFlags(1 << 3);
    const KNOWN: u16 = (1 << 4) - 1;

    pub fn contains(self, other: TransferFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn has_reserved_bits(self) -> bool {
        self.0 & !Self::KNOWN != 0
    }

    pub fn linked(self) -> bool {
        self.contains(TransferFlags::LINKED)
    }

    pub fn pending(self) -> bool {
        self.contains(TransferFlags::PENDING)
    }

    pub fn post_pending(self) -> bool {
        self.contains(TransferFlags::POST_PENDING)
    }

    pub fn void_pending(self) -> bool {
        self.contains(TransferFlags::VOID_PENDING)
    }
}

impl std::ops::BitOr for TransferFlags {
    type Output = TransferFlags;
    fn bitor(self, rhs: TransferFlags) -> TransferFlags {
        TransferFlags(self.0 | rhs.0)
    }
}

/// Where a hold stands. Stored in the record of the pending transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum HoldState {
    /// The record is not a successful pending transfer.
    #[default]
    None = 0,
    Pending = 1,
    Posted = 2,
    Voided = 3,
    Expired = 4,
}

/// Per-account money limits, shared by every account that names the profile.
///
/// Regulation changes (the KES 500,000 balance cap of August 2023, say) are one command on one
/// profile rather than one per wallet. A limit of `Amount::MAX` means "no limit".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitProfile {
    /// Largest single debit (transfer or hold) from the account.
    pub per_transfer_max: Amount,
    /// Largest total debited from the account within one Nairobi calendar day.
    pub daily_debit_max: Amount,
    /// Largest balance the account may reach by a credit (counting money held towards it).
    pub balance_max: Amount,
    /// Smallest single debit.
    pub amount_min: Amount,
}

impl LimitProfile {
    /// Profile 0: no limits. Every ledger has it and it cannot be changed.
    pub const UNLIMITED: LimitProfile = LimitProfile {
        per_transfer_max: Amount::MAX,
        daily_debit_max: Amount::MAX,
        balance_max: Amount::MAX,
        amount_min: 1,
    };

    pub fn is_valid(&self) -> bool {
        self.amount_min >= 1
            && self.amount_min <= self.per_transfer_max
            && self.per_transfer_max <= self.daily_debit_max
    }
}

/// The identifier of a limit profile. Zero is [`LimitProfile::UNLIMITED`].
pub type LimitProfileId = u32;

/// Seconds from the Unix epoch to a Nairobi day: East Africa Time is UTC+3 all year.
const NAIROBI_UTC_OFFSET_S: u64 = 3 * 3600;
const SECONDS_PER_DAY: u64 = 86_400;
pub(crate) const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The Nairobi calendar day (days since 1970-01-01 in UTC+3) of a timestamp; daily limits reset
/// when it changes.
pub fn nairobi_day(timestamp: Timestamp) -> u32 {
    let day = (timestamp / NANOS_PER_SECOND + NAIROBI_UTC_OFFSET_S) / SECONDS_PER_DAY;
    // Timestamps are u64 nanoseconds (year 2554 at most), so the day fits u32 easily.
    u32::try_from(day).expect("u64 nanoseconds cannot reach 2^32 days")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nairobi_midnight_is_21_00_utc() {
        // 2025-01-01T20:59:59Z is 23:59:59 in Nairobi; one second later is the next day there.
        let before = 1_735_765_199 * NANOS_PER_SECOND;
        let after = before + NANOS_PER_SECOND;
        assert_eq!(nairobi_day(after), nairobi_day(before) + 1);
        // And midnight UTC is not a boundary.
        let utc_midnight = 1_735_776_000 * NANOS_PER_SECOND;
        assert_eq!(nairobi_day(utc_midnight - 1), nairobi_day(utc_midnight));
    }

    #[test]
    fn codes_round_trip() {
        for kind in AccountKind::ALL {
            assert_eq!(AccountKind::from_code(kind as u16), Some(kind));
        }
        for t in TransactionType::ALL {
            assert_eq!(TransactionType::from_code(t as u16), Some(t));
        }
        assert_eq!(AccountKind::from_code(0), None);
        assert_eq!(TransactionType::from_code(0), None);
        assert_eq!(TransactionType::from_code(15), None);
    }
}
