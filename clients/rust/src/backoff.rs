//! Reconnect backoff: exponential, bounded, with jitter (sans-IO: the caller
//! passes the random number).

use std::time::Duration;

/// Exponential backoff between `min` and `max` with "equal jitter": the n-th
/// delay is uniformly drawn from `[d/2, d]` where `d = min(max, min·2ⁿ)`, so
/// clients that lost the same relay do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `min` and never above `max` (`max ≥ min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), attempt: 0 }
    }

    /// The delay before the next attempt; `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let d = nth_delay(self.min, self.max, self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Failed attempts since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to `min`, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The delay before attempt `n` (0-based) of an exponential backoff between
/// `min` and `max` with equal jitter (`unit` in `[0, 1)`): uniformly in
/// `[d/2, d]` where `d = min(max, min·2ⁿ)`. [`Backoff`] without the state.
pub fn nth_delay(min: Duration, max: Duration, n: u32, unit: f64) -> Duration {
    let d = min.saturating_mul(1u32 << n.min(20)).min(max.max(min));
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    d / 2 + d.mul_f64(unit / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_with_jitter_in_the_upper_half() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.next_delay(1.0), ms(100));
        assert_eq!(b.next_delay(0.0), ms(100));
        assert_eq!(b.next_delay(1.0), ms(400));
        assert_eq!(b.next_delay(1.0), ms(800));
        for _ in 0..100 {
            let d = b.next_delay(0.5);
            assert_eq!(d, ms(750));
        }
        assert!(b.next_delay(f64::NAN) >= ms(500));
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(0.0), ms(50));
    }

    #[test]
    fn nth_delay_is_the_stateless_form() {
        let ms = Duration::from_millis;
        assert_eq!(nth_delay(ms(250), ms(10_000), 0, 1.0), ms(250));
        assert_eq!(nth_delay(ms(250), ms(10_000), 3, 1.0), ms(2000));
        assert_eq!(nth_delay(ms(250), ms(10_000), 60, 1.0), ms(10_000));
        assert_eq!(nth_delay(ms(250), ms(10_000), 60, 0.0), ms(5_000));
    }
}
