//! The edge role: serving clients of spaces this relay does not own.
//!
//! For such a space the relay keeps a *cache hub* (in memory, never logged).
//! It subscribes to the space at one owner — the first owner, in placement
//! order, whose link is up — and merges the snapshot and the live ops it
//! receives, fanning out what changes to its own clients. Client writes are
//! stamped here and forwarded to that owner; the writer's echo is released
//! when the owner reports the write durable at the write quorum.
//!
//! One `Edge` stream per (edge, owner) carries every space and write routed
//! to that owner. When a link drops, its spaces move to the next owner (the
//! new snapshot fills any gap, merge makes overlaps harmless) and its
//! unacknowledged writes are sent again there (stamps make duplicates
//! harmless).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use aether_core::edge::{Command, EdgeRouter};
use aether_core::{Entry, Key, Stamp};
use aether_proto::v1::{EdgeEvent, EdgeRequest, ForwardedOp, Op as PbOp, edge_event, edge_request};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::membership::View;
use super::peer::Backoff;
use super::transport::MeshTransport;
use crate::fanout::{OpEvent, Outbound, Subscriber};
use crate::gateway::json_wire;
use crate::metrics::Metrics;
use crate::space::SpaceHub;

/// Edge subscriptions and forwarded writes, for every owner link.
pub struct Edges {
    state: Mutex<State>,
    view: watch::Receiver<Arc<View>>,
    transport: MeshTransport,
    metrics: Metrics,
}

struct State {
    /// Which owner each space follows, and which writes go where (sans-IO, in core).
    router: EdgeRouter<Forwarded>,
    links: HashMap<String, Link>,
    spaces: HashMap<Arc<str>, EdgeSpace>,
    /// Stamp of each pending write → its writer's connection (not sent the op twice).
    by_stamp: HashMap<Stamp, u64>,
}

struct Link {
    addr: String,
    /// Set while the stream is open.
    tx: Option<mpsc::UnboundedSender<EdgeRequest>>,
    task: JoinHandle<()>,
}

struct EdgeSpace {
    hub: Arc<SpaceHub>,
    loaded: watch::Sender<bool>,
}

struct Forwarded {
    space: Arc<str>,
    op: PbOp,
    trace: String,
    stamp: Stamp,
    reply: Reply,
    received: Instant,
}

/// How the writer of a forwarded write learns its outcome.
#[derive(Debug)]
pub enum Reply {
    /// A `/ws` client: its echo on acknowledgement, an `error` frame otherwise.
    Echo {
        /// The writer.
        writer: Subscriber,
        /// Its echo.
        event: Arc<OpEvent>,
    },
    /// A native client's connection task waits for the outcome: acknowledged
    /// (with the entry that beat the op, if it lost its LWW race) or refused.
    Native(oneshot::Sender<Result<Option<Entry>, Refused>>),
}

/// The owner (or the edge) refused a forwarded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Error code, as on the client protocols.
    pub code: String,
    /// Why.
    pub message: String,
}

impl Reply {
    fn acked(self, beaten_by: Option<Entry>) {
        match self {
            Reply::Echo { writer, event } => {
                writer.offer(Outbound::Op(event));
            }
            Reply::Native(tx) => {
                let _ = tx.send(Ok(beaten_by));
            }
        }
    }

    fn refused(self, code: &str, message: &str) {
        match self {
            Reply::Echo { writer, .. } => {
                writer.offer(Outbound::Text(json_wire::encode_error(code, message)));
            }
            Reply::Native(tx) => {
                let _ = tx.send(Err(Refused { code: code.to_owned(), message: message.to_owned() }));
            }
        }
    }
}

/// The owners of `space` other than this relay, in placement order.
fn owners_of(view: &View) -> impl Fn(&str) -> Vec<String> + '_ {
    move |space| view.owners(view.shard_of(space)).filter(|o| *o != view.me).map(str::to_owned).collect()
}

/// A write an edge sends to the space's owner.
pub struct Outgoing {
    /// The op, stamped by the edge.
    pub op: PbOp,
    /// W3C traceparent of the client write ("" when not traced).
    pub trace: String,
    /// Its stamp.
    pub stamp: Stamp,
    /// How the writer learns the outcome.
    pub reply: Reply,
    /// When the client's message arrived.
    pub received: Instant,
}

/// A forwarded write was refused before it left this relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// Too many writes wait for their owners.
    #[error("too many writes are waiting for their owner, try again")]
    Overloaded,
}

