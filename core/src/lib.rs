//! Aethermesh core: the sans-IO heart shared by relays, clients and the ledger
//! sidecar. Hybrid Logical Clock stamps ([`hlc`]), last-writer-wins spaces
//! ([`space`]), the op codec ([`op`]), ledger record framing ([`record`]) and
//! shard placement ([`placement`]), anti-entropy ([`sync`]), the replication
//! send queue ([`outbox`]) and edge routing ([`edge`]).
//!
//! Architecture invariant: nothing here does I/O, reads a clock or spawns a
//! task. Time comes in as arguments; bytes come in as slices.

#![warn(missing_docs)]

pub mod edge;
pub mod hlc;
pub mod key;
pub mod op;
pub mod outbox;
pub mod placement;
pub mod record;
pub mod space;
pub mod sync;

pub use hlc::{ClockSkewError, Hlc, Stamp};
pub use key::Key;
pub use op::{Op, OpRef};
pub use space::{Digest, Entry, Merge, Space};
