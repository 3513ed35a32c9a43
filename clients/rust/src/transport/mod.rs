//! Connections to one relay over either transport, behind one interface:
//! [`dial`] does the handshake (`hello` → `welcome`), then
//! [`Connection::send`] queues a `ClientFrame` for a space's channel and
//! every received `ServerFrame` arrives on the driver's inbound queue tagged
//! with its session.
//!
//! - WebSocket (`ws.rs`): one channel carries every space.
//! - QUIC (`quic.rs`): the first stream carries `hello` and pings; each
//!   space gets a stream of its own, so a slow space never blocks another.
//!
//! Each channel has a writer task fed by a bounded queue and a reader task
//! that forwards frames (awaiting when the driver is behind: backpressure
//! reaches the socket). Tasks are aborted when the connection is dropped.

pub mod codec;
mod quic;
mod ws;

use std::time::Duration;

use aether_proto::client::v1::{self as pb, ClientFrame, ServerFrame, server_frame};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::endpoint::{Endpoint, Scheme};
use crate::tls::Tls;

/// Largest frame accepted from a relay (a catchup chunk is about
/// `--limit-frame-bytes`, 256 KiB by default).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Identifies one connection attempt for the driver's lifetime.
pub type SessionId = u64;

/// What a connection's tasks report.
#[derive(Debug)]
pub enum ConnEvent {
    /// A frame from the relay.
    Frame(Box<ServerFrame>),
    /// The connection (or one of its streams) ended; the reason.
    Closed(String),
}

/// A [`ConnEvent`] tagged with its session.
#[derive(Debug)]
pub struct Inbound {
    /// The session that produced it.
    pub session: SessionId,
    /// The event.
    pub event: ConnEvent,
}

/// What a connection attempt needs.
pub struct Dial<'a> {
    /// Where to.
    pub endpoint: &'a Endpoint,
    /// The first frame.
    pub hello: pb::Hello,
    /// TLS roots and ALPN.
    pub tls: &'a Tls,
    /// The id to tag inbound events with.
    pub session: SessionId,
    /// The driver's inbound queue.
    pub inbound: mpsc::Sender<Inbound>,
    /// Bound of each channel's outgoing queue.
    pub send_queue: usize,
}

/// A connection that got its `welcome`.
pub struct Established {
    /// The live connection.
    pub conn: Connection,
    /// The relay's greeting.
    pub welcome: pb::Welcome,
    /// Time from sending `hello` to receiving `welcome` (first RTT sample).
    pub rtt: Duration,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// Network, TLS or protocol failure; another relay may do better.
    Failed(String),
    /// The relay answered `hello` with an error (`auth-failed`, ...).
    Refused {
        /// The error code.
        code: String,
        /// The relay's message.
        message: String,
    },
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Failed(why) => f.write_str(why),
            DialError::Refused { code, message } => write!(f, "refused: {code}: {message}"),
        }
    }
}

/// Connects to a relay and completes the `hello` → `welcome` handshake.
/// The caller bounds it with its connect timeout.
pub async fn dial(d: Dial<'_>) -> Result<Established, DialError> {
    match d.endpoint.scheme() {
        Scheme::Ws | Scheme::Wss => ws::dial(d).await,
        Scheme::Quic => quic::dial(d).await,
    }
}

/// The relay's answer to `hello`: `welcome`, or a refusal.
fn expect_welcome(frame: ServerFrame) -> Result<pb::Welcome, DialError> {
    match frame.msg {
        Some(server_frame::Msg::Welcome(w)) => Ok(w),
        Some(server_frame::Msg::Error(e)) => Err(DialError::Refused { code: e.code, message: e.message }),
        other => Err(DialError::Failed(format!("expected welcome, got {other:?}"))),
    }
}

fn hello_frame(hello: pb::Hello) -> ClientFrame {
    ClientFrame { msg: Some(pb::client_frame::Msg::Hello(hello)) }
}

/// A live connection to one relay.
pub struct Connection {
    channels: Channels,
    tasks: Tasks,
}

enum Channels {
    Ws(mpsc::Sender<ClientFrame>),
    Quic(quic::QuicChannels),
}

/// The connection's queue for a channel is full: the relay is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the relay is not reading (send queue full or closed)")]
pub struct SendError;

impl Connection {
    /// A connection whose frames go to the returned receiver (driver tests).
    #[cfg(test)]
    pub(crate) fn fake(queue: usize) -> (Connection, mpsc::Receiver<ClientFrame>) {
        let (tx, rx) = mpsc::channel(queue);
        (Connection { channels: Channels::Ws(tx), tasks: Tasks::default() }, rx)
    }

    /// Queues `frame` on the channel of `space` (`None`: the session's
    /// first channel, for pings). Never waits.
    pub fn send(&mut self, space: Option<&str>, frame: ClientFrame) -> Result<(), SendError> {
        match &mut self.channels {
            Channels::Ws(tx) => tx.try_send(frame).map_err(|_| SendError),
            Channels::Quic(q) => q.send(space, frame, &mut self.tasks),
        }
    }

    /// Closes politely in the background (WebSocket close frame, QUIC
    /// CONNECTION_CLOSE), giving up after a second.
    pub fn shutdown(self) {
        let Connection { channels, mut tasks } = self;
        let quic = match channels {
            Channels::Ws(tx) => {
                drop(tx);
                None
            }
            Channels::Quic(q) => Some(q.close()),
        };
        let writers = std::mem::take(&mut tasks.writers);
        let aborts: Vec<_> = writers.iter().map(|w| w.abort_handle()).collect();
        tokio::spawn(async move {
            let flush = async {
                for w in writers {
                    let _ = w.await;
                }
                if let Some(endpoint) = quic {
                    endpoint.wait_idle().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
            for a in aborts {
                a.abort();
            }
            drop(tasks);
        });
    }
}

/// The connection's tasks; aborted on drop.
#[derive(Default)]
struct Tasks {
    writers: Vec<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in self.writers.iter().chain(&self.readers) {
            t.abort();
        }
    }
}
