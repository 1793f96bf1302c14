//! Bounds on what callers can hold in the node: connections, HTTP/2 streams on each, and
//! ledger calls in progress (docs/adr/0013-bounded-callers.md).
//!
//! - **Connections** ([`bounded`]): past `--connections-max`, a new connection is served for
//!   at most [`REFUSING_TIME`], every call on it answered `RESOURCE_EXHAUSTED` with a text that
//!   names the limit, then closed: the caller reads why, in the status its client already
//!   handles, and the listener's queue never fills with callers left waiting. At most
//!   [`REFUSING_MAX`] are being refused so at once; past that, and on the peer listener, a
//!   connection past the bound is closed at once.
//! - **Streams** on one connection: `--streams-per-connection-max`, announced to the client in
//!   the server's HTTP/2 settings (`SETTINGS_MAX_CONCURRENT_STREAMS`); a client queues the calls
//!   past it on its side.
//! - **Ledger calls in progress** ([`CallsLimitLayer`]): a call of `hazina.v1.Ledger` holds a
//!   slot from its headers until its answer, its request's decoding included, so the slots bound
//!   the request bodies held in memory (`--calls-max` × 4 MiB at worst). Past them a call gets
//!   `RESOURCE_EXHAUSTED` at once. A call that runs past [`CALL_TIME_MAX`] (a body never
//!   finished, say) is answered `DEADLINE_EXCEEDED` and frees its slot. `GetStatus`, health,
//!   reflection and admin calls take no slot: an operator can still look at a saturated node
//!   and act on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default of `--connections-max`.
pub const CONNECTIONS_MAX: u32 = 4_096;
/// Default of `--streams-per-connection-max`.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1_024;
/// Default of `--calls-max`.
pub const CALLS_MAX: u32 = 2_048;
/// Connections to the peer service (site to site) at most: each site opens a few.
pub const PEER_CONNECTIONS_MAX: usize = 64;
/// The longest a ledger call may take, its request's upload included.
pub const CALL_TIME_MAX: Duration = Duration::from_secs(30);

/// Connections past the bound being refused at once at most (served briefly, every call
/// answered `RESOURCE_EXHAUSTED`); past it the next ones are closed without an answer.
pub const REFUSING_MAX: usize = 64;
/// How long a refused connection is served before it is closed: long enough for its first
/// calls to be answered.
pub const REFUSING_TIME: Duration = Duration::from_secs(1);
/// Refusals are logged at most once in this interval (each is counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// An accepted connection: one of the listener's connections, whose slot dropping it frees,
/// or one past the bound, being refused.
#[derive(Debug)]
pub struct Connection {
    io: TcpStream,
    place: Place,
}

#[derive(Debug)]
enum Place {
    /// Holds its slot until dropped.
    Served {
        _slot: Slot,
    },
    Refused(Refusal),
}

#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("hazina_connections", "listener" => self.listener).decrement(1.0);
    }
}

/// A connection past the bound: its calls are refused, and it reads as closed by its caller
/// once `closes` is due, which ends it.
#[derive(Debug)]
struct Refusal {
    max: usize,
    closes: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

/// What the calls of a connection know of it: its addresses, and whether it is past the
/// bound (the bound, then).
#[derive(Debug, Clone)]
pub struct CallerInfo {
    pub tcp: TcpConnectInfo,
    refused: Option<usize>,
}

impl Connected for Connection {
    type ConnectInfo = CallerInfo;

    fn connect_info(&self) -> CallerInfo {
        let refused = match &self.place {
            Place::Served { .. } => None,
            Place::Refused(refusal) => Some(refusal.max),
        };
        CallerInfo { tcp: self.io.connect_info(), refused }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Place::Refused(refusal) = &mut self.place
            && refusal.closes.as_mut().poll(cx).is_ready()
        {
            // The end of the stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connections of `incoming` while fewer than `max` are open. Each one past it is
/// counted in `hazina_connections_refused_total`, logged at most once every 10 s, and refused:
/// served for [`REFUSING_TIME`] with every call answered `RESOURCE_EXHAUSTED` (by
/// [`CallsLimitLayer`]) while fewer than `refusing_max` are, else closed at once. `listener`
/// names the listener in metrics and logs ("api" or "peer"). Errors of `incoming` pass
/// through.
pub fn bounded(
    incoming: impl Stream<Item = std::io::Result<TcpStream>>,
    max: usize,
    refusing_max: usize,
    listener: &'static str,
) -> impl Stream<Item = std::io::Result<Connection>> {
    let slots = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(refusing_max));
    let mut refused_since_log = 0u64;
    let mut last_log: Option<Instant> = None;
    incoming.filter_map(move |accepted| {
        let io = match accepted {
            Ok(io) => io,
            Err(e) => return Some(Err(e)),
        };
        if let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
            metrics::gauge!("hazina_connections", "listener" => listener).increment(1.0);
            let place = Place::Served { _slot: Slot { _permit: permit, listener } };
            return Some(Ok(Connection { io, place }));
        }
        metrics::counter!("hazina_connections_refused_total", "listener" => listener).increment(1);
        refused_since_log += 1;
        if last_log.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                listener,
                connections_max = max,
                refused = refused_since_log,
                "connections refused: the listener holds its most"
            );
            refused_since_log = 0;
            last_log = Some(Instant::now());
        }
        let permit = Arc::clone(&refusing).try_acquire_owned().ok()?;
        let closes = Box::pin(tokio::time::sleep(REFUSING_TIME));
        let place = Place::Refused(Refusal { max, closes, _permit: permit });
        Some(Ok(Connection { io, place }))
    })
}

