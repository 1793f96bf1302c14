//! `hazina`: the operator command line of the Hazina ledger.
//!
//! Amounts are given and shown in shillings with up to two decimals (`250.50`), and carried as
//! integer cents: no floating point anywhere.

use std::process::ExitCode;

/// Prints a line to standard output, as `println!` does; but a closed pipe (`hazina admin
/// status | head -1`) ends the process quietly with the status a shell gives a command that
/// SIGPIPE ended (141), as other command-line tools do, where `println!` panics.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(PIPE_CLOSED);
            }
            panic!("failed printing to stdout: {e}");
        }
    }};
}

/// The exit status after a write to a closed pipe: 128 + SIGPIPE.
const PIPE_CLOSED: i32 = 141;

use clap::{Parser, Subcommand};
use hazina_client::Client;
use hazina_core::{
    AccountFlags, AccountKind, AccountStatus, CURRENCY_KES, NewAccount, NewTransfer, ResultCode,
    TransactionType, TransferFlags,
};

#[derive(Debug, Parser)]
#[command(name = "hazina", version, about = "Operate a Hazina ledger node")]
struct Cli {
    /// Address of the node's gRPC API; for a replicated group, every site's, comma-separated
    /// (requests follow the primary).
    #[arg(long, global = true, env = "HAZINA_ADDR", default_value = "http://127.0.0.1:7400")]
    addr: String,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Show the node's log position, digest and counts.
    Status,
    /// Create an account.
    CreateAccount {
        id: u128,
        /// customer-wallet, merchant-till, paybill, agent-float, fee-revenue, tax-payable,
        /// suspense, settlement, ... (docs/GLOSSARY.md), or the kind's number.
        #[arg(long, default_value = "customer-wallet")]
        kind: String,
        /// Allow the balance to go below zero, or any debits at all: a wallet may not.
        #[arg(long)]
        may_go_negative: bool,
        /// Overdraft line in shillings (with a wallet's balance check).
        #[arg(long, default_value = "0")]
        overdraft: String,
        #[arg(long, default_value_t = 0)]
        limit_profile: u32,
        #[arg(long, default_value_t = CURRENCY_KES)]
        currency: u16,
    },
    /// Send money from one account to another.
    Transfer {
        /// The transfer's id: resending the same id is safe and returns the first outcome.
        #[arg(long)]
        id: u128,
        #[arg(long)]
        from: u128,
        #[arg(long)]
        to: u128,
        /// Shillings, up to two decimals.
        #[arg(long)]
        amount: String,
        /// send-money, buy-goods, pay-bill, cash-in, cash-out, ... or the type's number.
        #[arg(long = "type", default_value = "send-money")]
        tx_type: String,
        /// Place a hold instead (post or void it later), expiring after this many seconds (0:
        /// never).
        #[arg(long)]
        hold_seconds: Option<u32>,
        /// Post the hold with this id (amount: what to post, at most the hold).
        #[arg(long, conflicts_with_all = ["void", "hold_seconds"])]
        post: Option<u128>,
        /// Void the hold with this id.
        #[arg(long, conflicts_with_all = ["post", "hold_seconds"])]
        void: Option<u128>,
        #[arg(long, default_value_t = CURRENCY_KES)]
        currency: u16,
    },
    /// Show accounts.
    Account { ids: Vec<u128> },
    /// Show transfer records.
    LookupTransfer { ids: Vec<u128> },
    /// Print an account's statement with the balance after each line.
    Statement {
        id: u128,
        /// First timestamp (nanoseconds since the epoch) of the statement.
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Freeze debits (credits still arrive).
    FreezeDebits { id: u128 },
    /// Freeze all movements.
    Freeze { id: u128 },
    /// Make an account active again.
    Unfreeze { id: u128 },
    /// Close an account (zero balance, no holds).
    Close { id: u128 },
    /// Operate a replicated group (give every site in --addr).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Each site's role, term, log and applied positions, lag, and the last change of primary.
    Status,
    /// Move the primary to another site, with no loss and a short pause in writes.
    Switchover {
        /// The site to become primary.
        #[arg(long)]
        to: u64,
    },
}

/// `hazina admin status`: asks every site on its own, so that one that is down shows as such.
async fn admin_status(addrs: &str) -> ExitCode {
    out!(
        "{:<24} {:>4} {:<9} {:>6} {:>10} {:>10} {:>10} {:>7}  last change",
        "address",
        "site",
        "role",
        "term",
        "last",
        "commit",
        "applied",
        "primary"
    );
    let mut primaries = 0;
    let mut lags = Vec::new();
    let mut snapshots = Vec::new();
    for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let retry = hazina_client::RetryPolicy { attempts: 1, ..Default::default() };
        let status = match Client::connect_with(addr, retry).await {
            Ok(client) => client.status().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match status {
            Ok(s) => {
                let role = match hazina_client::proto::v1::Role::try_from(s.role) {
                    Ok(hazina_client::proto::v1::Role::Primary) => "primary",
                    Ok(hazina_client::proto::v1::Role::Standby) => "standby",
                    Ok(hazina_client::proto::v1::Role::Candidate) => "candidate",
                    Ok(hazina_client::proto::v1::Role::Single) => "single",
                    _ => "unknown",
                };
                if role == "primary" {
                    primaries += 1;
                    lags = s.sites.clone();
                }
                out!(
                    "{addr:<24} {:>4} {role:<9} {:>6} {:>10} {:>10} {:>10} {:>7}  {}",
                    s.site_id,
                    s.term,
                    s.last_index,
                    s.commit_index,
                    s.applied_index,
                    s.leader_site,
                    s.last_change
                );
                snapshots.push((s.site_id, s.snapshot_index, s.snapshots_installed));
            }
            Err(e) => out!("{addr:<24} unreachable: {e}"),
        }
    }
    for (site, index, installed) in snapshots {
        out!(
            "site {site} keeps its log after snapshot {index}; installed {installed} from the primary"
        );
    }
    for site in &lags {
        out!(
            "site {} matches the primary's log up to {} ({} entries behind)",
            site.site_id,
            site.match_index,
            site.lag_entries
        );
    }
    if primaries == 1 { ExitCode::SUCCESS } else { ExitCode::from(2) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hazina: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hazina: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses shillings with up to two decimals into cents, exactly.
fn parse_shillings(text: &str) -> Result<u128, String> {
    let bad = || format!("{text:?} is not an amount in shillings (like 100 or 250.50)");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || fraction.len() > 2 || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let cents: u128 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
    whole.checked_mul(100).and_then(|w| w.checked_add(cents)).ok_or_else(bad)
}

fn shillings(cents: u128) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn signed_shillings(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}", shillings(cents.unsigned_abs()))
}

fn kebab(name: &str) -> String {
    name.chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let dash = (i > 0 && c.is_ascii_uppercase()).then_some('-');
            dash.into_iter().chain(std::iter::once(c.to_ascii_lowercase()))
        })
        .collect()
}

