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
    /// state digest, in whole 64-bit words (see `word_bytes`). Hashed once, when the account is
    /// created.
    pub(crate) fn digest_static_bytes(&self) -> [u8; 80] {
        let [id_lo, id_hi] = halves(self.id);
        let [overdraft_lo, overdraft_hi] = halves(self.overdraft_limit);
        let [user_lo, user_hi] = halves(self.user_data_128);
        word_bytes(&[
            // Domain tag 1: the static part of an account.
            1 | u64::from(self.currency) << 16
                | u64::from(self.kind) << 32
                | u64::from(self.flags.0) << 48,
            id_lo,
            id_hi,
            overdraft_lo,
            overdraft_hi,
            user_lo,
            user_hi,
            self.user_data_64,
            self.timestamp,
            u64::from(self.user_data_32) | u64::from(self.limit_profile) << 32,
        ])
    }

    /// A fixed little-endian encoding of the id and every field that can change, for the state
    /// digest, in whole 64-bit words. Kept under 128 bytes, where xxh3 takes its faster path: it
    /// is hashed on every write of an account.
    pub(crate) fn digest_dynamic_bytes(&self) -> [u8; 104] {
        let [id_lo, id_hi] = halves(self.id);
        let [dp_lo, dp_hi] = halves(self.debits_pending);
        let [dd_lo, dd_hi] = halves(self.debits_posted);
        let [cp_lo, cp_hi] = halves(self.credits_pending);
        let [cc_lo, cc_hi] = halves(self.credits_posted);
        let [daily_lo, daily_hi] = halves(self.daily_debited);
        word_bytes(&[
            // Domain tag 2: the changing part of an account.
            2 | u64::from(self.status as u8) << 8
                | u64::from(self.holds_pending) << 16
                | u64::from(self.daily_day) << 32,
            id_lo,
            id_hi,
            dp_lo,
            dp_hi,
            dd_lo,
            dd_hi,
            cp_lo,
            cp_hi,
            cc_lo,
            cc_hi,
            daily_lo,
            daily_hi,
        ])
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
        transfer_digest_bytes(&self.new, self.timestamp, self.result, self.hold)
    }
}

/// [`Transfer::digest_bytes`] of the record these parts make, without building it first.
///
/// Recording a new transfer hashes it from the command and the outcome as values. Hashing the
/// record just built on the stack read it back through narrow stores (the result code and the
/// hold state) that a wider load could not take from the store buffer; such a load waits until
/// every earlier store has reached the cache, and in the record step those include the index
/// writes that miss it: `perf annotate` put 13% of the whole apply loop on that one load.
#[inline]
pub(crate) fn transfer_digest_bytes(
    n: &NewTransfer,
    timestamp: Timestamp,
    result: ResultCode,
    hold: HoldState,
) -> [u8; 128] {
    // The result code and the hold state share 16 bits: codes stay below 2^13.
    let result = result as u16;
    debug_assert!(result < 1 << 13);
    let outcome = result | (u16::from(hold as u8) << 13);
    let [id_lo, id_hi] = halves(n.id);
    let [debit_lo, debit_hi] = halves(n.debit_account_id);
    let [credit_lo, credit_hi] = halves(n.credit_account_id);
    let [amount_lo, amount_hi] = halves(n.amount);
    let [pending_lo, pending_hi] = halves(n.pending_id);
    let [user_lo, user_hi] = halves(n.user_data_128);
    word_bytes(&[
        id_lo,
        id_hi,
        debit_lo,
        debit_hi,
        credit_lo,
        credit_hi,
        amount_lo,
        amount_hi,
        pending_lo,
        pending_hi,
        user_lo,
        user_hi,
        n.user_data_64,
        timestamp,
        u64::from(n.user_data_32) | u64::from(n.timeout_s) << 32,
        u64::from(n.currency)
            | u64::from(n.tx_type) << 16
            | u64::from(n.flags.0) << 32
            | u64::from(outcome) << 48,
    ])
}

/// A digest's input as little-endian bytes, laid out a whole 64-bit word at a time at offsets
/// that are multiples of 8. xxh3 reads its input as 8-byte words at such offsets, so each of its
/// loads is served whole from one earlier store; loads that straddle narrower stores stall the
/// core (a failed store-to-load forward), and that stall was most of the digest's cost.
#[inline(always)]
fn word_bytes<const N: usize>(words: &[u64]) -> [u8; N] {
    debug_assert_eq!(words.len() * 8, N);
    let mut out = [0u8; N];
    for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// The low and high 64-bit halves of a u128.
#[allow(clippy::cast_possible_truncation)] // The two halves, on purpose.
#[inline(always)]
fn halves(v: u128) -> [u64; 2] {
    [v as u64, (v >> 64) as u64]
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
