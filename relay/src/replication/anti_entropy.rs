//! Anti-entropy: the repair loop that makes replicas of a shard identical
//! whatever was lost on the way (dropped queue entries, partitions, crashes).
//!
//! For every shard this relay owns or still holds data of, and every other
//! current owner, a session compares space digests page by page, then bucket
//! digests of the spaces that differ, then fetches the peer's entries of the
//! differing buckets and pushes its own (through the peer's replication
//! queue, waiting for room). The comparison is `aether_core::sync`.
//!
//! It runs for a peer as soon as its replication stream (re)connects or it
//! overflowed its queue, and for everyone every `--anti-entropy-interval`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_core::Digest;
use aether_core::sync::{
    DEFAULT_BUCKETS, SpaceDiff, bucket_digests, decode_digests, diff_buckets, diff_spaces, entries_page,
};
use aether_proto::v1::mesh_client::MeshClient;
use aether_proto::v1::{FetchEntriesRequest, ShardDigestRequest, SpaceBucketsRequest};
use tonic::Status;
use tonic::transport::Channel;
use tracing::Instrument;

use super::membership::View;
use super::peer::Peer;
use super::{Mesh, from_pb, to_pb};
use crate::node::Relay;

/// How often peers marked for repair are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A push that finds the peer's queue full for this long gives up (the peer
/// is stalled or gone); the next pass tries again.
const PUSH_STALL: Duration = Duration::from_secs(10);

/// What one session moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStats {
    /// Ops fetched from the peer.
    pub fetched: u64,
    /// Ops pushed to the peer.
    pub pushed: u64,
}

/// Runs forever: a full pass at start and every `interval`, and a pass for
/// any peer marked for repair in between.
pub async fn run(relay: Arc<Relay>, mesh: Arc<Mesh>, interval: Duration) {
    let mut last_full: Option<Instant> = None;
    let mut views = mesh.subscribe_view();
    loop {
        tokio::time::sleep(CHECK_EVERY.min(interval)).await;
        // A membership change moves shards: repair (and hand off) at once.
        let moved = views.has_changed().unwrap_or(false);
        if moved {
            views.borrow_and_update();
        }
        if moved || last_full.is_none_or(|t| t.elapsed() >= interval) {
            for p in mesh.peers() {
                p.take_needs_sync();
            }
            pass(&relay, &mesh, None).await;
            last_full = Some(Instant::now());
            continue;
        }
        for p in mesh.peers() {
            if p.is_connected() && p.take_needs_sync() {
                pass(&relay, &mesh, Some(&p.name)).await;
            }
        }
    }
}

/// One pass over every shard this relay owns or holds, with every other
/// owner (or only `only`). Returns what moved.
pub async fn pass(relay: &Arc<Relay>, mesh: &Arc<Mesh>, only: Option<&str>) -> SessionStats {
    let view = mesh.view();
    let started = Instant::now();
    let mut shards: BTreeSet<u32> = view.owned().into_iter().collect();
    for hub in relay.hubs() {
        if !hub.is_cache() {
            shards.insert(view.shard_of(hub.name()));
        }
    }
    let mut total = SessionStats::default();
    // Peers found unreachable in this pass are not tried again for every shard.
    let mut unreachable: BTreeSet<String> = BTreeSet::new();
    // Shards held but no longer owned, and those whose every owner already has it all.
    let (mut held, mut handed_off) = (0usize, 0usize);
    for shard in shards {
        let is_held = !view.is_owner(shard);
        let mut clean = true;
        held += usize::from(is_held);
        for owner in view.owners(shard).filter(|o| *o != view.me && only.is_none_or(|x| x == *o)) {
            if unreachable.contains(owner) {
                clean = false;
                continue;
            }
            let Some(peer) = mesh.peer(owner) else { continue };
            let span = if crate::telemetry::enabled() {
                tracing::info_span!("anti_entropy.session", peer = owner, shard)
            } else {
                tracing::Span::none()
            };
            match session(relay, mesh, &view, shard, &peer).instrument(span).await {
                Ok(s) => {
                    total.fetched += s.fetched;
                    total.pushed += s.pushed;
                    clean &= s.fetched + s.pushed == 0;
                }
                Err(e) => {
                    clean = false;
                    relay.metrics().anti_entropy.with_label_values(&["failed"]).inc();
                    tracing::debug!(peer = owner, shard, error = %e, "anti-entropy session failed");
                    // Unreachable: its other shards would fail the same way; the other owners still sync.
                    if e.code() == tonic::Code::Unavailable {
                        unreachable.insert(owner.to_owned());
                    }
                }
            }
        }
        handed_off += usize::from(is_held && clean);
    }
    if only.is_none() {
        mesh.set_handoff(&view, held, held - handed_off);
    }
    relay.metrics().anti_entropy.with_label_values(&["done"]).inc();
    relay.metrics().anti_entropy_ops.with_label_values(&["fetched"]).inc_by(total.fetched);
    relay.metrics().anti_entropy_ops.with_label_values(&["pushed"]).inc_by(total.pushed);
    if total.fetched + total.pushed > 0 {
        tracing::info!(fetched = total.fetched, pushed = total.pushed, elapsed = ?started.elapsed(), peer = only, "anti-entropy repaired replicas");
    }
    total
}

