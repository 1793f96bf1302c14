//! Result codes: the outcome of one command, as data.
//!
//! A business outcome (insufficient funds, a frozen account, a limit) is not an error of the
//! system: it is a result code inside a successful reply. Each code is a stable number that is
//! never reused for another meaning; `docs/RESULT_CODES.md` lists them with the order in which
//! they are checked. Gaps between groups leave room for new codes within a group.

macro_rules! result_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, )*) => {
        /// The outcome of one command. `Ok` and `Exists` mean the command is applied.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum ResultCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ResultCode {
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$name,)*];

            pub fn from_code(code: u16) -> Option<ResultCode> {
                match code {
                    $( $value => Some(ResultCode::$name), )*
                    _ => None,
                }
            }

            /// The stable name, as written in the docs and in metrics labels.
            pub fn name(self) -> &'static str {
                match self {
                    $( ResultCode::$name => stringify!($name), )*
                }
            }
        }
    };
}

result_codes! {
    Ok = 0,
    /// Another command of the same linked chain failed; this one was not applied.
    LinkedEventFailed = 1,
    /// The chain's last command carried `LINKED`: the chain was never closed.
    LinkedEventChainOpen = 2,
    /// An identical command with this id was applied before. Nothing changed.
    Exists = 3,
    /// A command with this id exists and differs in at least one field. Nothing changed.
    ExistsWithDifferentFields = 4,
    /// The same transfer id appears twice within one linked chain.
    DuplicateIdInChain = 5,

    // Invalid fields: the command itself is malformed.
    IdMustNotBeZero = 10,
    IdMustNotBeIntMax = 11,
    ReservedFlag = 12,
    /// More than one of `PENDING`, `POST_PENDING`, `VOID_PENDING`.
    FlagsAreMutuallyExclusive = 13,
    DebitAccountIdMustNotBeZero = 14,
    CreditAccountIdMustNotBeZero = 15,
    AccountsMustBeDifferent = 16,
    PendingIdMustBeZero = 17,
    PendingIdMustNotBeZero = 18,
    PendingIdMustNotBeIntMax = 19,
    PendingIdMustBeDifferent = 20,
    TimeoutReservedForPendingTransfer = 21,
    CurrencyMustNotBeZero = 22,
    TransactionTypeInvalid = 23,
    AmountMustNotBeZero = 24,
    AccountKindInvalid = 25,
    /// An overdraft limit only means something on an account that cannot otherwise go negative.
    OverdraftRequiresBalanceCheck = 26,
    LimitProfileNotFound = 27,
    /// Profile 0 is the built-in "no limits" profile.
    LimitProfileIdReserved = 28,
    /// The minimum must be at least 1 and at most the per-transfer maximum, which must be at
    /// most the daily maximum.
    LimitProfileInvalid = 29,
    LimitProfilesFull = 30,

    // Accounts.
    DebitAccountNotFound = 50,
    CreditAccountNotFound = 51,
    AccountNotFound = 52,
    /// The transfer's currency differs from one of its accounts' currency.
    CurrencyMismatch = 53,
    DebitAccountFrozen = 54,
    CreditAccountFrozen = 55,
    DebitAccountClosed = 56,
    CreditAccountClosed = 57,
    /// The debit account has the `NO_DEBITS` flag.
    DebitNotAllowed = 58,
    /// A status command on a closed account.
    AccountClosed = 59,
    AccountBalanceNotZero = 60,
    AccountHasHolds = 61,

    // Money and limits.
    InsufficientFunds = 70,
    ExceedsPerTransferLimit = 71,
    ExceedsDailyLimit = 72,
    ExceedsBalanceLimit = 73,
    BelowMinimumAmount = 74,
    /// The debit account already has the most holds a ledger allows one account.
    TooManyHolds = 75,
    /// A balance, a total or a hold's expiry time would overflow.
    ArithmeticOverflow = 76,

    // Holds (pending transfers) and their post or void.
    HoldNotFound = 90,
    /// `pending_id` names a transfer that is not a hold.
    NotAHold = 91,
    HoldAlreadyPosted = 92,
    HoldAlreadyVoided = 93,
    HoldExpired = 94,
    PostExceedsHold = 95,
    /// A void's amount must be zero or the hold's amount.
    VoidAmountMismatch = 96,
    HoldDebitAccountMismatch = 97,
    HoldCreditAccountMismatch = 98,
    HoldCurrencyMismatch = 99,
}

impl ResultCode {
    /// Whether the command is applied: `Ok` now or `Exists` from before.
    pub fn is_applied(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::Exists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in ResultCode::ALL {
            assert!(seen.insert(code as u16), "{code:?} reuses a number");
            assert_eq!(ResultCode::from_code(code as u16), Some(code));
        }
        assert_eq!(ResultCode::from_code(9), None);
    }
}
