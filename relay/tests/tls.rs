//! TLS from --tls-cert/--tls-key: wss:// and https:// with a generated certificate.

mod common;

use std::sync::Arc;

use common::{Relay, tempdir};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

fn connector(ca_der: rustls_pki_types::CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn serves_wss_and_https_with_the_given_certificate() {
    let dir = tempdir();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let relay =
        Relay::start(&data, &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()]);
    let tls = connector(cert.cert.der().clone());
    let name = ServerName::try_from("localhost").unwrap();

    // https:// health check.
    let tcp = TcpStream::connect(relay.addr).await.unwrap();
    let mut s = tls.connect(name.clone(), tcp).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // wss:// protocol round trip.
    let tcp = TcpStream::connect(relay.addr).await.unwrap();
    let s = tls.connect(name, tcp).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", relay.addr.port()), s).await.unwrap();
    let mut next = async || -> Value {
        loop {
            if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
                return serde_json::from_str(&t).unwrap();
            }
        }
    };
    assert_eq!(next().await["type"], "hello");
    assert_eq!(next().await["type"], "snapshot");
    ws.send(Message::text(json!({"type":"set","key":"k","value":"secure"}).to_string())).await.unwrap();
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            assert_eq!(serde_json::from_str::<Value>(&t).unwrap(), json!({"type":"set","key":"k","value":"secure"}));
            break;
        }
    }

    // Plain TCP gets no service.
    let mut plain = TcpStream::connect(relay.addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

#[tokio::test]
async fn missing_certificate_file_is_a_clear_startup_error() {
    let dir = tempdir();
    let err =
        Relay::try_start(dir.path(), &["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"])
            .err()
            .expect("must not start");
    assert!(err.contains("reading TLS certificate /nonexistent/cert.pem"), "{err}");
}
