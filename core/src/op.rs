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

impl<'a> OpRef<'a> {
    /// Decodes and validates a protobuf `aether.v1.Op` without copying or
    /// allocating: fields borrow from `buf`. Accepts exactly what prost's
    /// decoder accepts for this message (unknown fields are skipped, the last
    /// occurrence of a field wins) and validates like [`Op::decode`].
    pub fn decode(mut buf: &'a [u8]) -> Result<OpRef<'a>, DecodeError> {
        let mut space = "";
        let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
        let (mut tombstone, mut stamp, mut origin) = (false, Stamp::default(), 0u64);
        while !buf.is_empty() {
            let tag = decode_varint(&mut buf)?;
            let (field, wire) = (tag >> 3, tag & 7);
            if field == 0 || field > u32::MAX as u64 >> 3 {
                return Err(DecodeError::Malformed("invalid field number"));
            }
            match (field, wire) {
                // Like prost, every occurrence of a string field must be UTF-8, not just the last.
                (1, 2) => {
                    space = std::str::from_utf8(take_len_delimited(&mut buf)?)
                        .map_err(|_| DecodeError::Malformed("space is not UTF-8"))?
                }
                (2, 2) => key = take_len_delimited(&mut buf)?,
                (3, 2) => value = take_len_delimited(&mut buf)?,
                (4, 0) => tombstone = decode_varint(&mut buf)? != 0,
                (5, 1) => stamp.wall_ns = take_fixed64(&mut buf)?,
                (6, 0) => stamp.counter = decode_varint(&mut buf)? as u32,
                (7, 1) => stamp.actor = take_fixed64(&mut buf)?,
                (8, 1) => origin = take_fixed64(&mut buf)?,
                (1..=8, _) => return Err(DecodeError::Malformed("wrong wire type for a known field")),
                (_, wire) => skip_field(field, wire, &mut buf, 0)?,
            }
        }
        if std::str::from_utf8(key).is_err() {
            return Err(DecodeError::KeyNotUtf8);
        }
        if tombstone && !value.is_empty() {
            return Err(DecodeError::TombstoneWithValue);
        }
        Ok(OpRef { space, key, value: (!tombstone).then_some(value), stamp, origin })
    }

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

#[inline]
fn decode_varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    // Tags and short lengths are one byte: the common case takes no loop.
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(DecodeError::Malformed("truncated varint"));
        };
        *buf = rest;
        // The tenth byte may only carry the top bit of a u64.
        if i == 9 && b > 1 {
            return Err(DecodeError::Malformed("varint overflows 64 bits"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(DecodeError::Malformed("varint overflows 64 bits"))
}

/// Most nested groups skipped (prost's recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;

/// Skips one unknown field's value (wire types 0, 1, 2, 5 and groups).
fn skip_field(field: u64, wire: u64, buf: &mut &[u8], depth: u32) -> Result<(), DecodeError> {
    match wire {
        0 => decode_varint(buf).map(drop),
        1 => take_fixed64(buf).map(drop),
        2 => take_len_delimited(buf).map(drop),
        5 => {
            let (_, rest) = buf.split_first_chunk::<4>().ok_or(DecodeError::Malformed("truncated fixed32"))?;
            *buf = rest;
            Ok(())
        }
        3 => {
            if depth >= MAX_GROUP_DEPTH {
                return Err(DecodeError::Malformed("groups nested too deeply"));
            }
            loop {
                let tag = decode_varint(buf)?;
                let (inner, inner_wire) = (tag >> 3, tag & 7);
                if inner == 0 || inner > u32::MAX as u64 >> 3 {
                    return Err(DecodeError::Malformed("invalid field number"));
                }
                if inner_wire == 4 {
                    return if inner == field { Ok(()) } else { Err(DecodeError::Malformed("unexpected end group")) };
                }
                skip_field(inner, inner_wire, buf, depth + 1)?;
            }
        }
        _ => Err(DecodeError::Malformed("unexpected wire type")),
    }
}

#[inline]
fn take_fixed64(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let (head, rest) = buf.split_first_chunk::<8>().ok_or(DecodeError::Malformed("truncated fixed64"))?;
    *buf = rest;
    Ok(u64::from_le_bytes(*head))
}

#[inline]
fn take_len_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(DecodeError::Malformed("length-delimited field overruns the buffer"));
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

/// Why an op could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid protobuf `aether.v1.Op`.
    #[error("malformed op: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// Not a valid protobuf `aether.v1.Op` (zero-copy decoder).
    #[error("malformed op: {0}")]
    Malformed(&'static str),
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
        fn zero_copy_decoder_agrees_with_prost(op in arb_op()) {
            let enc = op.as_ref().encode_to_vec();
            let view = OpRef::decode(&enc).unwrap();
            prop_assert_eq!(view.space, op.space.as_str());
            prop_assert_eq!(view.key, &op.key[..]);
            prop_assert_eq!(view.value, op.value.as_deref());
            prop_assert_eq!(view.stamp, op.stamp);
            prop_assert_eq!(view.origin, op.origin);
        }

        /// On arbitrary bytes both decoders agree on success, and never panic.
        #[test]
        fn decoders_agree_on_garbage(buf in prop::collection::vec(any::<u8>(), 0..128)) {
            let owned = Op::decode(Bytes::from(buf.clone()));
            let view = OpRef::decode(&buf);
            match (owned, view) {
                (Ok(o), Ok(v)) => {
                    prop_assert_eq!(v.space, o.space.as_str());
                    prop_assert_eq!(v.key, &o.key[..]);
                    prop_assert_eq!(v.value, o.value.as_deref());
                    prop_assert_eq!(v.stamp, o.stamp);
                }
                (Err(_), Err(_)) => {}
                (o, v) => prop_assert!(false, "decoders disagree: prost {:?} vs view {:?}", o, v),
            }
        }
    }

    /// Found by the fuzzer: a repeated string field with an invalid first occurrence.
    #[test]
    fn every_occurrence_of_space_must_be_utf8() {
        let mut buf = vec![0x0a, 0x01, 0xff]; // space = [0xff]
        buf.extend_from_slice(&[0x0a, 0x01, b'a']); // space = "a"
        assert!(Op::decode(Bytes::from(buf.clone())).is_err());
        assert!(OpRef::decode(&buf).is_err());
    }

    #[test]
    fn rejects_non_utf8_key() {
        let op = OpRef { space: "s", key: &[0xff, 0xfe], value: Some(b"1"), stamp: Stamp::default(), origin: 0 };
        assert!(matches!(Op::decode(Bytes::from(op.encode_to_vec())), Err(DecodeError::KeyNotUtf8)));
    }
}
