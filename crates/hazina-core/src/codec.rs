//! The byte encodings that leave the process: log entries (commands, as replicas and restarts
//! replay them) and the stored forms of accounts and transfer records.
//!
//! Little-endian fields behind a version byte. Every decoder checks the version, the length and
//! every enumerated value, so corrupt or foreign bytes give a [`CodecError`], never a wrong
//! command.
//!
//! Version 2 (written since session 7) stores each integer wider than 16 bits as one byte `n`
//! (0 to its width in bytes) followed by its `n` low bytes: most fields of a transfer are zero
//! or small (amounts, account numbers, user data), so a record takes about 45 bytes instead of
//! version 1's 130, an account about 40 instead of 166, and everything the node writes per
//! transfer (log entry, record, accounts, then RocksDB's flushes and compactions of them)
//! shrinks with them (docs/adr/0005-compact-records.md). The entry header (index, term,
//! timestamp, count) stays fixed-width, so [`decode_entry_header`] reads it in place. Decoders
//! read versions 1 and 2; only the canonical (shortest) form of a number is accepted, so one
//! value has one encoding.

use crate::command::{Account, Command, HistoryEntry, NewAccount, NewTransfer, Transfer};
use crate::result::ResultCode;
use crate::types::{
    AccountFlags, AccountStatus, HoldState, LimitProfile, Timestamp, TransferFlags,
};

/// Version of every encoding in this module. A change of layout takes a new version, and
/// decoders keep reading the old ones.
pub const CODEC_VERSION: u8 = 2;
/// The fixed-width layout, still read: logs, stores and snapshots written before version 2.
const VERSION_FIXED: u8 = 1;

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

/// The most bytes a stored account takes (every number at its widest).
pub const ACCOUNT_BYTES_MAX: usize = 1 + 8 * 17 + 9 + 8 + 3 * 5 + 4 * 2 + 1;
/// The fewest bytes a stored account takes (every number zero but its stamp), for checking
/// counts before reserving memory for them.
pub const ACCOUNT_BYTES_MIN: usize = 1 + 8 + 1 + 8 + 3 + 4 * 2 + 1;
/// The most bytes a stored transfer record takes.
pub const TRANSFER_BYTES_MAX: usize = 1 + 6 * 17 + 9 + 2 * 5 + 3 * 2 + 8 + 2 + 1;
/// The fewest bytes a stored transfer record takes.
pub const TRANSFER_BYTES_MIN: usize = 1 + 6 + 1 + 2 + 3 * 2 + 8 + 2 + 1;

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
            put_number(out, a.id);
            put_u16(out, a.currency);
            put_u16(out, a.kind);
            put_u16(out, a.flags.0);
            put_number(out, a.overdraft_limit);
            put_number(out, a.limit_profile.into());
            put_number(out, a.user_data_128);
            put_number(out, a.user_data_64.into());
            put_number(out, a.user_data_32.into());
        }
        Command::CreateTransfer(t) => {
            out.push(TAG_CREATE_TRANSFER);
            encode_new_transfer(t, out);
        }
        Command::SetAccountStatus { account_id, status } => {
            out.push(TAG_SET_ACCOUNT_STATUS);
            put_number(out, *account_id);
            out.push(*status as u8);
        }
        Command::SetLimitProfile { profile_id, limits } => {
            out.push(TAG_SET_LIMIT_PROFILE);
            put_number(out, (*profile_id).into());
            for limit in [
                limits.per_transfer_max,
                limits.daily_debit_max,
                limits.balance_max,
                limits.amount_min,
            ] {
                put_number(out, limit);
            }
        }
    }
}

fn decode_command(r: &mut Reader<'_>) -> Result<Command, CodecError> {
    Ok(match r.u8()? {
        TAG_CREATE_ACCOUNT => Command::CreateAccount(NewAccount {
            id: r.n128()?,
            currency: r.u16()?,
            kind: r.u16()?,
            flags: AccountFlags(r.u16()?),
            overdraft_limit: r.n128()?,
            limit_profile: r.n32()?,
            user_data_128: r.n128()?,
            user_data_64: r.n64()?,
            user_data_32: r.n32()?,
        }),
        TAG_CREATE_TRANSFER => Command::CreateTransfer(decode_new_transfer(r)?),
        TAG_SET_ACCOUNT_STATUS => {
            let account_id = r.n128()?;
            let code = r.u8()?;
            let status = AccountStatus::from_code(code)
                .ok_or_else(|| CodecError(format!("account status {code}")))?;
            Command::SetAccountStatus { account_id, status }
        }
        TAG_SET_LIMIT_PROFILE => Command::SetLimitProfile {
            profile_id: r.n32()?,
            limits: LimitProfile {
                per_transfer_max: r.n128()?,
                daily_debit_max: r.n128()?,
                balance_max: r.n128()?,
                amount_min: r.n128()?,
            },
        },
        tag => return Err(CodecError(format!("command tag {tag}"))),
    })
}

