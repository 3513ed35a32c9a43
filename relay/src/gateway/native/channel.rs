//! One native channel — a `/v1/ws` connection or one QUIC stream — after
//! its `hello`: subscriptions with catchup, client-stamped writes with acks
//! and superseded events, presence, pings; and the relay's events out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use aether_core::{Entry, Key, Stamp};
use aether_proto::client::v1 as pb;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use pb::server_frame::Msg as S;
use tokio::sync::mpsc;

use super::{End, Fatal, Identity, Inbound, Out, error_frame};
use crate::config::AckMode;
use crate::fanout::{OpEvent, Outbound, PresenceEvent, Subscriber};
use crate::gateway::GatewayCtx;
use crate::gateway::ws_json::close;
use crate::limits::TokenBucket;
use crate::node::{Stamped, WriteError, now_ns};
use crate::replication::QuorumState;
use crate::space::SpaceHub;

/// Most queued events written before one flush.
const WRITE_BATCH: usize = 256;
/// The backlog (events waiting behind a catchup) may hold this many times
/// `--limit-send-queue` items before the client counts as slow.
const BACKLOG_FACTOR: usize = 8;
/// How long a subscription to a space served as an edge waits for the owner's snapshot.
const EDGE_JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes of framing counted per op when sizing catchup chunks.
const OP_OVERHEAD: usize = 48;

/// A subscribed space.
struct Sub {
    hub: Arc<SpaceHub>,
    presence: bool,
    /// Events at or below this seq were covered by the catchup.
    after: u64,
}

/// A channel's state.
pub struct Channel {
    ctx: Arc<GatewayCtx>,
    id: Arc<Identity>,
    sub: Subscriber,
    rx: mpsc::Receiver<Outbound>,
    spaces: HashMap<Arc<str>, Sub>,
    backlog: VecDeque<Outbound>,
    pending: FuturesUnordered<BoxFuture<'static, Vec<pb::ServerFrame>>>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        for (_, s) in self.spaces.drain() {
            self.ctx.relay.leave(&s.hub, self.sub.conn, None);
        }
    }
}

impl Channel {
    /// A channel for an accepted session.
    pub fn new(ctx: Arc<GatewayCtx>, id: Arc<Identity>) -> Self {
        let (sub, rx) = Subscriber::new(ctx.relay.next_conn_id(), ctx.limits.limit_send_queue);
        Self { ctx, id, sub, rx, spaces: HashMap::new(), backlog: VecDeque::new(), pending: FuturesUnordered::new() }
    }

