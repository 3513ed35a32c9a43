//! Relay sessions: dialing (round robin, backoff, racing a slow attempt),
//! choosing the primary and the hedge, promotion on loss, subscriptions
//! with resume info (within the relay's `maxSpaces`), unsubscribing. The
//! paced outbox and pings are in `outbox.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_proto::client::v1::{self as pb, ClientFrame, client_frame};

use super::outbox::Out;
use super::{DEFAULT_LIMITS, Driver, HEALTHY_AFTER, HEDGE_RETRY, SEND_QUEUE_EXTRA};
use crate::client::Status;
use crate::clock;
use crate::error::Error;
use crate::hedge::Rtt;
use crate::pace::Pacer;
use crate::shared::{Refusal, SpaceCell, SyncState, lock};
use crate::stream::PresenceEvent;
use crate::transport::{self, ConnEvent, Connection, Dial, DialError, Established, Inbound, SessionId};

/// A connection attempt in flight.
pub(super) struct Dialing {
    pub endpoint: usize,
    pub started: Instant,
    /// Events of the connection that arrived before the attempt's result
    /// (its reader runs before the dialing task reports): replayed once the
    /// session is adopted, so an early close is not lost.
    pub early: Vec<ConnEvent>,
}

/// The result of an attempt.
pub(super) struct Dialed {
    pub session: SessionId,
    pub result: Result<Established, DialError>,
}

/// A space subscribed on a session.
pub(super) struct Sub {
    /// The catchup completed: `changes` follow.
    pub live: bool,
    pub presence: bool,
}

/// A live connection to one relay.
pub(super) struct Session {
    pub id: SessionId,
    pub endpoint: usize,
    pub url: String,
    /// The relay's name from `welcome`.
    pub relay: String,
    pub conn: Connection,
    pub spaces: HashMap<String, Sub>,
    pub rtt: Rtt,
    pub last_heard: Instant,
    /// Outstanding ping: nonce and when it was sent.
    pub ping: Option<(u64, Instant)>,
    pub next_ping: Instant,
    /// Last time a write was sent or acknowledged here.
    pub last_used: Instant,
    /// This relay's limits (its `welcome`, defaults for what it left out).
    pub limits: pb::Limits,
    /// Paces the outbox to the relay's rate limit.
    pub pacer: Pacer,
    pub outbox: VecDeque<Out>,
    pub welcomed: Instant,
    /// When the first catchup on this session completed.
    pub caught_up: Option<Instant>,
    /// Stayed up long enough as the primary to reset the reconnect backoff.
    pub healthy: bool,
    /// A frame other than a write was refused as `rate-limited`: pending
    /// subscriptions, the ping and presence are re-sent then.
    pub resync_at: Option<Instant>,
    pub resyncs: u32,
}

impl Session {
    /// When this session counts as healthy (if it is not yet): its first
    /// catchup plus [`HEALTHY_AFTER`] (its welcome's when it has no space),
    /// and in any case ten times that after its welcome (a catchup may be long).
    pub fn healthy_at(&self) -> Option<Instant> {
        if self.healthy {
            return None;
        }
        let latest = self.welcomed + HEALTHY_AFTER * 10;
        let since = self.caught_up.or_else(|| self.spaces.is_empty().then_some(self.welcomed));
        Some(since.map_or(latest, |t| (t + HEALTHY_AFTER).min(latest)))
    }
}

impl Driver {
    /// Starts or races connection attempts as needed.
    pub(super) fn maybe_dial(&mut self, now: Instant) {
        let n = self.endpoints.len();
        if self.closing || n == 0 {
            return;
        }
        if self.primary.is_none() {
            let race = self.dials.len() == 1
                && n > 1
                && self.dials.values().all(|d| now >= d.started + self.cfg.dial_hedge_delay);
            let due = self.dials.is_empty() && self.reconnect_at.is_none_or(|t| t <= now);
            if due || race {
                for _ in 0..n {
                    let ep = self.next_endpoint % n;
                    self.next_endpoint = (ep + 1) % n;
                    if !self.dials.values().any(|d| d.endpoint == ep) {
                        self.start_dial(ep, now);
                        break;
                    }
                }
            }
            return;
        }
        let want_hedge = self.cfg.hedge_delay.is_some() && self.writes.values().any(|w| w.wants_hedge);
        if self.hedge.is_none() && self.dials.is_empty() && n > 1 && want_hedge {
            if self.hedge_retry_at.is_some_and(|t| t > now) {
                return;
            }
            self.hedge_retry_at = None;
            match self.hedge_candidate() {
                Some(ep) => self.start_dial(ep, now),
                None => {
                    self.hedge_skip = 0;
                    self.hedge_retry_at = Some(now + HEDGE_RETRY);
                }
            }
        }
    }

