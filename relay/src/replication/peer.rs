//! Outbound replication to one peer: a bounded queue of ops not yet
//! acknowledged, and a task that keeps one bidirectional `Replicate` stream
//! open, sends the queue in batches and drops what the peer reports durable.
//!
//! A slow or unreachable peer fills only its own queue. Past the bound, ops for
//! it are dropped and it is marked for anti-entropy, which will bring it up to
//! date: the peer is never cut off from the mesh, and nobody waits for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_proto::v1::{Op as PbOp, ReplicateBatch};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::transport::MeshTransport;

/// Replication state for one peer.
pub struct Peer {
    /// Member name.
    pub name: String,
    /// Mesh address it was created for.
    pub addr: String,
    queue: Mutex<Queue>,
    wake: Notify,
    room: Notify,
    acked: watch::Sender<u64>,
    connected: AtomicBool,
    dropped: AtomicU64,
    /// Set when ops were dropped or the stream reconnected: anti-entropy must run.
    needs_sync: AtomicBool,
    cap: usize,
    cap_bytes: usize,
    batch: usize,
}

struct Queue {
    /// Encoded size of the queued ops.
    bytes: usize,
    /// (sequence number, queued at, op, traceparent of the write or "").
    ops: VecDeque<(u64, Instant, PbOp, String)>,
    next_seq: u64,
}

/// What `/v1/admin/shards` and `/metrics` show about a peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Member name.
    pub name: String,
    /// Mesh address.
    pub addr: String,
    /// The replication stream is open.
    pub connected: bool,
    /// Ops sent or queued but not yet durable at the peer.
    pub pending_ops: usize,
    /// Age of the oldest such op (replication lag), seconds.
    pub lag_seconds: f64,
    /// Ops dropped for this peer because its queue was full (repaired by anti-entropy).
    pub dropped_ops: u64,
}

