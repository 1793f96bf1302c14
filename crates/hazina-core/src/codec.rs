//! The byte encodings that leave the process: log entries (commands, as replicas and restarts
//! replay them) and the stored forms of accounts and transfer records.
//!
//! Fixed-width little-endian fields behind a version byte. Every decoder checks the version, the
//! length and every enumerated value, so corrupt or foreign bytes give a [`CodecError`], never a
//! wrong command.

use crate::command::{Account, Command, NewAccount, NewTransfer, Transfer};
use crate::result::ResultCode;
use crate::types::{
    AccountFlags, AccountStatus, HoldState, LimitProfile, Timestamp, TransferFlags,
};

/// Version of every encoding in this module. A change of layout takes a new version, and
/// decoders keep reading the old ones.
pub const CODEC_VERSION: u8 = 1;

/// The most commands one entry may carry, checked when decoding: a corrupt count must not make
/// a decoder reserve gigabytes.
pub const ENTRY_COMMANDS_MAX: usize = 1 << 20;

/// One entry of the replicated log: a batch of commands and the timestamp it is applied at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub index: u64,
    /// The leader epoch (raft term) that wrote the entry; 0 on a single site.
    pub term: u64,
    pub timestamp: Timestamp,
    pub commands: Vec<Command>,
}

/// Bytes that are not a valid encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot decode: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

const TAG_CREATE_ACCOUNT: u8 = 1;
const TAG_CREATE_TRANSFER: u8 = 2;
const TAG_SET_ACCOUNT_STATUS: u8 = 3;
const TAG_SET_LIMIT_PROFILE: u8 = 4;

/// Bytes of a stored account.
pub const ACCOUNT_BYTES: usize = 1 + 8 * 16 + 8 + 8 + 4 + 4 + 4 + 2 + 2 + 2 + 2 + 1;
/// Bytes of a stored transfer record.
pub const TRANSFER_BYTES: usize = 1 + NEW_TRANSFER_BYTES + 8 + 2 + 1;
const NEW_TRANSFER_BYTES: usize = 6 * 16 + 8 + 4 + 4 + 2 + 2 + 2;

pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.push(CODEC_VERSION);
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.extend_from_slice(&entry.timestamp.to_le_bytes());
    let count =
        u32::try_from(entry.commands.len()).expect("an entry holds fewer than 2^32 commands");
    out.extend_from_slice(&count.to_le_bytes());
    for command in &entry.commands {
        encode_command(command, out);
    }
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    let mut r = Reader::new(bytes);
    let EntryHeader { index, term, timestamp, commands } = read_entry_header(&mut r)?;
    let count = commands as usize;
    if count > ENTRY_COMMANDS_MAX {
        return Err(CodecError(format!("entry claims {count} commands")));
    }
    let mut commands = Vec::with_capacity(count);
    for _ in 0..count {
        commands.push(decode_command(&mut r)?);
    }
    r.end()?;
    Ok(Entry { index, term, timestamp, commands })
}

/// The fixed part of an encoded entry, read without decoding its commands: what a leader needs
/// to stamp the next entry after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub index: u64,
    pub term: u64,
    pub timestamp: Timestamp,
    pub commands: u32,
}

impl EntryHeader {
    /// The earliest timestamp the next entry may carry: each command of this one took a stamp,
    /// and an entry without commands still took its own.
    pub fn next_timestamp(&self) -> Timestamp {
        self.timestamp.saturating_add(u64::from(self.commands.max(1)))
    }
}

pub fn decode_entry_header(bytes: &[u8]) -> Result<EntryHeader, CodecError> {
    read_entry_header(&mut Reader::new(bytes))
}

fn read_entry_header(r: &mut Reader<'_>) -> Result<EntryHeader, CodecError> {
    r.version()?;
    Ok(EntryHeader { index: r.u64()?, term: r.u64()?, timestamp: r.u64()?, commands: r.u32()? })
}

fn encode_command(command: &Command, out: &mut Vec<u8>) {
    match command {
        Command::CreateAccount(a) => {
            out.push(TAG_CREATE_ACCOUNT);
            put_u128(out, a.id);
            put_u16(out, a.currency);
            put_u16(out, a.kind);
            put_u16(out, a.flags.0);
            put_u128(out, a.overdraft_limit);
            put_u32(out, a.limit_profile);
            put_u128(out, a.user_data_128);
            put_u64(out, a.user_data_64);
            put_u32(out, a.user_data_32);
        }
        Command::CreateTransfer(t) => {
            out.push(TAG_CREATE_TRANSFER);
            encode_new_transfer(t, out);
        }
        Command::SetAccountStatus { account_id, status } => {
            out.push(TAG_SET_ACCOUNT_STATUS);
            put_u128(out, *account_id);
            out.push(*status as u8);
        }
        Command::SetLimitProfile { profile_id, limits } => {
            out.push(TAG_SET_LIMIT_PROFILE);
            put_u32(out, *profile_id);
            for limit in [
                limits.per_transfer_max,
                limits.daily_debit_max,
                limits.balance_max,
                limits.amount_min,
            ] {
                put_u128(out, limit);
            }
        }
    }
}