fn encode_new_transfer(t: &NewTransfer, out: &mut Vec<u8>) {
    for v in [t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id] {
        put_number(out, v);
    }
    put_number(out, t.user_data_128);
    put_number(out, t.user_data_64.into());
    put_number(out, t.user_data_32.into());
    put_number(out, t.timeout_s.into());
    put_u16(out, t.currency);
    put_u16(out, t.tx_type);
    put_u16(out, t.flags.0);
}

fn decode_new_transfer(r: &mut Reader<'_>) -> Result<NewTransfer, CodecError> {
    Ok(NewTransfer {
        id: r.n128()?,
        debit_account_id: r.n128()?,
        credit_account_id: r.n128()?,
        amount: r.n128()?,
        pending_id: r.n128()?,
        user_data_128: r.n128()?,
        user_data_64: r.n64()?,
        user_data_32: r.n32()?,
        timeout_s: r.n32()?,
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
        put_number(out, v);
    }
    put_number(out, a.user_data_64.into());
    put_u64(out, a.timestamp);
    put_number(out, a.user_data_32.into());
    put_number(out, a.daily_day.into());
    put_number(out, a.limit_profile.into());
    put_u16(out, a.currency);
    put_u16(out, a.kind);
    put_u16(out, a.flags.0);
    put_u16(out, a.holds_pending);
    out.push(a.status as u8);
}

pub fn decode_account(bytes: &[u8]) -> Result<Account, CodecError> {
    let (account, used) = decode_account_prefix(bytes)?;
    Reader { bytes, at: used, compact: true }.end()?;
    Ok(account)
}

/// Decodes the account at the start of `bytes`, for a sequence of them: returns it and the
/// bytes it took.
pub fn decode_account_prefix(bytes: &[u8]) -> Result<(Account, usize), CodecError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let account = Account {
        id: r.n128()?,
        debits_pending: r.n128()?,
        debits_posted: r.n128()?,
        credits_pending: r.n128()?,
        credits_posted: r.n128()?,
        overdraft_limit: r.n128()?,
        daily_debited: r.n128()?,
        user_data_128: r.n128()?,
        user_data_64: r.n64()?,
        timestamp: r.u64()?,
        user_data_32: r.n32()?,
        daily_day: r.n32()?,
        limit_profile: r.n32()?,
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
    Ok((account, r.at))
}

pub fn encode_transfer(t: &Transfer, out: &mut Vec<u8>) {
    out.push(CODEC_VERSION);
    encode_new_transfer(&t.new, out);
    put_u64(out, t.timestamp);
    put_u16(out, t.result as u16);
    out.push(t.hold as u8);
}

pub fn decode_transfer(bytes: &[u8]) -> Result<Transfer, CodecError> {
    let (transfer, used) = decode_transfer_prefix(bytes)?;
    Reader { bytes, at: used, compact: true }.end()?;
    Ok(transfer)
}

/// Decodes the record at the start of `bytes`, for a sequence of them: returns it and the
/// bytes it took.
pub fn decode_transfer_prefix(bytes: &[u8]) -> Result<(Transfer, usize), CodecError> {
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
    Ok((Transfer { new, timestamp, result, hold }, r.at))
}

/// One account's line of a statement, without the account and the timestamp (the key it is
/// stored under holds them). Version 2 only: version 1's lines had no version byte, and the
/// store tells them apart by their key.
pub fn encode_statement_line(line: &HistoryEntry, out: &mut Vec<u8>) {
    out.push(CODEC_VERSION);
    put_number(out, line.transfer_id);
    put_number(out, line.amount);
    out.push(u8::from(line.credit));
    // Zigzag: a balance below zero (an overdraft, a system account) stays short too.
    let balance = line.balance_after;
    put_number(out, ((balance << 1) ^ (balance >> 127)) as u128);
    put_u16(out, line.tx_type);
    put_number(out, line.counterparty_id);
}

/// Reads [`encode_statement_line`]'s bytes; `timestamp` is the one its key holds.
pub fn decode_statement_line(
    bytes: &[u8],
    timestamp: Timestamp,
) -> Result<HistoryEntry, CodecError> {
    let mut r = Reader::new(bytes);
    if r.u8()? != CODEC_VERSION {
        return Err(CodecError(format!("statement line version {}", bytes[0])));
    }
    let transfer_id = r.n128()?;
    let amount = r.n128()?;
    let credit = match r.u8()? {
        0 => false,
        1 => true,
        other => return Err(CodecError(format!("statement line side {other}"))),
    };
    let zigzag = r.n128()?;
    let balance_after = ((zigzag >> 1) as i128) ^ -((zigzag & 1) as i128);
    let tx_type = r.u16()?;
    let counterparty_id = r.n128()?;
    r.end()?;
    Ok(HistoryEntry {
        transfer_id,
        timestamp,
        amount,
        credit,
        balance_after,
        tx_type,
        counterparty_id,
    })
}

/// A number in version 2's form: its width in bytes without the zero bytes at the top, then
/// those low bytes.
fn put_number(out: &mut Vec<u8>, v: u128) {
    let width = 16 - v.leading_zeros() / 8;
    out.push(u8::try_from(width).expect("at most 16 bytes"));
    out.extend_from_slice(&v.to_le_bytes()[..width as usize]);
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Numbers in version 2's form ([`put_number`]), else fixed-width (version 1).
    compact: bool,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0, compact: true }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let end = self.at + N;
        let slice = self.bytes.get(self.at..end).ok_or_else(|| {
            CodecError(format!("{} bytes end before offset {end}", self.bytes.len()))
        })?;
        self.at = end;
        Ok(slice.try_into().expect("slice of N bytes"))
    }

    /// Reads the version byte and decodes what follows by it.
    fn version(&mut self) -> Result<(), CodecError> {
        match self.u8()? {
            CODEC_VERSION => self.compact = true,
            VERSION_FIXED => self.compact = false,
            v => {
                return Err(CodecError(format!(
                    "version {v}, expected {VERSION_FIXED} or {CODEC_VERSION}"
                )));
            }
        }
        Ok(())
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

    /// A number of up to 128 bits: [`put_number`]'s form, or 16 fixed bytes in version 1.
    fn n128(&mut self) -> Result<u128, CodecError> {
        if !self.compact {
            return self.u128();
        }
        let width = usize::from(self.u8()?);
        if width > 16 {
            return Err(CodecError(format!("number of {width} bytes at offset {}", self.at - 1)));
        }
        let end = self.at + width;
        let low = self.bytes.get(self.at..end).ok_or_else(|| {
            CodecError(format!("{} bytes end before offset {end}", self.bytes.len()))
        })?;
        if low.last() == Some(&0) {
            return Err(CodecError(format!("number at offset {} not in shortest form", self.at)));
        }
        let mut wide = [0u8; 16];
        wide[..width].copy_from_slice(low);
        self.at = end;
        Ok(u128::from_le_bytes(wide))
    }

    /// A number of up to 64 bits: [`put_number`]'s form, or 8 fixed bytes in version 1.
    fn n64(&mut self) -> Result<u64, CodecError> {
        self.narrow(Self::u64)
    }

    /// A number of up to 32 bits: [`put_number`]'s form, or 4 fixed bytes in version 1.
    fn n32(&mut self) -> Result<u32, CodecError> {
        self.narrow(Self::u32)
    }

    /// A number of `T`'s width: [`put_number`]'s form, or `fixed`'s bytes in version 1.
    fn narrow<T: TryFrom<u128>>(
        &mut self,
        fixed: fn(&mut Self) -> Result<T, CodecError>,
    ) -> Result<T, CodecError> {
        if !self.compact {
            return fixed(self);
        }
        let at = self.at;
        T::try_from(self.n128()?).map_err(|_| {
            let bits = 8 * std::mem::size_of::<T>();
            CodecError(format!("number at offset {at} wider than {bits} bits"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CURRENCY_KES;

    pub(super) fn sample_commands() -> Vec<Command> {
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

    /// The account and the record of the version-1 fixtures below (and the round trips).
    fn sample_account() -> Account {
        let Command::CreateAccount(new) = sample_commands()[0] else { unreachable!() };
        let mut account = Account::new(&new, 12);
        account.credits_posted = 9;
        account.holds_pending = 2;
        account.status = AccountStatus::Frozen;
        account
    }

    fn sample_record() -> Transfer {
        let Command::CreateTransfer(new) = sample_commands()[1] else { unreachable!() };
        Transfer {
            new,
            timestamp: 5,
            result: ResultCode::ExceedsDailyLimit,
            hold: HoldState::Voided,
        }
    }

    #[test]
    fn records_round_trip_and_reject_bad_enumerations() {
        let account = sample_account();
        let mut bytes = Vec::new();
        encode_account(&account, &mut bytes);
        assert!((ACCOUNT_BYTES_MIN..=ACCOUNT_BYTES_MAX).contains(&bytes.len()));
        assert_eq!(decode_account(&bytes).unwrap(), account);
        *bytes.last_mut().unwrap() = 0;
        assert!(decode_account(&bytes).is_err());

        let record = sample_record();
        let mut bytes = Vec::new();
        encode_transfer(&record, &mut bytes);
        assert!((TRANSFER_BYTES_MIN..=TRANSFER_BYTES_MAX).contains(&bytes.len()));
        assert_eq!(decode_transfer(&bytes).unwrap(), record);
        *bytes.last_mut().unwrap() = 5;
        assert!(decode_transfer(&bytes).is_err());
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Bytes written by version 1's encoders (before session 7), kept as they were: logs, stores
    /// and snapshot files of that version must still decode to what they held.
    #[test]
    fn version_1_bytes_still_decode() {
        const ENTRY: &str = "011100000000000000030000000000000000002a36fe9c97170400000001fcffffffffffffffffffffffffffffff94010100010020a1070000000000000000000000000007000000000000000000000000000000100000004ef4094e3b0000002a0000000263000000000000000000000000000000010000000000000000000000000000000200000000000000000000000000000040787d010000000000000000000000000300000000000000000000000000000004000000000000000000000000000000050000000000000006000000100e0000940102000300030100000000000000000000000000000002040300000001000000000000000000000000000000020000000000000000000000000000000300000000000000000000000000000000000000000000000000000000000000";
        const ACCOUNT: &str = "01fcffffffffffffffffffffffffffffff0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000900000000000000000000000000000020a1070000000000000000000000000000000000000000000000000000000000000000000000000000000000100000004ef4094e3b0000000c000000000000002a0000000000000007000000940101000100020003";
        const TRANSFER: &str = "0163000000000000000000000000000000010000000000000000000000000000000200000000000000000000000000000040787d010000000000000000000000000300000000000000000000000000000004000000000000000000000000000000050000000000000006000000100e00009401020003000500000000000000480003";
        let entry = Entry {
            index: 17,
            term: 3,
            timestamp: 1_700_000_000_000_000_000,
            commands: sample_commands(),
        };
        assert_eq!(decode_entry(&hex(ENTRY)).unwrap(), entry);
        let account = sample_account();
        assert_eq!(decode_account(&hex(ACCOUNT)).unwrap(), account);
        let record = sample_record();
        assert_eq!(decode_transfer(&hex(TRANSFER)).unwrap(), record);
        // And version 2 is what is written now, and smaller.
        let mut bytes = Vec::new();
        encode_transfer(&record, &mut bytes);
        assert_eq!(bytes[0], CODEC_VERSION);
        assert!(bytes.len() < hex(TRANSFER).len() / 2, "{} bytes", bytes.len());
    }

    #[test]
    fn statement_lines_round_trip_with_balances_of_either_sign() {
        for balance_after in [0, 1, -1, 250_000_00, -5_000_00, i128::MAX, i128::MIN] {
            let line = HistoryEntry {
                transfer_id: 7 << 64 | 3,
                timestamp: 99,
                amount: 1_500_00,
                credit: balance_after < 0,
                balance_after,
                tx_type: 3,
                counterparty_id: 254_700_000_001,
            };
            let mut bytes = Vec::new();
            encode_statement_line(&line, &mut bytes);
            assert_eq!(decode_statement_line(&bytes, 99).unwrap(), line);
            for cut in 0..bytes.len() {
                assert!(decode_statement_line(&bytes[..cut], 99).is_err(), "cut at {cut}");
            }
        }
        let mut bytes = Vec::new();
        let line = HistoryEntry {
            transfer_id: 1,
            timestamp: 1,
            amount: 1,
            credit: true,
            balance_after: 1,
            tx_type: 1,
            counterparty_id: 1,
        };
        encode_statement_line(&line, &mut bytes);
        assert_eq!(bytes.len(), 1 + 2 + 2 + 1 + 2 + 2 + 2);
        bytes[5] = 2;
        assert!(decode_statement_line(&bytes, 1).is_err(), "a side that is neither");
    }

    #[test]
    fn numbers_take_their_shortest_form_and_only_that() {
        for (v, width) in [(0u128, 0), (1, 1), (255, 1), (256, 2), (5_000_000, 3), (u128::MAX, 16)]
        {
            let mut bytes = Vec::new();
            put_number(&mut bytes, v);
            assert_eq!(bytes.len(), 1 + width, "{v}");
            assert_eq!(bytes[0] as usize, width);
            assert_eq!(Reader::new(&bytes).n128().unwrap(), v);
        }
        // A zero byte at the top is a second encoding of a smaller number: refused.
        assert!(Reader::new(&[2, 7, 0]).n128().is_err());
        assert!(Reader::new(&[17; 18]).n128().is_err(), "wider than 128 bits");
        assert!(Reader::new(&[3, 1, 1]).n128().is_err(), "cut short");
        let mut wide = Vec::new();
        put_number(&mut wide, 1 << 40);
        assert!(Reader::new(&wide).n32().is_err());
        assert_eq!(Reader::new(&wide).n64().unwrap(), 1 << 40);
    }
}
