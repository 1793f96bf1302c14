//! A whole ledger as bytes, for raft snapshots: what a replica sends a site whose log is too far
//! behind, and what it keeps so that it can drop the log before it. Accounts, limit profiles,
//! every resident transfer record, the transfers part of the digest and the last stamp, in the
//! record encodings of `hazina_core::codec`.

use std::collections::BTreeMap;

use hazina_core::codec::{self, ACCOUNT_BYTES_MIN, CodecError, TRANSFER_BYTES_MIN};
use hazina_core::{HoldState, Ledger, LedgerConfig, LimitProfile, ResultCode};

const VERSION: u8 = 1;
const PROFILE_BYTES: usize = 4 + 4 * 16;

/// Encodes the ledger's whole state. Holds only when every record is resident
/// (`transfers_generation_max` = 0), as on a replicated site.
pub fn encode(ledger: &Ledger) -> Vec<u8> {
    LedgerCopy::of(ledger).encode()
}

/// A copy of a ledger's state, taken at once and encoded later, on another thread, so that the
/// replica that took it need not stop for the encoding (a million accounts take a second).
#[derive(Clone, Debug)]
pub struct LedgerCopy {
    accounts: Vec<hazina_core::Account>,
    profiles: BTreeMap<u32, LimitProfile>,
    /// Shares the ledger's full chunks of records: taking the copy copies accounts only.
    transfers: hazina_core::RecordsCopy,
    transfers_digest: u128,
    timestamp_last: u64,
}

impl LedgerCopy {
    pub fn of(ledger: &Ledger) -> LedgerCopy {
        LedgerCopy {
            accounts: ledger.accounts_unordered(),
            profiles: ledger.limit_profiles(),
            transfers: ledger.transfers_shared(),
            transfers_digest: ledger.transfers_digest(),
            timestamp_last: ledger.timestamp_last(),
        }
    }

    /// A copy of nothing, left behind once a copy was encoded.
    pub fn empty() -> LedgerCopy {
        LedgerCopy {
            accounts: Vec::new(),
            profiles: BTreeMap::new(),
            transfers: hazina_core::RecordsCopy::default(),
            transfers_digest: 0,
            timestamp_last: 0,
        }
    }

    /// The bytes [`decode`] reads: accounts and records in the order the ledger keeps them,
    /// unsorted. Sorting them by id (so that equal ledgers gave equal bytes) took most of a
    /// large snapshot's encoding (moving records of 160 bytes), and nothing compares snapshot
    /// bytes: sites compare digests, which do not depend on the order.
    pub fn encode(self) -> Vec<u8> {
        let (accounts, profiles, transfers) = (&self.accounts, &self.profiles, &self.transfers);
        // Records take 40-50 bytes each in the loads measured; twice the least is a fair start.
        let mut out = Vec::with_capacity(
            64 + accounts.len() * 2 * ACCOUNT_BYTES_MIN
                + profiles.len() * PROFILE_BYTES
                + transfers.len() * 2 * TRANSFER_BYTES_MIN,
        );
        out.push(VERSION);
        out.extend_from_slice(&self.transfers_digest.to_le_bytes());
        out.extend_from_slice(&self.timestamp_last.to_le_bytes());
        out.extend_from_slice(&(accounts.len() as u64).to_le_bytes());
        out.extend_from_slice(&(profiles.len() as u64).to_le_bytes());
        out.extend_from_slice(&(transfers.len() as u64).to_le_bytes());
        for account in accounts {
            codec::encode_account(account, &mut out);
        }
        for (id, p) in profiles {
            out.extend_from_slice(&id.to_le_bytes());
            for limit in [p.per_transfer_max, p.daily_debit_max, p.balance_max, p.amount_min] {
                out.extend_from_slice(&limit.to_le_bytes());
            }
        }
        for transfer in transfers.iter() {
            codec::encode_transfer(transfer, &mut out);
        }
        out
    }
}

