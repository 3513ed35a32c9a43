//! Writes the queue file in the background: the driver hands over the
//! latest encoded queue (coalescing bursts of writes and acks into one file
//! write every [`PERSIST_DELAY`]); a blocking task replaces the file atomically.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::queue::{QueueLock, write_atomic};

/// Longest a change of the queue waits before it is written.
pub(super) const PERSIST_DELAY: Duration = Duration::from_millis(20);

pub(super) struct Persister {
    path: Option<PathBuf>,
    /// Held while the driver runs: one client per queue file.
    _lock: Option<QueueLock>,
    tx: Option<watch::Sender<Option<Arc<Vec<u8>>>>>,
    task: Option<JoinHandle<()>>,
    due: Option<Instant>,
}

impl Persister {
    /// A persister for `path` (`None`: nothing is written), holding its lock.
    pub(super) fn new(path: Option<PathBuf>, lock: Option<QueueLock>) -> Self {
        let Some(path) = path else { return Persister { path: None, _lock: lock, tx: None, task: None, due: None } };
        let (tx, mut rx) = watch::channel::<Option<Arc<Vec<u8>>>>(None);
        let file = path.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(bytes) = rx.borrow_and_update().clone() else { continue };
                let target = file.clone();
                match tokio::task::spawn_blocking(move || write_atomic(&target, &bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(path = %file.display(), "writing the queue file: {e}"),
                    Err(e) => tracing::warn!("queue file writer: {e}"),
                }
            }
        });
        Persister { path: Some(path), _lock: lock, tx: Some(tx), task: Some(task), due: None }
    }

    /// The queue changed: write it within [`PERSIST_DELAY`].
    pub(super) fn mark(&mut self, now: Instant) {
        if self.path.is_some() && self.due.is_none() {
            self.due = Some(now + PERSIST_DELAY);
        }
    }

    /// When the next write is due.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Hands `bytes` (the encoded queue) to the writer.
    pub(super) fn flush(&mut self, bytes: Vec<u8>) {
        self.due = None;
        if let Some(tx) = &self.tx {
            tx.send_replace(Some(Arc::new(bytes)));
        }
    }

    /// Stops the writer and writes `bytes` as the final state, reporting errors.
    pub(super) async fn finish(&mut self, bytes: Vec<u8>) -> Result<(), Error> {
        self.due = None;
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let Some(path) = self.path.clone() else { return Ok(()) };
        let file = path.clone();
        match tokio::task::spawn_blocking(move || write_atomic(&file, &bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::QueueFile { path, reason: e.to_string() }),
            Err(e) => Err(Error::QueueFile { path, reason: e.to_string() }),
        }
    }
}
