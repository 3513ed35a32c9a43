//! Each session's outbox: every frame to a relay waits there and leaves as
//! the session's pacer (the relay's advertised rate limit) allows, write
//! frames built only when they leave; pings (queued ahead of other frames)
//! and RTT samples from pongs; resending what a `rate-limited` refusal may
//! have dropped.

use std::time::{Duration, Instant};

use aether_proto::client::v1::{self as pb, ClientFrame, client_frame};

use super::sessions::Session;
use super::{Driver, RETRY_MIN, SEND_QUEUE_EXTRA, WireId};
use crate::backoff;
use crate::clock;
use crate::transport::SessionId;

/// A frame waiting in a session's outbox for the pacer.
pub(super) enum Out {
    /// A frame for a space's channel (`None`: the session's first channel).
    Frame { space: Option<String>, frame: ClientFrame },
    /// A ping (its send time is taken when it leaves).
    Ping(u64),
    /// A write frame, built when it leaves from the writes it still carries.
    Write(WireId),
}

impl Driver {
    /// Queues a frame on a session's outbox (sent as the pacer allows).
    pub(super) fn send(&mut self, sid: SessionId, space: Option<&str>, frame: ClientFrame) -> bool {
        self.push_out(sid, Out::Frame { space: space.map(str::to_string), frame }, false)
    }

    /// Appends (or, for pings, prepends) to a session's outbox and sends
    /// what the pacer allows now. A session whose outbox overflows is broken.
    pub(super) fn push_out(&mut self, sid: SessionId, out: Out, front: bool) -> bool {
        let max = self.cfg.max_queued_ops.saturating_mul(2).saturating_add(SEND_QUEUE_EXTRA);
        let Some(s) = self.sessions.get_mut(&sid) else { return false };
        if s.outbox.len() >= max {
            self.broken.push((sid, format!("{} frames wait for the relay's rate limit", s.outbox.len())));
            return false;
        }
        if front {
            s.outbox.push_front(out);
        } else {
            s.outbox.push_back(out);
        }
        self.pump(sid, Instant::now());
        true
    }

