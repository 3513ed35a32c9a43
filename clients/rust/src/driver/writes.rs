//! Writes: checked against the relay's limits, stamped with the client's
//! HLC, applied to the replica at once, queued, sent to the primary; hedged
//! to a second relay when overdue; resolved by the first ack; undone when a
//! relay refuses them.

use std::sync::Arc;
use std::time::Instant;

use aether_proto::client::v1::{self as pb, ClientFrame, client_frame};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Driver, OVERLOAD_RETRY, WriteState};
use crate::clock;
use crate::error::Error;
use crate::hedge::hedge_deadline;
use crate::queue::{QueuedOp, QueuedWrite, WriteId};
use crate::replica::{Origin, stamp_to_pb};
use crate::shared::{Mutation, Queued, Refusal, SpaceCell, lock};
use crate::space::Acked;
use crate::transport::SessionId;

/// Retries of a write after `overloaded` or `not-subscribed` before it fails.
const MAX_RETRIES: u32 = 20;

impl Driver {
    /// Re-creates writes loaded from the queue file: applied to the replicas
    /// (offline-first reads see them), queued, sent once a relay is there.
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
            for id in self.queue.restore([w]) {
                self.writes.insert(id, WriteState::new(cell.clone(), now, Vec::new(), Vec::new()));
            }
        }
    }

    /// Checks, stamps, applies locally, queues and sends one write.
    pub(super) fn enqueue(&mut self, cell: Arc<SpaceCell>, ops: Vec<Mutation>, now: Instant) -> Result<Queued, Error> {
        self.check_ops(&ops)?;
        if self.queue.ops() + ops.len() > self.cfg.max_queued_ops {
            return Err(Error::QueueFull { max: self.cfg.max_queued_ops });
        }
        let wall = clock::stamp_time(clock::now_ns(), self.relay_offset_ns, self.max_skew_ns);
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
            self.send_write(p, id, now);
        }
        self.persist.mark(now);
        self.publish_queue_len();
        Ok(Queued { stamps, done })
    }

    /// Refuses what the relay would refuse (`bad-op`, `too-many-ops`), before
    /// anything is applied.
    fn check_ops(&self, ops: &[Mutation]) -> Result<(), Error> {
        let l = &self.limits;
        let invalid = |key: &str, reason: String| Err(Error::InvalidOp { key: key.to_string(), reason });
        if ops.is_empty() {
            return invalid("", "a write needs at least one op".into());
        }
        if l.max_ops_per_write > 0 && ops.len() > l.max_ops_per_write as usize {
            return invalid(
                &ops[0].key,
                format!("{} ops in one write, the relay allows {}", ops.len(), l.max_ops_per_write),
            );
        }
        for m in ops {
            if m.key.is_empty() || m.key.len() > l.max_key_bytes as usize {
                return invalid(&m.key, format!("keys are 1-{} bytes of UTF-8", l.max_key_bytes));
            }
            if let Some((bytes, _)) = &m.value
                && bytes.len() > l.max_value_bytes as usize
            {
                return invalid(
                    &m.key,
                    format!("value of {} bytes, the relay allows {}", bytes.len(), l.max_value_bytes),
                );
            }
        }
        Ok(())
    }

    /// Sends write `id` on session `sid` (subscribing its space there first).
    pub(super) fn send_write(&mut self, sid: SessionId, id: WriteId, now: Instant) {
        let (Some(q), Some(w)) = (self.queue.get(id), self.writes.get(&id)) else { return };
        let ops = q
            .ops
            .iter()
            .map(|op| pb::Op {
                key: op.key.clone(),
                value: op.value.clone().unwrap_or_default(),
                delete: op.value.is_none(),
                stamp: Some(stamp_to_pb(op.stamp)),
            })
            .collect();
        let space = q.space.clone();
        let cell = w.space.clone();
        let presence = self.primary == Some(sid) && cell.wants_presence();
        self.ensure_subscribed(sid, &cell, presence);
        let frame = ClientFrame { msg: Some(client_frame::Msg::Write(pb::Write { id, space: space.clone(), ops })) };
        if !self.send(sid, Some(&space), frame) {
            return;
        }
        if let Some(w) = self.writes.get_mut(&id) {
            w.sent_on.push(sid);
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.last_used = now;
        }
        if self.primary == Some(sid) {
            self.arm_hedge(id, sid, now);
        }
    }

    /// Arms the hedge timer of a write sent on the primary.
    pub(super) fn arm_hedge(&mut self, id: WriteId, sid: SessionId, now: Instant) {
        if let Some(delay) = self.cfg.hedge_delay
            && self.endpoints.len() > 1
        {
            self.hedge_timers.arm(id, hedge_deadline(now, self.rtt(sid), delay));
        }
    }

    /// A write is overdue at the primary: send it to the hedge session (or
    /// have one opened), and probe the primary.
    pub(super) fn on_hedge_due(&mut self, id: WriteId, now: Instant) {
        let Some(w) = self.writes.get_mut(&id) else { return };
        let Some(p) = self.primary else { return };
        w.wants_hedge = true;
        let sent_to_hedge = self.hedge.is_some_and(|h| w.sent_on.contains(&h));
        self.ping(p, now);
        if let Some(h) = self.hedge
            && !sent_to_hedge
        {
            tracing::debug!(write = id, "hedging");
            self.send_write(h, id, now);
        }
    }

    /// A new hedge session: send it every overdue write.
    pub(super) fn serve_hedges(&mut self, sid: SessionId, now: Instant) {
        let ids: Vec<WriteId> = self
            .queue
            .iter()
            .map(|(id, _)| id)
            .filter(|id| self.writes.get(id).is_some_and(|w| w.wants_hedge && !w.sent_on.contains(&sid)))
            .collect();
        for id in ids {
            self.send_write(sid, id, now);
        }
    }

    /// Resends a write after `overloaded` (to the primary).
    pub(super) fn on_retry_due(&mut self, id: WriteId, now: Instant) {
        if let Some(p) = self.primary
            && self.writes.get(&id).is_some_and(|w| !w.sent_on.contains(&p))
        {
            self.send_write(p, id, now);
        }
    }

    /// A relay could not take write `id` now: resend it later (or at once
    /// on the same session after resubscribing), failing after `MAX_RETRIES`.
    pub(super) fn retry_write(&mut self, sid: SessionId, id: WriteId, later: bool, last: Refusal, now: Instant) {
        let Some(w) = self.writes.get_mut(&id) else { return };
        w.sent_on.retain(|s| *s != sid);
        w.retries += 1;
        if w.retries > MAX_RETRIES {
            let message = format!("{} (after {MAX_RETRIES} retries)", last.message);
            self.fail_write(id, Refusal { message, ..last });
            return;
        }
        if later {
            let jitter = OVERLOAD_RETRY.mul_f64(rand::random::<f64>());
            self.retry_timers.arm(id, now + OVERLOAD_RETRY + jitter);
        } else {
            self.send_write(sid, id, now);
        }
    }

    /// The first ack (or `quorum-timeout`) of write `id`: it leaves the
    /// queue and its waiters learn which relay took it.
    pub(super) fn resolve_write(&mut self, sid: SessionId, id: WriteId, quorum: bool, now: Instant) {
        let Some(w) = self.writes.remove(&id) else { return };
        let Some(q) = self.queue.remove(id) else { return };
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
            superseded: w.superseded,
            quorum,
        };
        for tx in w.waiters {
            let _ = tx.send(Ok(acked.clone()));
        }
        self.persist.mark(now);
        self.publish_queue_len();
    }

    /// A relay refused write `id`: it leaves the queue, its ops are undone in
    /// the replica (raising `Origin::Rejected` changes) and its waiters get `error`.
    pub(super) fn fail_write(&mut self, id: WriteId, error: Refusal) {
        let Some(w) = self.writes.remove(&id) else { return };
        let Some(q) = self.queue.remove(id) else { return };
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
            if let Some(p) = self.primary {
                self.ensure_subscribed(p, &w.space, w.space.wants_presence());
            }
        }
        for tx in w.waiters {
            let _ = tx.send(Err(error.clone().into()));
        }
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

    /// Merges a `superseded` winner (raising an `Origin::Superseded` change
    /// when it changes the replica) and marks the write.
    /// One of our ops lost its LWW race. Watchers always hear of it once (an
    /// `Origin::Superseded` change holding the winner), even when the winner
    /// had already reached the replica through a catchup or a change.
    pub(super) fn on_superseded(&mut self, sup: pb::Superseded) {
        let first = self.writes.get_mut(&sup.id).is_none_or(|w| !std::mem::replace(&mut w.superseded, true));
        let (Some(winner), Some(cell)) = (sup.winner, self.shared.get_space(&sup.space)) else { return };
        let mut state = lock(&cell.state);
        let stamp = winner.stamp.map(crate::replica::stamp_from_pb);
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

impl WriteState {
    fn new(
        space: Arc<SpaceCell>,
        queued_at: Instant,
        previous: Vec<Option<aether_core::Entry>>,
        waiters: Vec<oneshot::Sender<Result<Acked, Error>>>,
    ) -> Self {
        WriteState {
            space,
            queued_at,
            sent_on: Vec::new(),
            wants_hedge: false,
            superseded: false,
            retries: 0,
            previous,
            waiters,
        }
    }
}
