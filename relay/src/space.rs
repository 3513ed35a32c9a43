//! A space as the relay holds it: the LWW map, its subscribers and the
//! presence of connected clients. One mutex per space; the order of ops under
//! it is the order every subscriber sees.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use aether_core::{Entry, Key, Space};
use bytes::Bytes;

use crate::fanout::{Outbound, PresenceEvent, Subscriber};

/// Source of hub incarnations: a hub dropped from the registry and created
/// again starts its seq over, so resume epochs name the incarnation.
static INCARNATIONS: AtomicU64 = AtomicU64::new(1);

/// A space, its subscribers and its presence.
#[derive(Debug)]
pub struct SpaceHub {
    name: Arc<str>,
    /// Unique in this process (see [`INCARNATIONS`]).
    incarnation: u64,
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
    /// Last presence of each connection that sent one, by connection id.
    pub presence: HashMap<u64, Arc<PresenceEvent>>,
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
    pub presence: Vec<Arc<PresenceEvent>>,
}

/// Where a resuming subscriber starts from.
#[derive(Debug, Clone, Copy)]
pub enum Resume<'a> {
    /// It has nothing: every entry.
    Full,
    /// It saw this hub incarnation up to `seq`: the entries changed after it.
    Since(u64),
    /// Its replica's per-bucket digests: the entries of the buckets that differ.
    Buckets(&'a [aether_core::space::Digest]),
}

/// The entries a resuming subscriber is sent, and the seq they bring it to.
#[derive(Debug)]
pub struct Catchup {
    /// Entries, tombstones included.
    pub entries: Vec<(Key, Entry)>,
    /// The hub's seq at the moment of joining.
    pub seq: u64,
    /// Presence of the sessions already there.
    pub presence: Vec<Arc<PresenceEvent>>,
}

impl SpaceHub {
    /// A hub for `name` holding `space`; `cache` for an edge cache.
    pub fn new(name: Arc<str>, space: Space, cache: bool) -> Self {
        Self {
            name,
            incarnation: INCARNATIONS.fetch_add(1, Ordering::Relaxed),
            cache: AtomicBool::new(cache),
            inner: Mutex::new(SpaceInner { space, ..Default::default() }),
        }
    }

    /// This hub's incarnation (unique in the process).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Subscribes and returns what `resume` says the subscriber is missing,
    /// atomically: every op after it reaches the subscriber's queue (after
    /// `sub` is removed from the hub by an earlier subscription of the same
    /// connection, if any). `None` when the hub was dropped from the registry
    /// meanwhile (look it up again).
    pub fn join_resume(&self, sub: Subscriber, resume: Resume<'_>) -> Option<Catchup> {
        let mut inner = self.lock();
        if inner.removed {
            return None;
        }
        let entries = match resume {
            Resume::Full => inner.space.iter().map(|(k, e)| (k.clone(), e.clone())).collect(),
            Resume::Since(seq) => inner.space.changed_since(seq).map(|(k, e)| (k.clone(), e.clone())).collect(),
            Resume::Buckets(theirs) => {
                let n = theirs.len() as u32;
                let ours = aether_core::sync::bucket_digests(&inner.space, n);
                let differ = aether_core::sync::diff_buckets(&ours, theirs);
                let mut want = vec![false; theirs.len()];
                for b in differ {
                    want[b as usize] = true;
                }
                inner
                    .space
                    .iter()
                    .filter(|(k, _)| want[aether_core::sync::bucket_of(k, n) as usize])
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect()
            }
        };
        let seq = inner.space.seq();
        let presence = inner.presence.values().cloned().collect();
        inner.subscribers.retain(|s| s.conn != sub.conn);
        inner.subscribers.push(sub);
        Some(Catchup { entries, seq, presence })
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

    /// Unsubscribes `conn` and tells the others it left: `leave` (a
    /// departure) always, or only when it had a presence when `leave` is
    /// `None`. Returns true when the space is now unused (no subscribers, no
    /// entries).
    pub fn leave(&self, conn: u64, leave: Option<Arc<PresenceEvent>>) -> bool {
        let mut inner = self.lock();
        inner.subscribers.retain(|s| s.conn != conn);
        let had = inner.presence.remove(&conn);
        if let Some(leave) = leave.or_else(|| had.map(|p| Arc::new(p.left()))) {
            for s in &inner.subscribers {
                s.offer(Outbound::Presence(leave.clone()));
            }
        }
        inner.subscribers.is_empty() && inner.space.is_empty()
    }

    /// Records `conn`'s presence (a departure forgets it) and relays it to
    /// everyone else; returns deliveries.
    pub fn presence(&self, conn: u64, event: Arc<PresenceEvent>) -> usize {
        let mut inner = self.lock();
        if event.is_leave() {
            inner.presence.remove(&conn);
        } else {
            inner.presence.insert(conn, event.clone());
        }
        let mut n = 0;
        for s in inner.subscribers.iter().filter(|s| s.conn != conn) {
            n += usize::from(s.offer(Outbound::Presence(event.clone())));
        }
        n
    }
}
