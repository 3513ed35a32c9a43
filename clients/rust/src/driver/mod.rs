//! The driver: one task per client that owns the clock, the offline queue,
//! the relay sessions and every replica write. Handles talk to it through a
//! bounded command queue; connection tasks through a bounded inbound queue.
//!
//! Sessions: at most one *primary* (every space subscribed, presence, all
//! writes) and one *hedge* (a second relay, opened when a write is overdue
//! at the primary; it gets the overdue writes and their spaces, and becomes
//! the primary at once if the primary is lost). Connection attempts go round
//! robin over the endpoints with backoff and jitter; an attempt still pending
//! after `dial_hedge_delay` races one to the next endpoint. The backoff
//! resets only once a session stayed healthy for a while (its first catchup
//! done plus [`HEALTHY_AFTER`]): a relay that closes right after `welcome`
//! is backed off from.
//!
//! Every frame to a relay goes through its session's outbox, paced by a
//! token bucket mirroring the relay's advertised rate limit (`pace.rs`).
//! Writes go out as `write` frames with ids of their own (*wire ids*): one
//! client write per frame normally, several writes of one space grouped into
//! one frame when the queue is resent (after a reconnect, to a hedge, on
//! retries). An ack, error or superseded names the frame; the frame maps
//! back to its client writes, and each write resolves on its own.
//!
//! - `sessions.rs`: dialing, promotion, loss, subscriptions.
//! - `outbox.rs`: each session's paced outbox, pings, resync after `rate-limited`.
//! - `inbound.rs`: frames from relays (catchup, changes, acks, errors...).
//! - `writes.rs`: stamping and queueing writes, hedging, retries, acks and refusals.
//! - `framing.rs`: write frames: size checks, grouping, building and sending them.
//! - `persist.rs`: the queue file writer.

mod framing;
mod inbound;
mod outbox;
mod persist;
mod sessions;
mod writes;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aether_core::hlc::DEFAULT_MAX_CLOCK_SKEW_NS;
use aether_core::{Entry, Hlc};
use aether_proto::client::v1 as pb;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::client::Status;
use crate::config::ClientConfig;
use crate::endpoint::Endpoint;
use crate::error::{Attempts, Error};
use crate::hedge::{self, DeadlineQueue};
use crate::queue::{self, Queue, QueueFile, QueueLock, WriteId};
use crate::shared::{Command, Refusal, Shared, SpaceCell, SyncState, lock};
use crate::space::Acked;
use crate::tls::Tls;
use crate::transport::{Inbound, SessionId};

use persist::Persister;
use sessions::{Dialed, Dialing, Session};

/// Inbound events buffered between connection tasks and the driver.
const INBOUND_QUEUE: usize = 1024;
/// Extra room in each channel's send queue beyond the offline queue's bound
/// (subscriptions, presence, pings).
const SEND_QUEUE_EXTRA: usize = 1024;
/// A hedge session unused this long is closed.
const HEDGE_IDLE: Duration = Duration::from_secs(30);
/// After every endpoint failed as a hedge, wait this long before trying again.
const HEDGE_RETRY: Duration = Duration::from_secs(1);
/// First delay before resending a write a relay could not take now
/// (`overloaded`, `rate-limited`, ...); it doubles with each refusal on the
/// same session, up to `backoff_max`, and never gives up.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// A primary counts as healthy (the reconnect backoff resets) this long after
/// its first catchup completed (or its `welcome`, with nothing to catch up).
const HEALTHY_AFTER: Duration = Duration::from_secs(3);
/// Bytes kept free below `maxFrameBytes` when grouping writes into a frame.
const FRAME_MARGIN: usize = 64;
/// Relay limits assumed before the first `welcome` (the relay's defaults);
/// a rate of 0 is unknown: no pacing.
const DEFAULT_LIMITS: pb::Limits = pb::Limits {
    max_frame_bytes: 256 * 1024,
    max_ops_per_write: 256,
    max_key_bytes: 256,
    max_value_bytes: 32 * 1024,
    max_spaces: 0,
    ops_per_sec: 0.0,
    burst: 0,
};

/// What the driver starts from.
pub(crate) struct DriverInit {
    pub config: Arc<ClientConfig>,
    pub endpoints: Vec<Endpoint>,
    pub tls: Tls,
    pub shared: Arc<Shared>,
    pub loaded: Option<QueueFile>,
    /// The queue file's lock, held as long as the driver runs.
    pub queue_lock: Option<QueueLock>,
    pub commands: mpsc::Receiver<Command>,
    /// Told once: the first session is online, or every endpoint failed once.
    pub first: oneshot::Sender<Result<(), Error>>,
}

