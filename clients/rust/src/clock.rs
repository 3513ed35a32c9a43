//! Wall-clock input of the client's HLC. Once a relay's clock is known
//! (from `welcome` and `pong`), the client lives on the relay's time: relays
//! refuse stamps more than `maxSkewNs` ahead of their clock (`future-stamp`),
//! and a client whose clock is behind would otherwise stamp its writes in the
//! past (losing every race) and refuse the relay's stamps as too far ahead.
//! Pure apart from [`now_ns`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Our clock, capped near the relay's: ours, unless it is more than half
/// the relay's skew allowance ahead of the relay's (estimated) clock, in
/// which case the relay's estimate.
pub fn stamp_time(local_ns: u64, relay_offset_ns: Option<i64>, max_skew_ns: u64) -> u64 {
    let Some(offset) = relay_offset_ns else { return local_ns };
    let relay_ns = local_ns.saturating_add_signed(offset);
    if local_ns > relay_ns.saturating_add(max_skew_ns / 2) { relay_ns } else { local_ns }
}

/// The relay's clock now as estimated from our clock and the offset; our
/// clock while no relay was heard.
pub fn relay_now(local_ns: u64, relay_offset_ns: Option<i64>) -> u64 {
    relay_offset_ns.map_or(local_ns, |offset| local_ns.saturating_add_signed(offset))
}

/// The physical time to stamp a local op with (the HLC then ticks past
/// everything seen): [`stamp_time`], but never behind the relay's estimated
/// clock, so a client whose clock is late does not write in the past.
pub fn stamp_wall(local_ns: u64, relay_offset_ns: Option<i64>, max_skew_ns: u64) -> u64 {
    stamp_time(local_ns, relay_offset_ns, max_skew_ns).max(relay_now(local_ns, relay_offset_ns))
}

/// The time remote stamps are checked against (`Hlc::observe`): the relay's
/// estimated clock, which bounds what relays accept, so a client whose clock
/// is late still follows the stamps relays hand out.
pub fn observe_time(local_ns: u64, relay_offset_ns: Option<i64>) -> u64 {
    relay_now(local_ns, relay_offset_ns)
}

/// How long until a stamp at `stamp_wall_ns`, refused as `future-stamp`,
/// is within the relay's allowance: `stamp − (relay_now + max_skew)`, plus a
/// little margin for the estimate (zero when it should already be accepted).
pub fn future_stamp_wait(
    stamp_wall_ns: u64,
    local_ns: u64,
    relay_offset_ns: Option<i64>,
    max_skew_ns: u64,
) -> Duration {
    let allowed = relay_now(local_ns, relay_offset_ns).saturating_add(max_skew_ns);
    match stamp_wall_ns.checked_sub(allowed) {
        Some(ahead) if ahead > 0 => Duration::from_nanos(ahead) + FUTURE_STAMP_MARGIN,
        _ => Duration::ZERO,
    }
}

/// Added to [`future_stamp_wait`]: the offset estimate is off by up to half an RTT.
pub const FUTURE_STAMP_MARGIN: Duration = Duration::from_millis(50);

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

    #[test]
    fn stamps_never_lag_the_relay_and_never_run_far_ahead() {
        // Unknown relay clock: ours.
        assert_eq!(stamp_wall(10_000, None, 1_000), 10_000);
        // Our clock is 5000 behind: the relay's estimate, not the past.
        assert_eq!(stamp_wall(10_000, Some(5_000), 1_000), 15_000);
        // A little ahead: ours; far ahead: the relay's.
        assert_eq!(stamp_wall(10_000, Some(-400), 1_000), 10_000);
        assert_eq!(stamp_wall(10_000, Some(-600), 1_000), 9_400);
        // Minutes behind (real numbers): stamps are at the relay's time.
        let minute = 60_000_000_000u64;
        let local = 1_800_000_000_000_000_000u64;
        assert_eq!(stamp_wall(local, Some(5 * minute as i64), minute), local + 5 * minute);
    }

    #[test]
    fn remote_stamps_are_checked_against_the_relay_clock() {
        let minute = 60_000_000_000u64;
        let local = 1_800_000_000_000_000_000u64;
        let mut hlc = aether_core::Hlc::new(1 << 63, minute);
        // The relay is 5 minutes ahead of us; a stamp it handed out 1 s ago.
        let offset = Some(5 * minute as i64);
        let remote = aether_core::Stamp { wall_ns: local + 5 * minute - 1_000_000_000, counter: 0, actor: 7 };
        // Against our own clock it looks 5 minutes ahead and is refused...
        assert!(hlc.clone().observe(remote, local).is_err());
        // ...against the relay's estimate it is accepted, and our next stamp orders after it.
        hlc.observe(remote, observe_time(local, offset)).unwrap();
        assert!(hlc.tick(stamp_wall(local, offset, minute)) > remote);
        assert_eq!(observe_time(local, None), local);
    }

    #[test]
    fn future_stamps_wait_until_the_relay_clock_catches_up() {
        let s = 1_000_000_000u64;
        // A stamp 70 s ahead of the relay, 60 s allowed: 10 s (plus margin).
        assert_eq!(future_stamp_wait(170 * s, 100 * s, Some(0), 60 * s), Duration::from_secs(10) + FUTURE_STAMP_MARGIN);
        // Our clock 20 s behind the relay: 20 s less to wait.
        assert_eq!(
            future_stamp_wait(170 * s, 80 * s, Some(20 * s as i64), 60 * s),
            Duration::from_secs(10) + FUTURE_STAMP_MARGIN
        );
        // Already within the allowance by our estimate.
        assert_eq!(future_stamp_wait(150 * s, 100 * s, None, 60 * s), Duration::ZERO);
    }
}