    /// Serves the channel until it ends; returns the close to send, if any.
    pub async fn run(mut self, inbound: &mut mpsc::Receiver<Inbound>, out: &mut Out) -> End {
        let limits = self.ctx.limits.clone();
        let kill = self.sub.kill().clone();
        let mut shutdown = self.ctx.shutdown.clone();
        let mut bucket = TokenBucket::new(limits.limit_msgs_per_sec, limits.limit_burst, Instant::now());
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();
        let max_pending = limits.limit_send_queue;
        loop {
            if kill.is_triggered() {
                return Some((close::TRY_AGAIN_LATER, "slow consumer"));
            }
            tokio::select! {
                _ = kill.wait() => return Some((close::TRY_AGAIN_LATER, "slow consumer")),
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Some((close::GOING_AWAY, "relay shutting down")),
                Some(frames) = self.pending.next(), if !self.pending.is_empty() => {
                    for f in &frames {
                        out.feed(f).await.ok()?;
                    }
                    out.flush().await.ok()?;
                }
                item = next_item(&mut self.backlog, &mut self.rx) => {
                    let item = item?;
                    let written = tokio::time::timeout(limits.idle_timeout, self.write_events(item, out)).await;
                    // A client that takes nothing for this long is gone.
                    written.ok()?.ok()?;
                }
                msg = inbound.recv(), if self.pending.len() < max_pending => {
                    let now = Instant::now();
                    let frame = match msg? {
                        Inbound::Alive => {
                            last_heard = now;
                            continue;
                        }
                        Inbound::Fatal(f) => return self.fail(out, f).await,
                        Inbound::Frame(frame) => frame,
                    };
                    last_heard = now;
                    if !bucket.try_take(now) {
                        let f = Fatal::new("rate-limited", "rate limit exceeded (--limit-msgs-per-sec)", close::POLICY);
                        return self.fail(out, f).await;
                    }
                    if let Err(f) = self.handle(frame, out, now).await {
                        return self.fail(out, f).await;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > limits.idle_timeout {
                        return Some((close::GOING_AWAY, "idle timeout"));
                    }
                    let sent = tokio::time::timeout(limits.idle_timeout, out.ping()).await;
                    sent.ok()?.ok()?;
                }
            }
        }
    }

    /// Sends a fatal error and ends the channel with its close code.
    async fn fail(&mut self, out: &mut Out, f: Fatal) -> End {
        if f.code.is_empty() {
            return None;
        }
        self.ctx.relay.metrics().errors.with_label_values(&[f.code]).inc();
        let frame = error_frame(0, "", f.code, &f.message, true);
        let _ = tokio::time::timeout(self.ctx.limits.idle_timeout, async {
            out.feed(&frame).await?;
            out.flush().await
        })
        .await;
        Some((f.close, f.code))
    }

    /// Applies one client frame; `Err` ends the channel.
    async fn handle(&mut self, frame: pb::ClientFrame, out: &mut Out, now: Instant) -> Result<(), Fatal> {
        use pb::client_frame::Msg as C;
        let reply = match frame.msg {
            None => return Err(Fatal::new("bad-frame", "empty frame", close::POLICY)),
            Some(C::Hello(_)) => Some(self.refuse(0, "", "bad-frame", "hello was already accepted")),
            Some(C::Subscribe(s)) => return self.subscribe(s, out).await,
            Some(C::Unsubscribe(u)) => {
                if let Some(s) = self.spaces.remove(u.space.as_str()) {
                    self.ctx.relay.leave(&s.hub, self.sub.conn, None);
                }
                None
            }
            Some(C::Write(w)) => self.write(w, now),
            Some(C::Presence(p)) => self.presence(p),
            Some(C::Ping(p)) => {
                Some(pb::ServerFrame { msg: Some(S::Pong(pb::Pong { nonce: p.nonce, now_ns: now_ns() })) })
            }
        };
        if let Some(reply) = reply {
            let sent = tokio::time::timeout(self.ctx.limits.idle_timeout, async {
                out.feed(&reply).await?;
                out.flush().await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return Err(Fatal::gone());
            }
        }
        Ok(())
    }

    fn refuse(&self, id: u64, space: &str, code: &'static str, message: &str) -> pb::ServerFrame {
        self.ctx.relay.metrics().errors.with_label_values(&[code]).inc();
        error_frame(id, space, code, message, false)
    }

    async fn subscribe(&mut self, s: pb::Subscribe, out: &mut Out) -> Result<(), Fatal> {
        let limits = &self.ctx.limits;
        let refusal = if s.space.is_empty() || s.space.len() > limits.limit_space_bytes {
            Some(("bad-space", format!("space name must be 1 to {} bytes", limits.limit_space_bytes)))
        } else if !self.spaces.contains_key(s.space.as_str()) && self.spaces.len() >= limits.limit_spaces_per_conn {
            Some(("too-many-spaces", format!("at most {} spaces per connection", limits.limit_spaces_per_conn)))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            let f = self.refuse(0, &s.space, code, &message);
            return send(out, &f, limits.idle_timeout).await;
        }
        let digests = if s.buckets == 0 {
            None
        } else {
            let n = s.buckets;
            let ok = n.is_power_of_two() && n <= aether_core::sync::MAX_BUCKETS;
            let decoded = aether_core::sync::decode_digests(&s.digests).filter(|d| ok && d.len() == n as usize);
            let Some(d) = decoded else {
                let msg = format!(
                    "subscribe {:?}: buckets must be a power of two up to {} with 24 bytes of digest each",
                    s.space,
                    aether_core::sync::MAX_BUCKETS
                );
                return Err(Fatal::new("bad-frame", msg, close::POLICY));
            };
            Some(d)
        };
        let relay = self.ctx.relay.clone();
        relay.prepare_join(&s.space, EDGE_JOIN_TIMEOUT).await;
        let (hub, catchup, kind) = relay.join_resume(&s.space, self.sub.clone(), &s.epoch, s.seq, digests.as_deref());
        let epoch = Bytes::copy_from_slice(&relay.epoch(&hub));
        let name = hub.name().clone();
        let previous =
            self.spaces.insert(name.clone(), Sub { hub: hub.clone(), presence: s.presence, after: catchup.seq });
        if let Some(old) = previous.filter(|old| !Arc::ptr_eq(&old.hub, &hub)) {
            relay.leave(&old.hub, self.sub.conn, None);
        }
        let kind = match kind {
            crate::node::Sync::Full => pb::catchup::Kind::Full,
            crate::node::Sync::Delta => pb::catchup::Kind::Delta,
            crate::node::Sync::Buckets => pb::catchup::Kind::Buckets,
        };
        let chunks = catchup_chunks(
            &name,
            kind,
            catchup.entries,
            epoch,
            catchup.seq,
            limits.limit_catchup_ops,
            limits.limit_frame_bytes / 2,
        );
        let presence: Vec<pb::ServerFrame> = if s.presence {
            catchup.presence.iter().filter(|p| p.session != self.id.session).map(|p| presence_frame(p)).collect()
        } else {
            Vec::new()
        };
        // Events keep arriving while the catchup is written: they wait in the
        // backlog (bounded), behind it.
        let backlog_cap = limits.limit_send_queue.saturating_mul(BACKLOG_FACTOR);
        let idle = limits.idle_timeout;
        let (rx, backlog) = (&mut self.rx, &mut self.backlog);
        let write = async {
            for f in chunks.iter().chain(&presence) {
                out.feed(f).await?;
            }
            out.flush().await
        };
        tokio::pin!(write);
        let deadline = tokio::time::sleep(idle);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = &mut write => return r.map_err(|_| Fatal::gone()),
                item = rx.recv() => {
                    let Some(item) = item else { return Err(Fatal::gone()) };
                    backlog.push_back(item);
                    if backlog.len() > backlog_cap {
                        return Err(Fatal::new("slow-consumer", "slow consumer", close::TRY_AGAIN_LATER));
                    }
                }
                _ = &mut deadline => return Err(Fatal::gone()),
            }
        }
    }

