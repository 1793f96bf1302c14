//! The protobuf codec of the generated service and client: prost's, except that a message that
//! cannot be decoded (truncated, garbage) is the caller's error, `INVALID_ARGUMENT`, rather than
//! prost's `INTERNAL`.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

pub struct StrictCodec<T, U> {
    inner: ProstCodec<T, U>,
    _types: PhantomData<(T, U)>,
}

impl<T, U> std::fmt::Debug for StrictCodec<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StrictCodec")
    }
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> StrictCodec<T, U> {
        StrictCodec { inner: ProstCodec::default(), _types: PhantomData }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = StrictDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.inner.decoder())
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
