//! Ops and their protobuf codec (`aether.v1.Op`).
//!
//! Encoding goes through [`OpRef`], which borrows its fields so the relay's hot
//! path encodes without building an owned message first; decoding uses the
//! prost-generated type and validates it into an [`Op`].

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::hlc::Stamp;

/// One write to one key of one space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Space name.
    pub space: String,
    /// Key (UTF-8, validated on decode).
    pub key: Bytes,
    /// Value, or `None` for a delete.
    pub value: Option<Bytes>,
    /// HLC stamp.
    pub stamp: Stamp,
    /// Id of the relay or client that first accepted the op.
    pub origin: u64,
}

impl Op {
    /// A borrowed view, for encoding.
    pub fn as_ref(&self) -> OpRef<'_> {
        OpRef {
            space: &self.space,
            key: &self.key,
            value: self.value.as_deref(),
            stamp: self.stamp,
            origin: self.origin,
        }
    }

    /// Decodes and validates one protobuf-encoded op. Byte fields are
    /// zero-copy slices of `buf`.
    pub fn decode(buf: Bytes) -> Result<Op, DecodeError> {
        let m = aether_proto::v1::Op::decode(buf)?;
        if std::str::from_utf8(&m.key).is_err() {
            return Err(DecodeError::KeyNotUtf8);
        }
        if m.tombstone && !m.value.is_empty() {
            return Err(DecodeError::TombstoneWithValue);
        }
        Ok(Op {
            space: m.space,
            key: m.key,
            value: (!m.tombstone).then_some(m.value),
            stamp: Stamp { wall_ns: m.wall_ns, counter: m.counter, actor: m.actor },
            origin: m.origin,
        })
    }
}

/// An op whose fields are borrowed.
#[derive(Debug, Clone, Copy)]
pub struct OpRef<'a> {
    /// Space name.
    pub space: &'a str,
    /// Key.
    pub key: &'a [u8],
    /// Value, or `None` for a delete.
    pub value: Option<&'a [u8]>,
    /// HLC stamp.
    pub stamp: Stamp,
    /// Origin id.
    pub origin: u64,
}

impl OpRef<'_> {
    /// Length of the protobuf encoding.
    pub fn encoded_len(&self) -> usize {
        let ld = |tag_len: usize, n: usize| if n == 0 { 0 } else { tag_len + encoded_len_varint(n as u64) + n };
        ld(1, self.space.len())
            + ld(1, self.key.len())
            + self.value.map_or(0, |v| ld(1, v.len()))
            + if self.value.is_none() { 2 } else { 0 }
            + if self.stamp.wall_ns != 0 { 9 } else { 0 }
            + if self.stamp.counter != 0 { 1 + encoded_len_varint(self.stamp.counter as u64) } else { 0 }
            + if self.stamp.actor != 0 { 9 } else { 0 }
            + if self.origin != 0 { 9 } else { 0 }
    }

    /// Appends the protobuf encoding (identical to prost's for `aether.v1.Op`).
    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        fn bytes_field<B: BufMut>(tag: u32, b: &[u8], buf: &mut B) {
            if !b.is_empty() {
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(b.len() as u64, buf);
                buf.put_slice(b);
            }
        }
        bytes_field(1, self.space.as_bytes(), buf);
        bytes_field(2, self.key, buf);
        match self.value {
            Some(v) => bytes_field(3, v, buf),
            None => {
                encode_key(4, WireType::Varint, buf);
                encode_varint(1, buf);
            }
        }
        if self.stamp.wall_ns != 0 {
            encode_key(5, WireType::SixtyFourBit, buf);
            buf.put_u64_le(self.stamp.wall_ns);
        }
        if self.stamp.counter != 0 {
            encode_key(6, WireType::Varint, buf);
            encode_varint(self.stamp.counter as u64, buf);
        }
        if self.stamp.actor != 0 {
            encode_key(7, WireType::SixtyFourBit, buf);
            buf.put_u64_le(self.stamp.actor);
        }
        if self.origin != 0 {
            encode_key(8, WireType::SixtyFourBit, buf);
            buf.put_u64_le(self.origin);
        }
    }

    /// The encoding as a new vector.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }
}

/// Why an op could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid protobuf `aether.v1.Op`.
    #[error("malformed op: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The key is not UTF-8.
    #[error("op key is not UTF-8")]
    KeyNotUtf8,
    /// A tombstone that also carries a value.
    #[error("tombstone op carries a value")]
    TombstoneWithValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_op() -> impl Strategy<Value = Op> {
        (
            "[a-z]{0,12}",
            "\\PC{0,16}",
            prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(space, key, value, wall_ns, counter, actor, origin)| Op {
                space,
                key: Bytes::from(key.into_bytes()),
                value: value.map(Bytes::from),
                stamp: Stamp { wall_ns, counter, actor },
                origin,
            })
    }

    proptest! {
        #[test]
        fn roundtrip_and_matches_prost(op in arb_op()) {
            let enc = op.as_ref().encode_to_vec();
            prop_assert_eq!(enc.len(), op.as_ref().encoded_len());
            let prost_msg = aether_proto::v1::Op {
                space: op.space.clone(),
                key: op.key.clone(),
                value: op.value.clone().unwrap_or_default(),
                tombstone: op.value.is_none(),
                wall_ns: op.stamp.wall_ns,
                counter: op.stamp.counter,
                actor: op.stamp.actor,
                origin: op.origin,
            };
            prop_assert_eq!(&enc, &prost_msg.encode_to_vec());
            let back = Op::decode(Bytes::from(enc)).unwrap();
            prop_assert_eq!(back, op);
        }

        #[test]
        fn decode_never_panics(buf in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = Op::decode(Bytes::from(buf));
        }
    }

    #[test]
    fn rejects_non_utf8_key() {
        let op = OpRef { space: "s", key: &[0xff, 0xfe], value: Some(b"1"), stamp: Stamp::default(), origin: 0 };
        assert!(matches!(Op::decode(Bytes::from(op.encode_to_vec())), Err(DecodeError::KeyNotUtf8)));
    }
}
