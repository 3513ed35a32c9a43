//! State shared between the public handles and the driver task, and the
//! commands handles send it. The driver is the only writer of replicas,
//! the clock and the queue; handles read replicas under a short lock (never
//! held across an `.await`) and subscribe to their event channels under the
//! same lock, so a snapshot and a watch taken together have no gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, broadcast, oneshot, watch};

use crate::client::Status;
use crate::error::Error;
use crate::replica::{Change, Replica};
use crate::space::Acked;
use crate::stream::PresenceEvent;

/// Locks a mutex, ignoring poisoning (state stays consistent: every critical
/// section is a handful of non-panicking map operations).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a space has caught up with a relay yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncState {
    /// Subscribed or waiting for a relay.
    Pending,
    /// A catchup completed at least once.
    Synced,
    /// The relay refused the subscription.
    Failed(Refusal),
    /// The client closed before the space caught up.
    Closed,
    /// The space was unsubscribed (`Client::space` subscribes it again).
    Unsubscribed,
}

/// A relay's refusal, cloneable (for `SyncState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub relay: String,
    pub code: String,
    pub message: String,
}

impl From<Refusal> for Error {
    fn from(e: Refusal) -> Error {
        Error::Refused { relay: e.relay, code: e.code, message: e.message }
    }
}

/// One space: its replica and event channels.
pub(crate) struct SpaceCell {
    pub name: String,
    /// Creation order: spaces are (re)subscribed in it, within `maxSpaces`.
    pub order: u64,
    pub state: Mutex<SpaceState>,
    pub synced: watch::Sender<SyncState>,
    /// A handle asked for presence (events or its own state).
    pub presence_wanted: AtomicBool,
    /// The space is to be kept subscribed (false after `unsubscribe`; its
    /// queued writes still get it subscribed until they are settled).
    pub subscribed: AtomicBool,
}

/// What the driver mutates and handles read.
pub(crate) struct SpaceState {
    pub replica: Replica,
    pub changes: broadcast::Sender<Change>,
    pub presence: broadcast::Sender<PresenceEvent>,
}

impl SpaceCell {
    pub fn new(name: String, buffer: usize, order: u64) -> SpaceCell {
        SpaceCell {
            name,
            order,
            state: Mutex::new(SpaceState {
                replica: Replica::new(),
                changes: broadcast::channel(buffer).0,
                presence: broadcast::channel(buffer).0,
            }),
            synced: watch::channel(SyncState::Pending).0,
            presence_wanted: AtomicBool::new(false),
            subscribed: AtomicBool::new(true),
        }
    }

    pub fn wants_presence(&self) -> bool {
        self.presence_wanted.load(Ordering::Relaxed)
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Sets the sync state unless the client closed; returns whether it changed.
    pub fn set_synced(&self, new: SyncState) -> bool {
        self.synced.send_if_modified(|s| {
            let change = *s != new && *s != SyncState::Closed;
            if change {
                *s = new;
            }
            change
        })
    }
}

/// Everything the handles and the driver share.
pub(crate) struct Shared {
    pub actor: u64,
    pub watch_buffer: usize,
    pub spaces: Mutex<HashMap<String, Arc<SpaceCell>>>,
    /// Poked when a space is added or wants presence.
    pub spaces_changed: Notify,
    pub status: watch::Sender<Status>,
    /// Ops waiting for an ack.
    pub queued_ops: watch::Sender<usize>,
    /// Sessions that became the primary (the first connection included).
    pub connects: AtomicU64,
    /// Creation counter of spaces.
    pub next_order: AtomicU64,
}

impl Shared {
    /// The state of a new client.
    pub fn new(actor: u64, watch_buffer: usize, queued_ops: usize) -> Shared {
        Shared {
            actor,
            watch_buffer,
            spaces: Mutex::new(HashMap::new()),
            spaces_changed: Notify::new(),
            status: watch::channel(Status::Connecting).0,
            queued_ops: watch::channel(queued_ops).0,
            connects: AtomicU64::new(0),
            next_order: AtomicU64::new(0),
        }
    }

    /// The space's cell, created on first use; subscribed again when it
    /// was unsubscribed.
    pub fn space(&self, name: &str) -> Arc<SpaceCell> {
        let mut spaces = lock(&self.spaces);
        if let Some(cell) = spaces.get(name) {
            let cell = cell.clone();
            drop(spaces);
            if !cell.subscribed.swap(true, Ordering::AcqRel) {
                cell.synced.send_if_modified(|s| {
                    let was = *s == SyncState::Unsubscribed;
                    if was {
                        *s = SyncState::Pending;
                    }
                    was
                });
                self.spaces_changed.notify_one();
            }
            return cell;
        }
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::new(SpaceCell::new(name.to_string(), self.watch_buffer, order));
        spaces.insert(name.to_string(), cell.clone());
        drop(spaces);
        self.spaces_changed.notify_one();
        cell
    }

    /// Every space, in no particular order.
    pub fn all_spaces(&self) -> Vec<Arc<SpaceCell>> {
        lock(&self.spaces).values().cloned().collect()
    }

    /// The space's cell, if it exists.
    pub fn get_space(&self, name: &str) -> Option<Arc<SpaceCell>> {
        lock(&self.spaces).get(name).cloned()
    }
}

/// One op of a write command: a key and its JSON text and parsed value, or a delete.
#[derive(Debug, Clone)]
pub(crate) struct Mutation {
    pub key: String,
    pub value: Option<(Bytes, Value)>,
}

/// What a write command gets back once its ops are applied locally and queued.
pub(crate) struct Queued {
    pub stamps: Vec<aether_core::Stamp>,
    pub done: oneshot::Receiver<Result<Acked, Error>>,
}

/// Handles → driver.
pub(crate) enum Command {
    /// Stamp, apply locally, queue and send.
    Write { space: Arc<SpaceCell>, ops: Vec<Mutation>, reply: oneshot::Sender<Result<Queued, Error>> },
    /// Set (non-empty) or clear (empty) this client's presence in a space.
    Presence { space: Arc<SpaceCell>, state: Bytes },
    /// Stop following a space (its `subscribed` flag is already cleared).
    Unsubscribe { space: Arc<SpaceCell>, reply: oneshot::Sender<()> },
    /// Persist the queue and stop.
    Close { reply: oneshot::Sender<Result<(), Error>> },
}