    /// Checks every op, applies them, and queues the write's settlement
    /// (superseded events, then the ack or an error). Returns an immediate refusal.
    fn write(&mut self, w: pb::Write, now: Instant) -> Option<pb::ServerFrame> {
        let limits = &self.ctx.limits;
        let relay = self.ctx.relay.clone();
        let Some(hub) = self.spaces.get(w.space.as_str()).map(|s| s.hub.clone()) else {
            let msg = format!("subscribe to {:?} before writing to it", w.space);
            return Some(self.refuse(w.id, &w.space, "not-subscribed", &msg));
        };
        if w.ops.len() > limits.limit_ops_per_write {
            let msg = format!("{} ops in one write; the limit is {}", w.ops.len(), limits.limit_ops_per_write);
            return Some(self.refuse(w.id, &w.space, "too-many-ops", &msg));
        }
        let horizon = now_ns().saturating_add(relay.max_skew_ns());
        let mut checked = Vec::with_capacity(w.ops.len());
        for op in w.ops {
            match check_op(op, limits, self.id.actor, horizon) {
                Ok(c) => checked.push(c),
                Err((code, msg)) => return Some(self.refuse(w.id, &w.space, code, &msg)),
            }
        }
        let mut settle = Settle { id: w.id, hub: Some(hub.clone()), ..Settle::default() };
        for (key, value, stamp) in checked {
            match relay.write_stamped(&hub, self.sub.conn, key.as_bytes(), value.clone(), stamp, now) {
                Ok(Stamped::Applied(a)) => {
                    settle.lsn = settle.lsn.max(Some(a.lsn));
                    settle.quorums.extend(a.quorum);
                }
                Ok(Stamped::Superseded(winner)) => settle.superseded.push((key, stamp, winner)),
                Ok(Stamped::Forwarded(rx)) => settle.forwarded.push((key, stamp, rx)),
                Err(e) => {
                    let code = match e {
                        WriteError::Wal(crate::wal::AppendError::Unavailable) => "unavailable",
                        _ => "overloaded",
                    };
                    // Ops before this one may be applied: a retry of the whole write is harmless.
                    settle.failed = Some((code, e.to_string()));
                    break;
                }
            }
        }
        let durable = (relay.ack_mode() == AckMode::Durable).then(|| relay.durable());
        let metrics = relay.metrics().clone();
        let received = now;
        self.pending.push(Box::pin(async move {
            let frames = settle.run(durable, &metrics).await;
            metrics.op_latency_durable.observe(received.elapsed().as_secs_f64());
            frames
        }));
        None
    }

