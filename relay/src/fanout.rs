//! What travels from a space to its subscribers: events, the per-connection
//! bounded queue, and the slow-consumer kill switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use aether_core::{Key, Stamp};
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

/// One applied op, encoded lazily (once per wire format) for its subscribers.
#[derive(Debug)]
pub struct OpEvent {
    /// The space it applies to.
    pub space: Arc<str>,
    /// Key (UTF-8).
    pub key: Key,
    /// Value (JSON text), `None` for a delete.
    pub value: Option<Bytes>,
    /// Stamp given by the relay or the client.
    pub stamp: Stamp,
    /// The space's seq after this op (0 for a writer's echo sent before the
    /// op applied here, as for a write forwarded by an edge).
    pub seq: u64,
    json: OnceLock<Utf8Bytes>,
}

impl OpEvent {
    /// An event for an op of `space`, applied at `seq`.
    pub fn new(space: Arc<str>, key: Key, value: Option<Bytes>, stamp: Stamp, seq: u64) -> Self {
        Self { space, key, value, stamp, seq, json: OnceLock::new() }
    }

    /// The browser JSON encoding (`set` or `delete`), built by the first caller.
    pub fn json(&self) -> Utf8Bytes {
        self.json.get_or_init(|| crate::gateway::json_wire::encode_op(&self.key, self.value.as_deref())).clone()
    }
}

/// A session's presence in a space (or its departure), relayed to the others.
#[derive(Debug)]
pub struct PresenceEvent {
    /// The space.
    pub space: Arc<str>,
    /// The session's presence id.
    pub session: Arc<str>,
    /// The session's colour.
    pub color: Arc<str>,
    /// A JSON object; empty when the session left.
    pub state: Bytes,
    /// The browser JSON encoding, if it has one (`/ws` clients only know cursors).
    json: OnceLock<Option<Utf8Bytes>>,
}

impl PresenceEvent {
    /// A presence state (a JSON object's text) or, with an empty `state`, a departure.
    pub fn new(space: Arc<str>, session: Arc<str>, color: Arc<str>, state: Bytes) -> Self {
        Self { space, session, color, state, json: OnceLock::new() }
    }

    /// A `/ws` client's cursor.
    pub fn cursor(space: Arc<str>, session: Arc<str>, color: Arc<str>, x: i64, y: i64) -> Self {
        let json = crate::gateway::json_wire::encode_presence(&session, &color, x, y);
        let state = Bytes::from(format!(r#"{{"x":{x},"y":{y}}}"#));
        Self { space, session, color, state, json: OnceLock::from(Some(json)) }
    }

    /// The same session's departure.
    pub fn left(&self) -> Self {
        Self::new(self.space.clone(), self.session.clone(), self.color.clone(), Bytes::new())
    }

    /// True for a departure.
    pub fn is_leave(&self) -> bool {
        self.state.is_empty()
    }

    /// The `/ws` encoding: `presence` with the state's integer `x` and `y`, or
    /// `presence-leave`; `None` for a state without a cursor.
    pub fn json(&self) -> Option<Utf8Bytes> {
        self.json
            .get_or_init(|| {
                use crate::gateway::json_wire::{encode_presence, encode_presence_leave};
                if self.is_leave() {
                    return Some(encode_presence_leave(&self.session));
                }
                #[derive(serde::Deserialize)]
                struct Cursor {
                    x: i64,
                    y: i64,
                }
                let c: Cursor = serde_json::from_slice(&self.state).ok()?;
                Some(encode_presence(&self.session, &self.color, c.x, c.y))
            })
            .clone()
    }
}

/// An item in a connection's send queue.
#[derive(Debug)]
pub enum Outbound {
    /// An op written by someone else (or by this client, in `--ack memory` mode).
    Op(Arc<OpEvent>),
    /// This client's own op, echoed once WAL record `lsn` is durable.
    Ack {
        /// The op.
        event: Arc<OpEvent>,
        /// Its WAL sequence number.
        lsn: u64,
        /// When the relay received it (for the latency histogram).
        received: Instant,
        /// The write quorum, when it is above 1: the echo also waits for it.
        quorum: Option<tokio::sync::watch::Receiver<crate::replication::QuorumState>>,
    },
    /// A session's presence or departure.
    Presence(Arc<PresenceEvent>),
    /// A pre-encoded `/ws` JSON message (an error for a `/ws` writer).
    Text(Utf8Bytes),
}

/// The relay-side handle to one subscribed connection.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Connection id, unique in the process.
    pub conn: u64,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<Kill>,
}

/// Set when a connection must be dropped because it does not keep up.
#[derive(Debug, Default)]
pub struct Kill {
    flag: AtomicBool,
    notify: Notify,
}

impl Kill {
    /// Marks the connection for closing and wakes it.
    pub fn trigger(&self) {
        if !self.flag.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Resolves once [`Kill::trigger`] was called.
    pub async fn wait(&self) {
        if self.flag.load(Ordering::Acquire) {
            return;
        }
        self.notify.notified().await;
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl Subscriber {
    /// A subscriber with a queue of `capacity` items; returns the receiving end too.
    pub fn new(conn: u64, capacity: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { conn, tx, kill: Arc::new(Kill::default()) }, rx)
    }

    /// The kill switch shared with the connection task.
    pub fn kill(&self) -> &Arc<Kill> {
        &self.kill
    }

    /// Queues `item` without waiting; a full queue marks the connection as a
    /// slow consumer instead of delaying the sender. Returns false when dropped.
    pub fn offer(&self, item: Outbound) -> bool {
        // Once an item was dropped, nothing more is queued: the connection
        // must not deliver anything past the gap (it closes, and resumes).
        if self.kill.is_triggered() {
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kill.trigger();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
