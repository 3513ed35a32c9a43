//! The local replica of one space, sans-IO: an `aether_core::Space` merged
//! exactly like the relay's (LWW by stamp), the change events a merge raises,
//! and the resume bookkeeping (`epoch` + highest `seq` per relay endpoint,
//! bucket digests for any other relay).

use std::collections::{BTreeMap, HashMap};

use aether_core::sync::{MAX_BUCKETS, bucket_digests, encode_digests};
use aether_core::{Entry, Key, Merge, Space, Stamp};
use aether_proto::client::v1 as pb;
use bytes::Bytes;
use serde_json::Value;

/// Fewest buckets sent with a subscribe.
pub const MIN_BUCKETS: u32 = 16;

/// Why a change happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// This client wrote it.
    Local,
    /// Another writer, delivered by a relay (catchup or live changes).
    Remote,
    /// This client's write lost its LWW race; the value is the winner's.
    Superseded,
    /// A relay refused this client's write; the key is back to what it was.
    Rejected,
}

/// A visible change of one key of a space: its new value (`None` once deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The key.
    pub key: String,
    /// The new value; `None` when the key is deleted.
    pub value: Option<Value>,
    /// The stamp of the entry the key now holds.
    pub stamp: Stamp,
    /// What caused it.
    pub origin: Origin,
}

/// Where a subscription can resume on one relay endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The relay's epoch for the space (from the last catchup's final chunk).
    pub epoch: Bytes,
    /// The highest seq seen since (catchup or changes).
    pub seq: u64,
}

/// An op from a relay that cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOp {
    /// No stamp.
    #[error("op on key {0:?} has no stamp")]
    MissingStamp(String),
    /// A set whose value is not JSON text.
    #[error("value of key {0:?} is not JSON: {1}")]
    NotJson(String, String),
    /// A delete that carries a value.
    #[error("delete of key {0:?} carries a value")]
    DeleteWithValue(String),
}

/// The local state of one space.
#[derive(Debug, Default, Clone)]
pub struct Replica {
    space: Space,
    resume: HashMap<String, Resume>,
}

impl Replica {
    /// An empty replica.
    pub fn new() -> Self {
        Self::default()
    }

    /// The underlying LWW map.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The entry of `key`, tombstones included.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.space.get(key.as_bytes())
    }

    /// The live value's JSON text.
    pub fn value(&self, key: &str) -> Option<&Bytes> {
        self.space.value(key.as_bytes())
    }

    /// Every live key and its value.
    pub fn snapshot(&self) -> BTreeMap<String, Value> {
        self.space
            .live()
            .filter_map(|(k, v)| {
                let key = std::str::from_utf8(k).ok()?.to_string();
                Some((key, serde_json::from_slice(v).ok()?))
            })
            .collect()
    }

    /// Merges one op from a relay. Returns the change it makes visible, if
    /// any: an op that loses, a duplicate, or a tombstone for a key that was
    /// not live raise nothing.
    pub fn apply_remote(&mut self, op: pb::Op, origin: Origin) -> Result<Option<Change>, BadOp> {
        let stamp = op.stamp.map(stamp_from_pb).ok_or_else(|| BadOp::MissingStamp(op.key.clone()))?;
        if op.delete && !op.value.is_empty() {
            return Err(BadOp::DeleteWithValue(op.key));
        }
        if self.space.get(op.key.as_bytes()).is_some_and(|e| e.stamp >= stamp) {
            return Ok(None);
        }
        let value = if op.delete {
            None
        } else {
            let parsed: Value =
                serde_json::from_slice(&op.value).map_err(|e| BadOp::NotJson(op.key.clone(), e.to_string()))?;
            Some((op.value, parsed))
        };
        Ok(self.apply(op.key, value, stamp, origin))
    }

    /// Merges an op of this client (already validated and serialized).
    pub fn apply_local(&mut self, key: &str, value: Option<(Bytes, Value)>, stamp: Stamp) -> Option<Change> {
        self.apply(key.to_string(), value, stamp, Origin::Local)
    }

    fn apply(&mut self, key: String, value: Option<(Bytes, Value)>, stamp: Stamp, origin: Origin) -> Option<Change> {
        let was_live = self.space.value(key.as_bytes()).is_some();
        let (bytes, parsed) = match value {
            Some((b, v)) => (Some(b), Some(v)),
            None => (None, None),
        };
        let is_set = bytes.is_some();
        match self.space.merge_owned(Key::from(Bytes::from(key.clone())), bytes, stamp) {
            Merge::Applied if is_set || was_live => Some(Change { key, value: parsed, stamp, origin }),
            _ => None,
        }
    }

    /// Undoes this client's op on `key` stamped `ours` after a relay refused
    /// it: the key goes back to `previous` (its entry before the op). Does
    /// nothing when the key has moved on since. Rebuilds the map (O(entries));
    /// refusals are rare because ops are checked before they are sent.
    pub fn revert(&mut self, key: &str, ours: Stamp, previous: Option<Entry>) -> Option<Change> {
        if self.space.get(key.as_bytes()).is_none_or(|e| e.stamp != ours) {
            return None;
        }
        let mut rebuilt = Space::new();
        for (k, e) in self.space.iter() {
            if k.as_bytes() != key.as_bytes() {
                rebuilt.merge_owned(k.clone(), e.value.clone(), e.stamp);
            }
        }
        let change = match &previous {
            Some(prev) => {
                rebuilt.merge_owned(Key::from(key.as_bytes()), prev.value.clone(), prev.stamp);
                let value = prev.value.as_ref().and_then(|v| serde_json::from_slice(v).ok());
                Change { key: key.to_string(), value, stamp: prev.stamp, origin: Origin::Rejected }
            }
            None => Change { key: key.to_string(), value: None, stamp: Stamp::default(), origin: Origin::Rejected },
        };
        self.space = rebuilt;
        // Ops that lost locally to the refused op were dropped; only a digest
        // comparison brings them back, so no relay may resume by seq.
        self.resume.clear();
        Some(change)
    }

    /// The subscribe frame for this space at `endpoint`: resume info when this
    /// endpoint gave an epoch before, and always the bucket digests so that
    /// any other relay can send only the buckets that differ.
    pub fn subscribe(&self, space: &str, endpoint: &str, presence: bool) -> pb::Subscribe {
        let buckets = bucket_count(self.space.len());
        let digests = encode_digests(&bucket_digests(&self.space, buckets));
        let (epoch, seq) = match self.resume.get(endpoint) {
            Some(r) => (r.epoch.clone(), r.seq),
            None => (Bytes::new(), 0),
        };
        pb::Subscribe { space: space.to_string(), epoch, seq, buckets, digests: digests.into(), presence }
    }

    /// Records the final catchup chunk from `endpoint`.
    pub fn caught_up(&mut self, endpoint: &str, epoch: Bytes, seq: u64) {
        if epoch.is_empty() {
            self.resume.remove(endpoint);
        } else {
            self.resume.insert(endpoint.to_string(), Resume { epoch, seq });
        }
    }

    /// Records live changes from `endpoint` up to `seq`.
    pub fn advanced(&mut self, endpoint: &str, seq: u64) {
        if let Some(r) = self.resume.get_mut(endpoint) {
            r.seq = r.seq.max(seq);
        }
    }

    /// Where the subscription can resume at `endpoint`.
    pub fn resume(&self, endpoint: &str) -> Option<&Resume> {
        self.resume.get(endpoint)
    }
}

