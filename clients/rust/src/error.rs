//! The library's error type.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A relay URL that cannot be used.
    #[error("invalid relay URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// An inconsistent or out-of-range setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No relay of the list could be reached (one attempt each).
    #[error("cannot reach any relay: {0}")]
    Unreachable(Attempts),
    /// The relay refused the session or a request (auth, bad input, ...).
    #[error("refused by relay {relay}: {code}: {message}")]
    Refused {
        /// The relay's URL (or name) that refused.
        relay: String,
        /// The stable error code (`auth-failed`, `bad-op`, ...; see docs/protocol.md).
        code: String,
        /// The relay's explanation.
        message: String,
    },
    /// The offline queue holds `max` ops already.
    #[error("offline queue is full ({max} ops wait for an ack); wait for acks or raise max_queued_ops")]
    QueueFull {
        /// The configured bound (`max_queued_ops`).
        max: usize,
    },
    /// The queue file could not be read, parsed or written.
    #[error("queue file {path}: {reason}")]
    QueueFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A space name outside 1–256 bytes.
    #[error("invalid space name {0:?}: use 1-256 bytes of UTF-8")]
    InvalidSpace(String),
    /// A key or value the relay would refuse.
    #[error("invalid op on key {key:?}: {reason}")]
    InvalidOp {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A value could not be turned into JSON.
    #[error("cannot encode the value as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// A stored value does not deserialize into the requested type.
    #[error("value of key {key:?} does not fit the requested type: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An HTTP request (endpoint list, spaces) failed.
    #[error("GET {url}: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
        /// True when the relay could not be reached at all (name resolution,
        /// connection refused, no answer in time), as opposed to a wrong answer.
        unreachable: bool,
    },
    /// TLS setup failed (CA file, server name).
    #[error("TLS: {0}")]
    Tls(String),
    /// An operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The client was closed (or its background task stopped).
    #[error("the client is closed")]
    Closed,
    /// The space was unsubscribed; `Client::space` subscribes it again.
    #[error("space {0:?} is unsubscribed")]
    Unsubscribed(String),
}

impl Error {
    /// True for errors that mean "a relay said no" (as opposed to "no relay answered").
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { .. })
    }

    /// True for errors that mean "no relay answered": every endpoint failed,
    /// or an HTTP request could not reach its relay.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable(_) | Error::Http { unreachable: true, .. })
    }
}

/// One failed connection attempt per endpoint, in order; displayed as
/// `ws://a: connection refused; quic://b: timed out`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempts(pub Vec<(String, String)>);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "no endpoints");
        }
        for (i, (url, why)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{url}: {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_lists_every_attempt() {
        let e = Error::Unreachable(Attempts(vec![
            ("ws://a:1".into(), "connection refused".into()),
            ("quic://b:2".into(), "timed out".into()),
        ]));
        assert_eq!(e.to_string(), "cannot reach any relay: ws://a:1: connection refused; quic://b:2: timed out");
        assert!(e.is_unreachable());
    }

    #[test]
    fn http_errors_tell_unreachable_from_bad_answers() {
        let http = |unreachable| Error::Http { url: "http://h/x".into(), reason: "r".into(), unreachable };
        assert!(http(true).is_unreachable() && !http(false).is_unreachable());
        assert_eq!(http(true).to_string(), "GET http://h/x: r");
        assert!(!Error::Closed.is_unreachable());
    }
}
