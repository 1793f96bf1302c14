//! Commands (what a batch asks for) and the records the ledger keeps (accounts and transfers).

use crate::ResultCode;
use crate::types::{
    AccountFlags, AccountStatus, Amount, Currency, HoldState, LimitProfile, LimitProfileId,
    Timestamp, TransferFlags,
};

/// One command of a batch. Batches mix kinds freely; the log orders them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateAccount(NewAccount),
    CreateTransfer(NewTransfer),
    SetAccountStatus {
        account_id: u128,
        status: AccountStatus,
    },
    /// Creates or replaces a limit profile. Every account naming it follows the new limits from
    /// the next command on.
    SetLimitProfile {
        profile_id: LimitProfileId,
        limits: LimitProfile,
    },
}

/// An account as a caller asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NewAccount {
    /// Chosen by the caller; creating the same id again is idempotent.
    pub id: u128,
    pub currency: Currency,
    /// An [`crate::AccountKind`] code; unknown codes are rejected.
    pub kind: u16,
    pub flags: AccountFlags,
    /// How far below zero the balance may go (an overdraft line such as Fuliza). Needs
    /// `DEBITS_MUST_NOT_EXCEED_CREDITS`.
    pub overdraft_limit: Amount,
    pub limit_profile: LimitProfileId,
    /// External references (a customer number, an MSISDN hash, a branch code).
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
}

/// An account as the ledger keeps it.
///
/// Balances are kept as four monotone-or-held totals, as in double-entry books: the balance of a
/// credit-normal account (every wallet) is `credits_posted - debits_posted`, and money held by
/// pending transfers is kept apart until it is posted or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Account {
    pub id: u128,
    pub debits_pending: Amount,
    pub debits_posted: Amount,
    pub credits_pending: Amount,
    pub credits_posted: Amount,
    pub overdraft_limit: Amount,
    /// Total debited on `daily_day` (posted transfers and holds), for the daily limit.
    pub daily_debited: Amount,
    pub user_data_128: u128,
    pub user_data_64: u64,
    /// When the account was created.
    pub timestamp: Timestamp,
    pub user_data_32: u32,
    /// The Nairobi day that `daily_debited` counts.
    pub daily_day: u32,
    pub limit_profile: LimitProfileId,
    pub currency: Currency,
    pub kind: u16,
    pub flags: AccountFlags,
    /// Holds on this account as debit account that are still pending.
    pub holds_pending: u16,
    pub status: AccountStatus,
}

impl Account {
    pub(crate) fn new(new: &NewAccount, timestamp: Timestamp) -> Account {
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
            timestamp,
            user_data_32: new.user_data_32,
            daily_day: 0,
            limit_profile: new.limit_profile,
            currency: new.currency,
            kind: new.kind,
            flags: new.flags,
            holds_pending: 0,
            status: AccountStatus::Active,
        }
    }

    /// The fields a caller chose at creation, to compare a resubmission with.
    pub fn as_new(&self) -> NewAccount {
        NewAccount {
            id: self.id,
            currency: self.currency,
            kind: self.kind,
            flags: self.flags,
            overdraft_limit: self.overdraft_limit,
            limit_profile: self.limit_profile,
            user_data_128: self.user_data_128,
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
        }
    }

    /// Posted balance of a credit-normal account, signed: negative when debits exceed credits.
    pub fn balance(&self) -> i128 {
        // Both totals are below 2^127 in any real ledger; the checked form keeps a corrupted
        // value from wrapping silently.
        let credits = i128::try_from(self.credits_posted).unwrap_or(i128::MAX);
        let debits = i128::try_from(self.debits_posted).unwrap_or(i128::MAX);
        credits.saturating_sub(debits)
    }

    /// A fixed little-endian encoding of the fields set at creation and never changed, for the
    /// state digest. Hashed once, when the account is created.
    pub(crate) fn digest_static_bytes(&self) -> [u8; 79] {
        let mut out = [0u8; 79];
        let mut w = Writer { out: &mut out, at: 0 };
        w.u8(1); // Domain tag: the static part of an account.
        w.u128(self.id);
        w.u128(self.overdraft_limit);
        w.u128(self.user_data_128);
        w.u64(self.user_data_64);
        w.u64(self.timestamp);
        w.u32(self.user_data_32);
        w.u32(self.limit_profile);
        w.u16(self.currency);
        w.u16(self.kind);
        w.u16(self.flags.0);
        debug_assert_eq!(w.at, 79);
        out
    }

    /// A fixed little-endian encoding of the id and every field that can change, for the state
    /// digest. Kept under 128 bytes, where xxh3 takes its faster path: it is hashed twice on
    /// every write of an account.
    pub(crate) fn digest_dynamic_bytes(&self) -> [u8; 104] {
        let mut out = [0u8; 104];
        let mut w = Writer { out: &mut out, at: 0 };
        w.u8(2); // Domain tag: the changing part of an account.
        w.u128(self.id);
        w.u128(self.debits_pending);
        w.u128(self.debits_posted);
        w.u128(self.credits_pending);
        w.u128(self.credits_posted);
        w.u128(self.daily_debited);
        w.u32(self.daily_day);
        w.u16(self.holds_pending);
        w.u8(self.status as u8);
        debug_assert_eq!(w.at, 104);
        out
    }

    /// Whether `other` differs from this account only in the fields that can change.
    pub(crate) fn same_static_fields(&self, other: &Account) -> bool {
        self.as_new() == other.as_new() && self.timestamp == other.timestamp
    }
}

