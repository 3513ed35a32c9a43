//! [`SpaceHandle`]: reads from the local replica of a space, writes stamped
//! by this client, change and presence streams.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use aether_core::Stamp;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use crate::client::{ClientInner, Status};
use crate::error::Error;
use crate::shared::{Command, Mutation, SpaceCell, SyncState, lock};
use crate::stream::{PresenceStream, Watch};

/// A write acknowledged by a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The stamp of the write's (first) op.
    pub stamp: Stamp,
    /// The relay whose ack came first (its `welcome` name) and its URL.
    pub relay: String,
    /// The endpoint URL that acknowledged.
    pub url: String,
    /// From the moment the write was queued to its first ack.
    pub latency: Duration,
    /// An op lost its LWW race (the replica now holds the winner).
    pub superseded: bool,
    /// False when the relay answered `quorum-timeout`: durable there, not
    /// yet at the write quorum (it will replicate).
    pub quorum: bool,
}

/// A queued write: resolves when a relay acknowledges it (or refuses it).
/// Dropping it does not cancel the write.
pub struct WriteTicket {
    stamps: Vec<Stamp>,
    done: oneshot::Receiver<Result<Acked, Error>>,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTicket").field("stamps", &self.stamps).finish_non_exhaustive()
    }
}

impl WriteTicket {
    /// The stamps given to the write's ops.
    pub fn stamps(&self) -> &[Stamp] {
        &self.stamps
    }
}

impl Future for WriteTicket {
    type Output = Result<Acked, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.done).poll(cx).map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

/// A space of a [`crate::Client`]: subscribed when the handle is first made,
/// resubscribed (with resume info) after every reconnect or failover.
/// Cheap to clone.
#[derive(Clone)]
pub struct SpaceHandle {
    pub(crate) client: Arc<ClientInner>,
    pub(crate) cell: Arc<SpaceCell>,
}

impl std::fmt::Debug for SpaceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceHandle").field("name", &self.name()).finish_non_exhaustive()
    }
}

impl SpaceHandle {
    /// The space's name.
    pub fn name(&self) -> &str {
        &self.cell.name
    }

