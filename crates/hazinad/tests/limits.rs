//! The real `hazinad` bounds what callers hold (docs/adr/0013-bounded-callers.md): it announces
//! its streams per connection, answers ledger calls past `--calls-max` with RESOURCE_EXHAUSTED
//! while status and health calls still pass, and refuses connections past `--connections-max`
//! (their calls answered RESOURCE_EXHAUSTED naming the limit, then closed); each bound serves
//! again once a holder lets go.

mod common;

use std::time::{Duration, Instant};

use common::{Server, free_ports, metric, scrape};
use hazina_client::proto::v1 as pb;
use pb::ledger_client::LedgerClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const WITHIN: Duration = Duration::from_secs(10);

/// HTTP/2 frames as (type, flags, payload), read from `io` until `stop` says enough or the
/// connection ends.
async fn frames(io: &mut TcpStream, stop: impl Fn(u8, u8) -> bool) -> Vec<(u8, u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let mut header = [0u8; 9];
        if io.read_exact(&mut header).await.is_err() {
            return got;
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        io.read_exact(&mut payload).await.expect("a whole frame");
        let (kind, flags) = (header[3], header[4]);
        got.push((kind, flags, payload));
        if stop(kind, flags) {
            return got;
        }
    }
}

/// The client's connection preface and an empty SETTINGS frame (RFC 9113, section 3.4).
const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// A LookupAccounts call of no ids on `channel`: a ledger call that changes nothing.
async fn lookup(channel: &Channel) -> Result<(), tonic::Status> {
    let mut client = LedgerClient::new(channel.clone());
    client.lookup_accounts(pb::LookupAccountsRequest { ids: vec![] }).await.map(|_| ())
}

#[tokio::test]
async fn a_node_bounds_its_connections_streams_and_calls() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let metrics = format!("127.0.0.1:{}", free_ports(1)[0]);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--connections-max",
            "3",
            "--streams-per-connection-max",
            "8",
            "--calls-max",
            "2",
            "--metrics-listen",
            &metrics,
        ],
    );
    let addr = server.addr.trim_start_matches("http://").to_string();

    // Streams: the server's first SETTINGS frame announces 8 (MAX_CONCURRENT_STREAMS, 0x3).
    // The probe's connection is closed before the next part.
    {
        let mut io = TcpStream::connect(&addr).await.expect("connect");
        io.write_all(CLIENT_PREFACE).await.expect("preface");
        let got =
            tokio::time::timeout(WITHIN, frames(&mut io, |k, f| k == SETTINGS && f & ACK == 0))
                .await
                .expect("settings within 10 s");
        let (_, _, settings) = got.last().expect("a SETTINGS frame");
        let announced = settings.chunks(6).find_map(|entry| {
            (entry[..2] == [0, 3]).then(|| u32::from_be_bytes(entry[2..6].try_into().unwrap()))
        });
        assert_eq!(announced, Some(8), "SETTINGS_MAX_CONCURRENT_STREAMS");
    }

    // Calls: two ledger calls whose requests never end hold both slots (connection 1).
    let holder = TcpStream::connect(&addr).await.expect("connect");
    let (mut h2, h2_connection) = h2::client::handshake(holder).await.expect("HTTP/2 handshake");
    let h2_task = tokio::spawn(h2_connection);
    let mut held = Vec::new();
    for _ in 0..2 {
        let request =
            http::Request::post(format!("http://{addr}/hazina.v1.Ledger/CreateTransfers"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
        let (_answer, body) = h2.send_request(request, false).expect("open a stream");
        held.push(body);
    }
    // A third ledger call is refused at once, naming the flag (connection 2).
    let channel =
        Channel::from_shared(server.addr.clone()).expect("uri").connect().await.expect("connect");
    let deadline = Instant::now() + WITHIN;
    let refused = loop {
        match lookup(&channel).await {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => break status,
            other => {
                assert!(Instant::now() < deadline, "no refusal within 10 s: {other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(refused.message().contains("--calls-max"), "{}", refused.message());
    // Status and health calls still pass on the saturated node.
    let status = LedgerClient::new(channel.clone()).get_status(pb::GetStatusRequest {}).await;
    assert!(status.is_ok(), "GetStatus on a saturated node: {status:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
    assert!(check.is_ok(), "a health check on a saturated node: {check:?}");
    // One holder gives up: its slot serves again.
    held.pop().expect("held").send_reset(h2::Reason::CANCEL);
    let deadline = Instant::now() + WITHIN;
    while let Err(status) = lookup(&channel).await {
        assert!(Instant::now() < deadline, "the freed slot did not serve within 10 s: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Connections: a third one that says nothing holds the last slot; a call on a fourth is
    // answered RESOURCE_EXHAUSTED, naming the limit, and the fourth is then closed.
    let silent = TcpStream::connect(&addr).await.expect("connect");
    let deadline = Instant::now() + WITHIN;
    let refused = loop {
        let fourth = Channel::from_shared(server.addr.clone()).expect("uri").connect().await;
        let fourth = fourth.expect("a connection past the bound is still accepted");
        match lookup(&fourth).await {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => break status,
            // Served: the silent connection was not yet accepted. Try again.
            other => assert!(Instant::now() < deadline, "no refusal within 10 s: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = refused.message();
    assert!(text.contains("3 connections") && text.contains("--connections-max"), "{text}");
    // A raw one sees its end: the server's settings, then the connection closed within
    // about a second.
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    raw.write_all(CLIENT_PREFACE).await.expect("preface");
    let got = tokio::time::timeout(WITHIN, frames(&mut raw, |_, _| false))
        .await
        .expect("closed within 10 s");
    assert!(got.iter().any(|(kind, _, _)| *kind == SETTINGS), "{got:?}");
    // The silent one leaves: a new connection is served.
    drop(silent);
    let deadline = Instant::now() + WITHIN;
    loop {
        let next = Channel::from_shared(server.addr.clone()).expect("uri").connect().await;
        match lookup(&next.expect("connect")).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "no connection served within 10 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let body = scrape(&metrics).await;
    let refused = metric(&body, "hazina_connections_refused_total{listener=\"api\"}");
    assert!(refused.is_some_and(|n| n >= 2.0), "connections refused: {refused:?}");
    let shed = metric(&body, "hazina_requests_rejected_total{reason=\"calls_max\"}");
    assert!(shed.is_some_and(|n| n >= 1.0), "calls refused: {shed:?}");
    let open = metric(&body, "hazina_connections{listener=\"api\"}");
    assert!(open.is_some_and(|n| (1.0..=3.0).contains(&n)), "connections open: {open:?}");
    drop(held);
    h2_task.abort();
}
