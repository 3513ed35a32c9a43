//! Writes: checked against the relay's limits, stamped with the client's
//! HLC, applied to the replica at once, queued, sent to the primary (one
//! frame per write; queued writes of a space grouped into multi-op frames
//! when resent: `framing.rs`); hedged to a second relay when overdue;
//! resolved by the first ack; retried with backoff when a relay cannot take
//! them now; undone when refused for good.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_proto::client::v1::{self as pb, ClientFrame, client_frame};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::framing::check_ops;
use super::{Driver, RETRY_MIN, WireId, WriteState};
use crate::backoff;
use crate::clock;
use crate::error::Error;
use crate::hedge::hedge_deadline;
use crate::queue::{QueuedOp, QueuedWrite, WriteId};
use crate::replica::{Origin, stamp_from_pb};
use crate::shared::{Mutation, Queued, Refusal, SpaceCell, lock};
use crate::space::Acked;
use crate::transport::SessionId;

/// Refusals that no relay and no retry will change: the write fails (once
/// no other session may still ack it).
const FINAL_CODES: [&str; 4] = ["bad-op", "forged-stamp", "too-many-ops", "bad-space"];

impl Driver {
    /// Re-creates writes loaded from the queue file: applied to the replicas
    /// (offline-first reads see them), queued, sent once a relay is there.
    /// What their keys held before is unknown: a refusal undoes them to
    /// absent, and the resubscription by digests brings the relay's value back.
    pub(super) fn restore(&mut self, writes: Vec<QueuedWrite>, clock: &mut aether_core::Hlc) {
        let now = Instant::now();
        for w in writes {
            let cell = self.shared.space(&w.space);
            {
                let mut state = lock(&cell.state);
                for op in &w.ops {
                    clock.witness(op.stamp);
                    let value = match &op.value {
                        Some(v) => serde_json::from_slice(v).ok().map(|parsed| (v.clone(), parsed)),
                        None => None,
                    };
                    state.replica.apply_local(&op.key, value, op.stamp);
                }
            }
            let previous = vec![None; w.ops.len()];
            for id in self.queue.restore([w]) {
                self.writes.insert(id, WriteState::new(cell.clone(), now, previous.clone(), Vec::new()));
            }
        }
    }

    /// Checks, stamps, applies locally, queues and sends one write.
    pub(super) fn enqueue(&mut self, cell: Arc<SpaceCell>, ops: Vec<Mutation>, now: Instant) -> Result<Queued, Error> {
        check_ops(&self.limits, &cell.name, &ops)?;
        if self.queue.ops() + ops.len() > self.cfg.max_queued_ops {
            return Err(Error::QueueFull { max: self.cfg.max_queued_ops });
        }
        let wall = clock::stamp_wall(clock::now_ns(), self.relay_offset_ns, self.max_skew_ns);
        let mut queued_ops = Vec::with_capacity(ops.len());
        let mut previous = Vec::with_capacity(ops.len());
        {
            let mut state = lock(&cell.state);
            for m in ops {
                let stamp = self.clock.tick(wall);
                previous.push(state.replica.entry(&m.key).cloned());
                let bytes = m.value.as_ref().map(|(b, _)| b.clone());
                if let Some(change) = state.replica.apply_local(&m.key, m.value, stamp) {
                    let _ = state.changes.send(change);
                }
                queued_ops.push(QueuedOp { key: m.key, value: bytes, stamp });
            }
        }
        let stamps = queued_ops.iter().map(|op| op.stamp).collect();
        let write = QueuedWrite { space: cell.name.clone(), ops: queued_ops };
        let id = self.queue.push(write).map_err(|e| Error::QueueFull { max: e.max })?;
        let (done_tx, done) = oneshot::channel();
        self.writes.insert(id, WriteState::new(cell, now, previous, vec![done_tx]));
        if let Some(p) = self.primary {
            self.send_write(p, vec![id]);
        }
        self.persist.mark(now);
        self.publish_queue_len();
        Ok(Queued { stamps, done })
    }

    /// Arms the hedge timer of a write that left for the primary at `sent`.
    pub(super) fn arm_hedge(&mut self, id: WriteId, sid: SessionId, sent: Instant) {
        if let Some(delay) = self.cfg.hedge_delay
            && self.endpoints.len() > 1
            && self.writes.contains_key(&id)
        {
            self.hedge_timers.arm(id, hedge_deadline(sent, self.rtt(sid), delay));
        }
    }

    /// A write is overdue at the primary: send it to the hedge session (or
    /// have one opened), and probe the primary.
    pub(super) fn on_hedge_due(&mut self, id: WriteId, now: Instant) {
        let Some(w) = self.writes.get_mut(&id) else { return };
        let Some(p) = self.primary else { return };
        w.wants_hedge = true;
        let sent_to_hedge = self.hedge.is_some_and(|h| w.is_on(h));
        self.ping(p, now);
        if let Some(h) = self.hedge
            && !sent_to_hedge
        {
            tracing::debug!(write = id, "hedging");
            self.send_write(h, vec![id]);
        }
    }

