//! Frames from relays: catchup and changes merged into the replicas (only
//! real changes raise events), resume bookkeeping, acks, superseded winners,
//! presence, errors, pongs.

use std::time::Instant;

use aether_proto::client::v1::{self as pb, server_frame};

use super::Driver;
use super::sessions::mark_refused;
use crate::clock;
use crate::replica::{Origin, stamp_from_pb};
use crate::shared::{Refusal, SyncState, lock};
use crate::stream::PresenceEvent;
use crate::transport::{ConnEvent, Inbound, SessionId};

impl Driver {
    pub(super) fn on_inbound(&mut self, ev: Inbound) {
        let now = Instant::now();
        let Some(s) = self.sessions.get_mut(&ev.session) else {
            // A connection still dialing: kept until the dial's result arrives.
            if let Some(d) = self.dials.get_mut(&ev.session) {
                d.early.push(ev.event);
            }
            return;
        };
        match ev.event {
            ConnEvent::Closed(reason) => self.broken.push((ev.session, reason)),
            ConnEvent::Frame(frame) => {
                s.last_heard = now;
                self.on_frame(ev.session, *frame, now);
            }
        }
    }

    fn on_frame(&mut self, sid: SessionId, frame: pb::ServerFrame, now: Instant) {
        match frame.msg {
            Some(server_frame::Msg::Catchup(c)) => self.on_catchup(sid, c, now),
            Some(server_frame::Msg::Changes(c)) => self.on_changes(sid, c),
            Some(server_frame::Msg::Ack(a)) => self.on_ack(sid, a.id, true, now),
            Some(server_frame::Msg::Superseded(s)) => self.on_superseded(s),
            Some(server_frame::Msg::Presence(p)) => self.on_presence(sid, p),
            Some(server_frame::Msg::Error(e)) => self.on_error(sid, e, now),
            Some(server_frame::Msg::Pong(p)) => self.on_pong(sid, p, now),
            Some(server_frame::Msg::Welcome(_)) | None => {
                tracing::debug!(session = sid, "ignoring an unexpected frame");
            }
        }
    }

    /// Merges ops from a relay into a space's replica; returns false when the space is unknown.
    pub(super) fn merge_ops(&mut self, space: &str, ops: Vec<pb::Op>, origin: Origin) -> bool {
        let Some(cell) = self.shared.get_space(space) else { return false };
        // Checked against the relay's clock (estimated), which bounds the
        // stamps relays accept, not ours: a client whose clock is late must
        // still follow them, or its next writes would order before them.
        let now_ns = clock::observe_time(clock::now_ns(), self.relay_offset_ns);
        let mut state = lock(&cell.state);
        for op in ops {
            if let Some(stamp) = op.stamp {
                // A stamp far ahead of the relay's clock is not followed (our
                // ops would be refused as future-stamp); the merge still takes it.
                let _ = self.clock.observe(stamp_from_pb(stamp), now_ns);
            }
            match state.replica.apply_remote(op, origin) {
                Ok(Some(change)) => {
                    let _ = state.changes.send(change);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(space, "dropped an op from the relay: {e}"),
            }
        }
        true
    }

    fn on_catchup(&mut self, sid: SessionId, c: pb::Catchup, now: Instant) {
        let Some(url) = self.subscribed_url(sid, &c.space) else { return };
        if !self.merge_ops(&c.space, c.ops, Origin::Remote) || !c.done {
            return;
        }
        if let Some(cell) = self.shared.get_space(&c.space) {
            lock(&cell.state).replica.caught_up(&url, c.epoch, c.seq);
            if cell.is_subscribed() {
                cell.set_synced(SyncState::Synced);
            }
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.caught_up.get_or_insert(now);
            if let Some(sub) = s.spaces.get_mut(&c.space) {
                sub.live = true;
            }
        }
    }

    fn on_changes(&mut self, sid: SessionId, c: pb::Changes) {
        let Some(url) = self.subscribed_url(sid, &c.space) else { return };
        let live = self.sessions.get(&sid).and_then(|s| s.spaces.get(&c.space)).is_some_and(|sub| sub.live);
        self.merge_ops(&c.space, c.ops, Origin::Remote);
        if live && let Some(cell) = self.shared.get_space(&c.space) {
            lock(&cell.state).replica.advanced(&url, c.seq);
        }
    }

    /// The session's URL if `space` is subscribed on it.
    fn subscribed_url(&self, sid: SessionId, space: &str) -> Option<String> {
        let s = self.sessions.get(&sid)?;
        s.spaces.contains_key(space).then(|| s.url.clone())
    }

    fn on_presence(&mut self, sid: SessionId, p: pb::PresenceEvent) {
        if self.primary != Some(sid) {
            return;
        }
        let Some(cell) = self.shared.get_space(&p.space) else { return };
        let state = if p.state.is_empty() {
            None
        } else {
            match serde_json::from_slice(&p.state) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(space = %p.space, "presence state is not JSON: {e}");
                    return;
                }
            }
        };
        let seen = self.presence_seen.entry(p.space.clone()).or_default();
        if state.is_some() {
            seen.insert(p.session.clone(), p.color.clone());
        } else {
            seen.remove(&p.session);
        }
        let _ = lock(&cell.state).presence.send(PresenceEvent { session: p.session, color: p.color, state });
    }

    fn on_error(&mut self, sid: SessionId, e: pb::Error, now: Instant) {
        let url = self.sessions.get(&sid).map(|s| s.url.clone()).unwrap_or_default();
        tracing::info!(%url, code = %e.code, id = e.id, space = %e.space, fatal = e.fatal, "relay error: {}", e.message);
        if e.fatal {
            // The relay closes the connection: writes are resent elsewhere.
            if e.code == "auth-failed" || e.code == "bad-actor" || e.code == "unsupported-version" {
                self.refusal = Some(Refusal { relay: url, code: e.code, message: e.message });
            }
            return;
        }
        if e.id != 0 {
            // About a write frame (an unknown id: one already settled).
            let refusal = Refusal { relay: url, code: e.code, message: e.message };
            self.on_write_error(sid, e.id, refusal, now);
            return;
        }
        match e.code.as_str() {
            // The subscription was refused: not synced (any more), `ready()` fails.
            "bad-space" | "too-many-spaces" => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.spaces.remove(&e.space);
                }
                if let Some(cell) = self.shared.get_space(&e.space) {
                    mark_refused(&cell, Refusal { relay: url, code: e.code, message: e.message });
                }
            }
            // A subscribe, presence, unsubscribe or ping over the rate: the
            // relay does not say which, so what may be lost is sent again later.
            "rate-limited" => self.schedule_resync(sid, now),
            // Presence for a space the relay does not have subscribed.
            "not-subscribed" => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.spaces.remove(&e.space);
                }
                if self.primary == Some(sid) {
                    self.subscribe_all(sid);
                    if let Some(state) = self.presence.get(&e.space).cloned() {
                        let frame = pb::ClientFrame {
                            msg: Some(pb::client_frame::Msg::Presence(pb::Presence { space: e.space.clone(), state })),
                        };
                        self.send(sid, Some(&e.space), frame);
                    }
                }
            }
            _ => {}
        }
    }
}
