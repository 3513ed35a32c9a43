//! One browser connection at `/ws`: admission (caps, auth), hello and
//! snapshot, then a loop that reads client messages and writes queued events.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite;

use super::GatewayCtx;
use super::json_wire::{self, ClientMsg, WireLimits};
use crate::fanout::{Outbound, PresenceEvent, Subscriber};
use crate::limits::{CapExceeded, ConnSlot, TokenBucket, client_ip};
use crate::replication::QuorumState;
use crate::space::SpaceHub;
use crate::wal::Durable;

/// Close codes used by the relay.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server going away (shutdown, idle timeout).
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not UTF-8 (RFC 6455).
    pub const INVALID_DATA: u16 = 1007;
    /// Auth failed, or rate limit exceeded.
    pub const POLICY: u16 = 1008;
    /// Frame or message too large.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error (storage failure).
    pub const INTERNAL: u16 = 1011;
    /// Connection caps reached, or slow consumer.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The `aether_disconnects_total` reason of a close code.
pub fn close_label(code: u16) -> &'static str {
    match code {
        close::POLICY => "policy",
        close::TOO_BIG => "too_big",
        close::TRY_AGAIN_LATER => "slow_consumer",
        close::INTERNAL => "internal",
        _ => "going_away",
    }
}

/// Most queued events written before one flush.
pub(crate) const WRITE_BATCH: usize = 256;
/// How long a closing handshake may take before the socket is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bytes read from a client socket per read call. tungstenite zero-fills this
/// much before every read, so its 128 KiB default costs more than the read
/// itself for small messages (measured: 22% of relay CPU under fan-out).
pub(crate) const READ_BUFFER_BYTES: usize = 8 * 1024;
/// The backlog (ops waiting behind the greeting or a held echo) may hold this
/// many times `--limit-send-queue` items before the client counts as slow.
pub(crate) const BACKLOG_FACTOR: usize = 8;
/// Snapshots with more entries than this are encoded on the blocking pool.
const BLOCKING_SNAPSHOT_ENTRIES: usize = 4096;
/// How long a client joining a space served as an edge waits for the owner's snapshot.
pub(crate) const EDGE_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// `GET /ws?space=NAME[&auth_token=T]`: upgrades to the browser JSON protocol.
pub async fn handler(
    State(ctx): State<Arc<GatewayCtx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !ctx.relay.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "relay is not ready").into_response();
    }
    let space = query.get("space").map_or("default", String::as_str).to_owned();
    if space.is_empty() || space.len() > ctx.limits.limit_space_bytes {
        let msg = format!("space name must be 1 to {} bytes", ctx.limits.limit_space_bytes);
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let ip = client_ip(peer.ip(), forwarded, &ctx.limits.trusted_proxies);
    let slot = ctx.caps.acquire(ip);
    let token = query.get("auth_token").cloned();
    let limit = ctx.limits.limit_frame_bytes;
    ws.max_frame_size(limit).max_message_size(limit).read_buffer_size(READ_BUFFER_BYTES).on_upgrade(
        move |socket| async move {
            let (sink, stream) = socket.split();
            Connection::run(ctx, sink, stream, space, token, slot).await;
        },
    )
}

struct Connection {
    ctx: Arc<GatewayCtx>,
    sink: Sink,
    stream: Stream,
}

