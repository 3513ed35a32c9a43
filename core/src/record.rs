//! Ledger record framing, shared by WAL segments and snapshot files.
//!
//! A file is a 24-byte header followed by frames:
//!
//! ```text
//! header = magic[8] | seq: u64 LE | salt: u32 LE | crc: u32 LE   (crc = CRC32C of the first 20 bytes)
//! frame  = len: u32 LE | crc: u32 LE | payload[len]
//! crc    = CRC32C(salt LE ++ len bytes ++ payload)
//! ```
//!
//! The length is covered by the checksum, so a corrupted length is caught as
//! surely as a corrupted payload. The salt is random per file and never leaves
//! the node: payloads carry client-chosen bytes (keys), and without the salt a
//! client cannot plant bytes that would pass for a frame when recovery scans
//! for the next intact frame after damage.

/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 8;
/// Bytes of a file header.
pub const FILE_HEADER: usize = 24;
/// Upper bound on one frame's payload; anything longer is corruption.
pub const MAX_FRAME_PAYLOAD: usize = 16 * 1024 * 1024;
/// Magic of a WAL segment file.
pub const WAL_MAGIC: [u8; 8] = *b"AETHWAL1";
/// Magic of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"AETHSNP1";

fn frame_crc(salt: u32, len: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), len), payload)
}

