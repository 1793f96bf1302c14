//! # hazina-core
//!
//! The Hazina ledger as a pure state machine. It takes a batch of commands and a timestamp and
//! returns one result per command:
//!
//! ```
//! use hazina_core::*;
//!
//! let mut ledger = Ledger::new(LedgerConfig::default()).unwrap();
//! let wallet = |id| Command::CreateAccount(NewAccount {
//!     id,
//!     currency: CURRENCY_KES,
//!     kind: AccountKind::CustomerWallet as u16,
//!     flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
//!     ..NewAccount::default()
//! });
//! let send = Command::CreateTransfer(NewTransfer {
//!     id: 1,
//!     debit_account_id: 10,
//!     credit_account_id: 11,
//!     amount: 100_00, // KES 100.00
//!     currency: CURRENCY_KES,
//!     tx_type: TransactionType::SendMoney as u16,
//!     ..NewTransfer::default()
//! });
//! let results = ledger.apply(1_000, &[wallet(10), wallet(11), send]).unwrap();
//! // Wallet 10 has no money: the send is refused, as data.
//! assert_eq!(results, [ResultCode::Ok, ResultCode::Ok, ResultCode::InsufficientFunds]);
//! ```
//!
//! Architecture invariants (see `docs/ARCHITECTURE.md`):
//! - no clock, no disk, no socket, no randomness, no async runtime: the same batches give the
//!   same results and the same [`Ledger::digest`] on every replica;
//! - the number of partitions and threads changes speed only, never a result or the digest;
//! - money is integer minor units; every sum is checked and an overflow is a result code.

#![deny(clippy::float_arithmetic)]

pub mod codec;
mod command;
mod exec;
mod ledger;
mod result;
mod shard;
mod types;

pub use command::{Account, Command, HistoryEntry, HistoryPage, NewAccount, NewTransfer, Transfer};
pub use ledger::{ApplyError, ConfigError, Ledger, LedgerConfig, PARTITIONS_MAX, RestoreError};
pub use result::ResultCode;
pub use shard::RecordsCopy;
pub use types::{
    AccountFlags, AccountKind, AccountStatus, Amount, CURRENCY_KES, Currency, HoldState,
    LimitProfile, LimitProfileId, Timestamp, TransactionType, TransferFlags, nairobi_day,
};
