//! Anti-entropy: how two replicas of a shard find what one has and the other
//! lacks without shipping everything.
//!
//! Three steps, each a pure function here (the relay's gRPC service and its
//! sync task are thin shells around them):
//!
//! 1. compare the [`Digest`] of every space of the shard ([`diff_spaces`]);
//! 2. for a space that differs, compare per-bucket digests, entries falling in
//!    bucket `xxh3_64(key) mod buckets` ([`bucket_digests`], [`diff_buckets`]);
//! 3. exchange only the entries of the differing buckets, in pages sorted by
//!    key ([`entries_page`]).
//!
//! Merging what arrives is the ordinary LWW merge, so a session may be cut at
//! any point, repeated or run from both sides at once: it only ever moves
//! replicas closer together.

use xxhash_rust::xxh3::xxh3_64;

use crate::key::Key;
use crate::space::{Digest, Entry, Space};

/// Buckets per space used by the relay; part of the mesh's wire contract only
/// through the request, which names its bucket count.
pub const DEFAULT_BUCKETS: u32 = 64;

/// Most buckets a request may ask for (bounds the reply's size).
pub const MAX_BUCKETS: u32 = 4096;

/// The bucket of `key` among `buckets` buckets (`buckets` ≥ 1).
pub fn bucket_of(key: &[u8], buckets: u32) -> u32 {
    (xxh3_64(key) % u64::from(buckets.max(1))) as u32
}

/// The digest of each bucket of `space`.
pub fn bucket_digests(space: &Space, buckets: u32) -> Vec<Digest> {
    let mut out = vec![Digest::default(); buckets.max(1) as usize];
    for (k, e) in space.iter() {
        out[bucket_of(k, buckets) as usize].add(k, e);
    }
    out
}

/// Encodes digests as concatenated 24-byte forms.
pub fn encode_digests(digests: &[Digest]) -> Vec<u8> {
    digests.iter().flat_map(|d| d.to_bytes()).collect()
}

/// Decodes concatenated 24-byte digests; `None` when the length is not a multiple of 24.
pub fn decode_digests(bytes: &[u8]) -> Option<Vec<Digest>> {
    if !bytes.len().is_multiple_of(24) {
        return None;
    }
    bytes.chunks_exact(24).map(Digest::from_bytes).collect()
}

/// The buckets whose digests differ. Lists of different lengths differ everywhere.
pub fn diff_buckets(local: &[Digest], remote: &[Digest]) -> Vec<u32> {
    if local.len() != remote.len() {
        return (0..local.len().max(remote.len()) as u32).collect();
    }
    local.iter().zip(remote).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i as u32).collect()
}

/// How a space compares between the local and a remote replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpaceDiff {
    /// Only the remote has it: fetch all of it.
    RemoteOnly(String),
    /// Only the local replica has it: push all of it.
    LocalOnly(String),
    /// Both have it with different digests: compare buckets.
    Differs(String),
}