/// Id of a `write` frame on the wire (unique for the driver's life, so per
/// connection too).
type WireId = u64;

/// A `write` frame queued or sent on a session: one or more client writes
/// of one space.
struct Frame {
    session: SessionId,
    space: String,
    /// The client writes it carries that are still unsettled.
    writes: Vec<WriteId>,
    /// When it left the outbox; `None` while it waits for tokens.
    sent_at: Option<Instant>,
}

/// A queued write's state besides its ops (which live in the [`Queue`]).
struct WriteState {
    space: Arc<SpaceCell>,
    queued_at: Instant,
    /// The frames carrying it on live sessions (queued or sent, unanswered).
    sent_on: Vec<(SessionId, WireId)>,
    /// Overdue at the primary: send it to the hedge session too.
    wants_hedge: bool,
    /// Keys of it that lost their LWW race (one `Superseded` event each).
    superseded: HashSet<String>,
    /// Temporary refusals in a row and the session that gave them (the
    /// exponent of the retry backoff; it starts over on another session).
    retry: Option<(SessionId, u32)>,
    /// A final refusal from a relay while another session still had the
    /// write: it fails unless that session acks it.
    refused: Option<Refusal>,
    /// Each op's key entry before it, to undo a refused write (`None` for
    /// the keys of writes restored from the queue file: undone to absent,
    /// the resubscription by digests brings the relay's value back).
    previous: Vec<Option<Entry>>,
    waiters: Vec<oneshot::Sender<Result<Acked, Error>>>,
}

impl WriteState {
    fn new(
        space: Arc<SpaceCell>,
        queued_at: Instant,
        previous: Vec<Option<Entry>>,
        waiters: Vec<oneshot::Sender<Result<Acked, Error>>>,
    ) -> Self {
        WriteState {
            space,
            queued_at,
            sent_on: Vec::new(),
            wants_hedge: false,
            superseded: HashSet::new(),
            retry: None,
            refused: None,
            previous,
            waiters,
        }
    }

    fn is_on(&self, sid: SessionId) -> bool {
        self.sent_on.iter().any(|(s, _)| *s == sid)
    }
}

pub(crate) struct Driver {
    cfg: Arc<ClientConfig>,
    endpoints: Vec<Endpoint>,
    tls: Tls,
    shared: Arc<Shared>,
    clock: Hlc,
    /// The relay's clock minus ours (from the primary's `welcome` and
    /// pongs; kept across reconnects until the next primary's welcome).
    relay_offset_ns: Option<i64>,
    max_skew_ns: u64,
    limits: pb::Limits,
    queue: Queue,
    writes: HashMap<WriteId, WriteState>,
    /// Write frames queued or in flight, by wire id.
    frames: HashMap<WireId, Frame>,
    next_wire: WireId,
    hedge_timers: DeadlineQueue<WriteId>,
    retry_timers: DeadlineQueue<WriteId>,
    sessions: HashMap<SessionId, Session>,
    primary: Option<SessionId>,
    hedge: Option<SessionId>,
    dials: HashMap<SessionId, Dialing>,
    next_session: SessionId,
    next_nonce: u64,
    /// Round-robin cursor for primary attempts.
    next_endpoint: usize,
    /// Hedge candidates that failed since the last hedge session.
    hedge_skip: usize,
    hedge_retry_at: Option<Instant>,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    /// The last failed attempt per endpoint since a session was last online
    /// (at most one entry per endpoint), and how many attempts failed.
    failures: Attempts,
    failed_attempts: usize,
    refusal: Option<Refusal>,
    first: Option<oneshot::Sender<Result<(), Error>>>,
    /// This client's presence per space, re-sent to every new primary.
    presence: HashMap<String, Bytes>,
    /// Other sessions present per space, as the primary announced them
    /// (session → colour): they are announced gone when the primary is.
    presence_seen: HashMap<String, HashMap<String, String>>,
    persist: Persister,
    commands: mpsc::Receiver<Command>,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: mpsc::Receiver<Inbound>,
    dial_tx: mpsc::Sender<Dialed>,
    dial_rx: mpsc::Receiver<Dialed>,
    /// Sessions found broken while handling the current event.
    broken: Vec<(SessionId, String)>,
    closing: bool,
}

