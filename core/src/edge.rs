//! Edge routing, sans-IO: at which owner an edge follows each space, and which
//! forwarded writes must be (re)sent where. The relay's edge (`replication/
//! edge.rs`) and the mesh simulation drive the same router; they own the
//! streams and carry out its [`Command`]s.
//!
//! Each space follows the first of its owners (placement order) whose stream
//! is up. Every stream opening gets a new epoch, counted over all owners, so a
//! subscription or write sent on a stream that has since broken is sent again
//! on the next one (merge makes repeats harmless). A write leaves the router
//! only when its owner acknowledges it, or when the space is no longer
//! followed (its writer must be told).

use std::collections::{BTreeMap, BTreeSet};

/// What the router asks its driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start receiving `space` from `owner` (a snapshot, then live ops).
    Subscribe {
        /// Owner to ask.
        owner: String,
        /// The space.
        space: String,
    },
    /// Stop receiving `space` from `owner`.
    Unsubscribe {
        /// Owner to tell.
        owner: String,
        /// The space.
        space: String,
    },
    /// Send forwarded write `id` to `owner`.
    Send {
        /// Owner to send to.
        owner: String,
        /// The write's id.
        id: u64,
    },
}

#[derive(Debug)]
struct Forwarded<W> {
    space: String,
    sent_on: Option<(String, u64)>,
    write: W,
}

/// See the module docs. `W` is the driver's payload for a forwarded write.
#[derive(Debug)]
pub struct EdgeRouter<W> {
    /// Owners whose stream is open, with the epoch of that opening.
    up: BTreeMap<String, u64>,
    /// Followed spaces and the (owner, epoch) their subscription went to.
    spaces: BTreeMap<String, Option<(String, u64)>>,
    pending: BTreeMap<u64, Forwarded<W>>,
    next_id: u64,
    next_epoch: u64,
    max_pending: usize,
}

impl<W> EdgeRouter<W> {
    /// A router holding at most `max_pending` unacknowledged writes.
    pub fn new(max_pending: usize) -> Self {
        Self {
            up: BTreeMap::new(),
            spaces: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_id: 0,
            next_epoch: 0,
            max_pending,
        }
    }

    /// Starts following `space`. `owners(space)` lists its owners other than
    /// this relay, in placement order.
    pub fn follow(&mut self, space: &str, owners: impl Fn(&str) -> Vec<String>) -> Vec<Command> {
        self.spaces.entry(space.to_owned()).or_insert(None);
        self.route(owners)
    }

    /// Stops following `space`; returns the commands and the writes that will
    /// now never be acknowledged (their writers must get an error).
    pub fn unfollow(&mut self, space: &str) -> (Vec<Command>, Vec<W>) {
        let mut cmds = Vec::new();
        if let Some(Some((owner, _))) = self.spaces.remove(space) {
            cmds.push(Command::Unsubscribe { owner, space: space.to_owned() });
        }
        let orphans: Vec<u64> = self.pending.iter().filter(|(_, w)| w.space == space).map(|(id, _)| *id).collect();
        let writes = orphans.into_iter().filter_map(|id| self.pending.remove(&id)).map(|w| w.write).collect();
        (cmds, writes)
    }

    /// True while `space` is followed.
    pub fn is_following(&self, space: &str) -> bool {
        self.spaces.contains_key(space)
    }

    /// Followed spaces.
    pub fn spaces(&self) -> impl Iterator<Item = &str> {
        self.spaces.keys().map(String::as_str)
    }

    /// The owner `space` is followed at, if its stream is up.
    pub fn upstream(&self, space: &str) -> Option<&str> {
        self.spaces.get(space)?.as_ref().map(|(o, _)| o.as_str())
    }

    /// Accepts a write for `space` (which should be followed); its id and the
    /// commands to send it, or the write back when too many are pending.
    pub fn forward(
        &mut self,
        space: &str,
        write: W,
        owners: impl Fn(&str) -> Vec<String>,
    ) -> Result<(u64, Vec<Command>), W> {
        if self.pending.len() >= self.max_pending {
            return Err(write);
        }
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(id, Forwarded { space: space.to_owned(), sent_on: None, write });
        Ok((id, self.route(owners)))
    }

    /// The payload of pending write `id`.
    pub fn write(&self, id: u64) -> Option<&W> {
        self.pending.get(&id).map(|w| &w.write)
    }

    /// Pending writes.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The owner acknowledged write `id`: it leaves the router.
    pub fn acked(&mut self, id: u64) -> Option<(String, W)> {
        self.pending.remove(&id).map(|w| (w.space, w.write))
    }