impl Edges {
    /// No subscriptions yet; at most `max_pending` forwarded writes in flight.
    pub fn new(
        view: watch::Receiver<Arc<View>>,
        transport: MeshTransport,
        max_pending: usize,
        metrics: Metrics,
    ) -> Arc<Self> {
        let state = State {
            router: EdgeRouter::new(max_pending),
            links: HashMap::new(),
            spaces: HashMap::new(),
            by_stamp: HashMap::new(),
        };
        Arc::new(Self { state: Mutex::new(state), view, transport, metrics })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following `hub` (a cache hub) at one of its owners.
    pub fn subscribe(self: &Arc<Self>, view: &View, hub: Arc<SpaceHub>) {
        let mut st = self.lock();
        let name = hub.name().clone();
        st.spaces.entry(name.clone()).or_insert_with(|| EdgeSpace { hub, loaded: watch::channel(false).0 });
        let mut cmds = st.router.follow(&name, owners_of(view));
        cmds.extend(self.sync_links(&mut st, view));
        st.exec(cmds);
    }

    /// Resolves once `space`'s first snapshot has been merged (immediately if unknown).
    pub fn loaded(&self, space: &str) -> Option<watch::Receiver<bool>> {
        self.lock().spaces.get(space).map(|s| s.loaded.subscribe())
    }

    /// Stops following `space`. Writes still waiting for the owner's
    /// acknowledgement fail (their writers get an `error`): nothing would
    /// resend them any more.
    pub fn unsubscribe(&self, space: &str) {
        let mut st = self.lock();
        let (cmds, orphans) = st.router.unfollow(space);
        st.exec(cmds);
        st.spaces.remove(space);
        for w in orphans {
            st.by_stamp.remove(&w.stamp);
            let msg = "the relay stopped following this space before its owner confirmed the write";
            w.reply.refused("write-failed", msg);
        }
    }

    /// Names of followed spaces.
    pub fn spaces(&self) -> Vec<Arc<str>> {
        self.lock().router.spaces().map(Arc::from).collect()
    }

    /// Forwards a write to the space's owner for connection `conn`, which
    /// learns the outcome through `w.reply` (and does not get the op as an
    /// event of the cache hub).
    pub fn forward(&self, space: &Arc<str>, conn: u64, w: Outgoing) -> Result<(), ForwardError> {
        let Outgoing { op, trace, stamp, reply, received } = w;
        let view = self.view.borrow().clone();
        let mut st = self.lock();
        let fwd = Forwarded { space: space.clone(), op, trace, stamp, reply, received };
        let (_, cmds) = st.router.forward(space, fwd, owners_of(&view)).map_err(|_| ForwardError::Overloaded)?;
        st.by_stamp.insert(stamp, conn);
        st.exec(cmds);
        Ok(())
    }

    /// Re-evaluates links and routes after a membership change.
    pub fn reroute(self: &Arc<Self>, view: &View) {
        let mut st = self.lock();
        let mut cmds = self.sync_links(&mut st, view);
        cmds.extend(st.router.route(owners_of(view)));
        st.exec(cmds);
    }

    /// Keeps one link task per owner the router needs: spawns links to new
    /// owners, stops links to departed ones (or ones whose address changed);
    /// what went over a stopped link is routed again.
    fn sync_links(self: &Arc<Self>, st: &mut State, view: &View) -> Vec<Command> {
        let wanted: HashMap<String, String> = st
            .router
            .wanted_links(owners_of(view))
            .into_iter()
            .filter_map(|o| view.members.get(&o).map(|a| (o, a.clone())))
            .collect();
        let mut dropped = Vec::new();
        st.links.retain(|name, link| {
            let keep = wanted.get(name).is_some_and(|a| *a == link.addr);
            if !keep {
                link.task.abort();
                dropped.push(name.clone());
            }
            keep
        });
        let mut cmds = Vec::new();
        for owner in dropped {
            cmds.extend(st.router.link_down(&owner, owners_of(view)));
        }
        for (name, addr) in wanted {
            if let std::collections::hash_map::Entry::Vacant(e) = st.links.entry(name) {
                let task = tokio::spawn(self.clone().run_link(e.key().clone(), addr.clone()));
                e.insert(Link { addr, tx: None, task });
            }
        }
        cmds
    }

    fn on_event(&self, event: EdgeEvent) {
        let Some(kind) = event.kind else { return };
        let mut st = self.lock();
        match kind {
            edge_event::Kind::Snapshot(snap) => {
                if let Some(s) = st.spaces.get(snap.space.as_str()) {
                    let hub = s.hub.clone();
                    self.merge(&st, &hub, snap.ops);
                    if snap.last {
                        st.spaces[snap.space.as_str()].loaded.send_replace(true);
                    }
                }
            }
            edge_event::Kind::Ops(batch) => {
                let mut ops = batch.ops;
                ops.sort_by(|a, b| a.space.cmp(&b.space));
                for chunk in ops.chunk_by(|a, b| a.space == b.space) {
                    if let Some(s) = st.spaces.get(chunk[0].space.as_str()) {
                        let hub = s.hub.clone();
                        self.merge(&st, &hub, chunk.to_vec());
                    }
                }
            }
            edge_event::Kind::Acks(acks) => {
                for id in acks.ids {
                    let Some((_, w)) = st.router.acked(id) else { continue };
                    let beaten_by =
                        acks.lost.iter().find(|l| l.id == id).and_then(|l| l.winner.clone()).map(|o| Entry {
                            value: (!o.tombstone).then_some(o.value),
                            stamp: Stamp { wall_ns: o.wall_ns, counter: o.counter, actor: o.actor },
                        });
                    // The owner's op event may come before or after its ack (they travel
                    // on different tasks there). Merging the write here, now, makes the
                    // order irrelevant: whichever comes second is a duplicate, and the
                    // writer is skipped both times; it gets exactly one echo, below.
                    if let Some(s) = st.spaces.get(&w.space) {
                        let hub = s.hub.clone();
                        // A write that lost is not news to anyone: the entry that beat it is.
                        let op = match &beaten_by {
                            None => w.op.clone(),
                            Some(e) => super::to_pb(&w.space, &w.op.key, e.value.as_ref(), e.stamp, w.op.origin),
                        };
                        self.merge(&st, &hub, vec![op]);
                    }
                    st.by_stamp.remove(&w.stamp);
                    self.metrics.op_latency_durable.observe(w.received.elapsed().as_secs_f64());
                    w.reply.acked(beaten_by);
                }
            }
            edge_event::Kind::Error(err) => {
                if let Some((_, w)) = st.router.acked(err.id) {
                    st.by_stamp.remove(&w.stamp);
                    let code = if err.code.is_empty() { "write-failed" } else { err.code.as_str() };
                    w.reply.refused(code, &err.message);
                }
            }
        }
    }

    /// Merges ops from an owner into a cache hub and fans out what changed,
    /// except to the writer of a pending forwarded write (it gets the echo).
    fn merge(&self, st: &State, hub: &SpaceHub, ops: Vec<PbOp>) {
        let mut inner = hub.lock();
        // Promoted to logged state (this relay became an owner): ops come by replication now.
        if !hub.is_cache() || inner.removed {
            return;
        }
        for op in ops {
            let Ok(op) = super::from_pb(op) else { continue };
            let (key, value) = (Key::from(op.key), op.value);
            if inner.space.merge_owned(key.clone(), value.clone(), op.stamp) != aether_core::Merge::Applied {
                continue;
            }
            let skip = st.by_stamp.get(&op.stamp).copied();
            let event = Arc::new(OpEvent::new(hub.name().clone(), key, value, op.stamp, inner.space.seq()));
            for s in inner.subscribers.iter().filter(|s| Some(s.conn) != skip) {
                s.offer(Outbound::Op(event.clone()));
            }
        }
    }

    fn link_up(self: &Arc<Self>, owner: &str, tx: mpsc::UnboundedSender<EdgeRequest>, view: &View) {
        let mut st = self.lock();
        match st.links.get_mut(owner) {
            Some(link) => link.tx = Some(tx),
            // Stopped meanwhile (membership change): this stream is not used.
            None => return,
        }
        let cmds = st.router.link_up(owner, owners_of(view));
        st.exec(cmds);
    }

    fn link_down(self: &Arc<Self>, owner: &str, view: &View) {
        let mut st = self.lock();
        if let Some(link) = st.links.get_mut(owner) {
            link.tx = None;
        }
        let cmds = st.router.link_down(owner, owners_of(view));
        st.exec(cmds);
    }

    async fn run_link(self: Arc<Self>, owner: String, addr: String) {
        let mut backoff = Backoff::new();
        loop {
            let (tx, rx) = mpsc::unbounded_channel();
            let opened = match self.transport.client(&addr) {
                Ok(mut c) => c.edge(self.transport.request(UnboundedReceiverStream::new(rx))).await,
                Err(e) => Err(e),
            };
            match opened {
                Ok(events) => {
                    backoff.reset();
                    let mut events = events.into_inner();
                    let view = self.view.borrow().clone();
                    self.link_up(&owner, tx, &view);
                    tracing::debug!(%owner, "edge link open");
                    loop {
                        match events.message().await {
                            Ok(Some(ev)) => self.on_event(ev),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(%owner, error = %e, "edge link ended");
                                break;
                            }
                        }
                    }
                    let view = self.view.borrow().clone();
                    self.link_down(&owner, &view);
                }
                Err(e) => tracing::debug!(%owner, error = %e, "edge link failed"),
            }
            tokio::time::sleep(backoff.delay()).await;
        }
    }
}

impl State {
    /// Carries out the router's commands on the open streams. A command for a
    /// stream that is gone is dropped: its closing tells the router, which
    /// sends again on the next stream.
    fn exec(&self, cmds: Vec<Command>) {
        for cmd in cmds {
            let (owner, req) = match cmd {
                Command::Subscribe { owner, space } => {
                    (owner, EdgeRequest { kind: Some(edge_request::Kind::Subscribe(space)) })
                }
                Command::Unsubscribe { owner, space } => {
                    (owner, EdgeRequest { kind: Some(edge_request::Kind::Unsubscribe(space)) })
                }
                Command::Send { owner, id } => match self.router.write(id) {
                    Some(w) => (owner, write_request(id, w)),
                    None => continue,
                },
            };
            if let Some(tx) = self.links.get(&owner).and_then(|l| l.tx.as_ref()) {
                let _ = tx.send(req);
            }
        }
    }
}

fn write_request(id: u64, w: &Forwarded) -> EdgeRequest {
    let fwd = ForwardedOp { id, op: Some(w.op.clone()), traceparent: w.trace.clone() };
    EdgeRequest { kind: Some(edge_request::Kind::Write(fwd)) }
}
