//! # hazina-client
//!
//! A Rust client of the Hazina ledger (`hazina.v1` over gRPC).
//!
//! - [`Client`] connects, converts to and from the core's types, and retries calls that may not
//!   have reached the ledger (unavailable, overloaded, timed out). Retrying is safe: every
//!   account and transfer carries its own id, and a resent id returns the outcome of the first
//!   time and changes nothing. A retried create may so answer `Exists` for what the lost
//!   first attempt created.
//! - In a replicated group, give every site's address (`a,b,c`): a standby answers writes with
//!   "not primary" naming the primary, and the client follows it and resends the same ids; a
//!   site that cannot be reached is left for the next one. So a failover or a switchover costs
//!   a caller a short wait, not an error.
//! - [`TransferBatcher`] lets many tasks submit one transfer each, and sends them in batches:
//!   one RPC, one log sync, for all the transfers that arrive while the previous batch is in
//!   flight.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hazina_client::ClientError> {
//! use hazina_client::Client;
//! use hazina_core::{CURRENCY_KES, NewTransfer, TransactionType};
//!
//! let client = Client::connect("http://127.0.0.1:7400").await?;
//! let results = client
//!     .create_transfers(&[NewTransfer {
//!         id: 1,
//!         debit_account_id: 10,
//!         credit_account_id: 11,
//!         amount: 100_00,
//!         currency: CURRENCY_KES,
//!         tx_type: TransactionType::SendMoney as u16,
//!         ..NewTransfer::default()
//!     }])
//!     .await?;
//! println!("{results:?}");
//! # Ok(()) }
//! ```

/// The generated API and its conversions, for what this client does not wrap.
pub use hazina_proto as proto;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hazina_core::{
    Account, AccountStatus, HistoryEntry, HistoryPage, LimitProfile, LimitProfileId, NewAccount,
    NewTransfer, ResultCode, Timestamp, Transfer, TransferFlags,
};
use hazina_proto::v1::admin_client::AdminClient;
use hazina_proto::v1::ledger_client::LedgerClient;
use hazina_proto::v1::{self as pb};
use hazina_proto::{u128_from_wire, u128_to_wire};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A call that did not give results.
#[derive(Clone, Debug)]
pub enum ClientError {
    /// No connection could be made.
    Connect(String),
    /// The server answered with an error (after retries, for the codes that are retried).
    Rpc(Status),
    /// The server's reply could not be read as the API defines it.
    BadReply(String),
    /// The batcher stopped.
    Stopped,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "cannot connect: {e}"),
            ClientError::Rpc(status) => {
                write!(f, "{:?}: {}", status.code(), status.message())
            }
            ClientError::BadReply(e) => write!(f, "bad reply: {e}"),
            ClientError::Stopped => write!(f, "the batcher stopped"),
        }
    }
}

impl std::error::Error for ClientError {}

/// How calls that may not have reached the ledger are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one, up to `backoff_max`. A refusal
    /// that says how long to wait (`google.rpc.RetryInfo`) is waited for that long instead, up
    /// to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Deadline of each attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// Rides out a failover (a new primary within about a second) and brief overloads: ten
    /// attempts over about three seconds.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 10,
            backoff: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The metadata of a "not primary" answer naming the primary's client address.
pub const LEADER_ADDRESS_HEADER: &str = "hazina-leader-address";

/// Codes after which the request may not have been applied, and resending the same ids is the
/// way to find out.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Unknown
    )
}

/// The wait a refusal asks for (`google.rpc.RetryInfo`, which a node sends when its storage is
/// behind: when its admission will have room again), at most `max`.
fn server_wait(status: &Status, max: Duration) -> Option<Duration> {
    let delay = status.get_details_retry_info()?.retry_delay?;
    Some(delay.min(max))
}

/// The node a client sends to, among the addresses it knows.
#[derive(Debug)]
struct Target {
    addr: String,
    channel: Channel,
}

#[derive(Debug)]
struct Targets {
    /// Every address given, and primaries named by "not primary" answers.
    addrs: Mutex<Vec<String>>,
    current: Mutex<Target>,
}

fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| ClientError::Connect(format!("{addr}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true))
}

/// A connection to a Hazina node, or to the primary of a replicated group. Cheap to clone;
/// clones share the connection and follow the primary together.
#[derive(Clone, Debug)]
pub struct Client {
    targets: Arc<Targets>,
    retry: RetryPolicy,
}

impl Client {
    /// Connects to `addr` (`http://host:port`, or `host:port`), or to the first reachable of a
    /// comma-separated list of a group's sites.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, RetryPolicy::default()).await
    }

    pub async fn connect_with(addrs: &str, retry: RetryPolicy) -> Result<Client, ClientError> {
        let list: Vec<String> =
            addrs.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
        let mut errors = Vec::new();
        for addr in &list {
            match endpoint(addr)?.connect().await {
                Ok(channel) => {
                    let current = Target { addr: addr.clone(), channel };
                    let targets =
                        Targets { addrs: Mutex::new(list.clone()), current: Mutex::new(current) };
                    return Ok(Client { targets: Arc::new(targets), retry });
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        if errors.is_empty() {
            return Err(ClientError::Connect(format!("no address in {addrs:?}")));
        }
        Err(ClientError::Connect(errors.join("; ")))
    }

    /// The address requests go to now.
    pub fn current_addr(&self) -> String {
        self.targets.current.lock().expect("no panics while holding the lock").addr.clone()
    }

    fn channel(&self) -> Channel {
        self.targets.current.lock().expect("no panics while holding the lock").channel.clone()
    }

    /// Moves to `addr` (connecting lazily), unless another task already moved away from
    /// `from`.
    fn move_to(&self, from: &str, addr: &str) {
        let Ok(endpoint) = endpoint(addr) else { return };
        let mut current = self.targets.current.lock().expect("no panics while holding the lock");
        if current.addr != from || current.addr == addr {
            return;
        }
        *current = Target { addr: addr.to_owned(), channel: endpoint.connect_lazy() };
        drop(current);
        let mut addrs = self.targets.addrs.lock().expect("no panics while holding the lock");
        if !addrs.iter().any(|a| a == addr) {
            addrs.push(addr.to_owned());
        }
    }

    /// After a failure at `from` with no primary named: the next known address, if any.
    fn rotate(&self, from: &str) {
        let next = {
            let addrs = self.targets.addrs.lock().expect("no panics while holding the lock");
            if addrs.len() < 2 {
                return;
            }
            let at = addrs.iter().position(|a| a == from).unwrap_or(0);
            addrs[(at + 1) % addrs.len()].clone()
        };
        self.move_to(from, &next);
    }

    /// Calls `call` with retries, as [`RetryPolicy`] says, following a "not primary" answer to
    /// the primary it names at once, and moving to the next known site when one cannot be
    /// reached.
    async fn call<Req: Clone, Rep, F, Fut>(&self, request: Req, call: F) -> Result<Rep, ClientError>
    where
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Rep>, Status>>,
    {
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        loop {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(self.retry.timeout);
            let from = self.current_addr();
            match call(self.channel(), req).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if retryable(status.code()) && attempt < self.retry.attempts => {
                    let leader = status
                        .metadata()
                        .get(LEADER_ADDRESS_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    attempt += 1;
                    match leader {
                        Some(leader) if leader != from => {
                            // The primary is known: go there now.
                            self.move_to(&from, &leader);
                            continue;
                        }
                        Some(_) => {}
                        None if status.code() == Code::Unavailable => self.rotate(&from),
                        None => {}
                    }
                    match server_wait(&status, self.retry.backoff_max) {
                        // The server said when it will take the request: no sooner, no later.
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(self.retry.backoff_max);
                        }
                    }
                }
                Err(status) => return Err(ClientError::Rpc(status)),
            }
        }
    }

    /// Asks the primary to hand over to site `to` (`hazina admin switchover`). Returns the
    /// reply: the new primary, its term and how long writes paused.
    pub async fn switchover(&self, to: u64) -> Result<pb::SwitchoverReply, ClientError> {
        self.call(pb::SwitchoverRequest { to_site: to }, |c, r| async move {
            AdminClient::new(c).switchover(r).await
        })
        .await
    }

    pub async fn create_accounts(
        &self,
        accounts: &[NewAccount],
    ) -> Result<Vec<ResultCode>, ClientError> {
        let request = pb::CreateAccountsRequest {
            accounts: accounts.iter().map(hazina_proto::new_account_to_wire).collect(),
        };
        let reply = self
            .call(request, |c, r| async move { Client::wrap(c).create_accounts(r).await })
            .await?;
        results(&reply.results, accounts.len())
    }

    pub async fn create_transfers(
        &self,
        transfers: &[NewTransfer],
    ) -> Result<Vec<ResultCode>, ClientError> {
        let request = pb::CreateTransfersRequest {
            transfers: transfers.iter().map(hazina_proto::new_transfer_to_wire).collect(),
        };
        let reply = self
            .call(request, |c, r| async move { Client::wrap(c).create_transfers(r).await })
            .await?;
        results(&reply.results, transfers.len())
    }

    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, ClientError> {
        let request =
            pb::LookupAccountsRequest { ids: ids.iter().map(|&id| u128_to_wire(id)).collect() };
        let reply = self
            .call(request, |c, r| async move { Client::wrap(c).lookup_accounts(r).await })
            .await?;
        reply.accounts.iter().map(account_from_wire).collect()
    }

    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Transfer>, ClientError> {
        let request =
            pb::LookupTransfersRequest { ids: ids.iter().map(|&id| u128_to_wire(id)).collect() };
        let reply = self
            .call(request, |c, r| async move { Client::wrap(c).lookup_transfers(r).await })
            .await?;
        reply
            .transfers
            .iter()
            .map(|t| {
                hazina_proto::transfer_from_wire(t)
                    .map_err(|e| ClientError::BadReply(e.to_string()))
            })
            .collect()
    }

    pub async fn history(
        &self,
        account_id: u128,
        from: Timestamp,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let request = pb::GetAccountHistoryRequest {
            account_id: Some(u128_to_wire(account_id)),
            from_timestamp: from,
            limit,
        };
        let reply = self
            .call(request, |c, r| async move { Client::wrap(c).get_account_history(r).await })
            .await?;
        Ok(HistoryPage {
            opening_balance: hazina_proto::balance_from_wire(reply.opening_balance.as_ref()),
            entries: reply
                .entries
                .iter()
                .map(|e| HistoryEntry {
                    transfer_id: u128_from_wire(e.transfer_id.as_ref()),
                    timestamp: e.timestamp,
                    amount: u128_from_wire(e.amount.as_ref()),
                    credit: e.credit,
                    balance_after: hazina_proto::balance_from_wire(e.balance_after.as_ref()),
                    tx_type: u16::try_from(e.tx_type).unwrap_or(u16::MAX),
                    counterparty_id: u128_from_wire(e.counterparty_id.as_ref()),
                })
                .collect(),
            next_from: (reply.next_from_timestamp != 0).then_some(reply.next_from_timestamp),
        })
    }

    pub async fn set_account_status(
        &self,
        changes: &[(u128, AccountStatus)],
    ) -> Result<Vec<ResultCode>, ClientError> {
        let request = pb::SetAccountStatusRequest {
            changes: changes
                .iter()
                .map(|&(id, status)| pb::AccountStatusChange {
                    account_id: Some(u128_to_wire(id)),
                    status: hazina_proto::status_to_wire(status) as i32,
                })
                .collect(),
        };
        let reply = self
            .call(request, |c, r| async move { Client::wrap(c).set_account_status(r).await })
            .await?;
        results(&reply.results, changes.len())
    }

    /// Sets limit profiles. `Amount::MAX` (no limit) goes on the wire as 0.
    pub async fn set_limit_profiles(
        &self,
        profiles: &[(LimitProfileId, LimitProfile)],
    ) -> Result<Vec<ResultCode>, ClientError> {
        let wire = |v: u128| (v != u128::MAX).then(|| u128_to_wire(v));
        let request = pb::SetLimitProfilesRequest {
            profiles: profiles
                .iter()
                .map(|(id, p)| pb::LimitProfile {
                    profile_id: *id,
                    per_transfer_max: wire(p.per_transfer_max),
                    daily_debit_max: wire(p.daily_debit_max),
                    balance_max: wire(p.balance_max),
                    amount_min: Some(u128_to_wire(p.amount_min)),
                })
                .collect(),
        };
        let reply = self
            .call(request, |c, r| async move { Client::wrap(c).set_limit_profiles(r).await })
            .await?;
        results(&reply.results, profiles.len())
    }

    fn wrap(channel: Channel) -> LedgerClient<Channel> {
        LedgerClient::new(channel)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20)
    }

    pub async fn status(&self) -> Result<pb::GetStatusReply, ClientError> {
        self.call(
            pb::GetStatusRequest {},
            |c, r| async move { Client::wrap(c).get_status(r).await },
        )
        .await
    }
}

fn results(codes: &[i32], expected: usize) -> Result<Vec<ResultCode>, ClientError> {
    if codes.len() != expected {
        return Err(ClientError::BadReply(format!("{} results for {expected} items", codes.len())));
    }
    codes
        .iter()
        .map(|&c| {
            hazina_proto::result_from_wire(c)
                .ok_or_else(|| ClientError::BadReply(format!("unknown result code {c}")))
        })
        .collect()
}

fn account_from_wire(a: &pb::Account) -> Result<Account, ClientError> {
    let bad = |e: hazina_proto::FieldError| ClientError::BadReply(e.to_string());
    let new = hazina_proto::new_account_from_wire(
        a.account.as_ref().unwrap_or(&pb::NewAccount::default()),
        &"account",
    )
    .map_err(bad)?;
    Ok(Account {
        id: new.id,
        debits_pending: u128_from_wire(a.debits_pending.as_ref()),
        debits_posted: u128_from_wire(a.debits_posted.as_ref()),
        credits_pending: u128_from_wire(a.credits_pending.as_ref()),
        credits_posted: u128_from_wire(a.credits_posted.as_ref()),
        overdraft_limit: new.overdraft_limit,
        daily_debited: u128_from_wire(a.daily_debited.as_ref()),
        user_data_128: new.user_data_128,
        user_data_64: new.user_data_64,
        timestamp: a.timestamp,
        user_data_32: new.user_data_32,
        daily_day: a.daily_day,
        limit_profile: new.limit_profile,
        currency: new.currency,
        kind: new.kind,
        flags: new.flags,
        holds_pending: u16::try_from(a.holds_pending).map_err(|_| {
            ClientError::BadReply(format!("holds_pending {} out of range", a.holds_pending))
        })?,
        status: hazina_proto::status_from_wire(a.status, "status").map_err(bad)?,
    })
}

type Pending = (NewTransfer, oneshot::Sender<Result<ResultCode, ClientError>>);

/// Gathers transfers submitted one at a time by many tasks into batched `CreateTransfers`
/// calls: everything that arrives while earlier batches are in flight goes in the next one.
#[derive(Clone, Debug)]
pub struct TransferBatcher {
    submit: mpsc::Sender<Pending>,
}

impl TransferBatcher {
    /// Starts the batching task on the current runtime: batches of at most `batch_max`
    /// transfers, at most `in_flight` calls at a time.
    pub fn new(client: Client, batch_max: usize, in_flight: usize) -> TransferBatcher {
        let batch_max = batch_max.clamp(1, 8_190);
        let (submit, mut queue) = mpsc::channel::<Pending>(batch_max * in_flight.max(1) * 2);
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
                let mut batch = vec![first];
                while batch.len() < batch_max {
                    match queue.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let client = client.clone();
                tokio::spawn(async move {
                    let transfers: Vec<NewTransfer> = batch.iter().map(|(t, _)| *t).collect();
                    let outcome = client.create_transfers(&transfers).await;
                    drop(permit);
                    match outcome {
                        Ok(results) => {
                            for ((_, reply), result) in batch.into_iter().zip(results) {
                                let _ = reply.send(Ok(result));
                            }
                        }
                        Err(e) => {
                            for (_, reply) in batch {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        TransferBatcher { submit }
    }

    /// Submits one transfer and waits for its result. A linked transfer must go with its chain
    /// through [`Client::create_transfers`]: it is refused here.
    pub async fn submit(&self, transfer: NewTransfer) -> Result<ResultCode, ClientError> {
        if transfer.flags.contains(TransferFlags::LINKED) {
            return Err(ClientError::Rpc(Status::invalid_argument(
                "a linked transfer must be sent with its chain, not through the batcher",
            )));
        }
        let (reply, result) = oneshot::channel();
        self.submit.send((transfer, reply)).await.map_err(|_| ClientError::Stopped)?;
        result.await.map_err(|_| ClientError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn a_refusal_that_says_when_is_waited_for_that_long_and_no_longer_than_the_policy() {
        let max = Duration::from_millis(500);
        let refusal = |delay: Option<Duration>| {
            let details = ErrorDetails::with_retry_info(delay);
            Status::with_error_details(Code::ResourceExhausted, "storage is behind", details)
        };
        assert_eq!(
            server_wait(&refusal(Some(Duration::from_millis(37))), max),
            Some(Duration::from_millis(37))
        );
        assert_eq!(server_wait(&refusal(Some(Duration::from_secs(3))), max), Some(max));
        // No delay in the detail, or no detail: the policy's own backoff.
        assert_eq!(server_wait(&refusal(None), max), None);
        assert_eq!(server_wait(&Status::resource_exhausted("queue full"), max), None);
    }
}