    /// The next endpoint after the primary's that has not failed as a hedge lately.
    fn hedge_candidate(&self) -> Option<usize> {
        let n = self.endpoints.len();
        let p = self.primary.and_then(|p| self.sessions.get(&p)).map(|s| s.endpoint)?;
        (1 + self.hedge_skip..n).map(|k| (p + k) % n).find(|ep| !self.dials.values().any(|d| d.endpoint == *ep))
    }

    fn start_dial(&mut self, endpoint: usize, now: Instant) {
        let id = self.next_session;
        self.next_session += 1;
        self.dials.insert(id, Dialing { endpoint, started: now, early: Vec::new() });
        if self.primary.is_none() && !matches!(*self.shared.status.borrow(), Status::Offline { .. }) {
            self.set_status(Status::Connecting);
        }
        let hello = pb::Hello {
            version: 1,
            token: self.cfg.token.clone().unwrap_or_default(),
            actor: self.shared.actor,
            client: self.cfg.client_name.clone(),
            ..Default::default()
        };
        let target = self.endpoints[endpoint].clone();
        let tls = self.tls.clone();
        let inbound = self.inbound_tx.clone();
        let report = self.dial_tx.clone();
        let timeout = self.cfg.connect_timeout;
        let send_queue = self.cfg.max_queued_ops.saturating_add(SEND_QUEUE_EXTRA);
        tracing::debug!(url = target.url(), session = id, "connecting");
        tokio::spawn(async move {
            let dial = Dial { endpoint: &target, hello, tls: &tls, session: id, inbound, send_queue };
            let result = match tokio::time::timeout(timeout, transport::dial(dial)).await {
                Ok(r) => r,
                Err(_) => Err(DialError::Failed(format!("no answer within {timeout:?}"))),
            };
            let _ = report.send(Dialed { session: id, result }).await;
        });
    }

    pub(super) fn on_dialed(&mut self, dialed: Dialed) {
        let now = Instant::now();
        let Some(d) = self.dials.remove(&dialed.session) else { return };
        let url = self.endpoints[d.endpoint].url().to_string();
        match dialed.result {
            Ok(est) => {
                if self.closing || (self.primary.is_some() && self.hedge.is_some()) {
                    est.conn.shutdown();
                    return;
                }
                tracing::info!(%url, relay = %est.welcome.relay, "connected");
                let becomes_primary = self.primary.is_none();
                let limits = self.adopt_welcome(&est.welcome, est.rtt, becomes_primary);
                let session = Session {
                    id: dialed.session,
                    endpoint: d.endpoint,
                    url,
                    relay: est.welcome.relay.clone(),
                    conn: est.conn,
                    spaces: HashMap::new(),
                    rtt: Rtt::new(est.rtt),
                    last_heard: now,
                    ping: None,
                    next_ping: now + self.cfg.ping_interval,
                    last_used: now,
                    pacer: Pacer::new(limits.ops_per_sec, limits.burst, now),
                    limits,
                    outbox: VecDeque::new(),
                    welcomed: now,
                    caught_up: None,
                    healthy: false,
                    resync_at: None,
                    resyncs: 0,
                };
                self.sessions.insert(dialed.session, session);
                if becomes_primary {
                    self.become_primary(dialed.session);
                } else {
                    self.hedge = Some(dialed.session);
                    self.hedge_skip = 0;
                    self.serve_hedges(dialed.session);
                }
                // What the connection said before we knew it (a close, most likely).
                for event in d.early {
                    self.on_inbound(Inbound { session: dialed.session, event });
                }
            }
            Err(e) => {
                tracing::info!(%url, "connection failed: {e}");
                if let DialError::Refused { code, message } = &e {
                    self.refusal = Some(Refusal { relay: url.clone(), code: code.clone(), message: message.clone() });
                }
                if self.primary.is_some() {
                    self.hedge_skip += 1;
                    return;
                }
                self.record_failure(url, e.to_string(), now);
            }
        }
    }