impl Driver {
    /// Starts the driver task.
    pub(crate) fn spawn(init: DriverInit) -> JoinHandle<()> {
        tokio::spawn(Driver::new(init).run())
    }

    fn new(init: DriverInit) -> Driver {
        let cfg = init.config;
        let actor = init.shared.actor;
        let mut clock = Hlc::new(actor, DEFAULT_MAX_CLOCK_SKEW_NS);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (dial_tx, dial_rx) = mpsc::channel(8);
        let mut d = Driver {
            endpoints: init.endpoints,
            tls: init.tls,
            clock: Hlc::new(actor, DEFAULT_MAX_CLOCK_SKEW_NS),
            relay_offset_ns: None,
            max_skew_ns: DEFAULT_MAX_CLOCK_SKEW_NS,
            limits: DEFAULT_LIMITS,
            queue: Queue::new(cfg.max_queued_ops),
            writes: HashMap::new(),
            frames: HashMap::new(),
            next_wire: 1,
            hedge_timers: DeadlineQueue::default(),
            retry_timers: DeadlineQueue::default(),
            sessions: HashMap::new(),
            primary: None,
            hedge: None,
            dials: HashMap::new(),
            next_session: 1,
            next_nonce: 1,
            next_endpoint: 0,
            hedge_skip: 0,
            hedge_retry_at: None,
            backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
            reconnect_at: None,
            failures: Attempts::default(),
            failed_attempts: 0,
            refusal: None,
            first: Some(init.first),
            presence: HashMap::new(),
            presence_seen: HashMap::new(),
            persist: Persister::new(cfg.queue_file.clone(), init.queue_lock),
            commands: init.commands,
            inbound_tx,
            inbound_rx,
            dial_tx,
            dial_rx,
            broken: Vec::new(),
            closing: false,
            shared: init.shared,
            cfg,
        };
        if let Some(file) = init.loaded {
            clock.witness(file.last_stamp);
            d.restore(file.writes, &mut clock);
        }
        d.clock = clock;
        d
    }

