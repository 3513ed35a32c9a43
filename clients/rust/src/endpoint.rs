//! Relay endpoint URLs: `ws://`, `wss://`, `http://`, `https://` (WebSocket
//! `/v1/ws` under the base) and `quic://host:port` (QUIC, ALPN `aether/1`).

use std::fmt;

use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::Error;

/// How an endpoint is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// WebSocket over TCP (`ws://`, `http://`).
    Ws,
    /// WebSocket over TLS (`wss://`, `https://`).
    Wss,
    /// QUIC (`quic://`), always TLS 1.3.
    Quic,
}

/// One parsed relay endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    scheme: Scheme,
    host: String,
    port: u16,
    /// The path the relay is mounted under, without a trailing `/` ("" at the root).
    base_path: String,
}

impl Endpoint {
    /// Parses `ws(s)://host[:port][/base]`, `http(s)://host[:port][/base]` or
    /// `quic://host:port`. A WebSocket URL may already end with `/v1/ws`.
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let bad = |reason: &str| Error::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
        let uri: Uri = url.trim().parse().map_err(|e| bad(&format!("{e}")))?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("ws" | "http") => Scheme::Ws,
            Some("wss" | "https") => Scheme::Wss,
            Some("quic") => Scheme::Quic,
            Some(other) => return Err(bad(&format!("scheme {other:?} is not ws, wss, http, https or quic"))),
            None => return Err(bad("missing scheme (ws://, wss://, http://, https:// or quic://)")),
        };
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported (use the token option)"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match (authority.port_u16(), scheme) {
            (Some(p), _) => p,
            (None, Scheme::Ws) => 80,
            (None, Scheme::Wss) => 443,
            (None, Scheme::Quic) => return Err(bad("quic:// needs a port (quic://host:port)")),
        };
        let mut path = uri.path().trim_end_matches('/').to_string();
        if let Some(stripped) = path.strip_suffix("/v1/ws") {
            path = stripped.to_string();
        }
        if scheme == Scheme::Quic && !path.is_empty() {
            return Err(bad("quic:// URLs have no path"));
        }
        Ok(Endpoint { url: url.trim().to_string(), scheme, host, port, base_path: path })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The transport.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or IP address (no brackets), also the TLS server name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP or UDP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, bracketing IPv6 addresses, for socket address lookups.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The native WebSocket URL (`…/v1/ws`); `None` for QUIC.
    pub fn ws_url(&self) -> Option<String> {
        let scheme = match self.scheme {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Quic => return None,
        };
        Some(format!("{scheme}://{}{}/v1/ws", self.host_port(), self.base_path))
    }

    /// The relay's HTTP base (`http(s)://host:port[/base]`) for its JSON
    /// endpoints; `None` for QUIC (its UDP port serves no HTTP).
    pub fn http_base(&self) -> Option<String> {
        let scheme = match self.scheme {
            Scheme::Ws => "http",
            Scheme::Wss => "https",
            Scheme::Quic => return None,
        };
        Some(format!("{scheme}://{}{}", self.host_port(), self.base_path))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_bases_get_v1_ws_appended() {
        let e = Endpoint::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!((e.scheme(), e.host(), e.port()), (Scheme::Ws, "127.0.0.1", 8080));
        assert_eq!(e.ws_url().unwrap(), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(e.http_base().unwrap(), "http://127.0.0.1:8080");

        let e = Endpoint::parse("https://relay.example.com/eu/").unwrap();
        assert_eq!(e.ws_url().unwrap(), "wss://relay.example.com:443/eu/v1/ws");
        assert_eq!(e.http_base().unwrap(), "https://relay.example.com:443/eu");

        let e = Endpoint::parse("wss://h:9/v1/ws").unwrap();
        assert_eq!(e.ws_url().unwrap(), "wss://h:9/v1/ws");
        assert_eq!(e.url(), "wss://h:9/v1/ws");
    }

    #[test]
    fn quic_needs_a_port_and_has_no_http_base() {
        let e = Endpoint::parse("quic://[::1]:4433").unwrap();
        assert_eq!((e.scheme(), e.host(), e.port()), (Scheme::Quic, "::1", 4433));
        assert_eq!(e.host_port(), "[::1]:4433");
        assert!(e.ws_url().is_none() && e.http_base().is_none());
        assert!(Endpoint::parse("quic://localhost").is_err());
        assert!(Endpoint::parse("quic://localhost:1/x").is_err());
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, why) in [
            ("ftp://x", "scheme"),
            ("localhost:8080", "scheme"),
            ("ws://user:pw@h", "credentials"),
            ("ws://", ""),
            ("not a url", ""),
        ] {
            let e = Endpoint::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
