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

use super::{End, Fatal, Inbound, Out, Session, error_frame, send_all};
use crate::config::AckMode;
use crate::fanout::{Outbound, PresenceEvent, Subscriber};
use crate::gateway::GatewayCtx;
use crate::gateway::ws_json::{BACKLOG_FACTOR, EDGE_JOIN_TIMEOUT, WRITE_BATCH, close};
use crate::node::{Stamped, WriteError, now_ns};
use crate::replication::QuorumState;
use crate::space::SpaceHub;

/// Bytes of framing counted per op when sizing `catchup` and `changes` frames.
const OP_OVERHEAD: usize = 48;
/// Frames refused in a row for the rate limit before the channel is closed.
const RATE_STRIKES: u32 = 64;

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
    id: Arc<Session>,
    sub: Subscriber,
    rx: mpsc::Receiver<Outbound>,
    spaces: HashMap<Arc<str>, Sub>,
    backlog: VecDeque<Outbound>,
    pending: FuturesUnordered<BoxFuture<'static, Vec<pb::ServerFrame>>>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        for (_, s) in self.spaces.drain() {
            self.id.release_space();
            self.ctx.relay.leave(&s.hub, self.sub.conn, None);
        }
    }
}

impl Channel {
    /// A channel for an accepted session.
    pub fn new(ctx: Arc<GatewayCtx>, id: Arc<Session>) -> Self {
        let (sub, rx) = Subscriber::new(ctx.relay.next_conn_id(), ctx.limits.limit_send_queue);
        Self { ctx, id, sub, rx, spaces: HashMap::new(), backlog: VecDeque::new(), pending: FuturesUnordered::new() }
    }