/// The path prefix of the calls that take a slot.
const LEDGER_CALLS: &str = "/hazina.v1.Ledger/";
/// The one ledger call that takes none: the status operators read.
const STATUS_CALL: &str = "/hazina.v1.Ledger/GetStatus";

/// Whether a call to `path` takes a slot.
fn takes_a_slot(path: &str) -> bool {
    path.starts_with(LEDGER_CALLS) && path != STATUS_CALL
}

/// Bounds the ledger calls in progress across all connections (see the module's notes).
#[derive(Debug, Clone)]
pub struct CallsLimitLayer {
    slots: Arc<Semaphore>,
    max: usize,
    time_max: Duration,
}

impl CallsLimitLayer {
    pub fn new(max: usize, time_max: Duration) -> CallsLimitLayer {
        CallsLimitLayer { slots: Arc::new(Semaphore::new(max)), max, time_max }
    }
}

impl<S> tower_layer::Layer<S> for CallsLimitLayer {
    type Service = CallsLimit<S>;

    fn layer(&self, inner: S) -> CallsLimit<S> {
        CallsLimit { inner, limit: self.clone() }
    }
}

/// The service of [`CallsLimitLayer`].
#[derive(Debug, Clone)]
pub struct CallsLimit<S> {
    inner: S,
    limit: CallsLimitLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for CallsLimit<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(max) = request.extensions().get::<CallerInfo>().and_then(|c| c.refused) {
            let status = Status::resource_exhausted(format!(
                "{max} connections open, the most this node serves (--connections-max): \
                 this connection closes within a second; retry shortly"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        if !takes_a_slot(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(slot) = Arc::clone(&self.limit.slots).try_acquire_owned() else {
            metrics::counter!("hazina_requests_rejected_total", "reason" => "calls_max")
                .increment(1);
            let status = Status::resource_exhausted(format!(
                "{} ledger calls in progress, the most this node serves at once \
                 (--calls-max): retry shortly",
                self.limit.max
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let answer = self.inner.call(request);
        let time_max = self.limit.time_max;
        Box::pin(async move {
            let _slot = slot;
            match tokio::time::timeout(time_max, answer).await {
                Ok(answer) => answer,
                Err(_) => {
                    metrics::counter!("hazina_requests_rejected_total", "reason" => "call_time")
                        .increment(1);
                    let status = Status::deadline_exceeded(format!(
                        "the call took more than {} s, its request included; \
                         it may have been applied: resend it with the same ids",
                        time_max.as_secs()
                    ));
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower_service::Service;

    /// Answers `/slow/...` and ledger calls under `/hazina.v1.Ledger/Slow` never, others at
    /// once with an empty body.
    #[derive(Clone)]
    struct Stub;

    impl Service<http::Request<()>> for Stub {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = BoxFuture<Result<http::Response<String>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            if request.uri().path().ends_with("Slow") {
                Box::pin(std::future::pending())
            } else {
                Box::pin(std::future::ready(Ok(http::Response::new("done".to_string()))))
            }
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).expect("request")
    }

    fn grpc_status(response: &http::Response<String>) -> Option<&str> {
        response.headers().get("grpc-status").map(|v| v.to_str().expect("ascii"))
    }

    /// Two slots: two slow ledger calls hold them, a third ledger call is refused at once
    /// (RESOURCE_EXHAUSTED, naming the flag) while status, health and admin calls pass; past the time
    /// limit the slow calls are answered DEADLINE_EXCEEDED and the slots serve again.
    #[tokio::test(start_paused = true)]
    async fn ledger_calls_past_the_limit_are_refused_and_slow_ones_end() {
        let layer = CallsLimitLayer::new(2, Duration::from_secs(30));
        let mut service = tower_layer::Layer::layer(&layer, Stub);
        let slow_1 = tokio::spawn(service.call(request("/hazina.v1.Ledger/Slow")));
        let slow_2 = tokio::spawn(service.call(request("/hazina.v1.Ledger/Slow")));
        tokio::task::yield_now().await;

        let refused = service.call(request("/hazina.v1.Ledger/CreateTransfers")).await.unwrap();
        assert_eq!(grpc_status(&refused), Some("8"), "RESOURCE_EXHAUSTED");
        let status = Status::from_header_map(refused.headers()).expect("a status");
        assert!(status.message().contains("--calls-max"), "{}", status.message());
        assert_eq!(refused.body(), "", "no call was made");

        for path in [
            "/grpc.health.v1.Health/Check",
            "/hazina.v1.Admin/Switchover",
            "/hazina.v1.Ledger/GetStatus",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let answer = service.call(request(path)).await.unwrap();
            assert_eq!(answer.body(), "done", "{path} takes no slot");
        }

        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!slow_1.is_finished(), "ended before its time");
        tokio::time::advance(Duration::from_secs(2)).await;
        for slow in [slow_1, slow_2] {
            let answer = slow.await.expect("joined").unwrap();
            assert_eq!(grpc_status(&answer), Some("4"), "DEADLINE_EXCEEDED");
        }
        let served = service.call(request("/hazina.v1.Ledger/CreateTransfers")).await.unwrap();
        assert_eq!(served.body(), "done", "the slots are free again");

        // Every call of a connection past --connections-max is refused, naming that flag.
        for path in ["/hazina.v1.Ledger/CreateTransfers", "/grpc.health.v1.Health/Check"] {
            let mut on_refused = request(path);
            let tcp = TcpConnectInfo { local_addr: None, remote_addr: None };
            on_refused.extensions_mut().insert(CallerInfo { tcp, refused: Some(7) });
            let answer = service.call(on_refused).await.unwrap();
            assert_eq!(grpc_status(&answer), Some("8"), "{path}: RESOURCE_EXHAUSTED");
            let status = Status::from_header_map(answer.headers()).expect("a status");
            let message = status.message();
            assert!(message.contains("7 connections") && message.contains("--connections-max"));
        }
    }

    /// Two slots: two connections are served; a third, past them, is refused (its calls
    /// answered RESOURCE_EXHAUSTED, naming the flag) and reads as closed after REFUSING_TIME;
    /// with no room to refuse, a fourth is closed at once; once a served one is closed, the
    /// next is served.
    #[tokio::test]
    async fn connections_past_the_limit_are_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let mut connections = std::pin::pin!(bounded(incoming, 2, 1, "api"));
        let within = Duration::from_secs(5);
        let mut callers = Vec::new();
        let mut accepted = Vec::new();
        let mut before_third = Instant::now();
        for k in 0..4 {
            if k == 2 {
                before_third = Instant::now();
            }
            callers.push(TcpStream::connect(addr).await.expect("connect"));
            if accepted.len() < 3 {
                let next = tokio::time::timeout(within, connections.next()).await;
                accepted.push(next.expect("within 5 s").expect("goes on").expect("accepted"));
            }
        }
        let infos: Vec<Option<usize>> = accepted.iter().map(|c| c.connect_info().refused).collect();
        assert_eq!(infos, [None, None, Some(2)], "the third is past the bound of two");
        assert_eq!(
            accepted[0].connect_info().tcp.remote_addr,
            Some(callers[0].local_addr().expect("address")),
            "the caller's address reaches the calls"
        );

        // The fourth finds no room to be refused in: closed at once, nothing yielded.
        let next = tokio::time::timeout(Duration::from_millis(300), connections.next()).await;
        assert!(next.is_err(), "a connection yielded past the bound and the refusals' room");
        let mut got = Vec::new();
        let read = tokio::time::timeout(within, callers[3].read_to_end(&mut got)).await;
        assert!(read.expect("closed within 5 s").is_ok() && got.is_empty());

        // The refused one reads as closed once REFUSING_TIME has passed.
        let mut refused = accepted.pop().expect("the third");
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(within, refused.read(&mut byte)).await.expect("ends in 5 s");
        assert_eq!(n.expect("read"), 0, "end of stream");
        assert!(before_third.elapsed() >= REFUSING_TIME, "closed before its time");

        // A served one leaves: the next caller is served, and what it writes arrives.
        drop(accepted.remove(0));
        drop(refused);
        let mut caller = TcpStream::connect(addr).await.expect("connect");
        let next = tokio::time::timeout(within, connections.next()).await;
        let mut served = next.expect("within 5 s").expect("goes on").expect("accepted");
        assert_eq!(served.connect_info().refused, None);
        caller.write_all(b"ping").await.expect("write");
        let mut ping = [0u8; 4];
        served.read_exact(&mut ping).await.expect("read");
        assert_eq!(&ping, b"ping");
    }
}
