//! Outbound replication to one peer: a bounded queue of ops not yet
//! acknowledged, and a task that keeps one bidirectional `Replicate` stream
//! open, sends the queue in batches and drops what the peer reports durable.
//!
//! A slow or unreachable peer fills only its own queue. Past the bound, ops for
//! it are dropped and it is marked for anti-entropy, which will bring it up to
//! date: the peer is never cut off from the mesh, and nobody waits for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_core::outbox::Outbox;
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
    queue: Mutex<Outbox<Item>>,
    wake: Notify,
    room: Notify,
    acked: watch::Sender<u64>,
    connected: AtomicBool,
    dropped: AtomicU64,
    /// Set when ops were dropped or the stream reconnected: anti-entropy must run.
    needs_sync: AtomicBool,
    batch: usize,
}

/// One queued op.
struct Item {
    at: Instant,
    op: PbOp,
    /// Traceparent of the write ("" when not traced).
    trace: String,
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
            queue: Mutex::new(Outbox::new(cap, cap_bytes)),
            wake: Notify::new(),
            room: Notify::new(),
            acked: watch::channel(0).0,
            connected: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            needs_sync: AtomicBool::new(true),
            batch,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox<Item>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` without waiting; returns its sequence number, or `None` when
    /// the queue is full (the op is dropped for this peer and anti-entropy will
    /// deliver it).
    pub fn offer(&self, op: PbOp, trace: String) -> Option<u64> {
        let bytes = prost::Message::encoded_len(&op);
        let seq = self.lock().push(Item { at: Instant::now(), op, trace }, bytes);
        match seq {
            Some(_) => self.wake.notify_one(),
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.needs_sync.store(true, Ordering::Release);
            }
        }
        seq
    }

    /// Queues `op`, waiting for room (anti-entropy pushes use this).
    pub async fn send(&self, op: PbOp) {
        let bytes = prost::Message::encoded_len(&op);
        let mut item = Some(Item { at: Instant::now(), op, trace: String::new() });
        loop {
            let room = self.room.notified();
            {
                let mut q = self.lock();
                if q.has_room(bytes) {
                    q.push(item.take().expect("queued once"), bytes);
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
            pending_ops: q.len(),
            lag_seconds: q.front().map_or(0.0, |i| i.at.elapsed().as_secs_f64()),
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
        self.lock().reconnected();
        loop {
            let unsent = self.lock().has_unsent();
            let wake = self.wake.notified();
            tokio::select! {
                permit = tx.reserve(), if unsent => {
                    let permit = permit.map_err(|_| tonic::Status::unavailable("stream closed"))?;
                    let batch = {
                        let mut q = self.lock();
                        q.next_batch(self.batch).map(|(seq, items)| {
                            let traceparent = items.iter().map(|i| &i.trace).find(|t| !t.is_empty()).cloned().unwrap_or_default();
                            ReplicateBatch { seq, ops: items.into_iter().map(|i| i.op.clone()).collect(), traceparent }
                        })
                    };
                    if let Some(batch) = batch {
                        permit.send(batch);
                    }
                }
                _ = wake, if !unsent => {}
                reply = replies.message() => match reply? {
                    Some(ack) => {
                        let moved = self.lock().ack(ack.durable_seq);
                        if moved {
                            self.acked.send_replace(ack.durable_seq);
                        }
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
