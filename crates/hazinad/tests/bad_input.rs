//! Bad input against the real `hazinad`: each gets its clear answer, nothing is changed by a
//! refused request, and the server keeps serving.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Server, raw_call};
use hazina_client::proto::v1 as pb;
use hazina_client::{Client, ClientError, RetryPolicy};
use hazina_core::{
    AccountFlags, AccountKind, CURRENCY_KES, NewAccount, NewTransfer, ResultCode, TransactionType,
    TransferFlags,
};
use tonic::Code;

const ALICE: u128 = 254_700_000_001;
const BOB: u128 = 254_700_000_002;
const BANK: u128 = 9_000_000_001;

fn wallet(id: u128) -> NewAccount {
    NewAccount {
        id,
        currency: CURRENCY_KES,
        kind: AccountKind::CustomerWallet as u16,
        flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        ..NewAccount::default()
    }
}

fn send(id: u128, from: u128, to: u128, amount: u128) -> NewTransfer {
    common::transfer(id, from, to, amount, TransactionType::SendMoney)
}

fn code(e: ClientError) -> (Code, String) {
    match e {
        ClientError::Rpc(status) => (status.code(), status.message().to_owned()),
        other => panic!("expected an RPC error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_answers_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let client = server.client().await;
    let no_retry =
        Client::connect_with(&server.addr, RetryPolicy { attempts: 1, ..RetryPolicy::default() })
            .await
            .expect("connect");

    let mut bank = wallet(BANK);
    bank.flags = AccountFlags(0); // The bank side of the e-money trust may go negative.
    bank.kind = AccountKind::TrustBank as u16;
    let results = client.create_accounts(&[wallet(ALICE), wallet(BOB), bank]).await.unwrap();
    assert_eq!(results, [ResultCode::Ok; 3]);
    assert_eq!(
        client.create_transfers(&[send(1, BANK, ALICE, 1_000_00)]).await.unwrap(),
        [ResultCode::Ok]
    );

    // Business outcomes are result codes in a successful reply.
    let cases = [
        (send(2, ALICE, BOB, 0), ResultCode::AmountMustNotBeZero),
        (send(u128::MAX, ALICE, BOB, 5_00), ResultCode::IdMustNotBeIntMax),
        (send(3, ALICE, BOB, u128::MAX), ResultCode::InsufficientFunds),
        (send(4, ALICE, 777, 5_00), ResultCode::CreditAccountNotFound),
        (send(5, 778, BOB, 5_00), ResultCode::DebitAccountNotFound),
        (send(1, BANK, ALICE, 999_00), ResultCode::ExistsWithDifferentFields),
        (send(1, BANK, ALICE, 1_000_00), ResultCode::Exists),
    ];
    for (transfer, expected) in cases {
        let results = client.create_transfers(&[transfer]).await.unwrap();
        assert_eq!(results, [expected], "{transfer:?}");
    }
    // An empty request is answered at once, with no results.
    assert!(no_retry.create_transfers(&[]).await.unwrap().is_empty());
    let before = client.status().await.unwrap();

    // Past the items limit: INVALID_ARGUMENT naming the limit, nothing applied.
    let many: Vec<NewTransfer> = (0..8_191).map(|i| send(10_000 + i, ALICE, BOB, 1)).collect();
    let (status, message) = code(no_retry.create_transfers(&many).await.unwrap_err());
    assert_eq!(status, Code::InvalidArgument);
    assert!(message.contains("8190"), "{message}");

    // Past the message size limit (4 MiB): refused by the transport, nothing applied.
    let mut huge = send(20_000, ALICE, BOB, 1);
    huge.user_data_128 = 1;
    let big: Vec<NewTransfer> = (0..8_000).map(|i| send(30_000 + i, ALICE, BOB, 1)).collect();
    let request = pb::CreateTransfersRequest {
        transfers: big
            .iter()
            .chain(std::iter::repeat_n(&huge, 120_000))
            .map(hazina_client::proto::new_transfer_to_wire)
            .collect(),
    };
    let mut raw_client = pb::ledger_client::LedgerClient::connect(server.addr.clone())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let error = raw_client.create_transfers(request).await.expect_err("a message past 4 MiB");
    assert!(
        matches!(error.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument),
        "{error:?}"
    );

    // A field out of range names the field.
    let mut wide = hazina_client::proto::new_transfer_to_wire(&send(40_000, ALICE, BOB, 1));
    wide.currency = 70_000;
    let error = raw_client
        .create_transfers(pb::CreateTransfersRequest { transfers: vec![wide] })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("transfers[0].currency"), "{}", error.message());

    // An open chain at the end of a request.
    let mut linked = send(40_001, ALICE, BOB, 1);
    linked.flags = TransferFlags::LINKED;
    let (status, message) = code(no_retry.create_transfers(&[linked]).await.unwrap_err());
    assert_eq!(status, Code::InvalidArgument);
    assert!(message.starts_with("transfers[0].flags"), "{message}");

    // Truncated protobuf: a length-delimited field that claims more bytes than follow.
    let truncated = vec![0x0a, 0x40, 0x0a, 0x02];
    let status = raw_call(&server.addr, "/hazina.v1.Ledger/CreateTransfers", truncated)
        .await
        .expect_err("a truncated message was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Garbage in place of a message.
    let status = raw_call(&server.addr, "/hazina.v1.Ledger/CreateAccounts", vec![0xff; 64])
        .await
        .expect_err("garbage was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Garbage bytes on the port, then a client that hangs up halfway.
    let host = server.addr.trim_start_matches("http://").to_owned();
    for _ in 0..3 {
        let mut socket = std::net::TcpStream::connect(&host).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage\xff\xfe").unwrap();
        let mut sink = Vec::new();
        let _ = socket.read_to_end(&mut sink);
    }
    {
        let mut socket = std::net::TcpStream::connect(&host).unwrap();
        socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00").unwrap();
    }

    // Nothing refused above changed the ledger, and it still serves.
    let after = client.status().await.unwrap();
    assert_eq!(after.digest, before.digest);
    assert_eq!(after.commit_index, before.commit_index);
    let ids: Vec<u128> =
        many.iter().map(|t| t.id).chain([20_000, 30_000, 40_000, 40_001]).collect();
    for chunk in ids.chunks(8_190) {
        assert!(client.lookup_transfers(chunk).await.unwrap().is_empty());
    }
    assert_eq!(
        client.create_transfers(&[send(6, ALICE, BOB, 250_00)]).await.unwrap(),
        [ResultCode::Ok]
    );
    let accounts = client.lookup_accounts(&[ALICE, BOB]).await.unwrap();
    assert_eq!(accounts[0].balance(), 750_00);
    assert_eq!(accounts[1].balance(), 250_00);

    // A node with smaller entries refuses, with the reason, a request that cannot fit in one.
    let small = Server::start(&dir.path().join("small"), &["--batch-max", "100"]);
    let small_client =
        Client::connect_with(&small.addr, RetryPolicy { attempts: 1, ..RetryPolicy::default() })
            .await
            .expect("connect");
    let hundred_one: Vec<NewTransfer> = (0..101).map(|i| send(50_000 + i, ALICE, BOB, 1)).collect();
    let (status, message) = code(small_client.create_transfers(&hundred_one).await.unwrap_err());
    assert_eq!(status, Code::InvalidArgument);
    assert!(message.contains("--batch-max"), "{message}");
    let results = small_client.create_transfers(&hundred_one[..100]).await.unwrap();
    assert_eq!(results, [ResultCode::DebitAccountNotFound; 100]);
}
