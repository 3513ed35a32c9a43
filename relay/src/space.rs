//! A space as the relay holds it: the LWW map, its subscribers and the
//! presence of connected clients. One mutex per space; the order of ops under
//! it is the order every subscriber sees.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use aether_core::{Key, Space};
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;

use crate::fanout::{Outbound, Subscriber};

/// A space, its subscribers and its presence.
#[derive(Debug)]
pub struct SpaceHub {
    name: Arc<str>,
    /// An edge cache: state followed from an owner, never logged here. Cleared
    /// (under the space's lock, after logging every entry) when this relay
    /// becomes one of the space's owners.
    cache: AtomicBool,
    inner: Mutex<SpaceInner>,
}

/// State under the space's lock.
#[derive(Debug, Default)]
pub struct SpaceInner {
    /// The LWW map.
    pub space: Space,
    /// Connected subscribers.
    pub subscribers: Vec<Subscriber>,
    /// Last presence message of each connection that sent one, by connection id.
    pub presence: HashMap<u64, Utf8Bytes>,
    /// Set when the hub was dropped from the registry: whoever still holds it
    /// must look the space up again.
    pub removed: bool,
}

/// What a new subscriber starts from.
#[derive(Debug)]
pub struct Joined {
    /// Live keys and values at the moment of joining.
    pub snapshot: Vec<(Key, Bytes)>,
    /// Presence of the clients already there.
    pub presence: Vec<Utf8Bytes>,
}

impl SpaceHub {
    /// A hub for `name` holding `space`; `cache` for an edge cache.
    pub fn new(name: Arc<str>, space: Space, cache: bool) -> Self {
        Self { name, cache: AtomicBool::new(cache), inner: Mutex::new(SpaceInner { space, ..Default::default() }) }
    }

    /// True for an edge cache (state followed from an owner, not logged here).
    pub fn is_cache(&self) -> bool {
        self.cache.load(Ordering::Acquire)
    }

    /// Marks a cache hub as logged state (call with its lock held, after logging its entries).
    pub fn set_logged(&self) {
        self.cache.store(false, Ordering::Release);
    }

    /// Subscribes and returns every entry (tombstones and stamps included),
    /// atomically: every op after them reaches the subscriber's queue. `None`
    /// when the hub was dropped from the registry meanwhile (look it up again).
    pub fn join_entries(&self, sub: Subscriber) -> Option<Vec<(Key, aether_core::Entry)>> {
        let mut inner = self.lock();
        if inner.removed {
            return None;
        }
        let entries = inner.space.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        inner.subscribers.push(sub);
        Some(entries)
    }

    /// Removes subscriber `conn` without announcing anything.
    pub fn unsubscribe(&self, conn: u64) {
        self.lock().subscribers.retain(|s| s.conn != conn);
    }

    /// The space's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Locks the space. Poisoning is ignored: every critical section leaves the
    /// state consistent before anything that can panic.
    pub fn lock(&self) -> MutexGuard<'_, SpaceInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes and returns the state to start from, atomically: every op
    /// after the snapshot reaches the subscriber's queue.
    pub fn join(&self, sub: Subscriber) -> Joined {
        let mut inner = self.lock();
        let snapshot = inner.space.live().map(|(k, v)| (k.clone(), v.clone())).collect();
        let presence = inner.presence.values().cloned().collect();
        inner.subscribers.push(sub);
        Joined { snapshot, presence }
    }

    /// Unsubscribes `conn` and tells the others it left (`leave` is the
    /// encoded `presence-leave`). Returns true when the space is now unused
    /// (no subscribers, no entries).
    pub fn leave(&self, conn: u64, leave: Utf8Bytes) -> bool {
        let mut inner = self.lock();
        inner.subscribers.retain(|s| s.conn != conn);
        inner.presence.remove(&conn);
        for s in &inner.subscribers {
            s.offer(Outbound::Text(leave.clone()));
        }
        inner.subscribers.is_empty() && inner.space.is_empty()
    }

    /// Records `conn`'s presence and relays it to everyone else; returns deliveries.
    pub fn presence(&self, conn: u64, msg: Utf8Bytes) -> usize {
        let mut inner = self.lock();
        inner.presence.insert(conn, msg.clone());
        let mut n = 0;
        for s in inner.subscribers.iter().filter(|s| s.conn != conn) {
            n += usize::from(s.offer(Outbound::Text(msg.clone())));
        }
        n
    }
}
