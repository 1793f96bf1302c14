//! A client that knows nothing of this repository but the server's address: it discovers the
//! API through gRPC server reflection, as `grpcurl` does, builds requests from JSON, and creates
//! accounts and a transfer. Also checks the standard health service.

mod common;

use common::{Server, raw_call};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(addr.to_owned())
        .expect("address")
        .connect()
        .await
        .expect("connect")
}

async fn reflect(addr: &str, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflect")
        .into_inner();
    let reply: ServerReflectionResponse =
        replies.next().await.expect("one reply").expect("a reflection reply");
    reply.message_response.expect("a response")
}

/// Calls `method` of `hazina.v1.Ledger` with a request written in JSON, as grpcurl would.
async fn call_json(addr: &str, pool: &DescriptorPool, method: &str, json: &str) -> DynamicMessage {
    let service = pool.get_service_by_name("hazina.v1.Ledger").expect("the Ledger service");
    let method = service.methods().find(|m| m.name() == method).expect("the method");
    let mut de = serde_json::Deserializer::from_str(json);
    let request = DynamicMessage::deserialize(method.input(), &mut de).expect("JSON request");
    let path = format!("/hazina.v1.Ledger/{}", method.name());
    let reply = raw_call(addr, &path, request.encode_to_vec()).await.expect("the call succeeds");
    DynamicMessage::decode(method.output(), reply.as_slice()).expect("a reply of the declared type")
}

fn result_names(pool: &DescriptorPool, reply: &DynamicMessage) -> Vec<String> {
    let codes = pool.get_enum_by_name("hazina.v1.ResultCode").expect("the ResultCode enum");
    let Some(Value::List(results)) = reply.get_field_by_name("results").map(|v| v.into_owned())
    else {
        panic!("no results in {reply:?}")
    };
    results
        .iter()
        .map(|v| {
            let number = v.as_enum_number().expect("an enum value");
            codes.get_value(number).expect("a declared code").name().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_built_from_reflection_alone_creates_accounts_and_transfers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&dir.path().join("data"), &[]);

    let mut health = HealthClient::new(channel(&server.addr).await);
    let check = HealthCheckRequest { service: "hazina.v1.Ledger".into() };
    let status = health.check(check).await.expect("health").into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let MessageResponse::ListServicesResponse(list) =
        reflect(&server.addr, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"hazina.v1.Ledger"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let MessageResponse::FileDescriptorResponse(files) =
        reflect(&server.addr, MessageRequest::FileContainingSymbol("hazina.v1.Ledger".into()))
            .await
    else {
        panic!("not a file descriptor")
    };
    let mut pool = DescriptorPool::new();
    for file in &files.file_descriptor_proto {
        pool.decode_file_descriptor_proto(file.as_slice()).expect("a valid descriptor");
    }

    let accounts = r#"{"accounts": [
        {"id": {"low": "9000"}, "currency": 404, "kind": 14},
        {"id": {"low": "254700000001"}, "currency": 404, "kind": 1, "flags": 1},
        {"id": {"low": "254700000002"}, "currency": 404, "kind": 1, "flags": 1}
    ]}"#;
    let reply = call_json(&server.addr, &pool, "CreateAccounts", accounts).await;
    assert_eq!(result_names(&pool, &reply), ["RESULT_CODE_OK"; 3]);

    let transfers = r#"{"transfers": [
        {"id": {"low": "1"}, "debitAccountId": {"low": "9000"},
         "creditAccountId": {"low": "254700000001"}, "amount": {"low": "100000"},
         "currency": 404, "txType": 4},
        {"id": {"low": "2"}, "debitAccountId": {"low": "254700000001"},
         "creditAccountId": {"low": "254700000002"}, "amount": {"low": "25050"},
         "currency": 404, "txType": 1},
        {"id": {"low": "3"}, "debitAccountId": {"low": "254700000001"},
         "creditAccountId": {"low": "254700000002"}, "amount": {"low": "500000"},
         "currency": 404, "txType": 1}
    ]}"#;
    let reply = call_json(&server.addr, &pool, "CreateTransfers", transfers).await;
    assert_eq!(
        result_names(&pool, &reply),
        ["RESULT_CODE_OK", "RESULT_CODE_OK", "RESULT_CODE_INSUFFICIENT_FUNDS"]
    );

    let lookup = r#"{"ids": [{"low": "254700000002"}]}"#;
    let reply = call_json(&server.addr, &pool, "LookupAccounts", lookup).await;
    let json = serde_json::to_value(&reply).expect("reply as JSON");
    assert_eq!(json["accounts"][0]["creditsPosted"]["low"], "25050", "{json}");
}