    /// Sends what every outbox may send now.
    pub(super) fn pump_all(&mut self, now: Instant) {
        let ids: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| !s.outbox.is_empty()).map(|(id, _)| *id).collect();
        for sid in ids {
            self.pump(sid, now);
        }
    }

    /// The ops the head of a session's outbox costs (1 for frames other
    /// than writes; 0 for a write frame whose writes were all settled, which
    /// leaves for free); `None` when the outbox is empty.
    pub(super) fn outbox_head_ops(&self, s: &Session) -> Option<usize> {
        Some(match s.outbox.front()? {
            Out::Frame { .. } | Out::Ping(_) => 1,
            Out::Write(wire) => self
                .frames
                .get(wire)
                .map_or(0, |f| f.writes.iter().filter_map(|id| self.queue.get(*id)).map(|q| q.ops.len()).sum()),
        })
    }

    /// Sends from the head of `sid`'s outbox while the pacer allows.
    pub(super) fn pump(&mut self, sid: SessionId, now: Instant) {
        let is_primary = self.primary == Some(sid);
        loop {
            let Some(s) = self.sessions.get(&sid) else { return };
            let Some(ops) = self.outbox_head_ops(s) else { return };
            let wire = match s.outbox.front() {
                Some(Out::Write(wire)) => Some(*wire),
                _ => None,
            };
            if ops == 0 {
                // Every write of the frame was settled meanwhile: nothing to send.
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.outbox.pop_front();
                }
                if let Some(wire) = wire {
                    self.frames.remove(&wire);
                }
                continue;
            }
            let Some(s) = self.sessions.get_mut(&sid) else { return };
            if !s.pacer.try_take(ops, now) {
                return;
            }
            let write = wire.and_then(|w| self.write_frame(w));
            let Some(s) = self.sessions.get_mut(&sid) else { return };
            let (space, frame) = match s.outbox.pop_front() {
                Some(Out::Frame { space, frame }) => (space, frame),
                Some(Out::Ping(nonce)) => {
                    if let Some(p) = s.ping.as_mut()
                        && p.0 == nonce
                    {
                        p.1 = now;
                    }
                    (None, ClientFrame { msg: Some(client_frame::Msg::Ping(pb::Ping { nonce })) })
                }
                Some(Out::Write(_)) => match write {
                    Some((space, frame)) => (Some(space), frame),
                    None => continue,
                },
                None => return,
            };
            if let Err(e) = s.conn.send(space.as_deref(), frame) {
                self.broken.push((sid, e.to_string()));
                return;
            }
            if let Some(wire) = wire {
                s.last_used = now;
                let Some(f) = self.frames.get_mut(&wire) else { continue };
                f.sent_at = Some(now);
                if is_primary {
                    for id in f.writes.clone() {
                        self.arm_hedge(id, sid, now);
                    }
                }
            }
        }
    }

    /// Queues a ping (ahead of other frames) unless one is outstanding.
    pub(super) fn ping(&mut self, sid: SessionId, now: Instant) {
        let nonce = self.next_nonce;
        let interval = self.cfg.ping_interval;
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        s.next_ping = now + interval;
        if s.ping.is_some() {
            return;
        }
        self.next_nonce += 1;
        s.ping = Some((nonce, now));
        self.push_out(sid, Out::Ping(nonce), true);
    }

    /// A pong: RTT sample, and the relay's clock for stamping.
    pub(super) fn on_pong(&mut self, sid: SessionId, pong: pb::Pong, now: Instant) {
        let is_primary = self.primary == Some(sid);
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        let Some((nonce, sent)) = s.ping else { return };
        if nonce != pong.nonce {
            return;
        }
        s.ping = None;
        let rtt = now.saturating_duration_since(sent);
        s.rtt.sample(rtt);
        if is_primary && pong.now_ns > 0 {
            let rtt_ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
            self.relay_offset_ns = Some(clock::relay_offset_ns(pong.now_ns, clock::now_ns(), rtt_ns));
        }
    }

    /// The RTT estimate of a session (zero if unknown).
    pub(super) fn rtt(&self, sid: SessionId) -> Duration {
        self.sessions.get(&sid).map(|s| s.rtt.get()).unwrap_or_default()
    }

    /// The relay refused a frame other than a write as `rate-limited` (it
    /// does not say which): resend later what may have been lost.
    pub(super) fn schedule_resync(&mut self, sid: SessionId, now: Instant) {
        let max = self.cfg.backoff_max.max(RETRY_MIN);
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        s.pacer.drain(now);
        if s.resync_at.is_none() {
            let delay = backoff::nth_delay(RETRY_MIN, max, s.resyncs, rand::random::<f64>());
            s.resyncs = s.resyncs.saturating_add(1);
            s.resync_at = Some(now + delay);
        }
    }

    /// Re-sends what a `rate-limited` refusal may have dropped: the
    /// subscriptions whose catchup has not begun to complete, the ping,
    /// and (on the primary) presence.
    pub(super) fn resync(&mut self, sid: SessionId, now: Instant) {
        let is_primary = self.primary == Some(sid);
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        s.resync_at = None;
        let pending: Vec<String> = s.spaces.iter().filter(|(_, sub)| !sub.live).map(|(name, _)| name.clone()).collect();
        for name in &pending {
            s.spaces.remove(name);
        }
        let ping_lost = s.ping.is_some();
        s.ping = None;
        if is_primary {
            self.subscribe_all(sid);
            let presence: Vec<_> = self.presence.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (space, state) in presence {
                let frame = ClientFrame {
                    msg: Some(client_frame::Msg::Presence(pb::Presence { space: space.clone(), state })),
                };
                self.send(sid, Some(&space), frame);
            }
        } else {
            for name in pending {
                if let Some(cell) = self.shared.get_space(&name) {
                    self.ensure_subscribed(sid, &cell, false);
                }
            }
        }
        if ping_lost {
            self.ping(sid, now);
        }
    }
}
