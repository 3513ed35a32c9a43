//! The relay node: spaces, clock, WAL and metrics, and the write path that
//! ties them together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aether_core::{Hlc, Key, Op, OpRef, Space, Stamp};
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::AckMode;
use crate::fanout::{OpEvent, Outbound, PresenceEvent, Subscriber};
use crate::metrics::Metrics;
use crate::replication::edge::ForwardError;
use crate::replication::{Mesh, QuorumState, to_pb};
use crate::space::{Catchup, Joined, Resume, SpaceHub};

/// What a resuming subscriber is sent (see [`Relay::join_resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Every entry.
    Full,
    /// The entries changed since the subscriber's seq.
    Delta,
    /// The entries of the buckets whose digests differ.
    Buckets,
}

/// What became of one client-stamped op (see [`Relay::write_stamped`]).
#[derive(Debug)]
pub enum Stamped {
    /// Applied, already there, or beaten (`Applied::beaten_by`): acknowledge
    /// once `Applied` is satisfied.
    Applied(Applied),
    /// Forwarded to the space's owner (this relay is an edge for it), which
    /// decides whether it wins and when it is durable at the quorum.
    Forwarded(tokio::sync::oneshot::Receiver<Result<Option<aether_core::Entry>, crate::replication::edge::Refused>>),
}
use crate::wal::{AppendError, Durable, Recovery, State, Wal};

/// A running relay's shared state.
pub struct Relay {
    actor: u64,
    ack: AckMode,
    hlc: Mutex<Hlc>,
    spaces: RwLock<HashMap<Arc<str>, Arc<SpaceHub>>>,
    wal: Wal,
    metrics: Metrics,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
    recovery: Recovery,
    mesh: Option<Arc<Mesh>>,
    /// Random per process: resume epochs from another process are not trusted.
    boot: u64,
    max_skew_ns: u64,
}