/// Why the connection loop ended: a close frame to send, or nothing (peer gone).
type End = Option<(u16, &'static str)>;

impl Connection {
    async fn run(
        ctx: Arc<GatewayCtx>,
        sink: Sink,
        stream: Stream,
        space: String,
        token: Option<String>,
        slot: Result<ConnSlot, CapExceeded>,
    ) {
        let mut conn = Connection { ctx, sink, stream };
        let metrics = conn.ctx.relay.metrics().clone();
        let _slot = match slot {
            Ok(slot) => slot,
            Err(cap) => {
                let (reason, label) = cap.reason_and_label();
                metrics.disconnects.with_label_values(&[label]).inc();
                conn.close(close::TRY_AGAIN_LATER, reason).await;
                return;
            }
        };
        metrics.connections.inc();
        let end = match conn.authenticate(token).await {
            Ok(()) => conn.serve(&space).await,
            Err(end) => end,
        };
        metrics.connections.dec();
        if let Some((code, reason)) = end {
            metrics.disconnects.with_label_values(&[close_label(code)]).inc();
            conn.close(code, reason).await;
        }
    }

    /// Checks the token (query or first frame) before any state is sent.
    async fn authenticate(&mut self, query_token: Option<String>) -> Result<(), End> {
        if self.ctx.auth_token.is_none() {
            return Ok(());
        }
        let check = |given: &str| -> Result<(), End> {
            if self.ctx.token_ok(given) { Ok(()) } else { Err(Some((close::POLICY, "auth failed"))) }
        };
        if let Some(t) = query_token {
            return check(&t);
        }
        let deadline = tokio::time::Instant::now() + self.ctx.auth_timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(Some((close::POLICY, "auth timeout"))),
                Ok(None | Some(Err(_))) => return Err(None),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(text) => {
                    let mut scratch = String::new();
                    return match json_wire::parse(&text, &self.wire_limits(), &mut scratch) {
                        Ok(ClientMsg::Auth { token }) => check(&token),
                        _ => Err(Some((close::POLICY, "auth required"))),
                    };
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Binary(_) => return Err(Some((close::POLICY, "auth required"))),
                Message::Close(_) => return Err(None),
            }
        }
    }

    fn wire_limits(&self) -> WireLimits {
        WireLimits {
            message_bytes: self.ctx.limits.limit_message_bytes,
            key_bytes: self.ctx.limits.limit_key_bytes,
            value_bytes: self.ctx.limits.limit_value_bytes,
        }
    }

    /// Joins the space and runs the read/write loop until the connection ends.
    async fn serve(&mut self, space: &str) -> End {
        let relay = self.ctx.relay.clone();
        let id = uuid::Uuid::new_v4();
        let color = json_wire::color_for(&id);
        let id = id.to_string();
        let (sub, mut rx) = Subscriber::new(relay.next_conn_id(), self.ctx.limits.limit_send_queue);
        let kill = sub.kill().clone();
        relay.prepare_join(space, EDGE_JOIN_TIMEOUT).await;
        let (hub, joined) = relay.join(space, sub.clone());
        let _leave = Leave { relay: relay.clone(), hub: hub.clone(), conn: sub.conn, id: Arc::from(id.as_str()) };

        let limits = self.ctx.limits.clone();
        // Ops queued while the greeting is written, or behind an echo that waits for the
        // disk, move here: they wait for us, not for the client, so they do not count
        // against the send queue (up to this bound).
        let backlog_cap = limits.limit_send_queue.saturating_mul(BACKLOG_FACTOR);
        let mut backlog: VecDeque<Outbound> = VecDeque::new();
        {
            let sink = &mut self.sink;
            let greeting = async {
                // Large snapshots are encoded on the blocking pool; meanwhile (and while the
                // greeting is written) the loop below keeps draining the queue.
                let snapshot = if joined.snapshot.len() > BLOCKING_SNAPSHOT_ENTRIES {
                    let entries = joined.snapshot;
                    tokio::task::spawn_blocking(move || encode_snapshot(&entries)).await.map_err(axum::Error::new)?
                } else {
                    encode_snapshot(&joined.snapshot)
                };
                sink.feed(Message::Text(json_wire::encode_hello(&id, &color))).await?;
                sink.feed(Message::Text(snapshot)).await?;
                for p in joined.presence.iter().filter_map(|p| p.json()) {
                    sink.feed(Message::Text(p)).await?;
                }
                sink.flush().await
            };
            tokio::pin!(greeting);
            let deadline = tokio::time::sleep(limits.idle_timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    r = &mut greeting => match r {
                        Ok(()) => break,
                        Err(_) => return None,
                    },
                    item = rx.recv() => {
                        let item = item?;
                        backlog.push_back(item);
                        if backlog.len() > backlog_cap {
                            return Some((close::TRY_AGAIN_LATER, "slow consumer"));
                        }
                    }
                    _ = kill.wait() => return Some((close::TRY_AGAIN_LATER, "slow consumer")),
                    // The client does not take the greeting: drop it (a close frame would not get through).
                    _ = &mut deadline => return None,
                }
            }
        }
        let wire = self.wire_limits();
        let mut bucket = TokenBucket::new(limits.limit_msgs_per_sec, limits.limit_burst, Instant::now());
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();
        let mut durable = relay.durable();
        let mut shutdown = self.ctx.shutdown.clone();
        let mut scratch = String::new();
        let metrics = relay.metrics().clone();
        let mut held: Option<Outbound> = None;
        loop {
            // Once the queue overflowed (an op was dropped for this client), write nothing
            // more: the client must not see a gap, only the close.
            if kill.is_triggered() {
                return Some((close::TRY_AGAIN_LATER, "slow consumer"));
            }
            tokio::select! {
                _ = kill.wait() => return Some((close::TRY_AGAIN_LATER, "slow consumer")),
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Some((close::GOING_AWAY, "relay shutting down")),
                // Writing: the head of the queue, unless it is an echo still waiting for the
                // disk. Reading goes on meanwhile, so a client can pipeline its writes.
                item = next_outbound(&mut held, &mut backlog, backlog_cap, &mut rx, &mut durable) => {
                    let item = match item {
                        Ok(Some(item)) => item,
                        Ok(None) => return None,
                        Err(failure) => return failure.end(),
                    };
                    let written = tokio::select! {
                        r = write_batch(&mut self.sink, item, &mut backlog, &mut rx, &durable, &metrics) => r,
                        _ = kill.wait() => return Some((close::TRY_AGAIN_LATER, "slow consumer")),
                        // A client that takes nothing for this long is gone; a close frame would not get through.
                        _ = tokio::time::sleep(limits.idle_timeout) => return None,
                    };
                    match written {
                        Ok(waiting) => held = waiting,
                        Err(failure) => return failure.end(),
                    }
                }
                msg = self.stream.next() => {
                    let now = Instant::now();
                    let text = match msg {
                        None => return None,
                        Some(Err(e)) => return read_error(e),
                        Some(Ok(Message::Close(_))) => return Some((close::NORMAL, "")),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                            last_heard = now;
                            continue;
                        }
                        Some(Ok(Message::Binary(_))) => None,
                        Some(Ok(Message::Text(t))) => Some(t),
                    };
                    last_heard = now;
                    if !bucket.try_take(now) {
                        return Some((close::POLICY, "rate limit exceeded"));
                    }
                    let reply = match text {
                        None => Some(json_wire::encode_error("unsupported-frame", "binary frames are not part of this protocol; send JSON text")),
                        Some(text) => self.handle(&text, &wire, &mut scratch, &hub, &sub, &id, &color, now),
                    };
                    if let Some(reply) = reply
                        && !matches!(tokio::time::timeout(limits.idle_timeout, self.sink.send(Message::Text(reply))).await, Ok(Ok(())))
                    {
                        return None;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > limits.idle_timeout {
                        return Some((close::GOING_AWAY, "idle timeout"));
                    }
                    let ping = self.sink.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(limits.idle_timeout, ping).await, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }

    /// Applies one client message; returns an `error` reply if it was rejected.
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        text: &str,
        wire: &WireLimits,
        scratch: &mut String,
        hub: &SpaceHub,
        sub: &Subscriber,
        id: &str,
        color: &str,
        now: Instant,
    ) -> Option<Utf8Bytes> {
        let relay = &self.ctx.relay;
        let written = match json_wire::parse(text, wire, scratch) {
            Ok(ClientMsg::Set { key, value }) => relay.write(hub, sub, key.as_bytes(), Some(value.as_bytes()), now),
            Ok(ClientMsg::Delete { key }) => relay.write(hub, sub, key.as_bytes(), None, now),
            Ok(ClientMsg::Presence { x, y }) => {
                relay.metrics().presence.inc();
                let (id, color) = (Arc::from(id), Arc::from(color));
                hub.presence(sub.conn, Arc::new(PresenceEvent::cursor(hub.name().clone(), id, color, x, y)));
                Ok(())
            }
            // Already authenticated (or auth is off): nothing to do.
            Ok(ClientMsg::Auth { .. }) => Ok(()),
            Err(reject) => {
                relay.metrics().errors.with_label_values(&[reject.code]).inc();
                return Some(json_wire::encode_error(reject.code, &reject.message));
            }
        };
        written.err().map(|e| {
            let code = match e {
                crate::node::WriteError::Wal(
                    crate::wal::AppendError::Overloaded | crate::wal::AppendError::Backlog,
                )
                | crate::node::WriteError::Forward(_) => "overloaded",
                crate::node::WriteError::Wal(crate::wal::AppendError::Unavailable) => "unavailable",
            };
            relay.metrics().errors.with_label_values(&[code]).inc();
            json_wire::encode_error(code, &e.to_string())
        })
    }

    /// Sends a close frame, then reads until the peer answers (so the frame is
    /// not lost to a TCP reset), within [`CLOSE_GRACE`].
    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            if self.sink.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(_)) = self.stream.next().await {}
            }
        })
        .await;
    }
}