    /// A new hedge session: send it every overdue write.
    pub(super) fn serve_hedges(&mut self, sid: SessionId) {
        let ids: Vec<WriteId> = self
            .queue
            .iter()
            .map(|(id, _)| id)
            .filter(|id| self.writes.get(id).is_some_and(|w| w.wants_hedge && !w.is_on(sid)))
            .collect();
        self.send_grouped(sid, ids);
    }

    /// Resends writes whose retry delay passed, to the primary (grouped).
    /// Without a primary they wait for the next one, which gets every write.
    pub(super) fn on_retry_due(&mut self, ids: Vec<WriteId>) {
        let Some(p) = self.primary else { return };
        let ids = ids.into_iter().filter(|id| self.writes.get(id).is_some_and(|w| !w.is_on(p))).collect();
        self.send_grouped(p, ids);
    }

    /// A relay could not take write `id` now: resend it after a backoff
    /// that grows with refusals in a row on the same session (and at least
    /// `at_least`). No cap: the write stays queued until a relay takes it.
    fn schedule_retry(&mut self, id: WriteId, sid: SessionId, at_least: Duration, now: Instant) {
        let max = self.cfg.backoff_max.max(RETRY_MIN);
        let Some(w) = self.writes.get_mut(&id) else { return };
        let n = match w.retry {
            Some((s, n)) if s == sid => n.saturating_add(1),
            _ => 1,
        };
        w.retry = Some((sid, n));
        let delay = backoff::nth_delay(RETRY_MIN, max, n - 1, rand::random::<f64>()).max(at_least);
        self.retry_timers.arm(id, now + delay);
    }

    /// An ack (or `quorum-timeout`) of frame `wire`: each of its writes resolves.
    pub(super) fn on_ack(&mut self, sid: SessionId, wire: WireId, quorum: bool, now: Instant) {
        let Some(f) = self.frames.remove(&wire) else { return };
        for id in f.writes {
            self.resolve_write(sid, id, quorum, now);
        }
    }

    /// A relay refused frame `wire`.
    pub(super) fn on_write_error(&mut self, sid: SessionId, wire: WireId, refusal: Refusal, now: Instant) {
        let Some(f) = self.frames.remove(&wire) else { return };
        let ids: Vec<WriteId> = f.writes.into_iter().filter(|id| self.writes.contains_key(id)).collect();
        for id in &ids {
            if let Some(w) = self.writes.get_mut(id) {
                w.sent_on.retain(|x| *x != (sid, wire));
            }
        }
        let code = refusal.code.as_str();
        if FINAL_CODES.contains(&code) {
            if ids.len() > 1 {
                // One op refuses the whole frame: each write on its own tells which.
                for id in ids {
                    self.send_write(sid, vec![id]);
                }
                return;
            }
            for id in ids {
                let Some(w) = self.writes.get_mut(&id) else { continue };
                if w.sent_on.is_empty() {
                    self.fail_write(id, refusal.clone());
                } else {
                    // Another relay has it and may still take it.
                    w.refused = Some(refusal.clone());
                }
            }
            return;
        }
        match code {
            // Durable there, not yet at the write quorum: it will replicate.
            "quorum-timeout" => {
                for id in ids {
                    self.resolve_write(sid, id, false, now);
                }
            }
            // The WAL failed: try another relay (the writes go with the session).
            "unavailable" => self.broken.push((sid, format!("relay unavailable: {}", refusal.message))),
            "future-stamp" => {
                // Retry once the relay's clock caught up with the stamps.
                let local = clock::now_ns();
                for id in ids {
                    let wait = self.queue.get(id).map_or(Duration::ZERO, |q| {
                        let ahead = q.ops.iter().map(|op| op.stamp.wall_ns).max().unwrap_or(0);
                        clock::future_stamp_wait(ahead, local, self.relay_offset_ns, self.max_skew_ns)
                    });
                    self.schedule_retry(id, sid, wait, now);
                }
                // A fresh clock sample for the next estimate.
                self.ping(sid, now);
            }
            _ => {
                if code == "not-subscribed"
                    && let Some(s) = self.sessions.get_mut(&sid)
                {
                    s.spaces.remove(&f.space);
                }
                if code == "rate-limited"
                    && let Some(s) = self.sessions.get_mut(&sid)
                {
                    s.pacer.drain(now);
                }
                // overloaded, write-failed, rate-limited, not-subscribed and
                // codes this client does not know: resending is harmless.
                for id in ids {
                    self.schedule_retry(id, sid, Duration::ZERO, now);
                }
            }
        }
    }

    /// Takes write `id` out of the frames that carry it.
    fn detach(&mut self, id: WriteId, sent_on: &[(SessionId, WireId)]) {
        for (_, wire) in sent_on {
            if let Some(f) = self.frames.get_mut(wire) {
                f.writes.retain(|x| *x != id);
                if f.writes.is_empty() {
                    self.frames.remove(wire);
                }
            }
        }
    }

