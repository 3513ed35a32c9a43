//! `Space`: a last-writer-wins map of keys to opaque values or tombstones.
//!
//! Merge keeps the entry with the greater [`Stamp`], which makes it
//! commutative, associative and idempotent: any order, duplication or replay of
//! the same ops converges to the same state and the same [`Digest`].

use std::borrow::Borrow;
use std::collections::HashMap;

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

use crate::hlc::Stamp;
use crate::key::Key;

/// The winning write for one key: a value, or a tombstone (`value == None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, or `None` for a delete.
    pub value: Option<Bytes>,
    /// The stamp of the op that wrote it.
    pub stamp: Stamp,
}

/// What [`Space::merge`] did with an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The op won: it is now the key's entry.
    Applied,
    /// The key already holds a greater stamp; the op lost the LWW race.
    Superseded,
    /// The key already holds this exact stamp (a duplicate or replay).
    Duplicate,
}

/// An order-independent fingerprint of a space's entries, equal on two replicas
/// exactly when (up to hash collisions) they hold the same entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digest {
    /// Wrapping sum of the 128-bit hashes of every entry.
    pub sum: u128,
    /// Number of entries (tombstones included).
    pub entries: u64,
}

impl Digest {
    /// The digest's canonical 24-byte form (little endian sum, then count).
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..16].copy_from_slice(&self.sum.to_le_bytes());
        out[16..].copy_from_slice(&self.entries.to_le_bytes());
        out
    }

    /// Parses the canonical 24-byte form; `None` for any other length.
    pub fn from_bytes(b: &[u8]) -> Option<Digest> {
        let b: &[u8; 24] = b.try_into().ok()?;
        let sum = u128::from_le_bytes(b[..16].try_into().ok()?);
        let entries = u64::from_le_bytes(b[16..].try_into().ok()?);
        Some(Digest { sum, entries })
    }

    /// Adds one entry's hash; digests of disjoint sets add up.
    pub fn add(&mut self, key: &[u8], entry: &Entry) {
        self.sum = self.sum.wrapping_add(entry_hash(key, entry));
        self.entries += 1;
    }
}

/// The fixed (cross-process, cross-version) hash of one entry: XXH3-128 over
/// `len(key) key wall_ns counter actor tag [len(value) value]`, integers little endian.
pub fn entry_hash(key: &[u8], entry: &Entry) -> u128 {
    let mut h = Xxh3::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(&entry.stamp.wall_ns.to_le_bytes());
    h.update(&entry.stamp.counter.to_le_bytes());
    h.update(&entry.stamp.actor.to_le_bytes());
    match &entry.value {
        None => h.update(&[0]),
        Some(v) => {
            h.update(&[1]);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
        }
    }
    h.digest128()
}

/// Hasher of in-memory maps: foldhash, randomly seeded per map (keys come
/// from clients, so the seed must not be predictable), several times faster
/// than SipHash on short keys. Never used for anything persisted or compared
/// across processes (that is [`entry_hash`]).
pub type MapHasher = foldhash::fast::RandomState;

/// A last-writer-wins map: key → (value | tombstone, stamp).
///
/// Every change also gets a local sequence number (1, 2, …, in the order this
/// map applied them; never persisted or compared across replicas), so a
/// reader that saw everything up to seq N can be sent exactly the entries
/// changed after it ([`Space::changed_since`]).
#[derive(Debug, Clone, Default)]
pub struct Space {
    entries: HashMap<Key, Slot, MapHasher>,
    live: usize,
    seq: u64,
}

/// An entry and the local seq of its last change.
#[derive(Debug, Clone)]
struct Slot {
    entry: Entry,
    seq: u64,
}

impl Space {
    /// An empty space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one write. `value == None` is a delete. Only a strictly greater
    /// stamp replaces the current entry, so older writes never resurrect a
    /// deleted key. Losing ops allocate nothing.
    pub fn merge(&mut self, key: &[u8], value: Option<&[u8]>, stamp: Stamp) -> Merge {
        self.merge_with(key, stamp, value.is_some(), || value.map(Bytes::copy_from_slice))
    }

    /// Like [`Space::merge`] but takes owned buffers (no copy of the value when the op wins).
    pub fn merge_owned(&mut self, key: Key, value: Option<Bytes>, stamp: Stamp) -> Merge {
        let is_set = value.is_some();
        self.merge_with(key, stamp, is_set, || value)
    }

