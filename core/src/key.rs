//! [`Key`]: a space's key, stored inline when short.
//!
//! Most keys are short ("title", "cursor:42"). Keeping them inside the hash
//! map's slot saves an allocation per key and, more importantly, a pointer
//! chase (a cache miss) on every lookup of a large space.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// Longest key stored inline (the type stays 40 bytes, like `Bytes` plus a tag).
pub const INLINE_KEY_BYTES: usize = 38;

/// A key: inline up to [`INLINE_KEY_BYTES`], shared `Bytes` beyond.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES] },
    Heap(Bytes),
}

impl Key {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(b) => b,
        }
    }

    /// True when the key is stored inline.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<&[u8]> for Key {
    fn from(k: &[u8]) -> Self {
        if k.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0u8; INLINE_KEY_BYTES];
            bytes[..k.len()].copy_from_slice(k);
            Key(Repr::Inline { len: k.len() as u8, bytes })
        } else {
            Key(Repr::Heap(Bytes::copy_from_slice(k)))
        }
    }
}

impl From<Bytes> for Key {
    fn from(k: Bytes) -> Self {
        if k.len() <= INLINE_KEY_BYTES { Key::from(&k[..]) } else { Key(Repr::Heap(k)) }
    }
}

impl Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Hash and Eq must agree with `[u8]`'s for `Borrow<[u8]>` lookups.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_keys_inline_long_keys_shared() {
        let short = Key::from(&b"title"[..]);
        assert!(short.is_inline());
        assert_eq!(&*short, b"title");
        let long = Key::from(Bytes::from(vec![b'x'; INLINE_KEY_BYTES + 1]));
        assert!(!long.is_inline());
        assert_eq!(long.len(), INLINE_KEY_BYTES + 1);
        assert_eq!(std::mem::size_of::<Key>(), 40);
    }

    #[test]
    fn lookups_by_slice_work_for_both_forms() {
        let mut m = HashMap::new();
        let long = [b'y'; 100];
        m.insert(Key::from(&b"a"[..]), 1);
        m.insert(Key::from(&long[..]), 2);
        assert_eq!(m.get(&b"a"[..]), Some(&1));
        assert_eq!(m.get(&long[..]), Some(&2));
        assert_eq!(m.get(&b"b"[..]), None);
    }
}