fn encode_snapshot(entries: &[(aether_core::Key, bytes::Bytes)]) -> Utf8Bytes {
    let size: usize = entries.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    json_wire::encode_snapshot(entries.iter().map(|(k, v)| (&k[..], &v[..])), size)
}

fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some((close::TOO_BIG, "frame too large")),
        Some(tungstenite::Error::Utf8(_)) => Some((close::INVALID_DATA, "invalid UTF-8")),
        Some(tungstenite::Error::Protocol(_)) => Some((close::POLICY, "protocol error")),
        _ => None,
    }
}

enum WriteFailure {
    Socket,
    Storage,
    SlowConsumer,
}

impl WriteFailure {
    fn end(self) -> End {
        match self {
            WriteFailure::Socket => None,
            WriteFailure::Storage => Some((close::INTERNAL, "storage failure")),
            WriteFailure::SlowConsumer => Some((close::TRY_AGAIN_LATER, "slow consumer")),
        }
    }
}

/// The next item to write: the held echo once its WAL record is durable, then
/// the backlog, then the queue. While an echo is held, newly queued items move
/// to the backlog (in order) so the bounded queue does not fill up while we
/// wait for the disk. `Ok(None)` when the queue is closed.
async fn next_outbound(
    held: &mut Option<Outbound>,
    backlog: &mut VecDeque<Outbound>,
    backlog_cap: usize,
    rx: &mut mpsc::Receiver<Outbound>,
    durable: &mut watch::Receiver<Durable>,
) -> Result<Option<Outbound>, WriteFailure> {
    if let Some(Outbound::Ack { lsn, quorum, .. }) = held {
        let lsn = *lsn;
        let mut quorum = quorum.clone();
        loop {
            tokio::select! {
                ok = async {
                    let disk = durable.wait_for(|d| d.lsn >= lsn || d.failed).await.is_ok_and(|d| !d.failed);
                    if let Some(q) = quorum.as_mut() {
                        let _ = q.wait_for(|q| *q != QuorumState::Pending).await;
                    }
                    disk
                } => {
                    return if ok { Ok(held.take()) } else { Err(WriteFailure::Storage) };
                }
                item = rx.recv() => {
                    let Some(item) = item else { return Ok(None) };
                    backlog.push_back(item);
                    if backlog.len() > backlog_cap {
                        return Err(WriteFailure::SlowConsumer);
                    }
                }
            }
        }
    }
    if let Some(item) = backlog.pop_front() {
        return Ok(Some(item));
    }
    Ok(rx.recv().await)
}

