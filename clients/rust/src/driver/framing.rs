//! Write frames: what a write costs on the wire (encoded lengths, computed
//! without encoding), checking a write against the relay's limits before it
//! is applied, grouping queued writes of a space into multi-op frames, and
//! sending writes as frames (a wire id each, built when the outbox lets
//! them leave).

use std::collections::{HashMap, HashSet};

use aether_core::Stamp;
use aether_proto::client::v1::{self as pb, ClientFrame, client_frame};
use bytes::Bytes;
use prost::encoding::encoded_len_varint;

use super::outbox::Out;
use super::{Driver, FRAME_MARGIN, Frame, WireId};
use crate::error::Error;
use crate::queue::{QueuedWrite, WriteId};
use crate::replica::stamp_to_pb;
use crate::shared::Mutation;
use crate::transport::SessionId;

impl Driver {
    /// Sends writes `ids` (of one space) as one frame on session `sid`
    /// (subscribing their space there first): queued in its outbox, built
    /// and sent when the pacer allows.
    pub(super) fn send_write(&mut self, sid: SessionId, ids: Vec<WriteId>) {
        let ids: Vec<WriteId> = ids.into_iter().filter(|id| self.writes.contains_key(id)).collect();
        let Some(first) = ids.first() else { return };
        if !self.sessions.contains_key(&sid) {
            return;
        }
        let cell = self.writes[first].space.clone();
        let presence = self.primary == Some(sid) && (cell.wants_presence() || self.presence.contains_key(&cell.name));
        self.ensure_subscribed(sid, &cell, presence);
        let wire = self.next_wire;
        self.next_wire += 1;
        for id in &ids {
            if let Some(w) = self.writes.get_mut(id) {
                w.sent_on.push((sid, wire));
            }
        }
        self.frames.insert(wire, Frame { session: sid, space: cell.name.clone(), writes: ids, sent_at: None });
        self.push_out(sid, Out::Write(wire), false);
    }

    /// Sends writes `ids` on `sid`, those of a space grouped into frames of
    /// up to `maxOpsPerWrite` ops (and the burst, when paced) and the frame
    /// size, in queue order; a key already in a frame starts the next one.
    pub(super) fn send_grouped(&mut self, sid: SessionId, mut ids: Vec<WriteId>) {
        let Some(s) = self.sessions.get(&sid) else { return };
        let mut max_ops = (s.limits.max_ops_per_write as usize).max(1);
        if let Some(burst) = s.pacer.burst_ops() {
            max_ops = max_ops.min(burst.max(1));
        }
        let max_bytes = (s.limits.max_frame_bytes as usize).saturating_sub(FRAME_MARGIN);
        ids.sort_unstable();
        ids.dedup();
        let writes = ids.iter().filter_map(|id| self.queue.get(*id).map(|q| (*id, q)));
        for group in plan_groups(writes, max_ops, max_bytes) {
            self.send_write(sid, group);
        }
    }

    /// The frame of `wire` with the writes it still carries; `None` when
    /// they were all settled.
    pub(super) fn write_frame(&self, wire: WireId) -> Option<(String, ClientFrame)> {
        let f = self.frames.get(&wire)?;
        let ops: Vec<pb::Op> = f
            .writes
            .iter()
            .filter_map(|id| self.queue.get(*id))
            .flat_map(|q| q.ops.iter())
            .map(|op| pb::Op {
                key: op.key.clone(),
                value: op.value.clone().unwrap_or_default(),
                delete: op.value.is_none(),
                stamp: Some(stamp_to_pb(op.stamp)),
            })
            .collect();
        if ops.is_empty() {
            return None;
        }
        let write = pb::Write { id: wire, space: f.space.clone(), ops };
        Some((f.space.clone(), ClientFrame { msg: Some(client_frame::Msg::Write(write)) }))
    }
}

