//! The `hazina.v1.Ledger` gRPC service: checks requests at the edge, then hands them to the
//! [`Node`].
//!
//! Business outcomes are result codes in a successful reply. gRPC errors are for the request
//! itself: `INVALID_ARGUMENT` names the field (`transfers[3].currency: 70000 is out of range`)
//! or the limit passed; `RESOURCE_EXHAUSTED` when the node is overloaded or full;
//! `UNAVAILABLE` when it is stopping. A request refused with an error changes nothing.

use std::sync::Arc;

use hazina_core::{Command, ResultCode, TransferFlags};
use hazina_proto::v1::ledger_server::Ledger;
use hazina_proto::v1::{self as pb};
use hazina_proto::{FieldError, Item, u128_from_wire, u128_to_wire};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::cluster::ClusterNode;
use crate::node::{Node, NodeError};

/// Items in one request, at most: a request must fit in one batch with room to spare.
pub const REQUEST_ITEMS_MAX: usize = 8_190;
/// Lookups in one request, at most.
pub const LOOKUP_IDS_MAX: usize = 8_190;
/// Statement lines in one page, at most.
pub const HISTORY_LIMIT_MAX: u32 = 1_000;
/// Bytes of one message, at most (gRPC's usual 4 MiB); larger messages get `OUT_OF_RANGE`
/// from the transport before they reach the service.
pub const MESSAGE_BYTES_MAX: usize = 4 << 20;

/// What serves the API: a single site, or a site of a replicated group.
#[derive(Debug, Clone)]
pub enum Backend {
    Single(Arc<Node>),
    Cluster(Arc<ClusterNode>),
}

impl Backend {
    pub async fn execute(&self, commands: Vec<Command>) -> Result<Vec<ResultCode>, NodeError> {
        match self {
            Backend::Single(node) => node.execute(commands).await,
            Backend::Cluster(node) => node.execute(commands).await,
        }
    }

    async fn lookup_accounts(
        &self,
        ids: Vec<u128>,
    ) -> Result<Vec<hazina_core::Account>, NodeError> {
        match self {
            Backend::Single(node) => node.lookup_accounts(ids).await,
            Backend::Cluster(node) => node.lookup_accounts(ids).await,
        }
    }

    async fn lookup_transfers(
        &self,
        ids: Vec<u128>,
    ) -> Result<Vec<hazina_core::Transfer>, NodeError> {
        match self {
            Backend::Single(node) => node.lookup_transfers(ids).await,
            Backend::Cluster(node) => node.lookup_transfers(ids).await,
        }
    }

    /// Waits until every acknowledged transfer's statement lines can be read.
    async fn statements_written(&self) -> Result<(), NodeError> {
        match self {
            Backend::Single(node) => node.statements_written().await,
            // A site answers only after it wrote the statement lines.
            Backend::Cluster(_) => Ok(()),
        }
    }

    fn history(
        &self,
        account: u128,
        from: hazina_core::Timestamp,
        limit: usize,
    ) -> Result<hazina_core::HistoryPage, NodeError> {
        match self {
            Backend::Single(node) => node.history(account, from, limit),
            Backend::Cluster(node) => node.history(account, from, limit),
        }
    }