    async fn run(mut self) {
        let now = Instant::now();
        self.persist.mark(now);
        self.publish_queue_len();
        self.maybe_dial(now);
        let shared = self.shared.clone();
        loop {
            let wake = self.next_wake(Instant::now());
            let sleep = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(ev) = self.inbound_rx.recv() => self.on_inbound(ev),
                Some(dialed) = self.dial_rx.recv() => self.on_dialed(dialed),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Close { reply }) => {
                        let result = self.shutdown().await;
                        let _ = reply.send(result);
                        return;
                    }
                    Some(cmd) => self.on_command(cmd),
                    // Every handle is gone.
                    None => {
                        if let Err(e) = self.shutdown().await {
                            tracing::warn!("closing: {e}");
                        }
                        return;
                    }
                },
                () = shared.spaces_changed.notified() => self.on_spaces_changed(),
                () = sleep => {}
            }
            self.tick(Instant::now());
        }
    }

    /// What follows every event: timers, broken sessions, dialing, the
    /// outboxes, the queue file.
    fn tick(&mut self, now: Instant) {
        self.on_timers(now);
        self.drop_broken(now);
        self.maybe_dial(now);
        self.pump_all(now);
        self.drop_broken(now);
        self.maybe_persist(now);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Write { space, ops, reply } => {
                let result = self.enqueue(space, ops, Instant::now());
                let _ = reply.send(result);
            }
            Command::Presence { space, state } => self.set_presence(space, state),
            Command::Unsubscribe { space, reply } => {
                self.unsubscribe(&space);
                let _ = reply.send(());
            }
            Command::Close { .. } => {}
        }
    }

    /// Subscribes new spaces (and presence) on the primary.
    fn on_spaces_changed(&mut self) {
        if let Some(p) = self.primary {
            self.subscribe_all(p);
        }
    }

    fn on_timers(&mut self, now: Instant) {
        for id in self.hedge_timers.pop_expired(now) {
            self.on_hedge_due(id, now);
        }
        let due = self.retry_timers.pop_expired(now);
        if !due.is_empty() {
            self.on_retry_due(due);
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in ids {
            let Some(s) = self.sessions.get(&sid) else { continue };
            if hedge::is_stalled(s.ping.map(|p| p.1), s.last_heard, now, self.cfg.stall_timeout) {
                let why = format!("stalled: no answer to a ping within {:?}", self.cfg.stall_timeout);
                self.broken.push((sid, why));
                continue;
            }
            if s.resync_at.is_some_and(|t| t <= now) {
                self.resync(sid, now);
            }
            let Some(s) = self.sessions.get(&sid) else { continue };
            if now >= s.next_ping {
                self.ping(sid, now);
            } else if Some(sid) == self.hedge
                && now >= s.last_used + HEDGE_IDLE
                && !self.writes.values().any(|w| w.is_on(sid))
            {
                self.broken.push((sid, "hedge session idle".into()));
            }
        }
        if let Some(p) = self.primary
            && let Some(s) = self.sessions.get_mut(&p)
            && s.healthy_at().is_some_and(|t| t <= now)
        {
            s.healthy = true;
            self.backoff.reset();
        }
    }

    /// The earliest moment something is due.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        at(self.hedge_timers.next());
        at(self.retry_timers.next());
        at(self.persist.due());
        // Only deadlines that can still fire: a past one that cannot would spin the loop.
        for s in self.sessions.values() {
            at(Some(s.next_ping));
            if let Some((_, sent)) = s.ping
                && s.last_heard < sent
            {
                at(Some(sent + self.cfg.stall_timeout + Duration::from_millis(1)));
            }
            if Some(s.id) == self.hedge && !self.writes.values().any(|w| w.is_on(s.id)) {
                at(Some(s.last_used + HEDGE_IDLE));
            }
            at(s.resync_at);
            if Some(s.id) == self.primary {
                at(s.healthy_at());
            }
            if let Some(ops) = self.outbox_head_ops(s) {
                at(Some(if ops == 0 { now } else { s.pacer.ready_at(ops, now) }));
            }
        }
        if self.primary.is_none() && !self.closing {
            if self.dials.is_empty() {
                at(Some(self.reconnect_at.unwrap_or(now)));
            } else if self.dials.len() == 1 && self.endpoints.len() > 1 {
                at(self.dials.values().next().map(|d| d.started + self.cfg.dial_hedge_delay));
            }
        } else if self.hedge.is_none()
            && self.dials.is_empty()
            && self.endpoints.len() > 1
            && self.cfg.hedge_delay.is_some()
            && self.writes.values().any(|w| w.wants_hedge)
        {
            at(self.hedge_retry_at);
        }
        wake
    }

    fn maybe_persist(&mut self, now: Instant) {
        if self.persist.due().is_some_and(|t| t <= now) {
            let bytes = queue::encode(self.shared.actor, self.clock.last(), &self.queue);
            self.persist.flush(bytes);
        }
    }

    fn publish_queue_len(&self) {
        let ops = self.queue.ops();
        self.shared.queued_ops.send_if_modified(|n| std::mem::replace(n, ops) != ops);
    }

    fn set_status(&self, status: Status) {
        self.shared.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// Stops: closes sessions, ends streams, fails waiters (their writes stay
    /// queued, and in the queue file when there is one), writes the file.
    async fn shutdown(&mut self) -> Result<(), Error> {
        self.closing = true;
        for (_, s) in self.sessions.drain() {
            s.conn.shutdown();
        }
        self.close_shared();
        let bytes = queue::encode(self.shared.actor, self.clock.last(), &self.queue);
        self.persist.finish(bytes).await
    }

    /// Tells every handle the client is closed: status, waiters, streams,
    /// spaces not yet synced. Idempotent; also run when the driver is
    /// dropped without a shutdown (a panic), so nothing waits forever.
    fn close_shared(&mut self) {
        self.set_status(Status::Closed);
        for w in self.writes.values_mut() {
            for tx in w.waiters.drain(..) {
                let _ = tx.send(Err(Error::Closed));
            }
        }
        for cell in self.shared.all_spaces() {
            let mut state = lock(&cell.state);
            // Dropping the senders ends every Watch and PresenceStream.
            state.changes = tokio::sync::broadcast::channel(1).0;
            state.presence = tokio::sync::broadcast::channel(1).0;
            drop(state);
            cell.synced.send_if_modified(|s| {
                let pending = *s == SyncState::Pending;
                if pending {
                    *s = SyncState::Closed;
                }
                pending
            });
        }
    }

    /// Counts a new primary (see `Client::reconnects`).
    fn count_connect(&self) {
        self.shared.connects.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.close_shared();
    }
}