/// A transfer as a caller asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NewTransfer {
    /// Chosen by the caller; it is the idempotency key. A resubmission with the same id returns
    /// the first outcome, success or failure, and changes nothing.
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    /// Minor units. For a post, the amount to post (at most the hold); for a void, zero or the
    /// hold's amount.
    pub amount: Amount,
    /// For a post or void: the id of the pending transfer (the hold).
    pub pending_id: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// For a pending transfer: seconds until the hold expires; zero means it never expires.
    pub timeout_s: u32,
    pub currency: Currency,
    /// A [`crate::TransactionType`] code; unknown codes are rejected.
    pub tx_type: u16,
    pub flags: TransferFlags,
}

/// A transfer as the ledger records it: every transfer with a usable id is recorded, whether it
/// succeeded or not, so that a resubmission returns the same outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub new: NewTransfer,
    /// Assigned by the state machine: the batch timestamp plus the command's index.
    pub timestamp: Timestamp,
    pub result: ResultCode,
    /// For a successful pending transfer: where its hold stands now.
    pub hold: HoldState,
}

impl Transfer {
    /// A fixed little-endian encoding of every field, for the state digest: 128 bytes, where
    /// xxh3 takes its faster path.
    pub(crate) fn digest_bytes(&self) -> [u8; 128] {
        let mut out = [0u8; 128];
        let mut w = Writer { out: &mut out, at: 0 };
        let n = &self.new;
        w.u128(n.id);
        w.u128(n.debit_account_id);
        w.u128(n.credit_account_id);
        w.u128(n.amount);
        w.u128(n.pending_id);
        w.u128(n.user_data_128);
        w.u64(n.user_data_64);
        w.u32(n.user_data_32);
        w.u32(n.timeout_s);
        w.u16(n.currency);
        w.u16(n.tx_type);
        w.u16(n.flags.0);
        w.u64(self.timestamp);
        // The result code and the hold state share two bytes: codes stay below 2^13.
        let result = self.result as u16;
        debug_assert!(result < 1 << 13);
        w.u16(result | (u16::from(self.hold as u8) << 13));
        debug_assert_eq!(w.at, 128);
        out
    }
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn u128(&mut self, v: u128) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
}

/// One line of an account's statement: a posted movement of money. The ledger does not keep
/// statements; a storage host does (`hazina-store`), and clients read them back in this form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub transfer_id: u128,
    pub timestamp: Timestamp,
    pub amount: u128,
    /// Money in (the account was credited).
    pub credit: bool,
    pub balance_after: i128,
    pub tx_type: u16,
    pub counterparty_id: u128,
}

/// A page of a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The posted balance just before the page's first timestamp.
    pub opening_balance: i128,
    pub entries: Vec<HistoryEntry>,
    /// Where the next page starts, if there is one.
    pub next_from: Option<Timestamp>,
}
