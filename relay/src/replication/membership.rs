//! Who is in the mesh and which members own which shard.
//!
//! Members come from the static `--peer` list, from a membership file (the
//! operator mounts a ConfigMap there) that is re-read when it changes, and
//! from DNS SRV records (a headless Service's named port), re-resolved as
//! often. The
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
    /// Members from the file, as last read successfully.
    from_file: Vec<Peer>,
    dns: Option<Dns>,
    /// Members from DNS, as last resolved successfully.
    from_dns: Vec<Peer>,
    tx: watch::Sender<Arc<View>>,
}

/// An SRV name and the resolver that looks it up.
struct Dns {
    srv: String,
    resolver: hickory_resolver::TokioResolver,
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
            from_file,
            dns: None,
            from_dns: Vec::new(),
            tx: watch::channel(Arc::new(empty())).0,
        };
        let view = m.view();
        m.tx = watch::channel(Arc::new(view)).0;
        Ok(m)
    }

    /// With a membership file or DNS, this relay is a member only while one of
    /// the sources lists it: removed, it owns nothing and hands what it holds
    /// to the owners (anti-entropy). With static peers only, it always is.
    fn view(&self) -> View {
        let mut members = BTreeMap::new();
        for p in self.peers.iter().chain(&self.from_file).chain(&self.from_dns) {
            members.insert(p.name.clone(), p.addr.clone());
        }
        if (self.file.is_none() && self.dns.is_none()) || members.contains_key(&self.me) {
            members.insert(self.me.clone(), self.advertise.clone());
        }
        View::new(self.me.clone(), self.shards, self.replication, members)
    }

    /// The current view, updated in place as membership changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.tx.subscribe()
    }

    /// Also takes members from the SRV records of `srv` (e.g.
    /// `_mesh._tcp.relay.ns.svc.cluster.local`): each target's first label is
    /// the member name (a StatefulSet pod's name), target and port its
    /// address. `server` overrides the system resolver (`/etc/resolv.conf`).
    pub fn with_dns(mut self, srv: String, server: Option<std::net::SocketAddr>) -> anyhow::Result<Self> {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        let mut builder = match server {
            Some(addr) => {
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                hickory_resolver::Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => hickory_resolver::Resolver::builder_tokio()?,
        };
        // Membership must follow DNS as it changes: no caching between polls.
        builder.options_mut().cache_size = 0;
        self.dns = Some(Dns { srv, resolver: builder.build() });
        // Until DNS answers, this relay is a member only if another source lists it.
        self.tx.send_replace(Arc::new(self.view()));
        Ok(self)
    }

    /// Re-reads the membership file and re-resolves DNS every `poll`, and
    /// publishes a new view when the member list changed. A source that
    /// cannot be read, resolved or parsed is logged and its last good answer
    /// kept.
    pub async fn watch(mut self, poll: Duration) {
        if self.file.is_none() && self.dns.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.read_file().await;
            self.resolve().await;
            let view = self.view();
            if view.members != self.tx.borrow().members {
                tracing::info!(members = ?view.members.keys().collect::<Vec<_>>(), member = view.is_member(), "membership changed");
                self.tx.send_replace(Arc::new(view));
            }
        }
    }

    async fn read_file(&mut self) {
        let Some(path) = self.file.clone() else { return };
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the membership file; keeping the last view");
                return;
            }
        };
        if self.file_text.as_deref() == Some(text.as_str()) {
            return;
        }
        match parse_file(&text) {
            Ok(peers) => {
                self.from_file = peers;
                self.file_text = Some(text);
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "bad membership file; keeping the last view"),
        }
    }

    async fn resolve(&mut self) {
        let Some(dns) = &self.dns else { return };
        match dns.resolver.srv_lookup(dns.srv.as_str()).await {
            Ok(answer) => {
                let mut peers = Vec::new();
                for srv in answer.iter() {
                    let target = srv.target().to_utf8();
                    let host = target.trim_end_matches('.');
                    let name = host.split('.').next().unwrap_or("");
                    match crate::config::parse_member_name(name) {
                        Ok(name) => peers.push(Peer { name, addr: format!("{host}:{}", srv.port()) }),
                        Err(e) => tracing::warn!(srv = %dns.srv, target = host, error = %e, "skipping an SRV target"),
                    }
                }
                self.from_dns = peers;
            }
            Err(e) if e.is_no_records_found() => self.from_dns.clear(),
            Err(e) => {
                tracing::warn!(srv = %dns.srv, error = %e, "cannot resolve the membership SRV name; keeping the last view")
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
        tokio::spawn(m.watch(Duration::from_millis(10)));
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

    /// A DNS server on loopback answering SRV queries from a list the test changes.
    async fn dns_server(records: Arc<std::sync::Mutex<Vec<(String, u16)>>>) -> std::net::SocketAddr {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        use hickory_proto::rr::rdata::SRV;
        use hickory_proto::rr::{Name, RData, Record};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let mut reply = Message::new();
                reply.set_id(query.id()).set_message_type(MessageType::Response).set_op_code(query.op_code());
                reply.set_recursion_desired(true).set_recursion_available(true).set_authoritative(true);
                reply.add_queries(query.queries().to_vec());
                let records = records.lock().unwrap().clone();
                if records.is_empty() {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
                for q in query.queries() {
                    for (target, port) in &records {
                        let srv = SRV::new(0, 10, *port, Name::from_ascii(target).unwrap());
                        reply.add_answer(Record::from_rdata(q.name().clone(), 1, RData::SRV(srv)));
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn members_come_from_dns_srv_records() {
        let records = Arc::new(std::sync::Mutex::new(vec![
            ("relay-0.relay.ns.svc.cluster.local.".to_string(), 7070),
            ("relay-1.relay.ns.svc.cluster.local.".to_string(), 7070),
        ]));
        let server = dns_server(records.clone()).await;
        let srv = "_mesh._tcp.relay.ns.svc.cluster.local".to_string();
        let m = Membership::new("relay-0".into(), "relay-0.relay.ns.svc.cluster.local:7070".into(), 8, 2, vec![], None)
            .unwrap()
            .with_dns(srv, Some(server))
            .unwrap();
        let mut rx = m.subscribe();
        assert!(!rx.borrow().is_member(), "not a member before DNS says so");
        tokio::spawn(m.watch(Duration::from_millis(20)));
        let found = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| v.members.len() == 2)).await.is_ok();
        assert!(found, "the SRV members were not picked up");
        assert!(rx.borrow().is_member());
        assert_eq!(rx.borrow().members["relay-1"], "relay-1.relay.ns.svc.cluster.local:7070");
        // A pod that goes away leaves the membership.
        records.lock().unwrap().retain(|(t, _)| t.starts_with("relay-0"));
        let shrunk = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| v.members.len() == 1)).await.is_ok();
        assert!(shrunk, "the departed member stayed");
    }
}
