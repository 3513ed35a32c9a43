//! Client-side pacing, sans-IO: a token bucket that mirrors a relay
//! connection's rate limit (`welcome.limits.opsPerSec` and `burst`; a write
//! costs one token per op, any other frame one, a cost being capped at the
//! burst like the relay caps it). Frames wait in the session's outbox until
//! the bucket can pay for them, so the relay does not have to refuse them
//! with `rate-limited`. Times come in as arguments.

use std::time::{Duration, Instant};

/// Share of the advertised rate and burst the client allows itself: frames
/// reach the relay with jitter (batched writes, the network), so some
/// headroom keeps them under the relay's own bucket.
pub const HEADROOM: f64 = 0.9;

/// Rounding slack when comparing token counts.
const EPSILON: f64 = 1e-6;

/// A token bucket; unlimited when the relay did not advertise a rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Tokens per second; 0 = unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A full bucket for a relay's advertised limits; `ops_per_sec` of 0 (or
    /// not finite) means unknown: no pacing.
    pub fn new(ops_per_sec: f32, burst: u32, now: Instant) -> Pacer {
        let rate = if ops_per_sec.is_finite() && ops_per_sec > 0.0 { f64::from(ops_per_sec) * HEADROOM } else { 0.0 };
        let burst = (f64::from(burst.max(1)) * HEADROOM).floor().max(1.0);
        Pacer { rate, burst, tokens: burst, last: now }
    }

    /// A pacer that never waits.
    pub fn unlimited(now: Instant) -> Pacer {
        Pacer::new(0.0, 0, now)
    }

    /// True when frames are paced.
    pub fn is_limited(&self) -> bool {
        self.rate > 0.0
    }

    /// Most ops worth grouping into one frame (the burst), when paced.
    pub fn burst_ops(&self) -> Option<usize> {
        self.is_limited().then_some(self.burst as usize)
    }

    /// The cost of a frame of `ops` ops (1 for frames other than writes).
    pub fn cost(&self, ops: usize) -> f64 {
        (ops.max(1) as f64).min(self.burst)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Pays for a frame of `ops` ops if the bucket can.
    pub fn try_take(&mut self, ops: usize, now: Instant) -> bool {
        if !self.is_limited() {
            return true;
        }
        self.refill(now);
        let cost = self.cost(ops);
        if self.tokens + EPSILON >= cost {
            self.tokens = (self.tokens - cost).max(0.0);
            true
        } else {
            false
        }
    }

    /// When a frame of `ops` ops can be paid for (`now` or later).
    pub fn ready_at(&self, ops: usize, now: Instant) -> Instant {
        if !self.is_limited() {
            return now;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let missing = self.cost(ops) - tokens;
        if missing <= EPSILON {
            return now;
        }
        // Rounded up to the next microsecond so that waking then succeeds.
        let micros = (missing / self.rate * 1e6).ceil() as u64 + 1;
        now + Duration::from_micros(micros)
    }

    /// The relay said `rate-limited`: its bucket is emptier than ours
    /// thought; start over from empty.
    pub fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_limits_never_wait() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.0, 0, t0);
        assert!(!p.is_limited() && p.burst_ops().is_none());
        for _ in 0..10_000 {
            assert!(p.try_take(256, t0));
        }
        assert_eq!(p.ready_at(1_000, t0), t0);
        assert!(!Pacer::new(f32::NAN, 10, t0).is_limited());
    }

    #[test]
    fn paces_to_the_rate_with_headroom_after_the_burst() {
        let t0 = Instant::now();
        // 100 ops/s, burst 20: 18 at once, then 90/s.
        let mut p = Pacer::new(100.0, 20, t0);
        assert_eq!(p.burst_ops(), Some(18));
        let mut sent = 0;
        while p.try_take(1, t0) {
            sent += 1;
        }
        assert_eq!(sent, 18);
        let at = p.ready_at(1, t0);
        assert!(at > t0 && at <= t0 + Duration::from_micros(11_200), "{:?}", at - t0);
        assert!(p.try_take(1, at));
        // Over one simulated second, about 90 more.
        let mut now = at;
        let end = t0 + Duration::from_secs(1);
        let mut more = 0;
        while now < end {
            now = p.ready_at(1, now);
            if now < end && p.try_take(1, now) {
                more += 1;
            }
        }
        assert!((88..=90).contains(&more), "{more}");
    }

    #[test]
    fn writes_cost_their_ops_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10.0, 10, t0);
        assert_eq!(p.cost(0), 1.0);
        assert_eq!(p.cost(5), 5.0);
        assert_eq!(p.cost(500), 9.0);
        assert!(p.try_take(500, t0));
        assert!(!p.try_take(1, t0));
        // A full bucket is needed for a frame over the burst: 9 tokens at 9/s.
        let at = p.ready_at(500, t0);
        assert!(at >= t0 + Duration::from_secs(1) && at < t0 + Duration::from_millis(1001));
        assert!(!p.try_take(500, at - Duration::from_millis(5)));
        assert!(p.try_take(500, at));
    }

    #[test]
    fn a_refusal_drains_the_bucket() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10.0, 10, t0);
        p.drain(t0);
        assert!(!p.try_take(1, t0));
        let at = p.ready_at(1, t0);
        assert!(at > t0 + Duration::from_millis(100) && at < t0 + Duration::from_millis(112));
        // Time never runs backwards for the bucket.
        assert!(!p.try_take(1, t0 - Duration::from_millis(1)));
    }
}
