//! Client gateways. `ws_json` serves the browser JSON protocol at `/ws`;
//! `json_wire` is its sans-IO message codec.

pub mod json_wire;
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
}