/// A write was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The WAL refused it.
    #[error(transparent)]
    Wal(#[from] AppendError),
    /// The space's owner could not take it (edge role).
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// A write logged by its owner: its LSN, the write quorum to wait for, its event.
type Logged = (u64, Option<watch::Receiver<QuorumState>>, Arc<OpEvent>);

/// What a write applied by this relay as an owner must wait for before it is
/// acknowledged.
#[derive(Debug)]
pub struct Applied {
    /// The WAL record that must be durable (the op's own, or the one of the
    /// entry that beat it).
    pub lsn: u64,
    /// The write quorum, when it is above 1.
    pub quorum: Option<watch::Receiver<QuorumState>>,
    /// When the op lost its LWW race: the entry that beat it.
    pub beaten_by: Option<aether_core::Entry>,
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Relay {
    /// A relay over an opened WAL and the state recovered from it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        actor: u64,
        ack: AckMode,
        max_skew_ns: u64,
        wal: Wal,
        state: State,
        recovery: Recovery,
        metrics: Metrics,
        mesh: Option<Arc<Mesh>>,
    ) -> Self {
        let mut hlc = Hlc::new(actor, max_skew_ns);
        // Whatever this node stamped before a restart, new stamps order after it.
        hlc.witness(state.max_stamp);
        let spaces: HashMap<Arc<str>, Arc<SpaceHub>> = state
            .spaces
            .into_iter()
            .map(|(name, space)| {
                let name: Arc<str> = name.into();
                (name.clone(), Arc::new(SpaceHub::new(name, space, false)))
            })
            .collect();
        metrics.spaces.set(spaces.len() as i64);
        Self {
            actor,
            ack,
            hlc: Mutex::new(hlc),
            spaces: RwLock::new(spaces),
            wal,
            metrics,
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            recovery,
            mesh,
            boot: rand::random(),
            max_skew_ns,
        }
    }

    /// When writers are acknowledged.
    pub fn ack_mode(&self) -> AckMode {
        self.ack
    }

    /// Stamps further than this ahead of the relay's clock are refused.
    pub fn max_skew_ns(&self) -> u64 {
        self.max_skew_ns
    }

    /// This relay's name: its member name in a mesh, `dev` otherwise.
    pub fn name(&self) -> String {
        self.mesh.as_ref().map_or_else(|| "dev".to_owned(), |m| m.view().me.clone())
    }

    /// The resume epoch of `hub` in this process (see [`Relay::join_resume`]).
    pub fn epoch(&self, hub: &SpaceHub) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&self.boot.to_be_bytes());
        e[8..].copy_from_slice(&hub.incarnation().to_be_bytes());
        e
    }

    /// Subscribes `sub` to space `name` (created empty on first use) and
    /// returns what it is missing: the entries changed after `seq` when
    /// `epoch` is this process's epoch of the space's hub, else the buckets
    /// that differ from `digests` (when given), else everything.
    pub fn join_resume(
        &self,
        name: &str,
        sub: Subscriber,
        epoch: &[u8],
        seq: u64,
        digests: Option<&[aether_core::space::Digest]>,
    ) -> (Arc<SpaceHub>, Catchup, Sync) {
        loop {
            let hub = self.hub(name, true);
            let (resume, kind) = if epoch == self.epoch(&hub) {
                (Resume::Since(seq), Sync::Delta)
            } else if let Some(d) = digests {
                (Resume::Buckets(d), Sync::Buckets)
            } else {
                (Resume::Full, Sync::Full)
            };
            let Some(catchup) = hub.join_resume(sub.clone(), resume) else { continue };
            let current = self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
            if current.is_some_and(|c| Arc::ptr_eq(&c, &hub)) {
                return (hub, catchup, kind);
            }
            hub.unsubscribe(sub.conn);
        }
    }

    /// The mesh this relay belongs to (`None` in dev mode).
    pub fn mesh(&self) -> Option<&Arc<Mesh>> {
        self.mesh.as_ref()
    }

    /// This node's actor id (stamped on its ops).
    pub fn actor(&self) -> u64 {
        self.actor
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What recovery found at boot.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The WAL's durable watermark.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.wal.durable()
    }

    /// True while the relay accepts work.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && !self.wal.is_failed()
    }

    /// The write-ahead log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Stops accepting work and flushes the WAL.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.wal.close();
    }

    /// Subscribes `sub` to space `name` (created empty on first use) and
    /// returns the hub with the state to start from.
    pub fn join(&self, name: &str, sub: Subscriber) -> (Arc<SpaceHub>, Joined) {
        loop {
            let hub = self.hub(name, true);
            // Copying the space happens outside the registry lock. `leave` may have
            // dropped this hub from the registry meanwhile (it was empty and unused):
            // then this subscription is undone and the join retried on the new hub.
            let joined = hub.join(sub.clone());
            let current = self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
            if current.is_some_and(|c| Arc::ptr_eq(&c, &hub)) {
                return (hub, joined);
            }
            hub.lock().subscribers.retain(|s| s.conn != sub.conn);
        }
    }

    /// The hub of `name`, created on first use. In a mesh, a hub created for a
    /// client (`for_client`) of a space this relay does not own is an edge
    /// cache, following one of the owners; otherwise hubs hold logged state.
    fn hub(&self, name: &str, for_client: bool) -> Arc<SpaceHub> {
        if let Some(hub) = self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return hub.clone();
        }
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        if let Some(hub) = spaces.get(name) {
            return hub.clone();
        }
        let view = self.mesh.as_ref().map(|m| m.view());
        let cache = for_client && view.as_ref().is_some_and(|v| !v.is_owner(v.shard_of(name)));
        let hub = Arc::new(SpaceHub::new(Arc::from(name), Space::new(), cache));
        spaces.insert(hub.name().clone(), hub.clone());
        self.metrics.spaces.set(spaces.len() as i64);
        if cache && let (Some(mesh), Some(view)) = (&self.mesh, &view) {
            mesh.edges.subscribe(view, hub.clone());
        }
        hub
    }

    /// Before a client joins `name`: when this relay serves it as an edge,
    /// waits (at most `timeout`) until the owner's snapshot has arrived, so
    /// the client's first snapshot is complete.
    pub async fn prepare_join(&self, name: &str, timeout: std::time::Duration) {
        let Some(mesh) = &self.mesh else { return };
        if !self.hub(name, true).is_cache() {
            return;
        }
        if let Some(mut loaded) = mesh.edges.loaded(name)
            && tokio::time::timeout(timeout, loaded.wait_for(|l| *l)).await.is_err()
        {
            tracing::warn!(space = name, "no owner answered in time; serving the space from what this edge has");
        }
    }

    /// Unsubscribes connection `conn` from `hub` and announces it left (see
    /// [`SpaceHub::leave`]). A space left with no subscribers and no entries
    /// is forgotten, so clients cannot grow the registry by visiting names.
    pub fn leave(&self, hub: &Arc<SpaceHub>, conn: u64, leave: Option<Arc<PresenceEvent>>) {
        if hub.leave(conn, leave) || hub.is_cache() {
            self.forget_if_unused(hub);
        }
    }

    /// Unsubscribes a subscriber that has no presence (an edge's
    /// subscription), forgetting the space if nothing else uses it.
    pub fn release(&self, hub: &Arc<SpaceHub>, conn: u64) {
        hub.unsubscribe(conn);
        self.forget_if_unused(hub);
    }

    /// Only this hub: the name may meanwhile belong to a newer hub with
    /// subscribers. An edge cache goes with its last client; logged state
    /// only when it is empty too.
    fn forget_if_unused(&self, hub: &Arc<SpaceHub>) {
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        if !spaces.get(hub.name()).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            return;
        }
        let mut inner = hub.lock();
        if inner.subscribers.is_empty() && (hub.is_cache() || inner.space.is_empty()) {
            inner.removed = true;
            drop(inner);
            spaces.remove(hub.name());
            self.metrics.spaces.set(spaces.len() as i64);
            if hub.is_cache()
                && let Some(mesh) = &self.mesh
            {
                mesh.edges.unsubscribe(hub.name());
            }
        }
    }

    /// The logged hub of `name` (created empty if needed), for a peer or an edge.
    pub fn owner_hub(&self, name: &str) -> Arc<SpaceHub> {
        self.hub(name, false)
    }

    /// Number of spaces held in memory.
    pub fn space_count(&self) -> usize {
        self.spaces.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn tick(&self) -> Stamp {
        self.hlc.lock().unwrap_or_else(|e| e.into_inner()).tick(now_ns())
    }

    /// Applies a client's write: stamp, log, merge, fan out, replicate. Other
    /// subscribers get the op at once; `writer` gets its echo as an `Ack`
    /// gated on the WAL and the write quorum (or at once with `--ack memory`).
    /// Nothing is applied if the WAL refuses. For a space served as an edge,
    /// the stamped op goes to its owner instead, and the echo follows the
    /// owner's acknowledgement.
    pub fn write(
        &self,
        hub: &SpaceHub,
        writer: &Subscriber,
        key: &[u8],
        value: Option<&[u8]>,
        received: Instant,
    ) -> Result<(), WriteError> {
        let span = crate::telemetry::enabled().then(|| {
            let role = if hub.is_cache() { "edge" } else { "owner" };
            tracing::info_span!("relay.write", space = %hub.name(), role)
        });
        let _entered = span.as_ref().map(|s| s.enter());
        if hub.is_cache()
            && let Some(mesh) = &self.mesh
            && let view = mesh.view()
            && !view.is_owner(view.shard_of(hub.name()))
        {
            let stamp = self.tick();
            let value = value.map(Bytes::copy_from_slice);
            let op = to_pb(hub.name(), key, value.as_ref(), stamp, self.actor);
            let is_set = value.is_some();
            let event = Arc::new(OpEvent::new(hub.name().clone(), Key::from(key), value, stamp, 0));
            let trace = crate::telemetry::traceparent();
            let reply = crate::replication::edge::Reply::Echo { writer: writer.clone(), event };
            let out = crate::replication::edge::Outgoing { op, trace, stamp, reply, received };
            mesh.edges.forward(hub.name(), writer.conn, out)?;
            if is_set { &self.metrics.ops_set } else { &self.metrics.ops_delete }.inc();
            return Ok(());
        }
        let mut inner = hub.lock();
        let promoted = self.promote_locked(hub, &mut inner)?;
        let stamp = self.tick();
        let (lsn, quorum, event) =
            self.log_and_merge(hub, &mut inner, key, value.map(Bytes::copy_from_slice), stamp)?;
        let fanout_started = Instant::now();
        let mut delivered = 0usize;
        for s in &inner.subscribers {
            if s.conn == writer.conn {
                let item = match self.ack {
                    AckMode::Durable => Outbound::Ack { event: event.clone(), lsn, received, quorum: quorum.clone() },
                    AckMode::Memory => {
                        self.metrics.op_latency_memory.observe(received.elapsed().as_secs_f64());
                        Outbound::Op(event.clone())
                    }
                };
                s.offer(item);
            } else {
                delivered += usize::from(s.offer(Outbound::Op(event.clone())));
            }
        }
        drop(inner);
        if promoted {
            self.stop_following(hub);
        }
        self.metrics.fanout_latency.observe(fanout_started.elapsed().as_secs_f64());
        self.metrics.fanout_size.observe(delivered as f64);
        Ok(())
    }

    /// Applies a client-stamped op for connection `conn` (a native client):
    /// log, merge, fan out to everyone but `conn`, replicate; or forward it to
    /// the owner when this relay is an edge for the space. The caller checked
    /// the stamp (its actor, its skew). Nothing is applied if the WAL refuses.
    pub fn write_stamped(
        &self,
        hub: &SpaceHub,
        conn: u64,
        key: &[u8],
        value: Option<Bytes>,
        stamp: Stamp,
        received: Instant,
    ) -> Result<Stamped, WriteError> {
        {
            let mut hlc = self.hlc.lock().unwrap_or_else(|e| e.into_inner());
            let _ = hlc.observe(stamp, now_ns());
        }
        if hub.is_cache()
            && let Some(mesh) = &self.mesh
            && let view = mesh.view()
            && !view.is_owner(view.shard_of(hub.name()))
        {
            let is_set = value.is_some();
            let op = to_pb(hub.name(), key, value.as_ref(), stamp, self.actor);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let reply = crate::replication::edge::Reply::Native(tx);
            let trace = crate::telemetry::traceparent();
            let out = crate::replication::edge::Outgoing { op, trace, stamp, reply, received };
            mesh.edges.forward(hub.name(), conn, out)?;
            if is_set { &self.metrics.ops_set } else { &self.metrics.ops_delete }.inc();
            return Ok(Stamped::Forwarded(rx));
        }
        let mut inner = hub.lock();
        let promoted = self.promote_locked(hub, &mut inner)?;
        let outcome = match inner.space.get(key) {
            // Lost, or a retry / hedge of what is there: acknowledged like a
            // write once what is there is durable here (its record is at or
            // before the last LSN) and at the write quorum (pushed again:
            // replication is idempotent).
            Some(e) if e.stamp >= stamp => {
                let quorum = self.replicate(hub.name(), key, e.value.as_ref(), e.stamp, self.actor);
                let beaten_by = (e.stamp > stamp).then(|| e.clone());
                Stamped::Applied(Applied { lsn: self.wal.last_lsn(), quorum, beaten_by })
            }
            _ => {
                let (lsn, quorum, event) = self.log_and_merge(hub, &mut inner, key, value, stamp)?;
                let mut delivered = 0usize;
                for s in inner.subscribers.iter().filter(|s| s.conn != conn) {
                    delivered += usize::from(s.offer(Outbound::Op(event.clone())));
                }
                self.metrics.fanout_size.observe(delivered as f64);
                Stamped::Applied(Applied { lsn, quorum, beaten_by: None })
            }
        };
        drop(inner);
        if promoted {
            self.stop_following(hub);
        }
        Ok(outcome)
    }

    /// Applies an op that arrived stamped (from a peer, an edge or
    /// anti-entropy): log it if it wins (or if the hub is an edge cache, whose
    /// entries are not logged here), merge, fan out. With `replicate`, this
    /// relay acts as the op's owner and pushes it to the other owners.
    pub fn apply(&self, op: Op, replicate: bool) -> Result<Applied, WriteError> {
        let view = self.mesh.as_ref().map(|m| m.view());
        let owner = view.as_ref().is_none_or(|v| v.is_owner(v.shard_of(&op.space)));
        loop {
            let hub = self.hub(&op.space, false);
            let done = {
                let mut inner = hub.lock();
                if inner.removed {
                    // Dropped from the registry since the lookup: use the current hub.
                    None
                } else {
                    Some(self.apply_locked(&hub, &mut inner, &op, owner, replicate)?)
                }
            };
            if let Some((applied, promoted)) = done {
                if promoted {
                    self.stop_following(&hub);
                }
                return Ok(applied);
            }
        }
    }

    fn apply_locked(
        &self,
        hub: &SpaceHub,
        inner: &mut crate::space::SpaceInner,
        op: &Op,
        owner: bool,
        replicate: bool,
    ) -> Result<(Applied, bool), WriteError> {
        let promoted = owner && self.promote_locked(hub, inner)?;
        {
            let mut hlc = self.hlc.lock().unwrap_or_else(|e| e.into_inner());
            // A stamp from too far in the future is merged but does not drag this clock along.
            let _ = hlc.observe(op.stamp, now_ns());
        }
        let current = inner.space.get(&op.key);
        let wins = current.is_none_or(|e| e.stamp < op.stamp);
        let beaten_by = current.filter(|e| e.stamp > op.stamp).cloned();
        // An edge cache's entries are not in this WAL: an op that loses to one of them is logged anyway.
        let lsn = if wins || hub.is_cache() { self.wal.append(op.as_ref())? } else { self.wal.last_lsn() };
        let quorum =
            if replicate { self.replicate(&op.space, &op.key, op.value.as_ref(), op.stamp, op.origin) } else { None };
        if wins {
            let key = Key::from(op.key.clone());
            inner.space.merge_owned(key.clone(), op.value.clone(), op.stamp);
            let event = Arc::new(OpEvent::new(hub.name().clone(), key, op.value.clone(), op.stamp, inner.space.seq()));
            for s in &inner.subscribers {
                s.offer(Outbound::Op(event.clone()));
            }
        }
        Ok((Applied { lsn, quorum, beaten_by }, promoted))
    }

    /// The owner's half of a write that wins (call with the hub locked): log
    /// it, merge it, count it, push it to the other owners. Returns its LSN,
    /// the write quorum to wait for, and the event to fan out.
    fn log_and_merge(
        &self,
        hub: &SpaceHub,
        inner: &mut crate::space::SpaceInner,
        key: &[u8],
        value: Option<Bytes>,
        stamp: Stamp,
    ) -> Result<Logged, WriteError> {
        let op = OpRef { space: hub.name(), key, value: value.as_deref(), stamp, origin: self.actor };
        let lsn = self.wal.append(op)?;
        let key = Key::from(key);
        inner.space.merge_owned(key.clone(), value.clone(), stamp);
        if value.is_some() { &self.metrics.ops_set } else { &self.metrics.ops_delete }.inc();
        let quorum = self.replicate(hub.name(), &key, value.as_ref(), stamp, self.actor);
        let event = Arc::new(OpEvent::new(hub.name().clone(), key, value, stamp, inner.space.seq()));
        Ok((lsn, quorum, event))
    }

    /// Pushes an op to the other owners of its shard; the write quorum to
    /// wait for, when it is above 1 (`None` in dev mode).
    fn replicate(
        &self,
        space: &str,
        key: &[u8],
        value: Option<&Bytes>,
        stamp: Stamp,
        origin: u64,
    ) -> Option<watch::Receiver<QuorumState>> {
        let m = self.mesh.as_ref()?;
        let shard = m.view().shard_of(space);
        m.replicate(shard, to_pb(space, key, value, stamp, origin))
    }

    /// Turns an edge cache into logged state once this relay owns its space:
    /// every entry is logged, so the WAL holds what anti-entropy and clients
    /// will now be served from. Call with the hub locked; returns true when it
    /// promoted (then call [`Relay::stop_following`] after unlocking).
    fn promote_locked(&self, hub: &SpaceHub, inner: &mut crate::space::SpaceInner) -> Result<bool, WriteError> {
        if !hub.is_cache() {
            return Ok(false);
        }
        for (key, e) in inner.space.iter() {
            let value = e.value.as_deref();
            self.wal.append(OpRef { space: hub.name(), key, value, stamp: e.stamp, origin: self.actor })?;
        }
        hub.set_logged();
        Ok(true)
    }

    /// Ends the edge subscription of a promoted hub (never with its lock held:
    /// the edge state locks hubs itself).
    fn stop_following(&self, hub: &SpaceHub) {
        if let Some(mesh) = &self.mesh {
            mesh.edges.unsubscribe(hub.name());
        }
    }

    /// After a membership change: promotes the edge caches of spaces this
    /// relay now owns (logged hubs that it no longer owns stay, as held
    /// state that anti-entropy hands to the owners).
    pub fn reconcile_roles(&self) {
        let Some(mesh) = &self.mesh else { return };
        let view = mesh.view();
        for hub in self.hubs() {
            if !hub.is_cache() || !view.is_owner(view.shard_of(hub.name())) {
                continue;
            }
            let promoted = {
                let mut inner = hub.lock();
                !inner.removed && matches!(self.promote_locked(&hub, &mut inner), Ok(true))
            };
            if promoted {
                tracing::info!(space = %hub.name(), "now an owner: the edge cache became logged state");
                self.stop_following(&hub);
            }
        }
    }

    /// Logged (non-cache) spaces whose shard is `shard`, with their hubs, sorted by name.
    pub fn spaces_of_shard(&self, shard: u32, shards: u32) -> Vec<Arc<SpaceHub>> {
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Arc<SpaceHub>> = spaces
            .values()
            .filter(|h| !h.is_cache() && aether_core::placement::shard_of(h.name(), shards) == shard)
            .cloned()
            .collect();
        drop(spaces);
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// The logged hub of `name`, if this relay holds one.
    pub fn logged_hub(&self, name: &str) -> Option<Arc<SpaceHub>> {
        self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(name).filter(|h| !h.is_cache()).cloned()
    }

    /// Every hub, sorted by name.
    pub fn hubs(&self) -> Vec<Arc<SpaceHub>> {
        let mut out: Vec<_> = self.spaces.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }
}
