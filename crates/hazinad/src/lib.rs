//! # hazinad
//!
//! The Hazina ledger node: the pure ledger of `hazina-core` behind a group-committed log on
//! RocksDB ([`node`]) and the `hazina.v1` gRPC API ([`service`]), with the standard health and
//! reflection services and a Prometheus endpoint ([`server`]).

pub mod cluster;
pub mod flow;
pub mod limits;
pub mod node;
mod relay;
pub mod server;
pub mod service;