    fn presence(&mut self, p: pb::Presence) -> Option<pb::ServerFrame> {
        let Some(hub) = self.spaces.get(p.space.as_str()).map(|s| s.hub.clone()) else {
            let msg = format!("subscribe to {:?} before sending presence to it", p.space);
            return Some(self.refuse(0, &p.space, "not-subscribed", &msg));
        };
        let max = self.ctx.limits.limit_message_bytes;
        let is_object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&p.state).is_ok();
        if p.state.len() > max || (!p.state.is_empty() && !is_object) {
            let msg = format!("presence state must be a JSON object of at most {max} bytes");
            return Some(self.refuse(0, &p.space, "bad-presence", &msg));
        }
        self.ctx.relay.metrics().presence.inc();
        let event = PresenceEvent::new(hub.name().clone(), self.id.session.clone(), self.id.color.clone(), p.state);
        hub.presence(self.sub.conn, Arc::new(event));
        None
    }

    /// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]),
    /// consecutive ops of one space as one `changes` frame, with one flush.
    async fn write_events(&mut self, first: Outbound, out: &mut Out) -> Result<(), ()> {
        let mut next = Some(first);
        let mut taken = 0;
        let mut changes: Option<pb::Changes> = None;
        while let Some(item) = next.take() {
            taken += 1;
            match item {
                Outbound::Op(ev) => {
                    if let Some(sub) = self.spaces.get(&ev.space)
                        && ev.seq > sub.after
                    {
                        if changes.as_ref().is_some_and(|c| c.space != *ev.space) {
                            let c = changes.take().expect("checked");
                            out.feed(&pb::ServerFrame { msg: Some(S::Changes(c)) }).await?;
                        }
                        let c = changes
                            .get_or_insert_with(|| pb::Changes { space: ev.space.to_string(), ..Default::default() });
                        c.ops.push(event_op(&ev));
                        c.seq = ev.seq;
                    }
                }
                Outbound::Presence(p) => {
                    if self.spaces.get(&p.space).is_some_and(|s| s.presence) {
                        if let Some(c) = changes.take() {
                            out.feed(&pb::ServerFrame { msg: Some(S::Changes(c)) }).await?;
                        }
                        out.feed(&presence_frame(&p)).await?;
                    }
                }
                // `/ws` echoes and errors never reach a native subscriber.
                Outbound::Ack { .. } | Outbound::Text(_) => {}
            }
            if taken < WRITE_BATCH {
                next = self.backlog.pop_front().or_else(|| self.rx.try_recv().ok());
            }
        }
        if let Some(c) = changes {
            out.feed(&pb::ServerFrame { msg: Some(S::Changes(c)) }).await?;
        }
        out.flush().await
    }
}