/// Rebuilds a ledger from [`encode`]'s bytes. Every length and record is checked.
pub fn decode(bytes: &[u8], config: LedgerConfig) -> Result<Ledger, CodecError> {
    const HEADER: usize = 1 + 16 + 8 + 3 * 8;
    if bytes.len() < HEADER {
        return Err(CodecError(format!("snapshot of {} bytes has no header", bytes.len())));
    }
    if bytes[0] != VERSION {
        return Err(CodecError(format!("snapshot version {}", bytes[0])));
    }
    let u128_at = |b: &[u8]| u128::from_le_bytes(b.try_into().expect("16 bytes"));
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let transfers_digest = u128_at(&bytes[1..17]);
    let timestamp_last = u64_at(&bytes[17..25]);
    let count = |at: usize| usize::try_from(u64_at(&bytes[at..at + 8])).unwrap_or(usize::MAX);
    let (accounts_n, profiles_n, transfers_n) = (count(25), count(33), count(41));
    let mut rest = &bytes[HEADER..];
    // Records vary in length: the counts are checked against the least they can take before
    // any memory is reserved for them, and every record against the bytes left.
    let least = accounts_n
        .checked_mul(ACCOUNT_BYTES_MIN)
        .and_then(|a| profiles_n.checked_mul(PROFILE_BYTES).and_then(|p| a.checked_add(p)))
        .and_then(|s| transfers_n.checked_mul(TRANSFER_BYTES_MIN).and_then(|t| s.checked_add(t)));
    if least.is_none_or(|least| least > rest.len()) {
        return Err(CodecError(format!(
            "snapshot of {accounts_n} accounts, {profiles_n} profiles and {transfers_n} records \
             in {} bytes",
            rest.len()
        )));
    }
    let mut accounts = Vec::with_capacity(accounts_n);
    for _ in 0..accounts_n {
        let (account, used) = codec::decode_account_prefix(rest)?;
        accounts.push(account);
        rest = &rest[used..];
    }
    if profiles_n * PROFILE_BYTES > rest.len() {
        return Err(CodecError(format!("snapshot ends inside its {profiles_n} profiles")));
    }
    let (profile_bytes, mut rest) = rest.split_at(profiles_n * PROFILE_BYTES);
    let mut profiles = BTreeMap::new();
    for p in profile_bytes.chunks_exact(PROFILE_BYTES) {
        let id = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
        let limit = |k: usize| u128_at(&p[4 + 16 * k..20 + 16 * k]);
        profiles.insert(
            id,
            LimitProfile {
                per_transfer_max: limit(0),
                daily_debit_max: limit(1),
                balance_max: limit(2),
                amount_min: limit(3),
            },
        );
    }
    let mut transfers = Vec::with_capacity(transfers_n);
    for _ in 0..transfers_n {
        let (transfer, used) = codec::decode_transfer_prefix(rest)?;
        transfers.push(transfer);
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(CodecError(format!("snapshot has {} bytes after its records", rest.len())));
    }
    let pending =
        |t: &&hazina_core::Transfer| t.hold == HoldState::Pending && t.result == ResultCode::Ok;
    let holds: Vec<_> = transfers.iter().filter(pending).copied().collect();
    // Room for every account at once: growing by doubling would copy them all again.
    let config =
        LedgerConfig { accounts_capacity: config.accounts_capacity.max(accounts.len()), ..config };
    let mut ledger =
        Ledger::restore(config, accounts, &profiles, holds, transfers_digest, timestamp_last)
            .map_err(|e| CodecError(format!("snapshot does not restore: {e}")))?;
    for transfer in transfers {
        ledger.load_transfer(transfer);
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use hazina_testkit::world::{World, WorldConfig};

    use super::*;

    #[test]
    fn a_ledger_survives_its_snapshot_with_its_digest_and_behaviour() {
        let config = LedgerConfig { partitions: 2, ..LedgerConfig::default() };
        let mut ledger = Ledger::new(config.clone()).unwrap();
        let mut world = World::new(11, WorldConfig::default());
        for _ in 0..200 {
            let (timestamp, commands) = world.next_batch();
            ledger.apply(timestamp, &commands).unwrap();
        }
        let bytes = encode(&ledger);
        let mut copy = decode(&bytes, config).unwrap();
        assert_eq!(copy.digest(), ledger.digest());
        for _ in 0..100 {
            let (timestamp, commands) = world.next_batch();
            assert_eq!(copy.apply(timestamp, &commands), ledger.apply(timestamp, &commands));
        }
        assert_eq!(copy.digest(), ledger.digest());
        for cut in [0, 1, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], LedgerConfig::default()).is_err(), "cut at {cut}");
        }
    }
}