/// Refuses what the relay would refuse (`bad-op`, `too-many-ops`, a frame
/// over `maxFrameBytes`) and a key written twice in one write, before
/// anything is applied.
pub(super) fn check_ops(l: &pb::Limits, space: &str, ops: &[Mutation]) -> Result<(), Error> {
    let invalid = |key: &str, reason: String| Err(Error::InvalidOp { key: key.to_string(), reason });
    if ops.is_empty() {
        return invalid("", "a write needs at least one op".into());
    }
    if l.max_ops_per_write > 0 && ops.len() > l.max_ops_per_write as usize {
        return invalid(
            &ops[0].key,
            format!("{} ops in one write, the relay allows {}", ops.len(), l.max_ops_per_write),
        );
    }
    let mut keys = HashSet::with_capacity(ops.len());
    let max_stamp = Stamp { wall_ns: u64::MAX, counter: u32::MAX, actor: u64::MAX };
    let mut bytes = write_base_len(space);
    for m in ops {
        if m.key.is_empty() || m.key.len() > l.max_key_bytes as usize {
            return invalid(&m.key, format!("keys are 1-{} bytes of UTF-8", l.max_key_bytes));
        }
        if !keys.insert(m.key.as_str()) {
            return invalid(&m.key, "the key appears more than once in one write; set each key once".into());
        }
        if let Some((value, _)) = &m.value
            && value.len() > l.max_value_bytes as usize
        {
            return invalid(&m.key, format!("value of {} bytes, the relay allows {}", value.len(), l.max_value_bytes));
        }
        bytes += field_len(op_len(&m.key, m.value.as_ref().map(|(b, _)| b), max_stamp));
    }
    let frame = frame_len(bytes);
    if l.max_frame_bytes > 0 && frame > l.max_frame_bytes as usize {
        return invalid(
            &ops[0].key,
            format!("the write takes {frame} bytes, the relay's frames are at most {}; split it", l.max_frame_bytes),
        );
    }
    Ok(())
}

/// Encoded length of a length-delimited field with a one-byte tag.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Encoded length of an `Op` (without its field header).
fn op_len(key: &str, value: Option<&Bytes>, stamp: Stamp) -> usize {
    let key = if key.is_empty() { 0 } else { field_len(key.len()) };
    let value = match value {
        Some(v) if !v.is_empty() => field_len(v.len()),
        Some(_) => 0,
        // `delete: true`: tag and one byte.
        None => 2,
    };
    key + value + field_len(prost::Message::encoded_len(&stamp_to_pb(stamp)))
}

/// Encoded length of a `Write`'s id (at its largest) and space.
fn write_base_len(space: &str) -> usize {
    1 + 10 + if space.is_empty() { 0 } else { field_len(space.len()) }
}

/// Encoded length of the `ClientFrame` around a `Write` of `write_len` bytes.
fn frame_len(write_len: usize) -> usize {
    field_len(write_len)
}