    /// A failed attempt (or a session lost before it was healthy) while
    /// there is no primary: backoff, and Offline once every endpoint failed.
    fn record_failure(&mut self, url: String, why: String, now: Instant) {
        self.failed_attempts += 1;
        self.failures.0.retain(|(u, _)| *u != url);
        self.failures.0.push((url, why));
        if self.dials.is_empty() {
            self.reconnect_at = Some(now + self.backoff.next_delay(rand::random::<f64>()));
        }
        if self.failed_attempts >= self.endpoints.len() {
            let error = self.offline_error();
            self.set_status(Status::Offline { error: error.to_string() });
            if let Some(first) = self.first.take() {
                let _ = first.send(Err(error));
            }
        }
    }

    /// Why no relay is reachable: a refusal if one refused, else every failure.
    fn offline_error(&self) -> Error {
        if let Some(r) = &self.refusal {
            return r.clone().into();
        }
        Error::Unreachable(self.failures.clone())
    }

    /// Takes the relay's clock and limits from its greeting; returns the
    /// session's limits (the relay's, defaults for what it left out).
    fn adopt_welcome(&mut self, w: &pb::Welcome, rtt: Duration, primary: bool) -> pb::Limits {
        if w.max_skew_ns > 0 && w.max_skew_ns != self.max_skew_ns {
            self.max_skew_ns = w.max_skew_ns;
            let last = self.clock.last();
            self.clock = aether_core::Hlc::new(self.shared.actor, w.max_skew_ns);
            self.clock.witness(last);
        }
        if primary && w.now_ns > 0 {
            let rtt_ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
            self.relay_offset_ns = Some(clock::relay_offset_ns(w.now_ns, clock::now_ns(), rtt_ns));
        }
        let l = w.limits.unwrap_or_default();
        let keep = |new: u32, old: u32| if new > 0 { new } else { old };
        self.limits = pb::Limits {
            max_frame_bytes: keep(l.max_frame_bytes, self.limits.max_frame_bytes),
            max_ops_per_write: keep(l.max_ops_per_write, self.limits.max_ops_per_write),
            max_key_bytes: keep(l.max_key_bytes, self.limits.max_key_bytes),
            max_value_bytes: keep(l.max_value_bytes, self.limits.max_value_bytes),
            max_spaces: keep(l.max_spaces, self.limits.max_spaces),
            ops_per_sec: l.ops_per_sec,
            burst: l.burst,
        };
        pb::Limits {
            max_frame_bytes: keep(l.max_frame_bytes, DEFAULT_LIMITS.max_frame_bytes),
            max_ops_per_write: keep(l.max_ops_per_write, DEFAULT_LIMITS.max_ops_per_write),
            max_key_bytes: keep(l.max_key_bytes, DEFAULT_LIMITS.max_key_bytes),
            max_value_bytes: keep(l.max_value_bytes, DEFAULT_LIMITS.max_value_bytes),
            max_spaces: l.max_spaces,
            ops_per_sec: l.ops_per_sec,
            burst: l.burst,
        }
    }