impl Peer {
    /// A peer with a queue of at most `cap` ops and `cap_bytes` encoded bytes,
    /// sending batches of up to `batch` ops.
    pub fn new(name: String, addr: String, cap: usize, cap_bytes: usize, batch: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            addr,
            queue: Mutex::new(Queue { bytes: 0, ops: VecDeque::new(), next_seq: 1 }),
            wake: Notify::new(),
            room: Notify::new(),
            acked: watch::channel(0).0,
            connected: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            needs_sync: AtomicBool::new(true),
            cap,
            cap_bytes,
            batch,
        })
    }

    fn has_room(&self, q: &Queue, bytes: usize) -> bool {
        q.ops.len() < self.cap && (q.ops.is_empty() || q.bytes + bytes <= self.cap_bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` without waiting; returns its sequence number, or `None` when
    /// the queue is full (the op is dropped for this peer and anti-entropy will
    /// deliver it).
    pub fn offer(&self, op: PbOp, trace: String) -> Option<u64> {
        let bytes = prost::Message::encoded_len(&op);
        let mut q = self.lock();
        if !self.has_room(&q, bytes) {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.needs_sync.store(true, Ordering::Release);
            return None;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.bytes += bytes;
        q.ops.push_back((seq, Instant::now(), op, trace));
        drop(q);
        self.wake.notify_one();
        Some(seq)
    }

    /// Queues `op`, waiting for room (anti-entropy pushes use this).
    pub async fn send(&self, op: PbOp) {
        let bytes = prost::Message::encoded_len(&op);
        let mut op = Some(op);
        loop {
            let room = self.room.notified();
            {
                let mut q = self.lock();
                if self.has_room(&q, bytes) {
                    let seq = q.next_seq;
                    q.next_seq += 1;
                    q.bytes += bytes;
                    q.ops.push_back((seq, Instant::now(), op.take().expect("sent once"), String::new()));
                    drop(q);
                    self.wake.notify_one();
                    return;
                }
            }
            room.await;
        }
    }

    /// Highest sequence number the peer holds durably.
    pub fn acked(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// True while the stream is open.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Takes the "anti-entropy needed" mark.
    pub fn take_needs_sync(&self) -> bool {
        self.needs_sync.swap(false, Ordering::AcqRel)
    }

    /// Current status.
    pub fn status(&self) -> PeerStatus {
        let q = self.lock();
        PeerStatus {
            name: self.name.clone(),
            addr: self.addr.clone(),
            connected: self.is_connected(),
            pending_ops: q.ops.len(),
            lag_seconds: q.ops.front().map_or(0.0, |(_, t, _, _)| t.elapsed().as_secs_f64()),
            dropped_ops: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Keeps a `Replicate` stream to the peer open for as long as the task runs,
    /// reconnecting with jittered exponential backoff. Every (re)connection
    /// marks the peer for anti-entropy.
    pub async fn run(self: Arc<Self>, transport: MeshTransport) {
        let mut backoff = Backoff::new();
        loop {
            match self.stream_once(&transport).await {
                Ok(()) => backoff.reset(),
                Err(e) => tracing::debug!(peer = %self.name, error = %e, "replication stream ended"),
            }
            self.connected.store(false, Ordering::Release);
            tokio::time::sleep(backoff.delay()).await;
        }
    }

    async fn stream_once(&self, transport: &MeshTransport) -> Result<(), tonic::Status> {
        let mut client = transport.client(&self.addr)?;
        let (tx, rx) = mpsc::channel::<ReplicateBatch>(4);
        let mut replies = client.replicate(transport.request(ReceiverStream::new(rx))).await?.into_inner();
        self.connected.store(true, Ordering::Release);
        self.needs_sync.store(true, Ordering::Release);
        tracing::info!(peer = %self.name, addr = %self.addr, "replication stream open");
        // Everything not acknowledged is (re)sent on a new stream.
        let mut sent_upto = *self.acked.borrow();
        loop {
            let batch = {
                let q = self.lock();
                let start = q.ops.partition_point(|(s, _, _, _)| *s <= sent_upto);
                let items = q.ops.iter().skip(start).take(self.batch);
                let traceparent =
                    items.clone().map(|(_, _, _, t)| t).find(|t| !t.is_empty()).cloned().unwrap_or_default();
                let ops: Vec<PbOp> = items.map(|(_, _, op, _)| op.clone()).collect();
                let last = q.ops.get(start + ops.len().saturating_sub(1)).map(|(s, _, _, _)| *s);
                (!ops.is_empty()).then(|| ReplicateBatch { seq: last.unwrap_or(0), ops, traceparent })
            };
            let wake = self.wake.notified();
            tokio::select! {
                permit = tx.reserve(), if batch.is_some() => {
                    let permit = permit.map_err(|_| tonic::Status::unavailable("stream closed"))?;
                    let batch = batch.expect("guarded");
                    sent_upto = batch.seq;
                    permit.send(batch);
                }
                _ = wake, if batch.is_none() => {}
                reply = replies.message() => match reply? {
                    Some(ack) => {
                        let mut q = self.lock();
                        while q.ops.front().is_some_and(|(s, _, _, _)| *s <= ack.durable_seq) {
                            if let Some((_, _, op, _)) = q.ops.pop_front() {
                                q.bytes -= prost::Message::encoded_len(&op);
                            }
                        }
                        drop(q);
                        self.acked.send_if_modified(|a| {
                            let changed = ack.durable_seq > *a;
                            *a = (*a).max(ack.durable_seq);
                            changed
                        });
                        self.room.notify_waiters();
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

/// Exponential backoff from 50 ms to 5 s with full jitter.
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// Back to the shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay.
    pub fn delay(&mut self) -> Duration {
        let cap = Duration::from_millis(50).saturating_mul(1 << self.attempt.min(7)).min(Duration::from_secs(5));
        self.attempt += 1;
        cap.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(value_bytes: usize) -> PbOp {
        PbOp { space: "s".into(), key: "k".into(), value: vec![0u8; value_bytes].into(), ..Default::default() }
    }

    #[test]
    fn the_queue_is_bounded_in_ops_and_bytes_and_overflow_marks_the_peer() {
        let p = Peer::new("p".into(), "127.0.0.1:1".into(), 3, 1 << 20, 16);
        p.take_needs_sync();
        assert_eq!((p.offer(op(1), String::new()), p.offer(op(1), String::new())), (Some(1), Some(2)));
        assert_eq!(p.offer(op(1), String::new()), Some(3));
        assert_eq!(p.offer(op(1), String::new()), None, "a fourth op is over the op bound");
        assert!(p.take_needs_sync(), "overflow asks for anti-entropy");
        assert_eq!(p.status().dropped_ops, 1);

        let p = Peer::new("p".into(), "127.0.0.1:1".into(), 100, 2000, 16);
        assert!(p.offer(op(1500), String::new()).is_some());
        assert!(p.offer(op(1500), String::new()).is_none(), "over the byte bound");
        // An op larger than the whole bound still goes into an empty queue (never stuck).
        let p = Peer::new("p".into(), "127.0.0.1:1".into(), 100, 1000, 16);
        assert!(p.offer(op(5000), String::new()).is_some());
        assert_eq!(p.status().pending_ops, 1);
    }
}
