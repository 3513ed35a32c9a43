//! Hedging and liveness timing, sans-IO: when a write is overdue at its relay
//! (observed RTT + `hedge_delay`), when a silent relay counts as stalled, and a
//! deadline queue for per-write timers. Times come in as arguments.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Smoothed round-trip time of one relay connection (RFC 6298 style: 7/8 old + 1/8 sample).
#[derive(Debug, Clone, Copy)]
pub struct Rtt {
    srtt: Duration,
}

impl Rtt {
    /// Starts from a first sample (the hello → welcome exchange).
    pub fn new(first: Duration) -> Self {
        Rtt { srtt: first }
    }

    /// Folds in a new sample (ping → pong).
    pub fn sample(&mut self, d: Duration) {
        self.srtt = self.srtt.mul_f64(0.875) + d.mul_f64(0.125);
    }

    /// The current estimate.
    pub fn get(&self) -> Duration {
        self.srtt
    }
}

/// When a write sent at `sent_at` is overdue and should also go to the next
/// relay: after one observed round trip plus `hedge_delay` (which absorbs the
/// relay's fsync and quorum wait).
pub fn hedge_deadline(sent_at: Instant, rtt: Duration, hedge_delay: Duration) -> Instant {
    sent_at + rtt + hedge_delay
}

/// True when a relay is stalled: a ping has been outstanding for longer than
/// `stall_timeout` and nothing at all was heard from the relay since it was sent.
/// (A relay that streams a long catchup still counts as alive.)
pub fn is_stalled(ping_sent: Option<Instant>, last_heard: Instant, now: Instant, stall_timeout: Duration) -> bool {
    match ping_sent {
        Some(sent) => last_heard < sent && now.saturating_duration_since(sent) > stall_timeout,
        None => false,
    }
}

/// A set of timers keyed by `K`, at most one per key, popped in deadline order.
#[derive(Debug, Clone)]
pub struct DeadlineQueue<K: Ord + Hash + Copy> {
    order: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Copy> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue { order: BTreeSet::new(), by_key: HashMap::new() }
    }
}

impl<K: Ord + Hash + Copy> DeadlineQueue<K> {
    /// Sets (or moves) the timer of `key` to `at`.
    pub fn arm(&mut self, key: K, at: Instant) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.order.remove(&(old, key));
        }
        self.order.insert((at, key));
    }

    /// Cancels the timer of `key`, if any.
    pub fn disarm(&mut self, key: K) {
        if let Some(old) = self.by_key.remove(&key) {
            self.order.remove(&(old, key));
        }
    }

    /// True when `key` has a timer.
    pub fn is_armed(&self, key: K) -> bool {
        self.by_key.contains_key(&key)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Removes and returns, in deadline order, every key due at `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(&(at, key)) = self.order.first() {
            if at > now {
                break;
            }
            self.order.pop_first();
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_rtt_plus_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(hedge_deadline(t0, ms(20), ms(100)), t0 + ms(120));
        let mut rtt = Rtt::new(ms(80));
        rtt.sample(ms(0));
        assert_eq!(rtt.get(), ms(70));
    }

    #[test]
    fn stalled_only_when_silent_since_an_overdue_ping() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(!is_stalled(None, t0, t0 + s(100), s(3)));
        // Ping outstanding 4 s, nothing heard since: stalled.
        assert!(is_stalled(Some(t0 + s(1)), t0, t0 + s(5), s(3)));
        // Not yet overdue.
        assert!(!is_stalled(Some(t0 + s(1)), t0, t0 + s(3), s(3)));
        // Heard something (a catchup chunk) after the ping: alive.
        assert!(!is_stalled(Some(t0 + s(1)), t0 + s(2), t0 + s(10), s(3)));
    }

    #[test]
    fn queue_pops_due_keys_in_order_and_rearms() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = DeadlineQueue::default();
        q.arm(1u64, t0 + ms(30));
        q.arm(2, t0 + ms(10));
        q.arm(3, t0 + ms(20));
        q.arm(1, t0 + ms(5)); // moved earlier
        q.disarm(3);
        assert_eq!(q.len(), 2);
        assert_eq!(q.next(), Some(t0 + ms(5)));
        assert_eq!(q.pop_expired(t0 + ms(9)), vec![1]);
        assert!(!q.is_armed(1));
        assert_eq!(q.pop_expired(t0 + ms(100)), vec![2]);
        assert!(q.is_empty() && q.next().is_none());
    }
}
