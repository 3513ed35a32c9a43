//! Client gateways. `ws_json` serves the browser JSON protocol at `/ws`;
//! `json_wire` is its sans-IO message codec. `native` serves the native
//! protocol at `/v1/ws` (protobuf or JSON) and over QUIC.

pub mod json_wire;
pub mod native;
pub mod ws_json;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::LimitArgs;
use crate::limits::ConnCaps;
use crate::node::Relay;

/// What every client connection shares.
pub struct GatewayCtx {
    /// The relay.
    pub relay: Arc<Relay>,
    /// Client limits.
    pub limits: LimitArgs,
    /// Connection caps.
    pub caps: ConnCaps,
    /// Required token, if auth is on.
    pub auth_token: Option<String>,
    /// Deadline for the first `auth` frame.
    pub auth_timeout: Duration,
    /// Flips to `true` when the relay shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Per-cloud endpoint lists (`--clouds-file`), if configured.
    pub clouds: Option<Arc<crate::clouds::Clouds>>,
    /// `--web-assets-dir`: serve the pages and the browser client from this checkout.
    pub web_assets_dir: Option<std::path::PathBuf>,
    /// Serve the demo pages (`dev`); every mode serves the browser client (`/client/…`).
    pub web_pages: bool,
}

impl GatewayCtx {
    /// True when `given` is the client token (or the relay requires none).
    /// Fixed-size digests are compared in constant time, revealing neither
    /// the token's bytes nor its length.
    pub fn token_ok(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        let Some(expected) = self.auth_token.as_ref() else { return true };
        let digest = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        bool::from(digest(given).as_ref().ct_eq(digest(expected).as_ref()))
    }
}