async fn send(out: &mut Out, f: &pb::ServerFrame, idle: std::time::Duration) -> Result<(), Fatal> {
    match tokio::time::timeout(idle, async {
        out.feed(f).await?;
        out.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(Fatal::gone()),
    }
}

async fn next_item(backlog: &mut VecDeque<Outbound>, rx: &mut mpsc::Receiver<Outbound>) -> Option<Outbound> {
    if let Some(item) = backlog.pop_front() {
        return Some(item);
    }
    rx.recv().await
}

/// Checks one op: key, value, stamp (actor and skew). Returns it ready to apply.
fn check_op(
    op: pb::Op,
    limits: &crate::config::LimitArgs,
    actor: u64,
    horizon: u64,
) -> Result<(String, Option<Bytes>, Stamp), (&'static str, String)> {
    if op.key.is_empty() || op.key.len() > limits.limit_key_bytes {
        return Err(("bad-op", format!("keys must be 1 to {} bytes", limits.limit_key_bytes)));
    }
    let value = if op.delete {
        if !op.value.is_empty() {
            return Err(("bad-op", format!("op on {:?}: a delete has no value", op.key)));
        }
        None
    } else {
        if op.value.len() > limits.limit_value_bytes {
            let msg =
                format!("value of {} bytes exceeds the limit of {} bytes", op.value.len(), limits.limit_value_bytes);
            return Err(("bad-op", msg));
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&op.value).is_err() {
            return Err(("bad-op", format!("op on {:?}: the value is not JSON text", op.key)));
        }
        Some(op.value)
    };
    let Some(s) = op.stamp else {
        return Err(("bad-op", format!("op on {:?} has no stamp", op.key)));
    };
    let stamp = Stamp { wall_ns: s.wall_ns, counter: s.counter, actor: s.actor };
    if stamp.actor != actor {
        let msg =
            format!("op on {:?} is stamped by actor {} but this connection is actor {actor}", op.key, stamp.actor);
        return Err(("forged-stamp", msg));
    }
    if stamp.wall_ns > horizon {
        let ahead = std::time::Duration::from_nanos(stamp.wall_ns - horizon);
        let msg = format!("op on {:?} is stamped {ahead:?} beyond the relay's clock and skew bound", op.key);
        return Err(("future-stamp", msg));
    }
    Ok((op.key, value, stamp))
}

/// What a write's acknowledgement waits for.
#[derive(Default)]
struct Settle {
    id: u64,
    hub: Option<Arc<SpaceHub>>,
    lsn: Option<u64>,
    quorums: Vec<tokio::sync::watch::Receiver<QuorumState>>,
    superseded: Vec<(String, Stamp, Entry)>,
    #[allow(clippy::type_complexity)]
    forwarded:
        Vec<(String, Stamp, tokio::sync::oneshot::Receiver<Result<Option<Entry>, crate::replication::edge::Refused>>)>,
    failed: Option<(&'static str, String)>,
}

impl Settle {
    /// Waits for the WAL (`durable`, unless acks are from memory), the write
    /// quorum and the owners of forwarded ops; returns the superseded events
    /// and the ack (or the error).
    async fn run(
        mut self,
        durable: Option<tokio::sync::watch::Receiver<crate::wal::Durable>>,
        metrics: &crate::metrics::Metrics,
    ) -> Vec<pb::ServerFrame> {
        let space = self.hub.as_ref().map(|h| h.name().to_string()).unwrap_or_default();
        let mut error = self.failed.take();
        if let (Some(lsn), Some(mut durable)) = (self.lsn, durable) {
            let ok = durable.wait_for(|d| d.lsn >= lsn || d.failed).await.is_ok_and(|d| !d.failed);
            if !ok {
                error = error.or(Some(("unavailable", "the relay's write-ahead log failed; try another relay".into())));
            }
        }
        for mut q in self.quorums.drain(..) {
            let state = q.wait_for(|q| *q != QuorumState::Pending).await.map(|s| *s).unwrap_or(QuorumState::TimedOut);
            if state == QuorumState::TimedOut && error.is_none() {
                error = Some((
                    "quorum-timeout",
                    "the write is applied and durable here but not yet at the write quorum; it will replicate".into(),
                ));
            }
        }
        for (key, stamp, rx) in self.forwarded.drain(..) {
            match rx.await {
                Ok(Ok(None)) => {}
                // The owner reports the entry that beat it.
                Ok(Ok(Some(winner))) => self.superseded.push((key, stamp, winner)),
                Ok(Err(r)) => {
                    let code: &'static str = match r.code.as_str() {
                        "overloaded" => "overloaded",
                        "quorum-timeout" => "quorum-timeout",
                        "unavailable" => "unavailable",
                        _ => "write-failed",
                    };
                    error = error.or(Some((code, r.message)));
                }
                Err(_) => error = error.or(Some(("write-failed", "the relay dropped the forwarded write".into()))),
            }
        }
        let mut frames: Vec<pb::ServerFrame> = self
            .superseded
            .drain(..)
            .map(|(key, yours, winner)| {
                let w = pb::Op {
                    key: key.clone(),
                    delete: winner.value.is_none(),
                    value: winner.value.unwrap_or_default(),
                    stamp: Some(pb_stamp(winner.stamp)),
                };
                let s = pb::Superseded {
                    id: self.id,
                    space: space.clone(),
                    key,
                    yours: Some(pb_stamp(yours)),
                    winner: Some(w),
                };
                pb::ServerFrame { msg: Some(S::Superseded(s)) }
            })
            .collect();
        frames.push(match error {
            Some((code, message)) => {
                metrics.errors.with_label_values(&[code]).inc();
                error_frame(self.id, &space, code, &message, false)
            }
            None => pb::ServerFrame { msg: Some(S::Ack(pb::Ack { id: self.id })) },
        });
        frames
    }
}

fn pb_stamp(s: Stamp) -> pb::Stamp {
    pb::Stamp { wall_ns: s.wall_ns, counter: s.counter, actor: s.actor }
}

fn entry_op(key: &Key, e: Entry) -> pb::Op {
    pb::Op {
        key: String::from_utf8_lossy(key).into_owned(),
        delete: e.value.is_none(),
        value: e.value.unwrap_or_default(),
        stamp: Some(pb_stamp(e.stamp)),
    }
}

fn event_op(ev: &OpEvent) -> pb::Op {
    pb::Op {
        key: String::from_utf8_lossy(&ev.key).into_owned(),
        delete: ev.value.is_none(),
        value: ev.value.clone().unwrap_or_default(),
        stamp: Some(pb_stamp(ev.stamp)),
    }
}

fn presence_frame(p: &PresenceEvent) -> pb::ServerFrame {
    let e = pb::PresenceEvent {
        space: p.space.to_string(),
        session: p.session.to_string(),
        color: p.color.to_string(),
        state: p.state.clone(),
    };
    pb::ServerFrame { msg: Some(S::Presence(e)) }
}

/// Splits a catchup into frames of at most `max_ops` ops and about
/// `max_bytes`; the last is marked done with the resume point.
fn catchup_chunks(
    space: &str,
    kind: pb::catchup::Kind,
    entries: Vec<(Key, Entry)>,
    epoch: Bytes,
    seq: u64,
    max_ops: usize,
    max_bytes: usize,
) -> Vec<pb::ServerFrame> {
    let total = entries.len() as u64;
    let mut frames = Vec::new();
    let mut chunk = pb::Catchup { space: space.to_owned(), kind: kind as i32, ..Default::default() };
    let mut bytes = 0;
    for (key, e) in entries {
        let size = key.len() + e.value.as_ref().map_or(0, Bytes::len) + OP_OVERHEAD;
        if !chunk.ops.is_empty() && (chunk.ops.len() >= max_ops || bytes + size > max_bytes) {
            let next = pb::Catchup { space: space.to_owned(), kind: kind as i32, ..Default::default() };
            frames.push(std::mem::replace(&mut chunk, next));
            bytes = 0;
        }
        bytes += size;
        chunk.ops.push(entry_op(&key, e));
    }
    chunk.done = true;
    chunk.epoch = epoch;
    chunk.seq = seq;
    chunk.total = total;
    frames.push(chunk);
    frames.into_iter().map(|c| pb::ServerFrame { msg: Some(S::Catchup(c)) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64, len: usize) -> (Key, Entry) {
        let value = Some(Bytes::from(vec![b'1'; len]));
        (Key::from(format!("k{n}").as_bytes()), Entry { value, stamp: Stamp { wall_ns: n, counter: 0, actor: 1 } })
    }

    #[test]
    fn catchups_are_chunked_by_ops_and_bytes_and_only_the_last_is_done() {
        let entries: Vec<_> = (0..10).map(|n| entry(n, 100)).collect();
        let frames = catchup_chunks("s", pb::catchup::Kind::Full, entries, Bytes::from_static(b"e"), 7, 4, 1 << 20);
        let chunks: Vec<pb::Catchup> = frames
            .into_iter()
            .map(|f| match f.msg {
                Some(S::Catchup(c)) => c,
                _ => panic!("not a catchup"),
            })
            .collect();
        assert_eq!(chunks.iter().map(|c| c.ops.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert!(chunks[..2].iter().all(|c| !c.done && c.epoch.is_empty()));
        assert!(chunks[2].done && chunks[2].seq == 7 && chunks[2].total == 10 && &chunks[2].epoch[..] == b"e");
        let by_bytes = catchup_chunks(
            "s",
            pb::catchup::Kind::Full,
            (0..10).map(|n| entry(n, 100)).collect(),
            Bytes::new(),
            0,
            100,
            300,
        );
        assert_eq!(by_bytes.len(), 5, "two 150-byte ops per 300-byte chunk");
        let empty = catchup_chunks("s", pb::catchup::Kind::Delta, Vec::new(), Bytes::new(), 3, 4, 100);
        assert!(matches!(&empty[..], [pb::ServerFrame { msg: Some(S::Catchup(c)) }] if c.done && c.ops.is_empty()));
    }

    #[test]
    fn ops_are_checked_before_anything_applies() {
        use clap::Parser;
        let cli = crate::config::Cli::try_parse_from(["aether-relay", "dev"]).unwrap();
        let crate::config::Command::Dev(args) = cli.command else { panic!() };
        let limits = args.limits;
        let actor = (1 << 63) | 5;
        let op = |key: &str, value: &[u8], delete: bool, wall_ns: u64, actor: u64| pb::Op {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
            delete,
            stamp: Some(pb::Stamp { wall_ns, counter: 0, actor }),
        };
        assert!(check_op(op("k", b"{\"a\":1}", false, 10, actor), &limits, actor, 100).is_ok());
        assert!(check_op(op("k", b"", true, 10, actor), &limits, actor, 100).unwrap().1.is_none());
        let code = |o| check_op(o, &limits, actor, 100).unwrap_err().0;
        assert_eq!(code(op("k", b"{", false, 10, actor)), "bad-op");
        assert_eq!(code(op("k", b"", false, 10, actor)), "bad-op");
        assert_eq!(code(op("k", b"1", true, 10, actor)), "bad-op");
        assert_eq!(code(op("", b"1", false, 10, actor)), "bad-op");
        assert_eq!(code(op(&"k".repeat(300), b"1", false, 10, actor)), "bad-op");
        assert_eq!(code(op("k", b"1", false, 10, actor ^ 1)), "forged-stamp");
        assert_eq!(code(op("k", b"1", false, 101, actor)), "future-stamp");
        assert_eq!(code(pb::Op { stamp: None, ..op("k", b"1", false, 1, actor) }), "bad-op");
    }
}
