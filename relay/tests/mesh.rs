//! A real mesh on loopback: several `aether-relay run` processes with static
//! peers, clients on different relays, owners killed with SIGKILL and
//! restarted. Replicas are compared through `/v1/admin/spaces`.

mod common;

use std::collections::BTreeMap;

use common::{Client, Relay, eventually, free_port, tempdir, write_atomic};
use serde_json::{Value, json};

struct Mesh {
    relays: Vec<Option<Relay>>,
    names: Vec<String>,
    ports: Vec<u16>,
    dirs: Vec<tempfile::TempDir>,
    extra: Vec<String>,
}

impl Mesh {
    fn start(n: usize, extra: &[&str]) -> Mesh {
        let names: Vec<String> = (1..=n).map(|i| format!("r{i}")).collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let dirs: Vec<_> = (0..n).map(|_| tempdir()).collect();
        let mut m =
            Mesh { relays: Vec::new(), names, ports, dirs, extra: extra.iter().map(|s| s.to_string()).collect() };
        for i in 0..n {
            let r = m.spawn(i);
            m.relays.push(Some(r));
        }
        m
    }

    fn spawn(&self, i: usize) -> Relay {
        let peers: Vec<String> = (0..self.names.len())
            .filter(|&j| j != i)
            .map(|j| format!("{}=127.0.0.1:{}", self.names[j], self.ports[j]))
            .collect();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Relay::start_member(&self.names[i], self.ports[i], &peers, self.dirs[i].path(), &extra)
    }

    fn relay(&self, i: usize) -> &Relay {
        self.relays[i].as_ref().expect("relay is running")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut r) = self.relays[i].take() {
            r.kill();
        }
    }

    fn restart(&mut self, i: usize) {
        let r = self.spawn(i);
        self.relays[i] = Some(r);
    }

    /// Waits until every running relay's replication streams to its peers are
    /// open (all relays must be running): a relay reaches a peer that started
    /// after it, or restarted, only after its reconnect backoff.
    async fn wait_connected(&self) {
        for i in 0..self.relays.len() {
            self.relay(i).wait_peers_connected().await;
        }
    }

    /// space → (role, digest) on relay `i`.
    async fn spaces(&self, i: usize) -> BTreeMap<String, (String, String)> {
        let rows = self.relay(i).admin_spaces().await;
        let field = |v: &Value, f: &str| v[f].as_str().unwrap().to_string();
        rows.into_iter().map(|(name, v)| (name, (field(&v, "role"), field(&v, "digest")))).collect()
    }

    /// Waits until, for each of `spaces`, every relay that owns it holds the
    /// same digest and at least `min_owners` relays own it. Panics with the
    /// last state at the deadline.
    async fn converged(&self, spaces: &[String], min_owners: usize) {
        eventually("replicas did not converge", || async {
            let mut state = Vec::new();
            for i in 0..self.relays.len() {
                state.push(self.spaces(i).await);
            }
            let ok = spaces.iter().all(|space| {
                let owners: Vec<&String> = state
                    .iter()
                    .filter_map(|m| m.get(space).filter(|(role, _)| role == "owner").map(|(_, d)| d))
                    .collect();
                owners.len() >= min_owners && owners.windows(2).all(|w| w[0] == w[1])
            });
            if ok { Ok(()) } else { Err(format!("{state:#?}")) }
        })
        .await
    }
}