    fn merge_with<K>(&mut self, key: K, stamp: Stamp, is_set: bool, value: impl FnOnce() -> Option<Bytes>) -> Merge
    where
        K: Borrow<[u8]> + Into<Key>,
    {
        if let Some(current) = self.entries.get_mut(key.borrow()) {
            if stamp < current.entry.stamp {
                return Merge::Superseded;
            }
            if stamp == current.entry.stamp {
                return Merge::Duplicate;
            }
            match (current.entry.value.is_some(), is_set) {
                (true, false) => self.live -= 1,
                (false, true) => self.live += 1,
                _ => {}
            }
            self.seq += 1;
            *current = Slot { entry: Entry { value: value(), stamp }, seq: self.seq };
            return Merge::Applied;
        }
        if is_set {
            self.live += 1;
        }
        self.seq += 1;
        self.entries.insert(key.into(), Slot { entry: Entry { value: value(), stamp }, seq: self.seq });
        Merge::Applied
    }

    /// The seq of the last change applied (0 for a new map).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Entries (tombstones included) whose last change has a seq above
    /// `seq`: everything a reader that saw up to `seq` is missing.
    pub fn changed_since(&self, seq: u64) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter().filter(move |(_, s)| s.seq > seq).map(|(k, s)| (k, &s.entry))
    }

    /// Merges every entry of `other` into this space (replica merge).
    pub fn absorb(&mut self, other: Space) {
        if self.entries.is_empty() && self.seq == 0 {
            *self = other;
            return;
        }
        self.entries.reserve(other.entries.len());
        for (key, slot) in other.entries {
            self.merge_owned(key, slot.entry.value, slot.entry.stamp);
        }
    }

    /// The entry for `key`, tombstones included.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key).map(|s| &s.entry)
    }

    /// The live value for `key` (`None` when absent or deleted).
    pub fn value(&self, key: &[u8]) -> Option<&Bytes> {
        self.entries.get(key).and_then(|s| s.entry.value.as_ref())
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Number of live (non-deleted) keys.
    pub fn live_len(&self) -> usize {
        self.live
    }

    /// True when the space has no entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, tombstones included, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter().map(|(k, s)| (k, &s.entry))
    }

    /// Live keys and their values, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = (&Key, &Bytes)> {
        self.entries.iter().filter_map(|(k, s)| s.entry.value.as_ref().map(|v| (k, v)))
    }

    /// The greatest stamp of any entry.
    pub fn max_stamp(&self) -> Option<Stamp> {
        self.entries.values().map(|s| s.entry.stamp).max()
    }

    /// The order-independent digest of all entries.
    pub fn digest(&self) -> Digest {
        let mut d = Digest::default();
        for (k, s) in &self.entries {
            d.add(k, &s.entry);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn st(wall_ns: u64, actor: u64) -> Stamp {
        Stamp { wall_ns, counter: 0, actor }
    }

    #[test]
    fn greater_stamp_wins_and_delete_sticks() {
        let mut s = Space::new();
        assert_eq!(s.merge(b"k", Some(b"1"), st(10, 1)), Merge::Applied);
        assert_eq!(s.merge(b"k", None, st(20, 1)), Merge::Applied);
        assert_eq!(s.merge(b"k", Some(b"old"), st(15, 2)), Merge::Superseded);
        assert_eq!(s.merge(b"k", None, st(20, 1)), Merge::Duplicate);
        assert_eq!(s.value(b"k"), None);
        assert_eq!(s.live_len(), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.merge(b"k", Some(b"new"), st(21, 2)), Merge::Applied);
        assert_eq!(s.value(b"k").map(|v| &v[..]), Some(&b"new"[..]));
        assert_eq!(s.live_len(), 1);
    }

    #[test]
    fn changed_since_is_exactly_what_changed_after_a_seq() {
        let mut s = Space::new();
        s.merge(b"a", Some(b"1"), st(10, 1));
        s.merge(b"b", Some(b"1"), st(10, 1));
        let seen = s.seq();
        assert_eq!(seen, 2);
        assert_eq!(s.merge(b"a", Some(b"old"), st(5, 1)), Merge::Superseded);
        assert_eq!(s.merge(b"b", Some(b"1"), st(10, 1)), Merge::Duplicate);
        assert_eq!(s.seq(), seen, "ops that change nothing take no seq");
        s.merge(b"b", None, st(11, 1));
        s.merge(b"c", Some(b"2"), st(12, 1));
        s.merge(b"c", Some(b"3"), st(13, 1));
        let mut changed: Vec<_> = s.changed_since(seen).map(|(k, e)| (k.to_vec(), e.value.clone())).collect();
        changed.sort();
        assert_eq!(changed, vec![(b"b".to_vec(), None), (b"c".to_vec(), Some(Bytes::from_static(b"3")))]);
        assert_eq!(s.changed_since(s.seq()).count(), 0);
        assert_eq!(s.changed_since(0).count(), 3);
    }

    #[test]
    fn digest_distinguishes_value_and_tombstone() {
        let mut a = Space::new();
        let mut b = Space::new();
        a.merge(b"k", Some(b""), st(1, 1));
        b.merge(b"k", None, st(1, 1));
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest().entries, 1);
    }

    /// One generated write: key index, value (None = delete), stamp parts.
    type GenOp = (u8, Option<Vec<u8>>, u64, u32, u64);

    fn ops() -> impl Strategy<Value = Vec<GenOp>> {
        prop::collection::vec(
            (0u8..8, prop::option::of(prop::collection::vec(any::<u8>(), 0..6)), 0u64..20, 0u32..3, 0u64..3),
            0..60,
        )
    }

    fn apply(space: &mut Space, op: &GenOp) {
        let key = [b'k', op.0];
        space.merge(&key, op.1.as_deref(), Stamp { wall_ns: op.2, counter: op.3, actor: op.4 });
    }

    /// Ops with distinct stamps (a stamp names exactly one op in the mesh).
    fn unique_stamps(mut ops: Vec<GenOp>) -> Vec<GenOp> {
        let mut seen = std::collections::HashSet::new();
        ops.retain(|o| seen.insert((o.2, o.3, o.4)));
        ops
    }

    proptest! {
        /// Any permutation with any duplication of a set of ops yields
        /// byte-identical digests (commutative, associative, idempotent).
        #[test]
        fn any_permutation_and_duplication_converges(
            ops in ops().prop_map(unique_stamps),
            seed in any::<u64>(),
            dups in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut reference = Space::new();
            for op in &ops { apply(&mut reference, op); }

            let mut shuffled: Vec<GenOp> = ops.clone();
            if !ops.is_empty() {
                for d in &dups { shuffled.push(ops[d.index(ops.len())].clone()); }
            }
            // Fisher-Yates with a seeded xorshift: deterministic per case.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut other = Space::new();
            for op in &shuffled { apply(&mut other, op); }
            prop_assert_eq!(reference.digest().to_bytes(), other.digest().to_bytes());
            prop_assert_eq!(reference.live_len(), other.live_len());

            // Merging a whole replica into another is idempotent too.
            let mut twice = other.clone();
            twice.absorb(reference.clone());
            prop_assert_eq!(twice.digest(), other.digest());

            // Splitting the ops over two replicas and absorbing one into the other converges.
            let (mut left, mut right) = (Space::new(), Space::new());
            for (i, op) in shuffled.iter().enumerate() {
                apply(if i % 2 == 0 { &mut left } else { &mut right }, op);
            }
            left.absorb(right);
            prop_assert_eq!(left.digest(), reference.digest());
            prop_assert_eq!(left.live_len(), reference.live_len());
        }

        /// A delete is never undone by a write with an older stamp, whatever the order.
        #[test]
        fn deletes_never_resurrected_by_older_writes(
            ops in ops().prop_map(unique_stamps),
            del_wall in 0u64..20,
        ) {
            let del = Stamp { wall_ns: del_wall, counter: 7, actor: 9 };
            let mut s = Space::new();
            s.merge(b"k\x00", None, del);
            for op in &ops { apply(&mut s, op); }
            let newer_write = ops.iter().filter(|o| o.0 == 0)
                .map(|o| (Stamp { wall_ns: o.2, counter: o.3, actor: o.4 }, o.1.is_some()))
                .filter(|(stamp, _)| *stamp > del)
                .max();
            let expect_live = newer_write.is_some_and(|(_, is_set)| is_set);
            prop_assert_eq!(s.value(b"k\x00").is_some(), expect_live);
        }
    }
}