fn parse_kind(text: &str) -> Result<u16, String> {
    if let Ok(code) = text.parse() {
        return Ok(code);
    }
    AccountKind::ALL
        .iter()
        .find(|k| kebab(&format!("{k:?}")) == text)
        .map(|&k| k as u16)
        .ok_or_else(|| format!("unknown account kind {text:?}"))
}

fn parse_type(text: &str) -> Result<u16, String> {
    if let Ok(code) = text.parse() {
        return Ok(code);
    }
    TransactionType::ALL
        .iter()
        .find(|t| kebab(&format!("{t:?}")) == text)
        .map(|&t| t as u16)
        .ok_or_else(|| format!("unknown transaction type {text:?}"))
}

/// Prints one result per line; the exit code says whether all were applied.
fn report(results: &[ResultCode]) -> ExitCode {
    for result in results {
        out!("{} ({})", result.name(), *result as u16);
    }
    if results.iter().all(|r| r.is_applied()) { ExitCode::SUCCESS } else { ExitCode::from(2) }
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Action::Admin { action: AdminAction::Status } = cli.command {
        return Ok(admin_status(&cli.addr).await);
    }
    let client = Client::connect(&cli.addr).await?;
    let code = match cli.command {
        Action::Admin { action: AdminAction::Switchover { to } } => {
            let done = client.switchover(to).await?;
            out!(
                "site {} is primary in term {}; writes paused {} ms",
                done.leader_site,
                done.term,
                done.pause_ms
            );
            ExitCode::SUCCESS
        }
        // Answered before connecting, above, so that it works with sites down.
        Action::Admin { action: AdminAction::Status } => admin_status(&cli.addr).await,
        Action::Status => {
            let s = client.status().await?;
            let digest = hazina_client::proto::u128_from_wire(s.digest.as_ref());
            out!("version          {}", s.version);
            out!("commit index     {}", s.commit_index);
            out!("checkpoint index {}", s.checkpoint_index);
            out!("term             {}", s.term);
            out!("accounts         {}", s.accounts);
            out!("queued commands  {}", s.queued_commands);
            out!("last timestamp   {}", s.timestamp_last);
            out!("digest           {digest:032x}");
            ExitCode::SUCCESS
        }
        Action::CreateAccount { id, kind, may_go_negative, overdraft, limit_profile, currency } => {
            let overdraft_limit = parse_shillings(&overdraft)?;
            let flags = if may_go_negative {
                AccountFlags(0)
            } else {
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
            };
            let account = NewAccount {
                id,
                currency,
                kind: parse_kind(&kind)?,
                flags,
                overdraft_limit,
                limit_profile,
                ..NewAccount::default()
            };
            report(&client.create_accounts(&[account]).await?)
        }
        Action::Transfer { id, from, to, amount, tx_type, hold_seconds, post, void, currency } => {
            let mut transfer = NewTransfer {
                id,
                debit_account_id: from,
                credit_account_id: to,
                amount: parse_shillings(&amount)?,
                currency,
                tx_type: parse_type(&tx_type)?,
                ..NewTransfer::default()
            };
            if let Some(seconds) = hold_seconds {
                transfer.flags = TransferFlags::PENDING;
                transfer.timeout_s = seconds;
            } else if let Some(hold) = post {
                transfer.flags = TransferFlags::POST_PENDING;
                transfer.pending_id = hold;
            } else if let Some(hold) = void {
                transfer.flags = TransferFlags::VOID_PENDING;
                transfer.pending_id = hold;
            }
            report(&client.create_transfers(&[transfer]).await?)
        }
        Action::Account { ids } => {
            let accounts = client.lookup_accounts(&ids).await?;
            for a in &accounts {
                out!(
                    "{}  kind {}  {:?}  balance {}  held out {}  held in {}  holds {}  today {}",
                    a.id,
                    a.kind,
                    a.status,
                    signed_shillings(a.balance()),
                    shillings(a.debits_pending),
                    shillings(a.credits_pending),
                    a.holds_pending,
                    shillings(a.daily_debited),
                );
            }
            if accounts.len() == ids.len() { ExitCode::SUCCESS } else { ExitCode::from(2) }
        }
        Action::LookupTransfer { ids } => {
            let transfers = client.lookup_transfers(&ids).await?;
            for t in &transfers {
                out!(
                    "{}  {} -> {}  {}  type {}  {} ({})  hold {:?}  at {}",
                    t.new.id,
                    t.new.debit_account_id,
                    t.new.credit_account_id,
                    shillings(t.new.amount),
                    t.new.tx_type,
                    t.result.name(),
                    t.result as u16,
                    t.hold,
                    t.timestamp,
                );
            }
            if transfers.len() == ids.len() { ExitCode::SUCCESS } else { ExitCode::from(2) }
        }
        Action::Statement { id, from, limit } => {
            let page = client.history(id, from, limit).await?;
            out!("opening balance {}", signed_shillings(page.opening_balance));
            for e in &page.entries {
                let sign = if e.credit { "+" } else { "-" };
                out!(
                    "{}  {}  {sign}{:>14}  balance {:>14}  type {}  with {}",
                    e.timestamp,
                    e.transfer_id,
                    shillings(e.amount),
                    signed_shillings(e.balance_after),
                    e.tx_type,
                    e.counterparty_id,
                );
            }
            if let Some(next) = page.next_from {
                out!("more: --from {next}");
            }
            ExitCode::SUCCESS
        }
        Action::FreezeDebits { id } => {
            report(&client.set_account_status(&[(id, AccountStatus::DebitsFrozen)]).await?)
        }
        Action::Freeze { id } => {
            report(&client.set_account_status(&[(id, AccountStatus::Frozen)]).await?)
        }
        Action::Unfreeze { id } => {
            report(&client.set_account_status(&[(id, AccountStatus::Active)]).await?)
        }
        Action::Close { id } => {
            report(&client.set_account_status(&[(id, AccountStatus::Closed)]).await?)
        }
    };
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shillings_parse_exactly_and_refuse_what_is_not_an_amount() {
        assert_eq!(parse_shillings("100"), Ok(100_00));
        assert_eq!(parse_shillings("250.5"), Ok(250_50));
        assert_eq!(parse_shillings("0.07"), Ok(7));
        for bad in ["", ".5", "1.234", "-3", "1e5", "12,00", "abc"] {
            assert!(parse_shillings(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(shillings(250_50), "250.50");
        assert_eq!(signed_shillings(-7), "-0.07");
    }

    #[test]
    fn kinds_and_types_by_name() {
        assert_eq!(parse_kind("customer-wallet"), Ok(AccountKind::CustomerWallet as u16));
        assert_eq!(parse_type("cash-out"), Ok(TransactionType::CashOut as u16));
        assert!(parse_kind("piggy-bank").is_err());
    }
}
