//! Relay sessions: dialing (round robin, backoff, racing a slow attempt),
//! choosing the primary and the hedge, promotion on loss, subscriptions
//! with resume info, pings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_proto::client::v1::{self as pb, ClientFrame, client_frame};

use super::{Driver, HEDGE_RETRY, SEND_QUEUE_EXTRA};
use crate::client::Status;
use crate::clock;
use crate::error::Error;
use crate::hedge::Rtt;
use crate::shared::{Refusal, SpaceCell, lock};
use crate::transport::{self, Connection, Dial, DialError, Established, SessionId};

/// A connection attempt in flight.
pub(super) struct Dialing {
    pub endpoint: usize,
    pub started: Instant,
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
        self.dials.insert(id, Dialing { endpoint, started: now });
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
                self.adopt_welcome(&est.welcome);
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
                };
                self.sessions.insert(dialed.session, session);
                if self.primary.is_none() {
                    self.become_primary(dialed.session, now);
                } else {
                    self.hedge = Some(dialed.session);
                    self.hedge_skip = 0;
                    self.serve_hedges(dialed.session, now);
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
                self.failed_attempts += 1;
                self.failures.0.retain(|(u, _)| *u != url);
                self.failures.0.push((url, e.to_string()));
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
        }
    }

    /// Why no relay is reachable: a refusal if one refused, else every failure.
    fn offline_error(&self) -> Error {
        if let Some(r) = &self.refusal {
            return r.clone().into();
        }
        Error::Unreachable(self.failures.clone())
    }

    /// Takes the relay's clock and limits from its greeting.
    fn adopt_welcome(&mut self, w: &pb::Welcome) {
        if w.max_skew_ns > 0 && w.max_skew_ns != self.max_skew_ns {
            self.max_skew_ns = w.max_skew_ns;
            let last = self.clock.last();
            self.clock = aether_core::Hlc::new(self.shared.actor, w.max_skew_ns);
            self.clock.witness(last);
        }
        if self.primary.is_none() && w.now_ns > 0 {
            self.relay_offset_ns = Some(clock::relay_offset_ns(w.now_ns, clock::now_ns(), 0));
        }
        if let Some(l) = w.limits {
            let keep = |new: u32, old: u32| if new > 0 { new } else { old };
            self.limits = pb::Limits {
                max_frame_bytes: keep(l.max_frame_bytes, self.limits.max_frame_bytes),
                max_ops_per_write: keep(l.max_ops_per_write, self.limits.max_ops_per_write),
                max_key_bytes: keep(l.max_key_bytes, self.limits.max_key_bytes),
                max_value_bytes: keep(l.max_value_bytes, self.limits.max_value_bytes),
                max_spaces: keep(l.max_spaces, self.limits.max_spaces),
            };
        }
    }

    /// Makes `sid` the primary: every space subscribed (resuming), every
    /// queued write (re)sent, presence restored.
    pub(super) fn become_primary(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get(&sid) else { return };
        self.primary = Some(sid);
        if self.hedge == Some(sid) {
            self.hedge = None;
        }
        self.next_endpoint = (s.endpoint + 1) % self.endpoints.len().max(1);
        self.set_status(Status::Online { relay: s.relay.clone(), url: s.url.clone() });
        self.backoff.reset();
        self.failures.0.clear();
        self.failed_attempts = 0;
        self.refusal = None;
        self.reconnect_at = None;
        if let Some(first) = self.first.take() {
            let _ = first.send(Ok(()));
        }
        for cell in self.shared.all_spaces() {
            self.ensure_subscribed(sid, &cell, cell.wants_presence());
        }
        let ids: Vec<_> = self.queue.iter().map(|(id, _)| id).collect();
        for id in ids {
            let Some(w) = self.writes.get_mut(&id) else { continue };
            w.wants_hedge = false;
            if w.sent_on.contains(&sid) {
                self.arm_hedge(id, sid, now);
            } else {
                self.send_write(sid, id, now);
            }
        }
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

    /// Drops the sessions found broken; promotes the hedge if the primary is among them.
    pub(super) fn drop_broken(&mut self, now: Instant) {
        while let Some((sid, reason)) = self.broken.pop() {
            self.drop_session(sid, &reason, now);
        }
    }

    fn drop_session(&mut self, sid: SessionId, reason: &str, now: Instant) {
        let Some(s) = self.sessions.remove(&sid) else { return };
        s.conn.shutdown();
        for w in self.writes.values_mut() {
            w.sent_on.retain(|x| *x != sid);
        }
        if self.hedge == Some(sid) {
            self.hedge = None;
            tracing::debug!(url = %s.url, "hedge session closed: {reason}");
        }
        if self.primary == Some(sid) {
            self.primary = None;
            self.relay_offset_ns = None;
            tracing::warn!(url = %s.url, relay = %s.relay, "lost the relay: {reason}");
            self.next_endpoint = (s.endpoint + 1) % self.endpoints.len().max(1);
            match self.hedge.take() {
                Some(h) => self.become_primary(h, now),
                None => {
                    // First attempt right away, at the next endpoint.
                    self.reconnect_at = None;
                    self.set_status(Status::Connecting);
                }
            }
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
    }

    /// Queues a frame on a session; a session whose queue is full or closed is broken.
    pub(super) fn send(&mut self, sid: SessionId, space: Option<&str>, frame: ClientFrame) -> bool {
        let Some(s) = self.sessions.get_mut(&sid) else { return false };
        match s.conn.send(space, frame) {
            Ok(()) => true,
            Err(e) => {
                self.broken.push((sid, e.to_string()));
                false
            }
        }
    }

    /// Sends a ping unless one is outstanding.
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
        let frame = ClientFrame { msg: Some(client_frame::Msg::Ping(pb::Ping { nonce })) };
        self.send(sid, None, frame);
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
}
