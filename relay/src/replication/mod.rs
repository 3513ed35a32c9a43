//! The mesh: membership, placement, owner-to-owner replication, anti-entropy
//! and the edge role, around the single-node write path in [`crate::node`].
//!
//! - [`membership`]: the member list and the owner table ([`membership::View`]).
//! - [`peer`]: one bounded outbound replication queue and stream per peer.
//! - [`edge`]: spaces this relay serves but does not own.
//! - [`service`]: the `aether.v1.Mesh` gRPC server.
//! - [`anti_entropy`]: the periodic (and on-connect) repair of every shard.
//! - [`transport`]: channels, TLS and call metadata.

pub mod anti_entropy;
pub mod edge;
pub mod membership;
pub mod peer;
pub mod service;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aether_core::{Op, Stamp};
use aether_proto::v1::Op as PbOp;
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::MeshArgs;
use crate::metrics::Metrics;
use edge::Edges;
use membership::View;
use peer::{Peer, PeerStatus};
use transport::MeshTransport;

/// Where a write waiting for its quorum stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumState {
    /// Not enough owners have it durable yet.
    Pending,
    /// `write_quorum - 1` other owners have it durable.
    Reached,
    /// The quorum timeout passed first (the op stays applied and will replicate).
    TimedOut,
}

/// A relay's place in the mesh.
pub struct Mesh {
    view: watch::Receiver<Arc<View>>,
    transport: MeshTransport,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
    /// Spaces served here but owned elsewhere.
    pub edges: Arc<Edges>,
    /// Owners that must hold a write durably before it is acknowledged.
    pub write_quorum: usize,
    quorum_timeout: Duration,
    /// Most ops per replication batch or anti-entropy page.
    pub batch: usize,
    queue_cap: usize,
    queue_bytes: usize,
    metrics: Metrics,
    /// (held shards, of which not yet handed off) after the last full anti-entropy pass.
    handoff: std::sync::Mutex<Option<(usize, usize)>>,
}

impl Mesh {
    /// The mesh state for `args`, following `view`; peers connect once
    /// [`Mesh::follow_membership`] runs.
    pub fn new(
        args: &MeshArgs,
        view: watch::Receiver<Arc<View>>,
        transport: MeshTransport,
        max_forwarded: usize,
        metrics: Metrics,
    ) -> Arc<Self> {
        let edges = Edges::new(view.clone(), transport.clone(), max_forwarded, metrics.clone());
        let mesh: Arc<Self> = Arc::new(Self {
            view,
            transport,
            peers: RwLock::default(),
            edges,
            write_quorum: args.write_quorum as usize,
            quorum_timeout: args.quorum_timeout,
            batch: args.replication_batch,
            queue_cap: args.replication_queue,
            queue_bytes: args.replication_queue_bytes,
            metrics,
            handoff: std::sync::Mutex::new(None),
        });
        mesh
    }

