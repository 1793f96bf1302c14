//! Starts the real `hazinad` as a child process on 127.0.0.1 and stops it, whatever happens.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hazina_client::Client;

/// A `hazinad` child process. Dropping it kills the process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `hazinad` on a free port with its data in `data_dir`, and waits until it serves.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let ready = data_dir.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("open the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_hazinad"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--ready-file"])
            .arg(&ready)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start hazinad");
        let mut server =
            Server { child: Some(child), addr: String::new(), data_dir: data_dir.into() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&ready) {
                server.addr = format!("http://{addr}");
                return server;
            }
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "hazinad exited with {status} before serving; see {}",
                    data_dir.with_extension("log").display()
                );
            }
            assert!(Instant::now() < deadline, "hazinad did not serve within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr).await.expect("connect to hazinad")
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hazinad did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC call with the given bytes as the message and the reply's bytes back: for malformed
/// protobuf, and for clients that know the API only from reflection.
pub async fn raw_call(addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    #[derive(Clone, Copy, Debug, Default)]
    struct Raw;
    #[derive(Debug)]
    struct RawEncoder;
    #[derive(Debug)]
    struct RawDecoder;
    impl tonic::codec::Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            src: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<Vec<u8>>, tonic::Status> {
            let n = bytes::Buf::remaining(src);
            Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("a gRPC path");
    grpc.unary(tonic::Request::new(body), path, Raw).await.map(tonic::Response::into_inner)
}
