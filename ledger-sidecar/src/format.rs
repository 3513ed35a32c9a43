//! Reading ledger files (WAL segments and snapshot files) as they are on disk
//! and in the store: every frame's CRC is checked, ops are decoded.

use aether_core::record::{FILE_HEADER, Frames, SNAPSHOT_MAGIC, WAL_MAGIC, parse_file_header};
use aether_core::{OpRef, Stamp};
use aether_proto::v1::SnapshotHeader;
use prost::Message;

/// What kind of ledger file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WAL segment.
    Segment,
    /// One space's snapshot file.
    Snapshot,
}

/// Summary of a file whose every record checked out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ops (or snapshot entries) in the file.
    pub ops: u64,
    /// Smallest stamp wall time of any op (`u64::MAX` when empty).
    pub min_wall_ns: u64,
    /// Greatest stamp wall time of any op (0 when empty).
    pub max_wall_ns: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
    /// Bytes.
    pub bytes: u64,
}

/// A damaged file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset}: {reason}")]
pub struct Damage {
    /// Byte offset of the bad record (0: the file header).
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

fn damage(offset: usize, reason: impl ToString) -> Damage {
    Damage { offset, reason: reason.to_string() }
}

/// Which kind of file `buf` is, from its magic.
pub fn kind_of(buf: &[u8]) -> Result<Kind, Damage> {
    if buf.starts_with(&WAL_MAGIC) {
        Ok(Kind::Segment)
    } else if buf.starts_with(&SNAPSHOT_MAGIC) {
        Ok(Kind::Snapshot)
    } else {
        Err(damage(0, "not an Aethermesh ledger file (unknown magic)"))
    }
}

/// Walks every op of `buf` (a segment or a snapshot file) in file order, calling
/// `each(space, op, offset)`; any damaged record, anywhere, is an error. A
/// sealed segment never ends in a torn record, so a torn tail is damage too.
pub fn for_each_op(buf: &[u8], mut each: impl FnMut(&str, &OpRef<'_>, usize)) -> Result<Stats, Damage> {
    let kind = kind_of(buf)?;
    let magic = if kind == Kind::Segment { WAL_MAGIC } else { SNAPSHOT_MAGIC };
    let salt = parse_file_header(magic, buf).map_err(|e| damage(0, e))?.salt;
    let mut frames = Frames::new(buf, FILE_HEADER, salt);
    let mut stats =
        Stats { min_wall_ns: u64::MAX, crc32c: crc32c::crc32c(buf), bytes: buf.len() as u64, ..Stats::default() };
    let header = match kind {
        Kind::Segment => None,
        Kind::Snapshot => match frames.next() {
            Some(Ok(f)) => Some(SnapshotHeader::decode(f.payload).map_err(|e| damage(f.offset, e))?),
            Some(Err(e)) => return Err(damage(e.offset(), e)),
            None => return Err(damage(FILE_HEADER, "missing snapshot header")),
        },
    };
    for frame in frames {
        let f = frame.map_err(|e| damage(e.offset(), e))?;
        let op = OpRef::decode(f.payload).map_err(|e| damage(f.offset, e))?;
        let space = header.as_ref().map_or(op.space, |h| h.space.as_str());
        stats.ops += 1;
        stats.min_wall_ns = stats.min_wall_ns.min(op.stamp.wall_ns);
        stats.max_wall_ns = stats.max_wall_ns.max(op.stamp.wall_ns);
        each(space, &op, f.offset);
    }
    if let Some(h) = header
        && h.ops != stats.ops
    {
        return Err(damage(0, format!("header announces {} ops, file holds {}", h.ops, stats.ops)));
    }
    Ok(stats)
}

/// Checks every record of `buf` and summarises it.
pub fn check(buf: &[u8]) -> Result<Stats, Damage> {
    for_each_op(buf, |_, _, _| {})
}

/// `stamp` as one JSON-friendly string: `wall_ns.counter.actor` (actor in hex).
pub fn stamp_string(s: &Stamp) -> String {
    format!("{}.{}.{:016x}", s.wall_ns, s.counter, s.actor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::record::{file_header, put_frame_with};

    fn segment(ops: &[(u64, &str)]) -> Vec<u8> {
        let mut buf = file_header(WAL_MAGIC, 7, 99).to_vec();
        for (wall, key) in ops {
            let stamp = Stamp { wall_ns: *wall, counter: 0, actor: 1 };
            let op = OpRef { space: "s", key: key.as_bytes(), value: Some(b"1"), stamp, origin: 0 };
            put_frame_with(&mut buf, 99, |o| op.encode(o));
        }
        buf
    }

    #[test]
    fn stats_cover_every_op_and_damage_is_located() {
        let buf = segment(&[(30, "a"), (10, "b"), (20, "c")]);
        let stats = check(&buf).unwrap();
        assert_eq!((stats.ops, stats.min_wall_ns, stats.max_wall_ns), (3, 10, 30));
        assert_eq!(stats.crc32c, crc32c::crc32c(&buf));
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let d = check(&bad).unwrap_err();
        assert!(d.offset > FILE_HEADER, "{d}");
        // A torn tail is damage in a sealed file.
        assert!(check(&buf[..buf.len() - 2]).is_err());
        assert!(check(b"garbage that is long enough to have a header").is_err());
    }
}
