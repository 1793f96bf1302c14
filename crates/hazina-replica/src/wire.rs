//! raft's messages, entries and states as bytes, for a host's network and disk. raft-rs 0.7
//! encodes with rust-protobuf 2 (docs/adr/0003); this is the one place that names it, so the
//! hosts need not.

/// Bytes that are not a valid encoding of the expected raft type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "undecodable raft data: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// Encodes a raft message, entry, hard state, configuration state or snapshot.
pub fn encode<M: protobuf::Message>(value: &M) -> Vec<u8> {
    // Writing into a vector fails only for a message missing a required field, and raft's
    // proto3 types have none.
    value.write_to_bytes().expect("raft's proto3 types always encode")
}

/// Decodes what [`encode`] wrote. Bytes from the network go through here: anything malformed
/// is an error, never a panic.
pub fn decode<M: protobuf::Message>(bytes: &[u8]) -> Result<M, WireError> {
    M::parse_from_bytes(bytes).map_err(|e| WireError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{Entry, Message, MessageType};

    use super::*;

    #[test]
    fn a_message_round_trips_and_garbage_is_an_error() {
        let e = Entry { index: 3, term: 7, data: vec![1, 2, 3].into(), ..Entry::default() };
        let mut m =
            Message { from: 1, to: 2, term: 7, entries: vec![e].into(), ..Message::default() };
        m.set_msg_type(MessageType::MsgAppend);
        let bytes = encode(&m);
        let back: Message = decode(&bytes).expect("round trip");
        assert_eq!(back, m);
        assert!(decode::<Message>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<Message>(&bytes[..bytes.len() - 1]).is_err());
    }
}