/// Repairs `shard` between this relay and `peer`, both ways.
pub async fn session(
    relay: &Arc<Relay>,
    mesh: &Arc<Mesh>,
    view: &View,
    shard: u32,
    peer: &Arc<Peer>,
) -> Result<SessionStats, Status> {
    let transport = mesh.transport();
    let mut client = transport.client(&peer.addr)?;
    let mut stats = SessionStats::default();
    let limit = mesh.batch as u32;
    let mut after = String::new();
    loop {
        let req = ShardDigestRequest { shard, shards: view.shards, after: after.clone(), limit };
        let reply = client.shard_digest(transport.request(req)).await?.into_inner();
        let mut remote = Vec::with_capacity(reply.spaces.len());
        for s in reply.spaces {
            let d = Digest::from_bytes(&s.digest).ok_or_else(|| Status::data_loss("malformed space digest"))?;
            remote.push((s.space, d));
        }
        // The range of names this page covers: (after, last] or (after, ∞) on the last page.
        let upper = if reply.more { remote.last().map(|(n, _)| n.clone()) } else { None };
        let local: Vec<(String, Digest)> = relay
            .spaces_of_shard(shard, view.shards)
            .into_iter()
            .filter(|h| **h.name() > *after && upper.as_ref().is_none_or(|u| **h.name() <= **u))
            .map(|h| (h.name().to_string(), h.lock().space.digest()))
            .collect();
        for diff in diff_spaces(&local, &remote) {
            match diff {
                SpaceDiff::LocalOnly(space) => stats.pushed += push(relay, peer, &space, None, mesh.batch).await,
                SpaceDiff::RemoteOnly(space) => stats.fetched += fetch(relay, &mut client, mesh, &space, None).await?,
                SpaceDiff::Differs(space) => {
                    let req = SpaceBucketsRequest { space: space.clone(), buckets: DEFAULT_BUCKETS };
                    let reply = client.space_buckets(transport.request(req)).await?.into_inner();
                    let theirs =
                        decode_digests(&reply.digests).ok_or_else(|| Status::data_loss("malformed bucket digests"))?;
                    let ours = relay
                        .logged_hub(&space)
                        .map(|h| bucket_digests(&h.lock().space, DEFAULT_BUCKETS))
                        .unwrap_or_else(|| vec![Digest::default(); DEFAULT_BUCKETS as usize]);
                    let wanted = diff_buckets(&ours, &theirs);
                    if !wanted.is_empty() {
                        stats.fetched += fetch(relay, &mut client, mesh, &space, Some(&wanted)).await?;
                        stats.pushed += push(relay, peer, &space, Some(&wanted), mesh.batch).await;
                    }
                }
            }
        }
        match upper {
            Some(u) => after = u,
            None => return Ok(stats),
        }
    }
}

/// Fetches the peer's entries of `space` (in `wanted` buckets) and applies them.
async fn fetch(
    relay: &Arc<Relay>,
    client: &mut MeshClient<Channel>,
    mesh: &Arc<Mesh>,
    space: &str,
    wanted: Option<&[u32]>,
) -> Result<u64, Status> {
    let mut after: Option<bytes::Bytes> = None;
    let mut n = 0;
    loop {
        let req = FetchEntriesRequest {
            space: space.to_owned(),
            buckets: DEFAULT_BUCKETS,
            wanted: wanted.map(|w| w.to_vec()).unwrap_or_default(),
            has_after: after.is_some(),
            after_key: after.clone().unwrap_or_default(),
            limit: mesh.batch as u32,
        };
        let reply = client.fetch_entries(mesh.transport().request(req)).await?.into_inner();
        match reply.ops.last() {
            Some(last) => after = Some(last.key.clone()),
            // A peer that says "more" but sends nothing would keep this loop going forever.
            None if reply.more => return Err(Status::data_loss("a page with no entries claims more follow")),
            None => {}
        }
        for op in reply.ops {
            relay.apply(from_pb(op)?, false).map_err(|e| Status::unavailable(e.to_string()))?;
            n += 1;
        }
        if !reply.more {
            return Ok(n);
        }
    }
}

/// Pushes this relay's entries of `space` (in `wanted` buckets) to the peer's
/// replication queue, waiting for room.
async fn push(relay: &Arc<Relay>, peer: &Peer, space: &str, wanted: Option<&[u32]>, batch: usize) -> u64 {
    let Some(hub) = relay.logged_hub(space) else { return 0 };
    let origin = relay.actor();
    let mut after: Option<Vec<u8>> = None;
    let mut n = 0;
    loop {
        let (page, more) = entries_page(&hub.lock().space, DEFAULT_BUCKETS, wanted, after.as_deref(), batch);
        if let Some((k, _)) = page.last() {
            after = Some(k.as_bytes().to_vec());
        }
        for (k, e) in &page {
            let op = to_pb(space, k, e.value.as_ref(), e.stamp, origin);
            if tokio::time::timeout(PUSH_STALL, peer.send(op)).await.is_err() {
                tracing::debug!(peer = %peer.name, space, "anti-entropy push stalled; retrying next pass");
                return n;
            }
            n += 1;
        }
        if !more {
            return n;
        }
    }
}
