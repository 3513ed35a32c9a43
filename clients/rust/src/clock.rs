//! Wall-clock input of the client's HLC. Relays refuse stamps more than
//! `maxSkewNs` ahead of their clock (`future-stamp`), so a client whose clock
//! runs well ahead of the relay's stamps with its estimate of the relay's
//! clock instead. Pure apart from [`now_ns`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The relay's clock minus ours, estimated from a pong (`relay_now_ns` read
/// half a round trip before `local_recv_ns`).
pub fn relay_offset_ns(relay_now_ns: u64, local_recv_ns: u64, rtt_ns: u64) -> i64 {
    let relay_at_recv = relay_now_ns.saturating_add(rtt_ns / 2);
    (relay_at_recv as i128 - local_recv_ns as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The physical time to stamp a local op with: our clock, unless it is more
/// than half the relay's skew allowance ahead of the relay's (estimated)
/// clock, in which case the relay's estimate.
pub fn stamp_time(local_ns: u64, relay_offset_ns: Option<i64>, max_skew_ns: u64) -> u64 {
    let Some(offset) = relay_offset_ns else { return local_ns };
    let relay_ns = local_ns.saturating_add_signed(offset);
    if local_ns > relay_ns.saturating_add(max_skew_ns / 2) { relay_ns } else { local_ns }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_accounts_for_half_the_round_trip() {
        assert_eq!(relay_offset_ns(1_000, 1_000, 0), 0);
        assert_eq!(relay_offset_ns(1_000, 1_100, 200), 0);
        assert_eq!(relay_offset_ns(500, 1_000, 0), -500);
        assert!(now_ns() > 1_600_000_000_000_000_000);
    }

    #[test]
    fn stamps_follow_the_relay_only_when_far_ahead() {
        assert_eq!(stamp_time(10_000, None, 1_000), 10_000);
        // 400 ahead with 1000 allowed: keep ours.
        assert_eq!(stamp_time(10_000, Some(-400), 1_000), 10_000);
        // 600 ahead: more than half the allowance, use the relay's clock.
        assert_eq!(stamp_time(10_000, Some(-600), 1_000), 9_400);
        // Behind the relay: ours (the HLC keeps order anyway).
        assert_eq!(stamp_time(10_000, Some(5_000), 1_000), 10_000);
    }
}