    /// `owner`'s stream opened: subscriptions and writes routed to it go again
    /// on this stream, and spaces whose preferred owner it is move to it.
    pub fn link_up(&mut self, owner: &str, owners: impl Fn(&str) -> Vec<String>) -> Vec<Command> {
        self.next_epoch += 1;
        self.up.insert(owner.to_owned(), self.next_epoch);
        self.route(owners)
    }

    /// `owner`'s stream broke (or the owner left): its spaces and unacknowledged
    /// writes move to the next owner that is up.
    pub fn link_down(&mut self, owner: &str, owners: impl Fn(&str) -> Vec<String>) -> Vec<Command> {
        self.up.remove(owner);
        self.route(owners)
    }

    /// Owners this edge needs a stream to: every owner of every followed space.
    pub fn wanted_links(&self, owners: impl Fn(&str) -> Vec<String>) -> BTreeSet<String> {
        self.spaces.keys().flat_map(|s| owners(s)).collect()
    }

    /// Re-evaluates every route (also after a membership change).
    pub fn route(&mut self, owners: impl Fn(&str) -> Vec<String>) -> Vec<Command> {
        let mut cmds = Vec::new();
        for (space, current) in self.spaces.iter_mut() {
            let target = owners(space).into_iter().find_map(|o| self.up.get(&o).map(|e| (o, *e)));
            if target == *current {
                continue;
            }
            if let Some((old, _)) = current.as_ref()
                && target.as_ref().is_none_or(|(t, _)| t != old)
                && self.up.contains_key(old)
            {
                cmds.push(Command::Unsubscribe { owner: old.clone(), space: space.clone() });
            }
            if let Some((owner, _)) = &target {
                cmds.push(Command::Subscribe { owner: owner.clone(), space: space.clone() });
            }
            *current = target;
        }
        for (id, w) in self.pending.iter_mut() {
            let Some(Some(up)) = self.spaces.get(&w.space) else { continue };
            if w.sent_on.as_ref() != Some(up) {
                cmds.push(Command::Send { owner: up.0.clone(), id: *id });
                w.sent_on = Some(up.clone());
            }
        }
        cmds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(_: &str) -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    fn sub(owner: &str) -> Command {
        Command::Subscribe { owner: owner.into(), space: "s".into() }
    }

    #[test]
    fn follows_the_first_owner_up_and_fails_over() {
        let mut r: EdgeRouter<&str> = EdgeRouter::new(10);
        assert!(r.follow("s", owners).is_empty(), "no owner is up yet");
        let (id, cmds) = r.forward("s", "w1", owners).unwrap();
        assert!(cmds.is_empty(), "held until an owner is up");
        assert_eq!(r.link_up("b", owners), vec![sub("b"), Command::Send { owner: "b".into(), id }]);
        // The preferred owner comes up: the space moves, the write is sent there too.
        let cmds = r.link_up("a", owners);
        assert_eq!(
            cmds,
            vec![
                Command::Unsubscribe { owner: "b".into(), space: "s".into() },
                sub("a"),
                Command::Send { owner: "a".into(), id }
            ]
        );
        // a's stream breaks: back to b, whose stream is the same one as before,
        // but the write was last sent on a's, so it goes again.
        let cmds = r.link_down("a", owners);
        assert_eq!(cmds, vec![sub("b"), Command::Send { owner: "b".into(), id }]);
        assert_eq!(r.acked(id), Some(("s".into(), "w1")));
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn a_reopened_stream_gets_everything_again() {
        let mut r: EdgeRouter<u8> = EdgeRouter::new(10);
        r.follow("s", owners);
        r.link_up("a", owners);
        let (id, cmds) = r.forward("s", 7, owners).unwrap();
        assert_eq!(cmds, vec![Command::Send { owner: "a".into(), id }]);
        r.link_down("a", owners);
        assert_eq!(r.link_up("a", owners), vec![sub("a"), Command::Send { owner: "a".into(), id }]);
        assert!(r.route(owners).is_empty(), "nothing twice on the same stream");
    }

    #[test]
    fn unfollowing_returns_orphans_and_the_bound_holds() {
        let mut r: EdgeRouter<u8> = EdgeRouter::new(2);
        r.follow("s", owners);
        r.link_up("a", owners);
        r.forward("s", 1, owners).unwrap();
        r.forward("s", 2, owners).unwrap();
        assert_eq!(r.forward("s", 3, owners).unwrap_err(), 3, "over the bound");
        let (cmds, orphans) = r.unfollow("s");
        assert_eq!(cmds, vec![Command::Unsubscribe { owner: "a".into(), space: "s".into() }]);
        assert_eq!(orphans, vec![1, 2]);
        assert!(!r.is_following("s"));
        assert_eq!(r.wanted_links(owners), BTreeSet::new());
    }
}
