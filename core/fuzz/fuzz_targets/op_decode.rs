//! The zero-copy op decoder never panics and agrees with prost's decoder.
#![no_main]

use aether_core::{Op, OpRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let view = OpRef::decode(data);
    let owned = Op::decode(bytes::Bytes::copy_from_slice(data));
    match (view, owned) {
        (Ok(v), Ok(o)) => {
            assert_eq!(v.space, o.space);
            assert_eq!(v.key, &o.key[..]);
            assert_eq!(v.value, o.value.as_deref());
            assert_eq!(v.stamp, o.stamp);
            assert_eq!(v.origin, o.origin);
            // What decodes re-encodes to something that decodes to the same op.
            let again = v.encode_to_vec();
            let back = OpRef::decode(&again).expect("re-encoded op decodes");
            assert_eq!((back.space, back.key, back.value, back.stamp), (v.space, v.key, v.value, v.stamp));
        }
        (Err(_), Err(_)) => {}
        (v, o) => panic!("decoders disagree: view {v:?} vs prost {o:?}"),
    }
});