/// Buckets for a replica of `entries` entries: about 8 entries per bucket, a
/// power of two between [`MIN_BUCKETS`] and `MAX_BUCKETS` (4096).
pub fn bucket_count(entries: usize) -> u32 {
    let want = (entries / 8).clamp(MIN_BUCKETS as usize, MAX_BUCKETS as usize);
    (want.next_power_of_two() as u32).min(MAX_BUCKETS)
}

/// Converts a wire stamp.
pub fn stamp_from_pb(s: pb::Stamp) -> Stamp {
    Stamp { wall_ns: s.wall_ns, counter: s.counter, actor: s.actor }
}

/// Converts to a wire stamp.
pub fn stamp_to_pb(s: Stamp) -> pb::Stamp {
    pb::Stamp { wall_ns: s.wall_ns, counter: s.counter, actor: s.actor }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::sync::decode_digests;

    fn st(w: u64, actor: u64) -> Stamp {
        Stamp { wall_ns: w, counter: 0, actor }
    }

    fn set(key: &str, json: &str, stamp: Stamp) -> pb::Op {
        pb::Op { key: key.into(), value: Bytes::from(json.to_string()), delete: false, stamp: Some(stamp_to_pb(stamp)) }
    }

    fn del(key: &str, stamp: Stamp) -> pb::Op {
        pb::Op { key: key.into(), value: Bytes::new(), delete: true, stamp: Some(stamp_to_pb(stamp)) }
    }

    #[test]
    fn only_visible_changes_raise_events() {
        let mut r = Replica::new();
        let c = r.apply_remote(set("k", r#"{"a":1}"#, st(10, 1)), Origin::Remote).unwrap().unwrap();
        assert_eq!((c.key.as_str(), c.value, c.origin), ("k", Some(serde_json::json!({"a": 1})), Origin::Remote));
        // Duplicate and older ops: nothing.
        assert_eq!(r.apply_remote(set("k", "1", st(10, 1)), Origin::Remote).unwrap(), None);
        assert_eq!(r.apply_remote(set("k", "2", st(5, 1)), Origin::Remote).unwrap(), None);
        // A tombstone for a key never seen changes the map but nothing visible.
        assert_eq!(r.apply_remote(del("gone", st(3, 1)), Origin::Remote).unwrap(), None);
        assert_eq!(r.space().len(), 2);
        // An older set does not resurrect it.
        assert_eq!(r.apply_remote(set("gone", "1", st(2, 1)), Origin::Remote).unwrap(), None);
        // A delete of a live key is visible.
        let c = r.apply_remote(del("k", st(11, 1)), Origin::Remote).unwrap().unwrap();
        assert_eq!(c.value, None);
        assert!(r.snapshot().is_empty());
    }

    #[test]
    fn malformed_ops_are_refused_before_merging() {
        let mut r = Replica::new();
        assert!(matches!(r.apply_remote(set("k", "{nope", st(1, 1)), Origin::Remote), Err(BadOp::NotJson(..))));
        let mut no_stamp = set("k", "1", st(1, 1));
        no_stamp.stamp = None;
        assert!(matches!(r.apply_remote(no_stamp, Origin::Remote), Err(BadOp::MissingStamp(_))));
        let mut bad_del = del("k", st(1, 1));
        bad_del.value = Bytes::from_static(b"1");
        assert!(r.apply_remote(bad_del, Origin::Remote).is_err());
        assert!(r.space().is_empty());
    }

    #[test]
    fn merge_matches_core_space_in_any_order() {
        let ops = vec![set("a", "1", st(5, 1)), del("a", st(7, 2)), set("b", "[1]", st(3, 1)), set("a", "9", st(6, 3))];
        let mut forward = Replica::new();
        let mut backward = Replica::new();
        for op in ops.iter().cloned() {
            forward.apply_remote(op, Origin::Remote).unwrap();
        }
        for op in ops.into_iter().rev() {
            backward.apply_remote(op, Origin::Remote).unwrap();
        }
        assert_eq!(forward.space().digest(), backward.space().digest());
        assert_eq!(forward.snapshot(), BTreeMap::from([("b".to_string(), serde_json::json!([1]))]));
    }

    #[test]
    fn resume_info_is_per_endpoint_and_digests_always_sent() {
        let mut r = Replica::new();
        for i in 0..100 {
            r.apply_remote(set(&format!("k{i}"), "1", st(i + 1, 1)), Origin::Remote).unwrap();
        }
        let s = r.subscribe("board", "ws://a", true);
        assert_eq!((s.epoch.len(), s.seq, s.buckets, s.presence), (0, 0, 16, true));
        let digests = decode_digests(&s.digests).unwrap();
        assert_eq!(digests.len(), 16);
        assert_eq!(digests.iter().map(|d| d.entries).sum::<u64>(), 100);

        r.caught_up("ws://a", Bytes::from_static(b"E1"), 40);
        r.advanced("ws://a", 45);
        r.advanced("ws://a", 44);
        r.advanced("ws://b", 99); // no epoch from b: ignored
        let s = r.subscribe("board", "ws://a", false);
        assert_eq!((&s.epoch[..], s.seq), (&b"E1"[..], 45));
        assert_eq!(s.digests.len(), 16 * 24);
        let s = r.subscribe("board", "ws://b", false);
        assert_eq!((s.epoch.len(), s.seq), (0, 0));
        assert!(r.resume("ws://b").is_none());
    }

    #[test]
    fn bucket_count_is_a_clamped_power_of_two() {
        assert_eq!(bucket_count(0), 16);
        assert_eq!(bucket_count(129), 16);
        assert_eq!(bucket_count(136), 32);
        assert_eq!(bucket_count(1000), 128);
        assert_eq!(bucket_count(8 * 4096), 4096);
        assert_eq!(bucket_count(usize::MAX), 4096);
        for n in [0, 1, 7, 200, 5000, 1 << 20] {
            assert!(bucket_count(n).is_power_of_two());
        }
    }

    #[test]
    fn revert_restores_the_previous_entry_and_drops_resume() {
        let mut r = Replica::new();
        r.apply_remote(set("k", "1", st(5, 1)), Origin::Remote).unwrap();
        r.caught_up("ws://a", Bytes::from_static(b"E"), 3);
        let prev = r.entry("k").cloned();
        let ours = st(9, 1 << 63);
        let v = serde_json::json!(2);
        assert!(r.apply_local("k", Some((Bytes::from_static(b"2"), v)), ours).is_some());
        let c = r.revert("k", ours, prev).unwrap();
        assert_eq!((c.value, c.origin), (Some(serde_json::json!(1)), Origin::Rejected));
        assert_eq!(r.value("k").map(|b| &b[..]), Some(&b"1"[..]));
        assert!(r.resume("ws://a").is_none());
        // A key that moved on is left alone; a new key goes away.
        assert!(r.revert("k", ours, None).is_none());
        let ours = st(10, 1 << 63);
        r.apply_local("new", Some((Bytes::from_static(b"3"), serde_json::json!(3))), ours);
        assert_eq!(r.revert("new", ours, None).unwrap().value, None);
        assert!(r.entry("new").is_none());
    }
}