    /// Makes `sid` the primary: every space subscribed (resuming, within
    /// `maxSpaces`), every queued write (re)sent (grouped), presence restored.
    pub(super) fn become_primary(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else { return };
        self.primary = Some(sid);
        if self.hedge == Some(sid) {
            self.hedge = None;
        }
        self.next_endpoint = (s.endpoint + 1) % self.endpoints.len().max(1);
        self.set_status(Status::Online { relay: s.relay.clone(), url: s.url.clone() });
        self.count_connect();
        // The backoff resets once this session proves healthy, not now.
        self.failures.0.clear();
        self.failed_attempts = 0;
        self.refusal = None;
        self.reconnect_at = None;
        if let Some(first) = self.first.take() {
            let _ = first.send(Ok(()));
        }
        self.subscribe_all(sid);
        let mut resend = Vec::new();
        let ids: Vec<_> = self.queue.iter().map(|(id, _)| id).collect();
        for id in ids {
            let Some(w) = self.writes.get_mut(&id) else { continue };
            w.wants_hedge = false;
            match w.sent_on.iter().find(|(s, _)| *s == sid) {
                Some((_, wire)) => {
                    if let Some(sent) = self.frames.get(wire).and_then(|f| f.sent_at) {
                        self.arm_hedge(id, sid, sent);
                    }
                }
                None => resend.push(id),
            }
        }
        self.send_grouped(sid, resend);
        let presence: Vec<(String, bytes::Bytes)> = self.presence.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (space, state) in presence {
            if let Some(cell) = self.shared.get_space(&space) {
                self.ensure_subscribed(sid, &cell, true);
            }
            let frame =
                ClientFrame { msg: Some(client_frame::Msg::Presence(pb::Presence { space: space.clone(), state })) };
            self.send(sid, Some(&space), frame);
        }
    }

    /// Subscribes every space the client follows on `sid` (with presence
    /// where wanted), spaces with queued writes first, then in creation
    /// order, up to the relay's `maxSpaces`: the others are marked refused
    /// (their `ready()` fails) instead of silently going stale.
    pub(super) fn subscribe_all(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else { return };
        let max = s.limits.max_spaces as usize;
        let url = s.url.clone();
        let mut cells: Vec<Arc<SpaceCell>> =
            self.shared.all_spaces().into_iter().filter(|c| c.is_subscribed()).collect();
        let with_writes: std::collections::HashSet<&str> = self.queue.iter().map(|(_, w)| w.space.as_str()).collect();
        cells.sort_by_key(|c| (!with_writes.contains(c.name.as_str()), c.order));
        for cell in cells {
            let Some(s) = self.sessions.get(&sid) else { return };
            match s.spaces.get(&cell.name) {
                // Followed again while kept subscribed for its writes: up to date.
                Some(sub) if sub.live => {
                    cell.set_synced(SyncState::Synced);
                }
                Some(_) => {}
                None if max > 0 && s.spaces.len() >= max => {
                    let message = format!("the relay allows {max} spaces per connection; unsubscribe another space");
                    mark_refused(&cell, Refusal { relay: url.clone(), code: "too-many-spaces".into(), message });
                    continue;
                }
                None => {}
            }
            let presence = cell.wants_presence() || self.presence.contains_key(&cell.name);
            self.ensure_subscribed(sid, &cell, presence);
        }
    }

    /// Drops the sessions found broken; promotes the hedge if the primary is among them.
    pub(super) fn drop_broken(&mut self, now: Instant) {
        while let Some((sid, reason)) = self.broken.pop() {
            self.drop_session(sid, &reason, now);
        }
    }

    fn drop_session(&mut self, sid: SessionId, reason: &str, now: Instant) {
        let Some(s) = self.sessions.remove(&sid) else { return };
        s.conn.shutdown();
        self.frames.retain(|_, f| f.session != sid);
        for w in self.writes.values_mut() {
            w.sent_on.retain(|(x, _)| *x != sid);
        }
        if self.hedge == Some(sid) {
            self.hedge = None;
            tracing::debug!(url = %s.url, "hedge session closed: {reason}");
        }
        if self.primary != Some(sid) {
            self.settle_orphans();
            return;
        }
        self.primary = None;
        tracing::warn!(url = %s.url, relay = %s.relay, "lost the relay: {reason}");
        self.presence_left_all();
        self.next_endpoint = (s.endpoint + 1) % self.endpoints.len().max(1);
        if let Some(h) = self.hedge.take() {
            self.become_primary(h);
            return;
        }
        self.set_status(Status::Connecting);
        if s.healthy {
            // It served well: first attempt right away, at the next endpoint.
            self.reconnect_at = None;
        } else {
            // Closed soon after welcome: do not hammer relays that accept and drop.
            self.record_failure(s.url, format!("closed soon after connecting: {reason}"), now);
        }
    }

