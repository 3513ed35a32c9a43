//! Event streams of a space: [`Watch`] (changes of keys) and
//! [`PresenceStream`] (other sessions' presence). Both are bounded: a
//! consumer that falls more than `watch_buffer` events behind is ended and
//! told so by `lagged()`, instead of silently missing events.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::replica::Change;

/// Another session's presence in a space.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEvent {
    /// The session's id (from its relay).
    pub session: String,
    /// Its colour, like `hsl(210, 70%, 55%)`.
    pub color: String,
    /// Its state (a JSON object); `None` when it left.
    pub state: Option<Value>,
}

/// A bounded broadcast receiver that ends on lag.
struct Lagging<T> {
    inner: Option<BroadcastStream<T>>,
    lagged: Option<u64>,
}

impl<T: Clone + Send + 'static> Lagging<T> {
    fn new(rx: broadcast::Receiver<T>) -> Self {
        Lagging { inner: Some(BroadcastStream::new(rx)), lagged: None }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(item)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                self.lagged = Some(n);
                self.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The changes of a space's keys, from the moment it was created: remote
/// writes, this client's own writes (`Origin::Local`), lost races
/// (`Origin::Superseded`) and refused writes (`Origin::Rejected`). Only ops
/// that change the replica appear, so duplicates (retries, hedges, catchups
/// after failover) never do. Ends when the client closes or on lag.
pub struct Watch {
    inner: Lagging<Change>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("lagged", &self.lagged()).finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn new(rx: broadcast::Receiver<Change>) -> Self {
        Watch { inner: Lagging::new(rx) }
    }

    /// The next change; `None` once the stream ended.
    pub async fn recv(&mut self) -> Option<Change> {
        self.next().await
    }

    /// `Some(n)` when the stream ended because the consumer fell `n` events
    /// behind: take a new `snapshot_and_watch()` to resynchronise.
    pub fn lagged(&self) -> Option<u64> {
        self.inner.lagged
    }
}

impl Stream for Watch {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.inner.poll(cx)
    }
}

/// Presence events of a space (other sessions only; the current ones first
/// after each (re)subscription). Ends when the client closes or on lag.
pub struct PresenceStream {
    inner: Lagging<PresenceEvent>,
}

impl std::fmt::Debug for PresenceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceStream").field("lagged", &self.lagged()).finish_non_exhaustive()
    }
}

impl PresenceStream {
    pub(crate) fn new(rx: broadcast::Receiver<PresenceEvent>) -> Self {
        PresenceStream { inner: Lagging::new(rx) }
    }

    /// The next event; `None` once the stream ended.
    pub async fn recv(&mut self) -> Option<PresenceEvent> {
        self.next().await
    }

    /// `Some(n)` when the stream ended because the consumer fell `n` events behind.
    pub fn lagged(&self) -> Option<u64> {
        self.inner.lagged
    }
}

impl Stream for PresenceStream {
    type Item = PresenceEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceEvent>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Origin;
    use aether_core::Stamp;

    fn change(i: u64) -> Change {
        Change { key: format!("k{i}"), value: None, stamp: Stamp::default(), origin: Origin::Remote }
    }

    #[tokio::test]
    async fn ends_and_reports_on_lag() {
        let (tx, rx) = broadcast::channel(2);
        let mut w = Watch::new(rx);
        tx.send(change(1)).unwrap();
        assert_eq!(w.recv().await, Some(change(1)));
        for i in 0..5 {
            tx.send(change(i)).unwrap();
        }
        assert_eq!(w.recv().await, None);
        assert_eq!(w.lagged(), Some(3));
        assert_eq!(w.recv().await, None);

        let (tx, rx) = broadcast::channel::<Change>(2);
        let mut w = Watch::new(rx);
        drop(tx);
        assert_eq!(w.recv().await, None);
        assert_eq!(w.lagged(), None);
    }
}