    /// Serves the channel until it ends; returns the close to send, if any.
    pub async fn run(mut self, inbound: &mut mpsc::Receiver<Inbound>, out: &mut Out) -> End {
        let limits = self.ctx.limits.clone();
        let kill = self.sub.kill().clone();
        let mut shutdown = self.ctx.shutdown.clone();
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();
        let max_pending = limits.limit_send_queue;
        let mut strikes = 0u32;
        loop {
            if kill.is_triggered() {
                return Some((close::TRY_AGAIN_LATER, "slow consumer"));
            }
            tokio::select! {
                _ = kill.wait() => return Some((close::TRY_AGAIN_LATER, "slow consumer")),
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Some((close::GOING_AWAY, "relay shutting down")),
                Some(frames) = self.pending.next(), if !self.pending.is_empty() => {
                    send_all(out, &frames, limits.idle_timeout).await.ok()?;
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
                    // A write costs one token per op, any other frame one.
                    let cost = match &frame.msg {
                        Some(pb::client_frame::Msg::Write(w)) => w.ops.len(),
                        _ => 1,
                    };
                    if !self.id.take_tokens(cost, now) {
                        strikes += 1;
                        if strikes > RATE_STRIKES {
                            let msg = "rate limit exceeded again and again (--limit-msgs-per-sec)";
                            return self.fail(out, Fatal::new("rate-limited", msg, close::POLICY)).await;
                        }
                        let (id, space) = match &frame.msg {
                            Some(pb::client_frame::Msg::Write(w)) => (w.id, w.space.as_str()),
                            _ => (0, ""),
                        };
                        let msg = format!(
                            "over {} ops per second (burst {}); retry later",
                            limits.limit_msgs_per_sec, limits.limit_burst
                        );
                        let f = self.refuse(id, space, "rate-limited", &msg);
                        if send_all(out, &[f], limits.idle_timeout).await.is_err() {
                            return None;
                        }
                        continue;
                    }
                    strikes = 0;
                    if let Err(f) = self.handle(frame, out, now).await {
                        return self.fail(out, f).await;
                    }
                }
                _ = ping.tick() => {
                    // QUIC streams leave liveness to their connection (its idle timeout).
                    if self.id.idle_check && last_heard.elapsed() > limits.idle_timeout {
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
        let _ = send_all(out, &[frame], self.ctx.limits.idle_timeout).await;
        Some((f.close, f.code))
    }

    /// Applies one client frame; `Err` ends the channel.
    async fn handle(&mut self, frame: pb::ClientFrame, out: &mut Out, now: Instant) -> Result<(), Fatal> {
        use pb::client_frame::Msg as C;
        let reply = match frame.msg {
            None => return Err(Fatal::new("bad-frame", "empty frame", close::POLICY)),
            Some(C::Hello(_)) => return Err(Fatal::new("bad-frame", "hello was already accepted", close::POLICY)),
            Some(C::Subscribe(s)) => return self.subscribe(s, out).await,
            Some(C::Unsubscribe(u)) => {
                if let Some(s) = self.spaces.remove(u.space.as_str()) {
                    self.id.release_space();
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
            send_all(out, &[reply], self.ctx.limits.idle_timeout).await.map_err(|()| Fatal::gone())?;
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
        } else if !self.spaces.contains_key(s.space.as_str()) && !self.id.reserve_space(limits.limit_spaces_per_conn) {
            Some(("too-many-spaces", format!("at most {} spaces per connection", limits.limit_spaces_per_conn)))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            let f = self.refuse(0, &s.space, code, &message);
            return send_all(out, &[f], limits.idle_timeout).await.map_err(|()| Fatal::gone());
        }
        let digests = if s.buckets == 0 {
            None
        } else {
            let n = s.buckets;
            let ok = n.is_power_of_two() && n <= aether_core::sync::MAX_BUCKETS;
            let decoded = aether_core::sync::decode_digests(&s.digests).filter(|d| ok && d.len() == n as usize);
            let Some(d) = decoded else {
                if !self.spaces.contains_key(s.space.as_str()) {
                    self.id.release_space();
                }
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
        let mut chunks = Catchup::new(
            name.to_string(),
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
        // backlog (bounded), behind it. Each frame gets its own deadline: a big
        // catchup on a slow link takes as long as it takes, a stalled one does not.
        let backlog_cap = limits.limit_send_queue.saturating_mul(BACKLOG_FACTOR);
        let idle = limits.idle_timeout;
        let mut presence = presence.into_iter();
        while let Some(frame) = chunks.next().or_else(|| presence.next()) {
            let (rx, backlog) = (&mut self.rx, &mut self.backlog);
            let write = send_all(out, std::slice::from_ref(&frame), idle);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    r = &mut write => {
                        r.map_err(|()| Fatal::gone())?;
                        break;
                    }
                    item = rx.recv() => {
                        let Some(item) = item else { return Err(Fatal::gone()) };
                        backlog.push_back(item);
                        if backlog.len() > backlog_cap {
                            return Err(Fatal::new("slow-consumer", "slow consumer", close::TRY_AGAIN_LATER));
                        }
                    }
                }
            }
        }
        Ok(())
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
                    if let Some(winner) = a.beaten_by {
                        settle.superseded.push((key, stamp, winner));
                    }
                }
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
        // With `--ack memory`, writes applied here are acknowledged at once
        // (as on `/ws`); forwarded ones still wait for their owner.
        let durable = (relay.ack_mode() == AckMode::Durable).then(|| relay.durable());
        if durable.is_none() {
            settle.quorums.clear();
        }
        let metrics = relay.metrics().clone();
        let received = now;
        self.pending.push(Box::pin(async move {
            let memory = durable.is_none();
            let (frames, ok) = settle.run(durable, &metrics).await;
            if ok {
                let latency = if memory { &metrics.op_latency_memory } else { &metrics.op_latency_durable };
                latency.observe(received.elapsed().as_secs_f64());
            }
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
        let bad = p.state.len() > max
            || (!p.state.is_empty()
                && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&p.state).is_err());
        if bad {
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
        let max_bytes = self.ctx.limits.limit_frame_bytes / 2;
        let mut next = Some(first);
        let mut taken = 0;
        let mut changes: Option<pb::Changes> = None;
        let mut bytes = 0;
        while let Some(item) = next.take() {
            taken += 1;
            match item {
                Outbound::Op(ev) => {
                    // Only events of the hub subscribed (not of an earlier one of the same
                    // name, dropped meanwhile), and only those after its catchup.
                    if let Some(sub) = self.spaces.get(&ev.space)
                        && Arc::ptr_eq(sub.hub.name(), &ev.space)
                        && ev.seq > sub.after
                    {
                        let size = ev.key.len() + ev.value.as_ref().map_or(0, Bytes::len) + OP_OVERHEAD;
                        if changes.as_ref().is_some_and(|c| c.space != *ev.space || bytes + size > max_bytes)
                            && let Some(c) = changes.take()
                        {
                            out.feed(&pb::ServerFrame { msg: Some(S::Changes(c)) }).await?;
                            bytes = 0;
                        }
                        let c = changes
                            .get_or_insert_with(|| pb::Changes { space: ev.space.to_string(), ..Default::default() });
                        c.ops.push(op_of(&ev.key, ev.value.clone(), ev.stamp));
                        c.seq = ev.seq;
                        bytes += size;
                    }
                }
                Outbound::Presence(p) => {
                    let wanted =
                        self.spaces.get(&p.space).is_some_and(|s| s.presence && Arc::ptr_eq(s.hub.name(), &p.space));
                    if wanted {
                        if let Some(c) = changes.take() {
                            out.feed(&pb::ServerFrame { msg: Some(S::Changes(c)) }).await?;
                            bytes = 0;
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
    /// and the ack (or the error), and whether it is an ack.
    async fn run(
        mut self,
        durable: Option<tokio::sync::watch::Receiver<crate::wal::Durable>>,
        metrics: &crate::metrics::Metrics,
    ) -> (Vec<pb::ServerFrame>, bool) {
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
                let w = op_of(&Key::from(key.as_bytes()), winner.value, winner.stamp);
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
        let acked = error.is_none();
        frames.push(match error {
            Some((code, message)) => {
                metrics.errors.with_label_values(&[code]).inc();
                error_frame(self.id, &space, code, &message, false)
            }
            None => pb::ServerFrame { msg: Some(S::Ack(pb::Ack { id: self.id })) },
        });
        (frames, acked)
    }
}

fn pb_stamp(s: Stamp) -> pb::Stamp {
    pb::Stamp { wall_ns: s.wall_ns, counter: s.counter, actor: s.actor }
}

/// An op of `key` holding `value` (`None`: deleted) at `stamp`.
fn op_of(key: &Key, value: Option<Bytes>, stamp: Stamp) -> pb::Op {
    // Keys are checked to be UTF-8 wherever they enter the relay.
    pb::Op {
        key: String::from_utf8_lossy(key).into_owned(),
        delete: value.is_none(),
        value: value.unwrap_or_default(),
        stamp: Some(pb_stamp(stamp)),
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

/// A catchup cut into frames of at most `max_ops` ops and about
/// `max_bytes` each, built one at a time as they are written; the last is
/// marked done with the resume point.
struct Catchup {
    space: String,
    kind: pb::catchup::Kind,
    entries: std::vec::IntoIter<(Key, Entry)>,
    total: u64,
    epoch: Bytes,
    seq: u64,
    max_ops: usize,
    max_bytes: usize,
    /// An entry taken that did not fit in the previous frame.
    carry: Option<(Key, Entry)>,
    done: bool,
}

impl Catchup {
    fn new(
        space: String,
        kind: pb::catchup::Kind,
        entries: Vec<(Key, Entry)>,
        epoch: Bytes,
        seq: u64,
        max_ops: usize,
        max_bytes: usize,
    ) -> Self {
        let total = entries.len() as u64;
        let entries = entries.into_iter();
        Self { space, kind, entries, total, epoch, seq, max_ops, max_bytes, carry: None, done: false }
    }
}

impl Iterator for Catchup {
    type Item = pb::ServerFrame;

    fn next(&mut self) -> Option<pb::ServerFrame> {
        if self.done {
            return None;
        }
        let mut chunk = pb::Catchup { space: self.space.clone(), kind: self.kind as i32, ..Default::default() };
        let mut bytes = 0;
        while let Some((key, e)) = self.carry.take().or_else(|| self.entries.next()) {
            let size = key.len() + e.value.as_ref().map_or(0, Bytes::len) + OP_OVERHEAD;
            if !chunk.ops.is_empty() && (chunk.ops.len() >= self.max_ops || bytes + size > self.max_bytes) {
                self.carry = Some((key, e));
                return Some(pb::ServerFrame { msg: Some(S::Catchup(chunk)) });
            }
            bytes += size;
            chunk.ops.push(op_of(&key, e.value, e.stamp));
        }
        self.done = true;
        chunk.done = true;
        chunk.epoch = self.epoch.clone();
        chunk.seq = self.seq;
        chunk.total = self.total;
        Some(pb::ServerFrame { msg: Some(S::Catchup(chunk)) })
    }
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
        let frames =
            Catchup::new("s".into(), pb::catchup::Kind::Full, entries, Bytes::from_static(b"e"), 7, 4, 1 << 20);
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
        let by_bytes: Vec<_> = Catchup::new(
            "s".into(),
            pb::catchup::Kind::Full,
            (0..10).map(|n| entry(n, 100)).collect(),
            Bytes::new(),
            0,
            100,
            300,
        )
        .collect();
        assert_eq!(by_bytes.len(), 5, "two 150-byte ops per 300-byte chunk");
        let empty: Vec<_> =
            Catchup::new("s".into(), pb::catchup::Kind::Delta, Vec::new(), Bytes::new(), 3, 4, 100).collect();
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
