//! The protobuf codec of the generated service and client: prost's, except that a message that
//! cannot be decoded (truncated, garbage) is the caller's error, `INVALID_ARGUMENT`, rather than
//! prost's `INTERNAL`, and that each call's buffers start small (see [`BUFFER_BYTES`]).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first size of the buffer a call encodes its message into, and of the one it decodes
/// from; both grow as a message needs. Tonic's default, 8 KiB, is far more than a request of one
/// transfer (about 130 bytes) or its reply, and glibc serves a request of more than 1 KiB from
/// its large bins, consolidating its free lists first: with four such buffers a call, client
/// and server, that was about a tenth of the machine's CPU in one transfer per request
/// (docs/BENCHMARKS.md, session 9). Under 1 KiB the allocation comes from the thread's cache.
pub const BUFFER_BYTES: usize = 512;

/// Tonic's default: how much a streaming call encodes before it yields.
const YIELD_THRESHOLD_BYTES: usize = 32 << 10;

/// Tonic's default first size of a call's buffers, kept for site-to-site calls, whose raft
/// messages carry whole entries: with 512 bytes there, three sites carried 3% to 25% fewer
/// single-transfer requests a second in 7 of 7 interleaved runs (docs/BENCHMARKS.md, session 9).
pub const PEER_BUFFER_BYTES: usize = 8 << 10;

/// The codec of the client API (`hazina.v1`).
pub type StrictCodec<T, U> = BufferedCodec<T, U, BUFFER_BYTES>;

/// The codec of site-to-site calls (`hazina.peer.v1`), with tonic's default buffers.
pub type PeerCodec<T, U> = BufferedCodec<T, U, PEER_BUFFER_BYTES>;

/// Prost's codec with strict decoding errors and buffers that start at `BUFFER` bytes.
pub struct BufferedCodec<T, U, const BUFFER: usize> {
    _types: PhantomData<(T, U)>,
}

impl<T, U, const BUFFER: usize> std::fmt::Debug for BufferedCodec<T, U, BUFFER> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufferedCodec({BUFFER}-byte buffers)")
    }
}

impl<T, U, const BUFFER: usize> Default for BufferedCodec<T, U, BUFFER> {
    fn default() -> BufferedCodec<T, U, BUFFER> {
        BufferedCodec { _types: PhantomData }
    }
}

impl<T, U, const BUFFER: usize> Codec for BufferedCodec<T, U, BUFFER>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<ProstDecoder<U>>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD_BYTES)))
    }
}

#[derive(Debug)]
pub struct StrictDecoder<D>(D);

impl<D: Decoder<Error = Status>> Decoder for StrictDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D::Item>, Status> {
        self.0.decode(src).map_err(|status| {
            if status.code() == Code::Internal {
                Status::invalid_argument(format!("malformed message: {}", status.message()))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
