//! The native protocol (`aether.client.v1`, docs/protocol.md): `ws` serves
//! it over WebSocket at `/v1/ws` (protobuf or JSON by subprotocol), `quic`
//! over QUIC streams (ALPN `aether/1`). Both decode frames into [`Inbound`]
//! on a reader task, check the `hello`, and hand each channel to
//! [`channel::Channel`]; `json` is the JSON mapping's codec.

pub mod channel;
pub mod json;
pub mod quic;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aether_proto::client::v1 as pb;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::BytesMut;
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use pb::server_frame::Msg as S;
use prost::Message as _;

use tokio::sync::mpsc;

use super::GatewayCtx;
use super::ws_json::{CLOSE_GRACE, close};
use crate::limits::TokenBucket;
use crate::node::now_ns;

/// The protocol version this relay speaks.
pub const VERSION: u32 = 1;
/// QUIC buffers this many bytes of frames before writing them to the stream.
const QUIC_WRITE_BUFFER: usize = 64 * 1024;

/// Why a channel ended: a close (code, reason) to send, or nothing (peer gone).
pub type End = Option<(u16, &'static str)>;

/// One accepted connection (all its QUIC streams): who is on the other end,
/// from its `hello`, and the limits its channels share.
#[derive(Debug)]
pub struct Session {
    /// The actor every op of the connection must be stamped with.
    pub actor: u64,
    /// Presence id.
    pub session: Arc<str>,
    /// Presence colour.
    pub color: Arc<str>,
    /// Channels close after `--idle-timeout` without a frame (WebSocket); a
    /// QUIC stream leaves that to its connection's idle timeout.
    pub idle_check: bool,
    /// The connection's rate limit, shared by its channels.
    bucket: std::sync::Mutex<TokenBucket>,
    /// Spaces subscribed over all its channels.
    spaces: AtomicUsize,
}

impl Session {
    /// Takes `n` tokens from the connection's bucket.
    pub fn take_tokens(&self, n: usize, now: Instant) -> bool {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner()).try_take_n(n, now)
    }

    /// Counts one more subscribed space, unless `max` are already.
    pub fn reserve_space(&self, max: usize) -> bool {
        self.spaces.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Counts one space less.
    pub fn release_space(&self) {
        let _ = self.spaces.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// What a connection's reader task passes on.
#[derive(Debug)]
pub enum Inbound {
    /// A decoded frame.
    Frame(pb::ClientFrame),
    /// The peer showed signs of life (a WebSocket ping or pong).
    Alive,
    /// The input is unacceptable: the channel ends with this error.
    Fatal(Fatal),
}

/// An error that ends a channel: sent as a fatal `error`, then closed.
#[derive(Debug)]
pub struct Fatal {
    /// Error code ("" when the peer is gone and nothing can be sent).
    pub code: &'static str,
    /// Why.
    pub message: String,
    /// WebSocket close code.
    pub close: u16,
}

impl Fatal {
    /// A fatal error.
    pub fn new(code: &'static str, message: impl Into<String>, close: u16) -> Self {
        Self { code, message: message.into(), close }
    }

    /// The peer is gone (or stopped reading): nothing to send.
    pub fn gone() -> Self {
        Self { code: "", message: String::new(), close: close::GOING_AWAY }
    }
}

/// An `error` frame.
pub fn error_frame(id: u64, space: &str, code: &str, message: &str, fatal: bool) -> pb::ServerFrame {
    let e = pb::Error { id, space: space.to_owned(), code: code.to_owned(), message: message.to_owned(), fatal };
    pb::ServerFrame { msg: Some(S::Error(e)) }
}

/// Checks a connection's first frame; returns the session and the `welcome`.
pub fn accept_hello(
    ctx: &GatewayCtx,
    frame: pb::ClientFrame,
    idle_check: bool,
) -> Result<(Arc<Session>, pb::ServerFrame), Fatal> {
    let Some(pb::client_frame::Msg::Hello(h)) = frame.msg else {
        return Err(Fatal::new("hello-required", "the first frame must be a hello", close::POLICY));
    };
    if h.version != VERSION {
        let msg = format!("protocol version {} is not supported; this relay speaks {VERSION}", h.version);
        return Err(Fatal::new("unsupported-version", msg, close::POLICY));
    }
    if !ctx.token_ok(&h.token) {
        return Err(Fatal::new("auth-failed", "auth failed", close::POLICY));
    }
    if h.actor >> 63 == 0 {
        let msg = format!("actor {} must have its top bit set (ids with it clear belong to relays)", h.actor);
        return Err(Fatal::new("bad-actor", msg, close::POLICY));
    }
    let uuid = uuid::Uuid::new_v4();
    let color: Arc<str> = super::json_wire::color_for(&uuid).into();
    let session: Arc<str> = uuid.to_string().into();
    let l = &ctx.limits;
    let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let welcome = pb::Welcome {
        version: VERSION,
        relay: ctx.relay.name(),
        now_ns: now_ns(),
        max_skew_ns: ctx.relay.max_skew_ns(),
        session: session.to_string(),
        color: color.to_string(),
        limits: Some(pb::Limits {
            max_frame_bytes: clamp(l.limit_frame_bytes),
            max_ops_per_write: clamp(l.limit_ops_per_write),
            max_key_bytes: clamp(l.limit_key_bytes),
            max_value_bytes: clamp(l.limit_value_bytes),
            max_spaces: clamp(l.limit_spaces_per_conn),
            ops_per_sec: l.limit_msgs_per_sec as f32,
            burst: l.limit_burst,
        }),
    };
    tracing::debug!(actor = h.actor, client = %h.client, %session, "native session");
    let bucket = std::sync::Mutex::new(TokenBucket::new(l.limit_msgs_per_sec, l.limit_burst, Instant::now()));
    let s = Session { actor: h.actor, session, color, idle_check, bucket, spaces: AtomicUsize::new(0) };
    Ok((Arc::new(s), pb::ServerFrame { msg: Some(S::Welcome(welcome)) }))
}

/// Writes `frames` and flushes, within `deadline`.
pub async fn send_all(out: &mut Out, frames: &[pb::ServerFrame], deadline: Duration) -> Result<(), ()> {
    let sent = tokio::time::timeout(deadline, async {
        for f in frames {
            out.feed(f).await?;
        }
        out.flush().await
    })
    .await;
    sent.map_err(drop)?
}

/// The first frame of a connection (skipping keep-alives): a frame, the
/// reader's fatal error, or `None` when the peer went away.
pub async fn first_frame(inbound: &mut mpsc::Receiver<Inbound>) -> Option<Result<pb::ClientFrame, Fatal>> {
    loop {
        match inbound.recv().await? {
            Inbound::Alive => continue,
            Inbound::Frame(f) => return Some(Ok(f)),
            Inbound::Fatal(f) => return Some(Err(f)),
        }
    }
}

/// Where a channel's frames go.
pub enum Out {
    /// A WebSocket, binary protobuf or JSON text frames.
    Ws {
        /// The socket's sending half.
        sink: SplitSink<WebSocket, Message>,
        /// JSON mapping (`aether.v1.json`) rather than protobuf.
        json: bool,
    },
    /// A QUIC stream: length-delimited protobuf frames, buffered until flushed.
    Quic {
        /// The stream's sending half.
        send: quinn::SendStream,
        /// Frames not yet written.
        buf: BytesMut,
    },
}

impl Out {
    /// Queues a frame.
    pub async fn feed(&mut self, f: &pb::ServerFrame) -> Result<(), ()> {
        match self {
            Out::Ws { sink, json: true } => sink.feed(Message::Text(json::encode(f).into())).await.map_err(drop),
            Out::Ws { sink, json: false } => sink.feed(Message::Binary(f.encode_to_vec().into())).await.map_err(drop),
            Out::Quic { send, buf } => {
                f.encode_length_delimited(buf).map_err(drop)?;
                if buf.len() >= QUIC_WRITE_BUFFER {
                    send.write_all(buf).await.map_err(drop)?;
                    buf.clear();
                }
                Ok(())
            }
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ()> {
        match self {
            Out::Ws { sink, .. } => sink.flush().await.map_err(drop),
            Out::Quic { send, buf } => {
                if !buf.is_empty() {
                    send.write_all(buf).await.map_err(drop)?;
                    buf.clear();
                }
                Ok(())
            }
        }
    }

    /// A keep-alive (QUIC keeps its connections alive itself).
    pub async fn ping(&mut self) -> Result<(), ()> {
        match self {
            Out::Ws { sink, .. } => sink.send(Message::Ping(Default::default())).await.map_err(drop),
            Out::Quic { .. } => Ok(()),
        }
    }

    /// Ends the channel: a WebSocket close frame, or the QUIC stream's end,
    /// within [`CLOSE_GRACE`] (a peer that does not read is not waited for).
    pub async fn close(&mut self, code: u16, reason: &'static str) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            match self {
                Out::Ws { sink, .. } => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                }
                Out::Quic { .. } => {
                    let _ = self.flush().await;
                }
            }
        })
        .await;
        if let Out::Quic { send, .. } = self {
            let _ = send.finish();
        }
    }
}
