//! Who is in the mesh and which members own which shard.
//!
//! Members come from the static `--peer` list and from a membership file (the
//! operator mounts a ConfigMap there) that is re-read when it changes. The
//! current [`View`] is published on a `watch` channel; every routing decision
//! reads the latest one. No consensus: relays that briefly disagree about
//! membership only send ops to a few extra or too few owners, and anti-entropy
//! repairs that once they agree again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aether_core::placement;
use tokio::sync::watch;

use crate::config::{Peer, parse_peer};

/// One membership snapshot with its precomputed owner table.
#[derive(Debug)]
pub struct View {
    /// This relay's name.
    pub me: String,
    /// Shards of the mesh.
    pub shards: u32,
    /// Owners per shard.
    pub replication: usize,
    /// Every member (this relay included): name → mesh address.
    pub members: BTreeMap<String, String>,
    names: Vec<String>,
    /// Per shard, indexes into `names`, primary first.
    table: Vec<Vec<u16>>,
}

impl View {
    /// Computes the owner table for `members` (which must include `me`).
    pub fn new(me: String, shards: u32, replication: usize, members: BTreeMap<String, String>) -> Self {
        let names: Vec<String> = members.keys().cloned().collect();
        let table = (0..shards)
            .map(|s| {
                placement::owners(s, &names, replication)
                    .into_iter()
                    .map(|o| names.iter().position(|n| n == o).expect("owner is a member") as u16)
                    .collect()
            })
            .collect();
        Self { me, shards, replication, members, names, table }
    }

    /// The shard of `space`.
    pub fn shard_of(&self, space: &str) -> u32 {
        placement::shard_of(space, self.shards)
    }

    /// The owners of `shard`, primary first.
    pub fn owners(&self, shard: u32) -> impl Iterator<Item = &str> {
        self.table[shard as usize].iter().map(|&i| self.names[i as usize].as_str())
    }

    /// True when this relay owns `shard`.
    pub fn is_owner(&self, shard: u32) -> bool {
        self.owners(shard).any(|o| o == self.me)
    }

    /// The shards this relay owns.
    pub fn owned(&self) -> Vec<u32> {
        (0..self.shards).filter(|&s| self.is_owner(s)).collect()
    }

    /// False once this relay was removed from the membership (it is leaving).
    pub fn is_member(&self) -> bool {
        self.members.contains_key(&self.me)
    }

    /// Every member but this relay.
    pub fn others(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().filter(|(n, _)| **n != self.me).map(|(n, a)| (n.as_str(), a.as_str()))
    }
}

/// Parses a membership file: one `NAME=HOST:PORT` per line, blank lines and
/// `#` comments ignored. Errors name the line.
pub fn parse_file(text: &str) -> Result<Vec<Peer>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| parse_peer(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Sources of membership and the channel the current view is published on.
pub struct Membership {
    me: String,
    advertise: String,
    shards: u32,
    replication: usize,
    peers: Vec<Peer>,
    file: Option<PathBuf>,
    /// The file's text the current view was built from.
    file_text: Option<String>,
    tx: watch::Sender<Arc<View>>,
}

impl Membership {
    /// Builds the first view from the static peers and the file (a file that
    /// cannot be read or parsed at boot is an error: better not to start than
    /// to start alone).
    pub fn new(
        me: String,
        advertise: String,
        shards: u32,
        replication: usize,
        peers: Vec<Peer>,
        file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let (from_file, file_text) = match &file {
            Some(path) => {
                let (peers, text) = read_file(path)?;
                (peers, Some(text))
            }
            None => (Vec::new(), None),
        };
        let mut m = Self {
            me,
            advertise,
            shards,
            replication,
            peers,
            file,
            file_text,
            tx: watch::channel(Arc::new(empty())).0,
        };
        let view = m.view(&from_file);
        m.tx = watch::channel(Arc::new(view)).0;
        Ok(m)
    }

    /// With a membership file, this relay is a member only while the file
    /// (or a `--peer`) lists it: removed from the file, it owns nothing and
    /// hands what it holds to the owners (anti-entropy). Without a file it
    /// is always a member.
    fn view(&self, from_file: &[Peer]) -> View {
        let mut members = BTreeMap::new();
        for p in self.peers.iter().chain(from_file) {
            members.insert(p.name.clone(), p.addr.clone());
        }
        if self.file.is_none() || members.contains_key(&self.me) {
            members.insert(self.me.clone(), self.advertise.clone());
        }
        View::new(self.me.clone(), self.shards, self.replication, members)
    }

    /// The current view, updated in place as membership changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.tx.subscribe()
    }

    /// Re-reads the membership file every `poll` and publishes a new view when
    /// the member list changed. A file that cannot be read or parsed is
    /// logged and the last good view kept.
    pub async fn watch_file(self, poll: Duration) {
        let Some(path) = self.file.clone() else { return };
        let mut last = self.file_text.clone();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the membership file; keeping the last view");
                    continue;
                }
            };
            if last.as_deref() == Some(text.as_str()) {
                continue;
            }
            match parse_file(&text) {
                Ok(peers) => {
                    let view = self.view(&peers);
                    if view.members != self.tx.borrow().members {
                        tracing::info!(members = ?view.members.keys().collect::<Vec<_>>(), "membership changed");
                        self.tx.send_replace(Arc::new(view));
                    }
                    last = Some(text);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "bad membership file; keeping the last view")
                }
            }
        }
    }
}

