//! Client limits: per-connection token bucket, connection caps (total and per
//! IP), and the client address behind trusted proxies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::IpNet;

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: rate.max(0.0), burst, tokens: burst, last: now }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(1, now)
    }

    /// Takes `n` tokens (at most a full bucket: a cost above the burst could
    /// never be paid) if there are that many.
    pub fn try_take_n(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let cost = (n.max(1) as f64).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    /// The process-wide cap.
    Total,
    /// The per-IP cap.
    PerIp,
}

impl CapExceeded {
    /// The close reason and the `aether_disconnects_total` label.
    pub fn reason_and_label(self) -> (&'static str, &'static str) {
        match self {
            CapExceeded::Total => ("connection limit reached", "conn_cap_total"),
            CapExceeded::PerIp => ("connection limit per address reached", "conn_cap_ip"),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections, in total and per client IP.
#[derive(Debug, Clone)]
pub struct ConnCaps {
    total: usize,
    per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// Holds one connection's place; released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnCaps {
    /// Caps of `total` connections and `per_ip` per address.
    pub fn new(total: usize, per_ip: usize) -> Self {
        Self { total, per_ip, counts: Arc::default() }
    }

    /// Takes a place for a connection from `ip`, if both caps allow.
    pub fn acquire(&self, ip: IpAddr) -> Result<ConnSlot, CapExceeded> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.total {
            return Err(CapExceeded::Total);
        }
        let n = c.per_ip.entry(ip).or_default();
        if *n >= self.per_ip {
            return Err(CapExceeded::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnSlot { ip, counts: self.counts.clone() })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A malformed entry: stop believing the header past it.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn caps_count_and_release() {
        let caps = ConnCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = caps.acquire(a).unwrap();
        let _s2 = caps.acquire(a).unwrap();
        assert_eq!(caps.acquire(a).unwrap_err(), CapExceeded::PerIp);
        let _s3 = caps.acquire(b).unwrap();
        assert_eq!(caps.acquire(b).unwrap_err(), CapExceeded::Total);
        drop(s1);
        assert!(caps.acquire(a).is_ok());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = Some("198.51.100.7, 10.9.9.9");
        assert_eq!(client_ip(stranger, xff, &trusted), stranger);
        assert_eq!(client_ip(proxy, xff, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(proxy, None, &trusted), proxy);
        assert_eq!(client_ip(proxy, Some("garbage"), &trusted), proxy);
        assert_eq!(client_ip(proxy, Some("1.2.3.4, 5.6.7.8"), &trusted), "5.6.7.8".parse::<IpAddr>().unwrap());
    }
}
