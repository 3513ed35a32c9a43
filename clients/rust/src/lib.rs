//! Native Rust client of Aethermesh relays: offline-first local replicas of
//! spaces, kept in sync over the relay's native protocol (WebSocket `/v1/ws`
//! with subprotocol `aether.v1.proto`, or QUIC with ALPN `aether/1`; see
//! `docs/protocol.md`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), aether_client::Error> {
//! use aether_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new(["ws://127.0.0.1:8080", "quic://127.0.0.1:4433"])).await?;
//! let board = client.space("board")?;
//! board.ready().await?;
//! board.set("card/1", &serde_json::json!({"title": "Ship it"})).await?; // resolves on ack
//! let title: Option<serde_json::Value> = board.get("card/1")?;
//! let mut changes = board.watch();
//! while let Some(change) = changes.recv().await {
//!     println!("{} = {:?} ({:?})", change.key, change.value, change.origin);
//! }
//! client.close().await
//! # }
//! ```
//!
//! How it fits together (module map):
//! - [`config`], [`endpoint`], [`clouds`]: settings, relay URLs, endpoint lists.
//! - `client`, `space`, `stream`: the public handles.
//! - `driver`: the one task that owns the clock, the queue and the sessions
//!   (reconnect, failover, hedging, resubscription with resume info).
//! - `transport`: WebSocket and QUIC connections behind one interface.
//! - Sans-IO, unit-tested: [`replica`] (LWW merge via `aether_core::Space`,
//!   resume bookkeeping), [`queue`] (offline queue and its file), [`hedge`]
//!   (hedging and liveness timing), [`pace`] (the relay's rate limit),
//!   [`backoff`], `clock`, `http` parsing; the driver's decisions are tested
//!   against fake connections.

#![warn(missing_docs)]

pub mod backoff;
mod client;
mod clock;
pub mod clouds;
pub mod config;
mod driver;
pub mod endpoint;
mod error;
pub mod hedge;
mod http;
pub mod pace;
pub mod queue;
pub mod replica;
mod shared;
mod space;
mod stream;
mod tls;
mod transport;

pub use aether_core::Stamp;
pub use client::{Client, MAX_SPACE_BYTES, Status};
pub use clouds::{CloudEndpoint, CloudEndpoints, CloudSource, SpaceInfo, fetch_endpoints};
pub use config::ClientConfig;
pub use endpoint::{Endpoint, Scheme};
pub use error::{Attempts, Error};
pub use replica::{Change, Origin};
pub use space::{Acked, SpaceHandle, WriteTicket};
pub use stream::{PresenceEvent, PresenceStream, Watch};
pub use tls::Tls;