fn decode_command(r: &mut Reader<'_>) -> Result<Command, CodecError> {
    Ok(match r.u8()? {
        TAG_CREATE_ACCOUNT => Command::CreateAccount(NewAccount {
            id: r.u128()?,
            currency: r.u16()?,
            kind: r.u16()?,
            flags: AccountFlags(r.u16()?),
            overdraft_limit: r.u128()?,
            limit_profile: r.u32()?,
            user_data_128: r.u128()?,
            user_data_64: r.u64()?,
            user_data_32: r.u32()?,
        }),
        TAG_CREATE_TRANSFER => Command::CreateTransfer(decode_new_transfer(r)?),
        TAG_SET_ACCOUNT_STATUS => {
            let account_id = r.u128()?;
            let code = r.u8()?;
            let status = AccountStatus::from_code(code)
                .ok_or_else(|| CodecError(format!("account status {code}")))?;
            Command::SetAccountStatus { account_id, status }
        }
        TAG_SET_LIMIT_PROFILE => Command::SetLimitProfile {
            profile_id: r.u32()?,
            limits: LimitProfile {
                per_transfer_max: r.u128()?,
                daily_debit_max: r.u128()?,
                balance_max: r.u128()?,
                amount_min: r.u128()?,
            },
        },
        tag => return Err(CodecError(format!("command tag {tag}"))),
    })
}

fn encode_new_transfer(t: &NewTransfer, out: &mut Vec<u8>) {
    put_u128(out, t.id);
    put_u128(out, t.debit_account_id);
    put_u128(out, t.credit_account_id);
    put_u128(out, t.amount);
    put_u128(out, t.pending_id);
    put_u128(out, t.user_data_128);
    put_u64(out, t.user_data_64);
    put_u32(out, t.user_data_32);
    put_u32(out, t.timeout_s);
    put_u16(out, t.currency);
    put_u16(out, t.tx_type);
    put_u16(out, t.flags.0);
}

fn decode_new_transfer(r: &mut Reader<'_>) -> Result<NewTransfer, CodecError> {
    Ok(NewTransfer {
        id: r.u128()?,
        debit_account_id: r.u128()?,
        credit_account_id: r.u128()?,
        amount: r.u128()?,
        pending_id: r.u128()?,
        user_data_128: r.u128()?,
        user_data_64: r.u64()?,
        user_data_32: r.u32()?,
        timeout_s: r.u32()?,
        currency: r.u16()?,
        tx_type: r.u16()?,
        flags: TransferFlags(r.u16()?),
    })
}

pub fn encode_account(a: &Account, out: &mut Vec<u8>) {
    out.push(CODEC_VERSION);
    for v in [
        a.id,
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
        a.overdraft_limit,
        a.daily_debited,
        a.user_data_128,
    ] {
        put_u128(out, v);
    }
    put_u64(out, a.user_data_64);
    put_u64(out, a.timestamp);
    put_u32(out, a.user_data_32);
    put_u32(out, a.daily_day);
    put_u32(out, a.limit_profile);
    put_u16(out, a.currency);
    put_u16(out, a.kind);
    put_u16(out, a.flags.0);
    put_u16(out, a.holds_pending);
    out.push(a.status as u8);
}

pub fn decode_account(bytes: &[u8]) -> Result<Account, CodecError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let account = Account {
        id: r.u128()?,
        debits_pending: r.u128()?,
        debits_posted: r.u128()?,
        credits_pending: r.u128()?,
        credits_posted: r.u128()?,
        overdraft_limit: r.u128()?,
        daily_debited: r.u128()?,
        user_data_128: r.u128()?,
        user_data_64: r.u64()?,
        timestamp: r.u64()?,
        user_data_32: r.u32()?,
        daily_day: r.u32()?,
        limit_profile: r.u32()?,
        currency: r.u16()?,
        kind: r.u16()?,
        flags: AccountFlags(r.u16()?),
        holds_pending: r.u16()?,
        status: {
            let code = r.u8()?;
            AccountStatus::from_code(code)
                .ok_or_else(|| CodecError(format!("account status {code}")))?
        },
    };
    r.end()?;
    Ok(account)
}

pub fn encode_transfer(t: &Transfer, out: &mut Vec<u8>) {
    out.push(CODEC_VERSION);
    encode_new_transfer(&t.new, out);
    put_u64(out, t.timestamp);
    put_u16(out, t.result as u16);
    out.push(t.hold as u8);
}