    /// The current membership view.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A receiver of membership views (for tasks that follow changes).
    pub fn subscribe_view(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// The transport for calls to peers.
    pub fn transport(&self) -> &MeshTransport {
        &self.transport
    }

    /// The replication peer named `name`, if it is a member.
    pub fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Every replication peer.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Status of every peer, by name.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<PeerStatus> = peers.values().map(|p| p.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Keeps one replication peer per other member, starting and stopping
    /// them as membership changes, and re-routes edge spaces. Runs forever.
    pub async fn follow_membership(self: Arc<Self>) {
        let mut view = self.view.clone();
        let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let v = view.borrow_and_update().clone();
            // The hand-off state was for the previous view: unknown until the next full pass.
            *self.handoff.lock().unwrap_or_else(|e| e.into_inner()) = None;
            {
                let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
                peers.retain(|name, p| {
                    let keep = v.members.get(name).is_some_and(|a| *a == p.addr) && *name != v.me;
                    if !keep && let Some(t) = tasks.remove(name) {
                        t.abort();
                    }
                    keep
                });
                for (name, addr) in v.others() {
                    if !peers.contains_key(name) {
                        let p =
                            Peer::new(name.to_owned(), addr.to_owned(), self.queue_cap, self.queue_bytes, self.batch);
                        let t = tokio::spawn(p.clone().run(self.transport.clone()));
                        tasks.insert(name.to_owned(), t);
                        peers.insert(name.to_owned(), p);
                    }
                }
            }
            self.metrics.shards_owned.set(v.owned().len() as i64);
            self.metrics.members.set(v.members.len() as i64);
            self.edges.reroute(&v);
            if view.changed().await.is_err() {
                return;
            }
        }
    }

    /// Pushes an op this relay applied as an owner to the shard's other
    /// owners. With a write quorum above 1, returns where the quorum stands.
    pub fn replicate(&self, shard: u32, op: PbOp) -> Option<watch::Receiver<QuorumState>> {
        let view = self.view();
        let trace = crate::telemetry::traceparent();
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut waits = Vec::new();
        for owner in view.owners(shard).filter(|o| *o != view.me) {
            if let Some(p) = peers.get(owner)
                && let Some(seq) = p.offer(op.clone(), trace.clone())
            {
                waits.push((p.acked(), seq));
            }
        }
        drop(peers);
        let needed = self.write_quorum.saturating_sub(1);
        if needed == 0 {
            return None;
        }
        let (tx, rx) = watch::channel(QuorumState::Pending);
        let timeout = self.quorum_timeout;
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut acks: futures_util::stream::FuturesUnordered<_> = waits
                .into_iter()
                .map(|(mut acked, seq)| async move { acked.wait_for(|a| *a >= seq).await.is_ok() })
                .collect();
            // Resolves as soon as `needed` of the other owners hold the op durably.
            let counting = async {
                let mut ok = 0;
                while let Some(durable) = acks.next().await {
                    ok += usize::from(durable);
                    if ok >= needed {
                        return true;
                    }
                }
                false
            };
            let reached = tokio::time::timeout(timeout, counting).await.unwrap_or(false);
            tx.send_replace(if reached { QuorumState::Reached } else { QuorumState::TimedOut });
        });
        Some(rx)
    }

    /// Records the hand-off state found by a full anti-entropy pass over
    /// `view`. A pass that started before the membership changed is stale and
    /// ignored: the hand-off state always describes the current view.
    pub fn set_handoff(&self, view: &Arc<View>, held: usize, pending: usize) {
        let mut h = self.handoff.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(view, &self.view()) {
            return;
        }
        *h = Some((held, pending));
        self.metrics.handoff_pending.set(pending as i64);
        self.metrics.shards_held.set(held as i64);
    }

    /// Shards held but not owned, and how many of them some owner still lacks
    /// (`None` before the first full anti-entropy pass over the current view).
    pub fn handoff(&self) -> Option<(usize, usize)> {
        *self.handoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spaces served as an edge.
    pub fn edge_spaces(&self) -> Vec<Arc<str>> {
        self.edges.spaces()
    }
}

/// Builds the protobuf op.
pub fn to_pb(space: &str, key: &[u8], value: Option<&Bytes>, stamp: Stamp, origin: u64) -> PbOp {
    PbOp {
        space: space.to_owned(),
        key: Bytes::copy_from_slice(key),
        value: value.cloned().unwrap_or_default(),
        tombstone: value.is_none(),
        wall_ns: stamp.wall_ns,
        counter: stamp.counter,
        actor: stamp.actor,
        origin,
    }
}

/// Validates a protobuf op from a peer (key must be UTF-8 and within bounds).
pub fn from_pb(op: PbOp) -> Result<Op, tonic::Status> {
    if op.space.is_empty() || op.space.len() > 1024 || op.key.len() > 4096 || std::str::from_utf8(&op.key).is_err() {
        return Err(tonic::Status::invalid_argument("op with an empty, oversized or non-UTF-8 space or key"));
    }
    let stamp = Stamp { wall_ns: op.wall_ns, counter: op.counter, actor: op.actor };
    let value = (!op.tombstone).then_some(op.value);
    Ok(Op { space: op.space, key: op.key, value, stamp, origin: op.origin })
}