/// Writes `first` and whatever else is waiting (backlog, then queue; up to
/// [`WRITE_BATCH`]) with one flush. Stops at an echo whose WAL record is not
/// durable yet and returns it to be held: what was fed before it is flushed,
/// so the disk never delays other clients' ops, and the order is kept.
async fn write_batch(
    sink: &mut Sink,
    first: Outbound,
    backlog: &mut VecDeque<Outbound>,
    rx: &mut mpsc::Receiver<Outbound>,
    durable: &watch::Receiver<Durable>,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<Outbound>, WriteFailure> {
    let mut next = Some(first);
    let mut written = 0;
    let mut yielded = false;
    while let Some(item) = next.take() {
        let text = match item {
            Outbound::Op(event) => event.json(),
            Outbound::Text(text) => text,
            Outbound::Presence(p) => match p.json() {
                Some(text) => text,
                None => {
                    next = backlog.pop_front().or_else(|| rx.try_recv().ok());
                    continue;
                }
            },
            Outbound::Ack { event, lsn, received, quorum } => {
                let d = *durable.borrow();
                if d.failed {
                    return Err(WriteFailure::Storage);
                }
                let q = quorum.as_ref().map_or(QuorumState::Reached, |q| *q.borrow());
                if d.lsn < lsn || q == QuorumState::Pending {
                    sink.flush().await.map_err(|_| WriteFailure::Socket)?;
                    return Ok(Some(Outbound::Ack { event, lsn, received, quorum }));
                }
                if q == QuorumState::TimedOut {
                    metrics.errors.with_label_values(&["quorum-timeout"]).inc();
                    json_wire::encode_error(
                        "quorum-timeout",
                        "the write is applied and durable here but not yet at the write quorum; it will replicate",
                    )
                } else {
                    metrics.op_latency_durable.observe(received.elapsed().as_secs_f64());
                    event.json()
                }
            }
        };
        sink.feed(Message::Text(text)).await.map_err(|_| WriteFailure::Socket)?;
        written += 1;
        if written < WRITE_BATCH {
            next = backlog.pop_front().or_else(|| rx.try_recv().ok());
            if next.is_none() && !yielded {
                // Let the producers run once before paying for a send(2): under
                // fan-out load this turns one syscall per message into one per
                // batch; when idle it costs one trip through the scheduler.
                yielded = true;
                tokio::task::yield_now().await;
                next = rx.try_recv().ok();
            }
        }
    }
    sink.flush().await.map_err(|_| WriteFailure::Socket)?;
    Ok(None)
}

/// Unsubscribes a connection when its task ends, however it ends.
struct Leave {
    relay: Arc<crate::node::Relay>,
    hub: Arc<SpaceHub>,
    conn: u64,
    id: Arc<str>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let leave = PresenceEvent::new(self.hub.name().clone(), self.id.clone(), Arc::from(""), bytes::Bytes::new());
        self.relay.leave(&self.hub, self.conn, Some(Arc::new(leave)));
    }
}