/// Appends one frame holding `payload` to `out`.
pub fn put_frame(out: &mut Vec<u8>, salt: u32, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_FRAME_PAYLOAD);
    let len = (payload.len() as u32).to_le_bytes();
    let crc = frame_crc(salt, &len, payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends one frame whose payload is written by `write` (no intermediate buffer).
pub fn put_frame_with(out: &mut Vec<u8>, salt: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    write(out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    debug_assert!(len as usize <= MAX_FRAME_PAYLOAD);
    let len_bytes = len.to_le_bytes();
    let crc = frame_crc(salt, &len_bytes, &out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What a file header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Sequence number (segment number, or the segment a snapshot covers).
    pub seq: u64,
    /// The salt of every frame checksum in the file.
    pub salt: u32,
}

/// The 24-byte header of a ledger file.
pub fn file_header(magic: [u8; 8], seq: u64, salt: u32) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(&magic);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Parses and checks a file header.
pub fn parse_file_header(magic: [u8; 8], buf: &[u8]) -> Result<FileHeader, FrameError> {
    let Some(h) = buf.first_chunk::<FILE_HEADER>() else {
        return Err(FrameError::Truncated { offset: 0 });
    };
    if h[..8] != magic {
        return Err(FrameError::Corrupt { offset: 0, reason: "bad file magic" });
    }
    if crc32c::crc32c(&h[..20]).to_le_bytes() != h[20..] {
        return Err(FrameError::Corrupt { offset: 0, reason: "file header checksum mismatch" });
    }
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let salt = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    Ok(FileHeader { seq, salt })
}

/// One frame found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Offset of the frame's header in the scanned buffer.
    pub offset: usize,
    /// The payload.
    pub payload: &'a [u8],
}

/// A frame that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer ends inside the frame starting at `offset`.
    #[error("record at offset {offset} is truncated")]
    Truncated {
        /// Where the frame starts.
        offset: usize,
    },
    /// The frame at `offset` fails its checks.
    #[error("record at offset {offset} is corrupt: {reason}")]
    Corrupt {
        /// Where the frame starts.
        offset: usize,
        /// What failed.
        reason: &'static str,
    },
}

impl FrameError {
    /// Offset of the bad frame.
    pub fn offset(&self) -> usize {
        match *self {
            FrameError::Truncated { offset } | FrameError::Corrupt { offset, .. } => offset,
        }
    }
}

/// Checks the frame at `pos`: `Ok(Some(end))`, `Ok(None)` at the exact end of
/// the buffer, or the error.
fn check_frame(buf: &[u8], pos: usize, salt: u32) -> Result<Option<usize>, FrameError> {
    let rest = &buf[pos..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < FRAME_HEADER {
        return Err(FrameError::Truncated { offset: pos });
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::Corrupt { offset: pos, reason: "length exceeds the maximum record size" });
    }
    if rest.len() < FRAME_HEADER + len {
        return Err(FrameError::Truncated { offset: pos });
    }
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let actual = frame_crc(salt, &rest[..4], &rest[FRAME_HEADER..FRAME_HEADER + len]);
    if crc != actual {
        return Err(FrameError::Corrupt { offset: pos, reason: "checksum mismatch" });
    }
    Ok(Some(pos + FRAME_HEADER + len))
}

/// Iterates over the frames of `buf` from `start`. After the first error it
/// yields nothing more; use [`next_valid_frame`] to decide what the error means.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    salt: u32,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Frames of `buf` starting at byte `start` (e.g. after the file header),
    /// checksummed with the file's `salt`.
    pub fn new(buf: &'a [u8], start: usize, salt: u32) -> Self {
        Self { buf, pos: start.min(buf.len()), salt, failed: false }
    }

    /// Offset just after the last good frame.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Continue scanning at `pos` (after skipping a corrupt region).
    pub fn resume_at(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
        self.failed = false;
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match check_frame(self.buf, self.pos, self.salt) {
            Ok(None) => None,
            Ok(Some(end)) => {
                let frame = Frame { offset: self.pos, payload: &self.buf[self.pos + FRAME_HEADER..end] };
                self.pos = end;
                Some(Ok(frame))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The offset of the first intact frame strictly after `after`, if any.
/// Distinguishes a torn tail (nothing valid follows) from corruption in the
/// middle of a file (valid frames follow the bad one).
pub fn next_valid_frame(buf: &[u8], after: usize, salt: u32) -> Option<usize> {
    (after + 1..buf.len().saturating_sub(FRAME_HEADER - 1)).find(|&p| matches!(check_frame(buf, p, salt), Ok(Some(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SALT: u32 = 0x5eed_1234;

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = file_header(WAL_MAGIC, 3, SALT).to_vec();
        for p in payloads {
            put_frame(&mut out, SALT, p);
        }
        out
    }

    #[test]
    fn reads_back_frames() {
        let buf = file(&[b"a", b"", b"hello"]);
        assert_eq!(parse_file_header(WAL_MAGIC, &buf), Ok(FileHeader { seq: 3, salt: SALT }));
        let got: Vec<_> = Frames::new(&buf, FILE_HEADER, SALT).map(|f| f.unwrap().payload.to_vec()).collect();
        assert_eq!(got, vec![b"a".to_vec(), vec![], b"hello".to_vec()]);
    }

    #[test]
    fn put_frame_with_matches_put_frame() {
        let mut a = Vec::new();
        put_frame(&mut a, SALT, b"payload");
        let mut b = Vec::new();
        put_frame_with(&mut b, SALT, |o| o.extend_from_slice(b"payload"));
        assert_eq!(a, b);
    }

    #[test]
    fn torn_tail_is_truncated_error_with_nothing_after() {
        let buf = file(&[b"one", b"two"]);
        let cut = &buf[..buf.len() - 2];
        let results: Vec<_> = Frames::new(cut, FILE_HEADER, SALT).collect();
        assert_eq!(results.len(), 2);
        let err = results[1].unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }));
        assert_eq!(next_valid_frame(cut, err.offset(), SALT), None);
    }

    #[test]
    fn corruption_in_the_middle_is_found_with_valid_frames_after() {
        let mut buf = file(&[b"first", b"second", b"third"]);
        let second = FILE_HEADER + FRAME_HEADER + 5;
        buf[second + FRAME_HEADER + 1] ^= 0xff;
        let results: Vec<_> = Frames::new(&buf, FILE_HEADER, SALT).collect();
        assert_eq!(results[1], Err(FrameError::Corrupt { offset: second, reason: "checksum mismatch" }));
        let third = second + FRAME_HEADER + 6;
        assert_eq!(next_valid_frame(&buf, second, SALT), Some(third));
        let mut frames = Frames::new(&buf, FILE_HEADER, SALT);
        frames.by_ref().for_each(drop);
        frames.resume_at(third);
        assert_eq!(frames.next().unwrap().unwrap().payload, b"third");
    }

    #[test]
    fn bad_magic_or_header_is_rejected() {
        let mut buf = file(&[]);
        assert!(parse_file_header(SNAPSHOT_MAGIC, &buf).is_err());
        buf[12] ^= 1;
        assert!(parse_file_header(WAL_MAGIC, &buf).is_err());
    }

    /// A frame written with another salt (e.g. bytes a client planted inside a
    /// key) is not accepted, by scanning or by resynchronisation.
    #[test]
    fn frames_of_another_salt_are_not_frames() {
        let mut planted = Vec::new();
        put_frame(&mut planted, 0, b"forged op");
        let mut outer = Vec::new();
        put_frame(&mut outer, SALT, &planted);
        let mut buf = file_header(WAL_MAGIC, 1, SALT).to_vec();
        buf.extend_from_slice(&outer);
        let inner_at = FILE_HEADER + FRAME_HEADER;
        assert_eq!(next_valid_frame(&buf, FILE_HEADER, SALT), None);
        assert!(Frames::new(&buf, inner_at, SALT).next().unwrap().is_err());
        assert!(Frames::new(&buf, inner_at, 0).next().unwrap().is_ok(), "the planted frame is valid for salt 0");
    }

    proptest! {
        /// Any byte flip is detected: scanning never yields a payload that was not written.
        #[test]
        fn flips_never_yield_foreign_payloads(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8),
            at in any::<prop::sample::Index>(),
            mask in 1u8..,
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
            let mut buf = file(&refs);
            let i = FILE_HEADER + at.index(buf.len() - FILE_HEADER);
            buf[i] ^= mask;
            for f in Frames::new(&buf, FILE_HEADER, SALT).flatten() {
                prop_assert!(payloads.iter().any(|p| p[..] == *f.payload));
            }
        }

        #[test]
        fn scanning_garbage_never_panics(buf in prop::collection::vec(any::<u8>(), 0..256), start in 0usize..300) {
            let mut frames = Frames::new(&buf, start, SALT);
            while let Some(r) = frames.next() {
                if let Err(e) = r
                    && let Some(p) = next_valid_frame(&buf, e.offset(), SALT)
                {
                    frames.resume_at(p);
                }
            }
        }
    }
}
