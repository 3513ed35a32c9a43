//! QUIC stream framing, sans-IO: every frame is prefixed by its length as a
//! protobuf varint. The decoder takes bytes as they arrive and yields whole
//! messages; frames above a bound are refused before they are buffered.

use bytes::{Buf, BytesMut};
use prost::Message;

/// Longest varint prefix (a `u64`).
const MAX_VARINT_BYTES: usize = 10;

/// A stream that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is not a valid varint.
    #[error("invalid length prefix")]
    BadPrefix,
    /// A frame longer than the bound.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// The frame's bytes are not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Encodes one message with its varint length prefix.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_length_delimited_to_vec()
}

/// Reassembles length-prefixed messages from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { buf: BytesMut::new(), max_frame }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet part of a returned message.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_frame<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        let Some(end) = self.buf.iter().take(MAX_VARINT_BYTES).position(|b| b & 0x80 == 0) else {
            return if self.buf.len() >= MAX_VARINT_BYTES { Err(FrameError::BadPrefix) } else { Ok(None) };
        };
        let prefix = end + 1;
        let mut head = &self.buf[..prefix];
        let len = prost::encoding::decode_varint(&mut head).map_err(|_| FrameError::BadPrefix)?;
        if len > self.max_frame as u64 {
            return Err(FrameError::TooLarge { len, max: self.max_frame });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        let frame = self.buf.split_to(len).freeze();
        Ok(Some(M::decode(frame)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_proto::client::v1::{Ping, Pong, ServerFrame, server_frame};

    fn pong(n: u64) -> ServerFrame {
        ServerFrame { msg: Some(server_frame::Msg::Pong(Pong { nonce: n, now_ns: n.wrapping_mul(1000) })) }
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let mut wire = Vec::new();
        for n in [0, 1, 300, u64::MAX] {
            wire.extend(encode(&pong(n)));
        }
        for step in [1, 2, 3, 7, wire.len()] {
            let mut d = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                d.extend(chunk);
                while let Some(f) = d.next_frame::<ServerFrame>().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![pong(0), pong(1), pong(300), pong(u64::MAX)]);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversized_and_garbage_prefixes_are_errors() {
        let mut d = FrameDecoder::new(16);
        d.extend(&encode(&Ping { nonce: 1 }));
        assert!(d.next_frame::<Ping>().unwrap().is_some());
        // A 1000-byte frame announced: refused before it arrives.
        let mut big = Vec::new();
        prost::encoding::encode_varint(1000, &mut big);
        d.extend(&big);
        assert!(matches!(d.next_frame::<Ping>(), Err(FrameError::TooLarge { len: 1000, max: 16 })));

        let mut d = FrameDecoder::new(16);
        d.extend(&[0xff; 10]);
        assert!(matches!(d.next_frame::<Ping>(), Err(FrameError::BadPrefix)));

        let mut d = FrameDecoder::new(16);
        d.extend(&[0x80, 0x80]);
        assert!(d.next_frame::<Ping>().unwrap().is_none());

        let mut d = FrameDecoder::new(16);
        d.extend(&[3, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame::<Ping>(), Err(FrameError::Decode(_))));
    }
}
