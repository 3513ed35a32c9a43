//! Hybrid Logical Clock.
//!
//! A [`Stamp`] orders every op in the mesh: physical time first, then a logical
//! counter that breaks ties inside one nanosecond (or while the wall clock goes
//! backwards), then the actor id so that two writers never produce equal stamps.
//! [`Hlc`] is sans-IO: callers pass the current time in.

use std::fmt;

/// Default bound on how far ahead of local time a remote stamp may be.
pub const DEFAULT_MAX_CLOCK_SKEW_NS: u64 = 60 * 1_000_000_000;

/// A point in the mesh's total order of ops. Ordered lexicographically by
/// `(wall_ns, counter, actor)`, the field order below.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Nanoseconds since the Unix epoch (physical part).
    pub wall_ns: u64,
    /// Logical counter inside one `wall_ns`.
    pub counter: u32,
    /// Id of the writer that produced the stamp.
    pub actor: u64,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{:016x}", self.wall_ns, self.counter, self.actor)
    }
}

/// A remote stamp was rejected by [`Hlc::observe`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stamp {stamp} is {ahead_ns} ns ahead of local time, more than the allowed {max_skew_ns} ns")]
pub struct ClockSkewError {
    /// The rejected stamp.
    pub stamp: Stamp,
    /// How far ahead of local time it was.
    pub ahead_ns: u64,
    /// The configured bound.
    pub max_skew_ns: u64,
}

/// A Hybrid Logical Clock for one actor.
#[derive(Debug, Clone)]
pub struct Hlc {
    actor: u64,
    wall_ns: u64,
    counter: u32,
    max_skew_ns: u64,
}

impl Hlc {
    /// A clock for `actor` that rejects remote stamps more than `max_skew_ns` ahead.
    pub fn new(actor: u64, max_skew_ns: u64) -> Self {
        Self { actor, wall_ns: 0, counter: 0, max_skew_ns }
    }

    /// The actor id stamped on every local op.
    pub fn actor(&self) -> u64 {
        self.actor
    }

    /// The last stamp this clock issued or observed (with this clock's actor).
    pub fn last(&self) -> Stamp {
        Stamp { wall_ns: self.wall_ns, counter: self.counter, actor: self.actor }
    }

    /// A new stamp for a local event at physical time `now_ns`, strictly greater
    /// than every stamp issued or observed before.
    pub fn tick(&mut self, now_ns: u64) -> Stamp {
        if now_ns > self.wall_ns {
            self.wall_ns = now_ns;
            self.counter = 0;
        } else {
            self.bump();
        }
        self.last()
    }

    /// Merges a remote stamp into the clock so that later ticks order after it.
    /// Rejects (and ignores) stamps more than the skew bound ahead of `now_ns`.
    pub fn observe(&mut self, remote: Stamp, now_ns: u64) -> Result<(), ClockSkewError> {
        let ahead_ns = remote.wall_ns.saturating_sub(now_ns);
        if ahead_ns > self.max_skew_ns {
            return Err(ClockSkewError { stamp: remote, ahead_ns, max_skew_ns: self.max_skew_ns });
        }
        self.witness(remote);
        Ok(())
    }

    /// Merges a stamp without the skew check: for stamps this node already
    /// accepted once, such as those replayed from its own ledger on boot.
    pub fn witness(&mut self, remote: Stamp) {
        if (remote.wall_ns, remote.counter) > (self.wall_ns, self.counter) {
            self.wall_ns = remote.wall_ns;
            self.counter = remote.counter;
        }
    }

    fn bump(&mut self) {
        match self.counter.checked_add(1) {
            Some(c) => self.counter = c,
            // 2^32 events in one nanosecond cannot come from a real clock; moving
            // the physical part forward by 1 ns keeps the order strict.
            None => {
                self.wall_ns = self.wall_ns.saturating_add(1);
                self.counter = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tick_advances_with_time_and_counter() {
        let mut h = Hlc::new(7, DEFAULT_MAX_CLOCK_SKEW_NS);
        let a = h.tick(100);
        let b = h.tick(100);
        let c = h.tick(50);
        let d = h.tick(200);
        assert_eq!(a, Stamp { wall_ns: 100, counter: 0, actor: 7 });
        assert_eq!(b, Stamp { wall_ns: 100, counter: 1, actor: 7 });
        assert_eq!(c, Stamp { wall_ns: 100, counter: 2, actor: 7 });
        assert_eq!(d, Stamp { wall_ns: 200, counter: 0, actor: 7 });
    }

    #[test]
    fn observe_rejects_stamps_too_far_ahead() {
        let mut h = Hlc::new(1, 1_000);
        let far = Stamp { wall_ns: 10_001, counter: 0, actor: 2 };
        let err = h.observe(far, 9_000).unwrap_err();
        assert_eq!(err.ahead_ns, 1_001);
        // The rejected stamp did not move the clock.
        assert_eq!(h.tick(9_000).wall_ns, 9_000);
        let near = Stamp { wall_ns: 10_000, counter: 5, actor: 2 };
        h.observe(near, 9_000).unwrap();
        assert!(h.tick(9_000) > near);
    }

    #[test]
    fn counter_overflow_moves_wall_forward() {
        let mut h = Hlc::new(1, DEFAULT_MAX_CLOCK_SKEW_NS);
        h.witness(Stamp { wall_ns: 5, counter: u32::MAX, actor: 9 });
        let s = h.tick(5);
        assert_eq!((s.wall_ns, s.counter), (6, 0));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Tick(u64),
        Observe(Stamp, u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..1_000).prop_map(Event::Tick),
            ((0u64..2_000, any::<u32>(), any::<u64>()), 0u64..1_000)
                .prop_map(|((w, c, a), now)| { Event::Observe(Stamp { wall_ns: w, counter: c, actor: a }, now) }),
        ]
    }

    proptest! {
        /// Every tick is strictly greater than every stamp issued or accepted before it,
        /// under any interleaving of ticks and observes and any (even backwards) clock.
        #[test]
        fn monotonic_under_any_interleaving(events in prop::collection::vec(event(), 1..200)) {
            let mut h = Hlc::new(42, 500);
            let mut highest: Option<Stamp> = None;
            for e in events {
                match e {
                    Event::Tick(now) => {
                        let s = h.tick(now);
                        if let Some(prev) = highest {
                            prop_assert!(s > prev, "{s} not after {prev}");
                        }
                        highest = Some(s);
                    }
                    Event::Observe(remote, now) => {
                        let accepted = h.observe(remote, now).is_ok();
                        prop_assert_eq!(accepted, remote.wall_ns <= now + 500);
                        if accepted && highest.is_none_or(|p| remote > p) {
                            highest = Some(remote);
                        }
                    }
                }
            }
        }
    }
}