/// Compares two lists of `(space, digest)` covering the same range of names.
/// Inputs need not be sorted; the output is sorted by name.
pub fn diff_spaces(local: &[(String, Digest)], remote: &[(String, Digest)]) -> Vec<SpaceDiff> {
    let mut l: Vec<&(String, Digest)> = local.iter().filter(|(_, d)| d.entries > 0).collect();
    let mut r: Vec<&(String, Digest)> = remote.iter().filter(|(_, d)| d.entries > 0).collect();
    l.sort_by(|a, b| a.0.cmp(&b.0));
    r.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < l.len() || j < r.len() {
        match (l.get(i), r.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    out.push(SpaceDiff::Differs(a.0.clone()));
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push(SpaceDiff::LocalOnly(a.0.clone()));
                i += 1;
            }
            (Some(a), None) => {
                out.push(SpaceDiff::LocalOnly(a.0.clone()));
                i += 1;
            }
            (_, Some(b)) => {
                out.push(SpaceDiff::RemoteOnly(b.0.clone()));
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    out
}

/// One page of the entries of `space` in the `wanted` buckets (all buckets
/// when `wanted` is `None`), sorted by key, starting after `after` (exclusive;
/// `None` for the first page — the empty key is a valid key), at most `limit`
/// (≥ 1) of them. Returns the page and whether more entries follow.
pub fn entries_page(
    space: &Space,
    buckets: u32,
    wanted: Option<&[u32]>,
    after: Option<&[u8]>,
    limit: usize,
) -> (Vec<(Key, Entry)>, bool) {
    let mut want = vec![wanted.is_none(); buckets.max(1) as usize];
    for &b in wanted.unwrap_or(&[]) {
        if let Some(w) = want.get_mut(b as usize) {
            *w = true;
        }
    }
    let mut keys: Vec<(&Key, &Entry)> = space
        .iter()
        .filter(|(k, _)| after.is_none_or(|a| k.as_bytes() > a) && want[bucket_of(k, buckets) as usize])
        .collect();
    let limit = limit.max(1);
    let more = keys.len() > limit;
    if more {
        keys.select_nth_unstable_by(limit - 1, |a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        keys.truncate(limit);
    }
    keys.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    (keys.into_iter().map(|(k, e)| (k.clone(), e.clone())).collect(), more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;

    fn st(w: u64) -> Stamp {
        Stamp { wall_ns: w, counter: 0, actor: 1 }
    }

    fn space(n: u64, offset: u64) -> Space {
        let mut s = Space::new();
        for i in 0..n {
            s.merge(format!("k{i}").as_bytes(), Some(b"v"), st(i + offset));
        }
        s
    }

    #[test]
    fn bucket_digests_add_up_to_the_space_digest() {
        let s = space(500, 1);
        let b = bucket_digests(&s, 64);
        let total = b.iter().fold(Digest::default(), |mut acc, d| {
            acc.sum = acc.sum.wrapping_add(d.sum);
            acc.entries += d.entries;
            acc
        });
        assert_eq!(total, s.digest());
        assert_eq!(decode_digests(&encode_digests(&b)).unwrap(), b);
        assert!(decode_digests(&[0; 25]).is_none());
    }

    #[test]
    fn one_changed_key_differs_in_one_bucket() {
        let a = space(1000, 1);
        let mut b = a.clone();
        b.merge(b"k17", Some(b"new"), st(10_000));
        let diff = diff_buckets(&bucket_digests(&a, 64), &bucket_digests(&b, 64));
        assert_eq!(diff, vec![bucket_of(b"k17", 64)]);
        assert_eq!(diff_buckets(&bucket_digests(&a, 8), &bucket_digests(&a, 16)).len(), 16);
    }

    #[test]
    fn paging_returns_every_wanted_entry_once_in_key_order() {
        let s = space(1000, 1);
        let wanted = [3u32, 9, 60];
        let mut got = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) = entries_page(&s, 64, Some(&wanted), after.as_deref(), 7);
            assert!(page.len() <= 7);
            assert!(page.windows(2).all(|w| w[0].0.as_bytes() < w[1].0.as_bytes()));
            if let Some((k, _)) = page.last() {
                after = Some(k.as_bytes().to_vec());
            }
            got.extend(page);
            if !more {
                break;
            }
        }
        let expected: Vec<_> = s.iter().filter(|(k, _)| wanted.contains(&bucket_of(k, 64))).collect();
        assert_eq!(got.len(), expected.len());
        assert!(got.iter().all(|(k, e)| s.get(k) == Some(e)));
        let (all, more) = entries_page(&s, 64, None, None, 5000);
        assert_eq!((all.len(), more), (1000, false));
        // The empty key is a key like any other: a page ending on it moves on.
        let mut e = Space::new();
        e.merge(b"", Some(b"v"), st(1));
        e.merge(b"a", Some(b"v"), st(2));
        let (first, more) = entries_page(&e, 8, None, None, 1);
        assert_eq!((first[0].0.as_bytes(), more), (&b""[..], true));
        let (second, more) = entries_page(&e, 8, None, Some(b""), 1);
        assert_eq!((second[0].0.as_bytes(), more), (&b"a"[..], false));
    }

    #[test]
    fn spaces_are_diffed_by_name_and_digest() {
        let d = |n: u64| space(n, 1).digest();
        let local =
            vec![("a".to_string(), d(1)), ("b".into(), d(2)), ("c".into(), d(3)), ("e".into(), Digest::default())];
        let remote = vec![("d".to_string(), d(1)), ("c".into(), d(4)), ("b".into(), d(2))];
        assert_eq!(
            diff_spaces(&local, &remote),
            vec![SpaceDiff::LocalOnly("a".into()), SpaceDiff::Differs("c".into()), SpaceDiff::RemoteOnly("d".into())]
        );
    }

    /// Two replicas that took different writes converge after one exchange of
    /// the differing buckets in both directions.
    #[test]
    fn exchanging_differing_buckets_converges() {
        let mut a = space(300, 1);
        let mut b = space(300, 1);
        for i in 0..20 {
            a.merge(format!("a{i}").as_bytes(), Some(b"x"), st(500 + i));
            b.merge(format!("k{}", i * 7).as_bytes(), None, st(900 + i));
        }
        let diff = diff_buckets(&bucket_digests(&a, 64), &bucket_digests(&b, 64));
        let (from_b, _) = entries_page(&b, 64, Some(&diff), None, usize::MAX);
        let (from_a, _) = entries_page(&a, 64, Some(&diff), None, usize::MAX);
        for (k, e) in from_b {
            a.merge_owned(k, e.value, e.stamp);
        }
        for (k, e) in from_a {
            b.merge_owned(k, e.value, e.stamp);
        }
        assert_eq!(a.digest(), b.digest());
    }
}
