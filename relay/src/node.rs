//! The relay node: spaces, clock, WAL and metrics, and the write path that
//! ties them together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aether_core::{Hlc, Key, OpRef, Space};
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::AckMode;
use crate::fanout::{OpEvent, Outbound, Subscriber};
use crate::metrics::Metrics;
use crate::space::{Joined, SpaceHub};
use crate::wal::{AppendError, Durable, Recovery, State, Wal};

/// A running relay's shared state.
pub struct Relay {
    actor: u64,
    ack: AckMode,
    hlc: Mutex<Hlc>,
    spaces: RwLock<HashMap<Arc<str>, Arc<SpaceHub>>>,
    wal: Wal,
    metrics: Metrics,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
    recovery: Recovery,
}

/// A write was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The WAL refused it.
    #[error(transparent)]
    Wal(#[from] AppendError),
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Relay {
    /// A relay over an opened WAL and the state recovered from it.
    pub fn new(
        actor: u64,
        ack: AckMode,
        max_skew_ns: u64,
        wal: Wal,
        state: State,
        recovery: Recovery,
        metrics: Metrics,
    ) -> Self {
        let mut hlc = Hlc::new(actor, max_skew_ns);
        // Whatever this node stamped before a restart, new stamps order after it.
        hlc.witness(state.max_stamp);
        let spaces: HashMap<Arc<str>, Arc<SpaceHub>> = state
            .spaces
            .into_iter()
            .map(|(name, space)| {
                let name: Arc<str> = name.into();
                (name.clone(), Arc::new(SpaceHub::new(name, space)))
            })
            .collect();
        metrics.spaces.set(spaces.len() as i64);
        Self {
            actor,
            ack,
            hlc: Mutex::new(hlc),
            spaces: RwLock::new(spaces),
            wal,
            metrics,
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            recovery,
        }
    }

    /// This node's actor id (stamped on its ops).
    pub fn actor(&self) -> u64 {
        self.actor
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What recovery found at boot.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The WAL's durable watermark.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.wal.durable()
    }

    /// True while the relay accepts work.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && !self.wal.is_failed()
    }

    /// Stops accepting work and flushes the WAL.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.wal.close();
    }

    /// Subscribes `sub` to space `name` (created empty on first use) and
    /// returns the hub with the state to start from.
    pub fn join(&self, name: &str, sub: Subscriber) -> (Arc<SpaceHub>, Joined) {
        loop {
            let hub = self.hub(name);
            // Copying the space happens outside the registry lock. `leave` may have
            // dropped this hub from the registry meanwhile (it was empty and unused):
            // then this subscription is undone and the join retried on the new hub.
            let joined = hub.join(sub.clone());
            let current = self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
            if current.is_some_and(|c| Arc::ptr_eq(&c, &hub)) {
                return (hub, joined);
            }
            hub.lock().subscribers.retain(|s| s.conn != sub.conn);
        }
    }

    fn hub(&self, name: &str) -> Arc<SpaceHub> {
        if let Some(hub) = self.spaces.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return hub.clone();
        }
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        let hub = spaces
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(SpaceHub::new(Arc::from(name), Space::new())))
            .clone();
        self.metrics.spaces.set(spaces.len() as i64);
        hub
    }

    /// Unsubscribes connection `conn` from `hub` and announces it left
    /// (`leave` is the encoded `presence-leave`). A space left with no
    /// subscribers and no entries is forgotten, so clients cannot grow the
    /// registry by visiting names.
    pub fn leave(&self, hub: &Arc<SpaceHub>, conn: u64, leave: Utf8Bytes) {
        if !hub.leave(conn, leave) {
            return;
        }
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        // Only this hub: the name may meanwhile belong to a newer hub with subscribers.
        if !spaces.get(hub.name()).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            return;
        }
        let inner = hub.lock();
        if inner.subscribers.is_empty() && inner.space.is_empty() {
            drop(inner);
            spaces.remove(hub.name());
            self.metrics.spaces.set(spaces.len() as i64);
        }
    }

    /// Number of spaces held in memory.
    pub fn space_count(&self) -> usize {
        self.spaces.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Applies a client's write: stamp, log, merge, fan out. Other subscribers
    /// get the op at once; `writer` gets its echo as an `Ack` gated on the WAL
    /// (or at once with `--ack memory`). Nothing is applied if the WAL refuses.
    pub fn write(
        &self,
        hub: &SpaceHub,
        writer: &Subscriber,
        key: &[u8],
        value: Option<&[u8]>,
        received: Instant,
    ) -> Result<(), WriteError> {
        let mut inner = hub.lock();
        let stamp = self.hlc.lock().unwrap_or_else(|e| e.into_inner()).tick(now_ns());
        let lsn = self.wal.append(OpRef { space: hub.name(), key, value, stamp, origin: self.actor })?;
        let key = Key::from(key);
        let value = value.map(Bytes::copy_from_slice);
        inner.space.merge_owned(key.clone(), value.clone(), stamp);
        if value.is_some() { &self.metrics.ops_set } else { &self.metrics.ops_delete }.inc();
        let event = Arc::new(OpEvent::new(key, value, stamp));
        let fanout_started = Instant::now();
        let mut delivered = 0usize;
        for s in &inner.subscribers {
            if s.conn == writer.conn {
                let item = match self.ack {
                    AckMode::Durable => Outbound::Ack { event: event.clone(), lsn, received },
                    AckMode::Memory => {
                        self.metrics.op_latency_memory.observe(received.elapsed().as_secs_f64());
                        Outbound::Op(event.clone())
                    }
                };
                s.offer(item);
            } else {
                delivered += usize::from(s.offer(Outbound::Op(event.clone())));
            }
        }
        drop(inner);
        self.metrics.fanout_latency.observe(fanout_started.elapsed().as_secs_f64());
        self.metrics.fanout_size.observe(delivered as f64);
        Ok(())
    }
}