    async fn status(&self) -> Result<pb::GetStatusReply, NodeError> {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        match self {
            Backend::Single(node) => {
                let status = node.status().await?;
                Ok(pb::GetStatusReply {
                    commit_index: status.commit_index,
                    term: status.term,
                    digest: Some(u128_to_wire(status.digest)),
                    accounts: status.accounts,
                    checkpoint_index: status.checkpoint_index,
                    timestamp_last: status.timestamp_last,
                    version,
                    queued_commands: status.queued_commands,
                    role: pb::Role::Single.into(),
                    last_index: status.commit_index,
                    applied_index: status.commit_index,
                    ..pb::GetStatusReply::default()
                })
            }
            Backend::Cluster(node) => {
                let s = node.status().await?;
                let role = match s.replica.role {
                    hazina_replica::StateRole::Leader => pb::Role::Primary,
                    hazina_replica::StateRole::Follower => pb::Role::Standby,
                    _ => pb::Role::Candidate,
                };
                let last = s.replica.last_index;
                Ok(pb::GetStatusReply {
                    commit_index: s.replica.commit_index,
                    term: s.replica.term,
                    digest: Some(u128_to_wire(s.digest)),
                    accounts: s.accounts,
                    checkpoint_index: 0,
                    timestamp_last: s.timestamp_last,
                    version,
                    queued_commands: s.queued_commands,
                    site_id: s.site_id,
                    role: role.into(),
                    leader_site: s.replica.leader.unwrap_or(0),
                    leader_address: s.leader_address.unwrap_or_default(),
                    last_index: last,
                    applied_index: s.replica.applied_index,
                    sites: s
                        .progress
                        .iter()
                        .map(|&(site_id, matched)| pb::SiteProgress {
                            site_id,
                            match_index: matched,
                            lag_entries: last.saturating_sub(matched),
                        })
                        .collect(),
                    last_change: s.last_change,
                    last_change_unix_ms: s.last_change_unix_ms,
                    snapshot_index: s.replica.snapshot_index,
                    snapshots_installed: s.snapshots_installed,
                })
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LedgerService {
    node: Backend,
}

impl LedgerService {
    pub fn new(node: Backend) -> LedgerService {
        LedgerService { node }
    }
}

/// `hazina.v1.Admin`: operator commands of a replicated group.
#[derive(Debug, Clone)]
pub struct AdminService {
    node: Backend,
}

impl AdminService {
    pub fn new(node: Backend) -> AdminService {
        AdminService { node }
    }
}

#[tonic::async_trait]
impl hazina_proto::v1::admin_server::Admin for AdminService {
    async fn switchover(
        &self,
        request: Request<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::SwitchoverReply>, Status> {
        let to = request.into_inner().to_site;
        let Backend::Cluster(node) = &self.node else {
            return Err(Status::failed_precondition(
                "this node runs a single site (no --site-id): there is nothing to switch over to",
            ));
        };
        let done = node.switchover(to).await.map_err(node_error)?;
        Ok(Response::new(pb::SwitchoverReply {
            leader_site: done.leader,
            term: done.term,
            pause_ms: u64::try_from(done.pause.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

/// `hazina.peer.v1.Peer`: raft messages from the other sites of the group.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: Arc<ClusterNode>,
}

impl PeerService {
    pub fn new(node: Arc<ClusterNode>) -> PeerService {
        PeerService { node }
    }
}

#[tonic::async_trait]
impl hazina_proto::peer::peer_server::Peer for PeerService {
    async fn step(
        &self,
        request: Request<hazina_proto::peer::StepRequest>,
    ) -> Result<Response<hazina_proto::peer::StepReply>, Status> {
        let request = request.into_inner();
        let messages = request
            .messages
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                hazina_replica::wire::decode(bytes)
                    .map_err(|e| Status::invalid_argument(format!("messages[{i}]: {e}")))
            })
            .collect::<Result<Vec<hazina_replica::Message>, Status>>()?;
        self.node.step(request.from_site, messages).map_err(node_error)?;
        Ok(Response::new(hazina_proto::peer::StepReply {}))
    }
}

fn invalid(e: &FieldError) -> Status {
    metrics::counter!("hazina_requests_rejected_total", "reason" => "invalid").increment(1);
    Status::invalid_argument(e.to_string())
}

fn too_many(field: &str, n: usize, max: usize) -> Status {
    metrics::counter!("hazina_requests_rejected_total", "reason" => "too_large").increment(1);
    Status::invalid_argument(format!("{field}: {n} items exceed the limit of {max} per request"))
}

/// Metadata of a "not primary" answer: the primary's site id and client address, for clients
/// to follow (docs/API.md).
pub const LEADER_SITE_HEADER: &str = "hazina-leader-site";
pub const LEADER_ADDRESS_HEADER: &str = "hazina-leader-address";

fn node_error(e: NodeError) -> Status {
    match &e {
        NodeError::StorageBehind { retry_after, .. } => {
            // The standard detail, which gRPC clients and gateways read: when to come back.
            let details = ErrorDetails::with_retry_info(Some(*retry_after));
            Status::with_error_details(Code::ResourceExhausted, e.to_string(), details)
        }
        NodeError::Overloaded { .. } | NodeError::AccountsFull { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        NodeError::TooLarge { .. } | NodeError::Invalid(_) => {
            Status::invalid_argument(e.to_string())
        }
        NodeError::Stopped | NodeError::Busy(_) => Status::unavailable(e.to_string()),
        NodeError::Storage(_) => Status::internal(e.to_string()),
        NodeError::Refused(_) => Status::failed_precondition(e.to_string()),
        NodeError::NotLeader { leader, address } => {
            metrics::counter!("hazina_requests_rejected_total", "reason" => "not_primary")
                .increment(1);
            let mut status = Status::unavailable(e.to_string());
            if let Some(id) = leader
                && let Ok(value) = id.to_string().parse()
            {
                status.metadata_mut().insert(LEADER_SITE_HEADER, value);
            }
            if let Some(address) = address
                && let Ok(value) = address.parse()
            {
                status.metadata_mut().insert(LEADER_ADDRESS_HEADER, value);
            }
            status
        }
    }
}

fn results_reply(results: &[ResultCode]) -> Vec<i32> {
    results.iter().map(|&r| hazina_proto::result_to_wire(r)).collect()
}

fn ids_from_wire(ids: &[pb::Uint128]) -> Result<Vec<u128>, Status> {
    if ids.len() > LOOKUP_IDS_MAX {
        return Err(too_many("ids", ids.len(), LOOKUP_IDS_MAX));
    }
    Ok(ids.iter().map(|id| u128_from_wire(Some(id))).collect())
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    async fn create_accounts(
        &self,
        request: Request<pb::CreateAccountsRequest>,
    ) -> Result<Response<pb::CreateAccountsReply>, Status> {
        let accounts = request.into_inner().accounts;
        if accounts.len() > REQUEST_ITEMS_MAX {
            return Err(too_many("accounts", accounts.len(), REQUEST_ITEMS_MAX));
        }
        let commands = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                hazina_proto::new_account_from_wire(a, &Item { list: "accounts", index: i })
                    .map(Command::CreateAccount)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let results = self.node.execute(commands).await.map_err(node_error)?;
        Ok(Response::new(pb::CreateAccountsReply { results: results_reply(&results) }))
    }

    async fn create_transfers(
        &self,
        request: Request<pb::CreateTransfersRequest>,
    ) -> Result<Response<pb::CreateTransfersReply>, Status> {
        let transfers = request.into_inner().transfers;
        if transfers.len() > REQUEST_ITEMS_MAX {
            return Err(too_many("transfers", transfers.len(), REQUEST_ITEMS_MAX));
        }
        let commands = transfers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                hazina_proto::new_transfer_from_wire(t, &Item { list: "transfers", index: i })
                    .map(Command::CreateTransfer)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        if let Some(Command::CreateTransfer(last)) = commands.last()
            && last.flags.contains(TransferFlags::LINKED)
        {
            // Requests share entries: an open chain would take in the next caller's transfers.
            return Err(invalid(&FieldError {
                field: format!("transfers[{}].flags", commands.len() - 1),
                reason: "the last transfer of a request must not be linked (the chain is open)"
                    .into(),
            }));
        }
        let results = self.node.execute(commands).await.map_err(node_error)?;
        Ok(Response::new(pb::CreateTransfersReply { results: results_reply(&results) }))
    }

    async fn lookup_accounts(
        &self,
        request: Request<pb::LookupAccountsRequest>,
    ) -> Result<Response<pb::LookupAccountsReply>, Status> {
        let ids = ids_from_wire(&request.into_inner().ids)?;
        let accounts = self.node.lookup_accounts(ids).await.map_err(node_error)?;
        Ok(Response::new(pb::LookupAccountsReply {
            accounts: accounts.iter().map(hazina_proto::account_to_wire).collect(),
        }))
    }

    async fn lookup_transfers(
        &self,
        request: Request<pb::LookupTransfersRequest>,
    ) -> Result<Response<pb::LookupTransfersReply>, Status> {
        let ids = ids_from_wire(&request.into_inner().ids)?;
        let transfers = self.node.lookup_transfers(ids).await.map_err(node_error)?;
        Ok(Response::new(pb::LookupTransfersReply {
            transfers: transfers.iter().map(hazina_proto::transfer_to_wire).collect(),
        }))
    }

    async fn get_account_history(
        &self,
        request: Request<pb::GetAccountHistoryRequest>,
    ) -> Result<Response<pb::GetAccountHistoryReply>, Status> {
        let request = request.into_inner();
        let account = u128_from_wire(request.account_id.as_ref());
        if account == 0 {
            return Err(invalid(&FieldError {
                field: "account_id".into(),
                reason: "must not be zero".into(),
            }));
        }
        if request.limit > HISTORY_LIMIT_MAX {
            return Err(invalid(&FieldError {
                field: "limit".into(),
                reason: format!("{} exceeds the page limit of {HISTORY_LIMIT_MAX}", request.limit),
            }));
        }
        self.node.statements_written().await.map_err(node_error)?;
        let node = self.node.clone();
        let page = tokio::task::spawn_blocking(move || {
            node.history(account, request.from_timestamp, request.limit as usize)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(node_error)?;
        Ok(Response::new(pb::GetAccountHistoryReply {
            opening_balance: Some(hazina_proto::balance_to_wire(page.opening_balance)),
            entries: page
                .entries
                .iter()
                .map(|e| pb::HistoryEntry {
                    transfer_id: Some(u128_to_wire(e.transfer_id)),
                    timestamp: e.timestamp,
                    amount: Some(u128_to_wire(e.amount)),
                    credit: e.credit,
                    balance_after: Some(hazina_proto::balance_to_wire(e.balance_after)),
                    tx_type: e.tx_type.into(),
                    counterparty_id: Some(u128_to_wire(e.counterparty_id)),
                })
                .collect(),
            next_from_timestamp: page.next_from.unwrap_or(0),
        }))
    }

    async fn set_account_status(
        &self,
        request: Request<pb::SetAccountStatusRequest>,
    ) -> Result<Response<pb::SetAccountStatusReply>, Status> {
        let changes = request.into_inner().changes;
        if changes.len() > REQUEST_ITEMS_MAX {
            return Err(too_many("changes", changes.len(), REQUEST_ITEMS_MAX));
        }
        let commands = changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let status =
                    hazina_proto::status_from_wire(c.status, &format!("changes[{i}].status"))?;
                Ok(Command::SetAccountStatus {
                    account_id: u128_from_wire(c.account_id.as_ref()),
                    status,
                })
            })
            .collect::<Result<Vec<_>, FieldError>>()
            .map_err(|e| invalid(&e))?;
        let results = self.node.execute(commands).await.map_err(node_error)?;
        Ok(Response::new(pb::SetAccountStatusReply { results: results_reply(&results) }))
    }

    async fn set_limit_profiles(
        &self,
        request: Request<pb::SetLimitProfilesRequest>,
    ) -> Result<Response<pb::SetLimitProfilesReply>, Status> {
        let profiles = request.into_inner().profiles;
        if profiles.len() > REQUEST_ITEMS_MAX {
            return Err(too_many("profiles", profiles.len(), REQUEST_ITEMS_MAX));
        }
        let commands = profiles
            .iter()
            .map(|p| {
                let (profile_id, limits) = hazina_proto::limit_profile_from_wire(p);
                Command::SetLimitProfile { profile_id, limits }
            })
            .collect();
        let results = self.node.execute(commands).await.map_err(node_error)?;
        Ok(Response::new(pb::SetLimitProfilesReply { results: results_reply(&results) }))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusReply>, Status> {
        Ok(Response::new(self.node.status().await.map_err(node_error)?))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_refusal_for_storage_says_when_to_come_back() {
        let why = "30 level-0 files in history".to_owned();
        let behind =
            NodeError::StorageBehind { rate: 9_000, why, retry_after: Duration::from_millis(42) };
        let status = node_error(behind);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("about 9000 commands/s"), "{}", status.message());
        let retry = status.get_details_retry_info().expect("a RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(42)));
        // A full queue has no such estimate.
        let status = node_error(NodeError::Overloaded { queued: 10, max: 10 });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.get_details_retry_info().is_none());
    }
}
