//! [`ClientConfig`]: every setting of a client, with its default, in one place.

use std::path::PathBuf;
use std::time::Duration;

use crate::clouds::CloudSource;
use crate::endpoint::Endpoint;
use crate::error::Error;

/// Default [`ClientConfig::hedge_delay`].
pub const DEFAULT_HEDGE_DELAY: Duration = Duration::from_millis(100);
/// Default [`ClientConfig::backoff_min`].
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default [`ClientConfig::backoff_max`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Default [`ClientConfig::max_queued_ops`].
pub const DEFAULT_MAX_QUEUED_OPS: usize = 10_000;
/// Default [`ClientConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ClientConfig::dial_hedge_delay`].
pub const DEFAULT_DIAL_HEDGE_DELAY: Duration = Duration::from_secs(1);
/// Default [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientConfig::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default [`ClientConfig::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`ClientConfig::watch_buffer`].
pub const DEFAULT_WATCH_BUFFER: usize = 4096;
/// Most endpoints a client keeps (like a relay's endpoint list).
pub const MAX_ENDPOINTS: usize = 1024;

/// How a client finds, reaches and talks to relays. Build it with
/// [`ClientConfig::new`] or [`ClientConfig::from_cloud`] and the chainable
/// setters, or as a struct literal with `..Default::default()`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Relay endpoints in the order to try them: `ws://`, `wss://`,
    /// `http(s)://` bases or `quic://host:port`.
    pub endpoints: Vec<String>,
    /// Fetch the endpoint list from a relay instead (appended after `endpoints`).
    pub cloud: Option<CloudSource>,
    /// The mesh's client token, when relays require one.
    pub token: Option<String>,
    /// The actor id stamped on this client's ops (top bit set). `None`: the
    /// one in the queue file, else a random one.
    pub actor: Option<u64>,
    /// Free-form client name sent in `hello`, for relay logs.
    pub client_name: String,
    /// A write not acknowledged within one RTT plus this goes to the next
    /// relay too (stamps make the duplicate harmless; the first ack wins).
    /// `None` disables hedging.
    pub hedge_delay: Option<Duration>,
    /// A connection attempt still pending after this races one to the next
    /// endpoint (a relay that accepts TCP but never answers costs this much,
    /// not `connect_timeout`).
    pub dial_hedge_delay: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Where the offline queue, the actor and the clock are kept across
    /// restarts; `None` keeps them in memory only. One client at a time
    /// uses a file (locked through `FILE.lock`); it is written once at start,
    /// so a path that cannot be written fails `start`/`connect`.
    pub queue_file: Option<PathBuf>,
    /// Most unacknowledged ops; writes beyond fail with `Error::QueueFull`.
    pub max_queued_ops: usize,
    /// PEM certificates to trust besides the Mozilla roots (e.g. a dev
    /// relay's `<data-dir>/quic-cert.pem`).
    pub ca_file: Option<PathBuf>,
    /// Bound on one connection attempt (TCP/QUIC, TLS, `hello` → `welcome`).
    pub connect_timeout: Duration,
    /// Bound on HTTP requests (endpoint list, spaces).
    pub request_timeout: Duration,
    /// Pings on an idle connection (RTT samples and liveness).
    pub ping_interval: Duration,
    /// A relay silent this long after a ping is stalled: the client fails over.
    pub stall_timeout: Duration,
    /// Change events buffered per watcher; a watcher that falls further
    /// behind is ended (see `Watch::lagged`).
    pub watch_buffer: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: Vec::new(),
            cloud: None,
            token: None,
            actor: None,
            client_name: format!("aether-client/{}", env!("CARGO_PKG_VERSION")),
            hedge_delay: Some(DEFAULT_HEDGE_DELAY),
            dial_hedge_delay: DEFAULT_DIAL_HEDGE_DELAY,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            queue_file: None,
            max_queued_ops: DEFAULT_MAX_QUEUED_OPS,
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }
}

impl ClientConfig {
    /// A config for these endpoints, defaults otherwise.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig { endpoints: endpoints.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    /// A config whose endpoints come from `GET {url}/v1/clouds/{cloud}` at
    /// connect time; `cloud == None` when `url` is the full `…/v1/clouds/NAME`.
    pub fn from_cloud(url: &str, cloud: Option<&str>) -> Result<Self, Error> {
        Ok(ClientConfig { cloud: Some(CloudSource::new(url, cloud)?), ..Default::default() })
    }

    /// Sets the token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the actor id (must have its top bit set).
    pub fn actor(mut self, actor: u64) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sets the client name sent in `hello`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Sets the hedge delay (`None`: never hedge).
    pub fn hedge_delay(mut self, delay: Option<Duration>) -> Self {
        self.hedge_delay = delay;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Persists the offline queue in this file.
    pub fn queue_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.queue_file = Some(path.into());
        self
    }

    /// Bounds the offline queue.
    pub fn max_queued_ops(mut self, max: usize) -> Self {
        self.max_queued_ops = max;
        self
    }

    /// Trusts the certificates of this PEM file too.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Bounds each connection attempt.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds HTTP requests.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the idle ping interval and the stall timeout.
    pub fn liveness(mut self, ping_interval: Duration, stall_timeout: Duration) -> Self {
        self.ping_interval = ping_interval;
        self.stall_timeout = stall_timeout;
        self
    }

    /// Checks the settings; parses `endpoints`.
    pub fn validate(&self) -> Result<Vec<Endpoint>, Error> {
        let bad = |why: String| Err(Error::Config(why));
        if self.endpoints.is_empty() && self.cloud.is_none() {
            return bad("no relay endpoints and no cloud to fetch them from".into());
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return bad(format!("{} endpoints, at most {MAX_ENDPOINTS}", self.endpoints.len()));
        }
        if let Some(a) = self.actor
            && a >> 63 != 1
        {
            return bad(format!("actor {a} must have its top bit set (1<<63 | n)"));
        }
        if self.max_queued_ops == 0 || self.watch_buffer == 0 {
            return bad("max_queued_ops and watch_buffer must be at least 1".into());
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("ping_interval", self.ping_interval),
            ("stall_timeout", self.stall_timeout),
            ("backoff_min", self.backoff_min),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be more than zero"));
            }
        }
        if self.backoff_max < self.backoff_min {
            return bad("backoff_max is below backoff_min".into());
        }
        self.endpoints.iter().map(|u| Endpoint::parse(u)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_once_there_is_an_endpoint() {
        assert!(ClientConfig::default().validate().is_err());
        let c = ClientConfig::new(["ws://127.0.0.1:1", "quic://127.0.0.1:2"]).token("t").max_queued_ops(5);
        assert_eq!(c.validate().unwrap().len(), 2);
        assert_eq!(c.hedge_delay, Some(Duration::from_millis(100)));
        assert!(ClientConfig::new(["ws://h"]).actor(5).validate().unwrap_err().to_string().contains("top bit"));
        assert!(ClientConfig::new(["ftp://h"]).validate().is_err());
        assert!(
            ClientConfig::new(["ws://h"]).backoff(Duration::from_secs(2), Duration::from_secs(1)).validate().is_err()
        );
        assert!(ClientConfig::from_cloud("http://h:1", Some("eu")).unwrap().validate().unwrap().is_empty());
    }
}
