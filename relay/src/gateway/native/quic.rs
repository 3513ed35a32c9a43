//! The native protocol over QUIC (quinn + rustls, ALPN `aether/1`). A
//! connection's first bidirectional stream starts with `hello`; every stream
//! (that one included) is then a channel of its own, so spaces on different
//! streams never wait for each other. Frames are protobuf messages, each
//! prefixed by its length as a varint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aether_proto::client::v1 as pb;
use anyhow::Context;
use bytes::{Buf, BytesMut};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::channel::Channel;
use super::{Fatal, Inbound, Out, Session, accept_hello, error_frame, first_frame};
use crate::gateway::GatewayCtx;
use crate::gateway::ws_json::close;

/// The ALPN of the native protocol. The endpoint's ALPN list is [`ALPNS`]:
/// later protocols can share the UDP port.
pub const ALPN: &[u8] = b"aether/1";
/// Every ALPN this endpoint serves.
pub const ALPNS: &[&[u8]] = &[ALPN];
/// Application error codes on QUIC connections and streams.
mod code {
    /// Closed normally.
    pub const DONE: u32 = 0;
    /// Refused (caps, auth, protocol).
    pub const REFUSED: u32 = 1;
}
/// Frames decoded ahead of the channel.
const INBOUND_QUEUE: usize = 16;
/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 16 * 1024;

/// A QUIC endpoint serving the native protocol on `addr`. With `cert`/`key`
/// (PEM) it serves them; otherwise a self-signed certificate for localhost,
/// written to `<data_dir>/quic-cert.pem` for clients to trust. Returns the
/// endpoint and that file's path when it wrote one.
pub fn endpoint(
    addr: SocketAddr,
    cert_key: Option<(&Path, &Path)>,
    data_dir: &Path,
    ctx: &GatewayCtx,
) -> anyhow::Result<(quinn::Endpoint, Option<PathBuf>)> {
    let (certs, key, written) = match cert_key {
        Some((cert, key)) => {
            let (certs, key) = crate::tls::load_pem(cert, key)?;
            (certs, key, None)
        }
        None => {
            let (certs, key, path) = self_signed(data_dir)?;
            (certs, key, Some(path))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("QUIC TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("QUIC certificate and key do not match")?;
    tls.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Flow control bounds what one connection can make the relay buffer: a
    // stream at most two frames, the connection at most eight.
    let frame = u32::try_from(ctx.limits.limit_frame_bytes).unwrap_or(u32::MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(ctx.limits.idle_timeout.try_into().context("--idle-timeout is too long for QUIC")?))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(
            (ctx.limits.limit_spaces_per_conn as u32).saturating_add(1),
        ))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .stream_receive_window(quinn::VarInt::from_u32(frame.saturating_mul(2)))
        .receive_window(quinn::VarInt::from_u32(frame.saturating_mul(8)))
        .send_window(u64::from(frame) * 8);
    server.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(server, addr).with_context(|| format!("binding QUIC on {addr}"))?;
    Ok((endpoint, written))
}

/// The self-signed certificate and key kept in `data_dir` (`quic-cert.pem`,
/// `quic-key.pem`), created on first use: clients that trust the file keep
/// trusting the relay across restarts.
fn self_signed(
    data_dir: &Path,
) -> anyhow::Result<(Vec<rustls_pki_types::CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>, PathBuf)>
{
    let (cert, key) = (data_dir.join("quic-cert.pem"), data_dir.join("quic-key.pem"));
    if cert.is_file() && key.is_file() {
        let (certs, key_der) = crate::tls::load_pem(&cert, &key)?;
        return Ok((certs, key_der, cert));
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).context("generating a QUIC certificate")?;
    write_new(&key, generated.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert, generated.cert.pem().as_bytes(), 0o644)?;
    let key_der = rustls_pki_types::PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    Ok((vec![generated.cert.der().clone()], key_der.into(), cert))
}

/// Writes `bytes` to `path` through a temporary file (mode `mode`), renamed into place.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Accepts connections until the relay shuts down. Handshakes in progress
/// are bounded like connections (`--limit-conns`); beyond, new ones are refused.
pub async fn serve(ctx: Arc<GatewayCtx>, endpoint: quinn::Endpoint) {
    let mut shutdown = ctx.shutdown.clone();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(ctx.limits.limit_conns.max(1)));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        if !ctx.relay.is_ready() {
            incoming.refuse();
            continue;
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let handshake = tokio::time::timeout(ctx.auth_timeout, async { incoming.accept()?.await }).await;
            drop(permit);
            match handshake {
                Ok(Ok(conn)) => connection(ctx, conn).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "QUIC handshake failed"),
                Err(_) => tracing::debug!(%peer, "QUIC handshake timed out"),
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(code::DONE), b"relay shutting down");
}

async fn connection(ctx: Arc<GatewayCtx>, conn: quinn::Connection) {
    let metrics = ctx.relay.metrics().clone();
    let _slot = match ctx.caps.acquire(conn.remote_address().ip()) {
        Ok(slot) => slot,
        Err(cap) => {
            let (reason, label) = cap.reason_and_label();
            metrics.disconnects.with_label_values(&[label]).inc();
            conn.close(quinn::VarInt::from_u32(code::REFUSED), reason.as_bytes());
            return;
        }
    };
    metrics.connections.inc();
    // The first stream carries the hello.
    let first = tokio::time::timeout(ctx.auth_timeout, conn.accept_bi()).await;
    let Ok(Ok((send, recv))) = first else {
        metrics.connections.dec();
        conn.close(quinn::VarInt::from_u32(code::REFUSED), b"no hello in time");
        return;
    };
    let (tx, mut inbound) = mpsc::channel(INBOUND_QUEUE);
    let reader = tokio::spawn(read(recv, ctx.limits.limit_frame_bytes, tx));
    let mut out = Out::Quic { send, buf: BytesMut::new() };
    let hello = match tokio::time::timeout(ctx.auth_timeout, first_frame(&mut inbound)).await {
        Ok(Some(Ok(frame))) => accept_hello(&ctx, frame, false),
        Ok(Some(Err(f))) => Err(f),
        Ok(None) => Err(Fatal::gone()),
        Err(_) => Err(Fatal::new("hello-required", "no hello in time", close::POLICY)),
    };
    let id = match hello {
        Ok((id, welcome)) => {
            let _ = out.feed(&welcome).await;
            let _ = out.flush().await;
            id
        }
        Err(f) => {
            if !f.code.is_empty() {
                metrics.errors.with_label_values(&[f.code]).inc();
                let _ = out.feed(&error_frame(0, "", f.code, &f.message, true)).await;
                out.close(f.close, f.code).await;
                // Give the error frame time to leave before the connection goes.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed()).await;
            }
            reader.abort();
            metrics.connections.dec();
            conn.close(quinn::VarInt::from_u32(code::REFUSED), f.code.as_bytes());
            return;
        }
    };
    let mut channels = tokio::task::JoinSet::new();
    channels.spawn(channel(ctx.clone(), id.clone(), inbound, out, reader));
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
                    let reader = tokio::spawn(read(recv, ctx.limits.limit_frame_bytes, tx));
                    let out = Out::Quic { send, buf: BytesMut::new() };
                    channels.spawn(channel(ctx.clone(), id.clone(), inbound, out, reader));
                }
                Err(_) => break,
            },
            Some(_) = channels.join_next() => {
                if channels.is_empty() {
                    // Every stream ended: the client is done with this connection.
                    break;
                }
            }
        }
    }
    channels.shutdown().await;
    metrics.connections.dec();
    conn.close(quinn::VarInt::from_u32(code::DONE), b"");
}

