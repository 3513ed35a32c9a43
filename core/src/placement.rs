//! Shard placement: which shard a space belongs to, and which members own it.
//!
//! Pure functions of their inputs, identical in every process and version:
//!
//! - `shard_of(space, S) = xxh3_64(space as UTF-8, seed 0) mod S`
//! - the owners of shard `s` are the `R` members with the highest rendezvous
//!   score `xxh3_64(s as u32 LE ++ member name as UTF-8, seed 0)`, ties broken
//!   by name, highest first (the first is the shard's primary).
//!
//! Rendezvous (highest-random-weight) hashing moves only what it must: adding a
//! member takes over about `R/(N+1)` of the shards' ownership slots, all of them
//! to the new member; removing one moves only the shards it owned.

use xxhash_rust::xxh3::xxh3_64;

/// The shard of `space` among `shards` shards (`shards` ≥ 1).
pub fn shard_of(space: &str, shards: u32) -> u32 {
    debug_assert!(shards > 0);
    (xxh3_64(space.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// The rendezvous score of `member` for `shard`.
pub fn score(shard: u32, member: &str) -> u64 {
    let mut buf = Vec::with_capacity(4 + member.len());
    buf.extend_from_slice(&shard.to_le_bytes());
    buf.extend_from_slice(member.as_bytes());
    xxh3_64(&buf)
}

/// The owners of `shard`: the `replication` members with the highest scores,
/// highest first. Fewer when there are fewer members. Duplicate names count once.
pub fn owners<M: AsRef<str>>(shard: u32, members: &[M], replication: usize) -> Vec<&str> {
    let mut ranked: Vec<(u64, &str)> = members.iter().map(|m| (score(shard, m.as_ref()), m.as_ref())).collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().take(replication).map(|(_, m)| m).collect()
}

/// True when `member` is among the owners of `shard`.
pub fn is_owner<M: AsRef<str>>(shard: u32, members: &[M], replication: usize, member: &str) -> bool {
    owners(shard, members, replication).contains(&member)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("relay-{i}")).collect()
    }

    /// The functions are part of the mesh's wire contract: every process must
    /// compute the same values. These were computed once and must never change.
    #[test]
    fn values_are_fixed_across_processes_and_versions() {
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2, "the XXH3 implementation itself changed");
        let fixed: Vec<u32> = ["default", "doc-42", "ü"].iter().map(|s| shard_of(s, 256)).collect();
        assert_eq!(fixed, GOLDEN_SHARDS);
        assert_eq!(owners(7, &members(5), 3), GOLDEN_OWNERS_OF_7);
    }

    const GOLDEN_SHARDS: [u32; 3] = [26, 139, 110];
    const GOLDEN_OWNERS_OF_7: [&str; 3] = ["relay-4", "relay-2", "relay-3"];

    #[test]
    fn owners_are_distinct_ranked_and_bounded() {
        let m = members(4);
        for shard in 0..64 {
            let o = owners(shard, &m, 3);
            assert_eq!(o.len(), 3);
            let mut sorted = o.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "distinct owners");
            assert!(score(shard, o[0]) >= score(shard, o[1]) && score(shard, o[1]) >= score(shard, o[2]));
        }
        assert_eq!(owners(1, &members(2), 3).len(), 2, "fewer members than R");
        assert_eq!(owners(1, &["a", "a", "b"], 3), owners(1, &["a", "b"], 3), "duplicates count once");
        assert!(owners::<String>(1, &[], 3).is_empty());
        // The order of the member list does not matter.
        let mut rev = m.clone();
        rev.reverse();
        assert_eq!(owners(9, &m, 3), owners(9, &rev, 3));
    }

    #[test]
    fn balance_within_twenty_percent() {
        let (shards, n, r) = (4096u32, 10usize, 3usize);
        let m = members(n);
        let mut count = vec![0usize; n];
        for s in 0..shards {
            for o in owners(s, &m, r) {
                count[m.iter().position(|x| x == o).unwrap()] += 1;
            }
        }
        let ideal = shards as f64 * r as f64 / n as f64;
        for (i, c) in count.iter().enumerate() {
            let dev = (*c as f64 - ideal).abs() / ideal;
            assert!(dev < 0.2, "member {i} owns {c}, ideal {ideal:.0}");
        }
        // Spaces spread over shards evenly too.
        let mut per_shard = vec![0usize; 64];
        for i in 0..64_000 {
            per_shard[shard_of(&format!("space-{i}"), 64) as usize] += 1;
        }
        assert!(per_shard.iter().all(|&c| (800..1200).contains(&c)), "{per_shard:?}");
    }

    #[test]
    fn adding_a_member_moves_about_one_nth_and_only_to_it() {
        let (shards, n, r) = (4096u32, 10usize, 3usize);
        let before = members(n);
        let after = members(n + 1);
        let newcomer = after[n].as_str();
        let mut changed_slots = 0usize;
        for s in 0..shards {
            let old = owners(s, &before, r);
            let new = owners(s, &after, r);
            let gained: Vec<_> = new.iter().filter(|m| !old.contains(m)).collect();
            let lost: Vec<_> = old.iter().filter(|m| !new.contains(m)).collect();
            // Only the newcomer gains, and it displaces at most one owner.
            assert!(gained.iter().all(|m| **m == newcomer), "shard {s}: {gained:?}");
            assert!(gained.len() <= 1 && lost.len() == gained.len());
            changed_slots += gained.len();
        }
        let fraction = changed_slots as f64 / (shards as usize * r) as f64;
        let expected = 1.0 / (n + 1) as f64;
        assert!((fraction - expected).abs() < expected * 0.3, "moved {fraction:.3}, expected ≈ {expected:.3}");
    }

    #[test]
    fn removing_a_member_moves_only_its_shards() {
        let (shards, r) = (1024u32, 3usize);
        let before = members(6);
        let gone = "relay-2";
        let after: Vec<_> = before.iter().filter(|m| *m != gone).cloned().collect();
        for s in 0..shards {
            let old = owners(s, &before, r);
            let new = owners(s, &after, r);
            if !old.contains(&gone) {
                assert_eq!(old, new, "shard {s} moved although {gone} did not own it");
            } else {
                assert_eq!(new.iter().filter(|m| !old.contains(m)).count(), 1);
            }
        }
    }
}