pub fn decode_transfer(bytes: &[u8]) -> Result<Transfer, CodecError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let new = decode_new_transfer(&mut r)?;
    let timestamp = r.u64()?;
    let code = r.u16()?;
    let result =
        ResultCode::from_code(code).ok_or_else(|| CodecError(format!("result code {code}")))?;
    let hold = match r.u8()? {
        0 => HoldState::None,
        1 => HoldState::Pending,
        2 => HoldState::Posted,
        3 => HoldState::Voided,
        4 => HoldState::Expired,
        other => return Err(CodecError(format!("hold state {other}"))),
    };
    r.end()?;
    Ok(Transfer { new, timestamp, result, hold })
}

fn put_u128(out: &mut Vec<u8>, v: u128) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let end = self.at + N;
        let slice = self.bytes.get(self.at..end).ok_or_else(|| {
            CodecError(format!("{} bytes end before offset {end}", self.bytes.len()))
        })?;
        self.at = end;
        Ok(slice.try_into().expect("slice of N bytes"))
    }

    fn version(&mut self) -> Result<(), CodecError> {
        match self.u8()? {
            CODEC_VERSION => Ok(()),
            v => Err(CodecError(format!("version {v}, expected {CODEC_VERSION}"))),
        }
    }

    fn end(&self) -> Result<(), CodecError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(CodecError(format!("{} bytes left over", self.bytes.len() - self.at)))
        }
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn u128(&mut self) -> Result<u128, CodecError> {
        Ok(u128::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CURRENCY_KES;

    fn sample_commands() -> Vec<Command> {
        vec![
            Command::CreateAccount(NewAccount {
                id: u128::MAX - 3,
                currency: CURRENCY_KES,
                kind: 1,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                overdraft_limit: 5_000_00,
                limit_profile: 7,
                user_data_128: 1 << 100,
                user_data_64: 254_712_345_678,
                user_data_32: 42,
            }),
            Command::CreateTransfer(NewTransfer {
                id: 99,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 250_000_00,
                pending_id: 3,
                user_data_128: 4,
                user_data_64: 5,
                user_data_32: 6,
                timeout_s: 3_600,
                currency: CURRENCY_KES,
                tx_type: 2,
                flags: TransferFlags::PENDING | TransferFlags::LINKED,
            }),
            Command::SetAccountStatus { account_id: 1, status: AccountStatus::DebitsFrozen },
            Command::SetLimitProfile {
                profile_id: 3,
                limits: LimitProfile {
                    per_transfer_max: 1,
                    daily_debit_max: 2,
                    balance_max: 3,
                    amount_min: 0,
                },
            },
        ]
    }

    #[test]
    fn entries_round_trip_and_every_truncation_is_an_error() {
        let entry = Entry {
            index: 17,
            term: 3,
            timestamp: 1_700_000_000_000_000_000,
            commands: sample_commands(),
        };
        let mut bytes = Vec::new();
        encode_entry(&entry, &mut bytes);
        assert_eq!(decode_entry(&bytes).unwrap(), entry);
        let header = decode_entry_header(&bytes).unwrap();
        let commands = u32::try_from(entry.commands.len()).unwrap();
        assert_eq!(
            header,
            EntryHeader { index: 17, term: 3, timestamp: entry.timestamp, commands }
        );
        assert_eq!(header.next_timestamp(), entry.timestamp + u64::from(commands));
        assert!(decode_entry_header(&bytes[..20]).is_err());
        for cut in 0..bytes.len() {
            assert!(decode_entry(&bytes[..cut]).is_err(), "a prefix of {cut} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_entry(&longer).is_err());
        bytes[0] = 9;
        assert!(decode_entry(&bytes).is_err());
    }

    #[test]
    fn records_round_trip_and_reject_bad_enumerations() {
        let Command::CreateAccount(new) = sample_commands()[0] else { unreachable!() };
        let mut account = Account::new(&new, 12);
        account.credits_posted = 9;
        account.holds_pending = 2;
        account.status = AccountStatus::Frozen;
        let mut bytes = Vec::new();
        encode_account(&account, &mut bytes);
        assert_eq!(bytes.len(), ACCOUNT_BYTES);
        assert_eq!(decode_account(&bytes).unwrap(), account);
        *bytes.last_mut().unwrap() = 0;
        assert!(decode_account(&bytes).is_err());

        let Command::CreateTransfer(new) = sample_commands()[1] else { unreachable!() };
        let record = Transfer {
            new,
            timestamp: 5,
            result: ResultCode::ExceedsDailyLimit,
            hold: HoldState::Voided,
        };
        let mut bytes = Vec::new();
        encode_transfer(&record, &mut bytes);
        assert_eq!(bytes.len(), TRANSFER_BYTES);
        assert_eq!(decode_transfer(&bytes).unwrap(), record);
        *bytes.last_mut().unwrap() = 5;
        assert!(decode_transfer(&bytes).is_err());
    }
}
