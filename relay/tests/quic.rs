//! The native protocol over QUIC (ALPN `aether/1`) against a real relay: a
//! channel per stream, a connection that survives the client's address
//! changing (migration), and ALPN selection.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use aether_proto::client::v1 as pb;
use bytes::BytesMut;
use common::{Client, Relay, tempdir};
use pb::client_frame::Msg as C;
use pb::server_frame::Msg as S;
use prost::Message as _;
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;

const ACTOR: u64 = (1 << 63) | 7;

fn endpoint(ca_pem: &std::path::Path, alpn: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_millis(200)));
    config.transport_config(Arc::new(transport));
    ep.set_default_client_config(config);
    ep
}

/// One bidirectional stream: length-delimited frames.
struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Stream {
    async fn open(conn: &quinn::Connection) -> Stream {
        let (send, recv) = conn.open_bi().await.unwrap();
        Stream { send, recv, buf: BytesMut::new() }
    }

    async fn send(&mut self, msg: C) {
        let frame = pb::ClientFrame { msg: Some(msg) };
        self.send.write_all(&frame.encode_length_delimited_to_vec()).await.unwrap();
    }

    async fn recv(&mut self) -> S {
        tokio::time::timeout(common::DEADLINE, async {
            loop {
                if let Ok(len) = prost::decode_length_delimiter(&self.buf[..]) {
                    let header = prost::length_delimiter_len(len);
                    if self.buf.len() >= header + len {
                        let frame = pb::ServerFrame::decode(&self.buf[header..header + len]).unwrap();
                        let _ = self.buf.split_to(header + len);
                        return frame.msg.unwrap();
                    }
                }
                assert!(self.recv.read_buf(&mut self.buf).await.unwrap() > 0, "stream ended");
            }
        })
        .await
        .expect("no frame in time")
    }

    async fn subscribe(&mut self, space: &str) {
        self.send(C::Subscribe(pb::Subscribe { space: space.into(), ..Default::default() })).await;
        loop {
            if let S::Catchup(c) = self.recv().await
                && c.done
            {
                return;
            }
        }
    }

    async fn write(&mut self, id: u64, space: &str, key: &str, value: &str) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let op = pb::Op {
            key: key.into(),
            value: value.as_bytes().to_vec().into(),
            delete: false,
            stamp: Some(pb::Stamp { wall_ns: now, counter: 0, actor: ACTOR }),
        };
        self.send(C::Write(pb::Write { id, space: space.into(), ops: vec![op] })).await;
        match self.recv().await {
            S::Ack(a) => assert_eq!(a.id, id),
            other => panic!("expected the ack of {id}, got {other:?}"),
        }
    }
}

async fn recv_set(c: &mut Client, key: &str) -> serde_json::Value {
    loop {
        let m = c.recv().await;
        if m["type"] == "set" && m["key"] == key {
            return m["value"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_channels_and_the_connection_survives_an_address_change() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--quic-listen", "127.0.0.1:0"]);
    let addr: SocketAddr = relay.quic.expect("QUIC address printed");
    let ca = dir.path().join("quic-cert.pem");
    let (mut a, _, _) = Client::join(&relay.ws_url("space=a")).await;
    let (mut b, _, _) = Client::join(&relay.ws_url("space=b")).await;

    let ep = endpoint(&ca, b"aether/1");
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let mut control = Stream::open(&conn).await;
    control.send(C::Hello(pb::Hello { version: 1, actor: ACTOR, ..Default::default() })).await;
    assert!(matches!(control.recv().await, S::Welcome(w) if w.relay == "dev"));
    let mut sa = Stream::open(&conn).await;
    let mut sb = Stream::open(&conn).await;
    sa.subscribe("a").await;
    sb.subscribe("b").await;
    sa.write(1, "a", "k", "\"on stream a\"").await;
    assert_eq!(recv_set(&mut a, "k").await, "on stream a");

    // The client moves to a new address (a phone leaving Wi-Fi): same connection.
    let before = ep.local_addr().unwrap();
    ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    assert_ne!(ep.local_addr().unwrap(), before);
    sb.write(2, "b", "k", "\"after migrating\"").await;
    assert_eq!(recv_set(&mut b, "k").await, "after migrating");
    control.send(C::Ping(pb::Ping { nonce: 9 })).await;
    assert!(matches!(control.recv().await, S::Pong(p) if p.nonce == 9));
    assert!(conn.close_reason().is_none());

    // Another ALPN is not served on this endpoint.
    let other = endpoint(&ca, b"h3");
    let refused = other.connect(addr, "localhost").unwrap().await;
    assert!(refused.is_err(), "a connection without ALPN aether/1 was accepted");
}

#[tokio::test]
async fn a_stream_that_does_not_start_with_hello_is_refused() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--quic-listen", "127.0.0.1:0"]);
    let ep = endpoint(&dir.path().join("quic-cert.pem"), b"aether/1");
    let conn = ep.connect(relay.quic.unwrap(), "localhost").unwrap().await.unwrap();
    let mut s = Stream::open(&conn).await;
    s.send(C::Ping(pb::Ping { nonce: 1 })).await;
    match s.recv().await {
        S::Error(e) => assert_eq!((e.code.as_str(), e.fatal), ("hello-required", true)),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_only_listens_outlives_the_idle_timeout() {
    let dir = tempdir();
    // An idle timeout well above a scheduling stall of this process, which would
    // hold back the client's keep-alives (every 200 ms) and lose the connection.
    let relay =
        Relay::start(dir.path(), &["--quic-listen", "127.0.0.1:0", "--idle-timeout", "3s", "--ping-interval", "600ms"]);
    let ep = endpoint(&dir.path().join("quic-cert.pem"), b"aether/1");
    let conn = ep.connect(relay.quic.unwrap(), "localhost").unwrap().await.unwrap();
    let mut control = Stream::open(&conn).await;
    control.send(C::Hello(pb::Hello { version: 1, actor: ACTOR, ..Default::default() })).await;
    assert!(matches!(control.recv().await, S::Welcome(_)));
    let mut listen = Stream::open(&conn).await;
    listen.subscribe("quiet").await;
    // Wall time must pass here: the stream sends nothing for 2.5 idle timeouts
    // (the connection itself stays alive through QUIC keep-alives).
    tokio::time::sleep(std::time::Duration::from_millis(7500)).await;
    let (mut writer, _, _) = Client::join(&relay.ws_url("space=quiet")).await;
    writer.send(serde_json::json!({"type": "set", "key": "k", "value": 1})).await;
    match listen.recv().await {
        S::Changes(c) => assert_eq!(c.ops[0].key, "k"),
        other => panic!("expected the change, got {other:?}"),
    }
}