    /// The first ack (or `quorum-timeout`) of write `id`: it leaves the
    /// queue and its waiters learn which relay took it.
    pub(super) fn resolve_write(&mut self, sid: SessionId, id: WriteId, quorum: bool, now: Instant) {
        let Some(w) = self.writes.remove(&id) else { return };
        let Some(q) = self.queue.remove(id) else { return };
        self.detach(id, &w.sent_on);
        self.hedge_timers.disarm(id);
        self.retry_timers.disarm(id);
        let (relay, url) = match self.sessions.get_mut(&sid) {
            Some(s) => {
                s.last_used = now;
                (s.relay.clone(), s.url.clone())
            }
            None => Default::default(),
        };
        let acked = Acked {
            stamp: q.ops.first().map(|op| op.stamp).unwrap_or_default(),
            relay,
            url,
            latency: now.saturating_duration_since(w.queued_at),
            superseded: !w.superseded.is_empty(),
            quorum,
        };
        for tx in w.waiters {
            let _ = tx.send(Ok(acked.clone()));
        }
        self.release_if_unwanted(&w.space);
        self.persist.mark(now);
        self.publish_queue_len();
    }

    /// A relay refused write `id` for good: it leaves the queue, its ops are
    /// undone in the replica (raising `Origin::Rejected` changes) and its
    /// waiters get `error`.
    pub(super) fn fail_write(&mut self, id: WriteId, error: Refusal) {
        let Some(w) = self.writes.remove(&id) else { return };
        let Some(q) = self.queue.remove(id) else { return };
        self.detach(id, &w.sent_on);
        self.hedge_timers.disarm(id);
        self.retry_timers.disarm(id);
        tracing::warn!(space = %q.space, write = id, code = %error.code, "write refused: {}", error.message);
        let mut reverted = false;
        {
            let mut state = lock(&w.space.state);
            for (op, prev) in q.ops.iter().zip(w.previous) {
                if let Some(change) = state.replica.revert(&op.key, op.stamp, prev) {
                    reverted = true;
                    let _ = state.changes.send(change);
                }
            }
        }
        if reverted {
            // The replica dropped its resume info: resubscribe by digests.
            for s in self.sessions.values_mut() {
                s.spaces.remove(&w.space.name);
            }
            if let Some(p) = self.primary
                && w.space.is_subscribed()
            {
                let presence = w.space.wants_presence() || self.presence.contains_key(&w.space.name);
                self.ensure_subscribed(p, &w.space, presence);
            }
        }
        for tx in w.waiters {
            let _ = tx.send(Err(error.clone().into()));
        }
        self.release_if_unwanted(&w.space);
        self.persist.mark(Instant::now());
        self.publish_queue_len();
    }

    /// Sets or clears this client's presence in a space.
    pub(super) fn set_presence(&mut self, cell: Arc<SpaceCell>, state: Bytes) {
        if state.is_empty() {
            self.presence.remove(&cell.name);
        } else {
            self.presence.insert(cell.name.clone(), state.clone());
        }
        let Some(p) = self.primary else { return };
        self.ensure_subscribed(p, &cell, true);
        let frame =
            ClientFrame { msg: Some(client_frame::Msg::Presence(pb::Presence { space: cell.name.clone(), state })) };
        self.send(p, Some(&cell.name), frame);
    }

    /// One of our ops lost its LWW race: the winner is merged (raising an
    /// `Origin::Superseded` change when it changes the replica) and the
    /// write is marked. Watchers hear of each losing key of a write once,
    /// even when the winner had already reached the replica through a
    /// catchup or a change, and not again when a second relay (a hedge)
    /// reports the same loss.
    pub(super) fn on_superseded(&mut self, sup: pb::Superseded) {
        // Lost to a later write of our own (a retry that reached the relay
        // after it): not a lost race anyone needs to hear of.
        if sup.winner.as_ref().and_then(|w| w.stamp).is_some_and(|s| s.actor == self.shared.actor) {
            return;
        }
        let yours = sup.yours.map(stamp_from_pb);
        let write = self.frames.get(&sup.id).and_then(|f| {
            f.writes.iter().copied().find(|id| {
                self.queue
                    .get(*id)
                    .is_some_and(|q| q.ops.iter().any(|op| op.key == sup.key && yours.is_none_or(|y| y == op.stamp)))
            })
        });
        let first = write.and_then(|id| self.writes.get_mut(&id)).is_some_and(|w| w.superseded.insert(sup.key.clone()));
        let (Some(winner), Some(cell)) = (sup.winner, self.shared.get_space(&sup.space)) else { return };
        let mut state = lock(&cell.state);
        let stamp = winner.stamp.map(stamp_from_pb);
        let parsed =
            (!winner.delete).then(|| serde_json::from_slice::<serde_json::Value>(&winner.value).ok()).flatten();
        let change = match state.replica.apply_remote(winner, Origin::Superseded) {
            Ok(Some(change)) => Some(change),
            Ok(None) if first => stamp.map(|stamp| crate::replica::Change {
                key: sup.key.clone(),
                value: parsed,
                stamp,
                origin: Origin::Superseded,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(space = %sup.space, "dropped a superseded winner from the relay: {e}");
                None
            }
        };
        if let Some(change) = change {
            let _ = state.changes.send(change);
        }
    }
}