/// Reads messages until a `set` of `key`; returns its value.
async fn recv_set(c: &mut Client, key: &str) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] == "set" && m["key"] == key {
            return m["value"].clone();
        }
        assert_ne!(m["type"], "error", "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_relay_reaches_clients_on_the_others() {
    // R = 2 of 3: every space has an owner pair and one relay that serves it as an edge.
    let mesh = Mesh::start(3, &["--shards", "16", "--replication", "2", "--anti-entropy-interval", "1s"]);
    let spaces: Vec<String> = (0..6).map(|i| format!("room-{i}")).collect();
    let mut readers = Vec::new();
    for space in &spaces {
        for i in [1, 2] {
            let (c, _, snap) = Client::join(&mesh.relay(i).ws_url(&format!("space={space}"))).await;
            assert_eq!(snap, json!({}));
            readers.push((space.clone(), c));
        }
    }
    let mut writers = Vec::new();
    for space in &spaces {
        let (mut w, _, _) = Client::join(&mesh.relay(0).ws_url(&format!("space={space}"))).await;
        w.send(json!({"type": "set", "key": "title", "value": format!("hello {space}")})).await;
        assert_eq!(recv_set(&mut w, "title").await, json!(format!("hello {space}")), "the writer's echo");
        writers.push(w);
    }
    for (space, c) in &mut readers {
        assert_eq!(recv_set(c, "title").await, json!(format!("hello {space}")));
    }
    // Each relay served some space it does not own.
    for i in 0..3 {
        let roles: Vec<String> = mesh.spaces(i).await.into_values().map(|(r, _)| r).collect();
        assert!(roles.iter().any(|r| r == "edge"), "relay {i} served no space as an edge: {roles:?}");
    }
    mesh.converged(&spaces, 2).await;
    // A new client on any relay starts from the full state.
    for i in 0..3 {
        let (_, _, snap) = Client::join(&mesh.relay(i).ws_url("space=room-3")).await;
        assert_eq!(snap, json!({"title": "hello room-3"}), "relay {i}");
    }
    let shards = mesh.relay(0).admin_shards().await;
    assert_eq!(shards["members"].as_object().unwrap().len(), 3);
    assert_eq!(shards["table"].as_array().unwrap().len(), 16);
    mesh.relay(0).wait_peers_connected().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_during_writes_catches_up_and_no_acked_write_is_lost() {
    let mut mesh = Mesh::start(
        3,
        &[
            &["--shards", "8", "--replication", "3", "--anti-entropy-interval", "1s", "--limit-msgs-per-sec", "100000"]
                [..],
            // Small segments and snapshots: the restarted owner boots from a per-shard snapshot.
            &["--wal-segment-bytes", "4096", "--snapshot-after-bytes", "4096"],
        ]
        .concat(),
    );
    let space = "ledger".to_string();
    let (mut w, _, _) = Client::join(&mesh.relay(0).ws_url("space=ledger")).await;
    let (mut r3, _, _) = Client::join(&mesh.relay(2).ws_url("space=ledger")).await;
    let mut acked = BTreeMap::new();
    for i in 0..300 {
        if i == 100 {
            mesh.kill(1);
        }
        if i == 200 {
            mesh.restart(1);
        }
        let key = format!("k{i}");
        w.send(json!({"type": "set", "key": key, "value": i})).await;
        assert_eq!(recv_set(&mut w, &key).await, json!(i));
        acked.insert(key, json!(i));
    }
    // Relay 3 saw every write live (in any order: anti-entropy may deliver some first).
    let mut seen = BTreeMap::new();
    while seen.len() < acked.len() {
        let m = r3.recv().await;
        assert_eq!(m["type"], "set", "{m}");
        seen.insert(m["key"].as_str().unwrap().to_string(), m["value"].clone());
    }
    assert_eq!(seen, acked);
    mesh.converged(std::slice::from_ref(&space), 3).await;
    // The restarted owner serves everything, including what it missed while down.
    let (_, _, snap) = Client::join(&mesh.relay(1).ws_url("space=ledger")).await;
    let got: BTreeMap<String, Value> = snap.as_object().unwrap().clone().into_iter().collect();
    assert_eq!(got, acked);
    // Snapshots of a mesh member are grouped by shard.
    let snaps = mesh.relay(0).data_dir.join("snapshots");
    let shard_dir = format!("shard-{:05}", aether_core::placement::shard_of(&space, 8));
    eventually("no per-shard snapshot", || async {
        let found = std::fs::read_dir(&snaps).unwrap().flatten().any(|d| d.path().join(&shard_dir).is_dir());
        if found { Ok(()) } else { Err(snaps.display().to_string()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_quorum_two_waits_for_a_second_owner() {
    let mut mesh = Mesh::start(
        3,
        &[
            "--shards",
            "4",
            "--replication",
            "3",
            "--write-quorum",
            "2",
            "--quorum-timeout",
            "1s",
            "--mesh-token",
            "s3cret",
        ],
    );
    // W = 2 needs another owner to acknowledge within 1 s: write once r1 reaches them.
    mesh.wait_connected().await;
    let (mut w, _, _) = Client::join(&mesh.relay(0).ws_url("space=q")).await;
    w.send(json!({"type": "set", "key": "a", "value": 1})).await;
    assert_eq!(recv_set(&mut w, "a").await, json!(1));
    mesh.kill(1);
    w.send(json!({"type": "set", "key": "b", "value": 2})).await;
    assert_eq!(recv_set(&mut w, "b").await, json!(2), "one other owner is enough for W=2");
    mesh.kill(2);
    w.send(json!({"type": "set", "key": "c", "value": 3})).await;
    let m = w.recv().await;
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("quorum-timeout")), "{m}");
    // The write stayed applied here and reaches the owners once they are back.
    mesh.restart(1);
    mesh.restart(2);
    mesh.wait_connected().await;
    w.send(json!({"type": "set", "key": "d", "value": 4})).await;
    assert_eq!(recv_set(&mut w, "d").await, json!(4));
    mesh.converged(&["q".to_string()], 3).await;
    let (_, _, snap) = Client::join(&mesh.relay(2).ws_url("space=q")).await;
    assert_eq!(snap, json!({"a": 1, "b": 2, "c": 3, "d": 4}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_through_the_membership_file_catches_up() {
    let dir = tempdir();
    let file = dir.path().join("members");
    let ports = [free_port(), free_port(), free_port()];
    let line = |i: usize| format!("r{}=127.0.0.1:{}\n", i + 1, ports[i]);
    std::fs::write(&file, format!("{}{}", line(0), line(1))).unwrap();
    let file_arg = file.to_str().unwrap();
    let extra = ["--shards", "8", "--replication", "3", "--membership-file", file_arg, "--membership-poll", "100ms"];
    let extra = [&extra[..], &["--anti-entropy-interval", "1s", "--limit-msgs-per-sec", "100000"]].concat();
    let dirs = [tempdir(), tempdir(), tempdir()];
    let r1 = Relay::start_member("r1", ports[0], &[], dirs[0].path(), &extra);
    let _r2 = Relay::start_member("r2", ports[1], &[], dirs[1].path(), &extra);
    let (mut w, _, _) = Client::join(&r1.ws_url("space=grow")).await;
    for i in 0..50 {
        let key = format!("k{i}");
        w.send(json!({"type": "set", "key": key, "value": i})).await;
        assert_eq!(recv_set(&mut w, &key).await, json!(i));
    }
    write_atomic(&file, format!("{}{}{}", line(0), line(1), line(2)));
    let r3 = Relay::start_member("r3", ports[2], &[], dirs[2].path(), &extra);
    // The newcomer owns the shard (R = 3 of 3) and fills itself by anti-entropy.
    let (r1, r3) = (&r1, &r3);
    eventually("the new member did not catch up", || async move {
        let (_, body) = r3.http_get("/v1/admin/spaces").await;
        let (_, reference) = r1.http_get("/v1/admin/spaces").await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let rows = v["spaces"].as_array().unwrap();
        let owns = rows.iter().any(|s| s["space"] == "grow" && s["role"] == "owner" && s["entries"] == 50);
        if owns && body == reference { Ok(()) } else { Err(format!("{body} vs {reference}")) }
    })
    .await;
    let shards = r1.admin_shards().await;
    assert_eq!(shards["members"].as_object().unwrap().len(), 3, "r1 picked up the file change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_through_an_edge_are_all_acknowledged_once() {
    let mesh = Mesh::start(3, &["--shards", "16", "--replication", "2", "--limit-msgs-per-sec", "100000"]);
    // A space relay 0 does not own: its writes are forwarded.
    let names: Vec<String> = (1..=3).map(|i| format!("r{i}")).collect();
    let space = (0..)
        .map(|i| format!("edge-{i}"))
        .find(|s| !aether_core::placement::owners(aether_core::placement::shard_of(s, 16), &names, 2).contains(&"r1"))
        .unwrap();
    let (mut w, _, _) = Client::join(&mesh.relay(0).ws_url(&format!("space={space}"))).await;
    let (total, window) = (2000usize, 32usize);
    let (mut sent, mut echoed) = (0usize, BTreeMap::new());
    while echoed.len() < total {
        while sent < total && sent - echoed.len() < window {
            w.send(json!({"type": "set", "key": format!("k{sent}"), "value": sent})).await;
            sent += 1;
        }
        let m = w.recv().await;
        assert_eq!(m["type"], "set", "{m}");
        let key = m["key"].as_str().unwrap().to_string();
        assert!(echoed.insert(key.clone(), m["value"].clone()).is_none(), "{key} echoed twice");
    }
    let roles = mesh.spaces(0).await;
    assert_eq!(roles[&space].0, "edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_relay_while_an_owner_is_down() {
    let mut mesh = Mesh::start(4, &["--shards", "16", "--replication", "3", "--limit-msgs-per-sec", "100000"]);
    let names: Vec<String> = (1..=4).map(|i| format!("r{i}")).collect();
    let space = (0..)
        .map(|i| format!("down-{i}"))
        .find(|s| aether_core::placement::owners(aether_core::placement::shard_of(s, 16), &names, 3).contains(&"r4"))
        .unwrap();
    mesh.kill(3);
    let mut writers = Vec::new();
    for i in 0..3 {
        let (w, _, _) = Client::join(&mesh.relay(i).ws_url(&format!("space={space}"))).await;
        writers.push(w);
    }
    for round in 0..50 {
        for (i, w) in writers.iter_mut().enumerate() {
            let key = format!("w{i}k{round}");
            w.send(json!({"type": "set", "key": key, "value": round})).await;
            assert_eq!(recv_set(w, &key).await, json!(round), "writer on relay {i}");
        }
    }
    mesh.restart(3);
    mesh.converged(std::slice::from_ref(&space), 3).await;
}

/// A CA and a certificate it signs for 127.0.0.1, written as PEM files.
fn pki(dir: &std::path::Path, ca_name: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{ca_name}.pem")), ca.pem()).unwrap();
    rcgen::Issuer::new(params, key)
}

fn leaf(dir: &std::path::Path, name: &str, ca: &rcgen::Issuer<'static, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, ca).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.to_str().unwrap().to_string(), k.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_replicate_over_mutual_tls_and_refuse_a_foreign_ca() {
    let pkidir = tempdir();
    let ca = pki(pkidir.path(), "ca");
    let other_ca = pki(pkidir.path(), "other-ca");
    let ca_path = pkidir.path().join("ca.pem");
    let ports = [free_port(), free_port(), free_port()];
    let dirs = [tempdir(), tempdir(), tempdir()];
    let start = |i: usize, issuer: &rcgen::Issuer<'static, rcgen::KeyPair>| {
        let (cert, key) = leaf(pkidir.path(), &format!("r{}", i + 1), issuer);
        let mut args: Vec<String> = vec!["--name".into(), format!("r{}", i + 1), "--mesh-listen".into()];
        args.push(format!("127.0.0.1:{}", ports[i]));
        for j in (0..3).filter(|&j| j != i) {
            args.push("--peer".into());
            args.push(format!("r{}=127.0.0.1:{}", j + 1, ports[j]));
        }
        for (flag, v) in [("--mesh-tls-cert", &cert), ("--mesh-tls-key", &key)] {
            args.push(flag.into());
            args.push(v.clone());
        }
        args.extend(["--mesh-tls-ca".into(), ca_path.to_str().unwrap().into(), "--replication".into(), "3".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Relay::spawn_in(None, "run", "127.0.0.1:0", dirs[i].path(), &args, &[]).expect("relay starts")
    };
    let r1 = start(0, &ca);
    let r2 = start(1, &ca);
    // r3's certificate is signed by a CA the others do not trust.
    let r3 = start(2, &other_ca);
    let (mut w, _, _) = Client::join(&r1.ws_url("space=secure")).await;
    w.send(json!({"type": "set", "key": "k", "value": "v"})).await;
    assert_eq!(recv_set(&mut w, "k").await, json!("v"));
    let (r1, r2) = (&r1, &r2);
    eventually("r2 never got the write over mTLS", || async move {
        let (_, a) = r1.http_get("/v1/admin/spaces").await;
        let (_, b) = r2.http_get("/v1/admin/spaces").await;
        if a == b && a.contains("secure") { Ok(()) } else { Err(format!("{a} vs {b}")) }
    })
    .await;
    let shards = r1.admin_shards().await;
    let connected: BTreeMap<String, bool> = shards["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["connected"].as_bool().unwrap()))
        .collect();
    assert_eq!(connected, BTreeMap::from([("r2".to_string(), true), ("r3".to_string(), false)]));
    let (_, spaces) = r3.http_get("/v1/admin/spaces").await;
    assert!(!spaces.contains("secure"), "the relay with a foreign certificate got data: {spaces}");
    // Without TLS and without --mesh-plaintext, a relay refuses to start.
    let err = Relay::spawn_in(None, "run", "127.0.0.1:0", tempdir().path(), &["--name", "r9"], &[]).err().unwrap();
    assert!(err.contains("--mesh-plaintext"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_becomes_the_owner_logs_what_it_serves() {
    let dir = tempdir();
    let file = dir.path().join("members");
    let ports = [free_port(), free_port()];
    let line = |i: usize| format!("r{}=127.0.0.1:{}\n", i + 1, ports[i]);
    std::fs::write(&file, format!("{}{}", line(0), line(1))).unwrap();
    let extra = ["--shards", "8", "--replication", "1", "--membership-file", file.to_str().unwrap()];
    let extra = [&extra[..], &["--membership-poll", "100ms"]].concat();
    let dirs = [tempdir(), tempdir()];
    let mut r1 = Relay::start_member("r1", ports[0], &[], dirs[0].path(), &extra);
    let _r2 = Relay::start_member("r2", ports[1], &[], dirs[1].path(), &extra);
    // A space owned by r2 alone: r1 serves it as an edge.
    let space = (0..)
        .map(|i| format!("moving-{i}"))
        .find(|s| aether_core::placement::owners(aether_core::placement::shard_of(s, 8), &["r1", "r2"], 1) == ["r2"])
        .unwrap();
    let (mut c, _, _) = Client::join(&r1.ws_url(&format!("space={space}"))).await;
    c.send(json!({"type": "set", "key": "before", "value": 1})).await;
    assert_eq!(recv_set(&mut c, "before").await, json!(1));
    assert_eq!(r1.admin_spaces().await[&space]["role"], "edge");
    // r2 leaves the membership: r1 owns everything now, and its cache becomes logged state.
    write_atomic(&file, line(0));
    let (r, name) = (&r1, &space);
    eventually("r1 never took the space over", || async move {
        let row = r.admin_spaces().await[name].clone();
        if row["role"] == "owner" { Ok(()) } else { Err(row.to_string()) }
    })
    .await;
    c.send(json!({"type": "set", "key": "after", "value": 2})).await;
    assert_eq!(recv_set(&mut c, "after").await, json!(2));
    drop(c);
    // Both writes are in r1's own ledger: they survive a SIGKILL and restart.
    r1.kill();
    let r1 = Relay::start_member("r1", ports[0], &[], dirs[0].path(), &extra);
    let (_, _, snap) = Client::join(&r1.ws_url(&format!("space={space}"))).await;
    assert_eq!(snap, json!({"before": 1, "after": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_removed_from_the_membership_hands_its_shards_over() {
    let dir = tempdir();
    let file = dir.path().join("members");
    let ports = [free_port(), free_port(), free_port()];
    let line = |i: usize| format!("r{}=127.0.0.1:{}\n", i + 1, ports[i]);
    std::fs::write(&file, format!("{}{}{}", line(0), line(1), line(2))).unwrap();
    let extra = ["--shards", "8", "--replication", "2", "--membership-file", file.to_str().unwrap()];
    let extra = [&extra[..], &["--membership-poll", "100ms", "--anti-entropy-interval", "1s"]].concat();
    let dirs = [tempdir(), tempdir(), tempdir()];
    let r1 = Relay::start_member("r1", ports[0], &[], dirs[0].path(), &extra);
    let r2 = Relay::start_member("r2", ports[1], &[], dirs[1].path(), &extra);
    let mut r3 = Relay::start_member("r3", ports[2], &[], dirs[2].path(), &extra);
    // Writes through r3 to many spaces: r3 owns some of them, with one other owner each.
    let spaces: Vec<String> = (0..8).map(|i| format!("h{i}")).collect();
    for space in &spaces {
        let (mut c, _, _) = Client::join(&r3.ws_url(&format!("space={space}"))).await;
        c.send(json!({"type": "set", "key": "k", "value": space})).await;
        assert_eq!(recv_set(&mut c, "k").await, json!(space));
    }
    write_atomic(&file, format!("{}{}", line(0), line(1)));
    // r3 leaves: it owns nothing, and reports when every owner has what it held.
    let r = &r3;
    eventually("r3 did not hand off", || async move {
        let v = r.admin_shards().await;
        let done = v["in_membership"] == false
            && v["owned"].as_array().unwrap().is_empty()
            && v["handoff"]["held_shards"].as_u64().unwrap_or(0) > 0
            && v["handoff"]["pending_shards"] == 0;
        if done { Ok(()) } else { Err(v.to_string()) }
    })
    .await;
    r3.kill();
    // r1 and r2 own every shard now (R = 2 of 2) and both hold every write.
    for r in [&r1, &r2] {
        for space in &spaces {
            let (_, _, snap) = Client::join(&r.ws_url(&format!("space={space}"))).await;
            assert_eq!(snap, json!({"k": space}), "{space} on {}", r.addr);
        }
    }
}
