//! Aethermesh relay: client gateways, spaces, fan-out, the WAL with snapshots,
//! and the `dev` mode that runs it all in one process.
//!
//! The layering: [`config`] → [`server`] (sockets, TLS, routing) →
//! [`gateway`] (client protocols) → [`node::Relay`] (the write path) →
//! [`space`] + [`fanout`] (state and delivery) and [`wal`] (durability).

#![warn(missing_docs)]

pub mod clouds;
pub mod config;
pub mod fanout;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod server;
pub mod space;
pub mod telemetry;
pub mod tls;
pub mod wal;
pub mod web;