    /// Waits until the space caught up with a relay once (its first catchup
    /// completed), so reads see the relay's state. Fails when the relay
    /// refused the subscription (e.g. `too-many-spaces` after a failover),
    /// the space was unsubscribed, or the client closed.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.cell.synced.subscribe();
        let mut status = self.client.shared.status.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                SyncState::Synced => return Ok(()),
                SyncState::Failed(e) => return Err(e.clone().into()),
                SyncState::Closed => return Err(Error::Closed),
                SyncState::Unsubscribed => return Err(Error::Unsubscribed(self.cell.name.clone())),
                SyncState::Pending => {}
            }
            if *status.borrow_and_update() == Status::Closed {
                return Err(Error::Closed);
            }
            tokio::select! {
                r = rx.changed() => r.map_err(|_| Error::Closed)?,
                r = status.changed() => r.map_err(|_| Error::Closed)?,
            }
        }
    }

    /// True while the replica follows a relay: a catchup completed, and the
    /// subscription was not refused since (nor the space unsubscribed).
    pub fn is_synced(&self) -> bool {
        matches!(*self.cell.synced.borrow(), SyncState::Synced)
    }

    /// Stops following the space: unsubscribed from the relay (once its
    /// queued writes are acknowledged), not resubscribed after reconnects,
    /// its presence left. The replica keeps what it has (reads still work,
    /// writes still go out); [`crate::Client::space`] follows it again,
    /// resuming from it.
    pub async fn unsubscribe(&self) -> Result<(), Error> {
        self.cell.subscribed.store(false, Ordering::Release);
        self.cell.set_synced(SyncState::Unsubscribed);
        let (reply, done) = oneshot::channel();
        self.client.send(Command::Unsubscribe { space: self.cell.clone(), reply }).await?;
        done.await.map_err(|_| Error::Closed)
    }

    /// Sets `key` to `value` (as JSON) and waits for the ack.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<Acked, Error> {
        self.set_nowait(key, value).await?.await
    }

    /// Sets `key` to `value`: stamps it, applies it to the replica (raising
    /// an `Origin::Local` change), queues it and sends it; returns once
    /// queued. Await the ticket for the ack. Fails with `Error::QueueFull`
    /// when the offline queue is at its bound.
    pub async fn set_nowait<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<WriteTicket, Error> {
        let bytes = serde_json::to_vec(value).map_err(Error::Encode)?;
        let parsed: Value = serde_json::from_slice(&bytes).map_err(Error::Encode)?;
        self.write(vec![Mutation { key: key.to_string(), value: Some((Bytes::from(bytes), parsed)) }]).await
    }

    /// Deletes `key` and waits for the ack.
    pub async fn delete(&self, key: &str) -> Result<Acked, Error> {
        self.delete_nowait(key).await?.await
    }

    /// Deletes `key` (a tombstone); returns once queued.
    pub async fn delete_nowait(&self, key: &str) -> Result<WriteTicket, Error> {
        self.write(vec![Mutation { key: key.to_string(), value: None }]).await
    }

    /// Several sets (`Some`) and deletes (`None`) as one write, applied
    /// atomically by the relay; returns once queued. Each key at most once
    /// (`Error::InvalidOp` otherwise).
    pub async fn write_batch<T: Serialize>(&self, ops: &[(&str, Option<T>)]) -> Result<WriteTicket, Error> {
        let mut muts = Vec::with_capacity(ops.len());
        for (key, value) in ops {
            let value = match value {
                Some(v) => {
                    let bytes = serde_json::to_vec(v).map_err(Error::Encode)?;
                    let parsed: Value = serde_json::from_slice(&bytes).map_err(Error::Encode)?;
                    Some((Bytes::from(bytes), parsed))
                }
                None => None,
            };
            muts.push(Mutation { key: key.to_string(), value });
        }
        self.write(muts).await
    }

    async fn write(&self, ops: Vec<Mutation>) -> Result<WriteTicket, Error> {
        let (reply, rx) = oneshot::channel();
        self.client.send(Command::Write { space: self.cell.clone(), ops, reply }).await?;
        let queued = rx.await.map_err(|_| Error::Closed)??;
        Ok(WriteTicket { stamps: queued.stamps, done: queued.done })
    }

    /// The value of `key` in the local replica, deserialized; `None` when
    /// absent or deleted.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let Some(raw) = self.get_raw(key) else { return Ok(None) };
        serde_json::from_slice(&raw).map(Some).map_err(|source| Error::Decode { key: key.to_string(), source })
    }

    /// The JSON text of `key` in the local replica.
    pub fn get_raw(&self, key: &str) -> Option<Bytes> {
        lock(&self.cell.state).replica.value(key).cloned()
    }

    /// The stamp of `key`'s entry (tombstones included).
    pub fn stamp(&self, key: &str) -> Option<Stamp> {
        lock(&self.cell.state).replica.entry(key).map(|e| e.stamp)
    }

    /// Every live key and its value.
    pub fn snapshot(&self) -> BTreeMap<String, Value> {
        lock(&self.cell.state).replica.snapshot()
    }

    /// Changes from now on (a stream that ends at once when the client is closed).
    pub fn watch(&self) -> Watch {
        let state = lock(&self.cell.state);
        Watch::new(self.live(&state.changes))
    }

    /// The current state and the changes after it, with no gap and no overlap.
    pub fn snapshot_and_watch(&self) -> (BTreeMap<String, Value>, Watch) {
        let state = lock(&self.cell.state);
        (state.replica.snapshot(), Watch::new(self.live(&state.changes)))
    }

    /// A receiver of `tx`, taken under the space's lock, or an ended one once
    /// the client is closed. The driver sets `Closed` before it drops the
    /// senders under that lock, so a receiver taken before then ends with
    /// them and none is taken from the senders that replace them.
    fn live<T: Clone>(&self, tx: &broadcast::Sender<T>) -> broadcast::Receiver<T> {
        let rx = tx.subscribe();
        if *self.client.shared.status.borrow() == Status::Closed {
            return broadcast::channel(1).1;
        }
        rx
    }

    /// Shares this client's presence (a JSON object) with the space's other
    /// sessions; kept and re-sent after reconnects.
    pub async fn presence<T: Serialize + ?Sized>(&self, state: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(state).map_err(Error::Encode)?;
        if !bytes.starts_with(b"{") {
            return Err(Error::InvalidOp { key: String::new(), reason: "presence state must be a JSON object".into() });
        }
        self.want_presence();
        self.client.send(Command::Presence { space: self.cell.clone(), state: bytes.into() }).await
    }

    /// Leaves the space's presence.
    pub async fn leave_presence(&self) -> Result<(), Error> {
        self.client.send(Command::Presence { space: self.cell.clone(), state: Bytes::new() }).await
    }

    /// Presence events of the other sessions (subscribes with `presence: true`).
    pub fn presence_events(&self) -> PresenceStream {
        let stream = PresenceStream::new(self.live(&lock(&self.cell.state).presence));
        self.want_presence();
        stream
    }

    fn want_presence(&self) {
        if !self.cell.presence_wanted.swap(true, Ordering::Relaxed) {
            self.client.shared.spaces_changed.notify_one();
        }
    }
}