/// One stream's channel.
async fn channel(
    ctx: Arc<GatewayCtx>,
    id: Arc<Session>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut out: Out,
    reader: tokio::task::JoinHandle<()>,
) {
    let end = Channel::new(ctx.clone(), id).run(&mut inbound, &mut out).await;
    if let Some((code, _)) = end {
        ctx.relay.metrics().disconnects.with_label_values(&[crate::gateway::ws_json::close_label(code)]).inc();
    }
    out.close(close::NORMAL, "").await;
    reader.abort();
}

/// Decodes length-delimited frames (each at most `max` bytes) from a stream.
async fn read(mut recv: quinn::RecvStream, max: usize, tx: mpsc::Sender<Inbound>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match split_frame(&mut buf, max) {
            Err(f) => {
                let _ = tx.send(Inbound::Fatal(f)).await;
                return;
            }
            Ok(Some(frame)) => {
                if tx.send(Inbound::Frame(frame)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
        }
        buf.reserve(READ_CHUNK);
        match recv.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The next complete frame at the front of `buf`, if there is one.
fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<pb::ClientFrame>, Fatal> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut peek = &buf[..];
    let len = match prost::encoding::decode_varint(&mut peek) {
        Ok(len) => len,
        // An incomplete varint is shorter than 10 bytes; a longer one is garbage.
        Err(_) if buf.len() < 10 => return Ok(None),
        Err(_) => return Err(Fatal::new("bad-frame", "bad frame length", close::POLICY)),
    };
    let header = buf.len() - peek.len();
    if len > max as u64 {
        return Err(Fatal::new("bad-frame", format!("frame of {len} bytes exceeds {max}"), close::TOO_BIG));
    }
    let len = len as usize;
    if buf.len() < header + len {
        return Ok(None);
    }
    buf.advance(header);
    let body = buf.split_to(len).freeze();
    pb::ClientFrame::decode(body)
        .map(Some)
        .map_err(|e| Fatal::new("bad-frame", format!("undecodable frame: {e}"), close::POLICY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_any_byte_boundary_and_oversized_ones_are_refused() {
        let frame = pb::ClientFrame { msg: Some(pb::client_frame::Msg::Ping(pb::Ping { nonce: 300 })) };
        let mut wire = BytesMut::new();
        frame.encode_length_delimited(&mut wire).unwrap();
        frame.encode_length_delimited(&mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = split_frame(&mut buf, 1024).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![frame.clone(), frame]);
        assert!(buf.is_empty());
        let mut big = BytesMut::new();
        prost::encoding::encode_varint(2048, &mut big);
        assert_eq!(split_frame(&mut big, 1024).unwrap_err().close, close::TOO_BIG);
        let mut garbage = BytesMut::from(&[0xffu8; 12][..]);
        assert_eq!(split_frame(&mut garbage, 1024).unwrap_err().code, "bad-frame");
        let mut undecodable = BytesMut::from(&[3u8, 0xff, 0xff, 0xff][..]);
        assert_eq!(split_frame(&mut undecodable, 1024).unwrap_err().code, "bad-frame");
    }
}
