//! Scanning arbitrary bytes as a ledger file never panics, never reads out of
//! bounds, and always makes progress when resynchronising.
#![no_main]

use aether_core::record::{Frames, next_valid_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((salt, data)) = data.split_first_chunk::<4>() else { return };
    let salt = u32::from_le_bytes(*salt);
    let mut frames = Frames::new(data, 0, salt);
    let mut last = 0usize;
    while let Some(r) = frames.next() {
        match r {
            Ok(f) => {
                assert!(f.offset >= last && f.offset + 8 + f.payload.len() <= data.len());
                last = f.offset;
            }
            Err(e) => match next_valid_frame(data, e.offset(), salt) {
                Some(p) => {
                    assert!(p > e.offset());
                    frames.resume_at(p);
                }
                None => break,
            },
        }
    }
});