/// Splits queued writes (in queue order) into frames: per space, up to
/// `max_ops` ops and `max_bytes` bytes each (a write alone may exceed them),
/// a frame closing when a write's key is already in it (a later write of a
/// key must not reach the relay first). Frames of a space keep their order.
pub(super) fn plan_groups<'a>(
    writes: impl Iterator<Item = (WriteId, &'a QueuedWrite)>,
    max_ops: usize,
    max_bytes: usize,
) -> Vec<Vec<WriteId>> {
    struct Group<'a> {
        ids: Vec<WriteId>,
        ops: usize,
        bytes: usize,
        keys: HashSet<&'a str>,
    }
    let mut open: HashMap<&'a str, Group<'a>> = HashMap::new();
    let mut out = Vec::new();
    for (id, w) in writes {
        let bytes: usize = w.ops.iter().map(|op| field_len(op_len(&op.key, op.value.as_ref(), op.stamp))).sum();
        let space = w.space.as_str();
        if let Some(g) = open.get(space)
            && (g.ops + w.ops.len() > max_ops
                || frame_len(g.bytes + bytes) > max_bytes
                || w.ops.iter().any(|op| g.keys.contains(op.key.as_str())))
            && let Some(g) = open.remove(space)
        {
            out.push(g.ids);
        }
        let g = open.entry(space).or_insert_with(|| Group {
            ids: Vec::new(),
            ops: 0,
            bytes: write_base_len(space),
            keys: HashSet::new(),
        });
        g.ids.push(id);
        g.ops += w.ops.len();
        g.bytes += bytes;
        g.keys.extend(w.ops.iter().map(|op| op.key.as_str()));
    }
    // The frames still open, in queue order of their first write.
    let mut rest: Vec<Vec<WriteId>> = open.into_values().map(|g| g.ids).collect();
    rest.sort_unstable_by_key(|ids| ids[0]);
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueuedOp;
    use prost::Message;

    const ACTOR: u64 = (1 << 63) | 5;

    fn op(key: &str, value: Option<&str>, wall: u64) -> QueuedOp {
        QueuedOp {
            key: key.into(),
            value: value.map(|v| Bytes::from(v.to_string())),
            stamp: Stamp { wall_ns: wall, counter: 0, actor: ACTOR },
        }
    }

    fn mutation(key: &str, value: &str) -> Mutation {
        Mutation {
            key: key.into(),
            value: Some((Bytes::from(value.to_string()), serde_json::from_str(value).unwrap())),
        }
    }

    #[test]
    fn computed_lengths_match_the_encoded_frame() {
        let w = QueuedWrite {
            space: "board".into(),
            ops: vec![
                op("k", Some("{\"a\":1}"), 1_800_000_000_000_000_000),
                op("gone", None, 7),
                op(&"x".repeat(300), Some(&"9".repeat(200)), 1),
            ],
        };
        let ops: Vec<pb::Op> = w
            .ops
            .iter()
            .map(|o| pb::Op {
                key: o.key.clone(),
                value: o.value.clone().unwrap_or_default(),
                delete: o.value.is_none(),
                stamp: Some(stamp_to_pb(o.stamp)),
            })
            .collect();
        let id = u64::MAX;
        let frame = ClientFrame { msg: Some(client_frame::Msg::Write(pb::Write { id, space: w.space.clone(), ops })) };
        let computed: usize = w.ops.iter().map(|o| field_len(op_len(&o.key, o.value.as_ref(), o.stamp))).sum();
        assert_eq!(frame_len(write_base_len(&w.space) + computed), frame.encoded_len());
    }

    #[test]
    fn groups_respect_spaces_order_sizes_and_repeated_keys() {
        let w = |space: &str, keys: &[&str]| QueuedWrite {
            space: space.into(),
            ops: keys.iter().map(|k| op(k, Some("1"), 10)).collect(),
        };
        let writes = [
            (1, w("a", &["k1"])),
            (2, w("b", &["k1"])),
            (3, w("a", &["k2", "k3"])),
            (4, w("a", &["k1"])), // k1 again: a new frame for a
            (5, w("a", &["k4"])),
            (6, w("b", &["k2"])),
        ];
        let plan = plan_groups(writes.iter().map(|(id, w)| (*id, w)), 256, 1 << 20);
        assert_eq!(plan, vec![vec![1, 3], vec![2, 6], vec![4, 5]]);
        // At most 2 ops per frame; a write larger than that goes alone.
        let big = [(1, w("a", &["x"])), (2, w("a", &["y", "z", "t"])), (3, w("a", &["u"])), (4, w("a", &["v"]))];
        let plan = plan_groups(big.iter().map(|(id, w)| (*id, w)), 2, 1 << 20);
        assert_eq!(plan, vec![vec![1], vec![2], vec![3, 4]]);
        // The frame size bounds groups too.
        let one = frame_len(
            write_base_len("a") + field_len(op_len("x", Some(&Bytes::from_static(b"1")), op("x", None, 10).stamp)),
        );
        let plan = plan_groups(big[2..].iter().map(|(id, w)| (*id, w)), 256, one + 5);
        assert_eq!(plan, vec![vec![3], vec![4]]);
    }

    #[test]
    fn checks_refuse_repeated_keys_and_oversized_frames() {
        let limits = super::super::DEFAULT_LIMITS;
        assert!(check_ops(&limits, "s", &[mutation("a", "1"), mutation("b", "2")]).is_ok());
        let err = check_ops(&limits, "s", &[mutation("a", "1"), mutation("b", "2"), mutation("a", "3")]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidOp { key, reason } if key == "a" && reason.contains("more than once")),
            "{err}"
        );
        assert!(check_ops(&limits, "s", &[]).is_err());
        assert!(check_ops(&limits, "s", &[mutation("", "1")]).is_err());
        let too_many: Vec<_> = (0..257).map(|i| mutation(&format!("k{i}"), "1")).collect();
        assert!(check_ops(&limits, "s", &too_many).unwrap_err().to_string().contains("257 ops"));
        // 100 values of 30 KiB each are fine one by one, not in one frame.
        let value = format!("\"{}\"", "v".repeat(30_000));
        let big: Vec<_> = (0..100).map(|i| mutation(&format!("k{i}"), &value)).collect();
        let err = check_ops(&limits, "s", &big).unwrap_err().to_string();
        assert!(err.contains("frames are at most"), "{err}");
        assert!(check_ops(&limits, "s", &big[..8]).is_ok());
    }
}