fn empty() -> View {
    View::new(String::new(), 1, 1, BTreeMap::new())
}

fn read_file(path: &Path) -> anyhow::Result<(Vec<Peer>, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading membership file {}: {e}", path.display()))?;
    let peers = parse_file(&text).map_err(|e| anyhow::anyhow!("membership file {}: {e}", path.display()))?;
    Ok((peers, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_format() {
        let peers = parse_file("# members\nr1=10.0.0.1:7070\n\n r2 = relay-2.svc:7070 # second\n").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1].addr, "relay-2.svc:7070");
        let err = parse_file("r1=10.0.0.1:7070\nnonsense\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn view_agrees_with_placement() {
        let members: BTreeMap<String, String> = (0..5).map(|i| (format!("relay-{i}"), format!("h:{i}"))).collect();
        let view = View::new("relay-1".into(), 64, 3, members.clone());
        let names: Vec<&String> = members.keys().collect();
        for s in 0..64 {
            assert_eq!(view.owners(s).collect::<Vec<_>>(), placement::owners(s, &names, 3));
        }
        assert_eq!(view.owned().len(), (0..64).filter(|&s| view.is_owner(s)).count());
        assert_eq!(view.others().count(), 4);
    }

    #[tokio::test]
    async fn file_changes_are_picked_up_and_bad_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        std::fs::write(&path, "r1=127.0.0.1:1\nr2=127.0.0.1:2\n").unwrap();
        let m = Membership::new("r1".into(), "127.0.0.1:1".into(), 8, 2, vec![], Some(path.clone())).unwrap();
        let mut rx = m.subscribe();
        assert_eq!(rx.borrow().members.len(), 2);
        tokio::spawn(m.watch_file(Duration::from_millis(10)));
        std::fs::write(&path, "garbage\n").unwrap();
        std::fs::write(&path, "r1=127.0.0.1:1\nr2=127.0.0.1:2\nr3=127.0.0.1:3\n").unwrap();
        let grown = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| v.members.len() == 3)).await.is_ok();
        assert!(grown, "the new member was not picked up");
        assert!(rx.borrow().is_member());
        // Removed from the file: this relay leaves (owns nothing), the others stay.
        std::fs::write(&path, "r2=127.0.0.1:2\nr3=127.0.0.1:3\n").unwrap();
        let left = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| !v.is_member())).await.is_ok();
        assert!(left, "the removal was not picked up");
        assert!(rx.borrow().owned().is_empty());
        assert_eq!(rx.borrow().others().count(), 2);
        assert!(Membership::new("r1".into(), "a:1".into(), 8, 2, vec![], Some(dir.path().join("missing"))).is_err());
    }
}
