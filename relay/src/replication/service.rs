//! The `aether.v1.Mesh` gRPC service: what a relay answers to its peers and
//! to edges. Every call is authenticated first (mesh token) and every input
//! is bounded (message size, page sizes, bucket counts).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use aether_core::sync::{self, MAX_BUCKETS};
use aether_proto::v1::mesh_server::Mesh as MeshRpc;
use aether_proto::v1::{
    EdgeEvent, EdgeRequest, FetchEntriesReply, FetchEntriesRequest, LostWrite, OpBatch, ReplicateAck, ReplicateBatch,
    ShardDigestReply, ShardDigestRequest, SpaceBucketsReply, SpaceBucketsRequest, SpaceDigest, SpaceSnapshot,
    StatusReply, StatusRequest, WriteAcks, WriteError, edge_event, edge_request,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::transport::MeshAuth;
use super::{QuorumState, from_pb, to_pb};
use crate::fanout::{Outbound, Subscriber};
use crate::node::{Applied, Relay};
use crate::space::SpaceHub;

/// Items buffered towards one peer or edge stream.
const STREAM_BUFFER: usize = 64;
/// Forwarded writes of one edge waiting for the disk or the quorum; beyond,
/// writes are refused with `overloaded` (before they are applied).
const MAX_EDGE_IN_FLIGHT: usize = 65_536;

/// Replication batches of one peer applied while earlier ones wait for the disk.
const REPLICATE_IN_FLIGHT: usize = 16;

/// Applies one replication batch; returns the WAL record that must be durable
/// before it is acknowledged. Invalid ops are skipped and counted: refusing
/// the batch would stall the peer's stream forever (it resends it).
fn apply_batch(relay: &Relay, peer: &str, ops: Vec<aether_proto::v1::Op>, traceparent: &str) -> Result<u64, Status> {
    let span = crate::telemetry::enabled().then(|| {
        let span = tracing::info_span!("replica.apply", %peer, ops = ops.len());
        crate::telemetry::set_parent(&span, traceparent);
        span
    });
    let _entered = span.as_ref().map(|s| s.enter());
    let mut need = 0;
    for op in ops {
        let op = match from_pb(op) {
            Ok(op) => op,
            Err(e) => {
                relay.metrics().mesh_ops.with_label_values(&["invalid"]).inc();
                tracing::warn!(%peer, error = %e.message(), "skipping an invalid replicated op");
                continue;
            }
        };
        need = need.max(relay.apply(op, false).map_err(unavailable)?.lsn);
    }
    relay.metrics().mesh_ops.with_label_values(&["replicate"]).inc();
    Ok(need)
}

/// The gRPC service of one relay.
pub struct MeshService {
    relay: Arc<Relay>,
    auth: MeshAuth,
    /// Most ops per page or batch.
    batch: usize,
    /// Ops queued for one edge subscription before the edge is cut off as too slow.
    edge_queue: usize,
}

impl MeshService {
    /// The service for `relay`.
    pub fn new(relay: Arc<Relay>, auth: MeshAuth, batch: usize, edge_queue: usize) -> Self {
        Self { relay, auth, batch, edge_queue }
    }

    fn shards(&self) -> Result<u32, Status> {
        self.relay.mesh().map(|m| m.view().shards).ok_or_else(|| Status::unavailable("not in a mesh"))
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl MeshRpc for MeshService {
    type ReplicateStream = ReceiverStream<Result<ReplicateAck, Status>>;
    type EdgeStream = ReceiverStream<Result<EdgeEvent, Status>>;

    async fn replicate(
        &self,
        req: Request<Streaming<ReplicateBatch>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let peer = self.auth.check(&req)?;
        let mut inbound = req.into_inner();
        let relay = self.relay.clone();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut durable = relay.durable();
            // Batches applied but not yet durable, in order: (WAL record to wait for, batch seq).
            // Reading goes on while the disk syncs, so one fdatasync covers several batches.
            let mut waiting: VecDeque<(u64, u64)> = VecDeque::new();
            let failed = loop {
                tokio::select! {
                    msg = inbound.message(), if waiting.len() < REPLICATE_IN_FLIGHT => {
                        let batch = match msg {
                            Ok(Some(b)) => b,
                            Ok(None) => return,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "replication stream from peer ended");
                                return;
                            }
                        };
                        match apply_batch(&relay, &peer, batch.ops, &batch.traceparent) {
                            Ok(need) => waiting.push_back((need, batch.seq)),
                            Err(e) => break e,
                        }
                    }
                    changed = durable.changed(), if !waiting.is_empty() => {
                        if changed.is_err() {
                            break Status::unavailable("the write-ahead log closed");
                        }
                    }
                }
                // Acknowledge, in order, every batch the WAL now covers (one ack for the newest).
                let d = *durable.borrow_and_update();
                if d.failed {
                    break Status::unavailable("the write-ahead log failed");
                }
                let mut acked = None;
                while waiting.front().is_some_and(|(need, _)| *need <= d.lsn) {
                    acked = waiting.pop_front().map(|(_, seq)| seq);
                }
                if let Some(seq) = acked
                    && tx.send(Ok(ReplicateAck { durable_seq: seq })).await.is_err()
                {
                    return;
                }
            };
            tracing::warn!(%peer, error = %failed, "refusing replication batch");
            let _ = tx.send(Err(failed)).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn shard_digest(&self, req: Request<ShardDigestRequest>) -> Result<Response<ShardDigestReply>, Status> {
        let peer = self.auth.check(&req)?;
        let span = crate::telemetry::enabled().then(|| {
            let span = tracing::info_span!("anti_entropy.digest", %peer, shard = req.get_ref().shard);
            crate::telemetry::set_parent(&span, &crate::telemetry::extract(&req));
            span
        });
        let _entered = span.as_ref().map(|s| s.enter());
        let req = req.into_inner();
        let shards = self.shards()?;
        if req.shards != shards {
            return Err(Status::failed_precondition(format!(
                "shard count mismatch: caller has {}, this relay has {shards}",
                req.shards
            )));
        }
        if req.shard >= shards {
            return Err(Status::invalid_argument("no such shard"));
        }
        let limit = (req.limit as usize).clamp(1, self.batch);
        let hubs = self.relay.spaces_of_shard(req.shard, shards);
        let after: Vec<&Arc<SpaceHub>> = hubs.iter().filter(|h| **h.name() > *req.after).collect();
        let more = after.len() > limit;
        let spaces = after
            .into_iter()
            .take(limit)
            .map(|h| SpaceDigest {
                space: h.name().to_string(),
                digest: h.lock().space.digest().to_bytes().to_vec().into(),
            })
            .collect();
        Ok(Response::new(ShardDigestReply { spaces, more }))
    }

    async fn space_buckets(&self, req: Request<SpaceBucketsRequest>) -> Result<Response<SpaceBucketsReply>, Status> {
        self.auth.check(&req)?;
        let req = req.into_inner();
        if req.buckets == 0 || req.buckets > MAX_BUCKETS {
            return Err(Status::invalid_argument(format!("buckets must be 1..={MAX_BUCKETS}")));
        }
        let digests = match self.relay.logged_hub(&req.space) {
            Some(hub) => sync::bucket_digests(&hub.lock().space, req.buckets),
            None => vec![Default::default(); req.buckets as usize],
        };
        Ok(Response::new(SpaceBucketsReply { digests: sync::encode_digests(&digests).into() }))
    }

    async fn fetch_entries(&self, req: Request<FetchEntriesRequest>) -> Result<Response<FetchEntriesReply>, Status> {
        self.auth.check(&req)?;
        let req = req.into_inner();
        if req.buckets == 0 || req.buckets > MAX_BUCKETS || req.wanted.len() > MAX_BUCKETS as usize {
            return Err(Status::invalid_argument(format!("buckets must be 1..={MAX_BUCKETS}")));
        }
        let Some(hub) = self.relay.logged_hub(&req.space) else {
            return Ok(Response::new(FetchEntriesReply { ops: Vec::new(), more: false }));
        };
        let limit = (req.limit as usize).clamp(1, self.batch);
        let wanted = (!req.wanted.is_empty()).then_some(req.wanted.as_slice());
        let after = req.has_after.then_some(&req.after_key[..]);
        let (entries, more) = sync::entries_page(&hub.lock().space, req.buckets, wanted, after, limit);
        let origin = self.relay.actor();
        let ops = entries.iter().map(|(k, e)| to_pb(&req.space, k, e.value.as_ref(), e.stamp, origin)).collect();
        Ok(Response::new(FetchEntriesReply { ops, more }))
    }

    async fn edge(&self, req: Request<Streaming<EdgeRequest>>) -> Result<Response<Self::EdgeStream>, Status> {
        let edge = self.auth.check(&req)?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = EdgeSession { relay: self.relay.clone(), tx, batch: self.batch, queue: self.edge_queue };
        tokio::spawn(session.run(edge, inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.auth.check(&req)?;
        let mesh = self.relay.mesh().ok_or_else(|| Status::unavailable("not in a mesh"))?;
        let v = mesh.view();
        Ok(Response::new(StatusReply {
            member: v.me.clone(),
            shards: v.shards,
            replication: v.replication as u32,
            members: v.members.keys().cloned().collect(),
        }))
    }
}

/// One edge's stream, owner side.
struct EdgeSession {
    relay: Arc<Relay>,
    tx: mpsc::Sender<Result<EdgeEvent, Status>>,
    batch: usize,
    queue: usize,
}

struct EdgeSub {
    hub: Arc<SpaceHub>,
    conn: u64,
    task: JoinHandle<()>,
}

impl EdgeSession {
    async fn run(self, edge: String, mut inbound: Streaming<EdgeRequest>) {
        let mut subs: HashMap<String, EdgeSub> = HashMap::new();
        let mut acks = FuturesUnordered::new();
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let kind = match msg {
                        Ok(Some(EdgeRequest { kind: Some(kind) })) => kind,
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%edge, error = %e, "edge stream ended");
                            break;
                        }
                    };
                    match kind {
                        edge_request::Kind::Subscribe(space) => {
                            if !subs.contains_key(&space) && !self.subscribe(&space, &mut subs).await {
                                break;
                            }
                        }
                        edge_request::Kind::Unsubscribe(space) => {
                            if let Some(s) = subs.remove(&space) {
                                s.task.abort();
                                self.relay.release(&s.hub, s.conn);
                            }
                        }
                        edge_request::Kind::Write(w) => {
                            let id = w.id;
                            if acks.len() >= MAX_EDGE_IN_FLIGHT {
                                let message = "too many writes from this edge wait for the disk or the quorum".to_string();
                                let err = WriteError { id, message, code: "overloaded".into() };
                                if self.tx.send(Ok(event(edge_event::Kind::Error(err)))).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            let span = crate::telemetry::enabled().then(|| {
                                let span = tracing::info_span!("owner.apply", %edge);
                                crate::telemetry::set_parent(&span, &w.traceparent);
                                span
                            });
                            let entered = span.as_ref().map(|s| s.enter());
                            let applied = w
                                .op
                                .ok_or_else(|| Status::invalid_argument("write without op"))
                                .and_then(from_pb)
                                .and_then(|op| self.relay.apply(op, true).map_err(unavailable));
                            drop(entered);
                            self.relay.metrics().mesh_ops.with_label_values(&["forwarded"]).inc();
                            match applied {
                                Ok(a) => acks.push(wait_acked(self.relay.clone(), id, a)),
                                Err(e) => {
                                    let err = WriteError { id, message: e.message().to_owned(), code: "unavailable".into() };
                                    if self.tx.send(Ok(event(edge_event::Kind::Error(err)))).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
                Some((id, result)) = acks.next(), if !acks.is_empty() => {
                    let kind = match result {
                        Ok(beaten_by) => {
                            let lost = beaten_by.into_iter().map(|w| LostWrite { id, winner: Some(w) }).collect();
                            edge_event::Kind::Acks(WriteAcks { ids: vec![id], lost })
                        }
                        Err((code, message)) => edge_event::Kind::Error(WriteError { id, message, code: code.into() }),
                    };
                    if self.tx.send(Ok(event(kind))).await.is_err() {
                        break;
                    }
                }
            }
        }
        for (_, s) in subs {
            s.task.abort();
            self.relay.release(&s.hub, s.conn);
        }
    }

    /// Subscribes the edge to `space`: its entries in pages, then live ops.
    async fn subscribe(&self, space: &str, subs: &mut HashMap<String, EdgeSub>) -> bool {
        let (sub, mut rx) = Subscriber::new(self.relay.next_conn_id(), self.queue);
        let conn = sub.conn;
        let kill = sub.kill().clone();
        // A hub dropped from the registry between lookup and join is looked up again.
        let (hub, entries) = loop {
            let hub = self.relay.owner_hub(space);
            if let Some(entries) = hub.join_entries(sub.clone()) {
                break (hub, entries);
            }
        };
        let origin = self.relay.actor();
        let mut pages = entries.chunks(self.batch).peekable();
        if pages.peek().is_none() {
            let snap = SpaceSnapshot { space: space.to_owned(), ops: Vec::new(), last: true };
            if self.tx.send(Ok(event(edge_event::Kind::Snapshot(snap)))).await.is_err() {
                self.relay.release(&hub, conn);
                return false;
            }
        }
        while let Some(page) = pages.next() {
            let ops = page.iter().map(|(k, e)| to_pb(space, k, e.value.as_ref(), e.stamp, origin)).collect();
            let snap = SpaceSnapshot { space: space.to_owned(), ops, last: pages.peek().is_none() };
            if self.tx.send(Ok(event(edge_event::Kind::Snapshot(snap)))).await.is_err() {
                self.relay.release(&hub, conn);
                return false;
            }
        }
        let tx = self.tx.clone();
        let name = space.to_owned();
        let batch = self.batch;
        let task = tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    item = rx.recv() => item,
                    _ = kill.wait() => None,
                };
                let Some(first) = first else { break };
                let mut ops = Vec::new();
                let mut item = Some(first);
                while let Some(it) = item.take() {
                    if let Outbound::Op(ev) = it {
                        ops.push(to_pb(&name, &ev.key, ev.value.as_ref(), ev.stamp, origin));
                    }
                    if ops.len() < batch {
                        item = rx.try_recv().ok();
                    }
                }
                if !ops.is_empty() && tx.send(Ok(event(edge_event::Kind::Ops(OpBatch { ops })))).await.is_err() {
                    return;
                }
            }
            if kill.is_triggered() {
                // The edge lost ops: end its stream; it reconnects and resubscribes from a snapshot.
                let _ = tx.send(Err(Status::resource_exhausted("edge subscription fell behind"))).await;
            }
        });
        subs.insert(space.to_owned(), EdgeSub { hub, conn, task });
        true
    }
}

fn event(kind: edge_event::Kind) -> EdgeEvent {
    EdgeEvent { kind: Some(kind) }
}

/// Resolves when a forwarded write is durable here and at the write quorum;
/// `Ok` holds the op that beat it, if it lost its LWW race. On failure: the
/// client-facing error code and a message.
async fn wait_acked(
    relay: Arc<Relay>,
    id: u64,
    applied: Applied,
) -> (u64, Result<Option<aether_proto::v1::Op>, (&'static str, String)>) {
    let mut durable = relay.durable();
    match durable.wait_for(|d| d.lsn >= applied.lsn || d.failed).await {
        Ok(d) if !d.failed => {}
        _ => return (id, Err(("unavailable", "the owner's write-ahead log failed".into()))),
    }
    if let Some(mut q) = applied.quorum {
        match q.wait_for(|q| *q != QuorumState::Pending).await.map(|q| *q) {
            Ok(QuorumState::Reached) => {}
            _ => {
                let msg =
                    "the write is applied and durable at its owner but not yet at the write quorum; it will replicate";
                return (id, Err(("quorum-timeout", msg.into())));
            }
        }
    }
    // The edge knows the space and key: the winner carries its value and stamp.
    let beaten_by = applied.beaten_by.map(|e| super::to_pb("", b"", e.value.as_ref(), e.stamp, 0));
    (id, Ok(beaten_by))
}
