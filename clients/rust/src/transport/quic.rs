//! QUIC transport (ALPN `aether/1`, quinn with rustls/ring): the first
//! bidirectional stream starts with `hello` and then carries pings; every
//! space gets a stream of its own (up to [`MAX_SPACE_STREAMS`], then spaces
//! share them by hash), so loss or a slow consumer on one space never holds
//! up another. Frames are prefixed by their varint length on every stream.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_proto::client::v1::{ClientFrame, ServerFrame};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::mpsc;

use super::codec::{self, FrameDecoder};
use super::{
    Channels, ConnEvent, Connection, Dial, DialError, Established, Inbound, MAX_FRAME_BYTES, SendError, SessionId,
    Tasks, expect_welcome, hello_frame,
};

/// Streams opened for spaces at most (relays allow one per space they
/// accept on a connection, `maxSpaces`, plus the first).
pub const MAX_SPACE_STREAMS: usize = 64;

/// Read granularity.
const READ_CHUNK: usize = 64 * 1024;

/// QUIC keep-alive: keeps NAT bindings and the relay's idle timer happy.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The connection is declared lost after this much silence (keep-alives included).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn dial(d: Dial<'_>) -> Result<Established, DialError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| DialError::Failed(format!("{what}: {e}"));
    let addr = tokio::net::lookup_host(d.endpoint.host_port())
        .await
        .map_err(|e| failed("resolving", &e))?
        .next()
        .ok_or_else(|| DialError::Failed(format!("{} resolves to no address", d.endpoint.host())))?;
    let bind: SocketAddr =
        if addr.is_ipv6() { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| failed("binding a UDP socket", &e))?;
    let crypto = QuicClientConfig::try_from(d.tls.quic.clone()).map_err(|e| failed("QUIC TLS config", &e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(|e| failed("idle timeout", &e))?));
    config.transport_config(Arc::new(transport));

    let conn = endpoint
        .connect_with(config, addr, d.endpoint.host())
        .map_err(|e| failed("QUIC connect", &e))?
        .await
        .map_err(|e| failed("QUIC handshake", &e))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed("opening a stream", &e))?;

    let started = Instant::now();
    send.write_all(&codec::encode(&hello_frame(d.hello))).await.map_err(|e| failed("sending hello", &e))?;
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    let welcome = loop {
        match decoder.next_frame::<ServerFrame>() {
            Ok(Some(frame)) => break expect_welcome(frame)?,
            Ok(None) => {}
            Err(e) => return Err(failed("bad frame", &e)),
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) => return Err(DialError::Failed("stream closed by the relay before welcome".into())),
            Err(e) => return Err(failed("waiting for welcome", &e)),
        }
    };
    let rtt = started.elapsed();

    let (control, rx) = mpsc::channel(d.send_queue.max(1));
    let mut tasks = Tasks::default();
    tasks.readers.push(tokio::spawn(run_stream(send, recv, decoder, rx, d.session, d.inbound.clone())));
    // The relay allows one stream per space it allows, plus the first.
    let max_streams = match welcome.limits.map(|l| l.max_spaces as usize) {
        Some(n) if n > 0 => n.min(MAX_SPACE_STREAMS),
        _ => MAX_SPACE_STREAMS,
    };
    let channels = QuicChannels {
        conn,
        endpoint,
        control,
        streams: Vec::new(),
        max_streams,
        slot_of: HashMap::new(),
        session: d.session,
        inbound: d.inbound,
        send_queue: d.send_queue.max(1),
    };
    Ok(Established { conn: Connection { channels: Channels::Quic(channels), tasks }, welcome, rtt })
}

/// The streams of one QUIC connection.
pub(super) struct QuicChannels {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    control: mpsc::Sender<ClientFrame>,
    streams: Vec<mpsc::Sender<ClientFrame>>,
    max_streams: usize,
    slot_of: HashMap<String, usize>,
    session: SessionId,
    inbound: mpsc::Sender<Inbound>,
    send_queue: usize,
}

impl QuicChannels {
    /// Queues a frame on the stream of `space` (opening it on first use) or
    /// on the first stream.
    pub(super) fn send(&mut self, space: Option<&str>, frame: ClientFrame, tasks: &mut Tasks) -> Result<(), SendError> {
        let Some(space) = space else {
            return self.control.try_send(frame).map_err(|_| SendError);
        };
        let slot = match self.slot_of.get(space) {
            Some(&slot) => slot,
            None => {
                let slot = if self.streams.len() < self.max_streams {
                    let (tx, rx) = mpsc::channel(self.send_queue);
                    let task = open_stream(self.conn.clone(), rx, self.session, self.inbound.clone());
                    tasks.readers.push(tokio::spawn(task));
                    self.streams.push(tx);
                    self.streams.len() - 1
                } else {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    space.hash(&mut h);
                    (h.finish() % self.streams.len() as u64) as usize
                };
                self.slot_of.insert(space.to_string(), slot);
                slot
            }
        };
        self.streams[slot].try_send(frame).map_err(|_| SendError)
    }

    /// Closes the connection; returns the endpoint to wait on.
    pub(super) fn close(self) -> quinn::Endpoint {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint
    }
}

async fn open_stream(
    conn: quinn::Connection,
    rx: mpsc::Receiver<ClientFrame>,
    session: SessionId,
    inbound: mpsc::Sender<Inbound>,
) {
    match conn.open_bi().await {
        Ok((send, recv)) => run_stream(send, recv, FrameDecoder::new(MAX_FRAME_BYTES), rx, session, inbound).await,
        Err(e) => {
            let reason = format!("opening a stream: {e}");
            let _ = inbound.send(Inbound { session, event: ConnEvent::Closed(reason) }).await;
        }
    }
}

/// Pumps one stream both ways until either side ends; any end other than
/// the session dropping its queue is reported as the session closing.
async fn run_stream(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    rx: mpsc::Receiver<ClientFrame>,
    session: SessionId,
    inbound: mpsc::Sender<Inbound>,
) {
    let reason = tokio::select! {
        r = write_loop(send, rx) => r,
        r = read_loop(recv, decoder, session, inbound.clone()) => r,
    };
    if let Some(reason) = reason {
        let _ = inbound.send(Inbound { session, event: ConnEvent::Closed(reason) }).await;
    }
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<ClientFrame>) -> Option<String> {
    while let Some(frame) = rx.recv().await {
        if let Err(e) = send.write_all(&codec::encode(&frame)).await {
            return Some(format!("writing: {e}"));
        }
    }
    let _ = send.finish();
    None
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    session: SessionId,
    inbound: mpsc::Sender<Inbound>,
) -> Option<String> {
    loop {
        loop {
            match decoder.next_frame::<ServerFrame>() {
                Ok(Some(frame)) => {
                    let ev = Inbound { session, event: ConnEvent::Frame(Box::new(frame)) };
                    if inbound.send(ev).await.is_err() {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(e) => return Some(format!("bad frame from the relay: {e}")),
            }
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) => return Some("stream closed by the relay".into()),
            Err(e) => return Some(e.to_string()),
        }
    }
}
