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
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
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

/// Delay before racing the next address of a name while an attempt is
/// pending (RFC 8305's connection attempt delay).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

pub(super) async fn dial(d: Dial<'_>) -> Result<Established, DialError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| DialError::Failed(format!("{what}: {e}"));
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host(d.endpoint.host_port()).await.map_err(|e| failed("resolving", &e))?.collect();
    if addrs.is_empty() {
        return Err(DialError::Failed(format!("{} resolves to no address", d.endpoint.host())));
    }
    let crypto = QuicClientConfig::try_from(d.tls.quic.clone()).map_err(|e| failed("QUIC TLS config", &e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(|e| failed("idle timeout", &e))?));
    config.transport_config(Arc::new(transport));

    // Every address in turn (e.g. `localhost`: ::1, then 127.0.0.1), the
    // next one raced after ATTEMPT_DELAY: a silent address costs that much.
    let host = d.endpoint.host();
    let attempt = |addr: SocketAddr| {
        let config = config.clone();
        async move {
            let bind: SocketAddr =
                if addr.is_ipv6() { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
            let endpoint = quinn::Endpoint::client(bind).map_err(|e| format!("{addr}: binding a UDP socket: {e}"))?;
            let conn = endpoint
                .connect_with(config, addr, host)
                .map_err(|e| format!("{addr}: QUIC connect: {e}"))?
                .await
                .map_err(|e| format!("{addr}: QUIC handshake: {e}"))?;
            Ok::<_, String>((endpoint, conn))
        }
    };
    let (endpoint, conn) = race(addrs, ATTEMPT_DELAY, attempt).await.map_err(|e| DialError::Failed(e.join("; ")))?;
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

/// Tries `addrs` in order: the next attempt starts when every pending one
/// failed, or `stagger` after the previous start; the first success wins.
/// Otherwise every attempt's error, in order of failure.
async fn race<A, T, F, Fut>(addrs: Vec<A>, stagger: Duration, mut attempt: F) -> Result<T, Vec<String>>
where
    F: FnMut(A) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut next = addrs.into_iter();
    let mut pending = FuturesUnordered::new();
    let mut errors = Vec::new();
    let mut next_at = tokio::time::Instant::now();
    loop {
        if pending.is_empty() || tokio::time::Instant::now() >= next_at {
            match next.next() {
                Some(a) => {
                    pending.push(attempt(a));
                    next_at = tokio::time::Instant::now() + stagger;
                }
                None if pending.is_empty() => return Err(errors),
                None => next_at = tokio::time::Instant::now() + Duration::from_secs(3600),
            }
        }
        tokio::select! {
            r = pending.next() => match r {
                Some(Ok(t)) => return Ok(t),
                Some(Err(e)) => errors.push(e),
                None => {}
            },
            () = tokio::time::sleep_until(next_at) => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn attempt(addr: (u32, Option<bool>)) -> Result<u32, String> {
        match addr.1 {
            Some(true) => Ok(addr.0),
            Some(false) => Err(format!("{} refused", addr.0)),
            None => std::future::pending().await,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_address_is_tried_in_turn() {
        let ms = Duration::from_millis;
        // The first refuses at once: the second is tried without waiting.
        let t0 = tokio::time::Instant::now();
        assert_eq!(race(vec![(1, Some(false)), (2, Some(true))], ms(250), attempt).await, Ok(2));
        assert_eq!(t0.elapsed(), ms(0));
        // The first never answers: the second starts after the stagger and wins.
        assert_eq!(race(vec![(1, None), (2, Some(true))], ms(250), attempt).await, Ok(2));
        assert_eq!(t0.elapsed(), ms(250));
        // All fail: every error, in order.
        let errs = race(vec![(1, Some(false)), (2, Some(false)), (3, Some(false))], ms(250), attempt).await;
        assert_eq!(errs, Err(vec!["1 refused".into(), "2 refused".into(), "3 refused".into()]));
        // The first works: the others are never tried.
        assert_eq!(race(vec![(1, Some(true)), (2, None)], ms(250), attempt).await, Ok(1));
        assert!(race(Vec::<(u32, Option<bool>)>::new(), ms(250), attempt).await.unwrap_err().is_empty());
    }
}
