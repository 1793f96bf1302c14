//! Hazina's replicated log: three sites keep the same ordered log of batches with raft
//! (raft-rs, driven as a pure state machine; docs/adr/0003), and each applies it to its own
//! ledger core, so every site reaches the same balances and the same state digest.
//!
//! [`Replica`] is one site: a raft node whose state machine is the ledger. [`log::MemLog`] is
//! an in-memory raft log for the deterministic simulation (`tests/simulation.rs`); the RocksDB
//! log of `hazina-store` takes its place in `hazinad`.

pub mod log;
mod replica;
pub mod snapshot;
pub mod wire;

pub use log::{LogStore, MemLog, WriteError};
pub use raft;
pub use raft::StateRole;
pub use raft::eraftpb::Message;
pub use replica::{
    Applied, EntrySummary, Output, Proposal, ProposeError, Replica, ReplicaConfig, ReplicaError,
    ReplicaStatus, SNAPSHOT_BYTES_GROWTH_MAX, SnapshotJob,
};