    /// After a session other than the primary is lost: writes it carried
    /// that no session has any more go to the primary (or fail, when a
    /// relay refused them for good meanwhile).
    fn settle_orphans(&mut self) {
        let orphans: Vec<_> = self
            .queue
            .iter()
            .map(|(id, _)| id)
            .filter(|id| self.writes.get(id).is_some_and(|w| w.sent_on.is_empty()) && !self.retry_timers.is_armed(*id))
            .collect();
        let mut resend = Vec::new();
        for id in orphans {
            match self.writes.get_mut(&id).and_then(|w| w.refused.take()) {
                Some(refusal) => self.fail_write(id, refusal),
                None => resend.push(id),
            }
        }
        if let Some(p) = self.primary {
            self.send_grouped(p, resend);
        }
    }

    /// The primary is gone: the sessions it announced are gone for this
    /// client too (the next primary announces who is there).
    fn presence_left_all(&mut self) {
        let spaces: Vec<String> = self.presence_seen.keys().cloned().collect();
        for space in spaces {
            self.presence_left(&space);
        }
    }

    /// Announces every known session of `space` as gone.
    pub(super) fn presence_left(&mut self, space: &str) {
        let Some(seen) = self.presence_seen.remove(space) else { return };
        let Some(cell) = self.shared.get_space(space) else { return };
        let state = lock(&cell.state);
        for (session, color) in seen {
            let _ = state.presence.send(PresenceEvent { session, color, state: None });
        }
    }

    /// Subscribes `cell` on `sid` unless it already is (with presence when
    /// asked): resume info for this endpoint plus the replica's digests.
    pub(super) fn ensure_subscribed(&mut self, sid: SessionId, cell: &Arc<SpaceCell>, presence: bool) {
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        if s.spaces.get(&cell.name).is_some_and(|sub| sub.presence || !presence) {
            return;
        }
        let subscribe = lock(&cell.state).replica.subscribe(&cell.name, &s.url, presence);
        s.spaces.insert(cell.name.clone(), Sub { live: false, presence });
        let frame = ClientFrame { msg: Some(client_frame::Msg::Subscribe(subscribe)) };
        self.send(sid, Some(&cell.name), frame);
        // Refused before, asked again: `ready()` waits for this answer.
        cell.synced.send_if_modified(|s| {
            let refused = matches!(s, SyncState::Failed(_));
            if refused {
                *s = SyncState::Pending;
            }
            refused
        });
    }

    /// Stops following a space: no longer resubscribed; its presence left;
    /// unsubscribed from the relays once its queued writes are settled.
    pub(super) fn unsubscribe(&mut self, cell: &Arc<SpaceCell>) {
        if cell.is_subscribed() {
            // Followed again meanwhile (`Client::space`).
            return;
        }
        if self.presence.remove(&cell.name).is_some()
            && let Some(p) = self.primary
        {
            let frame = ClientFrame {
                msg: Some(client_frame::Msg::Presence(pb::Presence {
                    space: cell.name.clone(),
                    state: Default::default(),
                })),
            };
            self.send(p, Some(&cell.name), frame);
        }
        self.presence_left(&cell.name);
        self.release_if_unwanted(cell);
    }

    /// Unsubscribes a space nobody follows from every session, once no
    /// queued write needs it.
    pub(super) fn release_if_unwanted(&mut self, cell: &Arc<SpaceCell>) {
        if cell.is_subscribed() || self.writes.values().any(|w| Arc::ptr_eq(&w.space, cell)) {
            return;
        }
        let ids: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| s.spaces.contains_key(&cell.name)).map(|(id, _)| *id).collect();
        for &sid in &ids {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.spaces.remove(&cell.name);
            }
            let frame =
                ClientFrame { msg: Some(client_frame::Msg::Unsubscribe(pb::Unsubscribe { space: cell.name.clone() })) };
            self.send(sid, Some(&cell.name), frame);
        }
        // A slot freed up: spaces refused for `maxSpaces` may fit now.
        if let Some(p) = self.primary
            && ids.contains(&p)
        {
            self.subscribe_all(p);
        }
    }
}

/// A relay refused (or would refuse) the space's subscription: not synced
/// any more, so its `ready()` fails instead of the replica silently going stale.
pub(super) fn mark_refused(cell: &SpaceCell, refusal: Refusal) {
    if cell.is_subscribed() {
        cell.set_synced(SyncState::Failed(refusal));
    }
}
